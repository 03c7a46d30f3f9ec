//! loom models of the limiter's core invariants I1–I4 (listed in the
//! `admit` crate docs, `crates/admit/src/lib.rs`).
//!
//! Run with:
//! `RUSTFLAGS="--cfg admit_loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p admit --release --test loom_limiter`
#![cfg(admit_loom)]

use admit::{Limiter, Rejected};
use loom::future::block_on;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Polls once with a waker that does nothing: queues the waiter.
fn park<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

fn limiter(capacity: u32, max: u32, queue: u32) -> Limiter {
    Limiter::builder()
        .capacity(capacity)
        .max_capacity(max)
        .queue_limit(queue)
        .build()
        .unwrap()
}

/// (a) Three threads (the model's main thread and two more) racing
/// try_acquire / drop never hold more than the capacity, and every permit
/// comes back.
#[test]
fn cap_holds_under_racing_try_acquire() {
    fn work(l: &Limiter, inside: &AtomicUsize) {
        if let Ok(p) = l.try_acquire() {
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            assert!(now <= 2, "{now} permits held with capacity 2");
            inside.fetch_sub(1, Ordering::SeqCst);
            drop(p);
        }
    }
    loom::model(|| {
        let l = limiter(2, 2, 0);
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let l = l.clone();
                let inside = inside.clone();
                thread::spawn(move || work(&l, &inside))
            })
            .collect();
        work(&l, &inside);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(l.in_use(), 0);
        assert_eq!(l.available(), 2);
    });
}

/// (b) A release with a waiter queued always reaches the waiter: if the
/// wake-up were lost, `block_on` would never return and loom reports a
/// deadlock.
#[test]
fn release_never_loses_the_wakeup() {
    loom::model(|| {
        let l = limiter(1, 1, 1);
        let held = l.try_acquire().unwrap();
        let waiter = {
            let l = l.clone();
            thread::spawn(move || {
                let p = block_on(l.acquire()).expect("granted");
                assert_eq!(l.in_use(), 1);
                drop(p);
            })
        };
        drop(held);
        waiter.join().unwrap();
        assert_eq!(l.in_use(), 0);
        assert_eq!(l.waiting(), 0);
    });
}

/// (c) A waiter cancelled while a permit is being handed to it passes the
/// permit on to the next waiter; nothing leaks.
#[test]
fn cancelled_waiter_passes_the_permit_on() {
    loom::model(|| {
        let l = limiter(1, 1, 2);
        let held = l.try_acquire().unwrap();
        let mut first = l.acquire();
        let mut second = l.acquire();
        assert!(park(&mut first).is_pending());
        assert!(park(&mut second).is_pending());
        let releaser = thread::spawn(move || drop(held));
        let next = {
            let l = l.clone();
            thread::spawn(move || {
                let p = block_on(second).expect("second waiter granted");
                assert_eq!(l.in_use(), 1);
                drop(p);
            })
        };
        drop(first);
        releaser.join().unwrap();
        next.join().unwrap();
        assert_eq!(l.in_use(), 0);
        assert_eq!(l.waiting(), 0);
        assert!(l.try_acquire().is_ok());
    });
}

/// (d) close racing a release and a waiter: everyone wakes, the waiter ends
/// with a permit (granted before the close) or `Closed`, nothing leaks and
/// the limiter drains.
#[test]
fn close_wakes_everyone_and_leaks_nothing() {
    loom::model(|| {
        let l = limiter(1, 1, 1);
        let held = l.try_acquire().unwrap();
        let mut w = l.acquire();
        assert!(park(&mut w).is_pending());
        let closer = {
            let l = l.clone();
            thread::spawn(move || l.close())
        };
        let releaser = thread::spawn(move || drop(held));
        match block_on(w) {
            Ok(p) => drop(p),
            Err(e) => assert_eq!(e, Rejected::Closed),
        }
        closer.join().unwrap();
        releaser.join().unwrap();
        assert_eq!(l.in_use(), 0);
        assert_eq!(l.waiting(), 0);
        assert_eq!(l.try_acquire().unwrap_err(), Rejected::Closed);
        block_on(l.drained());
    });
}

