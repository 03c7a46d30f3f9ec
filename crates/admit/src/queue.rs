//! The wait queue: one mailbox per ticket.
//!
//! A waiter takes a ticket in the same CAS on the state word that decides it
//! must wait (see `state.rs`); a releaser that finds room and tickets
//! outstanding claims the oldest ticket in the same CAS that counts the permit
//! as in use. Tickets are handed out in order and claimed in order, which is
//! the queue's FIFO guarantee. What is left is to meet: the waiter and the
//! releaser holding the same ticket meet in that ticket's mailbox.
//!
//! # Implementation notes
//!
//! * A mailbox is one `AtomicU64` holding one of: `EMPTY`, `EARLY` (the grant
//!   arrived before the waiter got there), `CANCELLED` (the waiter left), or
//!   `PARKED(slot, generation)` (the waiter waits in that slot of the lease
//!   table). Whoever arrives second finishes the exchange with one CAS, so
//!   neither side ever waits for the other: a grant for a waiter that has not
//!   parked yet is left as `EARLY`, and a waiter that finds `EARLY` takes it.
//! * Cancellation races the releaser for the mailbox. The releaser swaps
//!   `PARKED` for `EMPTY` and then CASes the slot from WAITING to GRANTED; the
//!   waiter swaps `PARKED` for `CANCELLED`. Exactly one CAS on the mailbox
//!   wins. If the releaser won, the waiter still races it on the slot: either
//!   the waiter frees the slot first (the releaser's slot CAS fails and it
//!   gives the permit back) or the slot is already GRANTED and the waiter owns
//!   a permit it must pass on. Either way the permit is counted exactly once.
//! * A cancelled ticket stays outstanding (a "ghost") until a releaser claims
//!   it, finds `CANCELLED` and gives its permit straight back. The queue
//!   limit counts live waiters only; ghosts are bounded by the ticket window.
//! * The only place a thread may wait for another: mailboxes are reused every
//!   `len` tickets, and at most `len / 2` tickets are outstanding, so a
//!   mailbox is normally empty again long before its next use. Only if a
//!   waiter is descheduled between taking its ticket and parking while
//!   `len / 2` later tickets are issued and granted does the next user of its
//!   mailbox find it still occupied; it then yields until it is free.

use crate::lease::LeaseTable;
use crate::loom::{yield_now, AtomicU64, Ordering};

const KIND_MASK: u64 = 0b11;
const EMPTY: u64 = 0;
const EARLY: u64 = 1;
const CANCELLED: u64 = 2;
const PARKED: u64 = 3;
const SLOT_BITS: u32 = 23;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
const GEN_SHIFT: u32 = 2 + SLOT_BITS;
const GEN_MASK: u64 = (1 << (64 - GEN_SHIFT)) - 1;

/// The largest lease table a mailbox can address.
pub(crate) const MAX_SLOTS: usize = 1 << SLOT_BITS;

fn parked(slot: u32, gen: u64) -> u64 {
    ((gen & GEN_MASK) << GEN_SHIFT) | ((slot as u64) << 2) | PARKED
}

/// What a waiter found when it went to park.
pub(crate) enum Park {
    /// Parked; a releaser will grant the slot.
    Parked,
    /// A grant was already waiting: the waiter holds a counted permit.
    Granted,
}

/// What a releaser achieved for a claimed ticket.
pub(crate) enum Deliver {
    /// The ticket's waiter has (or will find) the permit.
    Delivered,
    /// The waiter is gone; the releaser must give the permit back.
    Abandoned,
    /// The waiter was gone and had been counted as a ghost.
    Ghost,
}

/// What a cancelling waiter found.
pub(crate) enum Cancel {
    /// Left before any releaser claimed the ticket: now a ghost.
    Cancelled,
    /// A releaser claimed the ticket first; settle on the slot.
    Claimed,
}

pub(crate) struct Queue {
    boxes: Box<[AtomicU64]>,
}

