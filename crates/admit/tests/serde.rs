//! With feature `serde`, what the health handle reports can be sent as JSON:
//! snapshots, transitions and rejection reasons, in the labels metrics use.

use admit::{Cause, HealthState, Limiter, Rejected, Snapshot};
use futures_util::StreamExt;

#[test]
fn rejections_serialise_as_their_labels() {
    for r in Rejected::ALL {
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
    }
}

#[test]
fn transitions_serialise() {
    let limiter = Limiter::builder().capacity(1).name("t").build().unwrap();
    let mut changes = limiter.health().changes();
    let _held = limiter.try_acquire().unwrap();
    // The state is derived when the health is read.
    assert_eq!(limiter.health().state(), HealthState::Saturated);
    let t = futures::executor::block_on(changes.next()).unwrap();
    let json = serde_json::to_value(t).unwrap();
    assert_eq!(json["from"], "healthy");
    assert_eq!(json["to"], "saturated");
    assert_eq!(json["missed"], 0);
}

#[test]
fn build_errors_convert_to_io_errors() {
    fn main_like() -> std::io::Result<Limiter> {
        Ok(Limiter::builder().capacity(5).max_capacity(2).build()?)
    }
    let e = main_like().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("max_capacity"), "{e}");
}

/// A snapshot read back from its JSON is the snapshot that was written, for
/// every state (a degraded one keeps its cause) and every rejection reason.
#[test]
fn snapshots_round_trip_through_json() {
    let limiter = Limiter::builder()
        .capacity(1)
        .queue_limit(1)
        .name("rt")
        .build()
        .unwrap();
    let _held = limiter.try_acquire().unwrap();
    for r in Rejected::ALL {
        limiter.record_rejection(r);
    }
    let snap = limiter.health().snapshot();
    assert_eq!(snap.state, HealthState::Saturated);
    assert_eq!(snap.rejected_total.len(), Rejected::ALL.len());

    let mut samples = vec![snap.clone()];
    for cause in [Cause::Stalled, Cause::Leaking, Cause::WatchdogSilent] {
        let mut s = snap.clone();
        s.state = HealthState::Degraded(cause);
        s.cause = Some(cause);
        samples.push(s);
    }
    let mut with_adaptive = snap.clone();
    with_adaptive.adaptive = Some(admit::adaptive::AdaptiveView {
        algorithm: admit::adaptive::Kind::Gradient,
        limit: 7,
        min: 1,
        max: 9,
        last_decision: admit::adaptive::Reason::Decrease,
        decisions: 3,
    });
    samples.push(with_adaptive);
    limiter.close();
    samples.push(limiter.health().snapshot());

    for s in samples {
        let json = serde_json::to_string(&s).unwrap();
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s, "{json}");
    }
}

/// A reader accepts snapshots with fewer or more fields than its own, and
/// refuses states and rejection reasons it cannot represent.
#[test]
fn snapshots_read_partial_input_and_refuse_unknown_names() {
    let s: Snapshot =
        serde_json::from_str(r#"{"capacity":16,"in_use":1,"rejected_total":{"full":2},"new":1}"#)
            .unwrap();
    assert_eq!((s.capacity, s.in_use), (16, 1));
    assert_eq!(s.state, HealthState::Healthy);
    assert_eq!(s.rejected_total["full"], 2);
    assert_eq!(s.rejected_sum(), 2);

    let d: Snapshot = serde_json::from_str(r#"{"state":"degraded","cause":"leaking"}"#).unwrap();
    assert_eq!(d.state, HealthState::Degraded(Cause::Leaking));
    assert_eq!(d.cause, Some(Cause::Leaking));

    for (bad, says) in [
        (r#"{"state":"degraded"}"#, "without a cause"),
        (r#"{"state":"wedged"}"#, "unknown limiter state \"wedged\""),
        (
            r#"{"rejected_total":{"capacity":1}}"#,
            "unknown rejection reason \"capacity\"",
        ),
    ] {
        let e = serde_json::from_str::<Snapshot>(bad).unwrap_err();
        assert!(e.to_string().contains(says), "{bad}: {e}");
    }
    // What an empty object reads as is the empty snapshot.
    assert_eq!(
        serde_json::from_str::<Snapshot>("{}").unwrap(),
        Snapshot::default()
    );
}
