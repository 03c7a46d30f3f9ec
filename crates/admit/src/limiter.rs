//! The limiter: its builder, the shared state, and every operation that
//! changes the count.
//!
//! # Implementation notes
//!
//! * Admission is one CAS on the state word (`state.rs`): it checks closed,
//!   room and "is anyone queued" together, so a caller can never slip past a
//!   waiter, and a waiter can never queue behind a permit that was just freed.
//! * Release is one `fetch_sub` on the same word. Only when the word it
//!   returns shows outstanding tickets does the releaser run the hand-off
//!   (`grant_waiting`), which claims the oldest ticket and counts the permit
//!   for it in a single CAS, then delivers through the ticket's mailbox
//!   (`queue.rs`). Because the count and the ticket move together, a released
//!   permit is either back in the pool or owned by exactly one ticket: no
//!   wake-up can be lost between the two.
//! * Every permit holds a slot (`slots.rs`) with a generation; releasing and
//!   reclaiming both CAS the slot out of HELD/REVOKED, so whichever comes
//!   first frees the count and the other does nothing (I2).

use crate::clock::Clock;
use crate::counter::Counter;
use crate::drain::{DrainWakers, Drained};
use crate::error::{BuildError, CapacityError, Rejected};
use crate::health::{Health, HealthShared};
use crate::loom::{Arc, AtomicU32, AtomicU64, Ordering};
use crate::permit::{LeaseId, Permit};
use crate::queue::{Deliver, Queue, MAX_SLOTS};
use crate::slots::{gen_of, pack, status, status_of, Slots};
use crate::state::{State, MAX_CAPACITY, ONE_IN_USE, TICKET_SPACE};
use crate::Acquire;
use std::time::Duration;

/// The most waiters a queue may hold.
pub const MAX_QUEUE: u32 = 1024;

/// Builds a [`Limiter`]. Start from [`Limiter::builder`].
///
/// ```
/// let limiter = admit::Limiter::builder()
///     .capacity(100)
///     .max_capacity(1_000)
///     .queue_limit(16)
///     .reserve(2)
///     .build()
///     .unwrap();
/// assert_eq!(limiter.capacity(), 100);
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    capacity: u32,
    max_capacity: Option<u32>,
    queue_limit: u32,
    reserve: u32,
    name: String,
    track_leases: bool,
}

impl Builder {
    /// How many permits may be held at once (default 1).
    pub fn capacity(mut self, n: u32) -> Self {
        self.capacity = n;
        self
    }

    /// The largest capacity [`Limiter::set_capacity`] may set later (default:
    /// the initial capacity). Memory is sized by it: one lease slot each.
    pub fn max_capacity(mut self, n: u32) -> Self {
        self.max_capacity = Some(n);
        self
    }

    /// How many callers of [`Limiter::acquire`] may wait at once (default 0:
    /// `acquire` fails at once with [`Rejected::Full`] when there is no room).
    /// At most [`MAX_QUEUE`].
    pub fn queue_limit(mut self, n: u32) -> Self {
        self.queue_limit = n;
        self
    }

    /// Permits kept back for critical work (default 0). Ordinary acquires are
    /// admitted only while fewer than `capacity - reserve` permits are held;
    /// [`Limiter::try_acquire_critical`] may use the reserve too.
    pub fn reserve(mut self, n: u32) -> Self {
        self.reserve = n;
        self
    }

    /// Whether every permit is a lease (default true): revocable, reclaimable
    /// by the watchdog, with start and activity times and a drift check.
    ///
    /// Turning it off saves two atomic operations per permit, for permits
    /// that cannot leak because they never outlive a future (request-scoped
    /// admission). Such permits cannot be revoked or reclaimed, their
    /// `touch()` does nothing, and the watchdog can only repair stalls.
    ///
    /// ```
    /// let limiter = admit::Limiter::builder().capacity(8).track_leases(false).build().unwrap();
    /// let p = limiter.try_acquire().unwrap();
    /// assert!(!limiter.revoke(p.lease_id()));
    /// ```
    pub fn track_leases(mut self, on: bool) -> Self {
        self.track_leases = on;
        self
    }

