//! The scenarios of tower's own `ConcurrencyLimit` suite, replayed against
//! `AdmitLayer` where the semantics match, and turned around where they
//! differ on purpose (readiness never takes a permit; a full limiter sheds
//! instead of making `poll_ready` wait). Then shedding and queueing cases.

mod support;

use admit::{Limiter, Rejected};
use admit_tower::{AdmitLayer, BoxError, Overloaded};
use std::task::Poll;
use std::time::Duration;
use support::{mock, poll_ready, Task};
use tower::{Layer, Service};

fn overloaded(err: BoxError) -> Overloaded {
    *err.downcast::<Overloaded>()
        .expect("the error should be Overloaded")
}

fn ready_err<T: std::fmt::Debug>(poll: Poll<Result<T, BoxError>>) -> Overloaded {
    match poll {
        Poll::Ready(Err(err)) => overloaded(err),
        other => panic!("expected an immediate error, got {other:?}"),
    }
}

#[tokio::test]
async fn admits_up_to_capacity_then_sheds_and_recovers() {
    let limiter = Limiter::new(2);
    let (inner, mut handle) = mock::<&str, &str>();
    let mut svc = AdmitLayer::new(limiter.clone()).layer(inner);

    assert!(poll_ready(&mut svc).is_ready());
    let mut r1 = Task::new(svc.call("hello 1"));
    assert!(poll_ready(&mut svc).is_ready());
    let mut r2 = Task::new(svc.call("hello 2"));
    assert_eq!(limiter.in_use(), 2);

    // At the cap readiness still says yes, and the third request is shed at
    // once without reaching the service.
    assert!(poll_ready(&mut svc).is_ready());
    let mut r3 = Task::new(svc.call("hello 3"));
    assert_eq!(ready_err(r3.poll()).reason(), Rejected::Full);

    let p1 = handle.next();
    assert_eq!(p1.request, "hello 1");
    let p2 = handle.next();
    assert_eq!(p2.request, "hello 2");
    assert!(
        handle.try_next().is_none(),
        "the shed request must not reach the service"
    );

    assert!(r1.poll().is_pending());
    p1.respond("world 1");
    assert!(r1.is_woken());
    assert_eq!(r1.poll().map(Result::unwrap), Poll::Ready("world 1"));
    assert_eq!(limiter.in_use(), 1);

    // One slot is free again: the next request gets through.
    let r4 = svc.call("hello 4");
    assert_eq!(limiter.in_use(), 2);
    assert!(matches!(
        Task::new(svc.call("hello 5")).poll(),
        Poll::Ready(Err(_))
    ));
    handle.next().respond("world 4");
    p2.respond("world 2");
    assert_eq!(r4.await.unwrap(), "world 4");
    assert_eq!(r2.poll().map(Result::unwrap), Poll::Ready("world 2"));
    assert_eq!(limiter.in_use(), 0);
}

#[tokio::test]
async fn requests_called_without_polling_other_clones_are_limited_too() {
    // tower's "without poll_ready" case: clones that never polled for
    // readiness in between still share the cap.
    let limiter = Limiter::new(2);
    let (inner, mut handle) = mock::<u32, u32>();
    let svc = AdmitLayer::new(limiter.clone()).layer(inner);
    let (mut a, mut b, mut c) = (svc.clone(), svc.clone(), svc);

    let r1 = a.call(1);
    let r2 = b.call(2);
    let err = c.call(3).await.unwrap_err();
    assert_eq!(overloaded(err).reason(), Rejected::Full);
    handle.next().respond(10);
    handle.next().respond(20);
    assert!(handle.try_next().is_none());
    assert_eq!(r1.await.unwrap(), 10);
    let r4 = c.call(4);
    handle.next().respond(40);
    assert_eq!(r2.await.unwrap(), 20);
    assert_eq!(r4.await.unwrap(), 40);
    assert_eq!(limiter.in_use(), 0);
}

#[tokio::test]
async fn zero_capacity_sheds_every_request_instead_of_never_being_ready() {
    // tower's `ConcurrencyLimit` with no capacity is pending forever; here
    // the service is ready and every request is refused with a reason.
    let limiter = Limiter::new(0);
    let (inner, mut handle) = mock::<(), ()>();
    let mut svc = AdmitLayer::new(limiter.clone()).layer(inner);
    assert!(poll_ready(&mut svc).is_ready());
    let err = svc.call(()).await.unwrap_err();
    assert_eq!(overloaded(err).reason(), Rejected::Full);
    assert!(handle.try_next().is_none());
    assert_eq!(limiter.health().snapshot().rejected_total["full"], 1);
}

