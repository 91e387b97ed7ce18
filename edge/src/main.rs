//! `modcdn-edge serve [--config FILE] [--upgrade]`: load config, build, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use modcdn_edge::config::EdgeConfig;
use modcdn_shared::config::Flag;

/// mimalloc, not glibc's malloc: in a steady stream of cold misses glibc's
/// `malloc`/`free` were a fifth of the event loop's work (Pingora's request
/// path allocates freely), and mimalloc took 14 % more misses per second
/// (transparent huge pages off: with them the idle edge held 70 MiB more).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "modcdn edge node: the caching GOPROXY go clients talk to")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve go clients.
    #[command(after_help = "Example:\n  modcdn-edge serve --config /etc/modcdn/edge.toml")]
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
    #[command(after_help = "Example:\n  modcdn-edge default-config > edge.toml")]
    DefaultConfig,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::DefaultConfig => {
            print!("{}", modcdn_edge::config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Command::Serve { config, listen, upgrade } => {
            let flags: Vec<Flag> =
                listen.map(|a| Flag { key: "listen", flag: "--listen", value: a.to_string() }).into_iter().collect();
            let cfg = match EdgeConfig::load(config.as_deref(), &flags) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("modcdn-edge: config error: {e}");
                    return ExitCode::from(64);
                }
            };
            // The membership file is configuration too: its errors (file,
            // line, key) are config errors. Loaded once, here.
            let membership = match modcdn_router::watch::Membership::load(&cfg.membership) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("modcdn-edge: config error: membership: {e}");
                    return ExitCode::from(64);
                }
            };
            let _telemetry = match modcdn_shared::telemetry::init(&cfg.log, "modcdn-edge") {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("modcdn-edge: config error: {e}");
                    return ExitCode::from(64);
                }
            };
            match modcdn_edge::run(cfg, membership, upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("modcdn-edge: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