    /// A name for logs and metrics (default `"default"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Builds the limiter.
    pub fn build(self) -> Result<Limiter, BuildError> {
        let max = self.max_capacity.unwrap_or(self.capacity);
        if max > MAX_CAPACITY {
            return Err(BuildError::MaxTooLarge(max));
        }
        if self.capacity > max {
            return Err(BuildError::CapacityAboveMax {
                capacity: self.capacity,
                max,
            });
        }
        if self.queue_limit > MAX_QUEUE {
            return Err(BuildError::QueueTooLarge(self.queue_limit));
        }
        // Mailboxes: a power of two at least four times the queue limit (so
        // ghosts of cancelled waiters leave room), at most the ticket space.
        // Outstanding tickets never exceed half of it, which keeps each
        // mailbox's laps far apart.
        let boxes = ((self.queue_limit as usize) * 4)
            .next_power_of_two()
            .clamp(2, TICKET_SPACE as usize);
        let window = (boxes / 2) as u32;
        let slots = max as usize + window as usize;
        assert!(slots < MAX_SLOTS);
        let inner = Inner {
            state: AtomicU64::new(State::new(self.capacity).0),
            slots: Slots::new(slots),
            queue: Queue::new(boxes),
            ghosts: AtomicU32::new(0),
            window,
            queue_limit: self.queue_limit,
            reserve: self.reserve,
            track_leases: self.track_leases,
            untracked_grants: Counter::new(),
            max_capacity: max,
            clock: Clock::new(),
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            revoked: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
            drain: DrainWakers::new(),
            health: HealthShared::new(self.name),
            #[cfg(feature = "fault-injection")]
            stalls: AtomicU32::new(0),
        };
        Ok(Limiter {
            inner: Arc::new(inner),
        })
    }
}

// `repr(C)` keeps the fields every admission and release writes (the state
// word, then the free-list head at the front of `slots`) first, next to the
// `Arc`'s own counts, which every owned permit also writes: under contention
// fewer cache lines move between cores.
#[repr(C)]
pub(crate) struct Inner {
    pub(crate) state: AtomicU64,
    pub(crate) slots: Slots,
    pub(crate) queue: Queue,
    /// Cancelled tickets not yet claimed by a releaser.
    pub(crate) ghosts: AtomicU32,
    /// Hard bound on outstanding tickets (live waiters and ghosts).
    pub(crate) window: u32,
    pub(crate) queue_limit: u32,
    pub(crate) reserve: u32,
    pub(crate) track_leases: bool,
    /// Grants of untracked permits (tracked ones count in their slot).
    pub(crate) untracked_grants: Counter,
    pub(crate) max_capacity: u32,
    pub(crate) clock: Clock,
    pub(crate) rejected: [AtomicU64; 5],
    pub(crate) revoked: AtomicU64,
    pub(crate) reclaimed: AtomicU64,
    pub(crate) repaired: AtomicU64,
    pub(crate) drain: DrainWakers,
    pub(crate) health: HealthShared,
    /// Fault injection: hand-offs still to be skipped.
    #[cfg(feature = "fault-injection")]
    pub(crate) stalls: AtomicU32,
}

/// A connection limiter. Cheap to clone: clones share one state.
///
/// ```
/// # futures::executor::block_on(async {
/// let limiter = admit::Limiter::new(2);
/// let a = limiter.try_acquire().unwrap();
/// let _b = limiter.acquire().await; // queue limit 0: fails at once when full
/// assert_eq!(limiter.in_use(), 2);
/// assert_eq!(limiter.try_acquire().unwrap_err(), admit::Rejected::Full);
/// drop(a);
/// assert!(limiter.try_acquire().is_ok());
/// # });
/// ```
#[derive(Clone)]
pub struct Limiter {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.inner.load();
        f.debug_struct("Limiter")
            .field("name", &self.inner.health.name)
            .field("capacity", &s.capacity())
            .field("in_use", &s.in_use())
            .field("waiting", &self.waiting())
            .field("closed", &s.closed())
            .finish()
    }
}

impl Limiter {
    /// A limiter with `capacity` permits, no wait queue and no reserve.
    ///
    /// # Panics
    /// If `capacity` is above the most a limiter supports (1,048,575).
    pub fn new(capacity: u32) -> Limiter {
        Limiter::builder()
            .capacity(capacity)
            .build()
            .expect("capacity within limits")
    }

    /// Starts a [`Builder`].
    pub fn builder() -> Builder {
        Builder {
            capacity: 1,
            max_capacity: None,
            queue_limit: 0,
            reserve: 0,
            name: "default".to_owned(),
            track_leases: true,
        }
    }

