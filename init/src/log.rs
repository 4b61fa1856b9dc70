//! hafen-init's own messages: `tracing` events, written to the console
//! (stderr, which the kernel connected to /dev/console).
//!
//! The macros [`error!`], [`warn!`], [`info!`] and [`debug!`] take
//! `format!`-style arguments and hand them to [`write`], which emits a
//! `tracing` event from one of four call sites (one per level) to the console
//! subscriber it installs on first use. What the levels mean:
//!
//! - `error`: a failure the user sees and must act on: a container that
//!   cannot start, a bundle that cannot be read, a shutdown step that failed.
//! - `warn`: abnormal but handled: a container killed after its stop
//!   timeout, a stray signal, a host client that sent garbage.
//! - `info`: a rare state change: boot done, a container started or exited,
//!   shutdown begun. A healthy boot prints a handful of these.
//! - `debug`: everything else, to see where boot time goes and why; each line
//!   carries the time since boot.
//!
//! The most verbose level printed comes from the kernel command line
//! (`hafen.log=debug`; default `info`). Anything a container (or a host
//! client) can cause to be logged again and again must go through a
//! [`RateLimit`] kept for that source, so it cannot flood the console or
//! stall PID 1 writing to it.
//!
//! Why the macros are not `tracing`'s own: each `tracing` call site is a
//! static callsite with its metadata and inlined dispatch, about 550 bytes of
//! the static binary, against one function call here; the console shows
//! neither file nor line, so nothing is lost. Measured with
//! `scripts/build-init.sh` (53 call sites): the old hand-written logger
//! 1,233,488 bytes; `tracing` + `tracing-subscriber` (`fmt`) through
//! [`write`] 1,348,600 (+112 KiB); with `tracing`'s macros at every call site
//! 1,378,456 (+142 KiB, and growing with every new message). Code that wants
//! spans or structured fields can call `tracing` directly: the same
//! subscriber prints them.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Once;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

/// Severity of a message; see the module documentation for what each means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// A failure the user sees and must act on.
    Error = 0,
    /// Abnormal, handled.
    Warn = 1,
    /// A rare state change.
    Info = 2,
    /// Everything else.
    Debug = 3,
}

impl Level {
    fn of(level: &tracing::Level) -> Level {
        match *level {
            tracing::Level::ERROR => Level::Error,
            tracing::Level::WARN => Level::Warn,
            tracing::Level::INFO => Level::Info,
            _ => Level::Debug,
        }
    }
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the most verbose level printed.
pub fn set_max_level(level: Level) {
    set_level(&MAX_LEVEL, level);
}

fn set_level(max: &AtomicU8, level: Level) {
    max.store(level as u8, Ordering::Relaxed);
    // The filter's verdict is cached per call site: a `debug!` met while
    // debug was off would otherwise stay off.
    tracing::callsite::rebuild_interest_cache();
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

/// The console's line format: `hafen: error: ...`, `hafen: warning: ...`,
/// `hafen: ...`, and `hafen: [MS ms] ...` for debug lines.
struct ConsoleFormat;

impl<S, N> FormatEvent<S, N> for ConsoleFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        match Level::of(event.metadata().level()) {
            Level::Error => writer.write_str("hafen: error: ")?,
            Level::Warn => writer.write_str("hafen: warning: ")?,
            Level::Info => writer.write_str("hafen: ")?,
            // Debug lines carry the time since boot, to see where boot time goes.
            Level::Debug => {
                let us = crate::sys::boottime_ns() / 1000;
                write!(writer, "hafen: [{}.{:03} ms] ", us / 1000, us % 1000)?;
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Where lines go: file descriptor 2. The `fmt` layer formats a whole line
/// first and hands it over in one write.
#[derive(Debug, Clone, Copy)]
struct Console;

impl io::Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A console that cannot be written to must not take PID 1 down:
        // the line is dropped and the caller carries on.
        let _ = crate::sys::write_all(2, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Console {
    type Writer = Console;

    fn make_writer(&'a self) -> Console {
        *self
    }
}

/// A subscriber printing events up to the level in `max` to `writer`.
/// Change the level with [`set_level`], which also drops the verdicts
/// `tracing` cached for call sites already met.
fn subscriber<W>(writer: W, max: &'static AtomicU8) -> impl Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::filter::filter_fn(move |meta| {
        Level::of(meta.level()) as u8 <= max.load(Ordering::Relaxed)
    });
    tracing_subscriber::registry().with(filter).with(
        tracing_subscriber::fmt::layer()
            .event_format(ConsoleFormat)
            .with_writer(writer),
    )
}

/// Installs the console subscriber, once; every message goes through
/// [`write`], which calls this, so no entry point has to remember to.
fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Fails only when another subscriber is already installed (a test
        // harness's); that one then gets the events.
        let _ = tracing::subscriber::set_global_default(subscriber(Console, &MAX_LEVEL));
    });
}

/// Writes one message at a level chosen at run time, if that level is enabled.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    install();
    match level {
        Level::Error => tracing::error!("{args}"),
        Level::Warn => tracing::warn!("{args}"),
        Level::Info => tracing::info!("{args}"),
        Level::Debug => tracing::debug!("{args}"),
    }
}

