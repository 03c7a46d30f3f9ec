//! Where connections come from: the [`Accept`] trait, and [`HttpListener`],
//! admit-tcp's accept engine configured so that its refusals speak HTTP.

use crate::busy::{busy_response_with, DEFAULT_BUSY_BODY, DEFAULT_BUSY_TYPE};
use admit::{Limiter, Rejected};
use admit_tcp::{
    AdmitListener, Admitted, Answer, AnswerFuture, Keepalive, ListenerStats, PerIpGuard,
    PerIpLimit, Policy, Refused,
};
use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};

pub use admit_tcp::{DEFAULT_MAX_REFUSALS, DEFAULT_REFUSAL_TIMEOUT};

/// One admitted connection, as a [`Server`](crate::Server) receives it.
#[derive(Debug)]
pub struct Accepted {
    pub(crate) io: Admitted<TcpStream>,
    pub(crate) remote_addr: SocketAddr,
}

impl Accepted {
    /// An admitted stream from `remote_addr`.
    pub fn new(io: Admitted<TcpStream>, remote_addr: SocketAddr) -> Accepted {
        Accepted { io, remote_addr }
    }

    /// Whether the connection holds one of the limiter's reserved permits
    /// (see [`Builder::reserve_for`]): a [`Server`](crate::Server)
    /// answers one request on it and closes it.
    pub fn is_reserved(&self) -> bool {
        self.io.is_reserved()
    }

    /// Holds a per-address count for as long as the connection lives (it
    /// rides in the [`Admitted`] stream).
    pub fn with_per_ip(mut self, guard: PerIpGuard) -> Accepted {
        self.io = self.io.with_per_ip(guard);
        self
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote_addr
    }

    /// The admitted stream.
    pub fn io(&self) -> &Admitted<TcpStream> {
        &self.io
    }

    /// The stream (which holds the permit and the per-address count) and
    /// the peer's address.
    pub fn into_parts(self) -> (Admitted<TcpStream>, SocketAddr) {
        (self.io, self.remote_addr)
    }
}

/// A source of admitted connections for [`Server`](crate::Server).
///
/// Implemented by [`HttpListener`] (refusals get an HTTP `503`) and by
/// admit-tcp's [`AdmitListener`] (refusals get its [`Policy`]'s answer,
/// written as soon as the connection is accepted; HTTP clients that check
/// for data before their request, hyper's among them, report that answer as
/// an unexpected message, so prefer [`HttpListener`] for HTTP, or give the
/// `AdmitListener` the [`HttpRefusal`] answer).
pub trait Accept: Send {
    /// The next admitted connection. Must be cancel-safe: the server
    /// drops it when shutdown begins.
    fn accept(&mut self) -> impl Future<Output = io::Result<Accepted>> + Send;

    /// The limiter connections are admitted through.
    fn limiter(&self) -> &Limiter;

    /// The address accepted on.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl Accept for AdmitListener {
    async fn accept(&mut self) -> io::Result<Accepted> {
        let (io, remote_addr) = AdmitListener::accept(self).await?;
        Ok(Accepted::new(io, remote_addr))
    }

    fn limiter(&self) -> &Limiter {
        AdmitListener::limiter(self)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        AdmitListener::local_addr(self)
    }
}

/// The request head a refusal reads at most before answering.
const MAX_REFUSED_HEAD: usize = 16 * 1024;
/// How much of a refused connection's request line is looked at to decide
/// whether it may use the reserve.
const MAX_REQUEST_LINE: usize = 2048;

/// Configures an [`HttpListener`]. Start from [`HttpListener::builder`] or
/// [`listener`](crate::listener). Everything that is not about HTTP is
/// admit-tcp's [`Builder`](admit_tcp::Builder), reachable with
/// [`tcp`](Self::tcp).
///
/// Each crate of the family names its builder `Builder` and starts it from
/// its main type: [`admit::Limiter::builder`],
/// [`admit_tcp::AdmitListener::builder`], [`HttpListener::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    tcp: admit_tcp::Builder,
    retry_after: Duration,
    queue_timeout: Option<Duration>,
    busy_type: Cow<'static, str>,
    busy_body: Cow<'static, [u8]>,
    reserved: Option<ReservedPaths>,
}

