//! A coarse millisecond clock that costs a relaxed load to read.
//!
//! Leases record when they started and when they were last touched. Reading
//! the system clock on every `touch()` would cost a syscall-class call on the
//! hot path, so the limiter keeps its own clock, advanced by the watchdog on
//! every tick (and by anyone who takes a snapshot). Lease times are therefore
//! accurate to one watchdog interval, which is all idleness needs.

use crate::loom::{AtomicU64, Ordering};
use std::time::Instant;

pub(crate) struct Clock {
    epoch: Instant,
    now_ms: AtomicU64,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
            now_ms: AtomicU64::new(0),
        }
    }

    /// The last published time: a relaxed load.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    /// Reads the real clock and publishes it (monotonic: never moves back).
    pub(crate) fn advance(&self) -> u64 {
        // Under loom the model must be deterministic: time stands still.
        if cfg!(admit_loom) {
            return self.now();
        }
        let ms = self.epoch.elapsed().as_millis() as u64;
        // fetch_max keeps the clock monotonic when two threads advance it.
        let prev = self.now_ms.fetch_max(ms, Ordering::Relaxed);
        prev.max(ms)
    }

    /// Moves the clock forward by `ms` without reading the real clock
    /// (deterministic tests and the fuzzer's fake time).
    #[cfg(any(test, feature = "fault-injection", fuzzing))]
    pub(crate) fn skip(&self, ms: u64) {
        self.now_ms.fetch_add(ms, Ordering::Relaxed);
    }
}
