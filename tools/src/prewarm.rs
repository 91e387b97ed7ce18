//! `modcdn prewarm`: warms a cluster (through an edge or an origin)
//! with the artifacts a list of modules needs, with bounded concurrency,
//! a progress bar and a summary; any failure makes it exit non-zero and
//! names the module.
//!
//! Inputs, each argument one of:
//! - `module@version` — its `.info`, `.mod` and `.zip`;
//! - a `go.sum` file — for each `<module> <version>` line the `.info`,
//!   `.mod` and `.zip`, for each `<version>/go.mod` line the `.mod`;
//! - a `go.mod` file — its requirements, as `module@version`;
//! - any other file — a top-N list, one `module@version` or bare `module`
//!   (its `@latest`) per line; `#` starts a comment.

use std::collections::BTreeSet;
use std::path::Path;

use futures::StreamExt;
use modcdn_shared::module::{ModulePath, Version};
use modcdn_shared::policy::{CacheStatus, CACHE_STATUS_HEADER};
use modcdn_shared::{gomod, Request};

/// One GOPROXY request to make, and the module it is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub module: String,
    pub key: String,
}

/// What the inputs ask for, deduplicated, in a stable order.
pub fn targets(inputs: &[String]) -> Result<Vec<Target>, String> {
    let mut out = BTreeSet::new();
    for input in inputs {
        if input.contains('@') && !Path::new(input).exists() {
            add_version(&mut out, input)?;
            continue;
        }
        let text = std::fs::read_to_string(input).map_err(|e| format!("{input}: {e}"))?;
        let name = Path::new(input).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with("go.sum") {
            for e in gomod::sum_entries(&text) {
                let (m, v) = parse(&e.path, &e.version).map_err(|err| format!("{input}: {err}"))?;
                let kinds: &[&str] = if e.go_mod_only { &["mod"] } else { &["info", "mod", "zip"] };
                for k in kinds {
                    out.insert(target(&m, &v, k));
                }
            }
        } else if name.ends_with("go.mod") {
            for (path, version) in gomod::requires(&text) {
                add_version(&mut out, &format!("{path}@{version}"))?;
            }
        } else {
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                if line.contains('@') {
                    add_version(&mut out, line).map_err(|e| format!("{input}:{}: {e}", n + 1))?;
                } else {
                    let m = ModulePath::new(line).map_err(|e| format!("{input}:{}: {e}", n + 1))?;
                    out.insert(Target { module: format!("{m}@latest"), key: Request::Latest(m).key() });
                }
            }
        }
    }
    Ok(out.into_iter().collect())
}

fn parse(path: &str, version: &str) -> Result<(ModulePath, Version), String> {
    let m = ModulePath::new(path).map_err(|e| e.to_string())?;
    let v = Version::new(version).map_err(|e| e.to_string())?;
    if !v.is_canonical() {
        return Err(format!("{path}@{version}: not a canonical version"));
    }
    Ok((m, v))
}

fn add_version(out: &mut BTreeSet<Target>, spec: &str) -> Result<(), String> {
    let (path, version) = spec.rsplit_once('@').ok_or_else(|| format!("{spec:?}: want module@version"))?;
    let (m, v) = parse(path, version)?;
    for k in ["info", "mod", "zip"] {
        out.insert(target(&m, &v, k));
    }
    Ok(())
}

fn target(m: &ModulePath, v: &Version, ext: &str) -> Target {
    let req = match ext {
        "info" => Request::Info(m.clone(), v.clone()),
        "mod" => Request::Mod(m.clone(), v.clone()),
        _ => Request::Zip(m.clone(), v.clone()),
    };
    Target { module: format!("{m}@{v}"), key: req.key() }
}

/// How a prewarm went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Already cached where asked (`X-Cache: HIT`).
    pub hits: usize,
    /// Fetched now.
    pub misses: usize,
    /// `module: what failed`, sorted.
    pub failures: Vec<String>,
}

/// GETs every target from `base` (an edge or origin URL), `concurrency` at
/// a time, reading each body to the end.
pub async fn run(base: &str, targets: Vec<Target>, concurrency: usize, progress: bool) -> Summary {
    let client = match reqwest::Client::builder().build() {
        Ok(c) => c,
        Err(e) => return Summary { failures: vec![format!("http client: {e}")], ..Summary::default() },
    };
    let bar =
        if progress { indicatif::ProgressBar::new(targets.len() as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let base = base.trim_end_matches('/').to_string();
    let results = futures::stream::iter(targets)
        .map(|t| {
            let (client, url, bar) = (client.clone(), format!("{base}/{}", t.key), bar.clone());
            async move {
                let outcome = fetch(&client, &url).await;
                bar.inc(1);
                bar.set_message(t.module.clone());
                (t, outcome)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    bar.finish_and_clear();
    let mut s = Summary::default();
    let mut failed = BTreeSet::new();
    for (t, outcome) in results {
        match outcome {
            Ok(true) => s.hits += 1,
            Ok(false) => s.misses += 1,
            Err(e) => {
                failed.insert(format!("{}: {} {e}", t.module, t.key));
            }
        }
    }
    s.failures = failed.into_iter().collect();
    s
}

/// Ok(hit?) or what failed.
async fn fetch(client: &reqwest::Client, url: &str) -> Result<bool, String> {
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let hit = CacheStatus::of_header(resp.headers().get(CACHE_STATUS_HEADER).map(|v| v.as_bytes())) == CacheStatus::Hit;
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        let first = String::from_utf8_lossy(&body).lines().next().unwrap_or("").chars().take(200).collect::<String>();
        return Err(format!("{status}: {first}"));
    }
    Ok(hit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_become_deduplicated_targets() {
        let dir = std::env::temp_dir().join(format!("modcdn-prewarm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let sum = dir.join("go.sum");
        std::fs::write(
            &sum,
            "example.com/a v1.0.0 h1:x=\nexample.com/a v1.0.0/go.mod h1:y=\nexample.com/B v1.1.0/go.mod h1:z=\n",
        )
        .expect("sum");
        let top = dir.join("top.txt");
        std::fs::write(&top, "# hot\nexample.com/a@v1.0.0\nexample.com/c\n").expect("top");
        let t = targets(&[
            sum.display().to_string(),
            top.display().to_string(),
            "example.com/d@v2.0.0+incompatible".into(),
        ])
        .expect("targets");
        let keys: Vec<&str> = t.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "example.com/!b/@v/v1.1.0.mod",
                "example.com/a/@v/v1.0.0.info",
                "example.com/a/@v/v1.0.0.mod",
                "example.com/a/@v/v1.0.0.zip",
                "example.com/c/@latest",
                "example.com/d/@v/v2.0.0+incompatible.info",
                "example.com/d/@v/v2.0.0+incompatible.mod",
                "example.com/d/@v/v2.0.0+incompatible.zip",
            ]
        );
        assert!(targets(&["example.com/a@master".into()]).is_err());
        assert!(targets(&["/nonexistent/go.sum".into()]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
