//! The `shoal` binary: parse flags, run the command.

use clap::Parser;

#[tokio::main]
async fn main() {
    shoal_node::init_tracing();
    let cli = shoal_node::cli::Cli::parse();
    if let Err(err) = shoal_node::cli::run(cli).await {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
