//! The `503` written to connections the listener cannot admit.

use crate::listener::{Builder, HttpListener};
use admit::Limiter;
use std::time::Duration;

/// The `Retry-After` an [`HttpListener`] advises unless told otherwise:
/// admit-tower's default, so a connection refused here and a request shed
/// by a request limiter are told the same.
pub use admit_tower::DEFAULT_RETRY_AFTER;
/// The body of the default `503`.
pub(crate) const DEFAULT_BUSY_BODY: &[u8] = b"server at connection capacity; retry later\n";
/// Its content type.
pub(crate) const DEFAULT_BUSY_TYPE: &str = "text/plain; charset=utf-8";

/// The bytes of a complete `HTTP/1.1 503 Service Unavailable` response with
/// `Retry-After` (whole seconds, rounded up), `Connection: close` and a short
/// plain-text body.
///
/// ```
/// let bytes = admit_hyper::busy_response(std::time::Duration::from_secs(2));
/// let text = std::str::from_utf8(&bytes).unwrap();
/// assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
/// assert!(text.contains("\r\nRetry-After: 2\r\n"));
/// assert!(text.contains("\r\nConnection: close\r\n"));
/// ```
pub fn busy_response(retry_after: Duration) -> Vec<u8> {
    busy_response_with(retry_after, DEFAULT_BUSY_TYPE, DEFAULT_BUSY_BODY)
}

/// Like [`busy_response`], with a body and `Content-Type` of your own (see
/// [`Builder::busy_body`]). Line breaks in `content_type` are
/// replaced by spaces, so it cannot add headers.
///
/// ```
/// use std::time::Duration;
///
/// let bytes = admit_hyper::busy_response_with(
///     Duration::from_millis(1500),
///     "application/json",
///     br#"{"error":"unavailable"}"#,
/// );
/// let text = std::str::from_utf8(&bytes).unwrap();
/// assert!(text.contains("\r\nRetry-After: 2\r\n"));
/// assert!(text.contains("\r\nContent-Type: application/json\r\n"));
/// assert!(text.ends_with("\r\nContent-Length: 23\r\n\r\n{\"error\":\"unavailable\"}"));
/// ```
pub fn busy_response_with(retry_after: Duration, content_type: &str, body: &[u8]) -> Vec<u8> {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let content_type = content_type.replace(['\r', '\n'], " ");
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\n\
         Retry-After: {secs}\r\n\
         Connection: close\r\n\
         Content-Type: {content_type}\r\n\
         Content-Length: {}\r\n\
         \r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Starts an [`HttpListener`] for `limiter`: connections it cannot admit are
/// answered `503` with `Retry-After: 5` and `Connection: close`. Same as
/// [`HttpListener::builder`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let limiter = admit::Limiter::new(10_000);
/// let listener = admit_hyper::listener(limiter)
///     .per_ip(256)
///     .bind("127.0.0.1:0")
///     .await?;
/// # drop(listener); Ok(()) }
/// ```
pub fn listener(limiter: Limiter) -> Builder {
    HttpListener::builder(limiter)
}
