//! Go's reference-time layouts (`2006-01-02T15:04:05Z07:00`) for consul-template's
//! `timestamp`, in UTC like consul-template. Pure; no time-zone database needed.

use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// Go's `time.RFC3339`.
pub const RFC3339: &str = "2006-01-02T15:04:05Z07:00";

/// A UTC instant broken down into calendar fields.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    yday: u32,
    weekday: usize,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn civil(t: SystemTime) -> Civil {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let mut s = -(d.as_secs() as i64);
            let mut n = d.subsec_nanos();
            if n > 0 {
                s -= 1;
                n = 1_000_000_000 - n;
            }
            (s, n)
        }
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    const CUMULATIVE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUMULATIVE[(month - 1) as usize] + day + u32::from(month > 2 && is_leap(year));
    Civil {
        year,
        month,
        day,
        yday,
        weekday: (days + 4).rem_euclid(7) as usize,
        hour: rem / 3600,
        minute: rem / 60 % 60,
        second: rem % 60,
        nanos,
    }
}

/// Seconds since the Unix epoch (`timestamp "unix"`).
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Formats `t` (in UTC) with a Go layout.
pub fn format(layout: &str, t: SystemTime) -> String {
    let c = civil(t);
    let b = layout.as_bytes();
    let mut out = String::with_capacity(layout.len() + 8);
    let mut i = 0;
    let starts = |i: usize, s: &str| layout[i..].starts_with(s);
    while i < b.len() {
        let rest = &layout[i..];
        let (text, used): (String, usize) = match b[i] {
            b'J' if starts(i, "January") => (MONTHS[(c.month - 1) as usize].into(), 7),
            b'J' if starts(i, "Jan") => (MONTHS[(c.month - 1) as usize][..3].into(), 3),
            b'M' if starts(i, "Monday") => (DAYS[c.weekday].into(), 6),
            b'M' if starts(i, "Mon") => (DAYS[c.weekday][..3].into(), 3),
            b'M' if starts(i, "MST") => ("UTC".into(), 3),
            b'0' if starts(i, "002") => (format!("{:03}", c.yday), 3),
            b'0' if rest.len() >= 2 && (b'1'..=b'6').contains(&b[i + 1]) => {
                let v = match b[i + 1] {
                    b'1' => format!("{:02}", c.month),
                    b'2' => format!("{:02}", c.day),
                    b'3' => format!("{:02}", hour12(c.hour)),
                    b'4' => format!("{:02}", c.minute),
                    b'5' => format!("{:02}", c.second),
                    _ => format!("{:02}", c.year.rem_euclid(100)),
                };
                (v, 2)
            }
            b'1' if starts(i, "15") => (format!("{:02}", c.hour), 2),
            b'1' => (c.month.to_string(), 1),
            b'2' if starts(i, "2006") => (format!("{:04}", c.year), 4),
            b'2' => (c.day.to_string(), 1),
            b'_' if starts(i, "__2") => (format!("{:>3}", c.yday), 3),
            b'_' if starts(i, "_2") && !starts(i, "_2006") => (format!("{:>2}", c.day), 2),
            b'3' => (hour12(c.hour).to_string(), 1),
            b'4' => (c.minute.to_string(), 1),
            b'5' => (c.second.to_string(), 1),
            b'P' if starts(i, "PM") => ((if c.hour >= 12 { "PM" } else { "AM" }).into(), 2),
            b'p' if starts(i, "pm") => ((if c.hour >= 12 { "pm" } else { "am" }).into(), 2),
            b'-' | b'Z' => zone(layout, i),
            b'.' | b',' if rest.len() > 1 && (b[i + 1] == b'0' || b[i + 1] == b'9') => fraction(layout, i, c.nanos),
            _ => {
                let ch = rest.chars().next().unwrap_or(' ');
                (ch.to_string(), ch.len_utf8())
            }
        };
        out.push_str(&text);
        i += used;
    }
    out
}

/// A zone element at `i` (`-0700`, `Z07:00`, ...): always UTC here. Returns the text and
/// the layout bytes used.
fn zone(layout: &str, i: usize) -> (String, usize) {
    let z = layout.as_bytes()[i] == b'Z';
    let forms =
        [("070000", "+000000"), ("07:00:00", "+00:00:00"), ("0700", "+0000"), ("07:00", "+00:00"), ("07", "+00")];
    match forms.iter().find(|(f, _)| layout[i + 1..].starts_with(f)) {
        Some((f, zero)) => ((if z { "Z" } else { zero }).to_string(), f.len() + 1),
        None => (layout[i..i + 1].to_string(), 1),
    }
}

/// Fractional seconds at `i` (`.000`, `,999`): zeros keep trailing zeros, nines drop them.
fn fraction(layout: &str, i: usize, nanos: u32) -> (String, usize) {
    let b = layout.as_bytes();
    let ch = b[i + 1];
    let mut j = i + 1;
    while j < b.len() && b[j] == ch {
        j += 1;
    }
    if j < b.len() && b[j].is_ascii_digit() {
        return (layout[i..i + 1].to_string(), 1);
    }
    let digits = j - i - 1;
    let frac = format!("{nanos:09}");
    let mut f = frac[..digits.min(9)].to_string();
    if ch == b'9' {
        while f.ends_with('0') {
            f.pop();
        }
    }
    let sep = char::from(b[i]);
    (if f.is_empty() { String::new() } else { format!("{sep}{f}") }, j - i)
}

fn hour12(h: u32) -> u32 {
    match h % 12 {
        0 => 12,
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn go_layouts_in_utc() {
        // 2024-02-29T13:04:05.120Z, a Thursday, day 60 of a leap year.
        let t = UNIX_EPOCH + Duration::new(1_709_211_845, 120_000_000);
        assert_eq!(format(RFC3339, t), "2024-02-29T13:04:05Z");
        assert_eq!(format("Mon Jan _2 15:04:05 MST 2006", t), "Thu Feb 29 13:04:05 UTC 2024");
        assert_eq!(format("Monday, January 2, 2006 3:04PM -0700", t), "Thursday, February 29, 2024 1:04PM +0000");
        assert_eq!(format("2006-01-02 15:04:05.000", t), "2024-02-29 13:04:05.120");
        assert_eq!(format("05.999", t), "05.12");
        assert_eq!(format("002 06", t), "060 24");
        assert_eq!(format("unix is not a layout", t), "unix is not a layout");
        assert_eq!(unix_seconds(t), 1_709_211_845);
        assert_eq!(format(RFC3339, UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
