//! A proptest state machine: random sequences of limiter operations, run
//! against the real limiter and a plain reference model side by side.
//!
//! Checks I1 (cap), I2 (every permit released exactly once), I3 (a free
//! permit always reaches a waiter), I4 (cancellation leaves no trace) and
//! FIFO grant order, after every single operation.

use admit::{Acquire, Limiter, Permit, Rejected};
use proptest::prelude::*;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

#[derive(Debug, Clone)]
enum Op {
    TryAcquire,
    TryAcquireCritical,
    Acquire,
    Poll(usize),
    Cancel(usize),
    Drop(usize),
    SetCapacity(u32),
    Close,
    Revoke(usize),
    Reclaim,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::TryAcquire),
        1 => Just(Op::TryAcquireCritical),
        4 => Just(Op::Acquire),
        4 => (0..8usize).prop_map(Op::Poll),
        2 => (0..8usize).prop_map(Op::Cancel),
        4 => (0..8usize).prop_map(Op::Drop),
        2 => (0..6u32).prop_map(Op::SetCapacity),
        1 => Just(Op::Close),
        1 => (0..8usize).prop_map(Op::Revoke),
        1 => Just(Op::Reclaim),
    ]
}

/// The reference model: plain data, obviously right.
#[derive(Debug, Default)]
struct Model {
    capacity: u32,
    max: u32,
    reserve: u32,
    queue_limit: u32,
    window: u32,
    closed: bool,
    /// Counted permits: held ones plus grants not yet picked up.
    in_use: u32,
    /// Tickets in order: `Some(waiter id)` live, `None` cancelled.
    queue: VecDeque<Option<usize>>,
    /// Waiters granted but not yet polled.
    granted: Vec<usize>,
}

impl Model {
    fn limit(&self) -> u32 {
        self.capacity.saturating_sub(self.reserve)
    }
    fn live(&self) -> u32 {
        self.queue.iter().filter(|t| t.is_some()).count() as u32
    }
    fn hand_off(&mut self) {
        while !self.closed && !self.queue.is_empty() && self.in_use < self.limit() {
            if let Some(id) = self.queue.pop_front().unwrap() {
                self.in_use += 1;
                self.granted.push(id);
            }
        }
    }
    fn try_acquire(&mut self, critical: bool) -> Result<(), Rejected> {
        if self.closed {
            return Err(Rejected::Closed);
        }
        let limit = if critical {
            self.capacity
        } else {
            self.limit()
        };
        if self.in_use >= limit || (!critical && !self.queue.is_empty()) {
            return Err(Rejected::Full);
        }
        self.in_use += 1;
        Ok(())
    }
    /// First poll of a new acquire: Ok(true) = permit now, Ok(false) = queued.
    fn acquire(&mut self, id: usize) -> Result<bool, Rejected> {
        if self.closed {
            return Err(Rejected::Closed);
        }
        if self.queue.is_empty() && self.in_use < self.limit() {
            self.in_use += 1;
            return Ok(true);
        }
        if self.queue_limit == 0 {
            return Err(Rejected::Full);
        }
        if self.queue.len() as u32 >= self.window || self.live() >= self.queue_limit {
            return Err(Rejected::QueueFull);
        }
        self.queue.push_back(Some(id));
        Ok(false)
    }
    fn release(&mut self) {
        self.in_use -= 1;
        self.hand_off();
    }
    /// A queued waiter leaves. Returns true if it held a grant (now passed on).
    fn cancel(&mut self, id: usize) -> bool {
        if let Some(pos) = self.granted.iter().position(|&g| g == id) {
            self.granted.remove(pos);
            self.release();
            return true;
        }
        for t in self.queue.iter_mut() {
            if *t == Some(id) {
                *t = None;
            }
        }
        self.hand_off();
        false
    }
}

struct Sut {
    limiter: Limiter,
    model: Model,
    waiters: Vec<(usize, Acquire)>,
    permits: Vec<(Permit, bool)>,
    next_id: usize,
    admitted: u64,
}

fn poll(f: &mut Acquire) -> Poll<Result<Permit, Rejected>> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

