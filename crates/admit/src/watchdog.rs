//! The watchdog: a monitor on the limiter itself, on its own OS thread.
//!
//! A limiter can wedge in three ways, and each tick looks for all three:
//!
//! 1. **Stalled** — waiters queued beside free permits for longer than
//!    `stall_after`: a wake-up was lost. The watchdog re-drives the hand-off
//!    and wakes every waiter.
//! 2. **Leaking** — leases idle beyond `max_idle` (a holder that forgot its
//!    permit, a dead connection): revoked, and reclaimed after `grace` if the
//!    holder still has not let go.
//! 3. **Drift** — the count of permits in use disagrees with the lease table
//!    for `drift_ticks` ticks in a row: the count is corrected.
//!
//! Every repair is counted (`repaired_total`, `revoked_total`,
//! `reclaimed_total`) and logged. The watchdog also reports its own
//! heartbeat: a watchdog that stops ticking turns the state into
//! `Degraded(WatchdogSilent)` on the next snapshot, so the monitor is
//! monitored too.
//!
//! It runs on a plain thread, not on the async runtime it guards: a wedged
//! runtime must not silence the thing that reports it.

use crate::inner::LeaseSummary;
use crate::lease::Kind;
use crate::limiter::Limiter;
use std::sync::atomic::{AtomicU8, Ordering as StdOrdering};
use std::sync::Arc as StdArc;
use std::time::Duration;

/// Watchdog settings.
///
/// ```
/// use std::time::Duration;
/// let config = admit::WatchdogConfig::default()
///     .interval(Duration::from_millis(50))
///     .max_idle(Duration::from_secs(300))
///     .grace(Duration::from_secs(2));
/// assert_eq!(config.interval, Duration::from_millis(50));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WatchdogConfig {
    /// Time between ticks (default 100 ms).
    pub interval: Duration,
    /// How long waiters may sit beside free permits before it is called a
    /// stall and repaired (default 500 ms).
    pub stall_after: Duration,
    /// Leases idle this long are revoked (default: never).
    pub max_idle: Option<Duration>,
    /// How long a revoked holder has to let go before its slot is reclaimed
    /// (default 1 s).
    pub grace: Duration,
    /// Consecutive ticks a count drift must persist before it is corrected
    /// (default 5).
    pub drift_ticks: u32,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            interval: Duration::from_millis(100),
            stall_after: Duration::from_millis(500),
            max_idle: None,
            grace: Duration::from_secs(1),
            drift_ticks: 5,
        }
    }
}

impl WatchdogConfig {
    /// Sets [`interval`](Self::interval).
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }
    /// Sets [`stall_after`](Self::stall_after).
    pub fn stall_after(mut self, d: Duration) -> Self {
        self.stall_after = d;
        self
    }
    /// Sets [`max_idle`](Self::max_idle).
    pub fn max_idle(mut self, d: Duration) -> Self {
        self.max_idle = Some(d);
        self
    }
    /// Sets [`grace`](Self::grace).
    pub fn grace(mut self, d: Duration) -> Self {
        self.grace = d;
        self
    }
    /// Sets [`drift_ticks`](Self::drift_ticks).
    pub fn drift_ticks(mut self, n: u32) -> Self {
        self.drift_ticks = n.max(1);
        self
    }
}

/// What one tick found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TickReport {
    /// Idle leases revoked.
    pub revoked: usize,
    /// Revoked leases reclaimed.
    pub reclaimed: usize,
    /// A stall was repaired.
    pub stall_repaired: bool,
    /// Permits removed from the count to correct drift.
    pub drift_repaired: u32,
    /// The adaptive controller setting the capacity, if one is attached:
    /// the limit it set, its algorithm and its last decision.
    pub adaptive: Option<crate::adaptive::AdaptiveView>,
}

