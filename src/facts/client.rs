//! Who the client is: the connection's peer, or, for a peer that is a trusted proxy, the
//! address the proxies declare in `X-Forwarded-For` (SPEC section 11, "Client address").
//!
//! The peer is the TCP peer, or the source a PROXY protocol header declared (the edge
//! replaces the connection's peer address before a request is read). [`client_address`] is
//! the one answer to "who is the client"; every `client_ip` condition, `split: {by:
//! client_ip}`, internal CIDR and the access log use it.
//!
//! From a peer that is not trusted, `X-Forwarded-For` is ignored: a client cannot claim an
//! internal address. From a trusted peer the header is read from the right (the entry the
//! nearest proxy appended) leftwards, skipping entries that are themselves trusted proxies;
//! the first untrusted entry is the client. Bad input has one documented result each:
//!
//! - several `X-Forwarded-For` headers are one list, in the order received;
//! - spaces and tabs around an entry, empty entries (`a,,b`) are ignored;
//! - an entry may carry a port (`192.0.2.1:5`, `[2001:db8::1]:5`) or brackets without one;
//! - an entry that is not an address (`unknown`, `_hidden`, a zone id, garbage, more than
//!   [`MAX_ENTRY_LEN`] bytes) stops the walk: the answer is the last address accepted, to its
//!   right (a trusted proxy, or the peer) — never the garbage, never anything left of it,
//!   which whoever wrote the garbage may control;
//! - every entry trusted: the leftmost; the walk also stops after [`MAX_HOPS`] trusted
//!   entries and answers the last of them;
//! - IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack listener reports for an
//!   IPv4 peer) are read as the IPv4 address, for trust and in the answer.
//!
//! Work is one backwards scan over at most the bytes of the entries examined; nothing is
//! allocated.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};

/// Longest `X-Forwarded-For` entry read; a longer one is not an address (the longest
/// address with port, `[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535`, has 53 bytes).
pub const MAX_ENTRY_LEN: usize = 64;

/// Most trusted entries skipped before the walk stops (a chain of proxies is a handful).
pub const MAX_HOPS: usize = 16;

/// The networks whose connections may say who the client is (`trusted_proxies:` in
/// `conf/graygate.yaml`); empty trusts nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Box<[IpNet]>,
}

impl TrustedProxies {
    /// Trusts `nets`; IPv4-mapped IPv6 networks (`::ffff:10.0.0.0/104`) are kept as the IPv4
    /// networks they are.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> TrustedProxies {
        TrustedProxies {
            nets: nets.into_iter().map(canonical_net).collect(),
        }
    }

    /// Trusts nobody.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The networks trusted.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// Whether `ip` is in a trusted network (an IPv4-mapped `ip` as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

/// `net` as an IPv4 network when it lies within `::ffff:0:0/96`.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// The client's address: `peer` (the TCP peer, or what a PROXY header declared), or, when
/// `peer` is trusted, the rightmost untrusted entry of `forwarded_for` (the raw values of
/// every `X-Forwarded-For` header, in the order received, asked for only when `peer` is
/// trusted); see the module doc for bad input. The answer is canonical: an IPv4-mapped
/// address comes back as IPv4.
pub fn client_address<'a, I>(
    peer: IpAddr,
    forwarded_for: impl FnOnce() -> I,
    trusted: &TrustedProxies,
) -> IpAddr
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: DoubleEndedIterator,
{
    let mut client = peer.to_canonical();
    if !trusted.contains(client) {
        return client;
    }
    let mut hops = 0;
    for value in forwarded_for().into_iter().rev() {
        for entry in Entries(value) {
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip.to_canonical();
            if !trusted.contains(client) {
                return client;
            }
            hops += 1;
            if hops >= MAX_HOPS {
                return client;
            }
        }
    }
    client
}

/// The non-empty, trimmed entries of one header value, from the right.
struct Entries<'a>(&'a [u8]);

