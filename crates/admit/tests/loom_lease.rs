//! loom models of leases: revocation and forced reclaim racing the holder's
//! drop and touch. Whatever the interleaving, a permit's count is released
//! exactly once (I2) and a reclaimed slot is never disturbed by its old
//! holder.
//!
//! Run with:
//! `RUSTFLAGS="--cfg admit_loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p admit --release --test loom_lease`
#![cfg(admit_loom)]

use admit::Limiter;
use loom::thread;
use std::time::Duration;

/// A limiter without a queue, so the lease table stays small for loom.
fn limiter(capacity: u32) -> Limiter {
    Limiter::builder()
        .capacity(capacity)
        .queue_limit(0)
        .build()
        .unwrap()
}

/// Reclaim racing drop: exactly one of them releases the count.
#[test]
fn reclaim_racing_drop_releases_once() {
    loom::model(|| {
        let l = limiter(1);
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
        assert!(reclaimed <= 1);
        assert_eq!(l.in_use(), 0);
        let snap = l.health().snapshot();
        assert_eq!(snap.repaired_total, 0, "the count was released twice");
        assert_eq!(snap.reclaimed_total, reclaimed as u64);
        // The slot is usable again, exactly once.
        let again = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_err());
        drop(again);
    });
}

/// A reclaimed permit's touch and drop do not disturb the slot's next
/// holder.
#[test]
fn stale_holder_cannot_touch_or_free_the_next_lease() {
    loom::model(|| {
        let l = limiter(1);
        let old = l.try_acquire().unwrap();
        assert!(l.revoke(old.lease_id()));
        let holder = thread::spawn(move || {
            old.touch();
            drop(old);
        });
        let next = {
            let l = l.clone();
            thread::spawn(move || {
                l.reclaim_revoked(Duration::ZERO);
                l.try_acquire().ok()
            })
        };
        holder.join().unwrap();
        let next = next.join().unwrap();
        if let Some(p) = next {
            assert_eq!(l.in_use(), 1, "the old holder freed the new lease");
            assert!(!p.is_revoked());
            drop(p);
        }
        assert_eq!(l.in_use(), 0);
        assert_eq!(l.health().snapshot().repaired_total, 0);
    });
}

/// Revocation wakes a holder waiting on `revoked()`.
#[test]
fn revocation_wakes_the_holder() {
    loom::model(|| {
        let l = limiter(1);
        let p = l.try_acquire().unwrap();
        let id = p.lease_id();
        let holder = thread::spawn(move || {
            loom::future::block_on(p.revoked());
            drop(p);
        });
        assert!(l.revoke(id));
        holder.join().unwrap();
        assert_eq!(l.in_use(), 0);
    });
}

/// A holder that sees its lease revoked, and reads the limiter's health,
/// finds the revocation counted: the revoker counts it before the lease
/// shows as revoked (whether the holder was woken or looked by itself).
#[test]
fn a_revoked_holder_finds_its_revocation_counted() {
    loom::model(|| {
        let l = limiter(1);
        let p = l.try_acquire().unwrap();
        let id = p.lease_id();
        let holder = {
            let l = l.clone();
            thread::spawn(move || {
                loom::future::block_on(p.revoked());
                let snap = l.health().snapshot();
                assert_eq!(snap.revoked_total, 1, "revoked, but not counted yet");
                drop(p);
            })
        };
        assert!(l.revoke(id));
        holder.join().unwrap();
        assert_eq!(l.in_use(), 0);
        assert_eq!(l.health().snapshot().revoked_total, 1);
    });
}

/// Every loom thread has a shard, so a dropped permit's slot goes to its
/// thread's cache of free slots. A thread that exits leaves its cache to the
/// next thread that borrows its shard: that thread takes the cached slot,
/// never gives one slot to two leases while another thread races it, and
/// every count comes back.
#[test]
fn a_cached_slot_is_handed_over_at_thread_exit() {
    loom::model(|| {
        let l = limiter(2);
        // The main thread takes its shard first, so the two threads below
        // borrow the same one, one after the other.
        drop(l.try_acquire().unwrap());
        let first = {
            let l = l.clone();
            thread::spawn(move || drop(l.try_acquire().unwrap()))
        };
        first.join().unwrap();
        let next = {
            let l = l.clone();
            thread::spawn(move || {
                let a = l.try_acquire();
                let b = l.try_acquire();
                if let (Ok(a), Ok(b)) = (&a, &b) {
                    assert_ne!(a.lease_id().slot, b.lease_id().slot, "one slot, two leases");
                }
                drop((a, b));
            })
        };
        if let Ok(p) = l.try_acquire() {
            assert!(!p.is_revoked());
            drop(p);
        }
        next.join().unwrap();
        assert_eq!(l.in_use(), 0);
        assert_eq!(l.health().snapshot().repaired_total, 0);
        let a = l.try_acquire().unwrap();
        let b = l.try_acquire().unwrap();
        assert_ne!(a.lease_id().slot, b.lease_id().slot);
        drop((a, b));
        assert_eq!(l.in_use(), 0);
    });
}
