//! What a limiter reports about itself: the snapshot and state types, and
//! the shared record (`HealthShared`) of state changes, the watchdog's
//! heartbeat and the flags it raises.
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

use crate::loom::{AtomicBool, AtomicU64, Ordering};
use crate::places::WakerPlaces;
use std::task::Context;

/// Why a limiter is degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
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

    /// The state named by [`as_str`](Self::as_str); a degraded state takes
    /// its cause from `cause`, which a snapshot carries beside it.
    #[cfg(feature = "serde")]
    fn from_name(name: &str, cause: Option<Cause>) -> Option<HealthState> {
        Some(match name {
            "healthy" => HealthState::Healthy,
            "saturated" => HealthState::Saturated,
            "degraded" => HealthState::Degraded(cause?),
            "draining" => HealthState::Draining,
            "closed" => HealthState::Closed,
            _ => return None,
        })
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
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Transition {
    /// The state before.
    pub from: HealthState,
    /// The state after.
    pub to: HealthState,
    /// Changes this reader skipped because it fell behind (usually 0).
    pub missed: u64,
}

/// Repairs by kind, counted since the limiter was built. Each is a sign
/// that something went wrong and was put right without anyone's help.
///
/// ```
/// let limiter = admit::Limiter::new(4);
/// let repairs = limiter.health().snapshot().repairs;
/// assert_eq!(repairs, admit::Repairs::default());
/// assert_eq!(repairs.total(), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct Repairs {
    /// Stalled hand-offs the watchdog re-drove: waiters found beside free
    /// permits for longer than `stall_after`.
    pub stalls: u64,
    /// Count drift the watchdog corrected: permits counted with no lease
    /// behind them, for `drift_ticks` ticks in a row, taken off the count.
    pub drift: u64,
    /// Releases that found the count at zero already and left it there
    /// rather than wrap it: a drift correction had taken that permit off
    /// the count while it was still in use.
    pub underflows: u64,
}

impl Repairs {
    /// Repairs of every kind.
    pub fn total(&self) -> u64 {
        self.stalls + self.drift + self.underflows
    }
}

/// The watchdog as the limiter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
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
///
/// With feature `serde` it serialises to the JSON a status page serves and
/// reads back from it: the state is its name (`"degraded"` with the reason
/// in `cause`), rejections are keyed by [`Rejected::as_str`](crate::Rejected::as_str).
/// A field missing from the input takes its zero value and unknown fields
/// are ignored, so a reader accepts snapshots from versions with fewer or
/// more figures; a state or rejection reason this version does not know is
/// an error.
///
/// ```
/// # #[cfg(feature = "serde")] {
/// let limiter = admit::Limiter::new(4);
/// let snap = limiter.health().snapshot();
/// let json = serde_json::to_string(&snap).unwrap();
/// let back: admit::Snapshot = serde_json::from_str(&json).unwrap();
/// assert_eq!(back, snap);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "wire::Snapshot"))]
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
    /// Repairs of every kind: the sum of [`repairs`](Self::repairs).
    pub repaired_total: u64,
    /// Repairs by kind.
    pub repairs: Repairs,
    /// Age of the oldest held lease, in milliseconds (0 if none).
    ///
    /// Finding it takes a pass over the lease table, which the watchdog
    /// makes on every tick: while a watchdog is alive, a snapshot uses the
    /// oldest lease of its last tick (so a lease dropped since may be
    /// reported for up to one interval) and reads no table at all. Without
    /// one, the snapshot scans the table itself. Every other figure is a
    /// counter.
    pub oldest_lease_ms: u64,
    /// Leases revoked and not yet returned.
    pub revoked_pending: u32,
    /// The watchdog.
    pub watchdog: WatchdogView,
    /// The adaptive controller setting the capacity, if one is attached:
    /// its algorithm, the limit it set and its last decision.
    pub adaptive: Option<crate::adaptive::AdaptiveView>,
}

/// The empty snapshot: no name, healthy, every figure zero (what `{}`
/// reads back as with feature `serde`).
impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            name: String::new(),
            state: HealthState::Healthy,
            cause: None,
            capacity: 0,
            max_capacity: 0,
            in_use: 0,
            waiting: 0,
            reserved: 0,
            queue_limit: 0,
            pressure: 0.0,
            admitted_total: 0,
            rejected_total: Default::default(),
            revoked_total: 0,
            reclaimed_total: 0,
            repaired_total: 0,
            repairs: Repairs::default(),
            oldest_lease_ms: 0,
            revoked_pending: 0,
            watchdog: WatchdogView::default(),
            adaptive: None,
        }
    }
}

impl Snapshot {
    /// Sum of every rejection reason.
    pub fn rejected_sum(&self) -> u64 {
        self.rejected_total.values().sum()
    }
}

/// The shape a snapshot is read back from: the same fields, with the state
/// as its name and rejection reasons as text, checked on the way in.
#[cfg(feature = "serde")]
mod wire {
    use super::{Cause, HealthState, Repairs, WatchdogView};
    use crate::adaptive::AdaptiveView;
    use crate::Rejected;
    use std::collections::BTreeMap;

    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    pub(super) struct Snapshot {
        name: String,
        state: Option<String>,
        cause: Option<Cause>,
        capacity: u32,
        max_capacity: u32,
        in_use: u32,
        waiting: u32,
        reserved: u32,
        queue_limit: u32,
        pressure: f64,
        admitted_total: u64,
        rejected_total: BTreeMap<String, u64>,
        revoked_total: u64,
        reclaimed_total: u64,
        repaired_total: u64,
        repairs: Repairs,
        oldest_lease_ms: u64,
        revoked_pending: u32,
        watchdog: WatchdogView,
        adaptive: Option<AdaptiveView>,
    }

