//! `limiter_ops`: an arbitrary sequence of limiter operations, replayed on
//! one thread against the real [`Limiter`] (with its [`Watchdog`] ticked by
//! hand on a fake clock) and against the plain reference model of
//! `crates/admit-model` (shared with the proptest state machine), side by
//! side; the watchdog's and the leases' models live here.
//!
//! After every operation the two must agree on the count, the queue, the
//! capacity, every lease's state and times, and every counter of the health
//! snapshot. Broken invariants panic:
//!
//! * I1 cap — the model only grants below the cap, and the real limiter must
//!   grant exactly when the model does;
//! * I2 exactly once — a release that finds the count at zero is counted as a
//!   repair, so `repaired_total` must match the model's repairs; stale lease
//!   ids must not revoke anything; after everything is dropped the count is 0;
//! * I3 no lost wake-up — waiters are never left beside free permits unless a
//!   `stall` fault was injected (and then the watchdog must repair it);
//! * I4 cancel safety — cancelled waiters, and grants handed to them, leave
//!   no trace: the next waiter in FIFO order gets the permit;
//! * I6 observable — `admitted_total`, `rejected_total` by reason,
//!   `revoked_total`, `reclaimed_total`, `repaired_total`, `revoked_pending`,
//!   `oldest_lease_ms`, the derived state and the watchdog's view all match.
//!
//! Set `ADMIT_FUZZ_TRACE=1` to print each operation while replaying.

use admit::{
    Acquire, HealthState, LeaseId, Limiter, Permit, Rejected, Snapshot, TickReport, Watchdog,
    WatchdogConfig, MAX_QUEUE,
};
use admit_model::{reason_index, Model, REASONS};
use arbitrary::{Arbitrary, Unstructured};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The fake clock starts this far ahead of the limiter's real epoch, so the
/// real time a run takes can never move the limiter's clock: only
/// `advance_clock` does, and the run is deterministic.
const FAKE_EPOCH_MS: u64 = 1 << 40;

/// Stale lease ids remembered for `RevokeStale`.
const STALE_IDS: usize = 16;

/// The limiter and watchdog settings, drawn from the first bytes.
#[derive(Debug, Arbitrary)]
struct Config {
    capacity: u8,
    extra: u8,
    reserve: u8,
    queue_limit: u8,
    watchdog: bool,
    interval: u8,
    max_idle: Option<u8>,
    grace: u8,
    stall_after: u8,
    drift_ticks: u8,
}

/// One operation. Indices pick among live items modulo their number.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Op {
    TryAcquire,
    TryAcquireCritical,
    /// A new `acquire()` future, polled once.
    Acquire,
    /// A new `acquire()` future dropped without a poll.
    AcquireUnpolled,
    /// Polls a queued waiter again.
    Poll(u8),
    /// Drops a queued waiter's future.
    Cancel(u8),
    /// Drops a permit.
    Drop(u8),
    Touch(u8),
    SetCapacity(u8),
    Close,
    /// Revokes a live or leaked lease by id.
    Revoke(u8),
    /// Revokes the id of a lease that was already dropped.
    RevokeStale(u8),
    RevokeIdle(u8),
    RevokeOldest(u8),
    Reclaim(u8),
    Tick,
    AdvanceClock(u16),
    /// Takes permits (the reserve included) and never touches or drops them
    /// again, as a buggy holder would: only the watchdog can get them back.
    Leak(u8),
    Stall(u8),
    Drift(u8),
    /// Many acquire-then-cancel (or acquire-then-drop) rounds: moves the
    /// ticket counters around their 2048-ticket ring.
    Churn(u8),
    /// Many acquires in a row: fills the wait queue.
    Flood(u8),
}

/// A lease's state in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseState {
    Held,
    Revoked {
        at: u64,
    },
    /// Reclaimed by force: the holder's drop must not release it again.
    Reclaimed,
}

/// The model of one permit's lease.
#[derive(Debug, Clone, Copy)]
struct Lease {
    id: LeaseId,
    started: u64,
    last_active: u64,
    state: LeaseState,
}

