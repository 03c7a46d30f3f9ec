//! loom models of per-thread tokens: a permit whose slot belongs to its
//! thread's shard is parked there on drop, still counted, and the thread's
//! next admission takes it without touching the state word. Whatever the
//! interleaving, a token is taken back or taken, never both; parked tokens
//! never keep a waiter, a shrink or a close waiting; and the count comes
//! back to zero with no repair. The waiter and close models run again on
//! a limiter without leases, whose tokens are a bit in the shard's word.
//!
//! Capacities are at least 3 here: a shard opens only while the count
//! leaves room for a token per open shard besides.
//!
//! Run with:
//! `RUSTFLAGS="--cfg admit_loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p admit --release --test loom_tokens`
#![cfg(admit_loom)]

use admit::{Limiter, Rejected};
use loom::future::block_on;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use std::time::Duration;

fn limiter(capacity: u32, queue: u32) -> Limiter {
    Limiter::builder()
        .capacity(capacity)
        .max_capacity(4)
        .queue_limit(queue)
        .build()
        .unwrap()
}

/// The same without leases: its tokens are a bit in the shard's `own`
/// word instead of a slot.
fn untracked(capacity: u32, queue: u32) -> Limiter {
    Limiter::builder()
        .capacity(capacity)
        .max_capacity(4)
        .queue_limit(queue)
        .track_leases(false)
        .build()
        .unwrap()
}

/// Parks a token in the calling thread's shard: its first permit is
/// counted on the shared path in a slot the shard then owns, and its drop
/// parks the token. Checks that it did.
fn park_a_token(l: &Limiter) {
    let before = l.in_use();
    let tokens = l.faults().parked_tokens();
    let p = l.try_acquire().unwrap();
    drop(p);
    assert_eq!(
        l.faults().parked_tokens(),
        tokens + 1,
        "no token was parked"
    );
    assert_eq!(l.in_use(), before, "a parked token is not a permit held");
    assert_eq!(l.health().snapshot().in_use, before);
}

/// Borrows the calling thread's shard (shards are per thread, shared by
/// all limiters) without opening it for `l`.
fn take_a_shard() {
    drop(limiter(1, 0).try_acquire().unwrap());
}

/// A permit taken from a token races its revocation and reclaim: exactly
/// one of drop and reclaim gives the count back.
#[test]
fn a_token_permit_racing_revoke_and_reclaim_is_released_once() {
    loom::model(|| {
        let l = limiter(3, 0);
        park_a_token(&l);
        let p = l.try_acquire().unwrap();
        let id = p.lease_id();
        let reclaimer = {
            let l = l.clone();
            thread::spawn(move || {
                if l.revoke(id) {
                    l.reclaim_revoked(Duration::ZERO)
                } else {
                    0
                }
            })
        };
        drop(p);
        let reclaimed = reclaimer.join().unwrap();
        let snap = l.health().snapshot();
        assert_eq!(snap.repaired_total, 0, "the count was released twice");
        assert_eq!(snap.reclaimed_total, reclaimed as u64);
        // A revoked lease left its shard: dropped or reclaimed, it is
        // accounted as returned, never parked as a token.
        assert_eq!(snap.revoked_pending, 0);
        // Whatever is left parked is a token, not a permit: all three are
        // there for the taking.
        let all: Vec<_> = (0..3).map(|_| l.try_acquire().unwrap()).collect();
        assert_eq!(l.try_acquire().unwrap_err(), Rejected::Full);
        drop(all);
        l.close();
        block_on(l.drained());
        assert_eq!(l.in_use(), 0);
    });
}

/// One thread drops its permit (parking a token) while another fills the
/// limiter and queues: the waiter is granted (the token is taken back and
/// handed over) rather than left beside an idle token.
#[test]
fn a_waiter_is_not_left_beside_a_parked_token() {
    waiter_beside_a_parked_token(limiter);
}

#[test]
fn a_waiter_is_not_left_beside_a_parked_untracked_token() {
    waiter_beside_a_parked_token(untracked);
}

fn waiter_beside_a_parked_token(build: fn(u32, u32) -> Limiter) {
    loom::model(move || {
        let l = build(3, 1);
        park_a_token(&l);
        let mine = l.try_acquire().unwrap();
        let other = {
            let l = l.clone();
            thread::spawn(move || {
                let a = l.try_acquire().unwrap();
                let b = l.try_acquire();
                // Full or not, this one waits if it must, and must get in.
                let c = block_on(l.acquire()).unwrap();
                drop((a, b, c));
            })
        };
        drop(mine);
        other.join().unwrap();
        assert_eq!(l.health().snapshot().repaired_total, 0);
        assert_eq!(l.in_use(), 0);
    });
}

