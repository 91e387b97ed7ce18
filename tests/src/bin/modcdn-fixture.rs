//! `modcdn-fixture`: writes the fixture corpus, or serves it as an upstream.
//! Used by the benchmark scripts and for offline runs of the main job.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use modcdn_tests::corpus::Corpus;
use modcdn_tests::upstream::{Faults, FixtureUpstream};

#[derive(Parser)]
#[command(about = "modcdn fixture corpus and upstream")]
enum Cli {
    /// Generate the corpus in GOPROXY layout.
    #[command(after_help = "Example:\n  modcdn-fixture corpus --out /tmp/modcdn-corpus")]
    Corpus {
        #[arg(long)]
        out: PathBuf,
        /// Size of the large module's incompressible file, in MiB.
        #[arg(long, default_value_t = 32)]
        large_mib: usize,
        /// Extra small modules example.com/many/mNNNN@v1.0.0.
        #[arg(long, default_value_t = 0)]
        many: usize,
        /// Extra modules example.com/sized/k<KiB>@v1.0.0 whose zips hold
        /// that many KiB of incompressible bytes (comma-separated sizes).
        #[arg(long, value_delimiter = ',')]
        sized_kib: Vec<usize>,
    },
    /// Serve a corpus directory as a GOPROXY.
    #[command(after_help = "Example:\n  modcdn-fixture upstream --corpus /tmp/modcdn-corpus --listen 127.0.0.1:7300")]
    Upstream {
        #[arg(long)]
        corpus: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Added latency per request, in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Write a consumer module of the whole fixture graph into `--out`.
    #[command(after_help = "Example:\n  modcdn-fixture consumer --out /tmp/consumer")]
    Consumer {
        #[arg(long)]
        out: PathBuf,
    },
    /// GET each path (one per line in `--paths`) from `--base` once, in
    /// turn over `--connections` keep-alive connections (each takes the next
    /// path when its answer is in); print p50 and p99 latency in
    /// microseconds and the answers per second.
    #[command(after_help = "Example:\n  modcdn-fixture latency --base http://127.0.0.1:7070 --paths paths.txt")]
    Latency {
        #[arg(long)]
        base: String,
        #[arg(long)]
        paths: PathBuf,
        #[arg(long, default_value_t = 1)]
        connections: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse() {
        Cli::Corpus { out, large_mib, many, sized_kib } => {
            let mut c = Corpus::generate_with(&out, large_mib << 20, many)?;
            for kib in sized_kib {
                c.add_sized(kib)?;
            }
            println!("wrote {} module versions to {}", c.versions.len(), out.display());
        }
        Cli::Upstream { corpus, listen, delay_ms } => {
            let up = FixtureUpstream::start_on(corpus, listen).await?;
            up.set_faults(Faults { delay: Duration::from_millis(delay_ms), ..Faults::default() });
            println!("{}", up.url());
            // SIGTERM ends it (a background job of a script ignores SIGINT).
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Cli::Consumer { out } => {
            modcdn_tests::corpus::write_graph_consumer(&out)?;
            println!("wrote {}", out.display());
        }
        Cli::Latency { base, paths, connections } => {
            let client = reqwest::Client::builder().pool_max_idle_per_host(connections).build()?;
            let paths: Arc<Vec<String>> = Arc::new(
                std::fs::read_to_string(&paths)?.lines().filter(|l| !l.is_empty()).map(str::to_string).collect(),
            );
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let started = std::time::Instant::now();
            let mut turns = Vec::new();
            for _ in 0..connections.max(1) {
                let (client, base, paths, next) = (client.clone(), base.clone(), paths.clone(), next.clone());
                turns.push(tokio::spawn(async move {
                    let mut micros = Vec::new();
                    while let Some(path) = paths.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                        let started = std::time::Instant::now();
                        let r = client.get(format!("{base}{path}")).send().await?;
                        let status = r.status();
                        r.bytes().await?;
                        micros.push(started.elapsed().as_micros() as u64);
                        anyhow::ensure!(status.is_success(), "{path}: {status}");
                    }
                    anyhow::Ok(micros)
                }));
            }
            let mut micros = Vec::new();
            for turn in turns {
                micros.extend(turn.await??);
            }
            let rps = micros.len() as f64 / started.elapsed().as_secs_f64();
            micros.sort_unstable();
            let pct = |p: f64| {
                micros
                    .get(((micros.len() as f64 * p) as usize).min(micros.len().saturating_sub(1)))
                    .copied()
                    .unwrap_or(0)
            };
            let max = micros.last().copied().unwrap_or(0);
            println!("n={} p50_us={} p99_us={} rps={rps:.0} max_us={max}", micros.len(), pct(0.50), pct(0.99));
        }
    }
    Ok(())
}
