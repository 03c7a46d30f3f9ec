//! A request whose queue timeout runs out is a timeout everywhere the
//! limiter reports it: the health snapshot counts it under `timeout`, and
//! the `admit_wait_seconds` histogram records its wait with outcome
//! `timeout`, not `cancelled` (which is for requests dropped while waiting).

mod support;

use admit::{Limiter, Rejected};
use admit_tower::{AdmitLayer, HttpAdmitLayer, Overloaded};
use http::{Request, Response, StatusCode};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;
use support::mock;
use tower::{service_fn, Layer, Service, ServiceExt};

/// The waits of `limiter` the histogram took since the last look, counted
/// by outcome (a snapshot drains a histogram's samples, so each look sees
/// only what came after the one before).
fn new_waits(snapshotter: &Snapshotter, limiter: &str) -> BTreeMap<String, usize> {
    let mut outcomes = BTreeMap::new();
    for (key, .., value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        if key.name() != "admit_wait_seconds"
            || !key
                .labels()
                .any(|l| l.key() == "limiter" && l.value() == limiter)
        {
            continue;
        }
        let outcome = key
            .labels()
            .find(|l| l.key() == "outcome")
            .expect("every wait has an outcome");
        let DebugValue::Histogram(samples) = value else {
            panic!("admit_wait_seconds is not a histogram: {value:?}");
        };
        if !samples.is_empty() {
            *outcomes.entry(outcome.value().to_owned()).or_default() += samples.len();
        }
    }
    outcomes
}

/// `outcome`, once.
fn once(outcome: &str) -> BTreeMap<String, usize> {
    BTreeMap::from([(outcome.to_owned(), 1)])
}

fn limiter(name: &str) -> Limiter {
    Limiter::builder()
        .capacity(1)
        .queue_limit(4)
        .name(name)
        .build()
        .unwrap()
}

// The recorder is the test thread's, and the current-thread runtime polls
// every future on that thread.
#[tokio::test(start_paused = true)]
async fn a_queue_timeout_is_recorded_as_a_timeout_not_a_cancellation() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    // The tower layer.
    let tower = limiter("tower");
    let (inner, mut handle) = mock::<(), ()>();
    let mut svc = AdmitLayer::new(tower.clone())
        .queue()
        .queue_timeout(Duration::from_secs(2))
        .layer(inner);
    let held = tower.try_acquire().unwrap();
    // Bounded, so a missing timeout fails instead of waiting for ever.
    let err = tokio::time::timeout(Duration::from_secs(60), svc.call(()))
        .await
        .expect("shed when the queue timeout ran out")
        .unwrap_err();
    let err = err.downcast::<Overloaded>().expect("an Overloaded error");
    assert_eq!(err.reason(), Rejected::Timeout);
    assert!(
        handle.try_next().is_none(),
        "the inner service never saw it"
    );
    assert_eq!(tower.waiting(), 0);
    assert_eq!(tower.health().snapshot().rejected_total["timeout"], 1);
    assert_eq!(new_waits(&snapshotter, "tower"), once("timeout"));

    // A request dropped while it waits is the one that is cancelled: the
    // two outcomes stay apart.
    let dropped = svc.call(());
    drop(dropped);
    assert_eq!(new_waits(&snapshotter, "tower"), once("cancelled"));
    assert_eq!(tower.health().snapshot().rejected_total["timeout"], 1);
    drop(held);

    // The HTTP layer shares the admission step; its refusal is unchanged.
    let http = limiter("http");
    let inner = service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::from("hello")))
    });
    let svc = HttpAdmitLayer::new(http.clone())
        .queue()
        .queue_timeout(Duration::from_millis(250))
        .layer(inner);
    let _held = http.try_acquire().unwrap();
    let res = tokio::time::timeout(Duration::from_secs(60), svc.oneshot(Request::new(())))
        .await
        .expect("refused when the queue timeout ran out")
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(http.waiting(), 0);
    assert_eq!(http.health().snapshot().rejected_total["timeout"], 1);
    assert_eq!(new_waits(&snapshotter, "http"), once("timeout"));
}
