//! `modcdn-router`: see what a membership change moves, where a client and
//! module are routed, and build the test GeoIP database.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use modcdn_router::membership::MembershipFile;
use modcdn_router::{geo, plan};

#[derive(Parser)]
#[command(version, about = "modcdn routing: consistent-hash ring, regions, bounded loads")]
enum Cli {
    /// Print, per region and member, the share of keys that would move from
    /// one membership file to another, next to the ideal.
    #[command(after_help = "Example:\n  modcdn-router plan --from router.toml --to router.new.toml --svg plan.svg")]
    Plan {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        to: PathBuf,
        /// Synthetic module keys to compare.
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// Also draw the shares before and after as an SVG picture here.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Print the region of a client IP and the origins a module goes to.
    #[command(
        after_help = "Example:\n  modcdn-router lookup --config deploy/router.toml --ip 127.0.1.5 golang.org/x/mod"
    )]
    Lookup {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        ip: IpAddr,
        /// Module path (escaped or not).
        module: String,
    },
    /// Build a MaxMind DB from `network,country,continent` CSV lines.
    #[command(
        after_help = "Example:\n  modcdn-router geo-build --csv geo-data/test-ranges.csv --out geo-data/test-country.mmdb"
    )]
    GeoBuild {
        #[arg(long)]
        csv: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modcdn-router: {e}");
            ExitCode::from(64)
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli {
        Cli::Plan { from, to, keys, svg } => {
            let a = MembershipFile::snapshot(&from).map_err(|e| e.to_string())?;
            let b = MembershipFile::snapshot(&to).map_err(|e| e.to_string())?;
            let ks = plan::synthetic_keys(keys);
            // Drawn on stderr, and only on a terminal.
            let total = (ks.len() * plan::regions(&a.topology, &b.topology).len()) as u64;
            let bar = indicatif::ProgressBar::new(total).with_style(
                indicatif::ProgressStyle::with_template("{bar:40} {percent}% of {len} key lookups, {eta} left")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let plans = plan::plan(&a.topology, &b.topology, &ks, &mut |n| bar.inc(n));
            bar.finish_and_clear();
            print!("{}", plan::render(&plans, keys));
            if let Some(file) = svg {
                std::fs::write(&file, plan::svg(&plans, keys)).map_err(|e| format!("{}: {e}", file.display()))?;
            }
        }
        Cli::Lookup { config, ip, module } => {
            let s = MembershipFile::snapshot(&config).map_err(|e| e.to_string())?;
            // As the edge places it: the module's escaped path.
            let path = modcdn_shared::module::ModulePath::new(&module)
                .or_else(|_| modcdn_shared::module::ModulePath::from_escaped(&module))
                .map_err(|e| e.to_string())?;
            let key = modcdn_shared::module::RoutingKey::of(&path);
            let region = s.geo.region_of(ip);
            let (country, continent) = s.geo.locate(ip);
            println!(
                "client {ip}: country {} continent {} → region {region}",
                country.as_deref().unwrap_or("-"),
                continent.as_deref().unwrap_or("-")
            );
            println!("key {}", key.as_str());
            let mut any = false;
            for (i, m) in s.topology.route(&key, region).enumerate() {
                println!("{}. {} {} (region {}, weight {})", i + 1, m.id, m.address, m.region, m.weight);
                any = true;
            }
            if !any {
                return Err("no origin in the membership can serve this".into());
            }
        }
        Cli::GeoBuild { csv, out } => {
            let text = std::fs::read_to_string(&csv).map_err(|e| format!("{}: {e}", csv.display()))?;
            let db = geo::build_country_db(&text).map_err(|e| format!("{}: {e}", csv.display()))?;
            std::fs::write(&out, db).map_err(|e| format!("{}: {e}", out.display()))?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}