impl Sut {
    fn new(capacity: u32, max: u32, reserve: u32, queue_limit: u32, leases: bool) -> Sut {
        let limiter = Limiter::builder()
            .capacity(capacity)
            .max_capacity(max)
            .reserve(reserve)
            .queue_limit(queue_limit)
            .track_leases(leases)
            .build()
            .unwrap();
        let window = ((queue_limit as usize * 4)
            .next_power_of_two()
            .clamp(2, 2048)
            / 2) as u32;
        Sut {
            limiter,
            model: Model {
                capacity,
                max,
                reserve,
                queue_limit,
                window,
                ..Model::default()
            },
            waiters: Vec::new(),
            permits: Vec::new(),
            next_id: 0,
            admitted: 0,
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::TryAcquire | Op::TryAcquireCritical => {
                let critical = matches!(op, Op::TryAcquireCritical);
                let real = if critical {
                    self.limiter.try_acquire_critical()
                } else {
                    self.limiter.try_acquire()
                };
                let expect = self.model.try_acquire(critical);
                assert_eq!(real.as_ref().map(|_| ()).map_err(|e| *e), expect, "{op:?}");
                if let Ok(p) = real {
                    self.admitted += 1;
                    self.permits.push((p, false));
                }
            }
            Op::Acquire => {
                let id = self.next_id;
                self.next_id += 1;
                let mut fut = self.limiter.acquire();
                let expect = self.model.acquire(id);
                match (poll(&mut fut), expect) {
                    (Poll::Ready(Ok(p)), Ok(true)) => {
                        self.admitted += 1;
                        self.permits.push((p, false))
                    }
                    (Poll::Pending, Ok(false)) => self.waiters.push((id, fut)),
                    (Poll::Ready(Err(a)), Err(b)) => assert_eq!(a, b),
                    (real, model) => panic!("acquire: real {real:?}, model {model:?}"),
                }
            }
            Op::Poll(i) if !self.waiters.is_empty() => {
                let i = i % self.waiters.len();
                let id = self.waiters[i].0;
                let granted = self.model.granted.contains(&id);
                match poll(&mut self.waiters[i].1) {
                    Poll::Ready(Ok(p)) => {
                        assert!(
                            granted,
                            "waiter {id} got a permit the model did not grant (FIFO)"
                        );
                        self.model.granted.retain(|&g| g != id);
                        self.admitted += 1;
                        self.permits.push((p, false));
                        drop(self.waiters.remove(i));
                    }
                    Poll::Ready(Err(e)) => {
                        assert!(!granted, "granted waiter {id} failed with {e}");
                        assert_eq!(e, Rejected::Closed);
                        assert!(self.model.closed);
                        self.model.cancel(id);
                        drop(self.waiters.remove(i));
                    }
                    Poll::Pending => {
                        assert!(!granted, "granted waiter {id} still pending");
                        assert!(!self.model.closed, "waiter pending after close");
                    }
                }
            }
            Op::Cancel(i) if !self.waiters.is_empty() => {
                let i = i % self.waiters.len();
                let (id, fut) = self.waiters.remove(i);
                drop(fut);
                self.model.cancel(id);
            }
            Op::Drop(i) if !self.permits.is_empty() => {
                let i = i % self.permits.len();
                let (p, reclaimed) = self.permits.remove(i);
                drop(p);
                if !reclaimed {
                    self.model.release();
                }
            }
            Op::SetCapacity(n) => {
                let real = self.limiter.set_capacity(n);
                assert_eq!(real.is_ok(), n <= self.model.max);
                if n <= self.model.max {
                    self.model.capacity = n;
                    self.model.hand_off();
                }
            }
            Op::Close => {
                self.limiter.close();
                self.model.closed = true;
            }
            Op::Revoke(i) if !self.permits.is_empty() => {
                let i = i % self.permits.len();
                let (p, reclaimed) = &self.permits[i];
                let was_live = !p.is_revoked() && !reclaimed && self.limiter.tracks_leases();
                assert_eq!(self.limiter.revoke(p.lease_id()), was_live);
                assert_eq!(p.is_revoked(), self.limiter.tracks_leases());
            }
            Op::Reclaim => {
                let mut expect = 0;
                for (p, reclaimed) in self.permits.iter_mut() {
                    if p.is_revoked() && !*reclaimed {
                        *reclaimed = true;
                        expect += 1;
                    }
                }
                assert_eq!(self.limiter.reclaim_revoked(Duration::ZERO), expect);
                for _ in 0..expect {
                    self.model.release();
                }
            }
            _ => {}
        }
        self.check();
    }

    fn check(&self) {
        let m = &self.model;
        assert_eq!(self.limiter.in_use(), m.in_use, "in_use");
        assert_eq!(self.limiter.waiting(), m.live(), "waiting");
        assert_eq!(self.limiter.capacity(), m.capacity, "capacity");
        assert_eq!(self.limiter.is_closed(), m.closed, "closed");
        // I1: new grants only below the cap, so the count never passes the
        // largest capacity the limiter can have.
        assert!(m.in_use <= m.max);
        // I3: no waiter left queued beside a free permit.
        if !m.closed && m.in_use < m.limit() {
            assert_eq!(m.live(), 0, "waiters queued beside free permits");
        }
    }

    fn finish(mut self) {
        // Drop everything: every permit comes back exactly once (I2).
        self.waiters.clear();
        self.permits.clear();
        assert_eq!(self.limiter.in_use(), 0, "permits leaked");
        assert_eq!(self.limiter.waiting(), 0);
        let snap = self.limiter.health().snapshot();
        assert_eq!(snap.repaired_total, 0, "a release found the count at zero");
        assert_eq!(
            snap.admitted_total, self.admitted,
            "admissions miscounted (I6)"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn limiter_matches_the_model(
        capacity in 0u32..4,
        extra in 0u32..3,
        reserve in 0u32..2,
        queue_limit in 0u32..4,
        leases in proptest::bool::weighted(0.8),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut sut = Sut::new(capacity, capacity + extra, reserve, queue_limit, leases);
        for op in &ops {
            sut.apply(op);
        }
        sut.finish();
    }
}
