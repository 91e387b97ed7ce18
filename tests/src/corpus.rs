//! A generated module corpus in GOPROXY layout: real module zips holding
//! Go code that compiles, with the shapes a proxy must get right (an upper
//! case path, a `/v2` module, a prerelease, `+incompatible`, a
//! pseudo-version, a dependency graph and a large incompressible module).
//!
//! Generated, not checked in: `Corpus::generate` is deterministic for a given
//! size, and the `modcdn-fixture corpus` command writes the same tree.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use modcdn_shared::{dirhash, module};

/// One module version in the corpus, with the hashes go.sum will record.
#[derive(Debug, Clone)]
pub struct ModVersion {
    pub path: String,
    pub version: String,
    /// `h1:` of the zip.
    pub sum: String,
    /// `h1:` of the go.mod.
    pub go_mod_sum: String,
    pub zip_size: u64,
    /// Whether it appears in `@v/list` (pseudo-versions do not).
    pub listed: bool,
}

pub struct Corpus {
    pub root: PathBuf,
    pub versions: Vec<ModVersion>,
}

/// What goes into one module version.
struct Spec<'a> {
    path: &'a str,
    version: &'a str,
    /// None: no go.mod in the zip (pre-modules code, `+incompatible`).
    go_mod: Option<String>,
    files: Vec<(String, Vec<u8>)>,
    listed: bool,
}

pub const TIME: &str = "2024-01-02T03:04:05Z";
pub const ALPHA: &str = "example.com/alpha";
pub const BETA: &str = "example.com/beta/v2";
pub const UPPER: &str = "example.com/Upper/Case";
pub const LEGACY: &str = "example.com/legacy";
pub const PSEUDO: &str = "example.com/pseudo";
pub const PSEUDO_VERSION: &str = "v0.0.0-20240102030405-abcdef123456";
pub const LARGE: &str = "example.com/large";
pub const GOPKG: &str = "gopkg.in/fixture.v2";
/// A chain example.com/chain/c0 → c1 → c2 → c3 (each requires and imports
/// the next): the go command discovers it one go.mod at a time.
pub const CHAIN: [&str; 4] =
    ["example.com/chain/c0", "example.com/chain/c1", "example.com/chain/c2", "example.com/chain/c3"];

fn go_file(pkg: &str, imports: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut s = format!("package {pkg}\n\n");
    for (alias, path) in imports {
        s.push_str(&format!("import {alias} \"{path}\"\n"));
    }
    s.push_str(body);
    s.into_bytes()
}

fn go_mod(path: &str, requires: &[(&str, &str)]) -> String {
    let mut s = format!("module {path}\n\ngo 1.19\n");
    if !requires.is_empty() {
        s.push_str("\nrequire (\n");
        for (p, v) in requires {
            s.push_str(&format!("\t{p} {v}\n"));
        }
        s.push_str(")\n");
    }
    s
}

/// Deterministic incompressible bytes (xorshift), so the large zip is as
/// big on the wire as on disk.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn chain(i: usize) -> Spec<'static> {
    let pkg = format!("c{i}");
    let (requires, imports, body) = match CHAIN.get(i + 1) {
        Some(next) => (
            vec![(*next, "v1.0.0")],
            vec![("next", *next)],
            format!("\nfunc Hello() string {{ return \"{pkg} \" + next.Hello() }}\n"),
        ),
        None => (vec![], vec![], format!("\nfunc Hello() string {{ return \"{pkg}\" }}\n")),
    };
    Spec {
        path: CHAIN[i],
        version: "v1.0.0",
        go_mod: Some(go_mod(CHAIN[i], &requires)),
        files: vec![(format!("{pkg}.go"), go_file(&pkg, &imports, &body))],
        listed: true,
    }
}