impl Queue {
    /// `len` must be a power of two dividing the ticket space.
    pub(crate) fn new(len: usize) -> Queue {
        debug_assert!(len.is_power_of_two());
        Queue {
            boxes: (0..len).map(|_| AtomicU64::new(EMPTY)).collect(),
        }
    }

    fn mailbox(&self, ticket: u32) -> &AtomicU64 {
        &self.boxes[ticket as usize & (self.boxes.len() - 1)]
    }

    /// The waiter holding `ticket` parks in `slot`.
    pub(crate) fn park(&self, ticket: u32, slot: u32, gen: u64) -> Park {
        let mailbox = self.mailbox(ticket);
        loop {
            // Acquire pairs with the releaser's Release when it leaves EARLY.
            let cur = mailbox.load(Ordering::Acquire);
            match cur & KIND_MASK {
                EMPTY => {
                    // Release: a releaser that reads PARKED also sees the
                    // slot's WAITING state and registered waker.
                    if mailbox
                        .compare_exchange(
                            cur,
                            parked(slot, gen),
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                    {
                        return Park::Parked;
                    }
                }
                EARLY => {
                    if mailbox
                        .compare_exchange(cur, EMPTY, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Park::Granted;
                    }
                }
                // Still occupied by the ticket one lap earlier (see notes).
                _ => yield_now(),
            }
        }
    }

    /// A waiter that could not get a slot leaves its ticket at once.
    /// Returns true if a grant was already waiting (the caller holds a
    /// counted permit and must give it back).
    pub(crate) fn abandon_unparked(&self, ticket: u32) -> bool {
        let mailbox = self.mailbox(ticket);
        loop {
            let cur = mailbox.load(Ordering::Acquire);
            let (next, granted) = match cur & KIND_MASK {
                EMPTY => (CANCELLED, false),
                EARLY => (EMPTY, true),
                _ => {
                    yield_now();
                    continue;
                }
            };
            if mailbox
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return granted;
            }
        }
    }

    /// A releaser that claimed `ticket` (and counted a permit for it) hands
    /// the permit over.
    pub(crate) fn deliver(&self, ticket: u32, leases: &LeaseTable) -> Deliver {
        let mailbox = self.mailbox(ticket);
        loop {
            let cur = mailbox.load(Ordering::Acquire);
            match cur & KIND_MASK {
                EMPTY => {
                    // Release: the waiter that takes EARLY sees the count.
                    if mailbox
                        .compare_exchange(cur, EARLY, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Deliver::Delivered;
                    }
                }
                CANCELLED => {
                    if mailbox
                        .compare_exchange(cur, EMPTY, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Deliver::Ghost;
                    }
                }
                PARKED => {
                    if mailbox
                        .compare_exchange(cur, EMPTY, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        continue;
                    }
                    let index = ((cur >> 2) & SLOT_MASK) as u32;
                    // The slot CAS (WAITING -> GRANTED) wakes the waiter; it
                    // fails if the waiter withdrew first.
                    return if leases.grant(index, cur >> GEN_SHIFT, GEN_MASK) {
                        Deliver::Delivered
                    } else {
                        Deliver::Abandoned
                    };
                }
                // EARLY from one lap earlier, not yet taken (see notes).
                _ => yield_now(),
            }
        }
    }

    /// A parked waiter leaves.
    pub(crate) fn cancel(&self, ticket: u32, slot: u32, gen: u64) -> Cancel {
        match self.mailbox(ticket).compare_exchange(
            parked(slot, gen),
            CANCELLED,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Cancel::Cancelled,
            Err(_) => Cancel::Claimed,
        }
    }

    /// Wakes every parked waiter with a ticket in `[head, tail)`.
    pub(crate) fn wake_all(&self, head: u32, tail: u32, leases: &LeaseTable) {
        let mut t = head;
        let mask = crate::state::TICKET_SPACE - 1;
        while t != tail {
            let cur = self.mailbox(t).load(Ordering::Acquire);
            if cur & KIND_MASK == PARKED {
                let index = ((cur >> 2) & SLOT_MASK) as u32;
                leases.wake_waiter(index);
            }
            t = (t + 1) & mask;
        }
    }
}
