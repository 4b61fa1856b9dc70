//! Restart policies: whether a container's end starts it again, and after
//! what back-off (docker's: 100 ms, doubling to 30 s, back to 100 ms once
//! a run lasted 10 s).

/// The first back-off.
const FIRST_DELAY_NS: u64 = 100_000_000;
/// The longest back-off.
const MAX_DELAY_NS: u64 = 30_000_000_000;
/// A run at least this long resets the back-off.
const RESET_AFTER_NS: u64 = 10_000_000_000;

/// A container's restarts: how many, and the pending one.
#[derive(Debug, Default)]
pub(super) struct Restarts {
    /// Restarts made by the policy or for failed health (docker's
    /// RestartCount); a manual start resets it.
    pub count: u32,
    /// The back-off used last; 0 before the first.
    delay_ns: u64,
    /// When the pending restart is due (monotonic ns).
    pub due: Option<u64>,
    /// The pending restart's back-off.
    pub pending_delay_ns: u64,
    /// It is being stopped because it became unhealthy: start it again
    /// however it ends.
    pub for_health: bool,
}

impl Restarts {
    /// Schedules a restart of a container that ended at `now` after
    /// running `ran_ns`; returns the back-off.
    pub fn schedule(&mut self, now: u64, ran_ns: u64) -> u64 {
        let delay = if self.delay_ns == 0 || ran_ns >= RESET_AFTER_NS {
            FIRST_DELAY_NS
        } else {
            (self.delay_ns * 2).min(MAX_DELAY_NS)
        };
        self.delay_ns = delay;
        self.pending_delay_ns = delay;
        self.due = Some(now + delay);
        self.for_health = false;
        delay
    }

    /// Forgets a pending restart (a stop, a shutdown, a manual start).
    pub fn cancel(&mut self) {
        self.due = None;
        self.for_health = false;
    }

    /// A manual start: the count and the back-off begin again.
    pub fn reset(&mut self) {
        *self = Restarts::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn back_off_doubles_from_100_ms_to_a_30_s_cap() {
        let mut r = Restarts::default();
        let delays: Vec<u64> = (0..12).map(|_| r.schedule(0, 50 * MS) / MS).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
        );
        assert_eq!(r.due, Some(30_000 * MS));
    }

    #[test]
    fn a_run_of_ten_seconds_resets_the_back_off() {
        let mut r = Restarts::default();
        for _ in 0..5 {
            r.schedule(0, MS);
        }
        assert_eq!(r.schedule(0, 9_999 * MS), 3200 * MS);
        assert_eq!(r.schedule(0, 10_000 * MS), 100 * MS);
        assert_eq!(r.schedule(0, MS), 200 * MS);
    }

    #[test]
    fn cancel_and_reset_forget_what_is_pending() {
        let mut r = Restarts {
            count: 4,
            ..Restarts::default()
        };
        r.schedule(5, 0);
        r.for_health = true;
        r.cancel();
        assert_eq!((r.due, r.for_health, r.count), (None, false, 4));
        r.reset();
        assert_eq!(r.count, 0);
        assert_eq!(r.schedule(0, 0), 100 * MS);
    }
}