/// The watchdog's logic. [`Watchdog::spawn`] runs it on its own thread;
/// [`Watchdog::tick`] runs one round by hand (tests, custom schedulers).
#[derive(Debug)]
pub struct Watchdog {
    limiter: Limiter,
    config: WatchdogConfig,
    stall_since: Option<u64>,
    drift_seen: u32,
    drift_min: u32,
    /// GRANTED slots seen on the previous tick: still GRANTED on this one
    /// means their wake-up was lost.
    granted_prev: Vec<(u32, u64)>,
}

impl Watchdog {
    /// A watchdog for `limiter`, ticked by hand.
    pub fn new(limiter: Limiter, config: WatchdogConfig) -> Watchdog {
        let interval = config.interval.as_millis().max(1) as u64;
        let inner = &limiter.inner;
        inner
            .health
            .attach_watchdog(interval, inner.advance_clock());
        Watchdog {
            limiter,
            config,
            stall_since: None,
            drift_seen: 0,
            drift_min: 0,
            granted_prev: Vec::new(),
        }
    }

    /// Runs one round of checks and repairs.
    pub fn tick(&mut self) -> TickReport {
        let inner = &self.limiter.inner;
        let h = &inner.health;
        let now = inner.advance_clock();
        h.beat(now);
        let mut report = TickReport::default();

        // Leases: revoke the idle, reclaim the revoked past their grace.
        let before = inner.load();
        let max_idle = self.config.max_idle.map(|d| d.as_millis() as u64);
        let grace = self.config.grace.as_millis() as u64;
        let mut live = 0u32;
        let mut revoked_pending = 0u32;
        let mut granted = Vec::new();
        let mut summary = LeaseSummary::default();
        for lease in inner.scan() {
            live += 1;
            match lease.kind {
                Kind::Held => {
                    summary.add(&lease);
                    let idle = now.saturating_sub(lease.last_active);
                    if max_idle.is_some_and(|m| idle >= m) {
                        h.set_leaking(true);
                        if inner.revoke(lease.slot, lease.gen, now) {
                            report.revoked += 1;
                            revoked_pending += 1;
                        }
                    }
                }
                Kind::Revoked => {
                    let since = now.saturating_sub(lease.revoked_at);
                    if since >= grace && inner.reclaim(lease.slot, lease.gen) {
                        report.reclaimed += 1;
                        live -= 1;
                    } else {
                        revoked_pending += 1;
                        summary.add(&lease);
                    }
                }
                Kind::Granted => granted.push((lease.slot, lease.gen)),
                // Counted and live, but no lease to check.
                Kind::Token => {}
            }
        }
        let after = inner.load();
        if report.revoked > 0 {
            tracing::warn!(
                limiter = %h.name, revoked = report.revoked,
                max_idle_ms = max_idle.unwrap_or(0),
                "watchdog revoked idle leases"
            );
        }
        if report.reclaimed > 0 {
            tracing::warn!(
                limiter = %h.name, reclaimed = report.reclaimed, grace_ms = grace,
                "watchdog reclaimed leases whose holders never let go"
            );
        }
        let leaking = max_idle.is_some() && (report.revoked > 0 || revoked_pending > 0);
        h.set_leaking(leaking);

        // Lost grant wake-ups: a grant nobody picked up across two ticks.
        for &(i, gen) in &granted {
            if self.granted_prev.contains(&(i, gen)) {
                inner.wake_waiter(i);
            }
        }
        self.granted_prev = granted;

        // Tokens parked beside waiters (a sealer that ran before they were
        // parked, or was descheduled): take them back.
        if inner.live_waiting(inner.load()) > 0 {
            inner.flush_tokens();
        }

        // Stalls: waiters beside free permits.
        let s = inner.load();
        let room = !s.closed() && s.in_use() < inner.limit(s);
        if room && inner.live_waiting(s) > 0 {
            let since = *self.stall_since.get_or_insert(now);
            if now.saturating_sub(since) >= self.config.stall_after.as_millis() as u64 {
                h.set_stalled(true);
                inner.note_change();
                tracing::warn!(
                    limiter = %h.name, waiting = inner.live_waiting(s),
                    in_use = s.in_use(), capacity = s.capacity(),
                    stalled_ms = now.saturating_sub(since),
                    "watchdog found waiters beside free permits; re-driving the hand-off"
                );
                inner.redrive();
                h.set_stalled(false);
                report.stall_repaired = true;
                self.stall_since = None;
            }
        } else {
            self.stall_since = None;
            if room && s.tickets() > 0 {
                // Only cancelled tickets are left: clear them.
                inner.clear_ghosts();
            }
        }

        // Drift: count above the lease table while nothing moved.
        if !inner.track_leases() {
            // No lease table to compare the count with.
        } else if before == after && after.in_use() > live {
            let excess = after.in_use() - live;
            self.drift_min = if self.drift_seen == 0 {
                excess
            } else {
                self.drift_min.min(excess)
            };
            self.drift_seen += 1;
            if self.drift_seen >= self.config.drift_ticks {
                report.drift_repaired = self.repair_drift(self.drift_min);
                self.drift_seen = 0;
            }
        } else {
            // No excess, or the count moved while the table was read (the
            // scan may have raced an admission between its count and its
            // slot): the run of ticks in a row starts again.
            self.drift_seen = 0;
        }

        let snap = inner.note_change_with(summary);
        report.adaptive = snap.adaptive;
        #[cfg(feature = "metrics")]
        self.limiter.health().publish_metrics(&snap);
        #[cfg(not(feature = "metrics"))]
        drop(snap);
        report
    }

