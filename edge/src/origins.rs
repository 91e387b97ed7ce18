//! How an edge talks to origins outside the proxied requests (purges, the
//! purge log, hot reports and lists): one HTTP client, over TLS when
//! `origin.tls_ca` is set (trusting that CA only), and the cluster token,
//! which goes to operator listeners and nowhere else.

use std::time::Duration;

use anyhow::Context;
use reqwest::{Method, RequestBuilder};

use crate::config::OriginClientConfig;

#[derive(Clone)]
pub struct OriginClient {
    /// Also for plain requests to this edge's own listener.
    pub http: reqwest::Client,
    scheme: &'static str,
    token: Option<modcdn_shared::secret::Token>,
}

impl OriginClient {
    pub fn new(cfg: &OriginClientConfig) -> anyhow::Result<OriginClient> {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if let Some(ca) = &cfg.tls_ca {
            http = http.tls_built_in_root_certs(false);
            for cert in read_ca(ca).with_context(|| format!("origin.tls_ca {}", ca.display()))? {
                http = http.add_root_certificate(reqwest::Certificate::from_der(&cert)?);
            }
        }
        Ok(OriginClient {
            http: http.build()?,
            scheme: if cfg.tls_ca.is_some() { "https" } else { "http" },
            token: cfg.token.clone(),
        })
    }

    /// Whether the cluster token is set (operator requests are off without).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// A request to an origin's operator listener, with the cluster token.
    pub fn operator(&self, method: Method, operator: &str, path: &str) -> RequestBuilder {
        let request = self.http.request(method, format!("{}://{operator}{path}", self.scheme));
        match &self.token {
            Some(token) => request.bearer_auth(token.expose()),
            None => request,
        }
    }

    /// A request to an origin's public (GOPROXY) listener: no token.
    pub fn public(&self, address: &str, path: &str) -> RequestBuilder {
        self.http.get(format!("{}://{address}{path}", self.scheme))
    }
}

/// The DER certificates of a PEM file (at least one).
pub fn read_ca(path: &std::path::Path) -> anyhow::Result<Vec<Vec<u8>>> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)?
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(!certs.is_empty(), "no PEM certificate in it");
    Ok(certs)
}
