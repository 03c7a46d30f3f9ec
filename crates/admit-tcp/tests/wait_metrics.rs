//! A connection whose `Policy::Wait` timeout runs out is a timeout
//! everywhere the limiter reports it: the health snapshot counts it under
//! `timeout`, and the `admit_wait_seconds` histogram records its wait with
//! outcome `timeout`, not `cancelled`.

mod common;

use admit::Limiter;
use admit_tcp::{AdmitListener, Policy};
use common::{connect_from, eventually, read_until_close, serve, Outcome};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use std::collections::BTreeMap;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(5);

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

// The recorder is the test thread's, and the current-thread runtime runs
// the accept loop's task, where a queued connection's wait ends, on that
// thread.
#[tokio::test(flavor = "current_thread")]
async fn a_wait_that_runs_out_is_recorded_as_a_timeout_not_a_cancellation() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let limiter = Limiter::builder()
        .capacity(1)
        .queue_limit(4)
        .name("tcp")
        .build()
        .unwrap();
    let listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::Wait(Duration::from_millis(100)))
        .busy_message(&b"BUSY\n"[..])
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut rx = serve(listener);
    let _c1 = connect_from(2, addr).await.unwrap();
    let s1 = rx.recv().await.unwrap();

    // Queued, then out of time: the busy message, as ever.
    let mut c2 = connect_from(3, addr).await.unwrap();
    assert_eq!(
        read_until_close(&mut c2, LONG).await,
        Outcome::Closed(b"BUSY\n".to_vec())
    );
    let snap = limiter.health().snapshot();
    assert_eq!(snap.rejected_total["timeout"], 1);
    assert_eq!(snap.waiting, 0);
    assert_eq!(new_waits(&snapshotter, "tcp"), once("timeout"));

    // Queued, then admitted when the permit comes free in time.
    let _c3 = connect_from(4, addr).await.unwrap();
    eventually(LONG, "the third connection queues", || {
        limiter.waiting() == 1
    })
    .await;
    drop(s1);
    let _s3 = tokio::time::timeout(LONG, rx.recv())
        .await
        .expect("admitted once the permit came free")
        .unwrap();
    assert_eq!(new_waits(&snapshotter, "tcp"), once("granted"));
    assert_eq!(limiter.health().snapshot().rejected_total["timeout"], 1);
}
