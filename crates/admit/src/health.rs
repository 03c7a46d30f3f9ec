//! The self-reporting health handle.
//!
//! A limiter that wedges must say so. [`Health`] gives a [`Snapshot`] of every
//! figure that explains the limiter's state, derives a [`HealthState`] from
//! them, logs each change of state through `tracing` (warn going into
//! Saturated or Degraded, info on recovery) and offers the changes as a
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

    /// Publishes the snapshot through the `metrics` facade.
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
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self, snap: &Snapshot) {
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
        metrics::gauge!("admit_watchdog_alive", &l).set(if snap.watchdog.alive {
            1.0
        } else {
            0.0
        });
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
