//! The PROXY protocol (HAProxy's v1 text and v2 binary headers): the source address a
//! load balancer in front declares at the start of a connection (SPEC section 11, "Client
//! address").
//!
//! The connection path calls [`read_proxy_header`] on a fresh connection from a
//! `trusted_proxies` peer, before TLS or HTTP, and on [`ProxyHeader::Source`] hands the
//! address to [`declare_peer`], after which Pingora's `session.client_addr()` (and so
//! `facts::client`) reports it. A connection that does not start with a PROXY signature is
//! left untouched: nothing is consumed, and TLS or HTTP reads it from its first byte.
//!
//! The reader never consumes a byte past the header, whatever the peer sends after it:
//!
//! - it peeks 5 bytes, which tell `PROXY` (v1) and `\r\n\r\n\0` (the start of v2's 12-byte
//!   signature) from anything else; Pingora's `Peek` fills the whole buffer or fails, so it
//!   peeks no more than it needs (every TLS record and HTTP request is longer);
//! - v1: reads the line 2 bytes at a time (1 after a `\r`), which cannot pass its `\r\n`, and
//!   refuses it past [`V1_MAX_LEN`] bytes;
//! - v2: reads the 16-byte fixed part, then exactly the length it declares, refused above
//!   [`V2_MAX_LEN`].
//!
//! Bad input is an error, never a guess: a v1 line that is not `PROXY TCP4|TCP6 src dst sport
//! dport` or `PROXY UNKNOWN ...`, a bare `\r` or `\n`, addresses of the wrong family, ports
//! outside 0-65535; a v2 header with a wrong signature, version, command, family or
//! transport, a length too short for its addresses, TLVs that overrun it; a connection that
//! closes inside the header; a header not complete within the timeout. The caller closes the
//! connection and counts it ([`ProxyHeaderError::kind`] is a metric label). v1 `UNKNOWN`, v2
//! `LOCAL`, and v2 `PROXY` over an unspecified or Unix family keep the connection's own peer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use pingora::protocols::l4::socket::SocketAddr as PingoraSocketAddr;
use pingora::protocols::{Peek, SocketDigest, Stream};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest v1 header, `\r\n` included (the protocol's own limit).
pub const V1_MAX_LEN: usize = 107;

/// The longest v2 address block and TLVs accepted (the length field of the fixed part).
/// Load balancers send a few dozen bytes (AWS adds a VPC endpoint TLV, Azure a link id).
pub const V2_MAX_LEN: usize = 1024;

/// The 12-byte signature that starts a v2 header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// How many bytes tell a v1 header, a v2 header and anything else apart.
const PEEK_LEN: usize = 5;

/// What the start of a connection declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// No PROXY header: nothing was consumed.
    Absent,
    /// A header that names no address (v1 `UNKNOWN`, v2 `LOCAL`, or v2 `PROXY` for an
    /// unspecified or Unix family): keep the connection's peer.
    KeepPeer,
    /// The source address the proxy declared.
    Source(SocketAddr),
}

impl ProxyHeader {
    /// The declared source, if there is one.
    pub fn source(self) -> Option<SocketAddr> {
        match self {
            ProxyHeader::Source(addr) => Some(addr),
            _ => None,
        }
    }
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The header was not complete in time.
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    /// The connection closed before the header was complete.
    #[error("the connection closed inside the PROXY header")]
    Closed,
    /// Reading failed.
    #[error("reading the PROXY header: {0}")]
    Io(std::io::Error),
    /// The header breaks the protocol.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    /// The header is longer than graygate accepts.
    #[error("PROXY header longer than {0} bytes")]
    TooLong(usize),
    /// The stream cannot peek, so its start cannot be looked at without consuming it.
    #[error("the stream cannot peek, so a PROXY header cannot be looked for")]
    NoPeek,
}

impl ProxyHeaderError {
    /// A short fixed name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyHeaderError::Timeout(_) => "timeout",
            ProxyHeaderError::Closed => "closed",
            ProxyHeaderError::Io(_) => "io",
            ProxyHeaderError::Malformed(_) => "malformed",
            ProxyHeaderError::TooLong(_) => "too_long",
            ProxyHeaderError::NoPeek => "no_peek",
        }
    }
}

impl From<std::io::Error> for ProxyHeaderError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProxyHeaderError::Closed
        } else {
            ProxyHeaderError::Io(e)
        }
    }
}

