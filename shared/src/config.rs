//! Loading a node's TOML config: file (or the embedded default), then
//! environment overrides, then validation. Every error names the file and
//! the key at fault.
//!
//! Environment overrides use the node's prefix and `__` between nested keys:
//! `MODCDN_ORIGIN__LISTEN=0.0.0.0:8080`, `MODCDN_ORIGIN__TTL__MUTABLE_SECS=30`.
//! A value is read as a TOML value when it parses as one, else as a string.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::policy::Ttls;
use crate::telemetry::LogFormat;

/// `[ttl]`: how long mutable answers are fresh, in seconds (both nodes).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtlConfig {
    /// list and @latest. Default 60.
    pub mutable_secs: u64,
    /// Query .info. Default 60.
    pub query_secs: u64,
    /// 404/410. Default 60.
    pub negative_secs: u64,
}

impl Default for TtlConfig {
    fn default() -> Self {
        TtlConfig { mutable_secs: 60, query_secs: 60, negative_secs: 60 }
    }
}

impl TtlConfig {
    pub fn ttls(&self) -> Ttls {
        let secs = std::time::Duration::from_secs;
        Ttls {
            mutable: secs(self.mutable_secs),
            query: secs(self.query_secs),
            negative: secs(self.negative_secs),
            ..Ttls::default()
        }
    }
}

impl Validate for TtlConfig {
    fn validate(&self) -> Vec<(String, String)> {
        [
            ("ttl.mutable_secs", self.mutable_secs),
            ("ttl.query_secs", self.query_secs),
            ("ttl.negative_secs", self.negative_secs),
        ]
        .into_iter()
        .filter(|(_, v)| *v == 0 || *v > 86_400)
        .map(|(key, v)| (key.to_string(), format!("{v} is out of range (1..=86400)")))
        .collect()
    }
}

/// `[log]` of both nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` (default) or `json`.
    pub format: LogFormat,
    /// Default `info`.
    pub level: String,
    /// OTLP/HTTP traces endpoint (`http://collector:4318/v1/traces`); empty
    /// turns trace export off. Default "".
    #[serde(deserialize_with = "optional")]
    pub otlp_endpoint: Option<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Human, level: "info".into(), otlp_endpoint: None }
    }
}

/// `deserialize_with` for a setting that is off when empty: `""` is `None`,
/// anything else must parse as `T` (the error names the key and line).
pub fn optional<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text = String::deserialize(d)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: key `{key}`: {message}")]
    Invalid { file: String, key: String, message: String },
}

/// A config that can check itself after loading: each problem is the key
/// and what is wrong with it.
pub trait Validate {
    fn validate(&self) -> Vec<(String, String)>;
}

/// Where the config came from, for messages.
pub const EMBEDDED: &str = "<embedded default config>";

/// A command-line flag that sets a config key: CLI > env > file, and the
/// value is validated with the rest.
#[derive(Debug, Clone)]
pub struct Flag {
    /// The top-level config key it sets (`store_dir`).
    pub key: &'static str,
    /// The flag as the user typed it (`--store-dir`), for messages.
    pub flag: &'static str,
    /// Its value, a TOML string.
    pub value: String,
}

