//! Text for people: durations ("3 minutes"), times (RFC 3339), sizes,
//! tables, and the parsing of what people type (`--since 10m`, `-s TERM`).
//! Nothing here does I/O.

use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

const NS_PER_SEC: u64 = 1_000_000_000;

/// Turns the guest's `CLOCK_BOOTTIME` nanoseconds into wall-clock time,
/// from the monitor's record of when the guest booted, without trusting
/// the guest's own clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    boot_unix_ns: u64,
    now_unix_ns: u64,
}

impl Clock {
    /// A clock for a guest that booted at `boot_unix_ns`, read at `now_unix_ns`.
    pub fn new(boot_unix_ns: u64, now_unix_ns: u64) -> Clock {
        Clock {
            boot_unix_ns,
            now_unix_ns,
        }
    }

    /// Guest time `guest_ns` as Unix nanoseconds.
    pub fn unix_ns(&self, guest_ns: u64) -> u64 {
        self.boot_unix_ns.saturating_add(guest_ns)
    }

    /// Unix time `unix_ns` as guest time (0 for anything before the boot).
    pub fn guest_ns(&self, unix_ns: u64) -> u64 {
        unix_ns.saturating_sub(self.boot_unix_ns)
    }

    /// How long ago guest time `guest_ns` was.
    pub fn ago(&self, guest_ns: u64) -> Duration {
        Duration::from_nanos(self.now_unix_ns.saturating_sub(self.unix_ns(guest_ns)))
    }

    /// How long until guest time `guest_ns` (zero once it has passed).
    pub fn until(&self, guest_ns: u64) -> Duration {
        Duration::from_nanos(self.unix_ns(guest_ns).saturating_sub(self.now_unix_ns))
    }

    /// Now, as Unix nanoseconds.
    pub fn now_unix_ns(&self) -> u64 {
        self.now_unix_ns
    }
}

/// A duration the way `docker ps` says it: "Less than a second",
/// "1 second", "About a minute", "3 hours", "2 weeks".
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let plural = |n: u64, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    let (min, hour, day) = (60, 3600, 86_400);
    match secs {
        0 => "Less than a second".to_owned(),
        s if s < min => plural(s, "second"),
        s if s < 2 * min => "About a minute".to_owned(),
        s if s < hour => plural(s / min, "minute"),
        s if s < 2 * hour => "About an hour".to_owned(),
        s if s < 2 * day => plural(s / hour, "hour"),
        s if s < 14 * day => plural(s / day, "day"),
        s if s < 60 * day => plural(s / (7 * day), "week"),
        s if s < 730 * day => plural(s / (30 * day), "month"),
        s => plural(s / (365 * day), "year"),
    }
}

/// A short span the way a countdown reads: `0.4s`, `1.6s`, `25s`, `2m5s`
/// (a restart's back-off is at most 30 seconds; tenths matter below 10).
pub fn short_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 10.0 {
        // Rounded to tenths; 9.96 reads as 10s, not 10.0s.
        let tenths = (secs * 10.0).round() as u64;
        if tenths < 100 {
            return format!("{}.{}s", tenths / 10, tenths % 10);
        }
    }
    let whole = d.as_secs() + u64::from(d.subsec_millis() >= 500);
    if whole < 60 {
        format!("{whole}s")
    } else {
        format!("{}m{}s", whole / 60, whole % 60)
    }
}

/// Days since 1970-01-01 to a (year, month, day) date in the proleptic
/// Gregorian calendar, by 400-year eras of 146097 days.
fn date_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of a year starting in March
    let mp = (5 * doy + 2) / 153; // month from March, 0..11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`date_from_days`].