#[tokio::test]
async fn readiness_reserves_nothing_so_idle_connections_hold_no_permit() {
    // tower's "reserve capacity without sending request" takes the slot in
    // `poll_ready`; that is the keep-alive trap this layer avoids.
    let limiter = Limiter::new(1);
    let (inner, mut handle) = mock::<&str, &str>();
    let mut s1 = AdmitLayer::new(limiter.clone()).layer(inner);
    let mut s2 = s1.clone();

    assert!(poll_ready(&mut s1).is_ready());
    assert_eq!(limiter.in_use(), 0, "readiness must not take a permit");
    assert!(poll_ready(&mut s2).is_ready());

    let r2 = s2.call("from s2");
    handle.next().respond("ok");
    assert_eq!(r2.await.unwrap(), "ok");

    // s1 was ready all along and can still send.
    let r1 = s1.call("from s1");
    handle.next().respond("ok");
    assert_eq!(r1.await.unwrap(), "ok");
}

#[tokio::test]
async fn dropping_a_service_keeps_in_flight_permits_until_their_futures_end() {
    // tower's "service drop frees capacity": services hold nothing here, so
    // dropping one frees nothing; a request already admitted keeps its
    // permit until its own future ends.
    let limiter = Limiter::new(1);
    let (inner, mut handle) = mock::<(), ()>();
    let mut s1 = AdmitLayer::new(limiter.clone()).layer(inner);
    let mut s2 = s1.clone();

    assert!(poll_ready(&mut s1).is_ready());
    let r1 = s1.call(());
    drop(s1);
    assert_eq!(limiter.in_use(), 1);
    assert!(s2.call(()).await.is_err());

    handle.next().respond(());
    r1.await.unwrap();
    assert_eq!(limiter.in_use(), 0);
    let r2 = s2.call(());
    handle.next().respond(());
    r2.await.unwrap();
}

#[tokio::test]
async fn inner_error_is_passed_on_boxed_and_releases_the_permit() {
    let limiter = Limiter::new(1);
    let (inner, mut handle) = mock::<&str, ()>();
    let mut s1 = AdmitLayer::new(limiter.clone()).layer(inner);
    let mut s2 = s1.clone();

    let r1 = s1.call("hello");
    handle.next().fail("boom");
    let err = r1.await.unwrap_err();
    assert!(!err.is::<Overloaded>());
    assert_eq!(err.to_string(), "boom");
    assert_eq!(limiter.in_use(), 0);

    let r2 = s2.call("again");
    assert_eq!(handle.next().request, "again");
    drop(r2);
}

#[tokio::test]
async fn dropping_the_response_future_releases_the_permit() {
    let limiter = Limiter::new(1);
    let (inner, mut handle) = mock::<&str, ()>();
    let mut s1 = AdmitLayer::new(limiter.clone()).layer(inner);
    let mut s2 = s1.clone();

    let r1 = s1.call("hello");
    assert!(s2.call("refused").await.is_err());
    drop(r1);
    assert_eq!(limiter.in_use(), 0);

    let r2 = s2.call("admitted");
    assert_eq!(handle.next().request, "hello");
    assert_eq!(handle.next().request, "admitted");
    drop(r2);
}

#[tokio::test]
async fn queued_waiters_are_woken_one_at_a_time_in_order() {
    // tower's "multi waiters", with the wait moved from `poll_ready` into
    // the response future: releasing one permit wakes the oldest waiter
    // only, and a waiting request reaches the service only once admitted.
    let limiter = Limiter::builder()
        .capacity(1)
        .queue_limit(4)
        .build()
        .unwrap();
    let (inner, mut handle) = mock::<u8, u8>();
    let mut svc = AdmitLayer::new(limiter.clone()).queue().layer(inner);

    let r1 = svc.call(1);
    let mut r2 = Task::new(svc.call(2));
    let mut r3 = Task::new(svc.call(3));
    assert!(r2.poll().is_pending());
    assert!(r3.poll().is_pending());
    assert_eq!(limiter.waiting(), 2);
    let p1 = handle.next();
    assert!(
        handle.try_next().is_none(),
        "waiters must not reach the service"
    );

    p1.respond(1);
    assert_eq!(r1.await.unwrap(), 1);
    assert!(r2.is_woken());
    assert!(!r3.is_woken());
    assert!(r2.poll().is_pending());
    let p2 = handle.next();
    assert_eq!(p2.request, 2);
    assert!(handle.try_next().is_none());

    p2.respond(2);
    assert_eq!(r2.poll().map(Result::unwrap), Poll::Ready(2));
    assert!(r3.is_woken());
    assert!(r3.poll().is_pending());
    handle.next().respond(3);
    assert_eq!(r3.poll().map(Result::unwrap), Poll::Ready(3));
    assert_eq!(limiter.in_use(), 0);
}

