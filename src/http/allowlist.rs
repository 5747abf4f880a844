//! The IP allowlist: which clients the sidecar answers, and who the client is when a trusted
//! proxy stands in front of it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::rejection::ExtensionRejection;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

use crate::cidr::parse_cidrs;
pub use crate::cidr::CidrError;
use crate::error::Error;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Who may call the sidecar. Loopback clients always may.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    allow: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The client is outside the allowlist.
    Client(IpAddr),
    /// A trusted proxy sent an X-Forwarded-For entry that is not an address.
    BadForwardedFor,
    /// The server was not told the peer's address.
    UnknownPeer,
}

impl Denied {
    pub fn error(&self) -> Error {
        match self {
            Denied::Client(ip) => Error::forbidden(format!("client address {ip} is not allowed")),
            Denied::BadForwardedFor => {
                Error::forbidden("X-Forwarded-For holds an entry that is not an IP address")
            }
            Denied::UnknownPeer => Error::forbidden("the client address is unknown"),
        }
    }
}

impl Access {
    /// Parses the comma-separated CIDR lists `allow` and `trusted_proxies`; a bare address counts
    /// as a network of one. `allow_setting` and `proxies_setting` name the settings in errors.
    pub fn parse(
        allow: &str,
        allow_setting: &str,
        trusted_proxies: &str,
        proxies_setting: &str,
    ) -> Result<Access, CidrError> {
        Ok(Access {
            allow: parse_cidrs(allow, allow_setting)?,
            trusted_proxies: parse_cidrs(trusted_proxies, proxies_setting)?,
        })
    }

    /// Whether `ip` may call: loopback, or inside one of the allowed networks.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_loopback() || self.allow.iter().any(|net| net.contains(&ip))
    }

    /// Whether a connection from `peer` is served at all, decided at accept time from the
    /// address alone, before any byte is read. A trusted proxy is let in even when it is not
    /// allowed itself: the clients it speaks for are only known from each request's
    /// X-Forwarded-For, so the middleware ([`guard`]) decides its requests one by one.
    pub fn admits(&self, peer: IpAddr) -> bool {
        self.allows(peer) || self.is_trusted_proxy(peer)
    }

    fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request from `peer`. X-Forwarded-For counts only when `peer` is a trusted
    /// proxy; then the client is the right-most entry that is not itself a trusted proxy (or the
    /// left-most entry when all of them are).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, Denied> {
        let peer = peer.to_canonical();
        if !self.is_trusted_proxy(peer) {
            return Ok(peer);
        }
        let mut entries = Vec::new();
        for value in headers.get_all(X_FORWARDED_FOR) {
            let value = value.to_str().map_err(|_| Denied::BadForwardedFor)?;
            entries.extend(value.split(',').map(str::trim).filter(|e| !e.is_empty()));
        }
        let mut client = peer;
        for entry in entries.iter().rev() {
            client = parse_forwarded(entry)
                .ok_or(Denied::BadForwardedFor)?
                .to_canonical();
            if !self.is_trusted_proxy(client) {
                break;
            }
        }
        Ok(client)
    }

    /// The decision for one request: the client it comes from, or why it is refused.
    pub fn check(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Result<IpAddr, Denied> {
        let client = self.client(peer.ok_or(Denied::UnknownPeer)?, headers)?;
        if self.allows(client) {
            Ok(client)
        } else {
            Err(Denied::Client(client))
        }
    }
}

/// An X-Forwarded-For entry: an address, optionally with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim_matches('"');
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse().ok())
        })
}