fn days_from_date(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix nanoseconds as RFC 3339 in UTC with nine fraction digits
/// (`2025-01-31T12:00:00.000000000Z`): fixed width, so columns line up.
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = (unix_ns / NS_PER_SEC) as i64;
    let nanos = unix_ns % NS_PER_SEC;
    let (year, month, day) = date_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Parses RFC 3339 (`2025-01-31T12:00:00Z`, with an optional fraction and
/// a `Z` or `+HH:MM` offset) or a bare date (`2025-01-31`, midnight UTC)
/// into Unix nanoseconds.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let part = text.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let year = num(0, 4)?;
    let month = num(5, 2)?;
    let day = num(8, 2)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_date(i64::from(year), month, day);
    if b.len() == 10 {
        return u64::try_from(days * 86_400).ok()?.checked_mul(NS_PER_SEC);
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) || b.get(13) != Some(&b':') {
        return None;
    }
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if b.get(16) != Some(&b':') || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0u64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let digits = b[at..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for (i, c) in b[at..at + digits].iter().enumerate().take(9) {
            nanos += u64::from(c - b'0') * 10u64.pow(8 - i as u32);
        }
        at += digits;
    }
    let offset_secs: i64 = match &b[at..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), ..] if b.len() == at + 6 && b[at + 3] == b':' => {
            let (oh, om) = (num(at + 1, 2)?, num(at + 4, 2)?);
            let off = i64::from(oh * 3600 + om * 60);
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second.min(59)) - offset_secs;
    u64::try_from(secs)
        .ok()?
        .checked_mul(NS_PER_SEC)?
        .checked_add(nanos)
}

/// Parses a duration: one or more `<number><unit>` (`10s`, `1h30m`,
/// `1.5m`, `250ms`), units `ns`, `us`, `ms`, `s`, `m`, `h`, `d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// A `--since` value: a duration back from now, or a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// That long ago (`10s`, `5m`, `1h`).
    Ago(Duration),
    /// Unix nanoseconds (RFC 3339, or Unix seconds as docker takes them).
    At(u64),
}

impl Since {
    /// The moment meant, as Unix nanoseconds, when it is `now_unix_ns`.
    pub fn unix_ns(&self, now_unix_ns: u64) -> u64 {
        match *self {
            Since::Ago(d) => {
                now_unix_ns.saturating_sub(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            }
            Since::At(t) => t,
        }
    }
}

impl FromStr for Since {
    type Err = String;

    fn from_str(text: &str) -> Result<Since, String> {
        if let Some(d) = parse_duration(text) {
            return Ok(Since::Ago(d));
        }
        if let Some(t) = parse_rfc3339(text) {
            return Ok(Since::At(t));
        }
        // Unix seconds, with an optional fraction.
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        if !whole.is_empty()
            && whole.bytes().all(|c| c.is_ascii_digit())
            && frac.bytes().all(|c| c.is_ascii_digit())
            && frac.len() <= 9
        {
            let secs: u64 = whole.parse().map_err(|_| too_far(text))?;
            let nanos: u64 = format!("{frac:0<9}").parse().unwrap_or(0);
            return secs
                .checked_mul(NS_PER_SEC)
                .and_then(|s| s.checked_add(nanos))
                .map(Since::At)
                .ok_or_else(|| too_far(text));
        }
        Err(format!(
            "{text:?} is neither a duration (10s, 5m, 1h30m), an RFC 3339 time \
             (2025-01-31T12:00:00Z) nor Unix seconds"
        ))
    }
}

fn too_far(text: &str) -> String {
    format!("{text:?} is too far in the future")
}

/// Parses a signal name or number (`TERM`, `SIGKILL`, `9`) for `kill -s`.
pub fn parse_signal(text: &str) -> Result<i32, String> {
    hafen_proto::signal::parse(text)
        .ok_or_else(|| format!("{text:?} is not a signal (a name such as TERM or KILL, or 1-64)"))
}

/// Bytes in binary units, the way memory is counted: `512B`, `1.5KiB`, `256MiB`.
pub fn binary_size(bytes: u64) -> String {
    scaled(bytes, 1024.0, &["B", "KiB", "MiB", "GiB", "TiB"])
}

/// Bytes in decimal units, the way I/O is counted: `512B`, `1.5kB`, `3MB`.
pub fn decimal_size(bytes: u64) -> String {
    scaled(bytes, 1000.0, &["B", "kB", "MB", "GB", "TB"])
}

fn scaled(bytes: u64, base: f64, units: &[&str]) -> String {
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= base && unit + 1 < units.len() {
        value /= base;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes}B");
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text}{}", units[unit])
}