/// Reads a PROXY v1 or v2 header at the start of `stream`, if it has one, within `timeout`;
/// see the module doc for what is consumed and what is refused.
pub async fn read_proxy_header<S>(
    stream: &mut S,
    timeout: Duration,
) -> Result<ProxyHeader, ProxyHeaderError>
where
    S: AsyncRead + Peek + Unpin + Send + ?Sized,
{
    match tokio::time::timeout(timeout, read_header(stream)).await {
        Ok(result) => result,
        Err(_) => Err(ProxyHeaderError::Timeout(timeout)),
    }
}

async fn read_header<S>(stream: &mut S) -> Result<ProxyHeader, ProxyHeaderError>
where
    S: AsyncRead + Peek + Unpin + Send + ?Sized,
{
    let mut start = [0u8; PEEK_LEN];
    if !stream.try_peek(&mut start).await? {
        return Err(ProxyHeaderError::NoPeek);
    }
    if start == *b"PROXY" {
        read_v1(stream).await
    } else if start == V2_SIGNATURE[..PEEK_LEN] {
        read_v2(stream).await
    } else {
        Ok(ProxyHeader::Absent)
    }
}

/// Reads the v1 line up to and including its `\r\n`, and not a byte further.
async fn read_v1<S>(stream: &mut S) -> Result<ProxyHeader, ProxyHeaderError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let mut line = [0u8; V1_MAX_LEN];
    let mut len = 0;
    loop {
        // The end is `\r\n`: after a `\r` one byte may end the line, otherwise two may.
        let want = if len > 0 && line[len - 1] == b'\r' {
            1
        } else {
            2
        };
        if len + want > V1_MAX_LEN {
            return Err(ProxyHeaderError::TooLong(V1_MAX_LEN));
        }
        stream.read_exact(&mut line[len..len + want]).await?;
        let from = len.saturating_sub(1);
        len += want;
        for i in from..len {
            match line[i] {
                b'\n' if i == 0 || line[i - 1] != b'\r' => {
                    return Err(ProxyHeaderError::Malformed(
                        "a line feed without a carriage return",
                    ))
                }
                b'\r' if i + 1 < len && line[i + 1] != b'\n' => {
                    return Err(ProxyHeaderError::Malformed(
                        "a carriage return without a line feed",
                    ))
                }
                _ => {}
            }
        }
        if line[len - 2..len] == *b"\r\n" {
            return parse_v1(&line[..len - 2]);
        }
    }
}

/// Parses a v1 line without its `\r\n`.
fn parse_v1(line: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    let text = std::str::from_utf8(line)
        .map_err(|_| ProxyHeaderError::Malformed("v1 header is not ASCII"))?;
    let mut fields = text.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(ProxyHeaderError::Malformed(
            "v1 header does not start with \"PROXY \"",
        ));
    }
    let v6 = match fields.next() {
        // The receiver ignores whatever follows UNKNOWN.
        Some("UNKNOWN") => return Ok(ProxyHeader::KeepPeer),
        Some("TCP4") => false,
        Some("TCP6") => true,
        _ => {
            return Err(ProxyHeaderError::Malformed(
                "v1 protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyHeaderError::Malformed(
            "v1 header needs exactly: source, destination, source port, destination port",
        ));
    };
    let address = |text: &str| -> Option<IpAddr> {
        if v6 {
            text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        } else {
            text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
        }
    };
    let port = |text: &str| -> Option<u16> {
        let digits =
            !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| text.parse().ok()).flatten()
    };
    let (Some(src), Some(_)) = (address(src), address(dst)) else {
        return Err(ProxyHeaderError::Malformed(
            "v1 address is not of the family TCP4/TCP6 names",
        ));
    };
    let (Some(sport), Some(_)) = (port(sport), port(dport)) else {
        return Err(ProxyHeaderError::Malformed(
            "v1 port is not a number 0-65535",
        ));
    };
    Ok(ProxyHeader::Source(SocketAddr::new(src, sport)))
}

/// Reads the v2 fixed part and exactly the length it declares.
async fn read_v2<S>(stream: &mut S) -> Result<ProxyHeader, ProxyHeaderError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let mut fixed = [0u8; 16];
    stream.read_exact(&mut fixed).await?;
    if fixed[..12] != V2_SIGNATURE {
        return Err(ProxyHeaderError::Malformed("v2 signature is wrong"));
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > V2_MAX_LEN {
        return Err(ProxyHeaderError::TooLong(16 + V2_MAX_LEN));
    }
    let mut rest = vec![0u8; len];
    stream.read_exact(&mut rest).await?;
    parse_v2(fixed[12], fixed[13], &rest)
}

