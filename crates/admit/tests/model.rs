//! A proptest state machine: random sequences of limiter operations, run
//! against the real limiter and a plain reference model side by side.
//!
//! Checks I1 (cap), I2 (every permit released exactly once), I3 (a free
//! permit always reaches a waiter), I4 (cancellation leaves no trace) and
//! FIFO grant order, after every single operation. The model is the one
//! the fuzz target uses too (`crates/admit-model`).

use admit::{Acquire, Limiter, Permit, Rejected};
use admit_model::{Model, REASONS};
use proptest::prelude::*;
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

struct Sut {
    limiter: Limiter,
    model: Model,
    waiters: Vec<(usize, Acquire)>,
    permits: Vec<(Permit, bool)>,
    next_id: usize,
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
        Sut {
            limiter,
            model: Model::new(capacity, max, reserve, queue_limit),
            waiters: Vec::new(),
            permits: Vec::new(),
            next_id: 0,
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
                let expect = self.model.try_acquire(critical).map(|_| ());
                assert_eq!(real.as_ref().map(|_| ()).map_err(|e| *e), expect, "{op:?}");
                if let Ok(p) = real {
                    self.permits.push((p, false));
                }
            }
            Op::Acquire => {
                let id = self.next_id;
                self.next_id += 1;
                let mut fut = self.limiter.acquire();
                let expect = self.model.acquire(id);
                match (poll(&mut fut), expect) {
                    (Poll::Ready(Ok(p)), Ok(true)) => self.permits.push((p, false)),
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
                        self.model.admitted += 1;
                        self.permits.push((p, false));
                        drop(self.waiters.remove(i));
                    }
                    Poll::Ready(Err(e)) => {
                        assert!(!granted, "granted waiter {id} failed with {e}");
                        assert_eq!(e, Rejected::Closed);
                        assert!(self.model.closed);
                        self.model.rejected[admit_model::reason_index(e)] += 1;
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
        assert_eq!(self.limiter.waiting(), m.live_waiting(), "waiting");
        assert_eq!(self.limiter.capacity(), m.capacity, "capacity");
        assert_eq!(self.limiter.is_closed(), m.closed, "closed");
        // I1: new grants only below the cap, so the count never passes the
        // largest capacity the limiter can have.
        assert!(m.in_use <= m.max);
        // I3: no waiter left queued beside a free permit.
        if !m.closed && m.in_use < m.limit() {
            assert_eq!(m.live_waiting(), 0, "waiters queued beside free permits");
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
            snap.admitted_total, self.model.admitted,
            "admissions miscounted (I6)"
        );
        for (i, reason) in REASONS.iter().enumerate() {
            assert_eq!(
                snap.rejected_total[reason], self.model.rejected[i],
                "rejections miscounted: {reason} (I6)"
            );
        }
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
