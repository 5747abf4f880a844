//! Lists of IP networks in CIDR notation, as the allowlist settings write them.

use std::net::IpAddr;

use ipnet::IpNet;

/// A bad entry in one of the CIDR lists; names the setting it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: `{entry}` is not an IP network in CIDR notation (such as 192.168.1.0/24 or fd00::/8): {reason}")]
pub struct CidrError {
    pub setting: String,
    pub entry: String,
    pub reason: String,
}

/// Parses a comma-separated list of networks; a bare address counts as a network of one, host
/// bits are dropped, and an IPv4-mapped IPv6 network becomes the IPv4 network it maps.
/// `setting` names the list in errors.
pub fn parse_cidrs(list: &str, setting: &str) -> Result<Vec<IpNet>, CidrError> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            parse_entry(entry).map_err(|reason| CidrError {
                setting: setting.to_string(),
                entry: entry.to_string(),
                reason,
            })
        })
        .collect()
}

fn parse_entry(entry: &str) -> Result<IpNet, String> {
    let net = match entry.split_once('/') {
        Some((addr, prefix)) => {
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("`{addr}` is not an IP address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .map_err(|_| format!("the prefix length `{prefix}` is not a number"))?;
            if prefix > max {
                return Err(format!(
                    "the prefix length {prefix} is too long: at most {max} for an {} address",
                    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
                ));
            }
            IpNet::new(addr, prefix).map_err(|e| e.to_string())?
        }
        None => entry
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("`{entry}` is not an IP address"))?,
    };
    Ok(match net {
        // An IPv4-mapped network would never match: peers are compared canonical.
        IpNet::V6(v6) if v6.addr().to_ipv4_mapped().is_some() && v6.prefix_len() >= 96 => {
            let v4 = v6.addr().to_ipv4_mapped().expect("checked");
            IpNet::V4(ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).expect("prefix within 32"))
                .trunc()
        }
        net => net.trunc(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_say_what_is_wrong() {
        let reason = |entry: &str| parse_cidrs(entry, "ALLOW_CIDRS").unwrap_err().reason;
        assert_eq!(
            reason("10.0.0.0/33"),
            "the prefix length 33 is too long: at most 32 for an IPv4 address"
        );
        assert_eq!(
            reason("fd00::/129"),
            "the prefix length 129 is too long: at most 128 for an IPv6 address"
        );
        assert_eq!(
            reason("10.0.0.0/x"),
            "the prefix length `x` is not a number"
        );
        assert_eq!(reason("10.0.0"), "`10.0.0` is not an IP address");
        assert_eq!(
            reason("example.com/8"),
            "`example.com` is not an IP address"
        );
        assert_eq!(
            reason("10.0.0.0/8/1"),
            "the prefix length `8/1` is not a number"
        );
    }
}