/// Which request paths may use the limiter's reserve.
#[derive(Clone)]
struct ReservedPaths(Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for ReservedPaths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReservedPaths(..)")
    }
}

impl Builder {
    /// The `Retry-After` sent with refusals (default
    /// [`DEFAULT_RETRY_AFTER`](crate::DEFAULT_RETRY_AFTER)).
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// The body of the `503` (default: a line of plain text), and its
    /// `Content-Type`. The status line and the `Retry-After`,
    /// `Connection: close`, `Content-Type` and `Content-Length` headers are
    /// written around it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let listener = admit_hyper::listener(admit::Limiter::new(100))
    ///     .busy_body(
    ///         "application/json",
    ///         &br#"{"error":"unavailable","message":"at capacity; retry later"}"#[..],
    ///     )
    ///     .bind("127.0.0.1:0")
    ///     .await?;
    /// # drop(listener); Ok(()) }
    /// ```
    pub fn busy_body(
        mut self,
        content_type: impl Into<Cow<'static, str>>,
        body: impl Into<Cow<'static, [u8]>>,
    ) -> Self {
        self.busy_type = content_type.into();
        self.busy_body = body.into();
        self
    }

    /// Lets connections the limiter cannot admit at once wait in its queue
    /// (as many as the limiter's `queue_limit`) for up to `timeout`; one
    /// that gets a permit in time is admitted, the others are answered
    /// `503` (counted as `timeout`, or `queue_full` when the queue has no
    /// room). Waiting happens beside the accept loop, never in it. A
    /// per-address share, if capped, is held while waiting. Default: no
    /// waiting (refuse at once).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let limiter = admit::Limiter::builder().capacity(1_000).queue_limit(100).build().unwrap();
    /// let listener = admit_hyper::listener(limiter)
    ///     .queue_timeout(Duration::from_secs(10))
    ///     .bind("127.0.0.1:0")
    ///     .await?;
    /// assert_eq!(listener.waiting(), 0);
    /// # Ok(()) }
    /// ```
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = Some(timeout);
        self
    }

    /// Caps connections per peer address (IPv6: per /64) with a table sized
    /// by [`PerIpLimit::for_limiter`]. Refusals count as `per_ip` in health.
    pub fn per_ip(self, max: u32) -> Self {
        self.map_tcp(|tcp| tcp.per_ip(max))
    }

    /// Caps connections per address with a table that may be shared with
    /// other listeners (an admit-tcp listener serving the same users, say),
    /// so an address has one budget across them.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let limiter = admit::Limiter::new(1_000);
    /// let per_ip = admit_tcp::PerIpLimit::for_connections(16, 1_000);
    /// let http = admit_hyper::listener(limiter.clone())
    ///     .per_ip_limit(per_ip.clone())
    ///     .bind("127.0.0.1:0")
    ///     .await?;
    /// let tcp = admit_tcp::AdmitListener::builder(limiter)
    ///     .per_ip_limit(per_ip)
    ///     .bind("127.0.0.1:0")
    ///     .await?;
    /// # drop((http, tcp)); Ok(()) }
    /// ```
    pub fn per_ip_limit(self, limit: PerIpLimit) -> Self {
        self.map_tcp(|tcp| tcp.per_ip_limit(limit))
    }

    /// How long a refused connection may take, all told, to send its request
    /// head, receive the `503` and close (default
    /// [`DEFAULT_REFUSAL_TIMEOUT`]). Then it is closed regardless.
    pub fn refusal_timeout(self, timeout: Duration) -> Self {
        self.map_tcp(|tcp| tcp.refusal_timeout(timeout))
    }

    /// How many refused connections may be answered at once (default
    /// [`DEFAULT_MAX_REFUSALS`]); beyond that, refused connections are
    /// closed without an answer, so a flood cannot grow memory.
    pub fn max_refusals(self, max: usize) -> Self {
        self.map_tcp(|tcp| tcp.max_refusals(max))
    }

    /// Keeps the limiter's reserve ([`admit::Builder::reserve`]) for
    /// requests whose path `reserved` accepts: health checks, metrics,
    /// an operator's admin calls. A connection refused for want of a permit
    /// (not one over its address's cap) has its request line looked at, on
    /// its refusal task, without reading it off the socket; if the path is
    /// reserved and a reserved permit is free
    /// ([`try_acquire_critical`](admit::Limiter::try_acquire_critical)), the
    /// connection is admitted after all, and a [`Server`](crate::Server)
    /// answers that one request and closes it, so the reserve cannot be
    /// held by keep-alive. Everyone else is refused as usual.
    ///
    /// So clients holding every ordinary permit cannot keep an operator
    /// from `/health`:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let limiter = admit::Limiter::builder().capacity(64).reserve(8).build().unwrap();
    /// let listener = admit_hyper::listener(limiter)
    ///     .per_ip(8)
    ///     .reserve_for(|path| path == "/health" || path.starts_with("/admin/"))
    ///     .bind("127.0.0.1:0")
    ///     .await?;
    /// # drop(listener); Ok(()) }
    /// ```
    pub fn reserve_for(mut self, reserved: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.reserved = Some(ReservedPaths(Arc::new(reserved)));
        self
    }

    /// Sets `TCP_NODELAY` on admitted connections (default true).
    pub fn nodelay(self, on: bool) -> Self {
        self.map_tcp(|tcp| tcp.nodelay(on))
    }

    /// TCP keepalive on admitted connections (default
    /// `Some(Keepalive::default())`; `None` leaves the system default).
    pub fn keepalive(self, keepalive: Option<Keepalive>) -> Self {
        self.map_tcp(|tcp| tcp.keepalive(keepalive))
    }

    /// Ends admitted connections that move no bytes for this long (see
    /// [`Admitted::with_idle_timeout`]). Default: none.
    pub fn idle_timeout(self, timeout: Duration) -> Self {
        self.map_tcp(|tcp| tcp.idle_timeout(timeout))
    }

    /// Any other setting of the underlying accept engine, admit-tcp's
    /// [`Builder`](admit_tcp::Builder). Its policy and answer to refusals
    /// are set by this builder when the listener is built.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let listener = admit_hyper::listener(admit::Limiter::new(100))
    ///     .tcp(|tcp| tcp.reset_rejected(true))
    ///     .bind("127.0.0.1:0")
    ///     .await?;
    /// # drop(listener); Ok(()) }
    /// ```
    pub fn tcp(self, configure: impl FnOnce(admit_tcp::Builder) -> admit_tcp::Builder) -> Self {
        self.map_tcp(configure)
    }

    fn map_tcp(mut self, f: impl FnOnce(admit_tcp::Builder) -> admit_tcp::Builder) -> Self {
        self.tcp = f(self.tcp);
        self
    }

    /// Binds to `addr`.
    pub async fn bind(self, addr: impl ToSocketAddrs) -> io::Result<HttpListener> {
        self.from_tokio(TcpListener::bind(addr).await?)
    }

    /// Wraps a bound tokio listener. Must be called inside a tokio runtime.
    pub fn from_tokio(self, listener: TcpListener) -> io::Result<HttpListener> {
        let refusal = HttpRefusal {
            response: busy_response_with(self.retry_after, &self.busy_type, &self.busy_body).into(),
            reserved: self.reserved,
        };
        let policy = match self.queue_timeout {
            Some(timeout) => Policy::Wait(timeout),
            None => Policy::Reject,
        };
        let inner = self
            .tcp
            .policy(policy)
            .answer_refusals(refusal)
            .from_tokio(listener)?;
        Ok(HttpListener { inner })
    }
}

