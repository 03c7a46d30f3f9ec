//! # admit-hyper
//!
//! Connection-level admission for hyper 1.x servers (and so for axum): serve
//! HTTP/1.1 and HTTP/2 on admitted connections ([`HttpListener`], or
//! admit-tcp's `AdmitListener` through [`Accept`]), with
//!
//! * a real `HTTP/1.1 503 Service Unavailable` with `Retry-After` and
//!   `Connection: close` for connections refused at capacity, written off
//!   the accept loop and bounded in time ([`HttpListener`]);
//! * a header timeout on by default, so a client that connects and sends
//!   nothing, or trickles its headers, is closed and its slot freed;
//! * upgraded connections (WebSocket) that keep their connection's permit
//!   until the upgraded stream closes, and close when it is revoked;
//! * graceful shutdown: stop accepting, finish in-flight requests, close
//!   idle connections, force-close after a deadline;
//! * the connection count in the limiter's health (`in_use`).
//!
//! For request-level admission on top, see the `admit-tower` crate.
//!
//! ```
//! use axum::{routing::get, Router};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let limiter = admit::Limiter::builder().capacity(1_000).name("http").build().unwrap();
//! let listener = admit_hyper::listener(limiter.clone()).bind("127.0.0.1:0").await?;
//! let app = Router::new().route("/", get(|| async { "hello" }));
//!
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(
//!     admit_hyper::Server::new()
//!         .header_timeout(Duration::from_secs(10))
//!         .serve(listener, app, async { let _ = stopped.await; }),
//! );
//! // ... later: shut down and wait for the drain.
//! stop.send(()).unwrap();
//! server.await.unwrap()?;
//! assert_eq!(limiter.health().snapshot().in_use, 0);
//! # Ok(()) }
//! ```
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]

mod busy;
mod conn;
mod listener;
mod registry;
mod server;

pub use busy::{busy_response, listener, DEFAULT_RETRY_AFTER};
pub use listener::{
    Accept, Accepted, HttpListener, ListenerBuilder, DEFAULT_MAX_REFUSALS, DEFAULT_REFUSAL_TIMEOUT,
};
pub use server::{serve, ConnInfo, Server, DEFAULT_DRAIN_TIMEOUT, DEFAULT_HEADER_TIMEOUT};

/// The boxed error type services and bodies may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