impl Lease {
    /// Counted in `in_use` and seen by the watchdog as a live slot.
    fn live(&self) -> bool {
        self.state != LeaseState::Reclaimed
    }
}

/// The watchdog's model: its settings and what it remembers between ticks.
#[derive(Debug)]
struct WatchdogModel {
    interval: u64,
    max_idle: Option<u64>,
    grace: u64,
    stall_after: u64,
    drift_ticks: u32,
    last_tick: u64,
    ticks: u64,
    stall_since: Option<u64>,
    drift_seen: u32,
    drift_min: u32,
    leaking: bool,
    /// Start of the oldest live lease its last scan saw: what snapshots
    /// report from while it is alive, instead of scanning themselves.
    oldest: Option<u64>,
}

fn poll(f: &mut Acquire) -> Poll<Result<Permit, Rejected>> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

fn ok_kind<T>(r: &Result<T, Rejected>) -> Result<(), Rejected> {
    r.as_ref().map(|_| ()).map_err(|e| *e)
}

/// The system under test and its model.
struct Sut {
    limiter: Limiter,
    /// Permits are leases (`track_leases(true)`, the default): revocable,
    /// reclaimable, timed, and checked for drift by the watchdog.
    tracked: bool,
    watchdog: Option<(Watchdog, WatchdogModel)>,
    model: Model,
    /// Queued waiters by model id.
    waiters: Vec<(usize, Acquire)>,
    permits: Vec<(Permit, Lease)>,
    /// Permits taken by `Leak`: held until the end, never touched.
    leaked: Vec<(Permit, Lease)>,
    stale: VecDeque<LeaseId>,
    next_id: usize,
    trace: bool,
}

impl Sut {
    fn new(c: &Config, trace: bool) -> Sut {
        let capacity = u32::from(c.capacity % 5);
        let max = capacity + u32::from(c.extra % 4);
        let tracked = c.extra < 0xc0;
        let reserve = u32::from(c.reserve % 3);
        let queue_limit = match c.queue_limit {
            0xf8..=0xff => MAX_QUEUE,
            q @ 0xf0..=0xf7 => 64 + u32::from(q - 0xf0),
            q => u32::from(q % 6),
        };
        let limiter = Limiter::builder()
            .capacity(capacity)
            .max_capacity(max)
            .reserve(reserve)
            .queue_limit(queue_limit)
            .track_leases(tracked)
            .build()
            .expect("a valid configuration");
        limiter.faults().advance_clock(FAKE_EPOCH_MS);
        let now = FAKE_EPOCH_MS;
        let watchdog = c.watchdog.then(|| {
            let interval = (u64::from(c.interval) % 128 + 1) * 4;
            let m = WatchdogModel {
                interval,
                max_idle: c.max_idle.map(|v| u64::from(v) * 4),
                grace: u64::from(c.grace) * 4,
                stall_after: u64::from(c.stall_after) * 4,
                drift_ticks: u32::from(c.drift_ticks % 4) + 1,
                last_tick: now,
                ticks: 0,
                stall_since: None,
                drift_seen: 0,
                drift_min: 0,
                leaking: false,
                oldest: None,
            };
            let mut config = WatchdogConfig::default()
                .interval(Duration::from_millis(m.interval))
                .grace(Duration::from_millis(m.grace))
                .stall_after(Duration::from_millis(m.stall_after))
                .drift_ticks(m.drift_ticks);
            if let Some(idle) = m.max_idle {
                config = config.max_idle(Duration::from_millis(idle));
            }
            (Watchdog::new(limiter.clone(), config), m)
        });
        assert_eq!(limiter.tracks_leases(), tracked);
        Sut {
            limiter,
            tracked,
            watchdog,
            model: Model {
                now,
                ..Model::new(capacity, max, reserve, queue_limit)
            },
            waiters: Vec::new(),
            permits: Vec::new(),
            leaked: Vec::new(),
            stale: VecDeque::new(),
            next_id: 0,
            trace,
        }
    }

    fn lease_for(&self, p: &Permit) -> Lease {
        Lease {
            id: p.lease_id(),
            started: self.model.now,
            last_active: self.model.now,
            state: LeaseState::Held,
        }
    }