/// admit-tcp's [`Answer`] that speaks HTTP: it reads the refused client's
/// request head, answers `503 Service Unavailable` with `Retry-After` and
/// `Connection: close`, shuts its side down and reads until the client
/// closes (so the close is a FIN after the answer, not a reset that could
/// destroy it). With reserved paths, a connection refused for want of a
/// permit whose request line names one is admitted on the limiter's reserve
/// instead. [`HttpListener`] uses it; give it to an `AdmitListener` of your
/// own with [`admit_tcp::Builder::answer_refusals`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use std::time::Duration;
///
/// let refusal = admit_hyper::HttpRefusal::new(Duration::from_secs(2));
/// let listener = admit_tcp::AdmitListener::builder(admit::Limiter::new(100))
///     .policy(admit_tcp::Policy::Reject)
///     .answer_refusals(refusal)
///     .bind("127.0.0.1:0")
///     .await?;
/// # drop(listener); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct HttpRefusal {
    response: Arc<[u8]>,
    reserved: Option<ReservedPaths>,
}

impl HttpRefusal {
    /// Answers with [`busy_response`](crate::busy_response)`(retry_after)`.
    pub fn new(retry_after: Duration) -> HttpRefusal {
        HttpRefusal {
            response: busy_response_with(retry_after, DEFAULT_BUSY_TYPE, DEFAULT_BUSY_BODY).into(),
            reserved: None,
        }
    }
}

