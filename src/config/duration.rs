//! Durations written the way operators write them: `20ms`, `2s`, `5m`, `7d`.

use serde::{Deserialize, Deserializer};

/// A duration read from YAML text such as `20ms` or `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Duration(pub std::time::Duration);

/// Parses `20ms`, `2s`, `5m`, `1h`, `7d` (and combinations like `1m30s`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("\"{text}\" is not a duration like 20ms, 2s, 5m or 7d ({e})"))
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(Duration)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn units() {
        assert_eq!(parse_duration("20ms"), Ok(Std::from_millis(20)));
        assert_eq!(parse_duration("2s"), Ok(Std::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Std::from_secs(300)));
        assert_eq!(parse_duration("7d"), Ok(Std::from_secs(7 * 86400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("10").is_err());
    }
}
