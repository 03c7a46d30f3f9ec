//! [`HttpAdmitLayer`]: wraps `http` services in [`HttpAdmit`].

use super::HttpAdmit;
use crate::admission::{Config, OnFull};
use admit::Limiter;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
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
    pub(crate) refusal: Refusal,
}

/// The response a refused request gets, apart from its `Retry-After`.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    /// `Content-Type` and body; `None` sends an empty body.
    pub(crate) body: Option<(HeaderValue, Bytes)>,
}

impl HttpAdmitLayer {
    /// A layer that admits through `limiter`, answers 503 when it is full,
    /// and holds each permit until the response body ends.
    pub fn new(limiter: Limiter) -> HttpAdmitLayer {
        HttpAdmitLayer {
            config: Config::new(limiter),
            release_at: ReleaseAt::BodyEnd,
            refusal: Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: None,
            },
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

    /// The `Retry-After` sent with a refusal, rounded up to whole seconds
    /// (default [`DEFAULT_RETRY_AFTER`](crate::DEFAULT_RETRY_AFTER)).
    pub fn retry_after(mut self, retry_after: Duration) -> HttpAdmitLayer {
        self.config.retry_after = retry_after;
        self
    }

    /// How long a request may wait in the queue (with [`queue`](Self::queue))
    /// before it is refused, counted in the limiter's health as
    /// [`Rejected::Timeout`](admit::Rejected::Timeout); see
    /// [`AdmitLayer::queue_timeout`](crate::AdmitLayer::queue_timeout).
    /// Needs a tokio runtime.
    pub fn queue_timeout(mut self, timeout: Duration) -> HttpAdmitLayer {
        self.config.queue_timeout = Some(timeout);
        self
    }

    /// The status of a refusal: `503 Service Unavailable` by default, or
    /// `429 Too Many Requests` for a limit that is about the client rather
    /// than the server.
    ///
    /// ```
    /// use admit_tower::HttpAdmitLayer;
    ///
    /// let layer = HttpAdmitLayer::new(admit::Limiter::new(8))
    ///     .status(http::StatusCode::TOO_MANY_REQUESTS);
    /// # let _ = layer;
    /// ```
    pub fn status(mut self, status: StatusCode) -> HttpAdmitLayer {
        self.refusal.status = status;
        self
    }

    /// The body of a refusal and its `Content-Type` (default: an empty
    /// body). Line breaks in `content_type` become spaces; a content type
    /// that is still not a valid header value is sent as
    /// `application/octet-stream`.
    ///
    /// ```
    /// use admit_tower::HttpAdmitLayer;
    ///
    /// let layer = HttpAdmitLayer::new(admit::Limiter::new(8))
    ///     .busy_body("application/json", &br#"{"error":"busy"}"#[..]);
    /// # let _ = layer;
    /// ```
    pub fn busy_body(mut self, content_type: &str, body: impl Into<Bytes>) -> HttpAdmitLayer {
        let content_type = content_type.replace(['\r', '\n'], " ");
        let content_type = HeaderValue::from_str(&content_type)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
        self.refusal.body = Some((content_type, body.into()));
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
