//! The limiter's shared core: the state word, the lease table, the wait
//! queue and the counters, and every operation that changes them.
//!
//! The public handles (`Limiter`, `Permit`, `Acquire`, `Drained`, `Health`,
//! `Watchdog`) hold an `Arc<Inner>` and call the methods here; none of them
//! reads a field of `Inner`, and this module builds none of them. It hands
//! back leases as `(slot, generation)` pairs and figures as a `Snapshot`.
//! See `crates/admit/DESIGN.md` for the protocol as a whole.
//!
//! # Implementation notes
//!
//! * Admission is one CAS on the state word (`state.rs`): it checks closed,
//!   room and "is anyone queued" together, so a caller can never slip past a
//!   waiter, and a waiter can never queue behind a permit that was just freed.
//! * Release is one RMW on the same word. Only when the word it returns shows
//!   outstanding tickets does the releaser run the hand-off
//!   (`grant_waiting`), which claims the oldest ticket and counts the permit
//!   for it in a single CAS, then delivers through the ticket's mailbox
//!   (`queue.rs`). Because the count and the ticket move together, a released
//!   permit is either back in the pool or owned by exactly one ticket: no
//!   wake-up can be lost between the two.
//! * Every tracked permit holds a slot of the lease table (`lease.rs`);
//!   releasing and reclaiming both CAS the slot out of HELD/REVOKED, so
//!   whichever comes first frees the count and the other does nothing (I2).

use crate::clock::Clock;
use crate::counter::Counter;
use crate::error::{CapacityError, Rejected};
use crate::lease::{Kind, LeaseTable, LeaseView, Released};
use crate::loom::{Arc, AtomicU32, AtomicU64, Ordering};
use crate::places::WakerPlaces;
use crate::queue::{Cancel, Deliver, Park, Queue, MAX_SLOTS};
use crate::snapshot::{Cause, HealthShared, HealthState, Repairs, Snapshot};
use crate::state::{State, ONE_IN_USE, TICKET_SPACE};
use std::task::{Context, Waker};

/// Slot index of a permit from a limiter built with `track_leases(false)`:
/// the largest number a permit's slot field holds (`lease.rs`, `GEN_BITS`),
/// which no table reaches (tables have fewer than `MAX_SLOTS` slots), so a
/// permit packs and unpacks it like any slot.
pub(crate) const UNTRACKED: u32 = (1 << (64 - crate::lease::GEN_BITS)) - 1;
const _: () = assert!(MAX_SLOTS as u64 <= UNTRACKED as u64 + 1);

/// A lease as the core hands it out: `(slot, generation)`, or
/// `(UNTRACKED, 0)` for a permit without a lease.
pub(crate) type Lease = (u32, u64);

/// `oldest_scanned` when the scan found no live lease.
const NO_LEASE: u64 = u64::MAX;

/// The lease figure of a snapshot that needs a pass over the table.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LeaseSummary {
    /// Start of the oldest live lease (held or revoked).
    pub(crate) oldest_started: Option<u64>,
}

impl LeaseSummary {
    /// Counts one live slot as the scan saw it.
    pub(crate) fn add(&mut self, v: &LeaseView) {
        if matches!(v.kind, Kind::Granted | Kind::Token) {
            return;
        }
        self.oldest_started = Some(self.oldest_started.map_or(v.started, |o| o.min(v.started)));
    }
}

/// What a limiter is built from (validated by the builder).
pub(crate) struct Params {
    pub(crate) capacity: u32,
    pub(crate) max_capacity: u32,
    pub(crate) queue_limit: u32,
    pub(crate) reserve: u32,
    pub(crate) track_leases: bool,
    pub(crate) name: String,
}

/// What a waiter's first poll decided.
pub(crate) enum Entry {
    /// Counted at once: a permit.
    Counted(Lease),
    /// Must wait: holds this ticket.
    Ticket(u32),
}

/// What a waiter found when it went to park.
pub(crate) enum Parking {
    /// A grant was already waiting.
    Granted(Lease),
    /// Parked in this slot.
    Parked(u32, u64),
}

/// Keeps a field alone on its pair of cache lines (`shard::SPACING`).
#[repr(align(128))]
struct Padded<T>(T);
const _: () = assert!(std::mem::align_of::<Padded<u8>>() == crate::shard::SPACING);