/// The middleware: refuses a request from outside the allowlist with 403 `forbidden`.
pub async fn guard(
    State(access): State<Arc<Access>>,
    peer: Result<ConnectInfo<SocketAddr>, ExtensionRejection>,
    request: Request,
    next: Next,
) -> Response {
    let peer = peer.ok().map(|ConnectInfo(addr)| addr.ip());
    match access.check(peer, request.headers()) {
        Ok(_) => next.run(request).await,
        Err(denied) => {
            tracing::info!(
                peer = ?peer,
                method = %request.method(),
                path = %request.uri().path(),
                reason = ?denied,
                "request refused by the allowlist"
            );
            super::error_response(&denied.error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(allow: &str, proxies: &str) -> Access {
        Access::parse(allow, "ALLOW_CIDRS", proxies, "TRUSTED_PROXIES").unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn parses_lists_with_spaces_bare_addresses_and_host_bits() {
        let a = access(" 10.0.0.0/8 ,, 192.168.1.7, 2001:db8::/32,fd00::1 ", "");
        assert_eq!(
            a.allow,
            vec![
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.168.1.7/32".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
                "fd00::1/128".parse().unwrap(),
            ]
        );
        assert_eq!(
            access("10.1.2.3/8", "").allow,
            vec!["10.0.0.0/8".parse().unwrap()]
        );
        assert_eq!(access("", "").allow, vec![]);
        assert_eq!(
            access("::ffff:10.0.0.0/104", "").allow,
            vec!["10.0.0.0/8".parse().unwrap()]
        );
    }

    #[test]
    fn a_bad_entry_names_its_setting() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0",
            "fd00::/129",
            "example.com",
            "10.0.0.0/8/1",
        ] {
            let err =
                Access::parse(&format!("10.0.0.0/8,{bad}"), "ALLOW_CIDRS", "", "P").unwrap_err();
            assert_eq!(err.setting, "ALLOW_CIDRS");
            assert_eq!(err.entry, bad);
            assert!(err.to_string().starts_with("ALLOW_CIDRS: `"), "{err}");
        }
        let err = Access::parse("", "A", "127.0.0.1/40", "TRUSTED_PROXIES").unwrap_err();
        assert!(err.to_string().contains("TRUSTED_PROXIES"), "{err}");
    }

    #[test]
    fn empty_allowlist_means_loopback_only() {
        let a = access("", "");
        for ok in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(a.allows(ip(ok)), "{ok}");
        }
        for no in ["10.0.0.1", "192.168.1.1", "::2", "fe80::1", "0.0.0.0", "::"] {
            assert!(!a.allows(ip(no)), "{no}");
        }
    }

    #[test]
    fn ipv4_and_ipv6_networks() {
        let a = access("10.0.0.0/8,192.168.1.0/24,2001:db8::/32", "");
        for ok in [
            "10.255.0.1",
            "192.168.1.200",
            "::ffff:10.1.2.3",
            "2001:db8::5",
            "2001:db8:ffff::1",
        ] {
            assert!(a.allows(ip(ok)), "{ok}");
        }
        for no in ["11.0.0.1", "192.168.2.1", "2001:db9::1", "::ffff:11.0.0.1"] {
            assert!(!a.allows(ip(no)), "{no}");
        }
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let a = access("10.0.0.0/8", "192.168.0.1");
        let h = xff(&["10.1.2.3"]);
        assert_eq!(a.client(ip("192.0.2.7"), &h), Ok(ip("192.0.2.7")));
        assert_eq!(
            a.check(Some(ip("192.0.2.7")), &h),
            Err(Denied::Client(ip("192.0.2.7")))
        );
        // An allowed peer cannot be made a denied one either.
        assert!(a.check(Some(ip("10.9.9.9")), &xff(&["192.0.2.7"])).is_ok());
    }

    #[test]
    fn behind_a_trusted_proxy_the_rightmost_untrusted_entry_is_the_client() {
        let a = access("10.0.0.0/8,2001:db8::/32", "192.168.0.0/30,fd00::/8");
        let proxy = ip("192.168.0.1");
        let check = |values: &[&str]| a.check(Some(proxy), &xff(values));
        assert_eq!(check(&["10.1.2.3"]), Ok(ip("10.1.2.3")));
        assert_eq!(check(&["192.0.2.7"]), Err(Denied::Client(ip("192.0.2.7"))));
        // A client cannot hide behind an allowed address it wrote in itself.
        assert_eq!(
            check(&["10.1.2.3, 192.0.2.7"]),
            Err(Denied::Client(ip("192.0.2.7")))
        );
        // Trusted proxies in the chain are skipped, across several headers too.
        assert_eq!(
            check(&["192.0.2.7, 10.1.2.3", "192.168.0.2"]),
            Ok(ip("10.1.2.3"))
        );
        // Ports and brackets.
        assert_eq!(check(&["10.1.2.3:5555"]), Ok(ip("10.1.2.3")));
        assert_eq!(check(&["[2001:db8::9]:443"]), Ok(ip("2001:db8::9")));
        // No header: the proxy itself is the client, and it is not in the allowlist.
        assert_eq!(check(&[]), Err(Denied::Client(proxy)));
        // Every entry a trusted proxy: the left-most one.
        assert_eq!(
            check(&["192.168.0.2, 192.168.0.1"]),
            Err(Denied::Client(ip("192.168.0.2")))
        );
        assert_eq!(check(&["unknown"]), Err(Denied::BadForwardedFor));
        assert_eq!(check(&["10.1.2.3, nonsense"]), Err(Denied::BadForwardedFor));
        // An IPv6 proxy.
        let v6 = a.check(Some(ip("fd00::1")), &xff(&["2001:db8::7"]));
        assert_eq!(v6, Ok(ip("2001:db8::7")));
        let v6 = a.check(Some(ip("fd00::1")), &xff(&["2001:db9::7"]));
        assert_eq!(v6, Err(Denied::Client(ip("2001:db9::7"))));
    }

    #[test]
    fn at_accept_time_allowed_peers_and_trusted_proxies_are_admitted() {
        let a = access("10.0.0.0/8, 2001:db8::/32", "192.168.0.1, fd00::/8");
        for ok in [
            "10.1.2.3",
            "::ffff:10.1.2.3",
            "2001:db8::5",
            "127.0.0.1",
            "::1",
            // Proxies are not allowed themselves; their requests are checked one by one.
            "192.168.0.1",
            "fd00::7",
            "::ffff:192.168.0.1",
        ] {
            assert!(a.admits(ip(ok)), "{ok}");
        }
        for no in [
            "192.0.2.7",
            "192.168.0.2",
            "2001:db9::1",
            "fe80::1",
            "0.0.0.0",
        ] {
            assert!(!a.admits(ip(no)), "{no}");
        }
        // With nothing configured, loopback only.
        assert!(access("", "").admits(ip("127.0.0.2")));
        assert!(!access("", "").admits(ip("192.0.2.2")));
    }

    #[test]
    fn unknown_peer_is_refused() {
        assert_eq!(
            access("0.0.0.0/0", "").check(None, &HeaderMap::new()),
            Err(Denied::UnknownPeer)
        );
    }
}
