//! Resource limit names, shared by the runtime and the checker.

/// Names without `RLIMIT_`, in number order (`CPU` is 0).
pub const NAMES: [&str; 16] = [
    "CPU",
    "FSIZE",
    "DATA",
    "STACK",
    "CORE",
    "RSS",
    "NPROC",
    "NOFILE",
    "MEMLOCK",
    "AS",
    "LOCKS",
    "SIGPENDING",
    "MSGQUEUE",
    "NICE",
    "RTPRIO",
    "RTTIME",
];

/// Parses `RLIMIT_NOFILE` into its number.
pub fn parse(name: &str) -> Option<u32> {
    let bare = name.strip_prefix("RLIMIT_")?;
    NAMES.iter().position(|n| *n == bare).map(|i| i as u32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_map_to_numbers() {
        assert_eq!(super::parse("RLIMIT_NOFILE"), Some(7));
        assert_eq!(super::parse("RLIMIT_RTTIME"), Some(15));
        assert_eq!(super::parse("NOFILE"), None);
    }
}