    /// The leases the limiter tracks: none without `track_leases`.
    fn leases(&self) -> impl Iterator<Item = &Lease> {
        let n = if self.tracked { usize::MAX } else { 0 };
        self.permits
            .iter()
            .chain(&self.leaked)
            .map(|(_, l)| l)
            .take(n)
    }

    fn leases_mut(&mut self) -> impl Iterator<Item = &mut Lease> {
        let n = if self.tracked { usize::MAX } else { 0 };
        self.permits
            .iter_mut()
            .chain(self.leaked.iter_mut())
            .map(|(_, l)| l)
            .take(n)
    }

    fn add_permit(&mut self, p: Permit) {
        let lease = self.lease_for(&p);
        assert!(
            self.leases().all(|l| !l.live() || l.id != lease.id),
            "lease id {} handed out twice",
            lease.id
        );
        self.permits.push((p, lease));
    }

    fn try_acquire(&mut self, critical: bool) -> Option<Permit> {
        let real = if critical {
            self.limiter.try_acquire_critical()
        } else {
            self.limiter.try_acquire()
        };
        let expect = self.model.try_acquire(critical).map(|_| ());
        assert_eq!(ok_kind(&real), expect, "try_acquire(critical: {critical})");
        real.ok()
    }

    /// A new acquire future polled once. Returns what it added.
    fn acquire(&mut self) -> Added {
        let id = self.next_id;
        self.next_id += 1;
        let mut fut = self.limiter.acquire();
        let expect = self.model.acquire(id);
        match (poll(&mut fut), expect) {
            (Poll::Ready(Ok(p)), Ok(true)) => {
                self.add_permit(p);
                Added::Permit
            }
            (Poll::Pending, Ok(false)) => {
                self.waiters.push((id, fut));
                Added::Waiter
            }
            (Poll::Ready(Err(a)), Err(b)) => {
                assert_eq!(a, b, "acquire refused for another reason");
                Added::Nothing
            }
            (real, model) => panic!("acquire: real {real:?}, model {model:?}"),
        }
    }

    fn poll_waiter(&mut self, i: usize) {
        let id = self.waiters[i].0;
        let granted = self.model.granted.contains(&id);
        match poll(&mut self.waiters[i].1) {
            Poll::Ready(Ok(p)) => {
                assert!(
                    granted,
                    "waiter {id} got a permit the model did not grant it (FIFO order)"
                );
                self.model.granted.retain(|&g| g != id);
                self.model.admitted += 1;
                drop(self.waiters.remove(i));
                self.add_permit(p);
            }
            Poll::Ready(Err(e)) => {
                assert!(!granted, "granted waiter {id} failed with {e}");
                assert_eq!(e, Rejected::Closed, "waiter {id}");
                assert!(self.model.closed, "waiter {id} failed while open");
                self.model.rejected[reason_index(e)] += 1;
                self.model.cancel(id);
                drop(self.waiters.remove(i));
            }
            Poll::Pending => {
                assert!(!granted, "granted waiter {id} still pending");
                assert!(!self.model.closed, "waiter {id} pending after close");
            }
        }
    }

    fn cancel_waiter(&mut self, i: usize) {
        let (id, fut) = self.waiters.remove(i);
        drop(fut);
        self.model.cancel(id);
    }

    fn drop_permit(&mut self, i: usize) {
        let (p, lease) = self.permits.remove(i);
        drop(p);
        if lease.live() {
            self.model.release();
        }
        if self.stale.len() == STALE_IDS {
            self.stale.pop_front();
        }
        self.stale.push_back(lease.id);
    }

