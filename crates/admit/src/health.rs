//! The self-reporting health handle.
//!
//! A limiter that wedges must say so. [`Health`] gives a [`Snapshot`] of every
//! figure that explains the limiter's state, derives a [`HealthState`] from
//! them, logs each change of state through `tracing` (warn going into
//! Saturated or Degraded, info on recovery) and offers the changes as a
//! [`Stream`](futures_core::Stream) for anyone who wants to push them
//! elsewhere.
//!
//! The state is evaluated on every watchdog tick, every snapshot, and on
//! close; a condition that comes and goes between two of those is not
//! reported as a change (its counters still move).
//!
//! # Implementation notes
//!
//! The current state and a sequence number share one atomic word; a change
//! is a CAS on it, so two threads that notice the same change report it
//! once. Changes are also written to a small ring that `changes()` streams
//! read; a reader that falls more than the ring's length behind skips to the
//! newest change and says how many it missed.

use crate::error::Rejected;
use crate::limiter::Limiter;
use crate::loom::{AtomicBool, AtomicU64, Ordering};
use crate::places::WakerPlaces;
use crate::slots::status;
use crate::slots::status_of;
use futures_core::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Why a limiter is degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Cause {
    /// Waiters are queued beside free permits: wake-ups were lost.
    Stalled,
    /// Leases sat idle past the limit and were revoked; some are still
    /// waiting for their holders or for reclaim.
    Leaking,
    /// The watchdog has stopped ticking: nothing is watching the limiter.
    WatchdogSilent,
}

/// The limiter's state, as the health handle sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthState {
    /// Admitting, with room to spare.
    Healthy,
    /// At the cap: rejecting or queueing, but permits are moving.
    Saturated,
    /// Something is wrong; the watchdog is (or should be) repairing it.
    Degraded(Cause),
    /// Closed, with permits still held.
    Draining,
    /// Closed, with no permit held.
    Closed,
}

impl HealthState {
    /// `"healthy"`, `"saturated"`, `"degraded"`, `"draining"` or `"closed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Saturated => "saturated",
            HealthState::Degraded(_) => "degraded",
            HealthState::Draining => "draining",
            HealthState::Closed => "closed",
        }
    }

    /// The cause when degraded.
    pub fn cause(self) -> Option<Cause> {
        match self {
            HealthState::Degraded(c) => Some(c),
            _ => None,
        }
    }

    /// Whether the limiter admits new callers in this state (healthy or saturated).
    pub fn is_admitting(self) -> bool {
        matches!(self, HealthState::Healthy | HealthState::Saturated)
    }

    fn code(self) -> u64 {
        match self {
            HealthState::Healthy => 0,
            HealthState::Saturated => 1,
            HealthState::Degraded(Cause::Stalled) => 2,
            HealthState::Degraded(Cause::Leaking) => 3,
            HealthState::Degraded(Cause::WatchdogSilent) => 4,
            HealthState::Draining => 5,
            HealthState::Closed => 6,
        }
    }

    fn from_code(code: u64) -> HealthState {
        match code {
            1 => HealthState::Saturated,
            2 => HealthState::Degraded(Cause::Stalled),
            3 => HealthState::Degraded(Cause::Leaking),
            4 => HealthState::Degraded(Cause::WatchdogSilent),
            5 => HealthState::Draining,
            6 => HealthState::Closed,
            _ => HealthState::Healthy,
        }
    }
}

impl std::fmt::Display for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealthState::Degraded(c) => write!(f, "degraded ({c:?})"),
            s => f.write_str(s.as_str()),
        }
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for HealthState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: HealthState,
    /// The state after.
    pub to: HealthState,
    /// Changes this reader skipped because it fell behind (usually 0).
    pub missed: u64,
}

/// The watchdog as the limiter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct WatchdogView {
    /// A watchdog is attached and ticked recently (within three intervals).
    pub alive: bool,
    /// Whether a watchdog was ever attached.
    pub attached: bool,
    /// Milliseconds since its last tick (0 if never attached).
    pub last_tick_ms: u64,
    /// Ticks so far.
    pub ticks: u64,
}

