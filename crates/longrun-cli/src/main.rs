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
    #[command(flatten)]
    Client(client::Command),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::main(*args),
        Command::Client(command) => client::main(cli.global, command),
    }
}