    fn apply(&mut self, op: Op) {
        if self.trace {
            eprintln!("{op:?}");
        }
        let now = self.model.now;
        match op {
            Op::TryAcquire | Op::TryAcquireCritical => {
                if let Some(p) = self.try_acquire(matches!(op, Op::TryAcquireCritical)) {
                    self.add_permit(p);
                }
            }
            Op::Acquire => {
                self.acquire();
            }
            Op::AcquireUnpolled => drop(self.limiter.acquire()),
            Op::Poll(i) if !self.waiters.is_empty() => {
                self.poll_waiter(usize::from(i) % self.waiters.len())
            }
            Op::Cancel(i) if !self.waiters.is_empty() => {
                self.cancel_waiter(usize::from(i) % self.waiters.len())
            }
            Op::Drop(i) if !self.permits.is_empty() => {
                self.drop_permit(usize::from(i) % self.permits.len())
            }
            Op::Touch(i) if !self.permits.is_empty() => {
                let i = usize::from(i) % self.permits.len();
                let (p, lease) = &mut self.permits[i];
                p.touch();
                if lease.live() {
                    lease.last_active = now;
                }
            }
            Op::SetCapacity(n) => {
                let n = u32::from(n) % (self.model.max + 3);
                let real = self.limiter.set_capacity(n);
                assert_eq!(real.is_ok(), n <= self.model.max, "set_capacity({n})");
                if n <= self.model.max {
                    self.model.capacity = n;
                    self.model.hand_off();
                }
            }
            Op::Close => {
                self.limiter.close();
                self.model.closed = true;
            }
            Op::Revoke(i) => {
                let total = self.permits.len() + self.leaked.len();
                if total == 0 {
                    return self.check();
                }
                let i = usize::from(i) % total;
                let (p, lease) = if i < self.permits.len() {
                    &mut self.permits[i]
                } else {
                    &mut self.leaked[i - self.permits.len()]
                };
                let was_held = self.tracked && lease.state == LeaseState::Held;
                assert_eq!(
                    self.limiter.revoke(p.lease_id()),
                    was_held,
                    "revoke({}) of a lease in state {:?}",
                    lease.id,
                    lease.state
                );
                assert_eq!(p.is_revoked(), self.tracked, "is_revoked after revoke");
                if was_held {
                    lease.state = LeaseState::Revoked { at: now };
                    self.model.revoked += 1;
                }
            }
            Op::RevokeStale(i) if !self.stale.is_empty() => {
                let id = self.stale[usize::from(i) % self.stale.len()];
                assert!(
                    !self.limiter.revoke(id),
                    "revoke({id}) of a dropped lease succeeded"
                );
            }
            Op::RevokeIdle(ms) => {
                let min = u64::from(ms) * 4;
                let mut expect = 0;
                for l in self.leases_mut() {
                    if l.state == LeaseState::Held && now - l.last_active >= min {
                        l.state = LeaseState::Revoked { at: now };
                        expect += 1;
                    }
                }
                self.model.revoked += expect as u64;
                let real = self.limiter.revoke_idle(Duration::from_millis(min));
                assert_eq!(real, expect, "revoke_idle({min} ms)");
            }
            Op::RevokeOldest(n) => {
                let n = usize::from(n % 4);
                let mut held: Vec<(u64, u32)> = self
                    .leases()
                    .filter(|l| l.state == LeaseState::Held)
                    .map(|l| (l.started, l.id.slot))
                    .collect();
                held.sort_unstable();
                held.truncate(n);
                for l in self.leases_mut() {
                    if l.state == LeaseState::Held && held.contains(&(l.started, l.id.slot)) {
                        l.state = LeaseState::Revoked { at: now };
                    }
                }
                self.model.revoked += held.len() as u64;
                assert_eq!(
                    self.limiter.revoke_oldest(n),
                    held.len(),
                    "revoke_oldest({n})"
                );
            }
            Op::Reclaim(g) => {
                let grace = u64::from(g) * 4;
                let mut expect = 0;
                for l in self.leases_mut() {
                    if let LeaseState::Revoked { at } = l.state {
                        if now - at >= grace {
                            l.state = LeaseState::Reclaimed;
                            expect += 1;
                        }
                    }
                }
                let real = self.limiter.reclaim_revoked(Duration::from_millis(grace));
                assert_eq!(real, expect, "reclaim_revoked({grace} ms)");
                self.model.reclaimed += expect as u64;
                for _ in 0..expect {
                    self.model.release();
                }
            }
            Op::Tick => self.tick(),
            Op::AdvanceClock(ms) => {
                let ms = u64::from(ms % 1024);
                self.limiter.faults().advance_clock(ms);
                self.model.now += ms;
            }
            Op::Leak(n) => {
                for _ in 0..n % 4 {
                    match self.try_acquire(true) {
                        Some(p) => {
                            let lease = self.lease_for(&p);
                            self.leaked.push((p, lease));
                        }
                        None => break,
                    }
                }
            }
            Op::Stall(k) => {
                let k = u32::from(k % 4);
                self.limiter.faults().stall(k);
                self.model.stalls += k;
            }
            Op::Drift(n) => {
                let n = u32::from(n % 4);
                let expect = n.min(self.model.max.saturating_sub(self.model.in_use));
                assert_eq!(self.limiter.faults().drift(n), expect, "drift({n})");
                self.model.in_use += expect;
            }
            Op::Churn(n) => {
                for _ in 0..(usize::from(n) + 1) * 8 {
                    match self.acquire() {
                        Added::Waiter => self.cancel_waiter(self.waiters.len() - 1),
                        Added::Permit => self.drop_permit(self.permits.len() - 1),
                        Added::Nothing => {}
                    }
                }
            }
            Op::Flood(n) => {
                for _ in 0..=n {
                    self.acquire();
                }
            }
            _ => {}
        }
        self.check();
    }