impl Answer for HttpRefusal {
    fn answer(&self, mut refused: Refused) -> AnswerFuture {
        let response = self.response.clone();
        let reserved = self.reserved.clone();
        Box::pin(async move {
            // Only a connection refused for want of a permit may use the
            // reserve; one over its address's cap may not.
            if let (Some(ReservedPaths(reserved)), true) =
                (reserved, refused.reason() != Rejected::PerIp)
            {
                let path = request_path(refused.stream()).await;
                if path.as_deref().is_some_and(|p| reserved(p)) {
                    if let Ok(permit) = refused.limiter().try_acquire_critical() {
                        // The accept loop admits it (if the listener is
                        // gone, the connection is answered as refused).
                        match refused.admit(permit) {
                            Ok(()) => return,
                            Err(back) => refused = back,
                        }
                    }
                }
            }
            let _ = answer_refused(refused.into_stream(), &response).await;
        })
    }
}

/// An admitted accept loop for HTTP servers: connections that hold a permit
/// come out of [`accept`](Self::accept) as [`Admitted`] streams; the others
/// are answered `HTTP/1.1 503 Service Unavailable` with `Retry-After` and
/// `Connection: close` (after waiting in the limiter's queue, if
/// [`queue_timeout`](Builder::queue_timeout) is set).
///
/// A refusal is answered by a task of its own, never in the accept loop: it
/// reads the client's request head first (an answer that arrives before the
/// request is a protocol error to many HTTP clients), writes the `503`, shuts
/// its side down, and reads until the client closes, so the close is a FIN
/// after the answer rather than a reset that could destroy it. All of that is
/// bounded by [`refusal_timeout`](Builder::refusal_timeout), and the
/// number of refusals in progress by
/// [`max_refusals`](Builder::max_refusals).
///
/// It is configuration of admit-tcp's [`AdmitListener`], the one accept
/// engine: the same per-address cap, TCP keepalive and `TCP_NODELAY`,
/// `accept()` error handling (out of descriptors or memory, back off from
/// 1 ms to 1 s — ended early when a connection closes — with rate-limited
/// warnings and counters in [`stats`](Self::stats); one bad connection,
/// skip it; only errors of the listening socket itself are returned), with
/// refusals answered in HTTP ([`admit_tcp::Builder::answer_refusals`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use std::time::Duration;
///
/// let limiter = admit::Limiter::builder().capacity(10_000).name("http").build().unwrap();
/// let listener = admit_hyper::HttpListener::builder(limiter)
///     .per_ip(256)
///     .retry_after(Duration::from_secs(2))
///     .bind("127.0.0.1:0")
///     .await?;
/// assert!(listener.local_addr()?.ip().is_loopback());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct HttpListener {
    inner: AdmitListener,
}

impl HttpListener {
    /// Starts a [`Builder`].
    pub fn builder(limiter: Limiter) -> Builder {
        Builder {
            tcp: AdmitListener::builder(limiter),
            retry_after: crate::DEFAULT_RETRY_AFTER,
            queue_timeout: None,
            busy_type: Cow::Borrowed(DEFAULT_BUSY_TYPE),
            busy_body: Cow::Borrowed(DEFAULT_BUSY_BODY),
            reserved: None,
        }
    }

