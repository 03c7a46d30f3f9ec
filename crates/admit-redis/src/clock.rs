//! A cheap monotonic millisecond clock for the admission path.
//!
//! A node may only admit within a lease that has not expired by its own
//! clock, so every checked admission reads the time. `Instant::now()` reads
//! the fine-grained clock (tens of nanoseconds, as much as the limiter's own
//! fast path); the kernel's coarse monotonic clock is a plain load from the
//! vDSO page (a few nanoseconds) and ticks every jiffy (1–10 ms), which the
//! lease's safety margin absorbs ([`GRANULARITY_MS`]).
//!
//! Both clocks keep running while the process is stopped (SIGSTOP), which is
//! what makes a paused node see that its lease ran out when it wakes.

use rustix::time::{clock_gettime, ClockId};

/// The coarse clock's worst-case step, added to every lease's safety margin.
pub(crate) const GRANULARITY_MS: u64 = 10;

/// Milliseconds on the coarse monotonic clock (an arbitrary but fixed origin).
#[inline]
pub(crate) fn now_ms() -> u64 {
    let t = clock_gettime(ClockId::MonotonicCoarse);
    (t.tv_sec as u64) * 1_000 + (t.tv_nsec as u64) / 1_000_000
}
