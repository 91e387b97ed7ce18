//! Active health checks: every interval, each origin's load endpoint on
//! its operator listener (`GET /loadz` → `{"in_flight": n, "ewma_latency_ms": x}`) is asked with a
//! timeout. An answer feeds the load view (health, reported load, latency);
//! a refused connection takes the origin out at once (nothing listens, so a
//! dead origin leaves routing within one interval); other failures count
//! toward `fall`; a check this process could not make (out of descriptors
//! or ports) counts for nothing. Up again after `rise` successes (see
//! [`crate::load::HealthPolicy`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Deserialize;

use crate::watch::Membership;

/// The body of an origin's `/loadz`.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq)]
pub struct LoadReport {
    pub in_flight: i64,
    pub ewma_latency_ms: f64,
}

/// Why a check failed.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeError {
    /// Nothing listens there: the origin is down, no need to wait for more
    /// failures.
    Refused(String),
    /// Timeout, bad answer, reset: may be passing, counts toward `fall`.
    Failed(String),
    /// No socket to ask with (this process out of descriptors, the machine
    /// out of ports): says nothing of the origin, counts for nothing.
    Local(String),
}

/// Whether `e` is a shortage on this machine, not an answer of the origin's.
fn local(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL))
}

/// Asks one origin for its load (`scheme`: `http` or `https`).
pub fn probe(agent: &ureq::Agent, scheme: &str, address: &str) -> Result<LoadReport, ProbeError> {
    let mut resp = agent.get(&format!("{scheme}://{address}/loadz")).call().map_err(|e| match e {
        ureq::Error::Io(io) if local(&io) => ProbeError::Local(io.to_string()),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            ProbeError::Refused(io.to_string())
        }
        ureq::Error::ConnectionFailed => ProbeError::Refused("connection failed".into()),
        other => ProbeError::Failed(other.to_string()),
    })?;
    resp.body_mut().read_json::<LoadReport>().map_err(|e| ProbeError::Failed(e.to_string()))
}

/// Checks every member of the current membership each interval, in a
/// background thread, until the handle is dropped. With `tls_roots` (DER
/// certificates), over TLS trusting those alone.
pub fn spawn(membership: Arc<Membership>, tls_roots: Option<Vec<Vec<u8>>>) -> std::io::Result<HealthHandle> {
    let scheme = if tls_roots.is_some() { "https" } else { "http" };
    let roots = tls_roots.map(|certs| {
        let certs = certs.iter().map(|der| ureq::tls::Certificate::from_der(der).to_owned()).collect::<Vec<_>>();
        ureq::tls::RootCerts::Specific(Arc::new(certs))
    });
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let thread = std::thread::Builder::new().name("health-checks".into()).spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            let snap = membership.snapshot();
            let (interval, timeout) =
                (Duration::from_millis(snap.health.interval_ms), Duration::from_millis(snap.health.timeout_ms));
            let mut config = ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(true);
            if let Some(roots) = &roots {
                config = config.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots.clone()).build());
            }
            let agent: ureq::Agent = config.build().into();
            for m in snap.topology.members() {
                let view = membership.view();
                match probe(&agent, scheme, &m.operator) {
                    Ok(r) => {
                        view.report(
                            &m.id,
                            r.in_flight,
                            Some(Duration::from_secs_f64(r.ewma_latency_ms.max(0.0) / 1000.0)),
                        );
                        view.check_result(&m.id, true);
                    }
                    Err(ProbeError::Refused(e)) => {
                        tracing::debug!(origin = %m.id, operator = %m.operator, error = %e, "origin refuses connections: down");
                        view.mark_down(&m.id);
                    }
                    Err(ProbeError::Local(e)) => {
                        tracing::warn!(origin = %m.id, error = %e, "health check not made: out of local resources");
                        view.check_not_made(&m.id);
                    }
                    Err(ProbeError::Failed(e)) => {
                        tracing::debug!(origin = %m.id, operator = %m.operator, error = %e, "health check failed");
                        view.check_result(&m.id, false);
                    }
                }
            }
            let mut slept = Duration::ZERO;
            while slept < interval && !stop2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
                slept += Duration::from_millis(20);
            }
        }
    })?;
    Ok(HealthHandle { stop, thread: Some(thread) })
}

pub struct HealthHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for HealthHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