/// Every figure that explains a limiter's state, read at one moment.
///
/// Counters are read one after another without stopping the limiter, so
/// under load they may be a few operations apart from each other.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Snapshot {
    /// The limiter's name.
    pub name: String,
    /// The derived state.
    pub state: HealthState,
    /// Why it is degraded, if it is.
    pub cause: Option<Cause>,
    /// Current capacity.
    pub capacity: u32,
    /// Largest capacity it can be set to.
    pub max_capacity: u32,
    /// Permits held.
    pub in_use: u32,
    /// Callers waiting.
    pub waiting: u32,
    /// Headroom kept for critical acquires.
    pub reserved: u32,
    /// Waiters allowed.
    pub queue_limit: u32,
    /// `in_use / capacity` (1.0 when the capacity is 0).
    pub pressure: f64,
    /// Permits granted since the limiter was built.
    pub admitted_total: u64,
    /// Rejections by reason (`"full"`, `"queue_full"`, `"closed"`, `"timeout"`, `"per_ip"`).
    pub rejected_total: std::collections::BTreeMap<&'static str, u64>,
    /// Leases revoked (by idleness, age, id or the watchdog).
    pub revoked_total: u64,
    /// Revoked leases whose holders never let go, reclaimed by force.
    pub reclaimed_total: u64,
    /// Repairs: stalls re-driven and count drift corrected.
    pub repaired_total: u64,
    /// Age of the oldest held lease, in milliseconds (0 if none).
    pub oldest_lease_ms: u64,
    /// Leases revoked and not yet returned.
    pub revoked_pending: u32,
    /// The watchdog.
    pub watchdog: WatchdogView,
    /// The adaptive controller setting the capacity, if one is attached:
    /// its algorithm, the limit it set and its last decision.
    pub adaptive: Option<crate::adaptive::AdaptiveView>,
}

impl Snapshot {
    /// Sum of every rejection reason.
    pub fn rejected_sum(&self) -> u64 {
        self.rejected_total.values().sum()
    }
}

const LOG_LEN: usize = 64;
const SUBSCRIBERS: usize = 16;

pub(crate) struct HealthShared {
    pub(crate) name: String,
    /// `sequence << 8 | state code`.
    current: AtomicU64,
    /// `sequence << 16 | from << 8 | to`, at `sequence % LOG_LEN`.
    log: [AtomicU64; LOG_LEN],
    subscribers: WakerPlaces<SUBSCRIBERS>,
    /// Watchdog interval in ms; 0 when none is attached.
    pub(crate) watchdog_interval: AtomicU64,
    pub(crate) watchdog_tick: AtomicU64,
    pub(crate) watchdog_ticks: AtomicU64,
    /// Set by the watchdog while it sees a stall it has not repaired yet.
    pub(crate) stalled: AtomicBool,
    /// Set by the watchdog while idle leases are revoked and outstanding.
    pub(crate) leaking: AtomicBool,
    /// What an attached adaptive controller last decided.
    pub(crate) adaptive: crate::adaptive::report::AdaptiveShared,
}

impl HealthShared {
    pub(crate) fn new(name: String) -> HealthShared {
        HealthShared {
            name,
            current: AtomicU64::new(0),
            log: std::array::from_fn(|_| AtomicU64::new(0)),
            subscribers: WakerPlaces::new(),
            watchdog_interval: AtomicU64::new(0),
            watchdog_tick: AtomicU64::new(0),
            watchdog_ticks: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            leaking: AtomicBool::new(false),
            adaptive: crate::adaptive::report::AdaptiveShared::new(),
        }
    }

    /// Evaluates the state, reports it if it changed, and returns the
    /// snapshot it was derived from.
    pub(crate) fn note_change(&self, limiter: &Limiter) -> Snapshot {
        let snap = Health::new(limiter.clone()).compute(false);
        self.report(&snap);
        snap
    }

    fn report(&self, snap: &Snapshot) {
        let to = snap.state;
        let mut cur = self.current.load(Ordering::Acquire);
        loop {
            let from = HealthState::from_code(cur & 0xff);
            if from == to {
                return;
            }
            let seq = (cur >> 8) + 1;
            match self.current.compare_exchange(
                cur,
                (seq << 8) | to.code(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.log[seq as usize % LOG_LEN].store(
                        (seq << 16) | (from.code() << 8) | to.code(),
                        Ordering::Release,
                    );
                    log_transition(snap, from, to);
                    self.subscribers.wake_all();
                    return;
                }
                Err(actual) => cur = actual,
            }
        }
    }
}