/// Logs at error level: a failure the user sees and must act on.
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) } }
/// Logs at warn level: abnormal, handled.
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) } }
/// Logs at info level: a rare state change.
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } }
/// Logs at debug level: everything else.
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($t)*)) } }

/// Limits the messages one source (a container, a host connection) can
/// cause: a token bucket that holds up to `burst` messages and refills at
/// `per_second`. Keep one per source, so a noisy container does not silence
/// another's messages. Suppressed messages are counted, and the next message
/// let through says how many were dropped before it.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// Nanoseconds of refill one message costs (a second over the rate).
    cost_ns: u64,
    /// The most credit the bucket holds: `burst` messages' worth.
    capacity_ns: u64,
    /// Credit as of `last_ns`.
    credit_ns: u64,
    /// When the credit was last brought up to date; `None` until first used,
    /// so a new bucket starts full.
    last_ns: Option<u64>,
    /// Messages dropped since the last one let through.
    suppressed: u64,
}

impl RateLimit {
    /// A bucket letting `burst` messages through at once and `per_second`
    /// on average after that (each at least 1).
    pub fn new(per_second: u32, burst: u32) -> RateLimit {
        let cost_ns = 1_000_000_000 / u64::from(per_second.max(1));
        let capacity_ns = cost_ns.saturating_mul(u64::from(burst.max(1)));
        RateLimit {
            cost_ns,
            capacity_ns,
            credit_ns: capacity_ns,
            last_ns: None,
            suppressed: 0,
        }
    }

