//! Ordinary tests of every public operation of the limiter.

use admit::{HealthState, Limiter, Rejected};
use futures::executor::block_on;
use futures::task::noop_waker;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    Pin::new(f).poll(&mut cx)
}

fn queued(capacity: u32, queue: u32) -> Limiter {
    Limiter::builder()
        .capacity(capacity)
        .queue_limit(queue)
        .build()
        .unwrap()
}

#[test]
fn try_acquire_holds_the_cap_and_releases_on_drop() {
    let l = Limiter::new(3);
    let permits: Vec<_> = (0..3).map(|_| l.try_acquire().unwrap()).collect();
    assert_eq!(l.in_use(), 3);
    assert_eq!(l.available(), 0);
    assert_eq!(l.try_acquire().unwrap_err(), Rejected::Full);
    drop(permits);
    assert_eq!(l.in_use(), 0);
    assert_eq!(l.available(), 3);
    let snap = l.health().snapshot();
    assert_eq!(snap.admitted_total, 3);
    assert_eq!(snap.rejected_total["full"], 1);
}

#[test]
fn acquire_without_queue_fails_at_once() {
    let l = queued(1, 0);
    let _p = l.try_acquire().unwrap();
    assert_eq!(block_on(l.acquire()).unwrap_err(), Rejected::Full);
}

/// `acquire` waits by default, as a tokio user expects of a semaphore: the
/// default limiter has a queue.
#[test]
fn the_default_limiter_queues_acquire() {
    let l = Limiter::new(1);
    assert_eq!(l.queue_limit(), admit::DEFAULT_QUEUE_LIMIT);
    assert_eq!(
        Limiter::builder().build().unwrap().queue_limit(),
        admit::DEFAULT_QUEUE_LIMIT
    );
    let held = l.try_acquire().unwrap();
    let mut waiters: Vec<_> = (0..admit::DEFAULT_QUEUE_LIMIT)
        .map(|_| l.acquire())
        .collect();
    for w in &mut waiters {
        assert!(poll_once(w).is_pending());
    }
    assert_eq!(l.waiting(), admit::DEFAULT_QUEUE_LIMIT);
    // One more than the default queue holds is refused at once.
    assert_eq!(block_on(l.acquire()).unwrap_err(), Rejected::QueueFull);
    drop(held);
    let first = block_on(waiters.remove(0)).expect("the oldest waiter is granted");
    assert_eq!(l.in_use(), 1);
    drop((first, waiters));
    assert_eq!((l.in_use(), l.waiting()), (0, 0));
    assert!(l.try_acquire().is_ok());
}

/// A deadline that fires takes the waiter out of the queue before the
/// caller hears `Timeout`: no ticket, ghost or count is left behind, the
/// timeout is counted, and the waiter behind it is served next.
#[test]
fn acquire_until_times_out_and_leaves_the_queue_and_count_correct() {
    let l = queued(1, 4);
    let held = l.try_acquire().unwrap();
    let (fire, deadline) = futures::channel::oneshot::channel::<()>();
    let mut timed = l.acquire_until(deadline);
    let mut behind = l.acquire();
    assert!(poll_once(&mut timed).is_pending());
    assert!(poll_once(&mut behind).is_pending());
    assert_eq!(l.waiting(), 2);

    fire.send(()).unwrap();
    assert!(matches!(
        poll_once(&mut timed),
        Poll::Ready(Err(Rejected::Timeout))
    ));
    assert_eq!(l.waiting(), 1, "the timed-out waiter is still queued");
    assert_eq!(l.in_use(), 1);
    let snap = l.health().snapshot();
    assert_eq!(snap.rejected_total["timeout"], 1);
    assert_eq!(snap.waiting, 1);
    drop(timed);

    drop(held);
    let p = block_on(behind).expect("the next waiter gets the released permit");
    assert_eq!(l.in_use(), 1);
    drop(p);
    assert_eq!((l.in_use(), l.waiting()), (0, 0));
    // No ghost ticket is left to make newcomers queue behind nobody.
    let a = l.try_acquire().expect("the queue is empty");
    drop(a);
    let snap = l.health().snapshot();
    assert_eq!(snap.admitted_total, 3);
    assert_eq!(snap.repaired_total, 0);
}

