//! `modcdn-origin serve [--config FILE]`: load config, build, run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use modcdn_origin::config::OriginConfig;
use modcdn_shared::config::Flag;

#[derive(Parser)]
#[command(version, about = "modcdn origin node: a GOPROXY that pulls, verifies and stores modules")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the GOPROXY protocol.
    #[command(
        after_help = "Example:\n  modcdn-origin serve --config /etc/modcdn/origin.toml --store-dir /var/lib/modcdn-origin"
    )]
    Serve {
        /// TOML config file; without it the embedded default is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides `listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Overrides `upstream` (GOPROXY syntax).
        #[arg(long)]
        upstream: Option<String>,
        /// Overrides `store_dir`.
        #[arg(long)]
        store_dir: Option<PathBuf>,
    },
    /// Print the embedded default config.
    #[command(after_help = "Example:\n  modcdn-origin default-config > origin.toml")]
    DefaultConfig,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::DefaultConfig => {
            print!("{}", modcdn_origin::config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Command::Serve { config, listen, upstream, store_dir } => {
            let flags: Vec<Flag> = [
                ("listen", "--listen", listen.map(|a| a.to_string())),
                ("upstream", "--upstream", upstream),
                ("store_dir", "--store-dir", store_dir.map(|d| d.display().to_string())),
            ]
            .into_iter()
            .filter_map(|(key, flag, value)| Some(Flag { key, flag, value: value? }))
            .collect();
            let cfg = match OriginConfig::load(config.as_deref(), &flags) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("modcdn-origin: config error: {e}");
                    return ExitCode::from(64);
                }
            };
            match run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("modcdn-origin: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(cfg: OriginConfig) -> anyhow::Result<()> {
    let _telemetry = modcdn_shared::telemetry::init(&cfg.log, "modcdn-origin").map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let origin = modcdn_origin::Origin::new(&cfg).map_err(anyhow::Error::msg)?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| anyhow::anyhow!("listen {}: {e}", cfg.listen))?;
        let operator = tokio::net::TcpListener::bind(cfg.operator.listen)
            .await
            .map_err(|e| anyhow::anyhow!("operator.listen {}: {e}", cfg.operator.listen))?;
        let (addr, operator_addr) = (listener.local_addr()?, operator.local_addr()?);
        tracing::info!(%addr, operator = %operator_addr, upstream = %cfg.upstream, store = %cfg.store_dir.display(), "modcdn-origin serving");
        if cfg.operator.token.is_none() {
            tracing::warn!("operator.token is empty: purges, hot reports and the purge log are off");
        }
        // Validated with the config; loaded again here to serve.
        let tls = cfg.tls.as_ref().map(modcdn_origin::tls::server_config).transpose().map_err(|(key, e)| anyhow::anyhow!("{key}: {e}"))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("GOPROXY={scheme}://{addr}");
        println!("OPERATOR={scheme}://{operator_addr}");
        modcdn_origin::serve_until(
            origin,
            listener,
            operator,
            tls,
            modcdn_origin::shutdown_signal(),
            Duration::from_secs(cfg.shutdown_grace_secs),
            modcdn_origin::ClientTimeouts {
                header: Duration::from_millis(cfg.header_timeout_ms),
                send: Duration::from_millis(cfg.send_timeout_ms),
            },
        )
        .await?;
        Ok(())
    })
}
