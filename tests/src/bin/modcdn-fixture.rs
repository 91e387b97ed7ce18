//! `modcdn-fixture`: writes the fixture corpus, or serves it as an upstream.
//! Used by the benchmark scripts and for offline runs of the main job.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use modcdn_tests::corpus::Corpus;
use modcdn_tests::upstream::{Faults, FixtureUpstream};

#[derive(Parser)]
#[command(about = "modcdn fixture corpus and upstream")]
enum Cli {
    /// Generate the corpus in GOPROXY layout.
    Corpus {
        #[arg(long)]
        out: PathBuf,
        /// Size of the large module's incompressible file, in MiB.
        #[arg(long, default_value_t = 32)]
        large_mib: usize,
        /// Extra small modules example.com/many/mNNNN@v1.0.0.
        #[arg(long, default_value_t = 0)]
        many: usize,
    },
    /// Serve a corpus directory as a GOPROXY.
    Upstream {
        #[arg(long)]
        corpus: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Added latency per request, in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse() {
        Cli::Corpus { out, large_mib, many } => {
            let c = Corpus::generate_with(&out, large_mib << 20, many)?;
            println!("wrote {} module versions to {}", c.versions.len(), out.display());
        }
        Cli::Upstream { corpus, listen, delay_ms } => {
            let up = FixtureUpstream::start_on(corpus, listen).await?;
            up.set_faults(Faults { delay: Duration::from_millis(delay_ms), ..Faults::default() });
            println!("{}", up.url());
            tokio::signal::ctrl_c().await?;
        }
    }
    Ok(())
}
