//! The limiter handle: its builder and its public operations. The state
//! and every operation on it live in `inner.rs`; this is the API.

use crate::drain::Drained;
use crate::error::{BuildError, CapacityError, Rejected};
use crate::health::Health;
use crate::inner::{Inner, Params};
use crate::loom::Arc;
use crate::permit::{LeaseId, Permit};
use crate::state::MAX_CAPACITY;
use crate::{Acquire, AcquireUntil};
use std::future::Future;
use std::time::Duration;

/// The most waiters a queue may hold.
pub const MAX_QUEUE: u32 = 1024;

/// How many callers of [`Limiter::acquire`] may wait when the builder is
/// not told otherwise ([`Limiter::new`] included): enough that `acquire()`
/// waits as a tokio user expects, bounded so a stampede is refused with
/// [`Rejected::QueueFull`] instead of piling up.
pub const DEFAULT_QUEUE_LIMIT: u32 = 64;

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

    /// How many callers of [`Limiter::acquire`] may wait at once (default
    /// [`DEFAULT_QUEUE_LIMIT`]). At most [`MAX_QUEUE`].
    ///
    /// With 0 there is no queue: `acquire` then fails at once with
    /// [`Rejected::Full`] when there is no room, like `try_acquire`.
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let no_queue = admit::Limiter::builder().capacity(1).queue_limit(0).build().unwrap();
    /// let _held = no_queue.try_acquire().unwrap();
    /// assert_eq!(no_queue.acquire().await.unwrap_err(), admit::Rejected::Full);
    /// # });
    /// ```
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
    /// Turning it off drops the lease bookkeeping, for permits that cannot
    /// leak because they never outlive a future (request-scoped admission).
    /// Such permits cannot be revoked or reclaimed, their `touch()` does
    /// nothing, and the watchdog can only repair stalls. Admission costs
    /// about the same either way: a thread that takes and drops permits
    /// again and again reuses a token parked in its own shard, in its lease
    /// slot with leases on, in its shard's own word without.
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
        let inner = Inner::new(Params {
            capacity: self.capacity,
            max_capacity: max,
            queue_limit: self.queue_limit,
            reserve: self.reserve,
            track_leases: self.track_leases,
            name: self.name,
        });
        Ok(Limiter {
            inner: Arc::new(inner),
        })
    }
}

/// A connection limiter. Cheap to clone: clones share one state.
///
/// [`try_acquire`](Self::try_acquire) never waits; [`acquire`](Self::acquire)
/// waits in a FIFO queue of [`DEFAULT_QUEUE_LIMIT`] places unless the
/// builder sets another size, and [`acquire_until`](Self::acquire_until)
/// waits no longer than a deadline.
///
/// ```
/// # futures::executor::block_on(async {
/// let limiter = admit::Limiter::new(2);
/// let a = limiter.try_acquire().unwrap();
/// let _b = limiter.acquire().await.unwrap(); // room: admitted at once
/// assert_eq!(limiter.in_use(), 2);
/// assert_eq!(limiter.try_acquire().unwrap_err(), admit::Rejected::Full);
/// let waiting = limiter.acquire(); // full: this one would wait for a release
/// drop(a);
/// assert!(waiting.await.is_ok());
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
            .field("name", &self.inner.name())
            .field("capacity", &s.capacity())
            .field("in_use", &self.inner.held(s))
            .field("waiting", &self.waiting())
            .field("closed", &s.closed())
            .finish()
    }
}

