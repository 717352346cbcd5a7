//! `longrun`: the command-line face of the project. `longrun serve` runs the reference
//! server; the client subcommands arrive with the Rust client.

mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "longrun",
    version,
    about = "Long-running calls over plain HTTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the longrun/1 reference server.
    Serve(serve::ServeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::main(args),
    }
}
