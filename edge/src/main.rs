//! `modcdn-edge serve [--config FILE] [--upgrade]`: load config, build, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use modcdn_edge::config::EdgeConfig;

#[derive(Parser)]
#[command(version, about = "modcdn edge node: the caching GOPROXY go clients talk to")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve go clients.
    Serve {
        /// TOML config file; without it the embedded default is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides `listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Take the listening sockets over from the running edge (send it
        /// SIGQUIT after starting this one).
        #[arg(long)]
        upgrade: bool,
    },
    /// Print the embedded default config.
    DefaultConfig,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::DefaultConfig => {
            print!("{}", modcdn_edge::config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Command::Serve { config, listen, upgrade } => {
            let mut cfg = match EdgeConfig::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("modcdn-edge: config error: {e}");
                    return ExitCode::from(64);
                }
            };
            cfg.listen = listen.unwrap_or(cfg.listen);
            modcdn_shared::telemetry::init(cfg.log.format, &cfg.log.level);
            match modcdn_edge::run(cfg, upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("modcdn-edge: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
