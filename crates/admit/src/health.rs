//! The self-reporting health handle.
//!
//! A limiter that wedges must say so. [`Health`] gives a [`Snapshot`] of every
//! figure that explains the limiter's state, derives a [`HealthState`] from
//! them, logs each change of state through `tracing` (warn going into
//! Degraded, info for every other change) and offers the changes as a
//! [`Stream`](futures_core::Stream) for anyone who wants to push them
//! elsewhere. The figures and the record of changes live in `snapshot.rs`
//! and `inner.rs`; this module is the handle.

use crate::inner::Inner;
use crate::limiter::Limiter;
use crate::loom::Arc;
use crate::snapshot::{HealthState, Snapshot, Transition};
use futures_core::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The health handle of a [`Limiter`]: cheap to clone.
///
/// ```
/// let limiter = admit::Limiter::new(2);
/// let health = limiter.health();
/// let _a = limiter.try_acquire().unwrap();
/// let snap = health.snapshot();
/// assert_eq!(snap.in_use, 1);
/// assert_eq!(snap.state, admit::HealthState::Healthy);
/// let _b = limiter.try_acquire().unwrap();
/// assert_eq!(health.state(), admit::HealthState::Saturated);
/// ```
#[derive(Clone, Debug)]
pub struct Health {
    limiter: Limiter,
}

impl Health {
    pub(crate) fn new(limiter: Limiter) -> Health {
        Health { limiter }
    }

    /// Reads every figure and the derived state, and reports a change of
    /// state if there was one.
    pub fn snapshot(&self) -> Snapshot {
        let inner = &self.limiter.inner;
        let snap = inner.snapshot(true);
        inner.health.report(&snap);
        snap
    }

    /// The current state (same as `snapshot().state`).
    pub fn state(&self) -> HealthState {
        self.snapshot().state
    }

    /// The limiter this handle reports on.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// A stream of future changes of state.
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// use futures::StreamExt;
    /// let limiter = admit::Limiter::new(1);
    /// let mut changes = limiter.health().changes();
    /// limiter.close();
    /// let t = changes.next().await.unwrap();
    /// assert_eq!(t.to, admit::HealthState::Closed);
    /// # });
    /// ```
    pub fn changes(&self) -> Changes {
        let seq = self.limiter.inner.health.sequence();
        Changes {
            inner: self.limiter.inner.clone(),
            next: seq + 1,
            place: None,
        }
    }

    /// Publishes `snap` through the `metrics` facade, to the recorder in
    /// effect on the calling thread, with a description of every metric.
    ///
    /// A [`Watchdog`](crate::Watchdog) calls this on every tick. Without
    /// one, call it yourself whenever the figures should be fresh: from a
    /// timer of your own, or — with a pull-based exporter such as
    /// Prometheus — in the handler that serves the scrape, just before
    /// rendering:
    ///
    /// ```
    /// use metrics_exporter_prometheus::PrometheusBuilder;
    ///
    /// let recorder = PrometheusBuilder::new().build_recorder();
    /// let prometheus = recorder.handle();
    /// metrics::set_global_recorder(recorder).unwrap();
    ///
    /// let limiter = admit::Limiter::builder().capacity(8).name("db").build().unwrap();
    /// let _permit = limiter.try_acquire().unwrap();
    ///
    /// // In the /metrics handler: publish, then render.
    /// let health = limiter.health();
    /// health.publish_metrics(&health.snapshot());
    /// let text = prometheus.render();
    /// assert!(text.contains("# HELP admit_in_use Permits held now."));
    /// assert!(text.contains(r#"admit_in_use{limiter="db"} 1"#));
    /// ```
    ///
    /// Names (each labelled `limiter = <name>`): gauges `admit_capacity`,
    /// `admit_in_use`, `admit_waiting`, `admit_pressure`,
    /// `admit_oldest_lease_seconds`, `admit_state` (0 healthy, 1 saturated,
    /// 2 degraded, 3 draining, 4 closed), `admit_watchdog_alive`,
    /// `admit_watchdog_last_tick_seconds`; counters `admit_admitted_total`,
    /// `admit_rejected_total` (label `reason`), `admit_revoked_total`,
    /// `admit_reclaimed_total`, `admit_repaired_total`; with an adaptive
    /// controller attached, also `admit_adaptive_limit` and
    /// `admit_adaptive_decisions_total` (labelled `algorithm` too).
    ///
    /// One more metric is not taken from snapshots: the histogram
    /// `admit_wait_seconds` (labels `limiter` and `outcome`) gets one sample
    /// each time an acquire that had to queue leaves the queue — how long
    /// it waited, with outcome `granted`, the rejection's label (`closed`,
    /// `timeout`) or `cancelled` (the acquire was dropped while waiting, as
    /// a caller's timeout does). It is recorded where the acquire completes,
    /// to the recorder in effect there, whether or not anything publishes.
    /// Acquires admitted without waiting add no sample.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn publish_metrics(&self, snap: &Snapshot) {
        crate::telemetry::publish(snap);
    }
}

/// Stream returned by [`Health::changes`].
#[must_use = "streams do nothing unless polled"]
pub struct Changes {
    inner: Arc<Inner>,
    next: u64,
    place: Option<usize>,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes").field("next", &self.next).finish()
    }
}

impl Changes {
    fn try_next(&mut self) -> Option<Transition> {
        let (seq, t) = self.inner.health.change(self.next)?;
        self.next = seq + 1;
        Some(t)
    }
}

impl Stream for Changes {
    type Item = Transition;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Transition>> {
        if let Some(t) = self.try_next() {
            return Poll::Ready(Some(t));
        }
        let this = &mut *self;
        this.inner.health.subscribe(&mut this.place, cx);
        match this.try_next() {
            Some(t) => Poll::Ready(Some(t)),
            None => Poll::Pending,
        }
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        self.inner.health.unsubscribe(self.place);
    }
}
