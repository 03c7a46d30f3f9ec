//! # admit-tcp
//!
//! An admitted accept loop for tokio TCP servers: the right thing in one line.
//!
//! A server that accepts everything runs out of descriptors under load; one
//! that waits on a semaphore before `accept()` leaves clients hanging in the
//! kernel backlog with no answer; and an `EMFILE` from `accept()` commonly
//! kills the loop, spins it, or hangs it. [`AdmitListener`] wraps a
//! `tokio::net::TcpListener` and an [`admit::Limiter`] and does instead:
//!
//! * yields only connections that hold a permit, as [`Admitted<TcpStream>`];
//! * handles the others by [`Policy`] — [`Reject`](Policy::Reject),
//!   [`Busy`](Policy::Busy), [`Wait`](Policy::Wait) or [`Pause`](Policy::Pause) —
//!   without ever blocking the accept loop, counting each refusal by reason
//!   in the limiter's health;
//! * caps connections per address (IPv6 per /64) in a bounded lock-free
//!   table ([`PerIpLimit`]);
//! * backs off on `EMFILE`/`ENFILE`/`ENOBUFS`/`ENOMEM` (1 ms to 1 s), warns at
//!   most once a second, counts them ([`ListenerStats::accept_errors`]), and
//!   skips per-connection errors;
//! * sets `TCP_NODELAY` and TCP keepalive ([`Keepalive`]) on admitted
//!   connections.
//!
//! [`Admitted`] touches its lease on every read and write, and when the lease
//! is revoked (by the watchdog, say) its reads return end-of-file, its writes
//! fail and the socket is shut down, so the watchdog's reclaim really closes
//! dead connections. It also fires an end signal ([`Ending`]) then, and with a
//! goodbye window ([`Builder::goodbye_window`]) keeps its writes working a
//! little longer, so the server can tell the client why in its own protocol
//! before the socket goes.
//!
//! ```
//! use admit_tcp::{AdmitListener, Policy};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let limiter = admit::Limiter::new(1);
//! let mut listener = AdmitListener::builder(limiter.clone())
//!     .policy(Policy::busy_default())
//!     .per_ip(16)
//!     .bind("127.0.0.1:0")
//!     .await?;
//! let addr = listener.local_addr()?;
//!
//! let _first = tokio::net::TcpStream::connect(addr).await?;
//! let (conn, _peer) = listener.accept().await?; // holds the only permit
//!
//! let mut second = tokio::net::TcpStream::connect(addr).await?;
//! let server = tokio::spawn(async move { let _ = listener.accept().await; });
//! let mut reply = String::new();
//! second.read_to_string(&mut reply).await?;
//! assert_eq!(reply, "BUSY retry-after=5\n");
//! assert_eq!(limiter.health().snapshot().rejected_total["full"], 1);
//! # drop(conn); server.abort();
//! # Ok(()) }
//! ```
//!
//! ## Features
//!
//! * `axum` — `axum::serve(listener, app)` over an [`AdmitListener`] (it
//!   implements axum's `Listener`, each connection keeping its permit for
//!   its whole life), and `AdmitListener::with_connect_info` for apps that
//!   extract `ConnectInfo<SocketAddr>`. Off by default.
//!
//! Refusals that must hear the client first (HTTP's `503`, say) are
//! answered on tasks of their own by an [`Answer`]
//! ([`Builder::answer_refusals`]); admit-hyper's `HttpListener` is this
//! listener with an answer that speaks HTTP.
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The core crate, re-exported so one dependency line gets you started.
pub use admit;

mod admitted;
#[cfg(feature = "axum")]
mod axum_serve;
mod backoff;
mod ending;
mod listener;
mod per_ip;
mod policy;
mod queued;
mod refuse;

pub use admitted::Admitted;
#[cfg(feature = "axum")]
pub use axum_serve::ConnectInfoListener;
pub use ending::{Ended, Ending, WaitEnded};
pub use listener::{AdmitListener, Builder, Keepalive, ListenerStats};
pub use per_ip::{PerIpError, PerIpGuard, PerIpLimit, PROBE_WINDOW};
pub use policy::{Policy, DEFAULT_BUSY};
pub use refuse::{Answer, AnswerFuture, Refused, DEFAULT_MAX_REFUSALS, DEFAULT_REFUSAL_TIMEOUT};