fn specs(large_bytes: usize) -> Vec<Spec<'static>> {
    let simple = |path: &'static str, version: &'static str, pkg: &str, word: &str, listed: bool| Spec {
        path,
        version,
        go_mod: Some(go_mod(path, &[])),
        files: vec![(
            format!("{pkg}.go"),
            go_file(pkg, &[], &format!("\nfunc Hello() string {{ return \"{word} {version}\" }}\n")),
        )],
        listed,
    };
    let alpha = |version: &'static str| {
        Spec {
        path: ALPHA,
        version,
        go_mod: Some(go_mod(ALPHA, &[(BETA, "v2.0.1"), (UPPER, "v1.0.0")])),
        files: vec![
            (
                "alpha.go".into(),
                go_file(
                    "alpha",
                    &[("beta", BETA), ("upper", UPPER)],
                    &format!("\nfunc Hello() string {{ return \"alpha {version} \" + beta.Hello() + \" \" + upper.Hello() }}\n"),
                ),
            ),
            ("LICENSE".into(), b"Fixture license: use freely.\n".to_vec()),
            ("internal/util/util.go".into(), go_file("util", &[], "\nconst Name = \"util\"\n")),
        ],
        listed: true,
    }
    };
    vec![
        alpha("v1.0.0"),
        alpha("v1.1.0"),
        alpha("v1.2.0-rc.1"),
        simple(BETA, "v2.0.0", "beta", "beta", true),
        simple(BETA, "v2.0.1", "beta", "beta", true),
        simple(UPPER, "v1.0.0", "upper", "upper", true),
        simple(LEGACY, "v1.0.0", "legacy", "legacy", true),
        Spec {
            path: LEGACY,
            version: "v3.0.0+incompatible",
            go_mod: None,
            files: vec![(
                "legacy.go".into(),
                go_file("legacy", &[], "\nfunc Hello() string { return \"legacy v3\" }\n"),
            )],
            listed: true,
        },
        simple(PSEUDO, PSEUDO_VERSION, "pseudo", "pseudo", false),
        simple(GOPKG, "v2.1.0", "fixture", "gopkg", true),
        chain(0),
        chain(1),
        chain(2),
        chain(3),
        Spec {
            path: LARGE,
            version: "v1.0.0",
            go_mod: Some(go_mod(LARGE, &[])),
            files: vec![
                ("large.go".into(), go_file("large", &[], "\nfunc Hello() string { return \"large\" }\n")),
                ("testdata/blob.bin".into(), noise(large_bytes, 0x9e3779b97f4a7c15)),
            ],
            listed: true,
        },
    ]
}

impl Corpus {
    /// Writes the corpus under `root` (GOPROXY layout) and returns what it holds.
    /// `large_bytes` sizes the incompressible file of `example.com/large`.
    pub fn generate(root: &Path, large_bytes: usize) -> io::Result<Corpus> {
        Self::generate_with(root, large_bytes, 0)
    }

    /// As [`Corpus::generate`], plus `many` small modules
    /// `example.com/many/mNNNN@v1.0.0` for benchmarks.
    pub fn generate_with(root: &Path, large_bytes: usize, many: usize) -> io::Result<Corpus> {
        let mut all = specs(large_bytes);
        let many_paths: Vec<&'static str> =
            (0..many).map(|i| &*Box::leak(format!("example.com/many/m{i:04}").into_boxed_str())).collect();
        for p in &many_paths {
            let pkg = p.rsplit('/').next().unwrap_or("m");
            all.push(Spec {
                path: p,
                version: "v1.0.0",
                go_mod: Some(go_mod(p, &[])),
                files: vec![(format!("{pkg}.go"), go_file(pkg, &[], "\nfunc Hello() string { return \"many\" }\n"))],
                listed: true,
            });
        }
        let mut versions = Vec::new();
        for spec in &all {
            versions.push(write_version(root, spec)?);
        }
        // list files: listed versions of each module, one per line.
        let mut by_module: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for v in &versions {
            let e = by_module.entry(v.path.as_str()).or_default();
            if v.listed {
                e.push(v.version.as_str());
            }
        }
        for (path, list) in by_module {
            let dir = root.join(escape(path)).join("@v");
            let mut text = list.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            fs::write(dir.join("list"), text)?;
        }
        Ok(Corpus { root: root.to_path_buf(), versions })
    }

    /// Publishes a new version of `path` upstream, as a module author would:
    /// its files, and the version appended to the list.
    pub fn publish(&mut self, path: &'static str, version: &'static str) -> io::Result<ModVersion> {
        let pkg = path.rsplit('/').next().unwrap_or("m").to_ascii_lowercase();
        let spec = Spec {
            path,
            version,
            go_mod: Some(go_mod(path, &[])),
            files: vec![(
                format!("{pkg}.go"),
                go_file(&pkg, &[], &format!("\nfunc Hello() string {{ return \"{version}\" }}\n")),
            )],
            listed: true,
        };
        let v = write_version(&self.root, &spec)?;
        let list = self.root.join(escape(path)).join("@v").join("list");
        let mut text = fs::read_to_string(&list).unwrap_or_default();
        text.push_str(&format!("{version}\n"));
        fs::write(&list, text)?;
        self.versions.push(v.clone());
        Ok(v)
    }

    /// Adds `example.com/sized/k<kib>@v1.0.0`, whose zip holds `kib` KiB of
    /// incompressible bytes (zips of chosen sizes, for benchmarks).
    pub fn add_sized(&mut self, kib: usize) -> io::Result<ModVersion> {
        let path: &'static str = Box::leak(format!("example.com/sized/k{kib}").into_boxed_str());
        let spec = Spec {
            path,
            version: "v1.0.0",
            go_mod: Some(go_mod(path, &[])),
            files: vec![("testdata/blob.bin".into(), noise(kib << 10, 0x2545f4914f6cdd1d ^ kib as u64))],
            listed: true,
        };
        let v = write_version(&self.root, &spec)?;
        fs::write(self.root.join(escape(path)).join("@v").join("list"), "v1.0.0\n")?;
        self.versions.push(v.clone());
        Ok(v)
    }

