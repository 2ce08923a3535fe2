//! The one source of "now" for decisions: due times, backoff deadlines, polling
//! anchors, max ages, timestamps written to the store. It is injected through the app
//! (the services' context and the actors' registry carry it), so a 30-minute poll or a
//! 12-hour deadline is tested in milliseconds: a test either sets a [`ManualClock`] or
//! pauses tokio's time and uses a [`TokioClock`], which follows it.
//!
//! Logs and metrics (how long a sync took) may still read the system's clocks directly;
//! nothing that decides what happens next may.

use std::fmt;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// A shared clock, as the app hands it out.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock (production).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The system clock as a [`SharedClock`].
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to (unit tests of time-based decisions).
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: Mutex::new(start),
        })
    }

    /// Moves the clock to `at` (backwards too: a wall clock can jump).
    pub fn set(&self, at: DateTime<Utc>) {
        *self.lock() = at;
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.lock();
        *now += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DateTime<Utc>> {
        // The guarded value is a plain timestamp: a panic elsewhere cannot leave it
        // half-written, so a poisoned lock is still a valid time.
        self.now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.lock()
    }
}

/// The system's wall clock shifted forward by an offset that only grows: time flows as
/// usual, and a test jumps it by 30 minutes or 12 hours at once (integration tests,
/// where real servers, sockets and signatures need time to keep moving).
#[derive(Debug, Default)]
pub struct ShiftedClock {
    offset: Mutex<chrono::Duration>,
}

impl ShiftedClock {
    /// A clock reading the system time (no offset yet).
    pub fn new() -> Arc<ShiftedClock> {
        Arc::new(ShiftedClock::default())
    }

    /// Jumps the clock forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let mut offset = self
            .offset
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *offset += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> DateTime<Utc> {
        // A plain duration: a poisoned lock still holds a valid value.
        let offset = *self
            .offset
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Utc::now() + offset
    }
}

/// Wall-clock time that advances with tokio's clock: `start` plus the tokio time
/// elapsed since the clock was made. Under `tokio::time::pause()` it stands still and
/// jumps with `advance` and auto-advance, so timers (`sleep`, `send_after`) and the
/// times the code decides with stay in step.
#[derive(Debug)]
pub struct TokioClock {
    start: DateTime<Utc>,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start` now, advancing with tokio's time. Call it inside a
    /// runtime (it reads tokio's clock).
    pub fn starting_at(start: DateTime<Utc>) -> Arc<TokioClock> {
        Arc::new(TokioClock {
            start,
            origin: tokio::time::Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = self.origin.elapsed();
        self.start + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }
}

/// `now + delay`, saturating instead of overflowing.
pub fn after(now: DateTime<Utc>, delay: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("valid")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(t0());
        assert_eq!(clock.now(), t0());
        assert_eq!(clock.now(), t0());
        clock.advance(Duration::from_secs(1800));
        assert_eq!(clock.now(), t0() + chrono::Duration::minutes(30));
        clock.set(t0());
        assert_eq!(clock.now(), t0());
    }

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_follows_paused_time() {
        let clock = TokioClock::starting_at(t0());
        assert_eq!(clock.now(), t0());
        tokio::time::advance(Duration::from_secs(12 * 3600)).await;
        assert_eq!(clock.now(), t0() + chrono::Duration::hours(12));
        // Auto-advance: a sleep on paused time moves the clock by exactly its length.
        tokio::time::sleep(Duration::from_secs(30 * 60)).await;
        assert_eq!(
            clock.now(),
            t0() + chrono::Duration::hours(12) + chrono::Duration::minutes(30)
        );
    }

    #[test]
    fn after_saturates() {
        assert_eq!(
            after(t0(), Duration::from_secs(60)),
            t0() + chrono::Duration::minutes(1)
        );
        assert_eq!(after(t0(), Duration::MAX), DateTime::<Utc>::MAX_UTC);
    }
}