/// A permit granted at the moment the deadline fires is the caller's: it
/// is returned, counted as an admission, not as a timeout.
#[test]
fn acquire_until_keeps_a_grant_that_races_the_deadline() {
    let l = queued(1, 4);
    let mut held = Some(l.try_acquire().unwrap());
    // The deadline releases the held permit as it fires, so the grant lands
    // between the wait's check for a grant and its check of the deadline.
    let deadline = std::future::poll_fn(move |_| {
        drop(held.take());
        Poll::Ready(())
    });
    let mut w = l.acquire_until(deadline);
    let permit = match poll_once(&mut w) {
        Poll::Ready(r) => r.expect("granted as the deadline fired"),
        Poll::Pending => panic!("the deadline had fired"),
    };
    assert_eq!(l.in_use(), 1);
    let snap = l.health().snapshot();
    assert_eq!(snap.rejected_total["timeout"], 0);
    assert_eq!(snap.admitted_total, 2);
    drop((permit, w));
    assert_eq!((l.in_use(), l.waiting()), (0, 0));
    assert!(l.try_acquire().is_ok());
}

/// With a permit free, the deadline is never consulted; on a closed
/// limiter the answer is `Closed`, not `Timeout`.
#[test]
fn acquire_until_takes_a_free_permit_without_the_timer() {
    let l = queued(1, 4);
    let never = std::future::poll_fn(|_| -> Poll<()> { panic!("the deadline was polled") });
    let p = block_on(l.acquire_until(never)).unwrap();
    drop(p);
    l.close();
    let e = block_on(l.acquire_until(std::future::pending::<()>())).unwrap_err();
    assert_eq!(e, Rejected::Closed);
}

#[test]
fn waiters_are_granted_in_fifo_order() {
    let l = queued(1, 8);
    let held = l.try_acquire().unwrap();
    let mut waiters: Vec<_> = (0..5).map(|_| l.acquire()).collect();
    for w in &mut waiters {
        assert!(poll_once(w).is_pending());
    }
    assert_eq!(l.waiting(), 5);
    // A newcomer may not jump the queue.
    assert_eq!(l.try_acquire().unwrap_err(), Rejected::Full);
    drop(held);
    let mut order = Vec::new();
    for round in 0..5 {
        let mut granted = None;
        for (i, w) in waiters.iter_mut().enumerate() {
            if order.contains(&i) {
                continue;
            }
            if let Poll::Ready(r) = poll_once(w) {
                assert!(granted.is_none(), "two waiters granted at once");
                granted = Some((i, r.unwrap()));
            }
        }
        let (i, permit) = granted.expect("a waiter was granted");
        assert_eq!(i, round, "grants follow arrival order");
        order.push(i);
        assert_eq!(l.in_use(), 1);
        drop(permit);
    }
    assert_eq!(l.in_use(), 0);
    assert_eq!(l.waiting(), 0);
}

#[test]
fn queue_limit_is_enforced() {
    let l = queued(1, 2);
    let _held = l.try_acquire().unwrap();
    let mut a = l.acquire();
    let mut b = l.acquire();
    assert!(poll_once(&mut a).is_pending());
    assert!(poll_once(&mut b).is_pending());
    assert_eq!(block_on(l.acquire()).unwrap_err(), Rejected::QueueFull);
    assert_eq!(l.health().snapshot().rejected_total["queue_full"], 1);
}

#[test]
fn cancelled_waiter_leaves_no_trace_and_passes_its_grant_on() {
    let l = queued(1, 4);
    let held = l.try_acquire().unwrap();
    let mut a = l.acquire();
    let mut b = l.acquire();
    assert!(poll_once(&mut a).is_pending());
    assert!(poll_once(&mut b).is_pending());
    // Cancel before any grant.
    drop(a);
    assert_eq!(l.waiting(), 1);
    // Release: the grant skips the cancelled ticket and goes to b.
    drop(held);
    let pb = match poll_once(&mut b) {
        Poll::Ready(Ok(p)) => p,
        other => panic!("b not granted: {other:?}"),
    };
    assert_eq!(l.in_use(), 1);
    // Now cancel a waiter that was already granted but not polled.
    let mut c = l.acquire();
    let mut d = l.acquire();
    assert!(poll_once(&mut c).is_pending());
    assert!(poll_once(&mut d).is_pending());
    drop(pb); // grants c
    drop(c); // c never saw it: the permit passes to d
    let pd = match poll_once(&mut d) {
        Poll::Ready(Ok(p)) => p,
        other => panic!("d not granted: {other:?}"),
    };
    assert_eq!(l.in_use(), 1);
    drop(pd);
    assert_eq!(l.in_use(), 0);
    assert_eq!(l.waiting(), 0);
    assert!(l.try_acquire().is_ok());
}

