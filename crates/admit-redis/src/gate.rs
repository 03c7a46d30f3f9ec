//! The admission gate: the lease deadline that every checked admission
//! compares with the clock before taking a permit from the local limiter.
//!
//! # Implementation notes
//!
//! The gate is the node's only lock-free state besides the local limiter.
//! [`Gate::publish`] changes the limiter's capacity and the deadline
//! together, always capacity first, and stores the deadline with
//! `Release`; [`Gate::expired`] loads it with `Acquire`. So an admission
//! that finds the gate open (the deadline not passed) either took its
//! permit against a capacity that was valid under that deadline, or sees
//! the capacity that came with a newer deadline; and an admission that
//! reads the deadline an expiry published (`u64::MAX`: nothing pending)
//! also sees the lowered capacity. An admission that finds the deadline
//! passed takes the slow path, which expires the lease under the node's
//! lock before admitting. The loom model (`loom_gate.rs`) checks both
//! orders of an expiry racing an admission.

use crate::loom::{AtomicU64, Ordering};
use admit::Limiter;

pub(crate) struct Gate {
    /// When the lease ends on the coarse clock; `u64::MAX` when no lease
    /// deadline is pending (fallback, lost).
    deadline_ms: AtomicU64,
}

impl Gate {
    pub(crate) fn new() -> Gate {
        Gate {
            deadline_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// Whether the lease's deadline has passed at `now_ms`.
    #[inline]
    pub(crate) fn expired(&self, now_ms: u64) -> bool {
        // Acquire: pairs with the Release in `publish`.
        now_ms >= self.deadline_ms.load(Ordering::Acquire)
    }

    /// The pending deadline (`u64::MAX`: none).
    pub(crate) fn deadline_ms(&self) -> u64 {
        self.deadline_ms.load(Ordering::Acquire)
    }

    /// Sets the local capacity, then the deadline it is valid until.
    /// Callers serialise `publish` (the node's lock), so capacity and
    /// deadline move in the same order as the lease does.
    pub(crate) fn publish(&self, limiter: &Limiter, capacity: u32, deadline_ms: u64) {
        // Within max_capacity: callers clamp to it.
        let _ = limiter.set_capacity(capacity.min(limiter.max_capacity()));
        // Release: whoever reads this deadline also sees the capacity.
        self.deadline_ms.store(deadline_ms, Ordering::Release);
    }
}