    /// Takes a permit if one is free right now. Never waits, never allocates,
    /// takes no lock. Fails with [`Rejected::Full`] when only reserved
    /// headroom is left or someone is already queued (waiters go first).
    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        self.inner
            .try_count(false)
            .map(|()| self.inner.new_permit(&self.inner))
            .inspect_err(|&r| self.inner.count_rejection(r))
    }

    /// Like [`try_acquire`](Self::try_acquire), but may use the reserved
    /// headroom and does not yield to queued waiters: for health checks,
    /// admin sessions and other work that must get in at the cap.
    ///
    /// ```
    /// let limiter = admit::Limiter::builder().capacity(2).reserve(1).build().unwrap();
    /// let _a = limiter.try_acquire().unwrap();
    /// assert!(limiter.try_acquire().is_err()); // the last permit is reserved
    /// let _admin = limiter.try_acquire_critical().unwrap();
    /// ```
    pub fn try_acquire_critical(&self) -> Result<Permit, Rejected> {
        self.inner
            .try_count(true)
            .map(|()| self.inner.new_permit(&self.inner))
            .inspect_err(|&r| self.inner.count_rejection(r))
    }

    /// Waits for a permit in the FIFO queue. Fails at once with
    /// [`Rejected::QueueFull`] when the queue is full (or [`Rejected::Full`]
    /// when the limiter has no queue), and with [`Rejected::Closed`] if the
    /// limiter is or becomes closed.
    ///
    /// The future is cancel-safe: dropping it at any point leaves nothing
    /// behind, and a permit handed to it just before the drop goes to the
    /// next waiter.
    pub fn acquire(&self) -> Acquire {
        Acquire::new(self.clone())
    }

    /// Changes the capacity at run time, up to `max_capacity`. Growing hands
    /// the new room to waiters at once; shrinking keeps every held permit and
    /// admits no one until fewer than the new capacity are held.
    pub fn set_capacity(&self, capacity: u32) -> Result<(), CapacityError> {
        if capacity > self.inner.max_capacity {
            return Err(CapacityError {
                requested: capacity,
                max: self.inner.max_capacity,
            });
        }
        let mut cur = self.inner.load();
        loop {
            let next = cur.with_capacity(capacity);
            match self.inner.state.compare_exchange_weak(
                cur.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => cur = State(actual),
            }
        }
        self.inner.grant_waiting();
        Ok(())
    }

    /// Closes the limiter: every acquire from now on fails with
    /// [`Rejected::Closed`], and queued waiters wake with it. Held permits
    /// stay valid; [`drained`](Self::drained) resolves when the last is gone.
    pub fn close(&self) {
        let prev = State(
            self.inner
                .state
                .fetch_or(State(0).with_closed().0, Ordering::AcqRel),
        );
        if prev.closed() {
            return;
        }
        self.inner
            .queue
            .wake_all(prev.head(), prev.tail(), &self.inner.slots);
        if prev.in_use() == 0 {
            self.inner.drain.wake_all();
        }
        self.inner.health.note_change(self);
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.load().closed()
    }

    /// Resolves when the limiter is closed and no permit is held.
    pub fn drained(&self) -> Drained {
        Drained::new(self.clone())
    }

    pub(crate) fn is_drained(&self) -> bool {
        let s = self.inner.load();
        s.closed() && s.in_use() == 0
    }

    /// The current capacity.
    pub fn capacity(&self) -> u32 {
        self.inner.load().capacity()
    }

    /// The largest capacity this limiter can be set to.
    pub fn max_capacity(&self) -> u32 {
        self.inner.max_capacity
    }

    /// Permits reserved for critical acquires.
    pub fn reserve(&self) -> u32 {
        self.inner.reserve
    }

    /// How many callers may wait.
    pub fn queue_limit(&self) -> u32 {
        self.inner.queue_limit
    }

    /// Permits held right now (including grants not yet picked up).
    pub fn in_use(&self) -> u32 {
        self.inner.load().in_use()
    }

    /// Callers waiting in the queue right now.
    pub fn waiting(&self) -> u32 {
        self.inner.live_waiting(self.inner.load())
    }

    /// Permits an ordinary acquire could take right now.
    pub fn available(&self) -> u32 {
        let s = self.inner.load();
        self.inner.limit(s).saturating_sub(s.in_use())
    }

    /// The limiter's name (see [`Builder::name`]).
    pub fn name(&self) -> &str {
        &self.inner.health.name
    }

    /// Counts a rejection an adapter made on this limiter's behalf, such as
    /// [`Rejected::PerIp`] or [`Rejected::Timeout`].
    pub fn record_rejection(&self, reason: Rejected) {
        self.inner.count_rejection(reason);
    }

    /// The health handle: snapshots, state changes, and the watchdog's view.
    pub fn health(&self) -> Health {
        Health::new(self.clone())
    }

    /// Revokes every lease idle (not touched) for at least `older_than`.
    /// Their holders see [`Permit::revoked`] resolve; a holder that does not
    /// drop its permit is reclaimed by [`reclaim_revoked`](Self::reclaim_revoked)
    /// (the watchdog does both). Returns how many leases were revoked.
    pub fn revoke_idle(&self, older_than: Duration) -> usize {
        let now = self.inner.clock.advance();
        let min = older_than.as_millis() as u64;
        let mut n = 0;
        for (i, slot) in self.inner.slots.slots.iter().enumerate() {
            let word = slot.state.load(Ordering::Acquire);
            if status_of(word) == status::HELD
                && now.saturating_sub(slot.last_active.load(Ordering::Relaxed)) >= min
                && self.inner.revoke_slot(i as u32, word, now)
            {
                n += 1;
            }
        }
        n
    }

    /// Revokes the `n` oldest leases (by start time). Returns how many were
    /// revoked.
    pub fn revoke_oldest(&self, n: usize) -> usize {
        let now = self.inner.clock.advance();
        let mut held: Vec<(u64, u32, u64)> = self
            .inner
            .slots
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| {
                let word = slot.state.load(Ordering::Acquire);
                (status_of(word) == status::HELD)
                    .then(|| (slot.started.load(Ordering::Relaxed), i as u32, word))
            })
            .collect();
        held.sort_unstable();
        held.iter()
            .take(n)
            .filter(|&&(_, i, word)| self.inner.revoke_slot(i, word, now))
            .count()
    }

    /// Whether permits are tracked as leases (see [`Builder::track_leases`]).
    pub fn tracks_leases(&self) -> bool {
        self.inner.track_leases
    }

    /// Revokes one lease by id. Returns false if it is no longer held.
    pub fn revoke(&self, id: LeaseId) -> bool {
        let Some(slot) = self.inner.slots.slots.get(id.slot as usize) else {
            return false;
        };
        let now = self.inner.clock.advance();
        let word = slot.state.load(Ordering::Acquire);
        gen_of(word) == id.generation
            && status_of(word) == status::HELD
            && self.inner.revoke_slot(id.slot, word, now)
    }

    /// Reclaims every lease revoked at least `grace` ago whose holder still
    /// has not dropped it: its permit returns to the limiter, and the holder's
    /// later drop does nothing. Returns how many were reclaimed.
    pub fn reclaim_revoked(&self, grace: Duration) -> usize {
        let now = self.inner.clock.advance();
        let grace = grace.as_millis() as u64;
        let mut n = 0;
        for (i, slot) in self.inner.slots.slots.iter().enumerate() {
            let word = slot.state.load(Ordering::Acquire);
            if status_of(word) == status::REVOKED
                && now.saturating_sub(slot.revoked_at.load(Ordering::Relaxed)) >= grace
                && self.inner.reclaim_slot(i as u32, word)
            {
                n += 1;
            }
        }
        n
    }
}