#[test]
fn reserve_is_kept_for_critical_acquires() {
    let l = Limiter::builder().capacity(3).reserve(1).build().unwrap();
    let _a = l.try_acquire().unwrap();
    let _b = l.try_acquire().unwrap();
    assert_eq!(l.try_acquire().unwrap_err(), Rejected::Full);
    let _c = l.try_acquire_critical().unwrap();
    assert_eq!(l.try_acquire_critical().unwrap_err(), Rejected::Full);
    assert_eq!(l.reserve(), 1);
}

#[test]
fn growing_capacity_wakes_waiters_and_shrinking_keeps_permits() {
    let l = Limiter::builder()
        .capacity(1)
        .max_capacity(4)
        .queue_limit(4)
        .build()
        .unwrap();
    let a = l.try_acquire().unwrap();
    let mut w = l.acquire();
    assert!(poll_once(&mut w).is_pending());
    l.set_capacity(2).unwrap();
    let b = match poll_once(&mut w) {
        Poll::Ready(Ok(p)) => p,
        other => panic!("not granted after growing: {other:?}"),
    };
    assert_eq!(l.in_use(), 2);
    l.set_capacity(1).unwrap();
    assert_eq!(l.in_use(), 2, "shrinking keeps held permits");
    assert_eq!(l.try_acquire().unwrap_err(), Rejected::Full);
    drop(a);
    assert_eq!(
        l.try_acquire().unwrap_err(),
        Rejected::Full,
        "still at the new cap"
    );
    drop(b);
    assert!(l.try_acquire().is_ok());
    let err = l.set_capacity(5).unwrap_err();
    assert_eq!((err.requested, err.max), (5, 4));
}

#[test]
fn close_rejects_new_callers_wakes_waiters_and_drains() {
    let l = queued(1, 4);
    let held = l.try_acquire().unwrap();
    let mut w = l.acquire();
    assert!(poll_once(&mut w).is_pending());
    let mut drained = l.drained();
    assert!(poll_once(&mut drained).is_pending());
    l.close();
    assert!(l.is_closed());
    match poll_once(&mut w) {
        Poll::Ready(Err(Rejected::Closed)) => {}
        other => panic!("waiter not woken with Closed: {other:?}"),
    }
    assert_eq!(l.try_acquire().unwrap_err(), Rejected::Closed);
    assert_eq!(l.health().state(), HealthState::Draining);
    assert!(poll_once(&mut drained).is_pending());
    drop(held);
    assert!(poll_once(&mut drained).is_ready());
    assert_eq!(l.health().state(), HealthState::Closed);
    assert_eq!(l.waiting(), 0);
}

/// A permit is two words (the limiter and its lease packed in one), so it
/// and the result of an acquire travel in registers.
#[test]
fn a_permit_is_two_words() {
    let word = std::mem::size_of::<usize>();
    assert_eq!(std::mem::size_of::<admit::Permit>(), 2 * word.max(8));
    assert_eq!(
        std::mem::size_of::<Result<admit::Permit, Rejected>>(),
        std::mem::size_of::<admit::Permit>()
    );
}

#[test]
fn permits_are_send_sync_static() {
    fn check<T: Send + Sync + 'static>() {}
    check::<admit::Permit>();
    check::<Limiter>();
    check::<admit::Acquire>();
}

