//! [`HttpAdmitLayer`]: wraps `http` services in [`HttpAdmit`].

use super::HttpAdmit;
use crate::admission::{Config, OnFull};
use admit::Limiter;
use std::time::Duration;
use tower_layer::Layer;

/// When an admitted request gives its permit back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReleaseAt {
    /// When the response body has been read to its end, has failed, or was
    /// dropped (the default): a streaming response counts as in flight for
    /// as long as it streams.
    #[default]
    BodyEnd,
    /// As soon as the response head is ready: only the handler's work
    /// counts, not the time spent sending the body.
    Headers,
}

/// Applies request admission to an `http` service; full requests are
/// answered with `503 Service Unavailable` and a `Retry-After` header by the
/// layer itself, so the inner service's error type is kept (an axum
/// `Router` can take it as a plain `.layer(..)`).
///
/// ```
/// use admit::Limiter;
/// use admit_tower::{HttpAdmitLayer, ReleaseAt};
/// use axum::{routing::get, Router};
/// use std::time::Duration;
///
/// let limiter = Limiter::builder().capacity(100).queue_limit(50).build().unwrap();
/// let app: Router = Router::new()
///     .route("/", get(|| async { "ok" }))
///     .layer(
///         HttpAdmitLayer::new(limiter)
///             .queue()
///             .release_at(ReleaseAt::Headers)
///             .retry_after(Duration::from_secs(5)),
///     );
/// # let _ = app;
/// ```
#[derive(Debug, Clone)]
pub struct HttpAdmitLayer {
    pub(crate) config: Config,
    pub(crate) release_at: ReleaseAt,
}

impl HttpAdmitLayer {
    /// A layer that admits through `limiter`, answers 503 when it is full,
    /// and holds each permit until the response body ends.
    pub fn new(limiter: Limiter) -> HttpAdmitLayer {
        HttpAdmitLayer {
            config: Config::new(limiter),
            release_at: ReleaseAt::BodyEnd,
        }
    }

    /// Waits in the limiter's queue instead of answering 503 at once; see
    /// [`AdmitLayer::queue`](crate::AdmitLayer::queue).
    pub fn queue(self) -> HttpAdmitLayer {
        self.on_full(OnFull::Queue)
    }

    /// Sets what happens when the limiter is full.
    pub fn on_full(mut self, on_full: OnFull) -> HttpAdmitLayer {
        self.config.on_full = on_full;
        self
    }

    /// The `Retry-After` sent with a 503, rounded up to whole seconds
    /// (default one second).
    pub fn retry_after(mut self, retry_after: Duration) -> HttpAdmitLayer {
        self.config.retry_after = retry_after;
        self
    }

    /// When the permit is released (default [`ReleaseAt::BodyEnd`]).
    pub fn release_at(mut self, release_at: ReleaseAt) -> HttpAdmitLayer {
        self.release_at = release_at;
        self
    }

    /// The limiter this layer admits through.
    pub fn limiter(&self) -> &Limiter {
        &self.config.limiter
    }
}

impl<S> Layer<S> for HttpAdmitLayer {
    type Service = HttpAdmit<S>;

    fn layer(&self, inner: S) -> HttpAdmit<S> {
        HttpAdmit::from_layer(inner, self.clone())
    }
}