    pub fn get(&self, path: &str, version: &str) -> Option<&ModVersion> {
        self.versions.iter().find(|v| v.path == path && v.version == version)
    }

    /// The escaped GOPROXY path of an artifact, e.g. `.../@v/v1.0.0.zip`.
    pub fn key(path: &str, version: &str, ext: &str) -> String {
        format!("{}/@v/{}.{ext}", escape(path), module::escape_version(version).unwrap_or_default())
    }

    /// The `.info`, `.mod` and `.zip` keys of the many small modules of
    /// [`Corpus::generate_with`], in the order they were generated.
    pub fn many_keys(&self) -> Vec<String> {
        self.versions
            .iter()
            .filter(|v| v.path.starts_with("example.com/many/"))
            .flat_map(|v| ["info", "mod", "zip"].map(|ext| Corpus::key(&v.path, &v.version, ext)))
            .collect()
    }
}

pub fn escape(path: &str) -> String {
    module::escape_path(path).unwrap_or_else(|e| panic!("fixture path {path}: {e}"))
}

fn write_version(root: &Path, spec: &Spec) -> io::Result<ModVersion> {
    let dir = root.join(escape(spec.path)).join("@v");
    fs::create_dir_all(&dir)?;
    let ev = module::escape_version(spec.version).map_err(io::Error::other)?;
    let mod_text = spec.go_mod.clone().unwrap_or_else(|| format!("module {}\n", spec.path));
    fs::write(dir.join(format!("{ev}.mod")), &mod_text)?;
    fs::write(dir.join(format!("{ev}.info")), format!("{{\"Version\":\"{}\",\"Time\":\"{TIME}\"}}\n", spec.version))?;

    let prefix = format!("{}@{}/", spec.path, spec.version);
    let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
    let mut files: Vec<(String, &[u8])> = spec.files.iter().map(|(n, d)| (n.clone(), d.as_slice())).collect();
    if let Some(m) = &spec.go_mod {
        files.push(("go.mod".into(), m.as_bytes()));
    }
    for (name, data) in files {
        let method =
            if data.len() > 1 << 20 { zip::CompressionMethod::Stored } else { zip::CompressionMethod::Deflated };
        w.start_file(
            format!("{prefix}{name}"),
            zip::write::SimpleFileOptions::default()
                .compression_method(method)
                .large_file(data.len() > u32::MAX as usize),
        )
        .map_err(io::Error::other)?;
        w.write_all(data)?;
    }
    let zip_bytes = w.finish().map_err(io::Error::other)?.into_inner();
    let sum = dirhash::hash_zip(io::Cursor::new(&zip_bytes))?;
    fs::write(dir.join(format!("{ev}.zip")), &zip_bytes)?;
    Ok(ModVersion {
        path: spec.path.to_string(),
        version: spec.version.to_string(),
        sum,
        go_mod_sum: dirhash::hash_go_mod(mod_text.as_bytes()),
        zip_size: zip_bytes.len() as u64,
        listed: spec.listed,
    })
}

/// A consumer of the whole fixture graph: the main graph and the chain.
pub fn write_graph_consumer(dir: &Path) -> io::Result<()> {
    write_consumer(dir)?;
    let gomod = fs::read_to_string(dir.join("go.mod"))?;
    fs::write(dir.join("go.mod"), gomod.replace("\n)\n", &format!("\n\t{} v1.0.0\n)\n", CHAIN[0])))?;
    fs::write(dir.join("chain.go"), format!("package main\n\nimport c0 \"{}\"\n\nvar _ = c0.Hello\n", CHAIN[0]))
}

/// A consumer of the chain: `go build` walks it one module at a time.
pub fn write_chain_consumer(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("go.mod"), format!("module example.com/chainuser\n\ngo 1.19\n\nrequire {} v1.0.0\n", CHAIN[0]))?;
    fs::write(
        dir.join("main.go"),
        format!(
            "package main\n\nimport (\n\t\"fmt\"\n\n\tc0 \"{}\"\n)\n\nfunc main() {{\n\tfmt.Println(c0.Hello())\n}}\n",
            CHAIN[0]
        ),
    )
}

/// A consumer module whose `go build` needs the whole graph.
pub fn write_consumer(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(
        dir.join("go.mod"),
        format!(
            "module example.com/consumer\n\ngo 1.19\n\nrequire (\n\t{ALPHA} v1.1.0\n\t{LEGACY} v3.0.0+incompatible\n\t{PSEUDO} {PSEUDO_VERSION}\n\t{GOPKG} v2.1.0\n)\n"
        ),
    )?;
    fs::write(
        dir.join("main.go"),
        format!(
            "package main\n\nimport (\n\t\"fmt\"\n\n\t\"{ALPHA}\"\n\t\"{LEGACY}\"\n\t\"{PSEUDO}\"\n\tfixture \"{GOPKG}\"\n)\n\nfunc main() {{\n\tfmt.Println(alpha.Hello(), legacy.Hello(), pseudo.Hello(), fixture.Hello())\n}}\n"
        ),
    )
}
