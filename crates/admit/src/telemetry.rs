//! What the `metrics` feature publishes through the `metrics` facade.
//!
//! Two kinds of figures:
//!
//! * the snapshot's gauges and counters, set from a [`Snapshot`] by
//!   [`publish`] (called by each watchdog tick, or by whoever calls
//!   [`Health::publish_metrics`](crate::Health::publish_metrics)), each time
//!   with its description;
//! * the wait-time histogram, recorded by a queued acquire as it leaves the
//!   queue ([`WaitClock`]): a wait is an event, not a level, so it cannot be
//!   read back from a snapshot.
//!
//! Without the feature, [`WaitClock`] is empty and does nothing.

#[cfg(feature = "metrics")]
use crate::snapshot::{HealthState, Snapshot};

/// The wait-time histogram's name.
#[cfg(feature = "metrics")]
pub(crate) const WAIT_SECONDS: &str = "admit_wait_seconds";

/// Times one acquire's stay in the queue: started when it takes a ticket,
/// stopped (once) when it leaves with a permit, a rejection or by being
/// dropped. An acquire admitted without queueing never starts it, so the
/// fast path reads no clock.
#[derive(Debug, Default)]
pub(crate) struct WaitClock {
    #[cfg(feature = "metrics")]
    since: Option<std::time::Instant>,
}

impl WaitClock {
    /// The acquire joined the queue.
    #[inline]
    pub(crate) fn start(&mut self) {
        #[cfg(feature = "metrics")]
        {
            self.since = Some(std::time::Instant::now());
        }
    }

    /// The acquire left the queue: records how long it waited, labelled with
    /// the limiter's name and `outcome` (`"granted"`, a rejection's label,
    /// or `"cancelled"`). Does nothing if it never queued or was already
    /// stopped.
    ///
    /// This calls the recorder in effect on the calling thread, after the
    /// limiter's own work for the acquire is done: the limiter's state never
    /// waits on a recorder.
    #[inline]
    pub(crate) fn stop(&mut self, limiter: &str, outcome: &'static str) {
        #[cfg(feature = "metrics")]
        if let Some(since) = self.since.take() {
            metrics::histogram!(WAIT_SECONDS, "limiter" => limiter.to_owned(), "outcome" => outcome)
                .record(since.elapsed().as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (limiter, outcome);
    }
}

/// Describes every metric the crate publishes to the recorder in effect
/// (descriptions are kept by name, so describing again changes nothing).
#[cfg(feature = "metrics")]
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "admit_capacity",
        Unit::Count,
        "Permits the limiter may grant at once."
    );
    describe_gauge!("admit_in_use", Unit::Count, "Permits held now.");
    describe_gauge!(
        "admit_waiting",
        Unit::Count,
        "Callers waiting in the limiter's queue for a permit."
    );
    describe_gauge!(
        "admit_pressure",
        "Permits held over the capacity (1 when the capacity is 0)."
    );
    describe_gauge!(
        "admit_oldest_lease_seconds",
        Unit::Seconds,
        "Age of the oldest permit held (0 when none is)."
    );
    describe_gauge!(
        "admit_state",
        "Health state: 0 healthy, 1 saturated, 2 degraded, 3 draining, 4 closed."
    );
    describe_gauge!(
        "admit_watchdog_alive",
        "1 while a watchdog is attached and has ticked within three intervals, else 0."
    );
    describe_gauge!(
        "admit_watchdog_last_tick_seconds",
        Unit::Seconds,
        "Time since the watchdog's last tick (0 if none was ever attached)."
    );
    describe_counter!(
        "admit_admitted_total",
        Unit::Count,
        "Permits granted since the limiter was built."
    );
    describe_counter!(
        "admit_rejected_total",
        Unit::Count,
        "Callers refused a permit, by reason (full, queue_full, closed, timeout, per_ip)."
    );
    describe_counter!(
        "admit_revoked_total",
        Unit::Count,
        "Permits revoked (for idleness, age, by id, or by the watchdog)."
    );
    describe_counter!(
        "admit_reclaimed_total",
        Unit::Count,
        "Revoked permits whose holders never let go, reclaimed by force."
    );
    describe_counter!(
        "admit_repaired_total",
        Unit::Count,
        "Repairs made: stalled hand-offs re-driven and count drift corrected."
    );
    describe_gauge!(
        "admit_adaptive_limit",
        Unit::Count,
        "The capacity the adaptive controller chose last."
    );
    describe_counter!(
        "admit_adaptive_decisions_total",
        Unit::Count,
        "Decisions the adaptive controller has made."
    );
    describe_histogram!(
        WAIT_SECONDS,
        Unit::Seconds,
        "How long an acquire waited in the queue, by outcome: granted, closed, timeout or cancelled \
         (dropped while waiting)."
    );
}