pub(crate) struct Inner {
    /// The state word, alone on its cache line: under contention, the
    /// line every admission and release writes carries nothing else (not
    /// the `Arc`'s counts, not the free-list head), so other threads'
    /// writes to those never invalidate it.
    state: Padded<AtomicU64>,
    leases: LeaseTable,
    queue: Queue,
    /// Cancelled tickets not yet claimed by a releaser.
    ghosts: AtomicU32,
    /// Hard bound on outstanding tickets (live waiters and ghosts).
    window: u32,
    queue_limit: u32,
    reserve: u32,
    track_leases: bool,
    /// Permits granted, counted per thread: summing 64 shards keeps a
    /// snapshot from reading every slot of the lease table.
    grants: Counter,
    max_capacity: u32,
    clock: Clock,
    rejected: [AtomicU64; 5],
    revoked: AtomicU64,
    /// Revoked leases their holders dropped (the others are reclaimed):
    /// `revoked - revoked_dropped - reclaimed` are pending, with no scan.
    revoked_dropped: AtomicU64,
    reclaimed: AtomicU64,
    /// Start of the oldest live lease as the watchdog's last scan found it
    /// (`NO_LEASE` if none), so a snapshot need not scan the table while a
    /// watchdog is ticking.
    oldest_scanned: AtomicU64,
    /// Repairs by kind (`Repairs`): stalls re-driven, drift corrected,
    /// releases that found the count at zero.
    stalls_redriven: AtomicU64,
    drift_corrected: AtomicU64,
    underflows_refused: AtomicU64,
    /// `drained()` futures.
    drain: WakerPlaces<8>,
    /// The health record. The one field other modules reach: the adaptive
    /// controllers report their decisions through `health.adaptive`.
    pub(crate) health: HealthShared,
    /// Fault injection: hand-offs still to be skipped.
    #[cfg(feature = "fault-injection")]
    stalls: AtomicU32,
}

impl Inner {
    pub(crate) fn new(p: Params) -> Inner {
        // Mailboxes: a power of two at least four times the queue limit (so
        // ghosts of cancelled waiters leave room), at most the ticket space.
        // Outstanding tickets never exceed half of it, which keeps each
        // mailbox's laps far apart.
        let boxes = ((p.queue_limit as usize) * 4)
            .next_power_of_two()
            .clamp(2, TICKET_SPACE as usize);
        let window = (boxes / 2) as u32;
        let slots = p.max_capacity as usize + window as usize + LeaseTable::extra();
        assert!(slots < MAX_SLOTS);
        Inner {
            state: Padded(AtomicU64::new(State::new(p.capacity).0)),
            leases: LeaseTable::new(slots),
            queue: Queue::new(boxes),
            ghosts: AtomicU32::new(0),
            window,
            queue_limit: p.queue_limit,
            reserve: p.reserve,
            track_leases: p.track_leases,
            grants: Counter::new(),
            max_capacity: p.max_capacity,
            clock: Clock::new(),
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            revoked: AtomicU64::new(0),
            revoked_dropped: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
            oldest_scanned: AtomicU64::new(NO_LEASE),
            stalls_redriven: AtomicU64::new(0),
            drift_corrected: AtomicU64::new(0),
            underflows_refused: AtomicU64::new(0),
            drain: WakerPlaces::new(),
            health: HealthShared::new(p.name),
            #[cfg(feature = "fault-injection")]
            stalls: AtomicU32::new(0),
        }
    }

    // ----- settings and figures ------------------------------------------

