//! The error a shed request fails with.

use admit::Rejected;
use std::time::Duration;

/// A request was not admitted: the limiter was full, its wait queue was
/// full, or it was closed. The inner service never saw the request, so it is
/// always safe to retry it later.
///
/// [`Admit`](crate::Admit) returns it boxed as a [`BoxError`](crate::BoxError);
/// downcast to recognise it. [`http_response`](Self::http_response) turns it
/// into the `503` a client should see.
///
/// ```
/// use admit_tower::{BoxError, Overloaded};
///
/// fn status_of(err: &BoxError) -> u16 {
///     match err.downcast_ref::<Overloaded>() {
///         Some(overloaded) => overloaded.http_response::<String>().status().as_u16(),
///         None => 500,
///     }
/// }
/// # let _ = status_of;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request not admitted ({reason}); retry after {}s", retry_after_secs(*.retry_after))]
pub struct Overloaded {
    reason: Rejected,
    retry_after: Duration,
}

impl Overloaded {
    /// An `Overloaded` error for `reason`, advising clients to come back
    /// after `retry_after`.
    pub fn new(reason: Rejected, retry_after: Duration) -> Overloaded {
        Overloaded {
            reason,
            retry_after,
        }
    }

    /// Why the limiter refused: [`Rejected::Full`], [`Rejected::QueueFull`]
    /// or [`Rejected::Closed`].
    pub fn reason(&self) -> Rejected {
        self.reason
    }

    /// How long clients are advised to wait before retrying.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// A `503 Service Unavailable` response with a `Retry-After` header (in
    /// whole seconds, rounded up) and an empty body.
    ///
    /// ```
    /// use admit::Rejected;
    /// use admit_tower::Overloaded;
    /// use std::time::Duration;
    ///
    /// let res = Overloaded::new(Rejected::Full, Duration::from_millis(1500))
    ///     .http_response::<String>();
    /// assert_eq!(res.status(), 503);
    /// assert_eq!(res.headers()["retry-after"], "2");
    /// ```
    pub fn http_response<B: Default>(&self) -> http::Response<B> {
        let mut res = http::Response::new(B::default());
        *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        let headers = res.headers_mut();
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(retry_after_secs(self.retry_after)),
        );
        headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from_static("0"),
        );
        res
    }
}

/// Whole seconds for a `Retry-After` header, rounded up.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
