//! The `sandpit` binary: one executable for the server (`serve`), the in-sandbox agent
//! (`agent`), the namespace set-up step (`jail`, internal) and the benchmark (`bench`).

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sandpit", version, about = "Isolated Linux sandboxes over HTTP")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent inside a sandbox (started by `sandpit jail`).
    #[command(hide = true)]
    Agent,
    /// Set up a sandbox's namespaces and exec its agent (started by the server).
    #[command(hide = true)]
    Jail,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Agent => sandpit_agent::main(),
        Command::Jail => sandpit_runtime::jail::main(),
    };
    std::process::exit(code);
}