fn log_transition(snap: &Snapshot, from: HealthState, to: HealthState) {
    let name = snap.name.as_str();
    let (cap, in_use, waiting) = (snap.capacity, snap.in_use, snap.waiting);
    let rejected = snap.rejected_sum();
    let oldest = snap.oldest_lease_ms;
    let wd = snap.watchdog.last_tick_ms;
    match to {
        HealthState::Degraded(cause) => tracing::warn!(
            limiter = name, from = %from, to = %to, ?cause, capacity = cap, in_use, waiting,
            rejected, oldest_lease_ms = oldest, watchdog_last_tick_ms = wd,
            revoked = snap.revoked_total, reclaimed = snap.reclaimed_total,
            "limiter degraded"
        ),
        HealthState::Saturated => tracing::warn!(
            limiter = name, from = %from, to = %to, capacity = cap, in_use, waiting, rejected,
            "limiter saturated"
        ),
        _ => tracing::info!(
            limiter = name, from = %from, to = %to, capacity = cap, in_use, waiting, rejected,
            repaired = snap.repaired_total, "limiter state changed"
        ),
    }
}

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
        let snap = self.compute(true);
        self.limiter.inner.health.report(&snap);
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
        let seq = self.limiter.inner.health.current.load(Ordering::Acquire) >> 8;
        Changes {
            limiter: self.limiter.clone(),
            next: seq + 1,
            place: None,
        }
    }

    pub(crate) fn compute(&self, advance_clock: bool) -> Snapshot {
        let inner = &self.limiter.inner;
        let now = if advance_clock {
            inner.clock.advance()
        } else {
            inner.clock.now()
        };
        let s = inner.load();
        let waiting = inner.live_waiting(s);
        let limit = inner.limit(s);

        let mut oldest = u64::MAX;
        let mut revoked_pending = 0u32;
        for slot in inner.slots.slots.iter() {
            let word = slot.state.load(Ordering::Relaxed);
            match status_of(word) {
                status::HELD => oldest = oldest.min(slot.started.load(Ordering::Relaxed)),
                status::REVOKED => {
                    revoked_pending += 1;
                    oldest = oldest.min(slot.started.load(Ordering::Relaxed));
                }
                _ => {}
            }
        }
        let oldest_lease_ms = if oldest == u64::MAX {
            0
        } else {
            now.saturating_sub(oldest)
        };

        let h = &inner.health;
        let interval = h.watchdog_interval.load(Ordering::Acquire);
        let attached = interval != 0;
        let last = h.watchdog_tick.load(Ordering::Acquire);
        let since = if attached {
            now.saturating_sub(last)
        } else {
            0
        };
        // Three missed ticks (and at least 250 ms, so a loaded machine's
        // scheduling jitter is not called an outage) mean the watchdog is gone.
        let silent = attached && since > (interval * 3).max(250);
        let watchdog = WatchdogView {
            alive: attached && !silent,
            attached,
            last_tick_ms: since,
            ticks: h.watchdog_ticks.load(Ordering::Relaxed),
        };

        let state = if s.closed() {
            if s.in_use() > 0 {
                HealthState::Draining
            } else {
                HealthState::Closed
            }
        } else if silent {
            HealthState::Degraded(Cause::WatchdogSilent)
        } else if h.stalled.load(Ordering::Acquire) {
            HealthState::Degraded(Cause::Stalled)
        } else if h.leaking.load(Ordering::Acquire) {
            HealthState::Degraded(Cause::Leaking)
        } else if waiting > 0 || s.in_use() >= limit {
            HealthState::Saturated
        } else {
            HealthState::Healthy
        };

        let rejected_total = Rejected::ALL
            .iter()
            .map(|r| {
                (
                    r.as_str(),
                    inner.rejected[r.index()].load(Ordering::Relaxed),
                )
            })
            .collect();
        Snapshot {
            name: h.name.clone(),
            state,
            cause: state.cause(),
            capacity: s.capacity(),
            max_capacity: inner.max_capacity,
            in_use: s.in_use(),
            waiting,
            reserved: inner.reserve,
            queue_limit: inner.queue_limit,
            pressure: if s.capacity() == 0 {
                1.0
            } else {
                s.in_use() as f64 / s.capacity() as f64
            },
            admitted_total: inner.admitted_total(),
            rejected_total,
            revoked_total: inner.revoked.load(Ordering::Relaxed),
            reclaimed_total: inner.reclaimed.load(Ordering::Relaxed),
            repaired_total: inner.repaired.load(Ordering::Relaxed),
            oldest_lease_ms,
            revoked_pending,
            watchdog,
            adaptive: h.adaptive.view(),
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
    limiter: Limiter,
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
        let h = &self.limiter.inner.health;
        let current = h.current.load(Ordering::Acquire) >> 8;
        if self.next > current {
            return None;
        }
        let entry = h.log[self.next as usize % LOG_LEN].load(Ordering::Acquire);
        let seq = entry >> 16;
        if seq < self.next {
            // Announced but not written yet; the writer wakes us.
            return None;
        }
        let missed = seq - self.next;
        self.next = seq + 1;
        Some(Transition {
            from: HealthState::from_code((entry >> 8) & 0xff),
            to: HealthState::from_code(entry & 0xff),
            missed,
        })
    }
}

impl Stream for Changes {
    type Item = Transition;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Transition>> {
        if let Some(t) = self.try_next() {
            return Poll::Ready(Some(t));
        }
        let inner = self.limiter.inner.clone();
        inner.health.subscribers.register(&mut self.place, cx);
        match self.try_next() {
            Some(t) => Poll::Ready(Some(t)),
            None => Poll::Pending,
        }
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        self.limiter.inner.health.subscribers.release(self.place);
    }
}
