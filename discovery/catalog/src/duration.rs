//! Go's duration syntax (`300ms`, `10s`, `1m30s`, `1.5h`), which Consul uses for check
//! intervals and the `?wait` query parameter. Pure, so every form is unit-tested here.

use std::time::Duration;

/// Parses a Go duration string. A bare number is read as seconds for `?wait`-style
/// inputs only when `bare_seconds` is set (Consul accepts `?wait=10` as 10 s).
pub fn parse_go_duration(input: &str, bare_seconds: bool) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration".to_string());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if bare_seconds && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().map(Duration::from_secs).map_err(|e| format!("invalid duration {input:?}: {e}"));
    }
    if s.starts_with('-') {
        return Err(format!("invalid duration {input:?}: negative durations are not allowed"));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration {input:?}: expected a number"));
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| format!("invalid duration {input:?}: bad number"))?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let nanos_per_unit = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("invalid duration {input:?}: missing unit (use ms, s, m or h)")),
            other => return Err(format!("invalid duration {input:?}: unknown unit {other:?}")),
        };
        total += value * nanos_per_unit;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(format!("invalid duration {input:?}: too large"));
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Formats a duration the way Go's `time.Duration.String` does for whole units we emit
/// (`10s`, `1m30s`, `250ms`).
pub fn format_go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let frac = ms % 1000;
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac > 0 {
        out.push_str(&format!("{s}.{:03}s", frac).replace("0s", "s"));
    } else {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_forms() {
        let ok = |s: &str| parse_go_duration(s, false).expect(s);
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("300ms"), Duration::from_millis(300));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("2us"), Duration::from_micros(2));
        assert_eq!(ok("0"), Duration::ZERO);
    }

    #[test]
    fn bare_numbers_only_when_allowed() {
        assert_eq!(parse_go_duration("10", true), Ok(Duration::from_secs(10)));
        assert!(parse_go_duration("10", false).is_err());
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        for bad in ["", "abc", "10x", "-5s", "s", "1..2s"] {
            let err = parse_go_duration(bad, false).expect_err(bad);
            assert!(err.contains("duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
    }
}