impl Inner {
    pub(crate) fn load(&self) -> State {
        State(self.state.load(Ordering::Acquire))
    }

    /// The count ordinary acquires may reach.
    pub(crate) fn limit(&self, s: State) -> u32 {
        s.capacity().saturating_sub(self.reserve)
    }

    /// Live waiters: outstanding tickets less cancelled ones.
    pub(crate) fn live_waiting(&self, s: State) -> u32 {
        s.tickets()
            .saturating_sub(self.ghosts.load(Ordering::Relaxed))
    }

    pub(crate) fn count_rejection(&self, reason: Rejected) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one permit if there is room. `critical` may use the reserve and
    /// does not yield to waiters.
    pub(crate) fn try_count(&self, critical: bool) -> Result<(), Rejected> {
        let mut cur = State(self.state.load(Ordering::Relaxed));
        loop {
            if cur.closed() {
                return Err(Rejected::Closed);
            }
            let limit = if critical {
                cur.capacity()
            } else {
                self.limit(cur)
            };
            if cur.in_use() >= limit || (!critical && cur.tickets() != 0) {
                return Err(Rejected::Full);
            }
            // AcqRel on success: acquiring synchronises with the release of
            // the permit we take over; Relaxed on failure, we only retry.
            match self.state.compare_exchange_weak(
                cur.0,
                cur.0 + ONE_IN_USE,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = State(actual),
            }
        }
    }

