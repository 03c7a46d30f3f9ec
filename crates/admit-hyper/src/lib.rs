//! # admit-hyper
//!
//! Connection-level admission for hyper 1.x servers (and so for axum): serve
//! HTTP/1.1 — and HTTP/2, when asked for — on admitted connections
//! ([`HttpListener`], or admit-tcp's `AdmitListener` through [`Accept`]),
//! with
//!
//! * a real `HTTP/1.1 503 Service Unavailable` with `Retry-After` and
//!   `Connection: close` for connections refused at capacity, written off
//!   the accept loop and bounded in time ([`HttpListener`]);
//! * a header timeout on by default, so a client that connects and sends
//!   nothing, or trickles its headers, is closed and its slot freed;
//! * upgraded connections (WebSocket) that keep their connection's permit
//!   until the upgraded stream closes, and close when it is revoked — after
//!   an optional goodbye window in which the handler, told by the
//!   connection's end signal ([`ConnInfo::ending`]), can send a close frame;
//! * the connection's [`ConnInfo`] (peer, lease, end signal) in every
//!   request's extensions;
//! * waiting in the limiter's queue for a permit, a per-address budget that
//!   can be shared with admit-tcp listeners, and a `503` body of your own
//!   ([`Builder`]);
//! * graceful shutdown: stop accepting, finish in-flight requests, close
//!   idle connections, force-close after a deadline;
//! * the connection count in the limiter's health (`in_use`);
//! * with HTTP/2 on, a bound on each connection's concurrent streams and,
//!   through one request limiter ([`Server::admit_requests`], admit-tower's
//!   [`HttpAdmitLayer`]), on the requests of all connections together.
//!
//! ## What a connection slot bounds, and what it does not
//!
//! A permit of the listener's limiter is one open connection. Over
//! HTTP/1.1 — the default — a connection carries one request at a time, so
//! the connection cap is also a cap on requests in flight. HTTP/2 carries
//! many requests (streams) on one connection at once, so there the slot
//! multiplies: turn HTTP/2 on only with its stream bound
//! ([`Server::max_concurrent_streams`], small by default) and a request
//! limiter ([`Server::admit_requests`]) if the number of requests matters.
//! When HTTP/2 is off, a client that opens with the HTTP/2 preface is
//! refused, not served.
//!
//! No connection or request cap bounds what an admitted request costs: a
//! large or trickling request body, CPU and memory spent in the handler
//! (password hashing, a big query), a long-lived upgraded WebSocket. Guard
//! such work with a limiter of its own around it (an [`admit::Limiter`],
//! or admit-tower's layers on the routes concerned). See [`Server`] for the
//! details.
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
//!
//! ## Features
//!
//! * `axum` — every request also carries axum's `ConnectInfo<SocketAddr>`
//!   (the peer's address), so an axum app whose handlers extract it, written
//!   for `into_make_service_with_connect_info`, is served by [`Server`]
//!   unchanged. Off by default; [`ConnInfo`] carries the same address (and
//!   more) either way.
//!
//! HTTP/1.1 and HTTP/2 are always built, and chosen per [`Server`]. The
//! core crate is re-exported as [`admit`]. For `axum::serve` itself over an
//! admitted listener, see admit-tcp's `axum` feature
//! ([`HttpListener::into_inner`] gives the engine underneath).
//!
//! ## An axum app with WebSockets
//!
//! Upgrades need nothing special: [`Server`] serves every connection with
//! upgrades enabled, so axum's `WebSocketUpgrade` works as usual, and the
//! upgraded socket keeps the connection's permit until the handler drops it.
//! Revoking the lease (an operator, or a [`Watchdog`](admit::Watchdog) with
//! `max_idle`) ends the socket. With a goodbye window
//! ([`Server::goodbye_window`]) the handler hears of it first, through the
//! [`ConnInfo`] every request carries, and can close with a code the client
//! understands:
//!
//! ```no_run
//! use admit_hyper::ConnInfo;
//! use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
//! use axum::{response::Response, routing::get, Extension, Router};
//! use std::time::Duration;
//!
//! async fn ws(upgrade: WebSocketUpgrade, Extension(conn): Extension<ConnInfo>) -> Response {
//!     upgrade.on_upgrade(move |mut socket: WebSocket| async move {
//!         loop {
//!             tokio::select! {
//!                 msg = socket.recv() => match msg {
//!                     Some(Ok(Message::Text(text))) => {
//!                         if socket.send(Message::Text(text)).await.is_err() {
//!                             break;
//!                         }
//!                     }
//!                     Some(Ok(_)) => {}
//!                     _ => break,
//!                 },
//!                 // Revoked: writes still work for the goodbye window.
//!                 _ = conn.ending.ended() => {
//!                     let close = CloseFrame { code: 1013, reason: "idle".into() };
//!                     let _ = socket.send(Message::Close(Some(close))).await;
//!                     break;
//!                 }
//!             }
//!         }
//!     })
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> std::io::Result<()> {
//! let limiter = admit::Limiter::builder().capacity(10_000).name("chat").build().unwrap();
//! let _watchdog = admit::Watchdog::spawn(
//!     limiter.clone(),
//!     admit::WatchdogConfig::default()
//!         .max_idle(Duration::from_secs(300))
//!         .grace(Duration::from_secs(2)),
//! )?;
//! let listener = admit_hyper::listener(limiter.clone())
//!     .per_ip(256)
//!     .bind("127.0.0.1:8080")
//!     .await?;
//! let app = Router::new().route("/ws", get(ws));
//! let shutdown = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! admit_hyper::Server::new()
//!     .goodbye_window(Duration::from_millis(500))
//!     .drain_timeout(Duration::from_secs(5))
//!     .serve(listener, app, shutdown)
//!     .await
//! # }
//! ```
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

mod busy;
mod conn;
mod listener;
mod registry;
mod requests;
mod server;

pub use admit_tcp::{Ended, Ending};
pub use admit_tower::{HttpAdmitLayer, OnFull, ReleaseAt};
pub use busy::{busy_response, busy_response_with, listener, DEFAULT_RETRY_AFTER};
pub use listener::{
    Accept, Accepted, Builder, HttpListener, HttpRefusal, DEFAULT_MAX_REFUSALS,
    DEFAULT_REFUSAL_TIMEOUT,
};
pub use server::{
    serve, ConnInfo, HyperBuilders, Server, DEFAULT_DRAIN_TIMEOUT, DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONCURRENT_STREAMS,
};

/// The boxed error type services and bodies may fail with (admit-tower's,
/// so the two crates name one type).
pub use admit_tower::BoxError;
