//! The `503` written to connections the listener cannot admit.

use crate::listener::{HttpListener, ListenerBuilder};
use admit::Limiter;
use std::time::Duration;

/// The `Retry-After` an [`HttpListener`] advises unless told otherwise.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

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
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let body = "server at connection capacity; retry later\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\n\
         Retry-After: {secs}\r\n\
         Connection: close\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         \r\n\
         {body}",
        body.len()
    )
    .into_bytes()
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
pub fn listener(limiter: Limiter) -> ListenerBuilder {
    HttpListener::builder(limiter)
}
