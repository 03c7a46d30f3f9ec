//! The reference model of an `admit::Limiter`: plain data, obviously right.
//!
//! `crates/admit/tests/model.rs` (proptest) and `fuzz/src/limiter_ops.rs`
//! (cargo-fuzz) both replay random operation sequences against the real
//! limiter and this model side by side, and compare after every step. One
//! model keeps the two from drifting apart: a change to the limiter's rules
//! is made here once.
//!
//! The model knows the queue's rules (FIFO tickets, cancelled tickets left
//! as ghosts until a hand-off skips them, the ticket window), capacity,
//! reserve, close, and the counters a health snapshot reports. Leases,
//! timing and the watchdog are the callers' business: they differ between
//! the two harnesses (the fuzz target drives a fake clock and a watchdog).
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]

use admit::Rejected;
use std::collections::VecDeque;

/// The most outstanding tickets (live waiters and ghosts of cancelled
/// ones) a limiter with `queue_limit` admits: the limiter sizes its
/// mailboxes as a power of two at least four times the queue limit (at
/// least 2, at most the 2048-ticket space) and allows half of them out.
pub fn ticket_window(queue_limit: u32) -> u32 {
    ((queue_limit as usize * 4)
        .next_power_of_two()
        .clamp(2, 2048)
        / 2) as u32
}

/// Rejection labels in the order of [`reason_index`].
pub const REASONS: [&str; 5] = ["full", "queue_full", "closed", "timeout", "per_ip"];

/// Index of a rejection reason in [`Model::rejected`] and [`REASONS`].
///
/// # Panics
/// On a reason the model does not know yet (the enum is non-exhaustive):
/// the model must learn it before the tests can pass.
pub fn reason_index(r: Rejected) -> usize {
    match r {
        Rejected::Full => 0,
        Rejected::QueueFull => 1,
        Rejected::Closed => 2,
        Rejected::Timeout => 3,
        Rejected::PerIp => 4,
        other => panic!("a reason the model does not know: {other:?}"),
    }
}

/// The model of one limiter.
#[derive(Debug, Default, Clone)]
pub struct Model {
    /// Current capacity.
    pub capacity: u32,
    /// Largest capacity it may be set to.
    pub max: u32,
    /// Permits kept for critical acquires.
    pub reserve: u32,
    /// Live waiters allowed.
    pub queue_limit: u32,
    /// Most outstanding tickets (live and cancelled) the queue can hold.
    pub window: u32,
    /// `close` was called.
    pub closed: bool,
    /// Counted permits: held ones, grants not yet picked up, drift.
    pub in_use: u32,
    /// Tickets in order: `Some(waiter id)` live, `None` cancelled.
    pub queue: VecDeque<Option<usize>>,
    /// Waiters granted but not yet polled.
    pub granted: Vec<usize>,
    /// Injected hand-offs still to be lost.
    pub stalls: u32,
    /// A hand-off was lost and nothing has re-driven the queue since: the
    /// one state in which waiters may sit beside free permits.
    pub lost_wakeup: bool,
    /// The fake clock, in milliseconds, for callers that keep time.
    pub now: u64,
    /// Permits granted to callers.
    pub admitted: u64,
    /// Rejections by [`reason_index`].
    pub rejected: [u64; 5],
    /// Leases revoked.
    pub revoked: u64,
    /// Revoked leases reclaimed by force.
    pub reclaimed: u64,
    /// Repairs counted.
    pub repaired: u64,
}

impl Model {
    /// A limiter's model as built with these settings.
    pub fn new(capacity: u32, max: u32, reserve: u32, queue_limit: u32) -> Model {
        Model {
            capacity,
            max,
            reserve,
            queue_limit,
            window: ticket_window(queue_limit),
            ..Model::default()
        }
    }

    /// The count ordinary acquires may reach.
    pub fn limit(&self) -> u32 {
        self.capacity.saturating_sub(self.reserve)
    }

    /// Waiters still queued (tickets less ghosts).
    pub fn live_waiting(&self) -> u32 {
        self.queue.iter().filter(|t| t.is_some()).count() as u32
    }

    /// Counts a rejection and returns it.
    pub fn reject(&mut self, r: Rejected) -> Result<bool, Rejected> {
        self.rejected[reason_index(r)] += 1;
        Err(r)
    }

    /// Grants free room to the oldest tickets, skipping cancelled ones.
    pub fn hand_off(&mut self) {
        while !self.closed && !self.queue.is_empty() && self.in_use < self.limit() {
            if let Some(id) = self.queue.pop_front().expect("queue is not empty") {
                self.in_use += 1;
                self.granted.push(id);
            }
        }
        self.lost_wakeup = false;
    }

    /// One permit given back (a drop or a reclaim).
    pub fn release(&mut self) {
        assert!(self.in_use > 0, "model: a release below zero");
        self.in_use -= 1;
        if self.closed || self.queue.is_empty() {
            return;
        }
        if self.stalls > 0 {
            self.stalls -= 1;
            self.lost_wakeup = true;
            return;
        }
        self.hand_off();
    }

    /// `try_acquire` (or `try_acquire_critical`): `Ok(true)` a permit.
    pub fn try_acquire(&mut self, critical: bool) -> Result<bool, Rejected> {
        if self.closed {
            return self.reject(Rejected::Closed);
        }
        let limit = if critical {
            self.capacity
        } else {
            self.limit()
        };
        if self.in_use >= limit || (!critical && !self.queue.is_empty()) {
            return self.reject(Rejected::Full);
        }
        self.in_use += 1;
        self.admitted += 1;
        Ok(true)
    }

    /// First poll of a new acquire: `Ok(true)` a permit now, `Ok(false)`
    /// queued as waiter `id`.
    pub fn acquire(&mut self, id: usize) -> Result<bool, Rejected> {
        if self.closed {
            return self.reject(Rejected::Closed);
        }
        if self.queue.is_empty() && self.in_use < self.limit() {
            self.in_use += 1;
            self.admitted += 1;
            return Ok(true);
        }
        if self.queue_limit == 0 {
            return self.reject(Rejected::Full);
        }
        if self.queue.len() as u32 >= self.window || self.live_waiting() >= self.queue_limit {
            return self.reject(Rejected::QueueFull);
        }
        self.queue.push_back(Some(id));
        Ok(false)
    }

    /// A queued waiter's future is dropped (or gives up after a close).
    /// Returns true if it held a grant, which is passed on like a release
    /// (and is not an admission: it never reached a caller).
    pub fn cancel(&mut self, id: usize) -> bool {
        if let Some(pos) = self.granted.iter().position(|&g| g == id) {
            self.granted.remove(pos);
            self.release();
            return true;
        }
        let mut found = false;
        for t in self.queue.iter_mut() {
            if *t == Some(id) {
                *t = None;
                found = true;
            }
        }
        assert!(found, "model: cancelled waiter {id} was not queued");
        self.hand_off();
        false
    }
}