#[test]
fn threads_never_exceed_the_cap() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    let l = queued(4, 64);
    let inside = Arc::new(AtomicU32::new(0));
    let max_seen = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let l = l.clone();
            let inside = inside.clone();
            let max_seen = max_seen.clone();
            std::thread::spawn(move || {
                for n in 0..2000 {
                    let permit = if (i + n) % 2 == 0 {
                        l.try_acquire().ok()
                    } else {
                        block_on(l.acquire()).ok()
                    };
                    if let Some(p) = permit {
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        max_seen.fetch_max(now, Ordering::SeqCst);
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(p);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(max_seen.load(Ordering::SeqCst) <= 4);
    assert_eq!(l.in_use(), 0);
    assert_eq!(l.waiting(), 0);
    assert_eq!(l.available(), 4);
}

/// The two ways to bound a wait under tokio's timer: many tasks with short
/// deadlines racing releases, each bounding its wait with `acquire_until`
/// and a sleep, or with `tokio::time::timeout` around `acquire` (which
/// drops the acquire when the time is up). Either way every count comes
/// back; only `acquire_until` is counted as a timeout, since a dropped
/// acquire is a cancellation to the limiter.
#[test]
fn timed_waits_under_tokio() {
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Bound {
        AcquireUntil,
        TokioTimeout,
    }
    for bound in [Bound::AcquireUntil, Bound::TokioTimeout] {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = queued(2, 64);
            let mut tasks = Vec::new();
            for i in 0..64u64 {
                let l = l.clone();
                tasks.push(tokio::spawn(async move {
                    let t = std::time::Duration::from_micros(50 + (i % 7) * 30);
                    let waited = match bound {
                        Bound::AcquireUntil => l.acquire_until(tokio::time::sleep(t)).await,
                        Bound::TokioTimeout => tokio::time::timeout(t, l.acquire())
                            .await
                            .unwrap_or(Err(Rejected::Timeout)),
                    };
                    match waited {
                        Ok(p) => {
                            tokio::time::sleep(std::time::Duration::from_micros(100)).await;
                            drop(p);
                            (1, 0)
                        }
                        Err(Rejected::Timeout) => (0, 1),
                        Err(e) => panic!("{bound:?}: unexpected {e}"),
                    }
                }));
            }
            let (mut got, mut timed_out) = (0, 0);
            for t in tasks {
                let (g, o) = t.await.unwrap();
                got += g;
                timed_out += o;
            }
            assert!(got > 0, "{bound:?}");
            assert_eq!(got + timed_out, 64, "{bound:?}");
            let snap = l.health().snapshot();
            let counted = match bound {
                Bound::AcquireUntil => timed_out,
                Bound::TokioTimeout => 0,
            };
            assert_eq!(snap.rejected_total["timeout"], counted, "{bound:?}");
            assert_eq!(snap.admitted_total, got, "{bound:?}");
            assert_eq!((l.in_use(), l.waiting()), (0, 0), "{bound:?}");
            assert!(l.try_acquire().is_ok(), "{bound:?}");
        });
    }
}

/// A thread's dropped permit stays counted as a token for its next
/// admission; permits that go into the reserve take such tokens back, so
/// an ordinary admission never uses one to get past `capacity - reserve`.
/// With leases or without (a slot, or a bit in the shard's word).
#[test]
fn a_parked_token_never_lets_an_ordinary_caller_into_the_reserve() {
    for leases in [true, false] {
        let l = Limiter::builder()
            .capacity(10)
            .reserve(2)
            .track_leases(leases)
            .build()
            .unwrap();
        drop(l.try_acquire().unwrap());
        assert_eq!(l.faults().parked_tokens(), 1, "this thread parked a token");
        assert_eq!(l.in_use(), 0);
        let critical: Vec<_> = (0..9).map(|_| l.try_acquire_critical().unwrap()).collect();
        assert_eq!(l.in_use(), 9);
        assert_eq!(
            l.faults().parked_tokens(),
            0,
            "the reserve took the token back"
        );
        assert_eq!(l.try_acquire().unwrap_err(), Rejected::Full);
        drop(critical);
        assert_eq!(l.in_use(), 0);
        let ordinary: Vec<_> = (0..8).map(|_| l.try_acquire().unwrap()).collect();
        assert_eq!(l.try_acquire().unwrap_err(), Rejected::Full);
        drop(ordinary);
    }
}

/// Without leases, a dropped permit parks its unit in its thread's shard
/// and the thread's next admission takes it back; the token is never a
/// permit held, and every event that needs the count takes it back.
#[test]
fn an_untracked_token_is_reused_and_taken_back_when_needed() {
    let l = Limiter::builder()
        .capacity(4)
        .track_leases(false)
        .build()
        .unwrap();
    drop(l.try_acquire().unwrap());
    assert_eq!(l.faults().parked_tokens(), 1);
    assert_eq!((l.in_use(), l.available()), (0, 4));
    let p = l.try_acquire().unwrap();
    assert_eq!(
        l.faults().parked_tokens(),
        0,
        "the admission took the token"
    );
    assert_eq!(l.in_use(), 1);
    drop(p);
    assert_eq!(l.health().snapshot().admitted_total, 2);
    // A shrink takes the token back: the count it held may not fit.
    l.set_capacity(1).unwrap();
    assert_eq!(l.faults().parked_tokens(), 0);
    let only = l.try_acquire().unwrap();
    assert_eq!(l.try_acquire().unwrap_err(), Rejected::Full);
    drop(only);
    // A close takes it back too, so the limiter drains.
    l.set_capacity(4).unwrap();
    drop(l.try_acquire().unwrap());
    drop(l.try_acquire().unwrap());
    assert_eq!(l.faults().parked_tokens(), 1);
    l.close();
    assert_eq!(l.faults().parked_tokens(), 0);
    block_on(l.drained());
}
