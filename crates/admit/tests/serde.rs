//! With feature `serde`, what the health handle reports can be sent as JSON:
//! snapshots, transitions and rejection reasons, in the labels metrics use.

use admit::{HealthState, Limiter, Rejected};
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
