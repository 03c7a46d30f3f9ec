//! Permits: RAII leases on one unit of the limiter's capacity.

use crate::limiter::Inner;
use crate::loom::{Arc, Ordering};
use crate::slots::{gen_of, pack, status, status_of};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Identifies one lease: a slot in the lease table and the generation it had
/// when the lease began. A lease id is never reused while its permit exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId {
    /// Index in the lease table.
    pub slot: u32,
    /// How many leases that slot had held, this one included.
    pub generation: u64,
}

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.slot, self.generation)
    }
}

/// One admitted unit of capacity, released exactly once when dropped.
///
/// A permit is also a lease: it knows when it began and when it was last
/// active ([`touch`](Self::touch)), and it can be revoked from outside
/// ([`Limiter::revoke_idle`](crate::Limiter::revoke_idle), the watchdog). A
/// revoked holder should finish up and drop the permit; if it does not
/// within the grace period, the slot is reclaimed and this permit's drop
/// becomes a no-op.
///
/// ```
/// let limiter = admit::Limiter::new(1);
/// let permit = limiter.try_acquire().unwrap();
/// permit.touch(); // on every read or write of the connection
/// assert!(!permit.is_revoked());
/// drop(permit);
/// assert_eq!(limiter.in_use(), 0);
/// ```
pub struct Permit {
    inner: Arc<Inner>,
    /// The lease slot, or `UNTRACKED` on a limiter built without leases.
    slot: u32,
    gen: u64,
}

/// Slot index of a permit from a limiter built with `track_leases(false)`.
const UNTRACKED: u32 = u32::MAX;

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("lease", &self.lease_id())
            .field("revoked", &self.is_revoked())
            .finish()
    }
}

impl Permit {
    pub(crate) fn new(inner: Arc<Inner>, slot: u32, gen: u64) -> Permit {
        Permit { inner, slot, gen }
    }

    pub(crate) fn untracked(inner: Arc<Inner>) -> Permit {
        Permit {
            inner,
            slot: UNTRACKED,
            gen: 0,
        }
    }

    /// Counts this permit as admitted (for grants that reached the caller
    /// by an unusual path).
    pub(crate) fn count_admission(&self) {
        match self.slot() {
            Some(_) => self.inner.slots.count_grant(self.slot),
            None => self.inner.untracked_grants.add_one(),
        }
    }

    #[inline]
    fn slot(&self) -> Option<&crate::slots::Slot> {
        (self.slot != UNTRACKED).then(|| self.inner.slots.get(self.slot))
    }

    /// This lease's id, for [`Limiter::revoke`](crate::Limiter::revoke) and logs.
    pub fn lease_id(&self) -> LeaseId {
        LeaseId {
            slot: self.slot,
            generation: self.gen,
        }
    }

    /// Marks the lease active now. Costs three relaxed loads and, at most
    /// once per clock tick, a relaxed store: call it on every I/O. (Inlined
    /// into the caller: a call would cost more than the work.)
    #[inline]
    pub fn touch(&self) {
        let Some(slot) = self.slot() else { return };
        // A permit whose slot was reclaimed (and perhaps reused) must not
        // make someone else's lease look active.
        if gen_of(slot.state.load(Ordering::Relaxed)) != self.gen {
            return;
        }
        let now = self.inner.clock.now();
        if slot.last_active.load(Ordering::Relaxed) != now {
            slot.last_active.store(now, Ordering::Relaxed);
        }
    }

    /// Whether the lease was revoked (or already reclaimed). Always false
    /// on a limiter built without leases.
    pub fn is_revoked(&self) -> bool {
        let Some(slot) = self.slot() else {
            return false;
        };
        let word = slot.state.load(Ordering::Acquire);
        gen_of(word) != self.gen || status_of(word) != status::HELD
    }

    /// Polls for revocation: `Ready` once the lease is revoked. Adapters
    /// call this from their own `poll_*` methods.
    pub fn poll_revoked(&self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(slot) = self.slot() else {
            // Without leases nothing can revoke this permit.
            return Poll::Pending;
        };
        if self.is_revoked() {
            return Poll::Ready(());
        }
        slot.revoke_waker.register(cx.waker());
        // Re-check: a revocation between the check and the registration
        // woke no one.
        if self.is_revoked() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// A future that resolves when the lease is revoked; select on it next
    /// to the connection's work and close the connection when it fires.
    pub fn revoked(&self) -> Revoked<'_> {
        Revoked { permit: self }
    }

    /// How long ago the lease began (to the coarse clock's resolution).
    pub fn age(&self) -> Duration {
        let Some(slot) = self.slot() else {
            return Duration::ZERO;
        };
        let now = self.inner.clock.now();
        Duration::from_millis(now.saturating_sub(slot.started.load(Ordering::Relaxed)))
    }

    /// How long since the lease was last touched (coarse).
    pub fn idle(&self) -> Duration {
        let Some(slot) = self.slot() else {
            return Duration::ZERO;
        };
        let now = self.inner.clock.now();
        Duration::from_millis(now.saturating_sub(slot.last_active.load(Ordering::Relaxed)))
    }

    /// The limiter this permit belongs to.
    pub fn limiter(&self) -> crate::Limiter {
        crate::Limiter {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(slot) = self.slot() else {
            self.inner.release_count();
            return;
        };
        let mut word = slot.state.load(Ordering::Acquire);
        loop {
            let live = matches!(status_of(word), status::HELD | status::REVOKED);
            if gen_of(word) != self.gen || !live {
                // Reclaimed by the watchdog: the count was already released.
                return;
            }
            match slot.state.compare_exchange_weak(
                word,
                pack(self.gen, status::FREE),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => word = actual,
            }
        }
        self.inner.slots.release(self.slot);
        self.inner.release_count();
    }
}

/// Future returned by [`Permit::revoked`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct Revoked<'a> {
    permit: &'a Permit,
}

impl Future for Revoked<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.permit.poll_revoked(cx)
    }
}
