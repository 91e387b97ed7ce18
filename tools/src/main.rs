//! `modcdn cluster` and `modcdn prewarm`: parse the command line, run the tool.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use modcdn_tools::{cluster, prewarm};

#[derive(Parser)]
#[command(version, about = "modcdn tools: a local cluster to try modcdn, and prewarming a cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster (deploy/cluster/cluster.toml: two regions, an
    /// edge in each, three origins) and print the GOPROXY line. The
    /// modcdn-edge and modcdn-origin binaries must be next to this one.
    #[command(after_help = "Example:\n  modcdn cluster --upstream http://127.0.0.1:7300 --no-verify --store s3")]
    Cluster {
        /// Upstream of the origins (GOPROXY syntax), e.g. a local fixture
        /// upstream for offline use. Default: https://proxy.golang.org.
        #[arg(long)]
        upstream: Option<String>,
        /// Do not verify against the checksum database (for upstreams whose
        /// modules are in none, like the fixture corpus).
        #[arg(long)]
        no_verify: bool,
        /// Where configs, data and logs go. Default: modcdn-data/cluster.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Where the origins keep artifacts: each on its own disk, or one
        /// SeaweedFS bucket (started beside the nodes) they all share.
        #[arg(long, value_enum, default_value = "disk")]
        store: cluster::StoreChoice,
        /// Another cluster description (the shape of deploy/cluster/cluster.toml).
        #[arg(long)]
        cluster: Option<PathBuf>,
    },
    /// Warm a cluster through an edge or origin: module@version arguments,
    /// go.sum / go.mod files, or top-N list files. Exits 1 if anything failed.
    #[command(after_help = "Example:\n  modcdn prewarm --target http://127.0.0.1:8080 go.sum top-modules.txt")]
    Prewarm {
        /// Edge or origin URL to warm through.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        target: String,
        /// Requests at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Inputs.
        #[arg(required = true)]
        inputs: Vec<String>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Cluster { upstream, no_verify, dir, store, cluster } => {
            let overrides = cluster::Overrides { cluster, upstream, verify: !no_verify, dir, store };
            match cluster::run(overrides) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("modcdn cluster: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Prewarm { target, concurrency, inputs } => run_prewarm(&target, concurrency, &inputs),
    }
}

fn run_prewarm(target: &str, concurrency: usize, inputs: &[String]) -> ExitCode {
    let targets = match prewarm::targets(inputs) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("modcdn prewarm: {e}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("modcdn prewarm: {e}");
            return ExitCode::FAILURE;
        }
    };
    let total = targets.len();
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let s = runtime.block_on(prewarm::run(target, targets, concurrency, progress));
    println!(
        "prewarm {target}: {total} artifacts: {} hits, {} misses, {} failures",
        s.hits,
        s.misses,
        s.failures.len()
    );
    for f in &s.failures {
        println!("FAILED {f}");
    }
    if s.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
