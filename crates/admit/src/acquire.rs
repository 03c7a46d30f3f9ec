//! The `acquire()` future: wait in the FIFO queue for a permit.

use crate::error::Rejected;
use crate::limiter::{Inner, Limiter};
use crate::loom::Ordering;
use crate::permit::Permit;
use crate::queue::{Cancel, Park};
use crate::slots::{gen_of, pack, status, status_of};
use crate::state::State;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Future returned by [`Limiter::acquire`].
///
/// Cancel-safe: dropping it before it completes leaves the limiter as if it
/// had never been called, and a permit granted to it in the meantime goes to
/// the next waiter.
#[must_use = "futures do nothing unless polled"]
pub struct Acquire {
    limiter: Limiter,
    phase: Phase,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Start,
    Parked { ticket: u32, slot: u32, gen: u64 },
    Done,
}

impl std::fmt::Debug for Acquire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acquire")
            .field("phase", &self.phase)
            .finish()
    }
}

/// What the first poll decided.
enum Entry {
    Counted,
    Ticket(u32),
}

impl Acquire {
    pub(crate) fn new(limiter: Limiter) -> Acquire {
        Acquire {
            limiter,
            phase: Phase::Start,
        }
    }

    fn inner(&self) -> &Inner {
        &self.limiter.inner
    }

    fn reject(&mut self, reason: Rejected) -> Poll<Result<Permit, Rejected>> {
        self.phase = Phase::Done;
        self.inner().count_rejection(reason);
        Poll::Ready(Err(reason))
    }

    /// One CAS: take a permit, take a ticket, or refuse.
    fn enter(&self) -> Result<Entry, Rejected> {
        let inner = self.inner();
        let mut cur = State(inner.state.load(Ordering::Relaxed));
        loop {
            if cur.closed() {
                return Err(Rejected::Closed);
            }
            let (next, entry) = if cur.tickets() == 0 && cur.in_use() < inner.limit(cur) {
                (State(cur.0 + 1), Entry::Counted)
            } else if inner.queue_limit == 0 {
                return Err(Rejected::Full);
            } else if cur.tickets() >= inner.window || inner.live_waiting(cur) >= inner.queue_limit
            {
                return Err(Rejected::QueueFull);
            } else {
                let (next, ticket) = cur.push_ticket();
                (next, Entry::Ticket(ticket))
            };
            match inner.state.compare_exchange_weak(
                cur.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(entry),
                Err(actual) => cur = State(actual),
            }
        }
    }

    /// Turns the GRANTED slot we own into a permit.
    /// `admitted`: the permit goes to the caller (and is counted as an
    /// admission), rather than being passed straight on by a cancellation.
    fn take_grant(&mut self, slot: u32, gen: u64, admitted: bool) -> Permit {
        self.phase = Phase::Done;
        let inner = self.inner();
        let s = inner.slots.get(slot);
        if !inner.track_leases {
            // The slot only parked us; the permit itself is untracked.
            s.state.store(pack(gen, status::FREE), Ordering::Release);
            inner.slots.release(slot);
            if admitted {
                inner.untracked_grants.add_one();
            }
            return Permit::untracked(self.limiter.inner.clone());
        }
        s.last_active.store(inner.clock.now(), Ordering::Relaxed);
        s.started.store(inner.clock.now(), Ordering::Relaxed);
        // Only the owner moves a GRANTED slot on, so a store is enough.
        s.state.store(pack(gen, status::HELD), Ordering::Release);
        if admitted {
            inner.slots.count_grant(slot);
        }
        Permit::new(self.limiter.inner.clone(), slot, gen)
    }

    fn granted(&self, slot: u32, gen: u64) -> bool {
        let word = self.inner().slots.get(slot).state.load(Ordering::Acquire);
        gen_of(word) == gen && status_of(word) == status::GRANTED
    }

