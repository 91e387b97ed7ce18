//! The reference checksum database (golang.org/x/mod/sumdb) over a fixture
//! corpus, as a real process on 127.0.0.1: see `tests/go/`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// Builds the Go helper once per test process (offline, GOPATH mode).
fn helper() -> &'static Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let gopath = Path::new(env!("CARGO_MANIFEST_DIR")).join("go");
        // Next to the running executable, under the build's target dir:
        // built under a name of this process, then renamed over the one
        // an earlier process built, so nothing accumulates outside it.
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let dir = exe.parent().ok_or("executable has no directory")?.join("modcdn-go");
        let out = dir.join("sumdbfixture");
        let building = dir.join(format!("sumdbfixture.{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&building)
            .arg("modcdn.test/sumdbfixture")
            .env("GO111MODULE", "off")
            .env("GOPATH", format!("{}:/usr/share/gocode", gopath.display()))
            .env("GOCACHE", dir.join("cache"))
            .env("GOFLAGS", "")
            .status()
            .map_err(|e| format!("go build: {e} (apt-get install golang-go golang-golang-x-mod-dev)"))?;
        if !status.success() {
            return Err("go build modcdn.test/sumdbfixture failed (apt-get install golang-golang-x-mod-dev)".into());
        }
        std::fs::rename(&building, &out).map_err(|e| format!("rename {}: {e}", building.display()))?;
        Ok(out)
    })
}

/// A running checksum database; killed when dropped.
pub struct SumDbProcess {
    child: Child,
    pub url: String,
    pub name: String,
    /// The verifier key, as GOSUMDB takes it.
    pub key: String,
    /// The signer key, to run another log under the same name and key.
    pub signer: String,
}

impl SumDbProcess {
    pub fn start(corpus: &Path, name: &str) -> Result<SumDbProcess, String> {
        Self::start_with_signer(corpus, name, None)
    }

    /// With a given signer key: a second log under the same name and key.
    pub fn start_with_signer(corpus: &Path, name: &str, signer: Option<&str>) -> Result<SumDbProcess, String> {
        let bin = helper().clone()?;
        let mut cmd = Command::new(bin);
        cmd.arg("-corpus").arg(corpus).arg("-name").arg(name);
        if let Some(s) = signer {
            cmd.arg("-signer").arg(s);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map_err(|e| e.to_string())?;
        let mut fields = line.split_whitespace();
        let (Some(url), Some(key), Some(signer)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(format!("unexpected first line {line:?}"));
        };
        Ok(SumDbProcess { url: url.into(), key: key.into(), signer: signer.into(), name: name.to_string(), child })
    }
}

impl Drop for SumDbProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Upstreams for a checksum-database fork: the generated corpus (what the
/// real log holds) and a corpus of only `example.com/unlogged@v1.0.0` (what
/// a fork of it holds), chained `corpus,other` as an origin's upstream.
pub struct ForkUpstreams {
    pub corpus: crate::corpus::Corpus,
    pub other: crate::corpus::Corpus,
    pub upstream: crate::upstream::FixtureUpstream,
    pub other_upstream: crate::upstream::FixtureUpstream,
    pub chain: String,
}

impl ForkUpstreams {
    pub async fn start(dir: &Path) -> ForkUpstreams {
        use crate::corpus::Corpus;
        use crate::upstream::FixtureUpstream;
        let corpus = Corpus::generate(&dir.join("corpus"), 1024).expect("corpus");
        let mut other = Corpus { root: dir.join("other"), versions: Vec::new() };
        other.publish("example.com/unlogged", "v1.0.0").expect("publish");
        let upstream = FixtureUpstream::start(corpus.root.clone()).await.expect("upstream");
        let other_upstream = FixtureUpstream::start(other.root.clone()).await.expect("upstream 2");
        let chain = format!("{},{}", upstream.url(), other_upstream.url());
        ForkUpstreams { corpus, other, upstream, other_upstream, chain }
    }
}
