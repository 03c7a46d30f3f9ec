//! Fault injection (feature `fault-injection`): make the limiter fail the
//! ways limiters fail in the field, to prove the watchdog repairs it.

use crate::limiter::Limiter;
use crate::loom::Ordering;
use crate::state::State;

/// Handle for injecting faults; see [`Limiter::faults`].
#[derive(Debug, Clone)]
pub struct Faults {
    limiter: Limiter,
}

impl Limiter {
    /// Fault injection for tests and drills.
    pub fn faults(&self) -> Faults {
        Faults {
            limiter: self.clone(),
        }
    }
}

impl Faults {
    /// Takes up to `n` permits (the reserve included) and forgets them, as a
    /// buggy holder would. Returns how many were taken. Their leases are
    /// never touched again, so a watchdog with `max_idle` reclaims them.
    pub fn leak(&self, n: usize) -> usize {
        let mut taken = 0;
        while taken < n {
            match self.limiter.try_acquire_critical() {
                Ok(p) => std::mem::forget(p),
                Err(_) => break,
            }
            taken += 1;
        }
        taken
    }

    /// Loses the next `k` hand-offs: a released permit goes back to the
    /// pool without waking the queued waiter it was meant for.
    pub fn stall(&self, k: u32) {
        self.limiter.inner.stalls.fetch_add(k, Ordering::AcqRel);
    }

    /// Adds `n` to the in-use count with no lease behind it, as a limiter
    /// whose counter leaked would. Returns how many were added.
    pub fn drift(&self, n: u32) -> u32 {
        let inner = &self.limiter.inner;
        let mut cur = inner.load();
        loop {
            let add = n.min(inner.max_capacity.saturating_sub(cur.in_use()));
            let next = cur.with_in_use(cur.in_use() + add);
            match inner
                .state
                .compare_exchange(cur.0, next.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return add,
                Err(actual) => cur = State(actual),
            }
        }
    }

    /// Moves the limiter's lease clock forward without waiting.
    pub fn advance_clock(&self, ms: u64) {
        self.limiter.inner.clock.skip(ms);
    }
}