    /// One watchdog tick, real and modelled.
    fn tick(&mut self) {
        let Some((dog, wd)) = self.watchdog.as_mut() else {
            return;
        };
        let real = dog.tick();
        let now = self.model.now;
        wd.last_tick = now;
        wd.ticks += 1;
        let (max_idle, grace, stall_after) = (wd.max_idle, wd.grace, wd.stall_after);

        // The lease scan: idle leases revoked, revoked ones past their grace
        // reclaimed (a lease revoked in this scan waits for the next).
        let mut revoked = 0;
        let mut reclaimed = 0;
        let mut releases = 0;
        let n = if self.tracked { usize::MAX } else { 0 };
        for (_, l) in self
            .permits
            .iter_mut()
            .chain(self.leaked.iter_mut())
            .take(n)
        {
            match l.state {
                LeaseState::Held if max_idle.is_some_and(|m| now - l.last_active >= m) => {
                    l.state = LeaseState::Revoked { at: now };
                    revoked += 1;
                }
                LeaseState::Revoked { at } if now - at >= grace => {
                    l.state = LeaseState::Reclaimed;
                    reclaimed += 1;
                    releases += 1;
                }
                _ => {}
            }
        }
        self.model.revoked += revoked as u64;
        self.model.reclaimed += reclaimed as u64;
        for _ in 0..releases {
            self.model.release();
        }
        let pending = self
            .permits
            .iter()
            .chain(&self.leaked)
            .filter(|(_, l)| matches!(l.state, LeaseState::Revoked { .. }))
            .count();
        wd.leaking = max_idle.is_some() && pending > 0;
        wd.oldest = self
            .permits
            .iter()
            .chain(&self.leaked)
            .filter(|(_, l)| self.tracked && l.live())
            .map(|(_, l)| l.started)
            .min();
        let live_slots = self
            .permits
            .iter()
            .chain(&self.leaked)
            .filter(|(_, l)| l.live())
            .count() as u32
            + self.model.granted.len() as u32;
        let in_use_after_scan = self.model.in_use;
        // A reclaim changes the state word; the drift check only runs when
        // nothing moved during the scan.
        let moved = reclaimed > 0;

        // Stalls: waiters beside free permits for `stall_after`.
        let m = &mut self.model;
        let room = !m.closed && m.in_use < m.limit();
        let mut stall_repaired = false;
        if room && m.live_waiting() > 0 {
            let since = *wd.stall_since.get_or_insert(now);
            if now - since >= stall_after {
                m.hand_off();
                m.repaired += 1;
                stall_repaired = true;
                wd.stall_since = None;
            }
        } else {
            wd.stall_since = None;
            if room && !m.queue.is_empty() {
                m.hand_off();
            }
        }

        // Drift: more counted than the lease table accounts for, for
        // `drift_ticks` ticks in a row.
        let mut drift_repaired = 0;
        if !self.tracked {
            // Without leases there is nothing to compare the count with.
        } else if !moved && in_use_after_scan > live_slots {
            let excess = in_use_after_scan - live_slots;
            wd.drift_min = if wd.drift_seen == 0 {
                excess
            } else {
                wd.drift_min.min(excess)
            };
            wd.drift_seen += 1;
            if wd.drift_seen >= wd.drift_ticks {
                let fix = wd.drift_min.min(m.in_use);
                if fix > 0 {
                    m.in_use -= fix;
                    m.repaired += 1;
                    m.hand_off();
                }
                drift_repaired = fix;
                wd.drift_seen = 0;
            }
        } else {
            // No excess, or the count moved during the scan: the run of
            // ticks in a row starts again.
            wd.drift_seen = 0;
        }

        let mut expect = TickReport::default();
        expect.revoked = revoked;
        expect.reclaimed = reclaimed;
        expect.stall_repaired = stall_repaired;
        expect.drift_repaired = drift_repaired;
        assert_eq!(real, expect, "watchdog tick report");
    }