    /// Wraps a counted permit in a new lease.
    pub(crate) fn new_permit(&self, this: &Arc<Inner>) -> Permit {
        if !self.track_leases {
            self.untracked_grants.add_one();
            return Permit::untracked(this.clone());
        }
        let (slot, gen) = self
            .slots
            .claim(status::HELD, self.clock.now())
            .expect("the slot table holds max_capacity leases plus the queue window");
        self.slots.count_grant(slot);
        Permit::new(this.clone(), slot, gen)
    }

    /// Permits granted since the limiter was built.
    pub(crate) fn admitted_total(&self) -> u64 {
        self.slots.total_grants() + self.untracked_grants.sum()
    }

    /// Gives one counted permit back and runs the hand-off if anyone waits.
    pub(crate) fn release_count(&self) {
        let Some(prev) = self.sub_one() else {
            return;
        };
        if prev.closed() {
            if prev.in_use() == 1 {
                self.drain.wake_all();
            }
            return;
        }
        if prev.tickets() != 0 {
            #[cfg(feature = "fault-injection")]
            if self
                .stalls
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
            {
                return;
            }
            self.grant_waiting();
        }
    }

    /// Hands free room to waiters, oldest first, for as long as there is
    /// both room and an outstanding ticket.
    pub(crate) fn grant_waiting(&self) {
        let mut cur = self.load();
        loop {
            if cur.closed() || cur.tickets() == 0 || cur.in_use() >= self.limit(cur) {
                return;
            }
            let (next, ticket) = cur.pop_ticket();
            let next = next.with_in_use(cur.in_use() + 1);
            match self.state.compare_exchange_weak(
                cur.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    match self.queue.deliver(ticket, &self.slots) {
                        Deliver::Delivered => {}
                        Deliver::Abandoned => self.uncount(),
                        Deliver::Ghost => {
                            self.ghosts.fetch_sub(1, Ordering::AcqRel);
                            self.uncount();
                        }
                    }
                    cur = self.load();
                }
                Err(actual) => cur = State(actual),
            }
        }
    }

    /// Takes back a permit counted for a waiter that had left. The caller
    /// loops over the queue itself, so this does not start a hand-off.
    fn uncount(&self) {
        if let Some(prev) = self.sub_one() {
            if prev.closed() && prev.in_use() == 1 {
                self.drain.wake_all();
            }
        }
    }

    /// Takes one off `in_use`, never below zero. Returns the state before.
    ///
    /// The count cannot reach zero here unless something outside this crate's
    /// bookkeeping moved it (a drift repair that raced a release); refusing
    /// to wrap keeps the other fields of the word intact, and the refusal is
    /// counted as a repair.
    fn sub_one(&self) -> Option<State> {
        // AcqRel: Release publishes the holder's work to the next acquirer;
        // Acquire lets a hand-off see the tickets it reads.
        let mut cur = State(self.state.load(Ordering::Relaxed));
        loop {
            if cur.in_use() == 0 {
                self.repaired.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match self.state.compare_exchange_weak(
                cur.0,
                cur.0 - ONE_IN_USE,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(cur),
                Err(actual) => cur = State(actual),
            }
        }
    }

    /// HELD -> REVOKED, then tell the holder.
    pub(crate) fn revoke_slot(&self, index: u32, word: u64, now: u64) -> bool {
        let slot = self.slots.get(index);
        slot.revoked_at.store(now, Ordering::Relaxed);
        let revoked = pack(gen_of(word), status::REVOKED);
        // Release: the reclaimer that reads REVOKED sees `revoked_at`.
        if slot
            .state
            .compare_exchange(word, revoked, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        slot.revoke_waker.wake();
        self.revoked.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// REVOKED -> FREE: the holder's later drop finds another state and
    /// does nothing, so the count is released exactly once.
    pub(crate) fn reclaim_slot(&self, index: u32, word: u64) -> bool {
        let slot = self.slots.get(index);
        let free = pack(gen_of(word), status::FREE);
        if slot
            .state
            .compare_exchange(word, free, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.slots.release(index);
        self.reclaimed.fetch_add(1, Ordering::Relaxed);
        self.release_count();
        true
    }
}
