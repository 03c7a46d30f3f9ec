//! The slot table: one slot per permit that can exist at once, plus one per
//! queued waiter. A slot is where a waiter parks its waker, where a granted
//! permit keeps its lease (start, last activity, revocation), and what the
//! watchdog scans to see every held permit.
//!
//! # Implementation notes
//!
//! * Slots are never deallocated, so a stale index can always be read safely;
//!   every operation on a slot compares its generation, so a stale holder
//!   (a permit whose slot was reclaimed, a deliverer that lost a race) fails
//!   its compare-and-swap instead of touching someone else's lease.
//! * Free slots form a Treiber stack threaded through `next_free`. The stack
//!   head carries a 32-bit tag that changes on every push and pop, so the
//!   classic ABA problem (pop reads `next` of a slot that is popped and pushed
//!   again before its CAS) makes the CAS fail rather than corrupt the list.
//! * The table is sized so a slot is always free when one is needed: at most
//!   `max_capacity` permits exist (the state word's cap), and at most
//!   `queue window` waiters hold a slot before their grant counts in `in_use`.

use crate::loom::{AtomicU32, AtomicU64, AtomicWaker, Ordering};

/// Slot status, in the low byte of `Slot::state`.
pub(crate) mod status {
    /// On the free list.
    pub(crate) const FREE: u8 = 0;
    /// A waiter parked here; its ticket's deliverer will grant it.
    pub(crate) const WAITING: u8 = 1;
    /// Granted to the waiter; it has not been polled yet.
    pub(crate) const GRANTED: u8 = 2;
    /// A live permit (lease).
    pub(crate) const HELD: u8 = 3;
    /// A live permit whose lease was revoked; reclaimed after the grace.
    pub(crate) const REVOKED: u8 = 4;
}

/// Packs a generation and a status into a slot state word.
pub(crate) fn pack(gen: u64, status: u8) -> u64 {
    (gen << 8) | status as u64
}
/// The generation of a slot state word.
#[inline]
pub(crate) fn gen_of(word: u64) -> u64 {
    word >> 8
}
/// The status of a slot state word.
pub(crate) fn status_of(word: u64) -> u8 {
    (word & 0xff) as u8
}

const NIL: u32 = u32::MAX;

pub(crate) struct Slot {
    /// `generation << 8 | status`. The generation grows each time the slot
    /// leaves the free list.
    pub(crate) state: AtomicU64,
    /// Coarse-clock millisecond when the permit was granted.
    pub(crate) started: AtomicU64,
    /// Coarse-clock millisecond of the last `touch()`.
    pub(crate) last_active: AtomicU64,
    /// Coarse-clock millisecond when the lease was revoked.
    pub(crate) revoked_at: AtomicU64,
    /// Grants made through this slot; summed for `admitted_total`. Only the
    /// slot's current owner writes it, so a load and a store suffice: this
    /// keeps a shared counter's cache line out of the hot path.
    pub(crate) grants: AtomicU64,
    pub(crate) next_free: AtomicU32,
    /// The parked waiter's waker.
    pub(crate) wait_waker: AtomicWaker,
    /// Wakes `Permit::revoked()` futures.
    pub(crate) revoke_waker: AtomicWaker,
}

impl Slot {
    fn new(next: u32) -> Slot {
        Slot {
            state: AtomicU64::new(pack(0, status::FREE)),
            started: AtomicU64::new(0),
            last_active: AtomicU64::new(0),
            revoked_at: AtomicU64::new(0),
            grants: AtomicU64::new(0),
            next_free: AtomicU32::new(next),
            wait_waker: AtomicWaker::new(),
            revoke_waker: AtomicWaker::new(),
        }
    }
}

#[repr(C)] // `free` first: see `Inner`.
pub(crate) struct Slots {
    /// `tag << 32 | index` of the first free slot.
    free: AtomicU64,
    pub(crate) slots: Box<[Slot]>,
}

impl Slots {
    pub(crate) fn new(n: usize) -> Slots {
        assert!(n < NIL as usize);
        let slots: Box<[Slot]> = (0..n)
            .map(|i| Slot::new(if i + 1 < n { i as u32 + 1 } else { NIL }))
            .collect();
        let first = if n == 0 { NIL } else { 0 };
        Slots {
            slots,
            free: AtomicU64::new(first as u64),
        }
    }

    #[inline]
    pub(crate) fn get(&self, index: u32) -> &Slot {
        &self.slots[index as usize]
    }

    /// Pops a free slot and moves it to `status` with a new generation.
    /// Returns `(index, generation)`.
    pub(crate) fn claim(&self, status: u8, now: u64) -> Option<(u32, u64)> {
        // Acquire: the `next_free` we read, and the slot's previous contents,
        // were published by the Release push that put this slot on the list.
        let mut head = self.free.load(Ordering::Acquire);
        loop {
            let index = head as u32;
            if index == NIL {
                return None;
            }
            let next = self.slots[index as usize].next_free.load(Ordering::Relaxed);
            let tag = (head >> 32).wrapping_add(1);
            let new = (tag << 32) | next as u64;
            match self
                .free
                .compare_exchange_weak(head, new, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => {
                    let slot = &self.slots[index as usize];
                    let gen = gen_of(slot.state.load(Ordering::Relaxed)) + 1;
                    slot.started.store(now, Ordering::Relaxed);
                    slot.last_active.store(now, Ordering::Relaxed);
                    // Release: a watchdog or deliverer that sees the new
                    // generation also sees the timestamps above.
                    slot.state.store(pack(gen, status), Ordering::Release);
                    return Some((index, gen));
                }
                Err(actual) => head = actual,
            }
        }
    }

    /// Returns a slot (already marked FREE by the caller) to the free list.
    pub(crate) fn release(&self, index: u32) {
        let slot = &self.slots[index as usize];
        let mut head = self.free.load(Ordering::Relaxed);
        loop {
            slot.next_free.store(head as u32, Ordering::Relaxed);
            let tag = (head >> 32).wrapping_add(1);
            let new = (tag << 32) | index as u64;
            // Release: publishes `next_free` and the slot's FREE state to the
            // next claimer's Acquire.
            match self
                .free
                .compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }

    /// Counts one grant through a slot the caller owns.
    pub(crate) fn count_grant(&self, index: u32) {
        let g = &self.slots[index as usize].grants;
        g.store(g.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Sum of grants over all slots.
    pub(crate) fn total_grants(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.grants.load(Ordering::Relaxed))
            .sum()
    }
}
