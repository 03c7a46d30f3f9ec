//! Adaptive admission: the limit is set by an [`admit::adaptive`]
//! controller from the latency and outcome of every request.
//!
//! [`AdaptiveLayer`] times each request from `call` to its response and
//! reports it, with the number in flight when it was admitted and an
//! [`Outcome`] read from the result by a [`Classify`] (by default
//! [`ByStatus`]: a 5xx response or an error is *dropped*, a 504 or an error
//! that says it timed out is a *timeout*). Built with
//! [`AdaptiveLayer::new`] it also admits each request through the
//! controller's limiter and sheds at once with
//! [`Overloaded`](crate::Overloaded) over the limit, like
//! [`AdmitLayer`](crate::AdmitLayer). Built with [`AdaptiveLayer::observe`]
//! it only times requests, for a limiter that admits something else — the
//! connections of an admit-tcp or admit-hyper listener — so the listener's
//! limit adapts to the latency of the requests served on them.
//!
//! ```
//! use admit::adaptive::{Config, QueueDelay};
//! use admit::Limiter;
//! use admit_tower::adaptive::AdaptiveLayer;
//! use tower::ServiceBuilder;
//!
//! let limiter = Limiter::builder().capacity(1).max_capacity(1_000).build().unwrap();
//! let layer = AdaptiveLayer::spawn(limiter, QueueDelay::default(), Config::default()).unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|req: http::Request<String>| async move {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(req.into_body()))
//!     });
//! # let _ = svc;
//! ```

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::AdaptiveLayer;
pub use service::Adaptive;

use crate::BoxError;
use admit::adaptive::Outcome;

/// Reads how a request ended from its result.
pub trait Classify<Res> {
    /// The outcome of one request.
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome;
}

impl<Res, F> Classify<Res> for F
where
    F: Fn(Result<&Res, &BoxError>) -> Outcome,
{
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        self(result)
    }
}

/// For `http` responses: 504 is a timeout, any other 5xx is dropped, the
/// rest answered; errors as [`ByResult`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ByStatus;

impl<B> Classify<http::Response<B>> for ByStatus {
    fn classify(&self, result: Result<&http::Response<B>, &BoxError>) -> Outcome {
        match result {
            Ok(r) if r.status() == http::StatusCode::GATEWAY_TIMEOUT => Outcome::Timeout,
            Ok(r) if r.status().is_server_error() => Outcome::Dropped,
            Ok(_) => Outcome::Ok,
            Err(e) => error_outcome(e),
        }
    }
}

/// For any response: `Ok` is answered; an error is a timeout if it (or
/// an error in its source chain) is an I/O `TimedOut` or says it "timed
/// out" (tower's `Elapsed` does), and dropped otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByResult;

impl<Res> Classify<Res> for ByResult {
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(e) => error_outcome(e),
        }
    }
}

fn error_outcome(e: &BoxError) -> Outcome {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = cur {
        let io_timeout = err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        if io_timeout || err.to_string().contains("timed out") {
            return Outcome::Timeout;
        }
        cur = err.source();
    }
    Outcome::Dropped
}