impl Limiter {
    /// A limiter with `capacity` permits, a wait queue of
    /// [`DEFAULT_QUEUE_LIMIT`] places and no reserve.
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
            queue_limit: DEFAULT_QUEUE_LIMIT,
            reserve: 0,
            name: "default".to_owned(),
            track_leases: true,
        }
    }

    /// Takes a permit if one is free right now. Never waits, never allocates,
    /// takes no lock. Fails with [`Rejected::Full`] when only reserved
    /// headroom is left or someone is already queued (waiters go first).
    #[inline(always)]
    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        let lease = self.inner.try_acquire(false)?;
        Ok(Permit::new(crate::stash::clone(&self.inner), lease))
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
        let lease = self.inner.try_acquire(true)?;
        Ok(Permit::new(crate::stash::clone(&self.inner), lease))
    }

    /// Waits for a permit in the FIFO queue, as long as it takes. Fails at
    /// once with [`Rejected::QueueFull`] when the queue is full (or
    /// [`Rejected::Full`] when the limiter was built with
    /// [`queue_limit(0)`](Builder::queue_limit)), and with
    /// [`Rejected::Closed`] if the limiter is or becomes closed.
    ///
    /// The future is cancel-safe: dropping it at any point leaves nothing
    /// behind, and a permit handed to it just before the drop goes to the
    /// next waiter. To bound the wait, use
    /// [`acquire_until`](Self::acquire_until).
    pub fn acquire(&self) -> Acquire {
        Acquire::new(self.inner.clone())
    }

    /// Waits for a permit like [`acquire`](Self::acquire), but no longer
    /// than until `deadline` completes; then it fails with
    /// [`Rejected::Timeout`], counted in the health snapshot.
    ///
    /// `deadline` is any future: the caller's runtime has the timer
    /// (`tokio::time::sleep(d)`, `sleep_until(instant)`, another runtime's
    /// timer, or a shutdown signal), so this crate needs none. The waiter
    /// leaves the queue the moment the deadline fires, exactly as a dropped
    /// `acquire` does; a permit granted to it at that same moment is
    /// returned rather than passed on. The deadline is polled only while
    /// the caller actually waits, and not at all when a permit is free.
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let limiter = admit::Limiter::new(1);
    /// let held = limiter.try_acquire().unwrap();
    /// // A deadline that has already passed (a real caller passes a timer,
    /// // e.g. `tokio::time::sleep(Duration::from_millis(50))`).
    /// let late = limiter.acquire_until(std::future::ready(())).await;
    /// assert_eq!(late.unwrap_err(), admit::Rejected::Timeout);
    /// assert_eq!(limiter.waiting(), 0);
    /// drop(held);
    /// assert!(limiter.acquire_until(std::future::pending::<()>()).await.is_ok());
    /// # });
    /// ```
    pub fn acquire_until<F: Future>(&self, deadline: F) -> AcquireUntil<F> {
        AcquireUntil::new(self.acquire(), deadline)
    }

    /// Changes the capacity at run time, up to `max_capacity`. Growing hands
    /// the new room to waiters at once; shrinking keeps every held permit and
    /// admits no one until fewer than the new capacity are held.
    pub fn set_capacity(&self, capacity: u32) -> Result<(), CapacityError> {
        self.inner.set_capacity(capacity)
    }

    /// Closes the limiter: every acquire from now on fails with
    /// [`Rejected::Closed`], and queued waiters wake with it. Held permits
    /// stay valid; [`drained`](Self::drained) resolves when the last is gone.
    pub fn close(&self) {
        if self.inner.close() {
            self.inner.note_change();
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.load().closed()
    }

    /// Resolves when the limiter is closed and no permit is held.
    pub fn drained(&self) -> Drained {
        Drained::new(self.inner.clone())
    }

    /// The current capacity.
    pub fn capacity(&self) -> u32 {
        self.inner.load().capacity()
    }

    /// The largest capacity this limiter can be set to.
    pub fn max_capacity(&self) -> u32 {
        self.inner.max_capacity()
    }

    /// Permits reserved for critical acquires.
    pub fn reserve(&self) -> u32 {
        self.inner.reserve()
    }

    /// How many callers may wait.
    pub fn queue_limit(&self) -> u32 {
        self.inner.queue_limit()
    }

    /// Permits held right now (including grants not yet picked up).
    pub fn in_use(&self) -> u32 {
        self.inner.held(self.inner.load())
    }

    /// Callers waiting in the queue right now.
    pub fn waiting(&self) -> u32 {
        self.inner.live_waiting(self.inner.load())
    }

    /// Permits an ordinary acquire could take right now.
    pub fn available(&self) -> u32 {
        let s = self.inner.load();
        self.inner.limit(s).saturating_sub(self.inner.held(s))
    }

    /// The limiter's name (see [`Builder::name`]).
    pub fn name(&self) -> &str {
        self.inner.name()
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
        self.inner.revoke_idle(older_than.as_millis() as u64)
    }

    /// Revokes the `n` oldest leases (by start time). Returns how many were
    /// revoked.
    pub fn revoke_oldest(&self, n: usize) -> usize {
        self.inner.revoke_oldest(n)
    }

    /// Whether permits are tracked as leases (see [`Builder::track_leases`]).
    pub fn tracks_leases(&self) -> bool {
        self.inner.track_leases()
    }

    /// Revokes one lease by id. Returns false if it is no longer held.
    pub fn revoke(&self, id: LeaseId) -> bool {
        self.inner.revoke_one(id.slot, id.generation)
    }

    /// Reclaims every lease revoked at least `grace` ago whose holder still
    /// has not dropped it: its permit returns to the limiter, and the holder's
    /// later drop does nothing. Returns how many were reclaimed.
    pub fn reclaim_revoked(&self, grace: Duration) -> usize {
        self.inner.reclaim_revoked(grace.as_millis() as u64)
    }
}
