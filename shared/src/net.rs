//! Whom a request is from, behind proxies that say so.

use std::net::IpAddr;

pub use ipnet::IpNet;

/// The client's address: the peer, unless the peer is one of `trusted` and
/// `X-Forwarded-For` names someone; then the rightmost address of the chain
/// that is not trusted (a client can prepend anything, but not what the
/// trusted proxies append). Garbage falls back to the peer.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(&ip));
    let Some(xff) = forwarded_for.filter(|_| is_trusted(peer)) else { return peer };
    let mut chain = Vec::new();
    for part in xff.split(',') {
        match part.trim().parse::<IpAddr>() {
            Ok(ip) => chain.push(ip),
            Err(_) => return peer,
        }
    }
    chain.into_iter().rev().find(|ip| !is_trusted(*ip)).unwrap_or(peer)
}

/// Parses CIDRs (or bare addresses, as /32 and /128); the first that is
/// neither is the error.
pub fn parse_networks(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{s:?} is not a CIDR"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_counts_only_from_trusted_peers() {
        let trusted = parse_networks(&["10.0.0.0/8".into()]).expect("cidr");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(client_ip(ip("203.0.113.9"), Some("10.1.1.1"), &trusted), ip("203.0.113.9"));
        assert_eq!(client_ip(ip("10.0.0.2"), Some("198.51.100.7"), &trusted), ip("198.51.100.7"));
        assert_eq!(client_ip(ip("10.0.0.2"), Some("10.9.9.9, 198.51.100.7"), &trusted), ip("198.51.100.7"));
        assert_eq!(client_ip(ip("10.0.0.2"), Some("198.51.100.7, 10.0.0.3"), &trusted), ip("198.51.100.7"));
        assert_eq!(client_ip(ip("10.0.0.2"), Some("nonsense"), &trusted), ip("10.0.0.2"));
        assert_eq!(client_ip(ip("10.0.0.2"), None, &trusted), ip("10.0.0.2"));
        assert_eq!(parse_networks(&["127.0.0.1".into()]).expect("bare").len(), 1);
        assert!(parse_networks(&["bogus".into()]).is_err());
    }
}