    fn expected_state(&self) -> HealthState {
        let m = &self.model;
        let silent = self
            .watchdog
            .as_ref()
            .is_some_and(|(_, wd)| m.now - wd.last_tick > (wd.interval * 3).max(250));
        let leaking = self.watchdog.as_ref().is_some_and(|(_, wd)| wd.leaking);
        if m.closed {
            if m.in_use > 0 {
                HealthState::Draining
            } else {
                HealthState::Closed
            }
        } else if silent {
            HealthState::Degraded(admit::Cause::WatchdogSilent)
        } else if leaking {
            HealthState::Degraded(admit::Cause::Leaking)
        } else if m.live_waiting() > 0 || m.in_use >= m.limit() {
            HealthState::Saturated
        } else {
            HealthState::Healthy
        }
    }

    fn check(&self) {
        let m = &self.model;
        let l = &self.limiter;
        assert_eq!(l.in_use(), m.in_use, "in_use");
        assert_eq!(l.waiting(), m.live_waiting(), "waiting");
        assert_eq!(l.capacity(), m.capacity, "capacity");
        assert_eq!(l.is_closed(), m.closed, "closed");
        assert_eq!(
            l.available(),
            m.limit().saturating_sub(m.in_use),
            "available"
        );
        // I1: grants only below the cap (the model grants nothing else), so
        // the count never passes the largest capacity the limiter can have.
        assert!(m.in_use <= m.max, "in_use {} above max {}", m.in_use, m.max);
        // I3: nobody queued beside a free permit, unless a hand-off was
        // deliberately lost and nothing has re-driven the queue since.
        if !m.closed && m.in_use < m.limit() && !m.lost_wakeup {
            assert!(
                m.queue.is_empty(),
                "waiters (or cancelled tickets) queued beside free permits"
            );
        }
        for (p, lease) in self.permits.iter().chain(&self.leaked) {
            assert_eq!(p.lease_id(), lease.id);
            assert_eq!(
                p.is_revoked(),
                lease.state != LeaseState::Held,
                "lease {} is {:?}",
                lease.id,
                lease.state
            );
            if !self.tracked {
                assert_eq!(p.age(), Duration::ZERO);
                assert_eq!(p.idle(), Duration::ZERO);
            } else if lease.live() {
                assert_eq!(
                    p.age(),
                    Duration::from_millis(m.now - lease.started),
                    "age of {}",
                    lease.id
                );
                assert_eq!(
                    p.idle(),
                    Duration::from_millis(m.now - lease.last_active),
                    "idle time of {}",
                    lease.id
                );
            }
        }
        self.check_snapshot(&l.health().snapshot());
    }