    fn repair_drift(&self, excess: u32) -> u32 {
        let inner = &self.limiter.inner;
        let fixed = inner.repair_drift(excess);
        if fixed > 0 {
            tracing::warn!(
                limiter = %inner.name(), removed = fixed,
                "watchdog corrected the permit count: it held permits no lease accounts for"
            );
        }
        fixed
    }

    /// Starts the watchdog on its own thread. Dropping the guard stops it.
    ///
    /// ```
    /// let limiter = admit::Limiter::new(10);
    /// let guard = admit::Watchdog::spawn(limiter.clone(), admit::WatchdogConfig::default()).unwrap();
    /// assert!(limiter.health().snapshot().watchdog.attached);
    /// drop(guard);
    /// ```
    pub fn spawn(limiter: Limiter, config: WatchdogConfig) -> std::io::Result<WatchdogGuard> {
        let control = StdArc::new(AtomicU8::new(RUN));
        let interval = config.interval;
        let mut dog = Watchdog::new(limiter.clone(), config);
        let thread_control = control.clone();
        let thread = std::thread::Builder::new()
            .name(format!("admit-watchdog-{}", limiter.name()))
            .spawn(move || loop {
                std::thread::park_timeout(interval);
                match thread_control.load(StdOrdering::Acquire) {
                    RUN => {
                        dog.tick();
                    }
                    // Dies without a word: the heartbeat goes stale.
                    DIE => return,
                    _ => {
                        dog.limiter.inner.health.detach_watchdog();
                        return;
                    }
                }
            })?;
        Ok(WatchdogGuard {
            control,
            thread: Some(thread),
        })
    }
}

const RUN: u8 = 0;
const STOP: u8 = 1;
const DIE: u8 = 2;

/// Keeps a spawned watchdog running; dropping it stops the thread.
#[derive(Debug)]
pub struct WatchdogGuard {
    control: StdArc<AtomicU8>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WatchdogGuard {
    /// Kills the watchdog thread without telling the limiter, as a crash
    /// would: the next snapshots report `Degraded(WatchdogSilent)`.
    #[cfg(feature = "fault-injection")]
    pub fn kill(mut self) {
        self.control.store(DIE, StdOrdering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for WatchdogGuard {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.control.store(STOP, StdOrdering::Release);
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