/// Publishes `snap` (see [`Health::publish_metrics`](crate::Health::publish_metrics)).
#[cfg(feature = "metrics")]
pub(crate) fn publish(snap: &Snapshot) {
    describe();
    let l = [("limiter", snap.name.clone())];
    metrics::gauge!("admit_capacity", &l).set(snap.capacity as f64);
    metrics::gauge!("admit_in_use", &l).set(snap.in_use as f64);
    metrics::gauge!("admit_waiting", &l).set(snap.waiting as f64);
    metrics::gauge!("admit_pressure", &l).set(snap.pressure);
    metrics::gauge!("admit_oldest_lease_seconds", &l).set(snap.oldest_lease_ms as f64 / 1e3);
    let state = match snap.state {
        HealthState::Healthy => 0.0,
        HealthState::Saturated => 1.0,
        HealthState::Degraded(_) => 2.0,
        HealthState::Draining => 3.0,
        HealthState::Closed => 4.0,
    };
    metrics::gauge!("admit_state", &l).set(state);
    metrics::gauge!("admit_watchdog_alive", &l).set(if snap.watchdog.alive { 1.0 } else { 0.0 });
    metrics::gauge!("admit_watchdog_last_tick_seconds", &l)
        .set(snap.watchdog.last_tick_ms as f64 / 1e3);
    metrics::counter!("admit_admitted_total", &l).absolute(snap.admitted_total);
    for (reason, n) in &snap.rejected_total {
        metrics::counter!("admit_rejected_total", "limiter" => snap.name.clone(), "reason" => *reason)
            .absolute(*n);
    }
    metrics::counter!("admit_revoked_total", &l).absolute(snap.revoked_total);
    metrics::counter!("admit_reclaimed_total", &l).absolute(snap.reclaimed_total);
    metrics::counter!("admit_repaired_total", &l).absolute(snap.repaired_total);
    if let Some(a) = &snap.adaptive {
        let l = [
            ("limiter", snap.name.clone()),
            ("algorithm", a.algorithm.as_str().to_owned()),
        ];
        metrics::gauge!("admit_adaptive_limit", &l).set(a.limit as f64);
        metrics::counter!("admit_adaptive_decisions_total", &l).absolute(a.decisions);
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::WAIT_SECONDS;
    use crate::{Limiter, Rejected};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    use metrics_util::MetricKind;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use std::time::{Duration, Instant};

    /// Every sample of the wait histogram for `limiter` and `outcome`.
    fn waits(snapshotter: &Snapshotter, limiter: &str, outcome: &str) -> Vec<f64> {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| {
                let labels: Vec<_> = key.key().labels().map(|l| (l.key(), l.value())).collect();
                key.key().name() == WAIT_SECONDS
                    && labels.contains(&("limiter", limiter))
                    && labels.contains(&("outcome", outcome))
            })
            .flat_map(|(.., value)| match value {
                DebugValue::Histogram(samples) => {
                    samples.into_iter().map(|s| s.0).collect::<Vec<_>>()
                }
                other => panic!("{WAIT_SECONDS} is not a histogram: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn every_published_metric_is_described() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let limiter = Limiter::builder()
            .capacity(1)
            .name("described")
            .build()
            .unwrap();
        let _held = limiter.try_acquire().unwrap();
        assert_eq!(limiter.try_acquire().unwrap_err(), Rejected::Full);
        metrics::with_local_recorder(&recorder, || {
            let health = limiter.health();
            health.publish_metrics(&health.snapshot());
        });

        let published = snapshotter.snapshot().into_vec();
        let expected = [
            ("admit_capacity", MetricKind::Gauge),
            ("admit_in_use", MetricKind::Gauge),
            ("admit_waiting", MetricKind::Gauge),
            ("admit_pressure", MetricKind::Gauge),
            ("admit_oldest_lease_seconds", MetricKind::Gauge),
            ("admit_state", MetricKind::Gauge),
            ("admit_watchdog_alive", MetricKind::Gauge),
            ("admit_watchdog_last_tick_seconds", MetricKind::Gauge),
            ("admit_admitted_total", MetricKind::Counter),
            ("admit_rejected_total", MetricKind::Counter),
            ("admit_revoked_total", MetricKind::Counter),
            ("admit_reclaimed_total", MetricKind::Counter),
            ("admit_repaired_total", MetricKind::Counter),
        ];
        for (name, kind) in expected {
            let (key, unit, description, _) = published
                .iter()
                .find(|(key, ..)| key.key().name() == name)
                .unwrap_or_else(|| panic!("{name} not published"));
            assert_eq!(key.kind(), kind, "{name}");
            let description = description
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: no description"));
            assert!(!description.is_empty(), "{name}");
            if name.ends_with("_seconds") {
                assert_eq!(*unit, Some(metrics::Unit::Seconds), "{name}");
            }
        }
        // Nothing published goes undescribed.
        for (key, _, description, _) in &published {
            assert!(
                description.is_some(),
                "{} has no description",
                key.key().name()
            );
        }
        let in_use = published
            .iter()
            .find(|(key, ..)| key.key().name() == "admit_in_use")
            .unwrap();
        assert_eq!(in_use.3, DebugValue::Gauge(1.0.into()));
        let full = published
            .iter()
            .find(|(key, ..)| {
                key.key().name() == "admit_rejected_total"
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "reason" && l.value() == "full")
            })
            .unwrap();
        assert_eq!(full.3, DebugValue::Counter(1));
        // The histogram is described with the rest, before its first sample.
        metrics::with_local_recorder(&recorder, || {
            let mut waiter = pin!(limiter.acquire());
            let mut cx = Context::from_waker(Waker::noop());
            assert!(waiter.as_mut().poll(&mut cx).is_pending());
        });
        let histogram = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .find(|(key, ..)| key.key().name() == WAIT_SECONDS)
            .expect("a cancelled wait is recorded");
        assert_eq!(histogram.0.kind(), MetricKind::Histogram);
        assert_eq!(histogram.1, Some(metrics::Unit::Seconds));
        assert!(histogram.2.is_some(), "{WAIT_SECONDS} has no description");
    }

    #[test]
    fn queued_acquires_record_how_long_they_waited() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let limiter = Limiter::builder()
            .capacity(1)
            .queue_limit(4)
            .name("waits")
            .build()
            .unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        metrics::with_local_recorder(&recorder, || {
            // Admitted at once: no wait to record.
            let held = futures::executor::block_on(limiter.acquire()).unwrap();
            assert!(waits(&snapshotter, "waits", "granted").is_empty());

            // Queued, then granted when the holder lets go.
            let queued_at = Instant::now();
            let mut waiter = pin!(limiter.acquire());
            assert!(waiter.as_mut().poll(&mut cx).is_pending());
            std::thread::sleep(Duration::from_millis(30));
            drop(held);
            let Poll::Ready(Ok(held)) = waiter.as_mut().poll(&mut cx) else {
                panic!("the released permit goes to the waiter");
            };
            let waited = queued_at.elapsed().as_secs_f64();
            let granted = waits(&snapshotter, "waits", "granted");
            assert_eq!(granted.len(), 1, "{granted:?}");
            assert!(
                (0.03..=waited).contains(&granted[0]),
                "recorded {} s, waited {waited} s",
                granted[0]
            );

            // Queued, then dropped (a caller's timeout): cancelled.
            let mut gave_up = Box::pin(limiter.acquire());
            assert!(gave_up.as_mut().poll(&mut cx).is_pending());
            drop(gave_up);
            assert_eq!(waits(&snapshotter, "waits", "cancelled").len(), 1);

            // Queued, then the limiter closes: refused as closed.
            let mut refused = pin!(limiter.acquire());
            assert!(refused.as_mut().poll(&mut cx).is_pending());
            limiter.close();
            assert!(matches!(
                refused.as_mut().poll(&mut cx),
                Poll::Ready(Err(Rejected::Closed))
            ));
            assert_eq!(waits(&snapshotter, "waits", "closed").len(), 1);
            // Each wait was recorded once, under its own outcome.
            assert!(waits(&snapshotter, "waits", "granted").is_empty());
            drop(held);
        });
    }
}