#[tokio::test]
async fn a_cancelled_waiter_passes_its_turn_to_the_next() {
    let limiter = Limiter::builder()
        .capacity(1)
        .queue_limit(4)
        .build()
        .unwrap();
    let (inner, mut handle) = mock::<u8, u8>();
    let mut svc = AdmitLayer::new(limiter.clone()).queue().layer(inner);

    let r1 = svc.call(1);
    let mut r2 = Task::new(svc.call(2));
    let mut r3 = Task::new(svc.call(3));
    assert!(r2.poll().is_pending());
    assert!(r3.poll().is_pending());
    drop(r2);
    handle.next().respond(1);
    r1.await.unwrap();
    assert!(r3.is_woken());
    assert!(r3.poll().is_pending());
    assert_eq!(handle.next().request, 3);
    assert!(handle.try_next().is_none());
}

#[tokio::test]
async fn a_full_queue_sheds_with_queue_full() {
    let limiter = Limiter::builder()
        .capacity(1)
        .queue_limit(1)
        .build()
        .unwrap();
    let (inner, _handle) = mock::<u8, u8>();
    let mut svc = AdmitLayer::new(limiter.clone()).queue().layer(inner);

    let _r1 = svc.call(1);
    let mut r2 = Task::new(svc.call(2));
    assert!(r2.poll().is_pending());
    let err = svc.call(3).await.unwrap_err();
    assert_eq!(overloaded(err).reason(), Rejected::QueueFull);
}

#[tokio::test]
async fn closing_the_limiter_sheds_new_and_queued_requests() {
    let limiter = Limiter::builder()
        .capacity(1)
        .queue_limit(2)
        .build()
        .unwrap();
    let (inner, mut handle) = mock::<u8, u8>();
    let mut svc = AdmitLayer::new(limiter.clone()).queue().layer(inner);

    let r1 = svc.call(1);
    let mut r2 = Task::new(svc.call(2));
    assert!(r2.poll().is_pending());
    limiter.close();
    assert!(r2.is_woken());
    match r2.poll() {
        Poll::Ready(Err(err)) => assert_eq!(overloaded(err).reason(), Rejected::Closed),
        other => panic!("expected Closed, got {other:?}"),
    }
    let err = svc.call(3).await.unwrap_err();
    assert_eq!(overloaded(err).reason(), Rejected::Closed);

    // The admitted request still completes, and the drain follows it.
    handle.next().respond(1);
    assert_eq!(r1.await.unwrap(), 1);
    limiter.drained().await;
}

#[tokio::test]
async fn the_overloaded_error_advises_when_to_retry() {
    let limiter = Limiter::new(0);
    let (inner, _handle) = mock::<(), ()>();
    let mut svc = AdmitLayer::new(limiter)
        .retry_after(std::time::Duration::from_millis(2500))
        .layer(inner);
    let err = overloaded(svc.call(()).await.unwrap_err());
    assert_eq!(err.retry_after().as_millis(), 2500);
    assert!(err.to_string().contains("retry after 3s"), "{err}");
    let res = err.http_response::<String>();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "3");
}

#[tokio::test]
async fn many_concurrent_tasks_never_exceed_the_cap() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tower::ServiceExt;

    let limiter = Limiter::new(4);
    let live = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let inner = {
        let (live, peak) = (live.clone(), peak.clone());
        tower::service_fn(move |_: ()| {
            let (live, peak) = (live.clone(), peak.clone());
            async move {
                let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                live.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(())
            }
        })
    };
    let svc = AdmitLayer::new(limiter.clone()).layer(inner);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move { svc.oneshot(()).await.is_ok() }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert!(admitted >= 1);
    assert!(peak.load(Ordering::SeqCst) <= 4);
    let snap = limiter.health().snapshot();
    assert_eq!(snap.admitted_total as usize, admitted);
    assert_eq!(snap.rejected_total["full"] as usize, 64 - admitted);
    assert_eq!(snap.in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn a_queue_timeout_sheds_a_waiter_with_timeout() {
    let limiter = Limiter::builder()
        .capacity(1)
        .queue_limit(4)
        .build()
        .unwrap();
    let (inner, mut handle) = mock::<(), ()>();
    let mut svc = AdmitLayer::new(limiter.clone())
        .queue()
        .queue_timeout(Duration::from_secs(2))
        .layer(inner);

    let _held = limiter.try_acquire().unwrap();
    let started = tokio::time::Instant::now();
    // Bounded, so a missing timeout fails instead of waiting for ever.
    let err = tokio::time::timeout(Duration::from_secs(60), svc.call(()))
        .await
        .expect("shed when the queue timeout ran out")
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    let err = overloaded(err);
    assert_eq!(err.reason(), Rejected::Timeout);
    assert_eq!(err.retry_after(), admit_tower::DEFAULT_RETRY_AFTER);
    assert!(
        handle.try_next().is_none(),
        "the inner service never saw it"
    );
    assert_eq!(limiter.waiting(), 0);
    assert_eq!(limiter.health().snapshot().rejected_total["timeout"], 1);
}
