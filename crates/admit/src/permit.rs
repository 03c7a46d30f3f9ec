//! Permits: RAII leases on one unit of the limiter's capacity.

use crate::inner::{Inner, Lease, UNTRACKED};
use crate::lease::GEN_BITS;
use crate::loom::Arc;
use std::future::Future;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Identifies one lease: a slot in the lease table and the generation it had
/// when the lease began. A lease id is never reused while its permit exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId {
    /// Index in the lease table.
    pub slot: u32,
    /// How many leases that slot had held, this one included, modulo 2^41.
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
/// A permit keeps its limiter's core alive. When it is dropped, its thread
/// keeps that reference for its next permit of the same limiter (saving two
/// atomic operations a permit), so a thread may keep the core of one
/// limiter it used alive after every handle to it is gone, until the thread
/// uses another limiter or exits.
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
    /// Always `Some` until the drop hands it to the thread's stash
    /// (`stash.rs`); an `Option` of an `Arc` is still one word.
    inner: Option<Arc<Inner>>,
    /// The lease as `slot << GEN_BITS | generation`, or `NO_LEASE` on a
    /// limiter built without leases, stored inverted: one word, so a
    /// permit is two and travels in registers. Inverted, it is never zero
    /// (no slot number is all ones), which leaves `Result<Permit, _>` a
    /// value to tell its variants apart by — the `Option` above used the
    /// `Arc`'s.
    lease: NonZeroU64,
}

/// A permit's lease part without a lease: slot `UNTRACKED` (all ones,
/// which no table reaches) and generation 0.
const NO_LEASE: u64 = (UNTRACKED as u64) << GEN_BITS;

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("lease", &self.lease_id())
            .field("revoked", &self.is_revoked())
            .finish()
    }
}

impl Permit {
    #[inline(always)]
    pub(crate) fn new(inner: Arc<Inner>, (slot, gen): Lease) -> Permit {
        // An untracked permit packs to `NO_LEASE`.
        let lease = (u64::from(slot) << GEN_BITS) | gen;
        Permit {
            inner: Some(inner),
            lease: NonZeroU64::new(!lease).expect("an untracked permit has generation 0"),
        }
    }

    #[inline]
    fn inner(&self) -> &Inner {
        self.inner
            .as_deref()
            .expect("a permit has its limiter until dropped")
    }

    /// The lease as the core names it: `(slot, generation)`, or
    /// `(UNTRACKED, 0)`.
    #[inline]
    fn parts(&self) -> Lease {
        let lease = self.raw();
        ((lease >> GEN_BITS) as u32, lease & ((1 << GEN_BITS) - 1))
    }

    /// Counts this permit as admitted (for grants that reached the caller
    /// by an unusual path).
    pub(crate) fn count_admission(&self) {
        self.inner().count_admission();
    }

    #[inline]
    fn raw(&self) -> u64 {
        !self.lease.get()
    }

    #[inline]
    fn tracked(&self) -> bool {
        self.raw() != NO_LEASE
    }

    /// This lease's id, for [`Limiter::revoke`](crate::Limiter::revoke) and logs.
    pub fn lease_id(&self) -> LeaseId {
        let (slot, generation) = self.parts();
        LeaseId { slot, generation }
    }

    /// Marks the lease active now. Costs three relaxed loads and, at most
    /// once per clock tick, a relaxed store: call it on every I/O. (Inlined
    /// into the caller: a call would cost more than the work.)
    #[inline]
    pub fn touch(&self) {
        if self.tracked() {
            let (slot, gen) = self.parts();
            self.inner().touch(slot, gen);
        }
    }

    /// Whether the lease was revoked (or already reclaimed). Always false
    /// on a limiter built without leases.
    pub fn is_revoked(&self) -> bool {
        self.tracked() && {
            let (slot, gen) = self.parts();
            self.inner().is_revoked(slot, gen)
        }
    }

    /// Polls for revocation: `Ready` once the lease is revoked. Adapters
    /// call this from their own `poll_*` methods.
    pub fn poll_revoked(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.tracked() {
            // Without leases nothing can revoke this permit.
            return Poll::Pending;
        }
        if self.is_revoked() {
            return Poll::Ready(());
        }
        self.inner().register_revoked(self.parts().0, cx.waker());
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
        if !self.tracked() {
            return Duration::ZERO;
        }
        Duration::from_millis(self.inner().lease_age_idle(self.parts().0).0)
    }

    /// How long since the lease was last touched (coarse).
    pub fn idle(&self) -> Duration {
        if !self.tracked() {
            return Duration::ZERO;
        }
        Duration::from_millis(self.inner().lease_age_idle(self.parts().0).1)
    }

    /// The limiter this permit belongs to.
    pub fn limiter(&self) -> crate::Limiter {
        crate::Limiter {
            inner: self
                .inner
                .clone()
                .expect("a permit has its limiter until dropped"),
        }
    }
}

impl Drop for Permit {
    #[inline(always)]
    fn drop(&mut self) {
        // A lease reclaimed by the watchdog gave its count back already;
        // `release` then does nothing.
        let lease = self.parts();
        if let Some(inner) = self.inner.take() {
            crate::stash::give_back(Inner::release(inner, lease));
        }
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
