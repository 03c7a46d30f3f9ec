//! Fault injection (feature `fault-injection`): make the limiter fail the
//! ways limiters fail in the field, to prove the watchdog repairs it.

use crate::limiter::Limiter;

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
        self.limiter.inner.inject_stalls(k);
    }

    /// Adds `n` to the in-use count with no lease behind it, as a limiter
    /// whose counter leaked would. Returns how many were added.
    pub fn drift(&self, n: u32) -> u32 {
        self.limiter.inner.inject_drift(n)
    }

    /// Tokens parked in threads' shards right now: units counted in the
    /// state word but held by nobody, kept for their thread's next
    /// admission (see the crate's DESIGN.md, Tokens). Not a fault: tests
    /// read it to know a token is where they expect.
    pub fn parked_tokens(&self) -> u32 {
        self.limiter.inner.parked_tokens()
    }

    /// Moves the limiter's lease clock forward without waiting.
    pub fn advance_clock(&self, ms: u64) {
        self.limiter.inner.skip_clock(ms);
    }
}
