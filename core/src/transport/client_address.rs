//! The client's IP address for per-address limits: the TCP peer, or, when the peer is one of
//! `server.trusted_proxies` (a load balancer), the address that proxy saw, from
//! `X-Forwarded-For`. Without trusted proxies every client behind a balancer would share the
//! balancer's address, and one address's share of a node would be everyone's.

use std::net::IpAddr;

use salvo::prelude::*;

/// `server.trusted_proxies` parsed: addresses and networks (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Vec<(IpAddr, u8)>,
}

/// Checks one `server.trusted_proxies` entry: an IP address or `address/prefix`.
pub fn check_proxy_entry(entry: &str) -> Result<(), String> {
    parse_network(entry)
        .map(|_| ())
        .ok_or_else(|| format!("`{entry}` is not an IP address or network like 10.0.0.0/8"))
}

fn parse_network(entry: &str) -> Option<(IpAddr, u8)> {
    let (address, prefix) = match entry.split_once('/') {
        Some((address, prefix)) => (address.parse::<IpAddr>().ok()?, prefix.parse::<u8>().ok()?),
        None => {
            let address = entry.parse::<IpAddr>().ok()?;
            (address, if address.is_ipv4() { 32 } else { 128 })
        }
    };
    let bits = if address.is_ipv4() { 32 } else { 128 };
    (prefix <= bits).then_some((address, prefix))
}

/// Whether `address` is in the network `base/prefix` (same family only).
fn contains(base: IpAddr, prefix: u8, address: IpAddr) -> bool {
    let (base, address, bits): (u128, u128, u32) = match (base, address) {
        (IpAddr::V4(base), IpAddr::V4(address)) => {
            (u32::from(base).into(), u32::from(address).into(), 32)
        }
        (IpAddr::V6(base), IpAddr::V6(address)) => (base.into(), address.into(), 128),
        _ => return false,
    };
    let prefix = u32::from(prefix);
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (base >> shift) == (address >> shift)
}

impl TrustedProxies {
    /// From entries already checked by [`check_proxy_entry`].
    pub fn new(entries: &[String]) -> TrustedProxies {
        TrustedProxies {
            networks: entries
                .iter()
                .filter_map(|entry| parse_network(entry))
                .collect(),
        }
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.networks
            .iter()
            .any(|&(base, prefix)| contains(base, prefix, address))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy; then the rightmost
    /// `X-Forwarded-For` address that is not itself a trusted proxy (proxies append, so the
    /// addresses left of it were written by the client and are not trusted).
    pub fn client_address(&self, req: &Request) -> Option<IpAddr> {
        let peer = req.remote_addr().clone().into_std()?.ip();
        if !self.trusts(peer) {
            return Some(peer);
        }
        let forwarded: Vec<IpAddr> = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|part| part.trim().parse().ok())
            .collect();
        Some(
            forwarded
                .into_iter()
                .rev()
                .find(|address| !self.trusts(*address))
                .unwrap_or(peer),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses_only() {
        let proxies =
            TrustedProxies::new(&["10.0.0.0/8".into(), "192.168.1.7".into(), "fd00::/8".into()]);
        assert!(proxies.trusts("10.1.2.3".parse().unwrap()));
        assert!(proxies.trusts("192.168.1.7".parse().unwrap()));
        assert!(!proxies.trusts("192.168.1.8".parse().unwrap()));
        assert!(!proxies.trusts("11.0.0.1".parse().unwrap()));
        assert!(proxies.trusts("fd12::1".parse().unwrap()));
        assert!(!proxies.trusts("fe80::1".parse().unwrap()));
    }

    #[test]
    fn entries_are_checked() {
        assert!(check_proxy_entry("10.0.0.0/8").is_ok());
        assert!(check_proxy_entry("::1").is_ok());
        assert!(check_proxy_entry("10.0.0.0/33").is_err());
        assert!(check_proxy_entry("proxy.internal").is_err());
    }
}