/// CPU time as `ps` shows it: `HH:MM:SS`.
pub fn cpu_time(usec: u64) -> String {
    let secs = usec / 1_000_000;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// `text` cut to `max` characters, the last one an ellipsis when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `text` on one line: newlines, tabs and other control characters become
/// spaces (a script's command line keeps a table's rows whole).
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Rows under a header, each column as wide as its widest cell plus
/// three spaces (the last column is not padded). Every line ends in `\n`.
pub fn table<S: AsRef<str>>(header: &[&str], rows: &[Vec<S>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.as_ref().chars().count();
            match widths.get_mut(i) {
                Some(width) => *width = (*width).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<&str> = cells.collect();
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            text.push_str(cell);
            if i + 1 < cells.len() {
                let pad = widths[i] - cell.chars().count() + 3;
                let _ = write!(text, "{:pad$}", "");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(AsRef::as_ref));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_docker_ps() {
        let s = Duration::from_secs;
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(human_duration(s(1)), "1 second");
        assert_eq!(human_duration(s(59)), "59 seconds");
        assert_eq!(human_duration(s(60)), "About a minute");
        assert_eq!(human_duration(s(180)), "3 minutes");
        assert_eq!(human_duration(s(3600)), "About an hour");
        assert_eq!(human_duration(s(5 * 3600)), "5 hours");
        assert_eq!(human_duration(s(47 * 3600)), "47 hours");
        assert_eq!(human_duration(s(3 * 86_400)), "3 days");
        assert_eq!(human_duration(s(21 * 86_400)), "3 weeks");
        assert_eq!(human_duration(s(90 * 86_400)), "3 months");
        assert_eq!(human_duration(s(800 * 86_400)), "2 years");
    }

    #[test]
    fn countdowns_read_in_tenths_below_ten_seconds() {
        let ms = Duration::from_millis;
        assert_eq!(short_duration(Duration::ZERO), "0.0s");
        assert_eq!(short_duration(ms(400)), "0.4s");
        assert_eq!(short_duration(ms(1_640)), "1.6s");
        assert_eq!(short_duration(ms(9_960)), "10s");
        assert_eq!(short_duration(ms(25_400)), "25s");
        assert_eq!(short_duration(ms(59_600)), "1m0s");
        assert_eq!(short_duration(ms(125_000)), "2m5s");
    }

    #[test]
    fn times_print_as_fixed_width_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        // 2000-02-29 (a leap day in a century leap year) 12:34:56.5
        let t = 951_827_696 * NS_PER_SEC + 500_000_000;
        assert_eq!(rfc3339(t), "2000-02-29T12:34:56.500000000Z");
        assert_eq!(
            rfc3339(1_735_689_599 * NS_PER_SEC + 7),
            "2024-12-31T23:59:59.000000007Z"
        );
    }

    #[test]
    fn rfc3339_parses_back_with_fractions_and_offsets() {
        for t in [
            0,
            951_827_696 * NS_PER_SEC + 500_000_000,
            1_735_689_599 * NS_PER_SEC + 7,
        ] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        assert_eq!(
            parse_rfc3339("2025-01-31T13:00:00+01:00"),
            parse_rfc3339("2025-01-31T12:00:00Z")
        );
        assert_eq!(
            parse_rfc3339("2025-01-31T11:30:00-00:30"),
            parse_rfc3339("2025-01-31T12:00:00z")
        );
        assert_eq!(parse_rfc3339("1970-01-02"), Some(86_400 * NS_PER_SEC));
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:01.25Z"),
            Some(1_250_000_000)
        );
        for bad in [
            "",
            "2025-13-01",
            "2025-01-31T12:00:00",
            "2025-01-31T24:00:00Z",
            "2025-01-31T12:00Z",
            "2025-01-31T12:00:00.Z",
            "2025/01/31",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn since_takes_durations_times_and_unix_seconds() {
        let s = Duration::from_secs;
        assert_eq!("10s".parse(), Ok(Since::Ago(s(10))));
        assert_eq!("5m".parse(), Ok(Since::Ago(s(300))));
        assert_eq!("1h30m".parse(), Ok(Since::Ago(s(5400))));
        assert_eq!("1.5m".parse(), Ok(Since::Ago(s(90))));
        assert_eq!("250ms".parse(), Ok(Since::Ago(Duration::from_millis(250))));
        assert_eq!(
            "2025-01-31T12:00:00Z".parse(),
            Ok(Since::At(1_738_324_800 * NS_PER_SEC))
        );
        assert_eq!(
            "1700000000".parse(),
            Ok(Since::At(1_700_000_000 * NS_PER_SEC))
        );
        assert_eq!(
            "1700000000.5".parse(),
            Ok(Since::At(1_700_000_000 * NS_PER_SEC + 500_000_000))
        );
        for bad in ["", "10x", "s", "yesterday", "-5m", "1.2.3s"] {
            assert!(bad.parse::<Since>().is_err(), "{bad:?}");
        }
        let now = 1_000 * NS_PER_SEC;
        assert_eq!(Since::Ago(s(10)).unix_ns(now), 990 * NS_PER_SEC);
        assert_eq!(Since::Ago(s(2000)).unix_ns(now), 0);
    }

    #[test]
    fn the_clock_turns_guest_time_into_wall_time() {
        let boot = 1_000 * NS_PER_SEC;
        let clock = Clock::new(boot, boot + 100 * NS_PER_SEC);
        assert_eq!(clock.unix_ns(5 * NS_PER_SEC), 1_005 * NS_PER_SEC);
        assert_eq!(clock.ago(40 * NS_PER_SEC), Duration::from_secs(60));
        assert_eq!(clock.guest_ns(boot + 7), 7);
        assert_eq!(clock.guest_ns(boot - 7), 0, "before the boot");
        // A guest time past the host's now (clocks apart) is not negative.
        assert_eq!(clock.ago(500 * NS_PER_SEC), Duration::ZERO);
        assert_eq!(clock.until(101 * NS_PER_SEC), Duration::from_secs(1));
        assert_eq!(clock.until(99 * NS_PER_SEC), Duration::ZERO, "passed");
    }

    #[test]
    fn signals_parse_by_name_or_number() {
        assert_eq!(parse_signal("TERM"), Ok(15));
        assert_eq!(parse_signal("sigkill"), Ok(9));
        assert_eq!(parse_signal("10"), Ok(10));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE")
            .expect_err("unknown")
            .contains("not a signal"));
    }

    #[test]
    fn sizes_and_cpu_times() {
        assert_eq!(binary_size(0), "0B");
        assert_eq!(binary_size(1023), "1023B");
        assert_eq!(binary_size(1536), "1.5KiB");
        assert_eq!(binary_size(256 << 20), "256MiB");
        assert_eq!(decimal_size(1_200_000), "1.2MB");
        assert_eq!(decimal_size(999), "999B");
        assert_eq!(cpu_time(0), "00:00:00");
        assert_eq!(cpu_time(3_723_000_000), "01:02:03");
    }

    #[test]
    fn tables_align_columns_by_their_widest_cell() {
        let rows = vec![
            vec!["web".to_owned(), "1".to_owned(), "Up 3 minutes".to_owned()],
            vec!["database".to_owned(), "1234".to_owned(), "".to_owned()],
        ];
        assert_eq!(
            table(&["NAME", "PID", "STATUS"], &rows),
            "NAME       PID    STATUS\n\
             web        1      Up 3 minutes\n\
             database   1234\n"
        );
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(one_line("sh -c 'a\n\tb'"), "sh -c 'a  b'");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