    pub(crate) fn load(&self) -> State {
        State(self.state.0.load(Ordering::Acquire))
    }
    pub(crate) fn max_capacity(&self) -> u32 {
        self.max_capacity
    }
    pub(crate) fn reserve(&self) -> u32 {
        self.reserve
    }
    pub(crate) fn queue_limit(&self) -> u32 {
        self.queue_limit
    }
    pub(crate) fn track_leases(&self) -> bool {
        self.track_leases
    }
    pub(crate) fn name(&self) -> &str {
        &self.health.name
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

    /// Permits granted since the limiter was built.
    fn admitted_total(&self) -> u64 {
        self.grants.sum()
    }

    // ----- admission ------------------------------------------------------

    /// Takes a permit if there is room; counts a rejection if not.
    /// `critical` may use the reserve and does not yield to waiters.
    ///
    /// Only the token take is inlined into the caller: the usual cycle of
    /// a thread that takes and drops permits is that take and the drop's
    /// park (`release`). Counting on the state word and leasing from the
    /// table stay out of line, so the inlined part stays small and spills
    /// less to the stack — stores that the next locked instruction has to
    /// wait for (measured: benches/README.md).
    #[inline(always)]
    pub(crate) fn try_acquire(&self, critical: bool) -> Result<Lease, Rejected> {
        if !critical {
            if let Some(lease) = self.take_token() {
                return Ok(lease);
            }
        }
        self.count_and_lease(critical)
    }

    /// A token parked in this thread's shard, taken as a permit: it is
    /// counted already.
    #[inline(always)]
    fn take_token(&self) -> Option<Lease> {
        let token = if self.track_leases {
            self.leases.take_token(self.clock.now())
        } else {
            self.leases.take_spare().then_some((UNTRACKED, 0))
        };
        if token.is_some() {
            self.grants.add_one();
        }
        token
    }

    /// `try_acquire` without a token: counts the permit on the state word.
    #[inline(never)]
    fn count_and_lease(&self, critical: bool) -> Result<Lease, Rejected> {
        let counted = match self.try_count(critical) {
            // Full, but perhaps only of parked tokens: take them back and
            // look again.
            Err(Rejected::Full) if self.flush_tokens() > 0 => self.try_count(critical),
            other => other,
        };
        match counted {
            Ok(s) => {
                if critical && s.in_use() > self.limit(s) {
                    // Into the reserve: a parked token taken now would admit
                    // an ordinary holder beyond `capacity - reserve`.
                    self.flush_tokens();
                }
                Ok(self.new_lease(s))
            }
            Err(r) => {
                self.count_rejection(r);
                Err(r)
            }
        }
    }

    /// Counts one permit if there is room. Returns the state word as the
    /// count left it.
    fn try_count(&self, critical: bool) -> Result<State, Rejected> {
        let mut cur = State(self.state.0.load(Ordering::Relaxed));
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
            match self.state.0.compare_exchange_weak(
                cur.0,
                cur.0 + ONE_IN_USE,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(State(cur.0 + ONE_IN_USE)),
                Err(actual) => cur = State(actual),
            }
        }
    }

    /// A lease for a permit already counted in use; `s` is the state word
    /// as that count left it.
    fn new_lease(&self, s: State) -> Lease {
        self.grants.add_one();
        // Tokens only where the count leaves room for them, in a shard that
        // is open or opens now.
        let tokens = self.room_for_tokens(s, 0) && (self.leases.mine_open() || self.open_shard(s));
        if !self.track_leases {
            // No slot to own: the permit's drop parks its unit in the
            // dropping thread's `own` word, if that shard is open.
            return (UNTRACKED, 0);
        }
        let now = self.clock.now();
        let lease = if tokens {
            self.leases.claim_owned(now)
        } else {
            self.leases.claim_held(now)
        };
        lease.expect("the lease table holds max_capacity leases plus the queue window")
    }

    // ----- tokens ---------------------------------------------------------

    /// Whether shards may keep tokens with the count at `s`: open, nobody
    /// queued, and room for a token in every open shard and in `opening`
    /// more. The first three tests read nothing shared, so a limiter near
    /// its cap goes no further.
    fn room_for_tokens(&self, s: State, opening: u32) -> bool {
        !s.closed()
            && s.tickets() == 0
            && s.in_use() + 1 < self.limit(s)
            && s.in_use() + self.leases.open_shards() + opening < self.limit(s)
    }

    /// Opens this thread's shard, which is sealed, if the count at `s`
    /// leaves room for it too; returns whether it is open after.
    ///
    /// The shard counts itself before it opens, as the check after opening
    /// will: otherwise a thread that the other open shards leave no room
    /// for would open and seal again on every admission. It is opened
    /// first and the state word read by an RMW after, so that either a
    /// flusher whose own RMW came first is seen here (and the shard sealed
    /// again), or this opening is seen by that flusher.
    fn open_shard(&self, s: State) -> bool {
        if !self.room_for_tokens(s, 1) || !self.leases.open_mine() {
            return false;
        }
        let s = State(self.state.0.fetch_add(0, Ordering::AcqRel));
        if self.room_for_tokens(s, 0) {
            return true;
        }
        let n = self.leases.seal_mine();
        self.uncount_tokens(n);
        false
    }

