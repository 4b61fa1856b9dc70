//! Signal names and numbers (x86_64 Linux), so a manifest, an annotation or
//! a command line can say `SIGTERM`, `TERM` or `15`.

/// Catchable and uncatchable standard signals by name (without `SIG`).
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// Lowest and highest real-time signal numbers usable by programs (musl and glibc agree).
const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// Parses `SIGTERM`, `TERM`, `sigterm`, `15`, `RTMIN+3` or `SIGRTMAX-1` into a
/// signal number. Returns `None` for anything else, including 0.
pub fn parse(name: &str) -> Option<i32> {
    let name = name.trim();
    if let Ok(n) = name.parse::<i32>() {
        return (1..=SIGRTMAX).contains(&n).then_some(n);
    }
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = SIGNALS.iter().find(|(s, _)| *s == bare) {
        return Some(n);
    }
    let rt = |base: i32, rest: &str| -> Option<i32> {
        let n = match rest {
            "" => base,
            _ if rest.starts_with('+') => base + rest[1..].parse::<i32>().ok()?,
            _ if rest.starts_with('-') => base - rest[1..].parse::<i32>().ok()?,
            _ => return None,
        };
        (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n)
    };
    if let Some(rest) = bare.strip_prefix("RTMIN") {
        return rt(SIGRTMIN, rest);
    }
    if let Some(rest) = bare.strip_prefix("RTMAX") {
        return rt(SIGRTMAX, rest);
    }
    None
}

/// The conventional name of a signal number (`SIGTERM`), or `SIG<n>` for
/// real-time and unknown numbers.
pub fn name(signal: i32) -> String {
    match SIGNALS.iter().find(|(_, n)| *n == signal) {
        Some((s, _)) => format!("SIG{s}"),
        None => format!("SIG{signal}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_and_without_sig_and_numbers() {
        assert_eq!(parse("SIGTERM"), Some(15));
        assert_eq!(parse("term"), Some(15));
        assert_eq!(parse("9"), Some(9));
        assert_eq!(parse("SIGPWR"), Some(30));
        assert_eq!(parse("RTMIN+2"), Some(36));
        assert_eq!(parse("SIGRTMAX"), Some(64));
    }

    #[test]
    fn rejects_zero_out_of_range_and_unknown_names() {
        for bad in ["0", "65", "-1", "SIGFOO", "", "RTMIN+40", "RTMINx"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_numbers() {
        assert_eq!(name(15), "SIGTERM");
        assert_eq!(name(40), "SIG40");
    }
}
