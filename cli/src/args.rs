//! Parsers for command-line values: durations (`90s`, `20m`, `2h`, `1h30m`), sizes (`512m`, `4g`)
//! and `NAME=VALUE` variables.

use std::time::Duration;

use kiln_buildspec::names::{is_shell_name, reserved_prefix};

/// `90s`, `20m`, `2h`, `1h30m`, `1500ms`: a positive duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad =
        || format!("invalid duration {text:?}: use a number with a unit, like 90s, 20m or 2h");
    let mut total = 0u64;
    let mut rest = text.trim();
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (millis, unit_len) = match () {
            _ if rest.starts_with("ms") => (1, 2),
            _ if rest.starts_with('s') => (1000, 1),
            _ if rest.starts_with('m') => (60_000, 1),
            _ if rest.starts_with('h') => (3_600_000, 1),
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(millis)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(bad)?;
    }
    if total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_millis(total))
}

/// `512m`, `4g`, `3GiB`, `1073741824`: bytes.
pub fn parse_size(text: &str) -> Result<i64, String> {
    let bad = || format!("invalid size {text:?}: use a number with a unit, like 512m or 4g");
    let lower = text.trim().to_ascii_lowercase();
    let number_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(number_end);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).filter(|b| *b > 0).ok_or_else(bad)
}

/// `NAME=VALUE` for `-e`: a shell variable name, not reserved.
pub fn parse_variable(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid variable {text:?}: expected NAME=VALUE"))?;
    if !is_shell_name(name) {
        return Err(format!(
            "invalid variable name {name:?}: use letters, digits and _ (not starting with a digit)"
        ));
    }
    if let Some(prefix) = reserved_prefix(name) {
        return Err(format!(
            "variable {name}: names starting with {prefix} are reserved for Kiln"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("20m"), Ok(Duration::from_secs(1200)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["", "10", "0s", "5x", "m", "-1s", "5ms3"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("4g"), Ok(4 << 30));
        assert_eq!(parse_size("3GiB"), Ok(3 << 30));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn variables() {
        assert_eq!(parse_variable("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_variable("noeq").is_err());
        assert!(parse_variable("1A=x").is_err());
        assert!(parse_variable("CODEBUILD_X=1").is_err());
    }
}
