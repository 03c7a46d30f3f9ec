//! The limiter's one atomic state word.
//!
//! Every admission decision reads and updates a single `u64`, so "is there
//! room?", "is anyone queued?" and "are we closed?" are answered together and
//! can never disagree with each other:
//!
//! ```text
//!  63      62..52     51..41     40..20       19..0
//! closed | tail (11) | head (11) | capacity (21)| in_use (20)
//! ```
//!
//! `in_use` counts granted permits (including grants handed to a waiter that
//! has not been polled yet). `head`/`tail` are wait-queue tickets modulo 2048:
//! `tail - head` tickets are outstanding. Taking the ticket in the same CAS
//! that decides to wait is what ties each hand-off to exactly one waiter.

/// Largest capacity the state word can represent.
pub(crate) const MAX_CAPACITY: u32 = (1 << 20) - 1;
/// Tickets are counted modulo this many.
pub(crate) const TICKET_SPACE: u32 = 1 << 11;

const IN_USE_BITS: u32 = 20;
const CAP_BITS: u32 = 21;
const TICKET_BITS: u32 = 11;

const CAP_SHIFT: u32 = IN_USE_BITS;
const HEAD_SHIFT: u32 = CAP_SHIFT + CAP_BITS;
const TAIL_SHIFT: u32 = HEAD_SHIFT + TICKET_BITS;
const CLOSED_BIT: u64 = 1 << 63;

const IN_USE_MASK: u64 = (1 << IN_USE_BITS) - 1;
const CAP_MASK: u64 = (1 << CAP_BITS) - 1;
const TICKET_MASK: u64 = (1 << TICKET_BITS) - 1;

/// A decoded copy of the state word.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct State(pub(crate) u64);

impl State {
    pub(crate) fn new(capacity: u32) -> State {
        State((capacity as u64) << CAP_SHIFT)
    }
    pub(crate) fn in_use(self) -> u32 {
        (self.0 & IN_USE_MASK) as u32
    }
    pub(crate) fn capacity(self) -> u32 {
        ((self.0 >> CAP_SHIFT) & CAP_MASK) as u32
    }
    pub(crate) fn head(self) -> u32 {
        ((self.0 >> HEAD_SHIFT) & TICKET_MASK) as u32
    }
    pub(crate) fn tail(self) -> u32 {
        ((self.0 >> TAIL_SHIFT) & TICKET_MASK) as u32
    }
    pub(crate) fn closed(self) -> bool {
        self.0 & CLOSED_BIT != 0
    }
    /// Outstanding tickets: live waiters plus cancelled ones not yet skipped.
    pub(crate) fn tickets(self) -> u32 {
        self.tail().wrapping_sub(self.head()) & (TICKET_SPACE - 1)
    }

    pub(crate) fn with_in_use(self, n: u32) -> State {
        debug_assert!(n as u64 <= IN_USE_MASK);
        State((self.0 & !IN_USE_MASK) | n as u64)
    }
    pub(crate) fn with_capacity(self, n: u32) -> State {
        State((self.0 & !(CAP_MASK << CAP_SHIFT)) | ((n as u64) << CAP_SHIFT))
    }
    /// Takes a ticket at the tail: returns the new state and the ticket.
    pub(crate) fn push_ticket(self) -> (State, u32) {
        let t = self.tail();
        let next = (t + 1) & (TICKET_SPACE - 1);
        (
            State((self.0 & !(TICKET_MASK << TAIL_SHIFT)) | ((next as u64) << TAIL_SHIFT)),
            t,
        )
    }
    /// Claims the ticket at the head: returns the new state and the ticket.
    pub(crate) fn pop_ticket(self) -> (State, u32) {
        let h = self.head();
        let next = (h + 1) & (TICKET_SPACE - 1);
        (
            State((self.0 & !(TICKET_MASK << HEAD_SHIFT)) | ((next as u64) << HEAD_SHIFT)),
            h,
        )
    }
    pub(crate) fn with_closed(self) -> State {
        State(self.0 | CLOSED_BIT)
    }
}

/// The value to add to the raw word to change `in_use` by one.
pub(crate) const ONE_IN_USE: u64 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_do_not_overlap() {
        let s = State::new(MAX_CAPACITY)
            .with_in_use(MAX_CAPACITY)
            .with_closed();
        assert_eq!(s.capacity(), MAX_CAPACITY);
        assert_eq!(s.in_use(), MAX_CAPACITY);
        assert!(s.closed());
        let mut s = s;
        for _ in 0..TICKET_SPACE + 5 {
            s = s.push_ticket().0;
        }
        assert_eq!(s.tail(), 5);
        assert_eq!(s.tickets(), 5);
        let (s, h) = s.pop_ticket();
        assert_eq!(h, 0);
        assert_eq!(s.tickets(), 4);
        assert_eq!(s.capacity(), MAX_CAPACITY);
        assert_eq!(s.in_use(), MAX_CAPACITY);
    }
}