impl<'a> Iterator for Entries<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if self.0.is_empty() {
                return None;
            }
            let (rest, entry) = match memchr::memrchr(b',', self.0) {
                Some(comma) => (&self.0[..comma], &self.0[comma + 1..]),
                None => (&self.0[..0], self.0),
            };
            self.0 = rest;
            let entry = entry.trim_ascii();
            if !entry.is_empty() {
                return Some(entry);
            }
        }
    }
}

/// One entry: an address, optionally with a port (`[v6]:port` for IPv6), or `None`.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    if entry.len() > MAX_ENTRY_LEN {
        return None;
    }
    let text = std::str::from_utf8(entry).ok()?;
    if let Some(rest) = text.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        if !after.is_empty() && !after.strip_prefix(':').is_some_and(is_port) {
            return None;
        }
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    // `a.b.c.d:port`: an unbracketed IPv6 address never carries a port.
    let (host, port) = text.split_once(':')?;
    if !is_port(port) {
        return None;
    }
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// 1 to 5 digits within `u16`.
fn is_port(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && text.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The client for `peer` and these `X-Forwarded-For` header values.
    fn client(peer: &str, headers: &[&str], trusted: &TrustedProxies) -> IpAddr {
        client_address(ip(peer), || headers.iter().map(|h| h.as_bytes()), trusted)
    }

    #[test]
    fn untrusted_peers_are_the_client() {
        let lb = trusted(&["10.0.0.0/8"]);
        assert_eq!(client("203.0.113.9", &["10.1.1.1"], &lb), ip("203.0.113.9"));
        let nobody = TrustedProxies::default();
        assert!(nobody.is_empty());
        assert_eq!(client("10.0.0.1", &["192.0.2.1"], &nobody), ip("10.0.0.1"));
        // No header from a trusted peer: the peer.
        assert_eq!(client("10.0.0.1", &[], &lb), ip("10.0.0.1"));
        assert_eq!(client("10.0.0.1", &["", " , "], &lb), ip("10.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client() {
        let lb = trusted(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        let cases: &[(&[&str], &str)] = &[
            (&["192.0.2.1"], "192.0.2.1"),
            // What the client wrote itself, left of what the proxy appended, is ignored.
            (&["10.9.9.9, 192.0.2.1"], "192.0.2.1"),
            (&["1.1.1.1, 192.0.2.1, 10.0.0.2, 10.0.0.3"], "192.0.2.1"),
            // Several headers are one list, in order.
            (&["1.1.1.1", "192.0.2.1", "10.0.0.2"], "192.0.2.1"),
            (&["1.1.1.1, 192.0.2.1", "10.0.0.2,10.0.0.3"], "192.0.2.1"),
            // Spaces, tabs and empty entries.
            (&["  1.1.1.1 ,\t192.0.2.1\t,, ,10.0.0.2  "], "192.0.2.1"),
            // Ports and brackets.
            (&["192.0.2.1:4711"], "192.0.2.1"),
            (&["[2001:db8::1]:4711"], "2001:db8::1"),
            (&["[2001:db8::1]"], "2001:db8::1"),
            (&["2001:db8::1, 2001:db8:ffff::7"], "2001:db8::1"),
            (
                &["192.0.2.1:1, [2001:db8:ffff::7]:80, 10.0.0.1:1"],
                "192.0.2.1",
            ),
            // Every entry trusted: the leftmost.
            (&["10.0.0.1, 10.0.0.2", "10.0.0.3"], "10.0.0.1"),
        ];
        for (headers, expected) in cases {
            assert_eq!(
                client("10.0.0.9", headers, &lb),
                ip(expected),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn malformed_entries_stop_the_walk_at_the_last_address() {
        let lb = trusted(&["10.0.0.0/8"]);
        let cases: &[(&[&str], &str)] = &[
            // Garbage rightmost: the peer.
            (&["192.0.2.1, unknown"], "10.0.0.9"),
            (&["192.0.2.1", "garbage"], "10.0.0.9"),
            // Garbage behind a trusted entry: that trusted entry, never what is left of it.
            (&["192.0.2.1, bad, 10.0.0.2"], "10.0.0.2"),
            (&["192.0.2.1, 10.0.0.3:99999"], "10.0.0.9"),
            (&["192.0.2.1, 10.0.0.3:"], "10.0.0.9"),
            (&["192.0.2.1, 10.0.0.3:+1"], "10.0.0.9"),
            (&["192.0.2.1, [2001:db8::1]x"], "10.0.0.9"),
            (&["192.0.2.1, [2001:db8::1"], "10.0.0.9"),
            (&["192.0.2.1, [10.0.0.1]"], "10.0.0.9"),
            (&["192.0.2.1, fe80::1%eth0"], "10.0.0.9"),
            (&["192.0.2.1, 2001:db8::1:80:1:2:3:4:5"], "10.0.0.9"),
            (&["192.0.2.1, 1.2.3"], "10.0.0.9"),
            (&["192.0.2.1, \"10.0.0.2\""], "10.0.0.9"),
            // Left of the client, garbage is never reached.
            (&["garbage, 192.0.2.1"], "192.0.2.1"),
        ];
        for (headers, expected) in cases {
            assert_eq!(
                client("10.0.0.9", headers, &lb),
                ip(expected),
                "{headers:?}"
            );
        }
        // Not UTF-8.
        let bytes: [&[u8]; 1] = [b"192.0.2.1, \xff\xfe"];
        assert_eq!(
            client_address(ip("10.0.0.9"), || bytes, &lb),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn absurd_headers_take_bounded_work() {
        let lb = trusted(&["10.0.0.0/8"]);
        // A 64 KiB entry without a comma: not an address.
        let long = format!("192.0.2.1,{}", "9".repeat(64 * 1024));
        assert_eq!(client("10.0.0.9", &[&long], &lb), ip("10.0.0.9"));
        // Thousands of trusted hops: the walk stops after MAX_HOPS of them.
        let hops: Vec<String> = (0..5000)
            .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
            .collect();
        let header = format!("192.0.2.1, {}", hops.join(", "));
        let stopped_at = &hops[hops.len() - MAX_HOPS];
        assert_eq!(client("10.0.0.9", &[&header], &lb), ip(stopped_at));
        // Thousands of empty entries cost a scan, nothing else.
        let empties = format!("192.0.2.1{}", ",".repeat(50_000));
        assert_eq!(client("10.0.0.9", &[&empties], &lb), ip("192.0.2.1"));
        let exactly = format!(
            "[{}]:65535",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
        );
        assert_eq!(exactly.len(), 53);
        assert!(parse_entry(exactly.as_bytes()).is_some());
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let lb = trusted(&["10.0.0.0/8"]);
        assert!(lb.contains(ip("::ffff:10.1.2.3")));
        assert!(!lb.contains(ip("::ffff:11.1.2.3")));
        // A mapped peer is trusted by its IPv4 network, and answers come back as IPv4.
        assert_eq!(
            client("::ffff:10.0.0.9", &["192.0.2.1"], &lb),
            ip("192.0.2.1")
        );
        assert_eq!(
            client("::ffff:203.0.113.5", &["192.0.2.1"], &lb),
            ip("203.0.113.5")
        );
        assert_eq!(
            client("10.0.0.9", &["::ffff:192.0.2.1"], &lb),
            ip("192.0.2.1")
        );
        assert_eq!(
            client("10.0.0.9", &["192.0.2.1, ::ffff:10.0.0.4"], &lb),
            ip("192.0.2.1")
        );
        // A network written as mapped IPv6 is the IPv4 network.
        let mapped = trusted(&["::ffff:10.0.0.0/104"]);
        assert_eq!(mapped.nets(), &["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert!(mapped.contains(ip("10.200.0.1")));
        let v6 = trusted(&["2001:db8::/32"]);
        assert!(v6.contains(ip("2001:db8::5")));
        assert!(!v6.contains(ip("10.0.0.1")));
    }
}