/// A capacity shrink below the count races a thread reusing its token:
/// once `set_capacity` has returned, no admission sees room that is not
/// there — the token was taken back, not kept for later.
#[test]
fn a_shrink_racing_token_reuse_keeps_the_new_cap() {
    loom::model(|| {
        let l = limiter(4, 0);
        let shrunk = Arc::new(AtomicBool::new(false));
        let parked = Arc::new(AtomicBool::new(false));
        let user = {
            let l = l.clone();
            let (shrunk, parked) = (shrunk.clone(), parked.clone());
            thread::spawn(move || {
                park_a_token(&l);
                parked.store(true, Ordering::SeqCst);
                let after = shrunk.load(Ordering::SeqCst);
                let p = l.try_acquire();
                if after {
                    assert!(p.is_err(), "admitted after a shrink to 1 with 1 held");
                }
                drop(p);
            })
        };
        while !parked.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        // One held (with the token, the count is 2: no room for a token
        // here), then the shrink to 1.
        let held = l.try_acquire().unwrap();
        l.set_capacity(1).unwrap();
        shrunk.store(true, Ordering::SeqCst);
        user.join().unwrap();
        assert_eq!(l.try_acquire().unwrap_err(), Rejected::Full);
        drop(held);
        assert_eq!(l.in_use(), 0);
        assert_eq!(l.health().snapshot().repaired_total, 0);
        let one = l.try_acquire().unwrap();
        assert_eq!(l.try_acquire().unwrap_err(), Rejected::Full);
        drop(one);
    });
}

/// `close` with a token parked, racing its thread's next admission: the
/// count still reaches zero, so `drained` resolves.
#[test]
fn close_with_a_parked_token_still_drains() {
    close_with_a_parked_token(limiter);
}

#[test]
fn close_with_a_parked_untracked_token_still_drains() {
    close_with_a_parked_token(untracked);
}

fn close_with_a_parked_token(build: fn(u32, u32) -> Limiter) {
    loom::model(move || {
        let l = build(3, 0);
        park_a_token(&l);
        let closer = {
            let l = l.clone();
            thread::spawn(move || {
                l.close();
                block_on(l.drained());
            })
        };
        if let Ok(p) = l.try_acquire() {
            drop(p);
        }
        closer.join().unwrap();
        assert_eq!(l.try_acquire().unwrap_err(), Rejected::Closed);
        assert_eq!(l.health().snapshot().repaired_total, 0);
    });
}

/// A thread that parked a token exits; the next thread that borrows its
/// shard inherits the token and takes it while the main thread, finding
/// the limiter full, takes parked tokens back. The token is taken or taken
/// back, never both: never more permits than the capacity, and every unit
/// comes back.
#[test]
fn a_token_is_handed_over_at_thread_exit() {
    loom::model(|| {
        let l = limiter(3, 0);
        let inside = Arc::new(AtomicUsize::new(0));
        let enter = |inside: &AtomicUsize| {
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            assert!(now <= 3, "{now} permits held with capacity 3");
        };
        // The main thread takes its shard first (without opening it for
        // `l`), so the two threads below borrow the same one, one after the
        // other.
        take_a_shard();
        let first = {
            let l = l.clone();
            thread::spawn(move || park_a_token(&l))
        };
        first.join().unwrap();
        let a = l.try_acquire().unwrap();
        enter(&inside);
        let b = l.try_acquire().unwrap();
        enter(&inside);
        let next = {
            let l = l.clone();
            let inside = inside.clone();
            thread::spawn(move || {
                if let Ok(p) = l.try_acquire() {
                    enter(&inside);
                    inside.fetch_sub(1, Ordering::SeqCst);
                    drop(p);
                }
            })
        };
        // Full of two permits and a parked token: takes the token back,
        // unless `next` took it first.
        if let Ok(c) = l.try_acquire() {
            enter(&inside);
            inside.fetch_sub(1, Ordering::SeqCst);
            drop(c);
        }
        next.join().unwrap();
        drop((a, b));
        assert_eq!(l.in_use(), 0);
        assert_eq!(l.health().snapshot().repaired_total, 0);
        let all: Vec<_> = (0..3).map(|_| l.try_acquire().unwrap()).collect();
        assert_eq!(l.try_acquire().unwrap_err(), Rejected::Full);
        drop(all);
    });
}

/// A thread's first admission opens its shard (so its drop may park a
/// token) while another thread closes the limiter: either the opening sees
/// the close and seals the shard again, or the close sees the shard open
/// and seals it. No token is left parked, so `drained` resolves.
#[test]
fn a_shard_opening_racing_close_leaves_no_token() {
    loom::model(|| {
        let l = limiter(3, 0);
        let closer = {
            let l = l.clone();
            thread::spawn(move || {
                l.close();
                block_on(l.drained());
            })
        };
        if let Ok(p) = l.try_acquire() {
            drop(p);
        }
        closer.join().unwrap();
        assert_eq!(l.in_use(), 0);
        assert_eq!(l.health().snapshot().repaired_total, 0);
    });
}