/// Parses a v2 header from its version/command byte, its family/transport byte and the
/// bytes after the fixed part.
fn parse_v2(version_command: u8, family: u8, rest: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    if version_command >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("v2 version is not 2"));
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => {
            return Err(ProxyHeaderError::Malformed(
                "v2 command is neither LOCAL nor PROXY",
            ))
        }
    };
    if family & 0x0f > 2 {
        return Err(ProxyHeaderError::Malformed(
            "v2 transport is not UNSPEC, STREAM or DGRAM",
        ));
    }
    let addresses = match family >> 4 {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        _ => {
            return Err(ProxyHeaderError::Malformed(
                "v2 family is not UNSPEC, INET, INET6 or UNIX",
            ))
        }
    };
    if local {
        // LOCAL: the proxy's own connection (a health check); whatever follows is ignored.
        return Ok(ProxyHeader::KeepPeer);
    }
    if rest.len() < addresses {
        return Err(ProxyHeaderError::Malformed(
            "v2 length is too short for the addresses of its family",
        ));
    }
    check_tlvs(&rest[addresses..])?;
    let port = |at: usize| u16::from_be_bytes([rest[at], rest[at + 1]]);
    Ok(match family >> 4 {
        1 => {
            let ip = Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
            ProxyHeader::Source(SocketAddr::new(IpAddr::V4(ip), port(8)))
        }
        2 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&rest[..16]);
            ProxyHeader::Source(SocketAddr::new(IpAddr::V6(octets.into()), port(32)))
        }
        _ => ProxyHeader::KeepPeer,
    })
}

/// Checks that the TLVs (type, 2-byte length, value) fill `tlvs` exactly.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), ProxyHeaderError> {
    while !tlvs.is_empty() {
        let [_, hi, lo, ..] = *tlvs else {
            return Err(ProxyHeaderError::Malformed("v2 TLV is cut short"));
        };
        let end = 3 + usize::from(u16::from_be_bytes([hi, lo]));
        if end > tlvs.len() {
            return Err(ProxyHeaderError::Malformed("v2 TLV overruns the header"));
        }
        tlvs = &tlvs[end..];
    }
    Ok(())
}