/// Loads `T` from `file` (or from `embedded` when there is none), applies
/// overrides from `env` (name, value pairs) under `env_prefix`, then the
/// command-line `flags`, and validates the result once: an invalid flag is
/// named as the flag.
pub fn load<T: DeserializeOwned + Validate>(
    file: Option<&Path>,
    embedded: &str,
    env_prefix: &str,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &[Flag],
) -> Result<T, ConfigError> {
    let (name, text) = match file {
        Some(p) => {
            let name = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read { file: name.clone(), source })?;
            (name, text)
        }
        None => (EMBEDDED.to_string(), embedded.to_string()),
    };
    let parse_err =
        |e: toml::de::Error| ConfigError::Parse { file: name.clone(), message: e.to_string().trim_end().to_string() };
    let overrides: Vec<(String, String)> = env
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(env_prefix).and_then(|k| k.strip_prefix("__")).map(|k| (k.to_string(), v)))
        .collect();
    let config: T = if overrides.is_empty() && flags.is_empty() {
        // Straight from the text, so errors carry line and column; the
        // key's whole path (`key \`admin.token\``) comes from reading it
        // again as a table.
        toml::from_str(&text).map_err(|e| {
            let mut e = parse_err(e);
            let path = toml::from_str::<toml::Table>(&text).ok().and_then(|t| T::deserialize(t).err());
            let path = path.and_then(|p| p.to_string().lines().last()?.strip_prefix("in ").map(String::from));
            if let (ConfigError::Parse { message, .. }, Some(path)) = (&mut e, path) {
                message.push_str(&format!("\nkey {path}"));
            }
            e
        })?
    } else {
        let mut table: toml::Table = toml::from_str(&text).map_err(parse_err)?;
        for (key, value) in &overrides {
            apply_override(&mut table, key, value);
        }
        for f in flags {
            table.insert(f.key.to_string(), toml::Value::String(f.value.clone()));
        }
        let with = format!("{name} (with {env_prefix}__* environment overrides and command-line flags)");
        T::deserialize(table)
            .map_err(|e| ConfigError::Parse { file: with, message: e.to_string().trim_end().to_string() })?
    };
    if let Some((key, message)) = config.validate().into_iter().next() {
        return Err(match flags.iter().find(|f| f.key == key) {
            Some(f) => ConfigError::Invalid { file: "command line".into(), key: f.flag.into(), message },
            None => ConfigError::Invalid { file: name, key, message },
        });
    }
    Ok(config)
}

fn apply_override(table: &mut toml::Table, key: &str, value: &str) {
    let parts: Vec<String> = key.split("__").map(|p| p.to_ascii_lowercase()).collect();
    let Some((last, parents)) = parts.split_last() else { return };
    let mut cur = table;
    for p in parents {
        let entry = cur.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(t) = entry else { return };
        cur = t;
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    cur.insert(last.clone(), parsed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        listen: String,
        #[serde(default)]
        inner: Inner,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        secs: u64,
        #[serde(default)]
        name: String,
    }

    impl Validate for Demo {
        fn validate(&self) -> Vec<(String, String)> {
            if self.inner.secs > 100 {
                vec![("inner.secs".into(), "must be at most 100".into())]
            } else {
                vec![]
            }
        }
    }

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Demo, ConfigError> {
        let dir =
            std::env::temp_dir().join(format!("modcdn-config-test-{}-{}", std::process::id(), text.len() + env.len()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("demo.toml");
        std::fs::write(&file, text).expect("write");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let r = load::<Demo>(Some(&file), "", "DEMO", env, &[]);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn file_env_and_errors() {
        let d = load_str("listen = \"a\"\n[inner]\nsecs = 5\n", &[]).expect("ok");
        assert_eq!(d.listen, "a");
        assert_eq!(d.inner.secs, 5);
        let d =
            load_str("listen = \"a\"\n", &[("DEMO__INNER__SECS", "7"), ("DEMO__INNER__NAME", "x y"), ("OTHER", "1")])
                .expect("ok");
        assert_eq!((d.inner.secs, d.inner.name.as_str()), (7, "x y"));

        let e = load_str("listen = \"a\"\n[inner]\nsecz = 5\n", &[]).expect_err("unknown key").to_string();
        assert!(e.contains("demo.toml") && e.contains("secz") && e.contains("line 3"), "{e}");
        let e = load_str("listen = \"a\"\n[inner]\nsecs = 500\n", &[]).expect_err("invalid").to_string();
        assert!(e.contains("demo.toml") && e.contains("inner.secs"), "{e}");
        let e = load_str("listen = 1\n", &[]).expect_err("type").to_string();
        assert!(e.contains("listen"), "{e}");
        let e = load_str("listen = \"a\"\n", &[("DEMO__INNER__SECS", "\"no\"")]).expect_err("env type").to_string();
        assert!(e.contains("DEMO__") && e.contains("secs"), "{e}");
        let e = load::<Demo>(Some(Path::new("/nonexistent/modcdn.toml")), "", "DEMO", [], &[])
            .expect_err("missing")
            .to_string();
        assert!(e.contains("/nonexistent/modcdn.toml"), "{e}");
    }
}