    /// Binds to `addr` with the defaults.
    pub async fn bind(addr: impl ToSocketAddrs, limiter: Limiter) -> io::Result<HttpListener> {
        HttpListener::builder(limiter).bind(addr).await
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The limiter connections are admitted through.
    pub fn limiter(&self) -> &Limiter {
        self.inner.limiter()
    }

    /// The per-address cap, if one is set.
    pub fn per_ip_limit(&self) -> Option<&PerIpLimit> {
        self.inner.per_ip_limit()
    }

    /// Refused connections being answered right now.
    pub fn refusing(&self) -> usize {
        self.inner.stats().answering()
    }

    /// Connections waiting in the limiter's queue right now (see
    /// [`queue_timeout`](Builder::queue_timeout)).
    pub fn waiting(&self) -> usize {
        self.inner.stats().waiting() as usize
    }

    /// The accept engine's counters: admitted, refused, waiting, answering,
    /// accept errors.
    pub fn stats(&self) -> ListenerStats {
        self.inner.stats()
    }

    /// The accept engine underneath.
    pub fn get_ref(&self) -> &AdmitListener {
        &self.inner
    }

    /// The accept engine underneath, which yields the same connections as
    /// `(Admitted<TcpStream>, SocketAddr)` (for `axum::serve`, say, with
    /// admit-tcp's `axum` feature).
    pub fn into_inner(self) -> AdmitListener {
        self.inner
    }

    /// The next admitted connection. Cancel-safe: everything in progress
    /// (waiting connections, a back-off) lives in the listener.
    pub async fn accept(&mut self) -> io::Result<Accepted> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next admitted connection: one that finished waiting,
    /// one admitted on the reserve, or a new one. Refusals are answered on
    /// tasks of their own.
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Accepted>> {
        self.inner
            .poll_accept(cx)
            .map_ok(|(io, remote_addr)| Accepted::new(io, remote_addr))
    }
}

/// The path of the request line waiting on `stream` (without its query),
/// looked at without taking it off the socket, so that hyper can still
/// read the request if the connection is admitted. `None` if the line is
/// not a request line or does not arrive.
async fn request_path(stream: &TcpStream) -> Option<String> {
    let mut buf = vec![0u8; MAX_REQUEST_LINE];
    loop {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        match request_line_path(&buf[..n]) {
            Some(path) => return path.map(str::to_owned),
            None if n == buf.len() => return None,
            // Part of a line: peeked bytes stay readable, so wait a moment
            // for the rest rather than spin (the refusal timeout bounds it).
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// The path (without its query) of the request line at the start of
/// `bytes`: `None` while the line is incomplete, `Some(None)` if it is not
/// a request line for a path.
fn request_line_path(bytes: &[u8]) -> Option<Option<&str>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = request.parse(bytes);
    // The method, path and version are filled in as soon as the request
    // line is parsed, whether or not the headers are complete (or too many).
    let line_done = request.version.is_some();
    match parsed {
        Ok(_) | Err(httparse::Error::TooManyHeaders) if line_done => {}
        Ok(_) => return None,
        Err(_) => return Some(None),
    }
    let path = request.path?.split('?').next()?;
    Some(path.starts_with('/').then_some(path))
}

impl Accept for HttpListener {
    fn accept(&mut self) -> impl Future<Output = io::Result<Accepted>> + Send {
        HttpListener::accept(self)
    }

    fn limiter(&self) -> &Limiter {
        self.inner.limiter()
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Reads the request head, answers, closes cleanly.
async fn answer_refused(mut stream: TcpStream, response: &[u8]) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            // The client gave up before finishing its request.
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head_ended(&head) || head.len() >= MAX_REFUSED_HEAD {
            break;
        }
    }
    drop(head);
    stream.write_all(response).await?;
    stream.shutdown().await?;
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}

/// Whether `bytes` hold a whole request head, or something that will never
/// become one (there is no point waiting for more of it).
fn head_ended(bytes: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    !matches!(
        httparse::Request::new(&mut headers).parse(bytes),
        Ok(httparse::Status::Partial)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            request_line_path(b"GET /health?x=1 HTTP/1.1\r\n"),
            Some(Some("/health"))
        );
        assert_eq!(
            request_line_path(b"GET /admin/drain HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(Some("/admin/drain"))
        );
        assert_eq!(
            request_line_path(b"GET /heal"),
            None,
            "not a whole line yet"
        );
        assert_eq!(request_line_path(b"GET * HTTP/1.1\r\n"), Some(None));
        assert_eq!(request_line_path(b"\x16\x03\x01 tls"), Some(None));
    }

    #[test]
    fn heads() {
        assert!(!head_ended(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(!head_ended(b"GET / HTTP/1.1\r\nHost: a\r\n\r"));
        assert!(head_ended(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(head_ended(b"\x16\x03\x01 not http"));
    }
}
