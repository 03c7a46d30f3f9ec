//! # admit-redis
//!
//! One connection budget for a whole cluster, held in Redis.
//!
//! Every process of a service (a *node*) admits connections with an
//! ordinary local [`admit::Limiter`] whose capacity is the node's *share*
//! of the cluster budget. Shares are leases recorded in Redis: a node asks
//! for more when its demand nears its share, gives idle permits back, and
//! renews its lease by heartbeat. Admission itself never waits for Redis.
//!
//! * **Local fast path.** [`ClusterLimiter::try_acquire`] is one clock read
//!   and the local limiter's `try_acquire`: no round trip per connection.
//! * **Safety.** Shares change only in atomic Lua scripts that keep the sum
//!   of confirmed shares within the budget; a node admits only within a
//!   share Redis confirmed, before its lease runs out by the node's own
//!   clock (less a margin for clock-rate drift).
//! * **Crash.** Leases expire by Redis's clock (default TTL 2.5 s, heartbeat
//!   1 s): a killed node's share comes back with no cleanup job. Every grant
//!   carries a fencing epoch, so a node that was paused past its lease can
//!   neither renew nor return a share it no longer owns.
//! * **Redis lost.** A node that cannot reach Redis keeps serving within its
//!   last confirmed share, then, when its lease would have expired, within
//!   its fair share (budget / live nodes at its last view); it reports
//!   [`NodeHealth::Degraded`] with [`Cause::Cluster`] and joins again as
//!   soon as Redis answers. Every call has a deadline, so a paused Redis
//!   cannot wedge a node.
//! * **Fairness.** When the budget is taken, a node that needs permits is
//!   marked starved; nodes above their fair share hand their idle permits
//!   back at their next heartbeat.
//! * **Observable.** [`ClusterLimiter::status`] (the node's own view),
//!   [`ClusterLimiter::cluster_snapshot`] (every node's share, use, epoch
//!   and last contact, from Redis), [`ClusterLimiter::health`] and
//!   [`ClusterLimiter::changes`], and metrics with the `metrics` feature.
//!
//! The protocol, its safety argument, and why per-IP caps stay per node
//! are in the crate's README.
//!
//! ```no_run
//! use admit_redis::{ClusterLimiter, Mode};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), admit_redis::Error> {
//! let redis = redis::Client::open("redis://127.0.0.1:6379/")?;
//! // Every node of the service starts the same way; together they admit
//! // at most 10,000 connections.
//! let node = ClusterLimiter::builder(redis, "chat", 10_000)
//!     .queue_limit(64)
//!     .start()
//!     .await?;
//!
//! // Admission is local: no Redis round trip.
//! if let Ok(permit) = node.try_acquire() {
//!     // ... serve the connection; dropping the permit frees it.
//!     drop(permit);
//! }
//!
//! // Adapters take the local limiter, whose capacity follows the share:
//! // admit_tcp::AdmitListener::builder(node.limiter().clone()) ...
//! let status = node.status();
//! assert!(status.share <= status.budget || status.mode != Mode::Leased);
//! println!("{} holds {} of {}", status.node, status.share, status.budget);
//!
//! // Every node's share, in use, epoch and last contact, read from Redis.
//! for n in node.cluster_snapshot().await.nodes {
//!     println!("{}: {} of {} in use", n.node, n.in_use, n.share);
//! }
//! node.leave().await?; // hand the share back at once
//! # Ok(())
//! # }
//! ```
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]

mod clock;
mod core;
mod error;
mod gate;
mod loom;
#[cfg(all(test, admit_loom))]
mod loom_gate;
mod node;
mod script;
mod status;

pub use error::Error;
pub use node::{Builder, ClusterLimiter};
pub use status::{BudgetKeys, Cause, ClusterSnapshot, Mode, NodeHealth, NodeStatus, NodeView};
