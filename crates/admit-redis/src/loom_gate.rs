//! Loom model of the admission gate racing an expiry.
//!
//! Run: `RUSTFLAGS="--cfg admit_loom" cargo test -p admit-redis --release --lib loom_gate`

use crate::gate::Gate;
use admit::Limiter;
use loom::sync::Arc;
use loom::thread;

/// The lease (capacity 1 until t = 10) has run out; it is t = 20. The guard
/// thread expires it while a caller admits. Whichever runs first, the
/// caller must not get a permit: it either sees the old deadline, takes the
/// slow path and expires the lease itself, or sees the new deadline and the
/// capacity that came with it.
#[test]
fn an_expiry_racing_an_admission_never_admits() {
    loom::model(|| {
        let limiter = Limiter::builder()
            .capacity(0)
            .max_capacity(1)
            .build()
            .unwrap();
        let gate = Arc::new(Gate::new());
        gate.publish(&limiter, 1, 10);
        let now = 20;

        let guard = {
            let (gate, limiter) = (gate.clone(), limiter.clone());
            thread::spawn(move || gate.publish(&limiter, 0, u64::MAX))
        };
        if gate.expired(now) {
            // The slow path: expire under the node's lock (here the same
            // publication as the guard's; it is idempotent).
            gate.publish(&limiter, 0, u64::MAX);
        }
        let admitted = limiter.try_acquire().is_ok();
        guard.join().unwrap();
        assert!(!admitted, "admitted after the lease ran out");
    });
}

/// A renewal (capacity 2 until t = 30) racing an admission at t = 20 on an
/// unexpired lease (capacity 1 until t = 25): the caller is admitted under
/// one of the two leases, and never beyond the larger capacity.
#[test]
fn a_renewal_racing_admissions_stays_within_the_newer_capacity() {
    loom::model(|| {
        let limiter = Limiter::builder()
            .capacity(0)
            .max_capacity(2)
            .build()
            .unwrap();
        let gate = Arc::new(Gate::new());
        gate.publish(&limiter, 1, 25);
        let renew = {
            let (gate, limiter) = (gate.clone(), limiter.clone());
            thread::spawn(move || gate.publish(&limiter, 2, 30))
        };
        assert!(!gate.expired(20));
        let a = limiter.try_acquire();
        let b = limiter.try_acquire();
        renew.join().unwrap();
        assert!(a.is_ok(), "the unexpired lease's permit was refused");
        assert!(limiter.in_use() <= 2);
        drop((a, b));
    });
}
