//! Sizes written the way operators write them: `512`, `64KB`, `100MB`, `1GiB`.
//!
//! `KB`, `MB` and `GB` are powers of 1024, as in nginx's `client_max_body_size`; `KiB`,
//! `MiB` and `GiB` say the same explicitly.

use serde::{Deserialize, Deserializer};

/// A byte count read from YAML text such as `100MB`, or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Size(pub u64);

/// Parses `512`, `512B`, `64KB`, `100MB`, `1GB` (and the `KiB`/`MiB`/`GiB` spellings).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("\"{text}\" is not a size like 512KB, 100MB or 1GB");
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let scale: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("\"{text}\" is too large"))
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A YAML number (bytes) or a string with a unit.
        let value = serde_yaml::Value::deserialize(deserializer)?;
        let text = match value {
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::String(s) => s,
            _ => return Err(serde::de::Error::custom("a size like 100MB is expected")),
        };
        parse_size(&text)
            .map(Size)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64KB"), Ok(64 * 1024));
        assert_eq!(parse_size("100MB"), Ok(100 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2m"), Ok(2 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1MB").is_err());
        assert!(parse_size("10TB").is_err());
        assert_eq!(
            parse_size("99999999999999GB"),
            Err("\"99999999999999GB\" is too large".into())
        );
    }
}