    /// Decides whether a message at `now_ns` (any monotonic clock, in
    /// nanoseconds) may go out: `Some(n)` when it may, `n` being how many
    /// were suppressed since the last one let through; `None` when it is
    /// suppressed (and counted).
    pub fn admit(&mut self, now_ns: u64) -> Option<u64> {
        let elapsed = match self.last_ns {
            Some(last) => now_ns.saturating_sub(last),
            None => 0,
        };
        // A clock that went backwards refills nothing but moves `last` back,
        // so the bucket does not stall until the clock catches up.
        self.last_ns = Some(now_ns);
        self.credit_ns = self.credit_ns.saturating_add(elapsed).min(self.capacity_ns);
        if self.credit_ns < self.cost_ns {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.credit_ns -= self.cost_ns;
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Messages suppressed since the last one let through.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Writes a message at `level` unless the bucket is empty; the first
    /// message let through after some were dropped says how many.
    pub fn write(&mut self, level: Level, args: fmt::Arguments<'_>) {
        self.write_at(crate::sys::monotonic_ns(), level, args);
    }

    /// [`RateLimit::write`] with the time given, for tests and for callers
    /// that already read the clock.
    pub fn write_at(&mut self, now_ns: u64, level: Level, args: fmt::Arguments<'_>) {
        match self.admit(now_ns) {
            None => {}
            Some(0) => write(level, args),
            Some(1) => write(level, format_args!("{args} (1 earlier message suppressed)")),
            Some(n) => write(
                level,
                format_args!("{args} ({n} earlier messages suppressed)"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("capture lock").clone()).expect("utf-8")
        }
    }

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("capture lock").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;

        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    /// Runs `f` with a capturing subscriber filtered by `max`; returns what it printed.
    fn captured(max: &'static AtomicU8, f: impl FnOnce()) -> String {
        // `tracing` caches each call site's verdict over every live
        // subscriber; one test at a time keeps another's level change from
        // racing this one's.
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _serial = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let capture = Capture::default();
        tracing::subscriber::with_default(subscriber(capture.clone(), max), f);
        capture.text()
    }

    #[test]
    fn the_console_format_is_kept_through_tracing() {
        static MAX: AtomicU8 = AtomicU8::new(Level::Debug as u8);
        let name = "web";
        let out = captured(&MAX, || {
            crate::error!("container {name}: cannot start: {}", "ENOENT");
            crate::warn!("stray signal {}", 17);
            crate::info!("boot done");
            crate::debug!("mounted {}", "/proc");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(
            lines[0],
            "hafen: error: container web: cannot start: ENOENT"
        );
        assert_eq!(lines[1], "hafen: warning: stray signal 17");
        assert_eq!(lines[2], "hafen: boot done");
        let debug = lines[3]
            .strip_prefix("hafen: [")
            .and_then(|rest| rest.split_once(" ms] "))
            .unwrap_or_else(|| panic!("debug line without a time: {:?}", lines[3]));
        assert_eq!(debug.1, "mounted /proc");
        let (ms, frac) = debug.0.split_once('.').expect("ms.us");
        assert!(
            ms.parse::<u64>().is_ok() && frac.len() == 3 && frac.parse::<u32>().is_ok(),
            "{:?}",
            debug.0
        );
    }

    #[test]
    fn messages_above_the_max_level_are_dropped_and_the_level_can_change_later() {
        static MAX: AtomicU8 = AtomicU8::new(Level::Warn as u8);
        let out = captured(&MAX, || {
            crate::info!("hidden info");
            crate::debug!("hidden debug");
            crate::warn!("shown warning");
            write(Level::Error, format_args!("shown error"));
            // As when `hafen.log=debug` is read after the first messages.
            set_level(&MAX, Level::Debug);
            crate::debug!("now shown");
        });
        assert!(!out.contains("hidden"), "{out}");
        assert!(
            out.contains("hafen: warning: shown warning\nhafen: error: shown error\n"),
            "{out}"
        );
        assert!(out.contains("now shown"), "{out}");
    }

    #[test]
    fn raising_the_level_reaches_call_sites_already_met_while_it_was_off() {
        static MAX: AtomicU8 = AtomicU8::new(Level::Info as u8);
        let out = captured(&MAX, || {
            for i in 0..2 {
                // One call site, met first while debug is off.
                crate::debug!("pass {i}");
                set_level(&MAX, Level::Debug);
            }
            set_level(&MAX, Level::Error);
            crate::debug!("after lowering");
        });
        assert!(!out.contains("pass 0") && out.contains("pass 1"), "{out}");
        assert!(!out.contains("after lowering"), "{out}");
    }

    #[test]
    fn level_names_parse_as_on_the_kernel_command_line() {
        assert_eq!(parse_level("error"), Some(Level::Error));
        assert_eq!(parse_level("warn"), Some(Level::Warn));
        assert_eq!(parse_level("info"), Some(Level::Info));
        assert_eq!(parse_level("debug"), Some(Level::Debug));
        assert_eq!(parse_level("trace"), None);
        assert_eq!(parse_level("WARN"), None);
    }

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn rate_limit_lets_a_burst_through_then_the_rate() {
        let mut limit = RateLimit::new(2, 3);
        let t0 = 10 * SECOND;
        let verdicts: Vec<Option<u64>> = (0..5).map(|_| limit.admit(t0)).collect();
        assert_eq!(verdicts, [Some(0), Some(0), Some(0), None, None]);
        assert_eq!(limit.suppressed(), 2);
        // Half a second refills one message at 2 per second.
        assert_eq!(
            limit.admit(t0 + SECOND / 2),
            Some(2),
            "reports the two dropped"
        );
        assert_eq!(limit.suppressed(), 0);
        assert_eq!(limit.admit(t0 + SECOND / 2), None);
        assert_eq!(limit.admit(t0 + SECOND / 2 + SECOND / 4), None, "not yet");
        assert_eq!(limit.admit(t0 + SECOND), Some(2));
    }

    #[test]
    fn rate_limit_refills_no_more_than_the_burst_after_a_quiet_spell() {
        let mut limit = RateLimit::new(10, 2);
        assert_eq!(limit.admit(0), Some(0));
        let later = 3600 * SECOND;
        let verdicts: Vec<Option<u64>> = (0..4).map(|_| limit.admit(later)).collect();
        assert_eq!(verdicts, [Some(0), Some(0), None, None]);
    }

    #[test]
    fn rate_limit_survives_a_clock_going_backwards_and_zero_settings() {
        let mut limit = RateLimit::new(1, 1);
        assert_eq!(limit.admit(5 * SECOND), Some(0));
        assert_eq!(limit.admit(SECOND), None, "no credit from going back");
        assert_eq!(
            limit.admit(2 * SECOND),
            Some(1),
            "one second after the new base"
        );
        // Zero rate and burst act as one: a source is never silenced for good.
        let mut zero = RateLimit::new(0, 0);
        assert_eq!(zero.admit(0), Some(0));
        assert_eq!(zero.admit(0), None);
        assert_eq!(zero.admit(SECOND), Some(1));
        // The largest settings do not overflow.
        let mut huge = RateLimit::new(u32::MAX, u32::MAX);
        assert_eq!(huge.admit(u64::MAX), Some(0));
    }

    #[test]
    fn rate_limited_writes_say_how_many_were_suppressed() {
        static MAX: AtomicU8 = AtomicU8::new(Level::Info as u8);
        let out = captured(&MAX, || {
            let mut limit = RateLimit::new(1, 1);
            for i in 0..4 {
                limit.write_at(
                    0,
                    Level::Warn,
                    format_args!("container web: bad request {i}"),
                );
            }
            limit.write_at(
                SECOND,
                Level::Warn,
                format_args!("container web: bad request 4"),
            );
            limit.write_at(
                SECOND,
                Level::Warn,
                format_args!("container web: bad request 5"),
            );
            limit.write_at(
                2 * SECOND,
                Level::Warn,
                format_args!("container web: bad request 6"),
            );
        });
        assert_eq!(
            out,
            "hafen: warning: container web: bad request 0\n\
             hafen: warning: container web: bad request 4 (3 earlier messages suppressed)\n\
             hafen: warning: container web: bad request 6 (1 earlier message suppressed)\n"
        );
    }
}
