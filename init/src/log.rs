//! hafen-init's own messages, written to the console (stderr, which the kernel
//! connected to /dev/console).
//!
//! Levels: `error` is a failure the user sees (a container that cannot start);
//! `warn` is abnormal but handled; `info` is a rare state change (boot,
//! shutdown, a container's exit); `debug` is everything else. The level comes
//! from the kernel command line (`hafen.log=debug`).

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

/// Severity of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// A failure the user must see.
    Error = 0,
    /// Abnormal, handled.
    Warn = 1,
    /// A rare state change.
    Info = 2,
    /// Everything else.
    Debug = 3,
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the most verbose level printed.
pub fn set_max_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Parses a level name as given on the kernel command line.
pub fn parse_level(name: &str) -> Option<Level> {
    match name {
        "error" => Some(Level::Error),
        "warn" => Some(Level::Warn),
        "info" => Some(Level::Info),
        "debug" => Some(Level::Debug),
        _ => None,
    }
}

/// Writes one message line, if `level` is enabled. Never fails: a console
/// that cannot be written to must not take PID 1 down.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if level as u8 > MAX_LEVEL.load(Ordering::Relaxed) {
        return;
    }
    let line = match level {
        Level::Error => format!("hafen: error: {args}\n"),
        Level::Warn => format!("hafen: warning: {args}\n"),
        Level::Info => format!("hafen: {args}\n"),
        // Debug lines carry the time since boot, to see where boot time goes.
        Level::Debug => {
            let us = crate::sys::boottime_ns() / 1000;
            format!("hafen: [{}.{:03} ms] {args}\n", us / 1000, us % 1000)
        }
    };
    let _ = crate::sys::write_all(2, line.as_bytes());
}

/// Logs at error level.
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) } }
/// Logs at warn level.
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) } }
/// Logs at info level.
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } }
/// Logs at debug level.
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($t)*)) } }
