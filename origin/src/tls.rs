//! TLS for the origin's listeners (`[tls] cert`, `key`): both the public
//! and the operator listener then speak only TLS (HTTP/2 or HTTP/1.1 by
//! ALPN), so the cluster token edges send never crosses the network in
//! the clear.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The server config for `cfg`; errors name the key and the file.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, (String, String)> {
    let problem =
        |key: &str, path: &PathBuf, e: &dyn std::fmt::Display| (key.to_string(), format!("{}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(&cfg.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| problem("tls.cert", &cfg.cert, &e))?;
    if certs.is_empty() {
        return Err(problem("tls.cert", &cfg.cert, &"no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| problem("tls.key", &cfg.key, &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| problem("tls.cert", &cfg.cert, &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| problem("tls.key", &cfg.key, &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dir = dir.path();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let cfg = TlsConfig { cert: cert.clone(), key: key.clone() };
        let (k, msg) = server_config(&cfg).expect_err("no files");
        assert_eq!(k, "tls.cert");
        assert!(msg.contains("cert.pem"), "{msg}");
        std::fs::write(&cert, "not pem\n").expect("write");
        assert_eq!(server_config(&cfg).expect_err("no certificate").0, "tls.cert");
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").expect("write");
        let (k, msg) = server_config(&cfg).expect_err("no key");
        assert_eq!(k, "tls.key");
        assert!(msg.contains("key.pem"), "{msg}");
    }
}