    /// I6: every grant, rejection, revocation, reclaim and repair counted.
    fn check_snapshot(&self, s: &Snapshot) {
        let m = &self.model;
        assert_eq!(s.in_use, m.in_use, "snapshot in_use");
        assert_eq!(s.waiting, m.live_waiting(), "snapshot waiting");
        assert_eq!(s.capacity, m.capacity, "snapshot capacity");
        assert_eq!(s.max_capacity, m.max, "snapshot max_capacity");
        assert_eq!(s.reserved, m.reserve, "snapshot reserved");
        assert_eq!(s.queue_limit, m.queue_limit, "snapshot queue_limit");
        assert_eq!(s.admitted_total, m.admitted, "admitted_total");
        for (i, reason) in REASONS.iter().enumerate() {
            assert_eq!(
                s.rejected_total.get(reason).copied(),
                Some(m.rejected[i]),
                "rejected_total[{reason}]"
            );
        }
        assert_eq!(s.revoked_total, m.revoked, "revoked_total");
        assert_eq!(s.reclaimed_total, m.reclaimed, "reclaimed_total");
        assert_eq!(
            s.repaired_total, m.repaired,
            "repaired_total (a release found the count at zero, or a repair went uncounted)"
        );
        let revoked_pending = self
            .leases()
            .filter(|l| matches!(l.state, LeaseState::Revoked { .. }))
            .count() as u32;
        assert_eq!(s.revoked_pending, revoked_pending, "revoked_pending");
        // While a watchdog is alive a snapshot takes the oldest lease from
        // its last scan (none once nothing is held); otherwise it scans.
        let alive_scan = self.watchdog.as_ref().and_then(|(_, wd)| {
            let silent = m.now - wd.last_tick > (wd.interval * 3).max(250);
            (!silent).then_some(wd.oldest)
        });
        let oldest = match alive_scan {
            Some(scanned) if m.in_use > 0 => scanned.map_or(0, |t| m.now - t),
            Some(_) => 0,
            None => self
                .leases()
                .filter(|l| l.live())
                .map(|l| m.now - l.started)
                .max()
                .unwrap_or(0),
        };
        assert_eq!(s.oldest_lease_ms, oldest, "oldest_lease_ms");
        assert_eq!(s.state, self.expected_state(), "health state");
        assert_eq!(s.cause, s.state.cause());
        match &self.watchdog {
            Some((_, wd)) => {
                assert!(s.watchdog.attached);
                let silent = m.now - wd.last_tick > (wd.interval * 3).max(250);
                assert_eq!(s.watchdog.alive, !silent, "watchdog alive");
                assert_eq!(s.watchdog.ticks, wd.ticks, "watchdog ticks");
                assert_eq!(s.watchdog.last_tick_ms, m.now - wd.last_tick);
            }
            None => {
                assert!(!s.watchdog.attached);
                assert!(!s.watchdog.alive);
            }
        }
    }

    /// Drops everything: every permit comes back exactly once (I2), and any
    /// count drift left is removed by the watchdog.
    fn finish(mut self) {
        while !self.waiters.is_empty() {
            self.cancel_waiter(self.waiters.len() - 1);
        }
        while !self.permits.is_empty() {
            self.drop_permit(self.permits.len() - 1);
        }
        self.permits.append(&mut self.leaked);
        while !self.permits.is_empty() {
            self.drop_permit(self.permits.len() - 1);
        }
        self.check();
        assert_eq!(
            self.limiter.waiting(),
            0,
            "waiters left after every future was dropped"
        );
        // A drift streak repairs the least excess it saw, so a streak that
        // began before the last drift may need a second one.
        let ticks = self
            .watchdog
            .as_ref()
            .map_or(0, |(_, wd)| 2 * wd.drift_ticks);
        for _ in 0..ticks {
            self.apply(Op::Tick);
        }
        if self.watchdog.is_some() && self.tracked {
            assert_eq!(self.limiter.in_use(), 0, "count drift not repaired");
        }
    }
}

/// What one `acquire` added.
enum Added {
    Permit,
    Waiter,
    Nothing,
}

/// Runs one input: a configuration, then operations until the bytes run out.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(config) = Config::arbitrary(&mut u) else {
        return;
    };
    let trace = std::env::var_os("ADMIT_FUZZ_TRACE").is_some();
    if trace {
        eprintln!("{config:?}");
    }
    let mut sut = Sut::new(&config, trace);
    sut.check();
    while !u.is_empty() {
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        sut.apply(op);
    }
    sut.finish();
}
