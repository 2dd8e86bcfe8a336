//! Human units: memory sizes (`256M`, `1.5GiB`, `1048576`) and durations (`2s`, `1m30s`, `500ms`).
//!
//! Sizes use binary multiples as Docker and Slurm do (`K` = 1024). A bare number is bytes for a
//! size and seconds for a duration. In JSON both accept a string or a number.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// A duration in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DurationSpec(pub u64);

/// Parses a size such as `256M`, `1.5G`, `64KiB`, `100MB` or `1048576` (bytes).
pub fn parse_size(s: &str) -> Result<ByteSize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("invalid size `{s}`: expected a number with an optional unit, e.g. 256M or 2G")
    })?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size `{s}`: unknown unit `{other}` (use B, K, M, G or T)"
            ))
        }
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("invalid size `{s}`: too large"));
    }
    Ok(ByteSize(bytes.round() as u64))
}

/// Parses a duration such as `2s`, `500ms`, `1m30s`, `1.5h`, `2d` or `90` (seconds).
pub fn parse_duration(s: &str) -> Result<DurationSpec, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "invalid duration `{s}`: expected e.g. 30s, 500ms, 1m30s, 2h or a number of seconds"
        )
    };
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return Err(bad());
        }
        return Ok(DurationSpec((secs * 1000.0).round() as u64));
    }
    let mut total: f64 = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if n_end == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..n_end].parse().map_err(|_| bad())?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let ms_per = match &rest[..u_end] {
            "ms" => 1.0,
            "s" | "sec" => 1000.0,
            "m" | "min" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            _ => return Err(bad()),
        };
        total += value * ms_per;
        rest = &rest[u_end..];
    }
    if !total.is_finite() || total > 1e15 {
        return Err(bad());
    }
    Ok(DurationSpec(total.round() as u64))
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut i = 0;
        while v >= 1024.0 && i < UNITS.len() - 1 {
            v /= 1024.0;
            i += 1;
        }
        if i == 0 || v.fract() == 0.0 {
            write!(f, "{}{}", v as u64, UNITS[i])
        } else {
            write!(f, "{:.1}{}", v, UNITS[i])
        }
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms == 0 {
            return write!(f, "0s");
        }
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let mut s = ms / 1000;
        let mut out = String::new();
        for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
            if s >= len {
                out.push_str(&format!("{}{unit}", s / len));
                s %= len;
            }
        }
        if s > 0 {
            out.push_str(&format!("{s}s"));
        }
        f.write_str(&out)
    }
}

impl DurationSpec {
    /// The duration as a std [`std::time::Duration`].
    pub fn as_std(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(f64),
    Str(String),
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrStr::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a size such as \"256M\" or a number of bytes")
        })? {
            NumOrStr::Num(n) if n >= 0.0 && n.fract() == 0.0 => Ok(ByteSize(n as u64)),
            NumOrStr::Num(n) => Err(serde::de::Error::custom(format!(
                "invalid size {n}: expected a whole, non-negative number of bytes"
            ))),
            NumOrStr::Str(s) => parse_size(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrStr::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a duration such as \"30s\" or a number of seconds")
        })? {
            NumOrStr::Num(n) if n >= 0.0 && n.is_finite() => {
                Ok(DurationSpec((n * 1000.0).round() as u64))
            }
            NumOrStr::Num(n) => Err(serde::de::Error::custom(format!(
                "invalid duration {n}: expected a non-negative number of seconds"
            ))),
            NumOrStr::Str(s) => parse_duration(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("256M").unwrap().0, 256 << 20);
        assert_eq!(parse_size("256MiB").unwrap().0, 256 << 20);
        assert_eq!(parse_size("1.5G").unwrap().0, 3 << 29);
        assert_eq!(parse_size("1024").unwrap().0, 1024);
        assert_eq!(parse_size("64k").unwrap().0, 64 << 10);
        let e = parse_size("12XB").unwrap_err();
        assert!(e.contains("unknown unit `XB`"), "{e}");
        assert!(parse_size("M").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-5M").is_err());
    }

    #[test]
    fn durations_parse_compound_forms() {
        assert_eq!(parse_duration("2s").unwrap().0, 2000);
        assert_eq!(parse_duration("500ms").unwrap().0, 500);
        assert_eq!(parse_duration("1m30s").unwrap().0, 90_000);
        assert_eq!(parse_duration("1.5h").unwrap().0, 5_400_000);
        assert_eq!(parse_duration("90").unwrap().0, 90_000);
        for bad in ["abc", "", "5x", "s", "-1", "1s2"] {
            assert!(parse_duration(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn display_round_trips() {
        for ms in [0, 1, 1500, 2000, 90_000, 3_600_000, 90_061_000] {
            let d = DurationSpec(ms);
            assert_eq!(parse_duration(&d.to_string()).unwrap(), d, "{d}");
        }
        assert_eq!(ByteSize(256 << 20).to_string(), "256MiB");
        assert_eq!(ByteSize(1536).to_string(), "1.5KiB");
    }
}
