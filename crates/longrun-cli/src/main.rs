//! `longrun`: the command-line face of the project. `longrun serve` runs the reference
//! server; `submit`, `follow`, `wait`, `cancel` and `exists` talk to a server through the
//! `longrun` client crate, which owns every protocol decision (resume, retries, timeouts).

mod args;
mod client;
mod serve;

use clap::{Parser, Subcommand};

/// jemalloc keeps its bookkeeping out of the blocks it hands out, so a buffer a connection
/// reserves but never fills costs no memory: an idle SSE follower costs 11 KiB instead of 13
/// with glibc's allocator (`cargo xtask bench server`).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "longrun",
    version,
    about = "Long-running calls over plain HTTP",
    after_help = client::EXIT_CODES
)]
struct Cli {
    #[command(flatten)]
    global: client::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the longrun/1 reference server.
    Serve(Box<serve::ServeArgs>),
    /// Make tokens for a server's auth file.
    #[command(subcommand)]
    Token(TokenCommand),
    #[command(flatten)]
    Client(client::Command),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a fresh random token (give it to the caller) and the lines that let it in (paste
    /// them under the tenant in the auth file, which keeps only the token's hash).
    New {
        /// The scopes the token gets: submit, submit:OBJECT, read, cancel, admin
        #[arg(long = "scope", value_name = "SCOPE", value_delimiter = ',', default_values = ["submit", "read", "cancel"])]
        scopes: Vec<String>,
    },
}

fn token(command: TokenCommand) -> std::process::ExitCode {
    let TokenCommand::New { scopes } = command;
    match longrun_server::auth::new_token() {
        Ok((token, hash)) => {
            let scopes: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
            println!("{token}");
            println!();
            println!("# under the tenant's [[tenant]] in the auth file:");
            println!("[[tenant.token]]");
            println!("hash = \"{hash}\"");
            println!("scopes = [{}]", scopes.join(", "));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("longrun token new: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::main(*args),
        Command::Token(command) => token(command),
        Command::Client(command) => client::main(cli.global, command),
    }
}
