//! The split hash: where a key falls in a weighted split.
//!
//! The hash is XXH64 with seed 0 over the bytes `salt ":" key`, a published algorithm with
//! implementations in every language (Python's `xxhash`, Go's `cespare/xxhash`, Lua and
//! Java ports), so other systems can reproduce graygate's decisions. The 64-bit hash `h` is
//! mapped onto `[0, total)` by `(h * total) >> 64` (a multiply-shift, no modulo bias), and
//! the split's arms own consecutive ranges in the order written. A user is therefore in the
//! first arm iff `h / 2^64 < w1 / total`: raising the first arm's share only moves users
//! into it, which makes a ramp monotonic. The vectors in the tests below were computed with
//! Python's `xxhash` package, an implementation independent of this one.

use std::io::Write;
use std::net::IpAddr;

use xxhash_rust::xxh64::Xxh64;

/// XXH64 (seed 0) of `salt ":" key`.
pub fn split_hash(salt: &[u8], key: &[u8]) -> u64 {
    let mut hasher = Xxh64::new(0);
    hasher.update(salt);
    hasher.update(b":");
    hasher.update(key);
    hasher.digest()
}

/// Maps a 64-bit hash onto `[0, total)`.
pub fn scale(hash: u64, total: u64) -> u64 {
    ((hash as u128 * total as u128) >> 64) as u64
}

/// The standard text form of an address, written into a stack buffer. An IPv4 address (every
/// request's `X-Forwarded-For` on an IPv4 listener) is written digit by digit, without the
/// formatting machinery; IPv6's compressed form is left to `Display`.
pub fn ip_text(ip: IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    if let IpAddr::V4(v4) = ip {
        let mut len = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                buf[len] = b'.';
                len += 1;
            }
            if octet >= 100 {
                buf[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                buf[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            buf[len] = b'0' + octet % 10;
            len += 1;
        }
        return &buf[..len];
    }
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // 48 bytes hold the longest IPv6 text form (45 bytes), so the write cannot fail.
    let _ = write!(cursor, "{ip}");
    let len = cursor.position() as usize;
    &buf[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden vectors: `xxhash.xxh64(b"salt:key", seed=0).intdigest()` in Python, and the
    /// position on a 100- and a 10,000-bucket scale.
    #[test]
    fn golden_vectors() {
        let vectors: [(&str, &str, u64, u64, u64); 4] = [
            ("tail", "12345", 3618027982928026506, 19, 1961),
            ("ab-register", "203.0.113.7", 13487236111583334890, 73, 7311),
            ("anonymous-5pct", "abc", 17529378489400835255, 95, 9502),
            ("", "", 8682658969876241481, 47, 4706),
        ];
        for (salt, key, hash, per100, per10k) in vectors {
            let h = split_hash(salt.as_bytes(), key.as_bytes());
            assert_eq!(h, hash, "{salt}:{key}");
            assert_eq!(scale(h, 100), per100);
            assert_eq!(scale(h, 10_000), per10k);
        }
    }

    #[test]
    fn scale_bounds() {
        assert_eq!(scale(0, 100), 0);
        assert_eq!(scale(u64::MAX, 100), 99);
        assert_eq!(scale(u64::MAX, 1), 0);
    }

    #[test]
    fn ip_text_forms() {
        let mut buf = [0u8; 48];
        // Every octet length, against Display.
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "10.200.3.45",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip, &mut buf), ip.to_string().as_bytes());
        }
        assert_eq!(
            ip_text("203.0.113.7".parse().unwrap(), &mut buf),
            b"203.0.113.7"
        );
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap();
        let text = ip_text(longest, &mut buf).to_vec();
        assert_eq!(text, longest.to_string().as_bytes());
    }
}
