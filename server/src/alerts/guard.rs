//! Where webhooks may go. A URL's host is resolved once per attempt and every address checked:
//! loopback, private, link-local, shared (CGNAT), multicast and other non-public addresses are
//! refused unless the allowlist names the host or a network containing the address. The request
//! then connects to the checked address, so a second lookup cannot swap it (DNS rebinding).

use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Host(String),
    Net(IpAddr, u8),
}

/// Hosts and networks webhooks may reach even though they are not public.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist(Vec<Entry>);

impl Allowlist {
    /// Parses entries such as `127.0.0.1`, `10.0.0.0/8`, `::1`, `hooks.internal`.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| parse_entry(e.trim()))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    fn allows(&self, host: &str, ip: IpAddr) -> bool {
        self.0.iter().any(|e| match e {
            Entry::Host(h) => h.eq_ignore_ascii_case(host),
            Entry::Net(net, bits) => in_network(ip, *net, *bits),
        })
    }
}

fn parse_entry(e: &str) -> Result<Entry, String> {
    let bad = || {
        format!("webhook allowlist entry {e:?} is not a host name, an IP address or a CIDR network")
    };
    if let Some((ip, bits)) = e.split_once('/') {
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let bits: u8 = bits.parse().map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return Err(bad());
        }
        return Ok(Entry::Net(ip, bits));
    }
    if let Ok(ip) = e.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(Entry::Net(ip, if ip.is_ipv4() { 32 } else { 128 }));
    }
    if e.is_empty()
        || !e
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
    {
        return Err(bad());
    }
    Ok(Entry::Host(e.to_ascii_lowercase()))
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (canonical(ip), canonical(net)) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// IPv6 addresses that carry an IPv4 address the network will deliver to are judged as that
/// IPv4 address: IPv4-mapped (`::ffff:a.b.c.d`), NAT64's well-known prefix (`64:ff9b::/96`,
/// RFC 6052) and 6to4 (`2002:AABB:CCDD::/16`, RFC 3056). Otherwise `64:ff9b::7f00:1` would reach
/// 127.0.0.1 through a NAT64 gateway while looking like a public IPv6 address.
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let embedded = |hi: u16, lo: u16| IpAddr::V4(((u32::from(hi) << 16) | u32::from(lo)).into());
    match s {
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] | [0x2002, hi, lo, ..] => embedded(hi, lo),
        _ => ip,
    }
}

/// Whether an address is on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(a) => {
            let [o0, o1, ..] = a.octets();
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || o0 == 0
                || (o0 == 100 && (64..128).contains(&o1))
                || (o0 == 192 && o1 == 0)
                // Network benchmarking (RFC 2544), routed inside some clouds' private networks.
                || (o0 == 198 && (o1 & 0xfe) == 18)
                || o0 >= 240)
        }
        IpAddr::V6(a) => {
            let s0 = a.segments()[0];
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s0 & 0xfe00) == 0xfc00
                || (s0 & 0xffc0) == 0xfe80
                || s0 == 0x2001 && a.segments()[1] == 0x0db8
                // Teredo hides its IPv4 address; local-use NAT64 (RFC 8215) maps to anything.
                || s0 == 0x2001 && a.segments()[1] == 0
                || s0 == 0x64 && a.segments()[1] == 0xff9b)
        }
    }
}

/// Resolves the URL's host and returns the address to connect to, or why it may not be used.
pub async fn resolve(url: &reqwest::Url, allow: &Allowlist) -> Result<SocketAddr, String> {
    let host = url.host_str().ok_or("the URL has no host")?;
    let port = url.port_or_known_default().ok_or("the URL has no port")?;
    let bare = host.trim_matches(['[', ']']);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| format!("{host} has no address"))?;
    // Every address must pass: a host with one public and one private address is refused.
    if let Some(bad) = addrs
        .iter()
        .find(|a| !is_public(a.ip()) && !allow.allows(bare, a.ip()))
    {
        return Err(format!(
            "refusing to send to {host} ({}): not a public address; add it to --webhook-allow to permit it",
            bad.ip()
        ));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "198.18.0.1",
            "198.19.255.254",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::",
            "2001:0:4136:e378::1",
        ] {
            assert!(!is_public(ip(a)), "{a} counted as public");
        }
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "198.20.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public(ip(a)), "{a} counted as private");
        }
    }

    #[test]
    fn the_allowlist_matches_hosts_addresses_and_networks() {
        let allow = Allowlist::parse(&[
            "127.0.0.1".into(),
            "10.0.0.0/8".into(),
            "Hooks.Internal".into(),
        ])
        .unwrap();
        assert!(allow.allows("x", ip("127.0.0.1")));
        assert!(allow.allows("x", ip("::ffff:127.0.0.1")));
        assert!(!allow.allows("x", ip("127.0.0.2")));
        assert!(allow.allows("x", ip("10.200.0.1")));
        assert!(allow.allows("hooks.internal", ip("192.168.0.9")));
        assert!(Allowlist::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(Allowlist::parse(&["http://x".into()]).is_err());
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_allowed() {
        let url = reqwest::Url::parse("http://127.0.0.1:9/hook").unwrap();
        let err = resolve(&url, &Allowlist::default()).await.unwrap_err();
        assert!(err.contains("not a public address"), "{err}");
        let allow = Allowlist::parse(&["127.0.0.1".into()]).unwrap();
        assert_eq!(
            resolve(&url, &allow).await.unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
    }
}