    /// Seals every shard and uncounts the tokens taken back (handing them
    /// to waiters). Returns how many there were.
    pub(crate) fn flush_tokens(&self) -> u32 {
        let n = self.leases.seal_all();
        self.uncount_tokens(n);
        n
    }

    fn uncount_tokens(&self, n: u32) {
        for _ in 0..n {
            self.release_count();
        }
    }

    /// Tokens parked now.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn parked_tokens(&self) -> u32 {
        self.leases.tokens()
    }

    /// `in_use` less the parked tokens: the permits held.
    pub(crate) fn held(&self, s: State) -> u32 {
        s.in_use().saturating_sub(self.leases.tokens())
    }

    /// Counts a grant that reached its caller by an unusual path (a waiter
    /// granted just before a close).
    pub(crate) fn count_admission(&self) {
        self.grants.add_one();
    }

    // ----- the wait queue -------------------------------------------------

    /// A waiter's first step, one CAS: take a permit, take a ticket, or
    /// refuse.
    pub(crate) fn enter(&self) -> Result<Entry, Rejected> {
        let mut cur = State(self.state.0.load(Ordering::Relaxed));
        loop {
            if cur.closed() {
                return Err(Rejected::Closed);
            }
            let (next, ticket) = if cur.tickets() == 0 && cur.in_use() < self.limit(cur) {
                (State(cur.0 + ONE_IN_USE), None)
            } else if cur.tickets() == 0 && self.flush_tokens() > 0 {
                // Full of parked tokens only: with them taken back there
                // may be room now, rather than a place in the queue.
                cur = self.load();
                continue;
            } else if self.queue_limit == 0 {
                return Err(Rejected::Full);
            } else if cur.tickets() >= self.window || self.live_waiting(cur) >= self.queue_limit {
                return Err(Rejected::QueueFull);
            } else {
                let (next, ticket) = cur.push_ticket();
                (next, Some(ticket))
            };
            match self.state.0.compare_exchange_weak(
                cur.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Ok(match ticket {
                        None => Entry::Counted(self.new_lease(next)),
                        Some(t) => {
                            // Tokens parked now would idle beside a waiter:
                            // take them back (the hand-off passes them on).
                            self.flush_tokens();
                            Entry::Ticket(t)
                        }
                    });
                }
                Err(actual) => cur = State(actual),
            }
        }
    }

    /// Parks the holder of `ticket`. `Err(QueueFull)` if no slot was free
    /// (unreachable by the table's sizing; the ticket is then left as a
    /// ghost rather than panicking).
    pub(crate) fn park(&self, ticket: u32, waker: &Waker) -> Result<Parking, Rejected> {
        let Some((slot, gen)) = self.leases.claim_waiting(self.clock.now()) else {
            self.ghosts.fetch_add(1, Ordering::AcqRel);
            if self.queue.abandon_unparked(ticket) {
                self.ghosts.fetch_sub(1, Ordering::AcqRel);
                self.release_count();
            }
            return Err(Rejected::QueueFull);
        };
        self.leases.register_waiter(slot, waker);
        Ok(match self.queue.park(ticket, slot, gen) {
            Park::Granted => Parking::Granted(self.take_grant(slot, gen, true)),
            Park::Parked => Parking::Parked(slot, gen),
        })
    }

    pub(crate) fn register_waiter(&self, slot: u32, waker: &Waker) {
        self.leases.register_waiter(slot, waker);
    }

    /// Whether the waiter parked in `slot` was granted.
    pub(crate) fn is_granted(&self, slot: u32, gen: u64) -> bool {
        self.leases.is_granted(slot, gen)
    }

    /// Turns the granted slot a waiter owns into its permit's lease.
    /// `admitted`: the permit goes to the caller (and is counted as an
    /// admission), rather than being passed straight on by a cancellation.
    pub(crate) fn take_grant(&self, slot: u32, gen: u64, admitted: bool) -> Lease {
        if !self.track_leases {
            // The slot only parked the waiter; the permit is untracked.
            self.leases.give_back(slot, gen);
            if admitted {
                self.grants.add_one();
            }
            return (UNTRACKED, 0);
        }
        self.leases.hold(slot, gen, self.clock.now());
        if admitted {
            self.grants.add_one();
        }
        (slot, gen)
    }

    /// A parked waiter leaves. Returns the lease of a permit granted to it
    /// meanwhile, which the caller now owns (and usually drops at once,
    /// passing it on).
    pub(crate) fn cancel(&self, ticket: u32, slot: u32, gen: u64) -> Option<Lease> {
        // Count the ghost before it can be seen, so the count never dips
        // below zero when a releaser removes it at once.
        self.ghosts.fetch_add(1, Ordering::AcqRel);
        match self.queue.cancel(ticket, slot, gen) {
            Cancel::Cancelled => {
                self.leases.give_back(slot, gen);
                // With room free, the ghost we left should be cleared now
                // rather than held against the queue limit.
                self.grant_waiting();
                None
            }
            Cancel::Claimed => {
                self.ghosts.fetch_sub(1, Ordering::AcqRel);
                // Withdrawn first: the deliverer's slot CAS now fails and it
                // takes its permit back. Granted first: we own a permit.
                let granted = !self.leases.withdraw(slot, gen);
                granted.then(|| self.take_grant(slot, gen, false))
            }
        }
    }

    // ----- release and hand-off -------------------------------------------

    /// A permit's drop: ends its lease and gives the count back, unless the
    /// lease was reclaimed first (then the reclaimer gave it back). Returns
    /// the permit's reference to the core, for the stash.
    ///
    /// The usual drop parks the permit as a token in its own shard, inlined
    /// into the caller; everything else is out of line (see `try_acquire`).
    /// The reference passes through the out-of-line part by value, so the
    /// inlined part has no unwinding path of its own to drop it on, and
    /// keeps it in a register.
    #[inline(always)]
    pub(crate) fn release(this: Arc<Inner>, lease: Lease) -> Arc<Inner> {
        let parked = if lease.0 == UNTRACKED {
            this.leases.park_spare()
        } else {
            this.leases.park_token(lease.0, lease.1)
        };
        if parked {
            this
        } else {
            Inner::end_lease(this, lease)
        }
    }

    /// `release` when the permit did not park as a token: frees its slot
    /// and gives its count back.
    #[inline(never)]
    fn end_lease(this: Arc<Inner>, (slot, gen): Lease) -> Arc<Inner> {
        if slot == UNTRACKED {
            this.release_count();
            return this;
        }
        match this.leases.release(slot, gen) {
            Released::Gone => {}
            Released::Freed { revoked } => {
                if revoked {
                    this.revoked_dropped.fetch_add(1, Ordering::Relaxed);
                }
                this.release_count();
            }
        }
        this
    }

    /// Gives one counted permit back and runs the hand-off if anyone waits.
    fn release_count(&self) {
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
    fn grant_waiting(&self) {
        let mut cur = self.load();
        loop {
            if cur.closed() || cur.tickets() == 0 || cur.in_use() >= self.limit(cur) {
                return;
            }
            let (next, ticket) = cur.pop_ticket();
            let next = next.with_in_use(cur.in_use() + 1);
            match self.state.0.compare_exchange_weak(
                cur.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    match self.queue.deliver(ticket, &self.leases) {
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
        let mut cur = State(self.state.0.load(Ordering::Relaxed));
        loop {
            if cur.in_use() == 0 {
                self.underflows_refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match self.state.0.compare_exchange_weak(
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

    // ----- capacity, close, drain ----------------------------------------

    pub(crate) fn set_capacity(&self, capacity: u32) -> Result<(), CapacityError> {
        if capacity > self.max_capacity {
            return Err(CapacityError {
                requested: capacity,
                max: self.max_capacity,
            });
        }
        let mut cur = self.load();
        loop {
            let next = cur.with_capacity(capacity);
            match self.state.0.compare_exchange_weak(
                cur.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => cur = State(actual),
            }
        }
        // Parked tokens hold count the new capacity may not have room for.
        self.flush_tokens();
        self.grant_waiting();
        Ok(())
    }

    /// Closes the limiter and wakes its waiters. False if it was closed
    /// already.
    pub(crate) fn close(&self) -> bool {
        let prev = State(
            self.state
                .0
                .fetch_or(State(0).with_closed().0, Ordering::AcqRel),
        );
        if prev.closed() {
            return false;
        }
        // No token may stay parked: `drained` waits for the count to reach 0.
        self.flush_tokens();
        self.queue.wake_all(prev.head(), prev.tail(), &self.leases);
        if prev.in_use() == 0 {
            self.drain.wake_all();
        }
        true
    }

    pub(crate) fn is_drained(&self) -> bool {
        let s = self.load();
        s.closed() && s.in_use() == 0
    }

    pub(crate) fn register_drain(&self, place: &mut Option<usize>, cx: &mut Context<'_>) {
        self.drain.register(place, cx);
    }

    pub(crate) fn release_drain(&self, place: Option<usize>) {
        self.drain.release(place);
    }

    // ----- leases ---------------------------------------------------------

    /// Every live slot of the lease table (see `LeaseTable::scan`).
    pub(crate) fn scan(&self) -> impl Iterator<Item = LeaseView> + '_ {
        self.leases.scan()
    }

    /// Advances the coarse clock from the real one and returns it.
    pub(crate) fn advance_clock(&self) -> u64 {
        self.clock.advance()
    }

    /// HELD -> REVOKED, counted. False if no longer held.
    pub(crate) fn revoke(&self, slot: u32, gen: u64, now: u64) -> bool {
        if !self.leases.begin_revoke(slot, gen, now) {
            return false;
        }
        // Counted while the lease is REVOKING, before `finish_revoke` lets the
        // holder see it (its Release publishes this add): a holder that learns
        // of its revocation and reads health finds it counted.
        self.revoked.fetch_add(1, Ordering::Relaxed);
        self.leases.finish_revoke(slot, gen);
        true
    }

    /// REVOKED -> FREE by force, counted, and the count given back.
    pub(crate) fn reclaim(&self, slot: u32, gen: u64) -> bool {
        if !self.leases.reclaim(slot, gen) {
            return false;
        }
        self.reclaimed.fetch_add(1, Ordering::Relaxed);
        self.release_count();
        true
    }

    /// Revokes every held lease idle for at least `min_ms`.
    pub(crate) fn revoke_idle(&self, min_ms: u64) -> usize {
        let now = self.clock.advance();
        self.scan()
            .filter(|v| v.kind == Kind::Held && now.saturating_sub(v.last_active) >= min_ms)
            .filter(|v| self.revoke(v.slot, v.gen, now))
            .count()
    }

    /// Revokes the `n` held leases that started first.
    pub(crate) fn revoke_oldest(&self, n: usize) -> usize {
        let now = self.clock.advance();
        let mut held: Vec<(u64, u32, u64)> = self
            .scan()
            .filter(|v| v.kind == Kind::Held)
            .map(|v| (v.started, v.slot, v.gen))
            .collect();
        held.sort_unstable();
        held.iter()
            .take(n)
            .filter(|&&(_, slot, gen)| self.revoke(slot, gen, now))
            .count()
    }

    /// Revokes one lease by id.
    pub(crate) fn revoke_one(&self, slot: u32, gen: u64) -> bool {
        let now = self.clock.advance();
        self.revoke(slot, gen, now)
    }

    /// Reclaims every lease revoked at least `grace_ms` ago.
    pub(crate) fn reclaim_revoked(&self, grace_ms: u64) -> usize {
        let now = self.clock.advance();
        self.scan()
            .filter(|v| v.kind == Kind::Revoked && now.saturating_sub(v.revoked_at) >= grace_ms)
            .filter(|v| self.reclaim(v.slot, v.gen))
            .count()
    }

    pub(crate) fn touch(&self, slot: u32, gen: u64) {
        self.leases.touch(slot, gen, self.clock.now());
    }
    pub(crate) fn is_revoked(&self, slot: u32, gen: u64) -> bool {
        self.leases.is_revoked(slot, gen)
    }
    pub(crate) fn register_revoked(&self, slot: u32, waker: &Waker) {
        self.leases.register_revoked(slot, waker);
    }
    /// Milliseconds since the lease in `slot` started, and since its last
    /// activity.
    pub(crate) fn lease_age_idle(&self, slot: u32) -> (u64, u64) {
        let now = self.clock.now();
        let (started, active) = self.leases.times(slot);
        (now.saturating_sub(started), now.saturating_sub(active))
    }

    // ----- health -------------------------------------------------------

    /// Reads every figure and derives the state.
    ///
    /// Counters only: the table is scanned only for the oldest lease, and
    /// not at all while a watchdog is alive (its last scan's figure is used;
    /// it is at most one interval old).
    pub(crate) fn snapshot(&self, advance_clock: bool) -> Snapshot {
        let now = if advance_clock {
            self.clock.advance()
        } else {
            self.clock.now()
        };
        let leases = if self.health.watchdog_view(now).alive {
            let t = self.oldest_scanned.load(Ordering::Relaxed);
            LeaseSummary {
                oldest_started: (t != NO_LEASE).then_some(t),
            }
        } else {
            let mut leases = LeaseSummary::default();
            for v in self.scan() {
                leases.add(&v);
            }
            leases
        };
        self.snapshot_with(now, leases)
    }

    /// The snapshot, from the oldest lease the caller found in its own scan
    /// of the table (the watchdog's tick), so the table is read once.
    fn snapshot_with(&self, now: u64, leases: LeaseSummary) -> Snapshot {
        let s = self.load();
        let waiting = self.live_waiting(s);
        let limit = self.limit(s);
        // Parked tokens are counted in the state word but hold nothing.
        let in_use = self.held(s);
        // The subtracted counters first: a revocation counted after them is
        // at worst one too many pending for a moment, never one too few
        // below zero (saturating).
        let returned =
            self.revoked_dropped.load(Ordering::Relaxed) + self.reclaimed.load(Ordering::Relaxed);
        let revoked_total = self.revoked.load(Ordering::Relaxed);
        let revoked_pending = revoked_total.saturating_sub(returned) as u32;
        let oldest_lease_ms = match leases.oldest_started {
            // With nothing held, a figure from the last scan is stale.
            Some(t) if in_use > 0 => now.saturating_sub(t),
            _ => 0,
        };

        let h = &self.health;
        let watchdog = h.watchdog_view(now);
        let silent = watchdog.attached && !watchdog.alive;
        let state = if s.closed() {
            if in_use > 0 {
                HealthState::Draining
            } else {
                HealthState::Closed
            }
        } else if silent {
            HealthState::Degraded(Cause::WatchdogSilent)
        } else if h.stalled() {
            HealthState::Degraded(Cause::Stalled)
        } else if h.leaking() {
            HealthState::Degraded(Cause::Leaking)
        } else if waiting > 0 || in_use >= limit {
            HealthState::Saturated
        } else {
            HealthState::Healthy
        };

        let rejected_total = Rejected::ALL
            .iter()
            .map(|r| (r.as_str(), self.rejected[r.index()].load(Ordering::Relaxed)))
            .collect();
        let repairs = Repairs {
            stalls: self.stalls_redriven.load(Ordering::Relaxed),
            drift: self.drift_corrected.load(Ordering::Relaxed),
            underflows: self.underflows_refused.load(Ordering::Relaxed),
        };
        Snapshot {
            name: h.name.clone(),
            state,
            cause: state.cause(),
            capacity: s.capacity(),
            max_capacity: self.max_capacity,
            in_use,
            waiting,
            reserved: self.reserve,
            queue_limit: self.queue_limit,
            pressure: if s.capacity() == 0 {
                1.0
            } else {
                in_use as f64 / s.capacity() as f64
            },
            admitted_total: self.admitted_total(),
            rejected_total,
            revoked_total,
            reclaimed_total: self.reclaimed.load(Ordering::Relaxed),
            repaired_total: repairs.total(),
            repairs,
            oldest_lease_ms,
            revoked_pending,
            watchdog,
            adaptive: h.adaptive.view(),
        }
    }

    /// Evaluates the state, reports it if it changed, and returns the
    /// snapshot it was derived from.
    pub(crate) fn note_change(&self) -> Snapshot {
        let snap = self.snapshot(false);
        self.health.report(&snap);
        snap
    }

    /// `note_change` from the watchdog's scan of the table, whose oldest
    /// lease later snapshots use until the next scan.
    pub(crate) fn note_change_with(&self, leases: LeaseSummary) -> Snapshot {
        self.oldest_scanned
            .store(leases.oldest_started.unwrap_or(NO_LEASE), Ordering::Relaxed);
        let snap = self.snapshot_with(self.clock.now(), leases);
        self.health.report(&snap);
        snap
    }

    // ----- watchdog repairs ------------------------------------------------

    /// Wakes the waiter parked in `slot` (a grant nobody picked up).
    pub(crate) fn wake_waiter(&self, slot: u32) {
        self.leases.wake_waiter(slot);
    }

    /// A stall's repair: re-drives the hand-off and wakes every waiter.
    /// Counted first, so a waiter it grants finds the repair counted.
    pub(crate) fn redrive(&self) {
        self.stalls_redriven.fetch_add(1, Ordering::Relaxed);
        self.grant_waiting();
        let s = self.load();
        self.queue.wake_all(s.head(), s.tail(), &self.leases);
    }

    /// Clears tickets left by cancelled waiters while there is room.
    pub(crate) fn clear_ghosts(&self) {
        self.grant_waiting();
    }

    /// Removes up to `excess` permits no lease accounts for. Returns how
    /// many were removed.
    pub(crate) fn repair_drift(&self, excess: u32) -> u32 {
        let mut cur = self.load();
        loop {
            let fix = excess.min(cur.in_use());
            if fix == 0 {
                return 0;
            }
            let next = cur.with_in_use(cur.in_use() - fix);
            match self
                .state
                .0
                .compare_exchange(cur.0, next.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.drift_corrected.fetch_add(1, Ordering::Relaxed);
                    self.grant_waiting();
                    return fix;
                }
                Err(actual) => cur = State(actual),
            }
        }
    }

    // ----- fault injection ------------------------------------------------

    /// Loses the next `k` hand-offs.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn inject_stalls(&self, k: u32) {
        self.stalls.fetch_add(k, Ordering::AcqRel);
    }

    /// Adds up to `n` to the count with no lease behind it.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn inject_drift(&self, n: u32) -> u32 {
        // Phantom permits fill the count the way held ones do: parked
        // tokens are taken back first, so the room left is what it would
        // be without them.
        self.flush_tokens();
        let mut cur = self.load();
        loop {
            let add = n.min(self.max_capacity.saturating_sub(cur.in_use()));
            let next = cur.with_in_use(cur.in_use() + add);
            match self
                .state
                .0
                .compare_exchange(cur.0, next.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return add,
                Err(actual) => cur = State(actual),
            }
        }
    }

    /// Moves the lease clock forward without waiting.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn skip_clock(&self, ms: u64) {
        self.clock.skip(ms);
    }
}

#[cfg(all(test, not(admit_loom)))]
mod tests {
    use crate::Limiter;

    #[test]
    fn a_release_that_finds_the_count_at_zero_is_counted_as_an_underflow() {
        let l = Limiter::new(2);
        let held = l.try_acquire().unwrap();
        // A drift correction that takes a permit still in use off the count
        // (the watchdog's checks make this all but impossible; called
        // directly here).
        assert_eq!(l.inner.repair_drift(1), 1);
        assert_eq!(l.in_use(), 0);
        drop(held);
        assert_eq!(l.in_use(), 0, "the count did not wrap");
        let snap = l.health().snapshot();
        assert_eq!(snap.repairs.drift, 1);
        assert_eq!(snap.repairs.underflows, 1);
        assert_eq!(snap.repairs.stalls, 0);
        assert_eq!(snap.repaired_total, 2);
        // A status page reads the kinds back.
        #[cfg(feature = "serde")]
        {
            let json = serde_json::to_value(&snap).unwrap();
            assert_eq!(json["repairs"]["underflows"], 1);
            let back: crate::Snapshot = serde_json::from_value(json).unwrap();
            assert_eq!(back.repairs, snap.repairs);
        }
        // Still a working limiter.
        let (a, b) = (l.try_acquire().unwrap(), l.try_acquire().unwrap());
        assert!(l.try_acquire().is_err());
        drop((a, b));
    }
}
