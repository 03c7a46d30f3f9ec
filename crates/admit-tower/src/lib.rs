//! # admit-tower
//!
//! [tower] middleware that admits requests through an [`admit::Limiter`]
//! and sheds load at once when the limiter is full.
//!
//! * [`AdmitLayer`] / [`Admit`] — for any tower service. A request takes a
//!   permit when it is *called*, never in `poll_ready`, so a keep-alive
//!   connection that sits idle between requests holds nothing. Over the
//!   limit the request fails at once with [`Overloaded`] (boxed, like
//!   tower's own errors), or waits in the limiter's FIFO queue when the
//!   layer is built with [`AdmitLayer::queue`]. The permit is released when
//!   the response future completes or is dropped.
//! * [`HttpAdmitLayer`] / [`HttpAdmit`] — for `http` services such as an
//!   axum `Router`. Over the limit it answers `503 Service Unavailable` with
//!   a `Retry-After` header itself, so the service's error type is
//!   unchanged (axum needs `Infallible`). The permit rides in the response
//!   body ([`AdmitBody`]) until the body has finished streaming, or is
//!   released as soon as the headers are ready ([`ReleaseAt::Headers`]).
//!   The refusal's status (`429 Too Many Requests` instead of `503`) and
//!   body can be set ([`HttpAdmitLayer::status`],
//!   [`HttpAdmitLayer::busy_body`]).
//!
//! * [`adaptive::AdaptiveLayer`] — the limit is found, not guessed: an
//!   [`admit::adaptive`] controller sets it from every request's latency
//!   and outcome (5xx and timeouts count as dropped).
//!
//! Clones of a layer or a service share one limiter, so the cap holds across
//! every connection a server hands the service to — and across the streams
//! of one HTTP/2 connection, which a connection-level limiter cannot see:
//! one HTTP/2 connection may carry many requests at once. admit-hyper's
//! `Server::admit_requests` applies an [`HttpAdmitLayer`] to every request
//! of every connection it serves.
//!
//! ```
//! use admit::Limiter;
//! use admit_tower::{AdmitLayer, Overloaded};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let limiter = Limiter::new(1);
//! let mut svc = AdmitLayer::new(limiter.clone())
//!     .layer(service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x * 2) }));
//!
//! // Admitted: the permit is held while the response future runs.
//! let held = limiter.try_acquire().unwrap();
//! let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
//! assert!(err.is::<Overloaded>());
//! drop(held);
//! assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), 4);
//! assert_eq!(limiter.in_use(), 0);
//! # }
//! ```
//!
//! Serving an axum `Router` with a request cap:
//!
//! ```
//! use admit::Limiter;
//! use admit_tower::HttpAdmitLayer;
//! use axum::{routing::get, Router};
//! use std::time::Duration;
//!
//! let limiter = Limiter::builder().capacity(512).name("requests").build().unwrap();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(HttpAdmitLayer::new(limiter).retry_after(Duration::from_secs(2)));
//! # let _ = app;
//! ```
//!
//! ## Features
//!
//! None: everything above is always built. The core crate is re-exported
//! as [`admit`].
//!
//! [tower]: https://docs.rs/tower
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

pub mod adaptive;
mod admission;
mod error;
pub mod future;
pub mod http;
mod layer;
mod service;

pub use error::Overloaded;
pub use http::{AdmitBody, HttpAdmit, HttpAdmitLayer, ReleaseAt};
pub use layer::{AdmitLayer, OnFull};
pub use service::Admit;

/// The `Retry-After` advised to shed requests unless a layer is told
/// otherwise: five seconds, the same default as admit-hyper's connection
/// `503` and admit-tcp's `BUSY retry-after=5`, so a client hears one figure
/// whichever part of a server turned it away.
pub const DEFAULT_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// The error type of [`Admit`]: a boxed error, like tower's middleware.
/// Downcast it to [`Overloaded`] to tell shed requests apart.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