    /// Leaves the queue. Returns a permit if one was granted meanwhile.
    fn cancel(&mut self, ticket: u32, slot: u32, gen: u64) -> Option<Permit> {
        self.phase = Phase::Done;
        let inner = self.inner();
        // Count the ghost before it can be seen, so the count never dips
        // below zero when a releaser removes it at once.
        inner.ghosts.fetch_add(1, Ordering::AcqRel);
        match inner.queue.cancel(ticket, slot, gen) {
            Cancel::Cancelled => {
                let s = inner.slots.get(slot);
                s.state.store(pack(gen, status::FREE), Ordering::Release);
                inner.slots.release(slot);
                // With room free, the ghost we left should be cleared now
                // rather than held against the queue limit.
                inner.grant_waiting();
                None
            }
            Cancel::Claimed => {
                inner.ghosts.fetch_sub(1, Ordering::AcqRel);
                let s = inner.slots.get(slot);
                let waiting = pack(gen, status::WAITING);
                match s.state.compare_exchange(
                    waiting,
                    pack(gen, status::FREE),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    // The releaser's own CAS will now fail and it takes its
                    // permit back.
                    Ok(_) => {
                        inner.slots.release(slot);
                        None
                    }
                    // Granted first: we own a permit.
                    Err(_) => Some(self.take_grant(slot, gen, false)),
                }
            }
        }
    }

    fn poll_parked(
        &mut self,
        cx: &mut Context<'_>,
        ticket: u32,
        slot: u32,
        gen: u64,
    ) -> Poll<Result<Permit, Rejected>> {
        for registered in [false, true] {
            if self.granted(slot, gen) {
                return Poll::Ready(Ok(self.take_grant(slot, gen, true)));
            }
            if self.inner().load().closed() {
                return match self.cancel(ticket, slot, gen) {
                    // Granted before the close: a real permit.
                    Some(permit) => {
                        permit.count_admission();
                        Poll::Ready(Ok(permit))
                    }
                    None => self.reject(Rejected::Closed),
                };
            }
            if !registered {
                self.inner().slots.get(slot).wait_waker.register(cx.waker());
            }
        }
        Poll::Pending
    }
}

impl Future for Acquire {
    type Output = Result<Permit, Rejected>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match this.phase {
            Phase::Done => panic!("Acquire polled after completion"),
            Phase::Parked { ticket, slot, gen } => this.poll_parked(cx, ticket, slot, gen),
            Phase::Start => {
                let ticket = match this.enter() {
                    Err(reason) => return this.reject(reason),
                    Ok(Entry::Counted) => {
                        this.phase = Phase::Done;
                        let inner = &this.limiter.inner;
                        return Poll::Ready(Ok(inner.new_permit(inner)));
                    }
                    Ok(Entry::Ticket(t)) => t,
                };
                let inner = &this.limiter.inner;
                let Some((slot, gen)) = inner.slots.claim(status::WAITING, inner.clock.now())
                else {
                    // Unreachable by the table's sizing; leave as a ghost
                    // rather than panic if it ever were.
                    inner.ghosts.fetch_add(1, Ordering::AcqRel);
                    if inner.queue.abandon_unparked(ticket) {
                        inner.ghosts.fetch_sub(1, Ordering::AcqRel);
                        inner.release_count();
                    }
                    return this.reject(Rejected::QueueFull);
                };
                inner.slots.get(slot).wait_waker.register(cx.waker());
                match inner.queue.park(ticket, slot, gen) {
                    Park::Granted => Poll::Ready(Ok(this.take_grant(slot, gen, true))),
                    Park::Parked => {
                        this.phase = Phase::Parked { ticket, slot, gen };
                        this.poll_parked(cx, ticket, slot, gen)
                    }
                }
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if let Phase::Parked { ticket, slot, gen } = self.phase {
            // A permit granted just before the drop is dropped in turn, which
            // passes it to the next waiter.
            drop(self.cancel(ticket, slot, gen));
        }
    }
}