    impl TryFrom<Snapshot> for super::Snapshot {
        type Error = String;

        fn try_from(w: Snapshot) -> Result<Self, String> {
            let state = match &w.state {
                // Absent: nothing was reported as wrong.
                None => HealthState::Healthy,
                Some(name) => {
                    HealthState::from_name(name, w.cause).ok_or_else(|| match w.cause {
                        None if name == "degraded" => {
                            "state \"degraded\" without a cause".to_owned()
                        }
                        _ => format!("unknown limiter state {name:?}"),
                    })?
                }
            };
            let mut rejected_total = BTreeMap::new();
            for (label, n) in w.rejected_total {
                let reason = Rejected::ALL
                    .into_iter()
                    .find(|r| r.as_str() == label)
                    .ok_or_else(|| format!("unknown rejection reason {label:?}"))?;
                rejected_total.insert(reason.as_str(), n);
            }
            Ok(super::Snapshot {
                name: w.name,
                state,
                cause: state.cause(),
                capacity: w.capacity,
                max_capacity: w.max_capacity,
                in_use: w.in_use,
                waiting: w.waiting,
                reserved: w.reserved,
                queue_limit: w.queue_limit,
                pressure: w.pressure,
                admitted_total: w.admitted_total,
                rejected_total,
                revoked_total: w.revoked_total,
                reclaimed_total: w.reclaimed_total,
                repaired_total: w.repaired_total,
                repairs: w.repairs,
                oldest_lease_ms: w.oldest_lease_ms,
                revoked_pending: w.revoked_pending,
                watchdog: w.watchdog,
                adaptive: w.adaptive,
            })
        }
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
    watchdog_interval: AtomicU64,
    watchdog_tick: AtomicU64,
    watchdog_ticks: AtomicU64,
    /// Set by the watchdog while it sees a stall it has not repaired yet.
    stalled: AtomicBool,
    /// Set by the watchdog while idle leases are revoked and outstanding.
    leaking: AtomicBool,
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

    /// A watchdog ticking every `interval_ms` is attached, as of `now`.
    pub(crate) fn attach_watchdog(&self, interval_ms: u64, now: u64) {
        self.watchdog_interval.store(interval_ms, Ordering::Release);
        self.watchdog_tick.store(now, Ordering::Release);
    }

    /// The watchdog was stopped on purpose: nothing is attached any more.
    pub(crate) fn detach_watchdog(&self) {
        self.watchdog_interval.store(0, Ordering::Release);
    }

    /// The watchdog's heartbeat.
    pub(crate) fn beat(&self, now: u64) {
        self.watchdog_tick.store(now, Ordering::Release);
        self.watchdog_ticks.fetch_add(1, Ordering::Relaxed);
    }

    /// The watchdog as of `now`.
    pub(crate) fn watchdog_view(&self, now: u64) -> WatchdogView {
        let interval = self.watchdog_interval.load(Ordering::Acquire);
        let attached = interval != 0;
        let last = self.watchdog_tick.load(Ordering::Acquire);
        let since = if attached {
            now.saturating_sub(last)
        } else {
            0
        };
        // Three missed ticks (and at least 250 ms, so a loaded machine's
        // scheduling jitter is not called an outage) mean the watchdog is gone.
        let silent = attached && since > (interval * 3).max(250);
        WatchdogView {
            alive: attached && !silent,
            attached,
            last_tick_ms: since,
            ticks: self.watchdog_ticks.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn set_stalled(&self, on: bool) {
        self.stalled.store(on, Ordering::Release);
    }
    pub(crate) fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Acquire)
    }
    pub(crate) fn set_leaking(&self, on: bool) {
        self.leaking.store(on, Ordering::Release);
    }
    pub(crate) fn leaking(&self) -> bool {
        self.leaking.load(Ordering::Acquire)
    }

    /// Records the snapshot's state if it differs from the last one.
    pub(crate) fn report(&self, snap: &Snapshot) {
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

    /// Sequence number of the latest change.
    pub(crate) fn sequence(&self) -> u64 {
        self.current.load(Ordering::Acquire) >> 8
    }

    /// The change numbered `next` (or the newest one, if the ring has moved
    /// past it); `None` if it has not happened or is not written yet.
    pub(crate) fn change(&self, next: u64) -> Option<(u64, Transition)> {
        if next > self.sequence() {
            return None;
        }
        let entry = self.log[next as usize % LOG_LEN].load(Ordering::Acquire);
        let seq = entry >> 16;
        if seq < next {
            // Announced but not written yet; the writer wakes us.
            return None;
        }
        Some((
            seq,
            Transition {
                from: HealthState::from_code((entry >> 8) & 0xff),
                to: HealthState::from_code(entry & 0xff),
                missed: seq - next,
            },
        ))
    }

    pub(crate) fn subscribe(&self, place: &mut Option<usize>, cx: &mut Context<'_>) {
        self.subscribers.register(place, cx);
    }

    pub(crate) fn unsubscribe(&self, place: Option<usize>) {
        self.subscribers.release(place);
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
        // A limiter run at capacity is saturated as a matter of course:
        // worth a line, not a warning. Warnings are kept for `degraded`.
        HealthState::Saturated => tracing::info!(
            limiter = name, from = %from, to = %to, capacity = cap, in_use, waiting, rejected,
            "limiter saturated"
        ),
        _ => tracing::info!(
            limiter = name, from = %from, to = %to, capacity = cap, in_use, waiting, rejected,
            repaired = snap.repaired_total, "limiter state changed"
        ),
    }
}
