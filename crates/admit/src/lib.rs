//! # admit
//!
//! A connection limiter that holds its cap under any load, cannot leak or
//! lock up, notices when it is wedged, repairs itself, and tells its
//! operators the truth about its state.
//!
//! * [`Limiter`] — lock-free admission: [`try_acquire`](Limiter::try_acquire)
//!   never waits; [`acquire`](Limiter::acquire) waits in a bounded FIFO queue
//!   ([`DEFAULT_QUEUE_LIMIT`] places unless built otherwise) and is
//!   cancel-safe; [`acquire_until`](Limiter::acquire_until) bounds the wait
//!   with a deadline from the caller's own timer; capacity can be changed at run time; a reserve keeps
//!   room for critical work; [`close`](Limiter::close) and
//!   [`drained`](Limiter::drained) support graceful shutdown.
//! * [`Permit`] — an RAII lease, released exactly once: on drop, or by
//!   forced reclaim after revocation, never both.
//! * [`Health`] — snapshots, a derived [`HealthState`], `tracing` events and
//!   a stream of changes.
//! * [`Watchdog`] — runs on its own thread, finds stalls, leaks and count
//!   drift, and repairs them.
//! * [`adaptive`] — controllers (AIMD, gradient, queue delay) that set the
//!   capacity from the latency and outcome of the work admitted, with time
//!   passed in, and a seeded simulator to prove them in virtual time.
//!
//! ```
//! use admit::{Limiter, Rejected, Watchdog, WatchdogConfig};
//! use std::time::Duration;
//!
//! # futures::executor::block_on(async {
//! let limiter = Limiter::builder().capacity(2).queue_limit(8).build().unwrap();
//! let _watchdog = Watchdog::spawn(
//!     limiter.clone(),
//!     WatchdogConfig::default().max_idle(Duration::from_secs(300)),
//! ).unwrap();
//!
//! let a = limiter.try_acquire().unwrap();
//! let b = limiter.acquire().await.unwrap();
//! assert_eq!(limiter.try_acquire().unwrap_err(), Rejected::Full);
//! drop(a);
//! let c = limiter.acquire().await.unwrap();
//! assert_eq!(limiter.health().snapshot().in_use, 2);
//! # drop((b, c));
//! # });
//! ```
//!
//! The crate takes no lock anywhere and depends on no async runtime; it is
//! model-checked with loom (`--cfg admit_loom`).
//!
//! ## Invariants
//!
//! Each is held by a test, a loom model and a proptest property:
//!
//! * **I1 cap** — no permit is granted while `in_use >= capacity`; after a
//!   capacity shrink, held permits stay and newcomers wait for the count to
//!   fall.
//! * **I2 exactly once** — every granted permit is released exactly once,
//!   on drop or by forced reclaim, never both and never not at all.
//! * **I3 no lost wake-up** — while a waiter is queued, a permit that
//!   becomes free goes to a waiter (first come, first served).
//! * **I4 cancel safety** — dropping an acquire at any point leaves no
//!   trace; a permit handed to a waiter that was just cancelled is passed
//!   on, not lost.
//! * **I5 lock-free** — no mutex, spin lock or blocking call on the fast
//!   path or the wait path; one thread never waits for another to be
//!   scheduled.
//! * **I6 observable** — every grant, rejection (by reason), revocation,
//!   reclaim and repair is counted in the [`Snapshot`].
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod acquire;
pub mod adaptive;
mod clock;
mod counter;
mod drain;
mod error;
#[cfg(feature = "fault-injection")]
mod fault;
mod health;
mod inner;
mod lease;
mod limiter;
mod loom;
mod permit;
mod places;
mod queue;
mod shard;
mod snapshot;
mod stash;
mod state;
mod telemetry;
mod watchdog;

pub use acquire::{Acquire, AcquireUntil};
pub use drain::Drained;
pub use error::{BuildError, CapacityError, Rejected};
#[cfg(feature = "fault-injection")]
pub use fault::Faults;
pub use health::{Changes, Health};
pub use limiter::{Builder, Limiter, DEFAULT_QUEUE_LIMIT, MAX_QUEUE};
pub use permit::{LeaseId, Permit, Revoked};
pub use snapshot::{Cause, HealthState, Repairs, Snapshot, Transition, WatchdogView};
pub use watchdog::{TickReport, Watchdog, WatchdogConfig, WatchdogGuard};

/// The largest capacity a limiter supports.
pub const MAX_CAPACITY: u32 = state::MAX_CAPACITY;