/// Makes `stream` report `peer` as its peer address (what Pingora's `session.client_addr()`
/// returns), keeping its local address (which tells the listener it arrived on). Call it on
/// the accepted L4 stream, before TLS and before the HTTP session is built from it: the
/// session copies the digest when it is created.
pub fn declare_peer(stream: &mut Stream, peer: SocketAddr) {
    // On a Pingora L4 stream the unique id is the socket's file descriptor.
    let digest = SocketDigest::from_raw_fd(stream.id());
    if let Some(local) = stream
        .get_socket_digest()
        .and_then(|old| old.local_addr().cloned())
    {
        // Fresh cells: neither `set` can fail.
        let _ = digest.local_addr.set(Some(local));
    }
    let _ = digest.peer_addr.set(Some(PingoraSocketAddr::Inet(peer)));
    stream.set_socket_digest(digest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncWriteExt, DuplexStream, ReadBuf};

    /// An in-memory connection whose peek is Pingora's L4 one: read exactly, then put the
    /// bytes back in front of whatever was put back before.
    struct Conn {
        inner: DuplexStream,
        rewound: Vec<u8>,
    }

    impl AsyncRead for Conn {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if !self.rewound.is_empty() {
                let n = self.rewound.len().min(buf.remaining());
                buf.put_slice(&self.rewound[..n]);
                self.rewound.drain(..n);
                return Poll::Ready(Ok(()));
            }
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    #[async_trait]
    impl Peek for Conn {
        async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
            self.read_exact(buf).await?;
            let mut rewound = buf.to_vec();
            rewound.append(&mut self.rewound);
            self.rewound = rewound;
            Ok(true)
        }
    }

    /// A connection that has received `bytes`; with `open`, more could still come (so a read
    /// past them waits), otherwise the peer has closed.
    async fn conn(bytes: &[u8], open: bool) -> (Conn, Option<DuplexStream>) {
        let (mut peer, inner) = tokio::io::duplex(64 * 1024);
        peer.write_all(bytes).await.unwrap();
        let peer = if open { Some(peer) } else { None };
        (
            Conn {
                inner,
                rewound: Vec::new(),
            },
            peer,
        )
    }

    const AFTER: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    const WAIT: Duration = Duration::from_secs(5);

    /// Reads the header of `header ++ AFTER` from a connection kept open (so reading one byte
    /// too many would hang, not fail), then checks that `AFTER` is still there, whole.
    async fn read(header: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
        let bytes = [header, AFTER].concat();
        let (mut c, peer) = conn(&bytes, true).await;
        let result = read_proxy_header(&mut c, WAIT).await;
        if result.is_ok() {
            drop(peer);
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, AFTER, "the bytes after the header are untouched");
        }
        result
    }

    fn source(text: &str) -> ProxyHeader {
        ProxyHeader::Source(text.parse().unwrap())
    }

    /// A v2 header: version/command, family/transport, then the bytes after the fixed part.
    fn v2(version_command: u8, family: u8, rest: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([version_command, family]);
        h.extend((rest.len() as u16).to_be_bytes());
        h.extend(rest);
        h
    }

    fn inet4(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut a = src.to_vec();
        a.extend([192, 0, 2, 1]);
        a.extend(sport.to_be_bytes());
        a.extend(443u16.to_be_bytes());
        a
    }

    #[tokio::test]
    async fn v1_tcp4_tcp6_and_unknown() {
        assert_eq!(
            read(b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n")
                .await
                .unwrap(),
            source("203.0.113.7:56324")
        );
        assert_eq!(
            read(b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 443\r\n")
                .await
                .unwrap(),
            source("[2001:db8::7]:56324")
        );
        assert_eq!(
            read(b"PROXY UNKNOWN\r\n").await.unwrap(),
            ProxyHeader::KeepPeer
        );
        assert_eq!(
            read(b"PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 65535 1\r\n")
                .await
                .unwrap(),
            ProxyHeader::KeepPeer
        );
        // The longest TCP6 line (104 bytes), and the longest line there is: the same after
        // UNKNOWN (107 bytes, the protocol's limit).
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let tcp6 = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
        assert_eq!(tcp6.len(), 104);
        assert_eq!(
            read(tcp6.as_bytes()).await.unwrap(),
            source(&format!("[{full}]:65535"))
        );
        let unknown = format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n");
        assert_eq!(unknown.len(), V1_MAX_LEN);
        assert_eq!(
            read(unknown.as_bytes()).await.unwrap(),
            ProxyHeader::KeepPeer
        );
    }

    #[tokio::test]
    async fn v2_inet_inet6_local_and_tlvs() {
        let header = v2(0x21, 0x11, &inet4([203, 0, 113, 7], 56324));
        assert_eq!(read(&header).await.unwrap(), source("203.0.113.7:56324"));
        let mut six = Vec::new();
        six.extend("2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        six.extend("2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        six.extend(56324u16.to_be_bytes());
        six.extend(443u16.to_be_bytes());
        assert_eq!(
            read(&v2(0x21, 0x21, &six)).await.unwrap(),
            source("[2001:db8::7]:56324")
        );
        // LOCAL (a health check of the balancer): keep the peer, consume what it declares.
        assert_eq!(
            read(&v2(0x20, 0x00, &[])).await.unwrap(),
            ProxyHeader::KeepPeer
        );
        assert_eq!(
            read(&v2(0x20, 0x11, &inet4([10, 0, 0, 1], 1)))
                .await
                .unwrap(),
            ProxyHeader::KeepPeer
        );
        // PROXY over UNSPEC: nothing to declare.
        assert_eq!(
            read(&v2(0x21, 0x00, &[])).await.unwrap(),
            ProxyHeader::KeepPeer
        );
        // TLVs after the addresses: an AWS VPC endpoint id (0xEA), ALPN (0x01), NOOP (0x04).
        let mut tlvs = inet4([198, 51, 100, 9], 1234);
        tlvs.extend([0xEA, 0, 13, 0x01]);
        tlvs.extend(b"vpce-0123abc");
        tlvs.extend([0x01, 0, 2]);
        tlvs.extend(b"h2");
        tlvs.extend([0x04, 0, 0]);
        assert_eq!(
            read(&v2(0x21, 0x11, &tlvs)).await.unwrap(),
            source("198.51.100.9:1234")
        );
    }

    #[tokio::test]
    async fn no_header_consumes_nothing() {
        for start in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01",
            b"PROX",
            b"\r\n\r\n",
            b"tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            let bytes = [start, AFTER].concat();
            let (mut c, peer) = conn(&bytes, true).await;
            assert_eq!(
                read_proxy_header(&mut c, WAIT).await.unwrap(),
                ProxyHeader::Absent,
                "{start:?}"
            );
            drop(peer);
            let mut all = Vec::new();
            c.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, bytes, "{start:?}: every byte is still there");
        }
    }

    #[tokio::test]
    async fn malformed_headers_are_refused() {
        let malformed: &[&[u8]] = &[
            b"PROXY garbage\r\n",
            b"PROXY \r\n",
            b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n",
        ];
        for header in malformed {
            let err = read(header).await.unwrap_err();
            assert_eq!(
                err.kind(),
                "malformed",
                "{:?}: {err}",
                String::from_utf8_lossy(header)
            );
        }
        let fixed = |vc: u8, fam: u8, rest: &[u8]| v2(vc, fam, rest);
        let mut wrong_signature = v2(0x21, 0x11, &inet4([1, 2, 3, 4], 5));
        wrong_signature[8] = b'X';
        let v2_malformed: Vec<(Vec<u8>, &str)> = vec![
            (wrong_signature, "v2 signature is wrong"),
            (
                fixed(0x11, 0x11, &inet4([1, 2, 3, 4], 5)),
                "v2 version is not 2",
            ),
            (
                fixed(0x22, 0x11, &inet4([1, 2, 3, 4], 5)),
                "v2 command is neither LOCAL nor PROXY",
            ),
            (
                fixed(0x21, 0x41, &inet4([1, 2, 3, 4], 5)),
                "v2 family is not UNSPEC, INET, INET6 or UNIX",
            ),
            (
                fixed(0x21, 0x13, &inet4([1, 2, 3, 4], 5)),
                "v2 transport is not UNSPEC, STREAM or DGRAM",
            ),
            (
                fixed(0x21, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8]),
                "v2 length is too short for the addresses of its family",
            ),
            (
                fixed(0x21, 0x21, &inet4([1, 2, 3, 4], 5)),
                "v2 length is too short for the addresses of its family",
            ),
            (
                fixed(
                    0x21,
                    0x11,
                    &[inet4([1, 2, 3, 4], 5), vec![0x01, 0]].concat(),
                ),
                "v2 TLV is cut short",
            ),
            (
                fixed(
                    0x21,
                    0x11,
                    &[inet4([1, 2, 3, 4], 5), vec![0x01, 0, 9, b'h']].concat(),
                ),
                "v2 TLV overruns the header",
            ),
        ];
        for (header, why) in v2_malformed {
            match read(&header).await {
                Err(ProxyHeaderError::Malformed(m)) => assert_eq!(m, why),
                other => panic!("{why}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn truncated_headers_are_refused() {
        for header in [
            &b"PROXY TCP4 203.0.113.7 192.0.2.1 56"[..],
            b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r",
            b"PROXY",
            &V2_SIGNATURE[..9],
        ] {
            let (mut c, _) = conn(header, false).await;
            let err = read_proxy_header(&mut c, WAIT).await.unwrap_err();
            assert_eq!(err.kind(), "closed", "{header:?}: {err}");
        }
        let header = v2(0x21, 0x11, &inet4([1, 2, 3, 4], 5));
        let (mut c, _) = conn(&header[..header.len() - 1], false).await;
        assert_eq!(
            read_proxy_header(&mut c, WAIT).await.unwrap_err().kind(),
            "closed"
        );
    }

    #[tokio::test]
    async fn over_long_headers_are_refused() {
        // No line end within 107 bytes, and more bytes waiting: refused without reading them.
        let long = format!("PROXY TCP4 {} 192.0.2.1 1 2\r\n", "1".repeat(200));
        let (mut c, _peer) = conn(long.as_bytes(), true).await;
        let err = read_proxy_header(&mut c, WAIT).await.unwrap_err();
        assert_eq!(err.kind(), "too_long", "{err}");
        let mut next = [0u8; 1];
        c.read_exact(&mut next).await.unwrap();
        // Exactly 107 bytes were read (the last check allows one more only after a '\r').
        assert_eq!(next[0], long.as_bytes()[V1_MAX_LEN - 1]);
        // A v2 length above the cap is refused before anything of it is read.
        let mut big = V2_SIGNATURE.to_vec();
        big.extend([0x21, 0x11]);
        big.extend(((V2_MAX_LEN + 1) as u16).to_be_bytes());
        let (mut c, _peer) = conn(&big, true).await;
        assert!(matches!(
            read_proxy_header(&mut c, WAIT).await,
            Err(ProxyHeaderError::TooLong(1040))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_headers_time_out() {
        for sent in [
            &b""[..],
            b"PRO",
            b"PROXY TCP4 203.0.113.7 ",
            &V2_SIGNATURE[..],
            &v2(0x21, 0x11, &inet4([1, 2, 3, 4], 5))[..20],
        ] {
            let (mut c, _peer) = conn(sent, true).await;
            let err = read_proxy_header(&mut c, Duration::from_secs(3))
                .await
                .unwrap_err();
            assert!(
                matches!(err, ProxyHeaderError::Timeout(_)),
                "{sent:?}: {err}"
            );
            assert_eq!(err.to_string(), "no complete PROXY header within 3s");
        }
    }

    /// Over a real socket with Pingora's own L4 stream: the header is read, the request after
    /// it is intact, and the declared peer replaces the socket's in the digest.
    #[tokio::test]
    async fn pingora_stream_reads_the_header_and_reports_the_declared_peer() {
        use pingora::protocols::l4::stream::Stream as L4Stream;
        use pingora::protocols::{GetSocketDigest, UniqueID};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n")
                .await
                .unwrap();
            // The request comes later, in its own segment.
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.write_all(AFTER).await.unwrap();
            s
        });
        let (tcp, tcp_peer) = listener.accept().await.unwrap();
        let mut l4 = L4Stream::from(tcp);
        // As Pingora's listener does on accept.
        let digest = SocketDigest::from_raw_fd(l4.id());
        let _ = digest
            .peer_addr
            .set(Some(PingoraSocketAddr::Inet(tcp_peer)));
        l4.set_socket_digest(digest);
        let mut stream: Stream = Box::new(l4);
        let header = read_proxy_header(&mut *stream, WAIT).await.unwrap();
        assert_eq!(header, source("203.0.113.7:56324"));
        declare_peer(&mut stream, header.source().unwrap());
        let digest = stream.get_socket_digest().unwrap();
        assert_eq!(
            digest.peer_addr().and_then(|a| a.as_inet()),
            Some(&"203.0.113.7:56324".parse().unwrap())
        );
        assert_eq!(digest.local_addr().and_then(|a| a.as_inet()), Some(&addr));
        let mut request = vec![0u8; AFTER.len()];
        stream.read_exact(&mut request).await.unwrap();
        assert_eq!(request, AFTER);
        drop(client.await.unwrap());
    }

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Random bytes after either signature: never a panic or a wait, and an accepted
        /// header consumed only a prefix.
        #[test]
        fn random_headers_never_panic_nor_overread(
            v2_signature in any::<bool>(),
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let header = if v2_signature {
                [&V2_SIGNATURE[..], &body].concat()
            } else {
                [&b"PROXY "[..], &body].concat()
            };
            // The peer has sent everything and closed, so a header longer than what came is
            // `Closed` at once instead of a wait.
            let bytes = [&header[..], AFTER].concat();
            let (mut c, _) = block_on(conn(&bytes, false));
            let result = block_on(read_proxy_header(&mut c, WAIT));
            if let Ok(found) = result {
                prop_assert!(found != ProxyHeader::Absent, "a signature is not nothing");
                let mut rest = Vec::new();
                block_on(c.read_to_end(&mut rest)).unwrap();
                prop_assert!(bytes.ends_with(&rest), "only a prefix was consumed");
            } else if let Err(e) = &result {
                prop_assert!(!matches!(e, ProxyHeaderError::Timeout(_)), "{e}");
            }
        }

        /// A well-framed v2 header of any command, family and length up to the cap is read to
        /// its end exactly: the request after it is untouched, whatever the answer.
        #[test]
        fn framed_v2_headers_are_read_to_their_end(
            version_command in any::<u8>(),
            family in any::<u8>(),
            rest in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let header = v2(version_command, family, &rest);
            let result = block_on(read(&header));
            if let Err(e) = &result {
                prop_assert!(!matches!(e, ProxyHeaderError::Timeout(_)), "{e}");
            }
        }

        /// Any bytes that start neither signature are not a header and are not consumed.
        #[test]
        fn other_bytes_are_left_alone(first in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 4..64)) {
            prop_assume!(first != b'P' && first != b'\r');
            let bytes = [&[first][..], &body].concat();
            let (mut c, peer) = block_on(conn(&bytes, false));
            drop(peer);
            let result = block_on(read_proxy_header(&mut c, WAIT));
            prop_assert!(matches!(result, Ok(ProxyHeader::Absent)), "{result:?}");
            let mut rest = Vec::new();
            block_on(c.read_to_end(&mut rest)).unwrap();
            prop_assert_eq!(rest, bytes);
        }
    }
}