/// (e) set_capacity racing acquire and release keeps the cap (I1) and gives
/// every permit back exactly once (I2).
#[test]
fn set_capacity_races_keep_the_cap() {
    loom::model(|| {
        let l = limiter(1, 2, 1);
        let inside = Arc::new(AtomicUsize::new(1));
        let held = l.try_acquire().unwrap();
        let mut w = l.acquire();
        assert!(park(&mut w).is_pending());
        let resizer = {
            let l = l.clone();
            thread::spawn(move || {
                l.set_capacity(2).unwrap();
                l.set_capacity(1).unwrap();
            })
        };
        let releaser = {
            let inside = inside.clone();
            thread::spawn(move || {
                inside.fetch_sub(1, Ordering::SeqCst);
                drop(held);
            })
        };
        let p = block_on(w).expect("waiter granted");
        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(now <= 2, "{now} permits held with max capacity 2");
        resizer.join().unwrap();
        releaser.join().unwrap();
        assert!(l.in_use() <= 1);
        drop(p);
        assert_eq!(l.in_use(), 0);
        assert_eq!(l.capacity(), 1);
        assert!(l.try_acquire().is_ok());
    });
}

/// (f) A capacity shrink while a waiter is queued: a permit released after
/// the shrink does not go to the waiter while the count is at the new cap
/// (held permits stay, newcomers wait); the next release does.
#[test]
fn shrink_while_waiting_keeps_the_new_cap() {
    use loom::sync::atomic::AtomicBool;
    loom::model(|| {
        let l = limiter(2, 2, 1);
        let a = l.try_acquire().unwrap();
        let b = l.try_acquire().unwrap();
        let mut w = l.acquire();
        assert!(park(&mut w).is_pending());
        let shrunk = Arc::new(AtomicBool::new(false));
        let resizer = {
            let (l, shrunk) = (l.clone(), shrunk.clone());
            thread::spawn(move || {
                l.set_capacity(1).unwrap();
                shrunk.store(true, Ordering::SeqCst);
            })
        };
        let releaser = {
            let shrunk = shrunk.clone();
            thread::spawn(move || {
                let after_shrink = shrunk.load(Ordering::SeqCst);
                drop(a);
                after_shrink
            })
        };
        resizer.join().unwrap();
        let after_shrink = releaser.join().unwrap();
        let granted = match park(&mut w) {
            Poll::Ready(r) => Some(r.expect("a grant, not a rejection")),
            Poll::Pending => None,
        };
        if after_shrink {
            // Released at the new cap of 1 with `b` still held.
            assert!(granted.is_none(), "granted above the shrunk capacity");
            assert_eq!(l.in_use(), 1);
        }
        // Granted before the shrink, the waiter keeps its permit (2 held);
        // otherwise `b`'s release is what lets it in.
        let p = match granted {
            Some(p) => p,
            None => {
                drop(b);
                let p = block_on(w).expect("granted once below the cap");
                assert_eq!(l.in_use(), 1);
                drop(p);
                assert_eq!((l.in_use(), l.waiting()), (0, 0));
                return;
            }
        };
        assert_eq!(l.in_use(), 2);
        drop((p, b));
        assert_eq!((l.in_use(), l.waiting()), (0, 0));
        assert!(l.try_acquire().is_ok());
    });
}

/// (g) A waiter that gives up (its future dropped) while the permit it
/// waited for is released: whether the release finds it parked, gone, or
/// leaving, the count returns to zero, no ticket is left to make newcomers
/// queue behind nobody, and nothing is repaired.
#[test]
fn an_abandoned_waiter_leaves_no_trace() {
    loom::model(|| {
        let l = limiter(1, 1, 1);
        let held = l.try_acquire().unwrap();
        let mut w = l.acquire();
        assert!(park(&mut w).is_pending());
        let releaser = thread::spawn(move || drop(held));
        drop(w);
        releaser.join().unwrap();
        assert_eq!((l.in_use(), l.waiting()), (0, 0));
        let p = l.try_acquire().expect("no ticket left behind");
        drop(p);
        assert_eq!(l.health().snapshot().repaired_total, 0);
    });
}
