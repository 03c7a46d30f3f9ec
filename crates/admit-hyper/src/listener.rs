//! Where connections come from: the [`Accept`] trait, and [`HttpListener`],
//! an admitted accept loop whose refusals speak HTTP.

use crate::busy::{busy_response_with, DEFAULT_BUSY_BODY, DEFAULT_BUSY_TYPE};
use admit::{Limiter, Permit, Rejected};
use admit_tcp::backoff::{classify, AcceptErrorKind, Backoff};
use admit_tcp::{AdmitListener, Admitted, PerIpGuard, PerIpLimit, Queued};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::time::Sleep;

/// One admitted connection, as a [`Server`](crate::Server) receives it.
#[derive(Debug)]
pub struct Accepted {
    pub(crate) io: Admitted<TcpStream>,
    pub(crate) remote_addr: SocketAddr,
    pub(crate) per_ip: Option<PerIpGuard>,
    pub(crate) reserved: bool,
}

impl Accepted {
    /// An admitted stream from `remote_addr`.
    pub fn new(io: Admitted<TcpStream>, remote_addr: SocketAddr) -> Accepted {
        Accepted {
            io,
            remote_addr,
            per_ip: None,
            reserved: false,
        }
    }

    /// Whether the connection holds one of the limiter's reserved permits
    /// (see [`ListenerBuilder::reserve_for`]): a [`Server`](crate::Server)
    /// answers one request on it and closes it.
    pub fn is_reserved(&self) -> bool {
        self.reserved
    }

    /// Holds a per-address count for as long as the connection lives.
    pub fn with_per_ip(mut self, guard: PerIpGuard) -> Accepted {
        self.per_ip = Some(guard);
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

    /// The stream, the peer's address, and the per-address count (keep it
    /// as long as the stream).
    pub fn into_parts(self) -> (Admitted<TcpStream>, SocketAddr, Option<PerIpGuard>) {
        (self.io, self.remote_addr, self.per_ip)
    }
}

/// A source of admitted connections for [`Server`](crate::Server).
///
/// Implemented by [`HttpListener`] (refusals get an HTTP `503`) and by
/// admit-tcp's [`AdmitListener`] (refusals get its [`Policy`](admit_tcp::Policy)'s
/// answer, written as soon as the connection is accepted; HTTP clients that
/// check for data before their request, hyper's among them, report that
/// answer as an unexpected message, so prefer [`HttpListener`] for HTTP).
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

/// The default for [`ListenerBuilder::refusal_timeout`].
pub const DEFAULT_REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// The default for [`ListenerBuilder::max_refusals`].
pub const DEFAULT_MAX_REFUSALS: usize = 1024;
/// The request head a refusal reads at most before answering.
const MAX_REFUSED_HEAD: usize = 16 * 1024;
/// How much of a refused connection's request line is looked at to decide
/// whether it may use the reserve.
const MAX_REQUEST_LINE: usize = 2048;
/// Connections accepted (and refused, or skipped) in one poll before the
/// accept loop yields to the runtime, so a flood cannot starve other tasks.
const BUDGET: usize = 64;

/// Configures an [`HttpListener`]. Start from [`HttpListener::builder`] or
/// [`listener`](crate::listener).
#[derive(Debug, Clone)]
pub struct ListenerBuilder {
    limiter: Limiter,
    per_ip: Option<PerIpLimit>,
    per_ip_max: Option<u32>,
    retry_after: Duration,
    refusal_timeout: Duration,
    max_refusals: usize,
    nodelay: bool,
    idle_timeout: Option<Duration>,
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

impl ListenerBuilder {
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
    /// for the limiter's capacity. Refusals count as `per_ip` in health.
    pub fn per_ip(mut self, max: u32) -> Self {
        self.per_ip_max = Some(max);
        self.per_ip = None;
        self
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
    pub fn per_ip_limit(mut self, limit: PerIpLimit) -> Self {
        self.per_ip = Some(limit);
        self.per_ip_max = None;
        self
    }

    /// How long a refused connection may take, all told, to send its request
    /// head, receive the `503` and close (default
    /// [`DEFAULT_REFUSAL_TIMEOUT`]). Then it is closed regardless.
    pub fn refusal_timeout(mut self, timeout: Duration) -> Self {
        self.refusal_timeout = timeout;
        self
    }

    /// How many refused connections may be answered at once (default
    /// [`DEFAULT_MAX_REFUSALS`]); beyond that, refused connections are
    /// closed without an answer, so a flood cannot grow memory.
    pub fn max_refusals(mut self, max: usize) -> Self {
        self.max_refusals = max;
        self
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
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }

    /// Ends admitted connections that move no bytes for this long (see
    /// [`Admitted::with_idle_timeout`]). Default: none.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Binds to `addr`.
    pub async fn bind(self, addr: impl ToSocketAddrs) -> io::Result<HttpListener> {
        Ok(self.from_tokio(TcpListener::bind(addr).await?))
    }

    /// Wraps a bound tokio listener.
    pub fn from_tokio(self, listener: TcpListener) -> HttpListener {
        let queued = match self.queue_timeout {
            Some(_) => self.limiter.queue_limit() as usize,
            None => 0,
        };
        let per_ip = self.per_ip.or_else(|| {
            self.per_ip_max.map(|max| {
                let most = self.limiter.max_capacity() as usize + queued + self.max_refusals;
                PerIpLimit::for_connections(max, most)
            })
        });
        let response = busy_response_with(self.retry_after, &self.busy_type, &self.busy_body);
        let (rescue_tx, rescued) = tokio::sync::mpsc::unbounded_channel();
        HttpListener {
            listener,
            limiter: self.limiter,
            per_ip,
            reserved: self.reserved,
            rescue_tx,
            rescued,
            response: response.into(),
            refusal_timeout: self.refusal_timeout,
            max_refusals: self.max_refusals,
            refusing: Arc::new(AtomicUsize::new(0)),
            nodelay: self.nodelay,
            idle_timeout: self.idle_timeout,
            queue_timeout: self.queue_timeout,
            waits: FuturesUnordered::new(),
            backoff: Backoff::new(),
            backoff_sleep: None,
        }
    }
}

/// An admitted accept loop for HTTP servers: connections that hold a permit
/// come out of [`accept`](Self::accept) as [`Admitted`] streams; the others
/// are answered `HTTP/1.1 503 Service Unavailable` with `Retry-After` and
/// `Connection: close` (after waiting in the limiter's queue, if
/// [`queue_timeout`](ListenerBuilder::queue_timeout) is set).
///
/// A refusal is answered by a task of its own, never in the accept loop: it
/// reads the client's request head first (an answer that arrives before the
/// request is a protocol error to many HTTP clients), writes the `503`, shuts
/// its side down, and reads until the client closes, so the close is a FIN
/// after the answer rather than a reset that could destroy it. All of that is
/// bounded by [`refusal_timeout`](ListenerBuilder::refusal_timeout), and the
/// number of refusals in progress by
/// [`max_refusals`](ListenerBuilder::max_refusals).
///
/// `accept()` errors are handled as admit-tcp's [`backoff`](admit_tcp::backoff)
/// module describes: out of descriptors or memory, back off (1 ms to 1 s) and
/// retry; one bad connection, skip it; only errors of the listening socket
/// itself are returned.
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
    listener: TcpListener,
    limiter: Limiter,
    per_ip: Option<PerIpLimit>,
    reserved: Option<ReservedPaths>,
    /// Refused connections admitted on the reserve, handed back by their
    /// refusal tasks. Bounded by `max_refusals`, like those tasks.
    rescue_tx: UnboundedSender<Rescued>,
    rescued: UnboundedReceiver<Rescued>,
    response: Arc<[u8]>,
    refusal_timeout: Duration,
    max_refusals: usize,
    refusing: Arc<AtomicUsize>,
    nodelay: bool,
    idle_timeout: Option<Duration>,
    queue_timeout: Option<Duration>,
    /// Connections waiting in the limiter's queue.
    waits: FuturesUnordered<Waiting>,
    backoff: Backoff,
    backoff_sleep: Option<Pin<Box<Sleep>>>,
}

/// A connection waiting in the limiter's queue, with its address and
/// per-address share.
type Waiting = Queued<(TcpStream, SocketAddr, Option<PerIpGuard>)>;

/// A refused connection admitted on a reserved permit.
type Rescued = (TcpStream, SocketAddr, Option<PerIpGuard>, Permit);

impl HttpListener {
    /// Starts a [`ListenerBuilder`].
    pub fn builder(limiter: Limiter) -> ListenerBuilder {
        ListenerBuilder {
            limiter,
            per_ip: None,
            per_ip_max: None,
            retry_after: crate::DEFAULT_RETRY_AFTER,
            refusal_timeout: DEFAULT_REFUSAL_TIMEOUT,
            max_refusals: DEFAULT_MAX_REFUSALS,
            nodelay: true,
            idle_timeout: None,
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
        self.listener.local_addr()
    }

    /// The limiter connections are admitted through.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// The per-address cap, if one is set.
    pub fn per_ip_limit(&self) -> Option<&PerIpLimit> {
        self.per_ip.as_ref()
    }

    /// Refused connections being answered right now.
    pub fn refusing(&self) -> usize {
        self.refusing.load(Ordering::Relaxed)
    }

    /// Connections waiting in the limiter's queue right now (see
    /// [`queue_timeout`](ListenerBuilder::queue_timeout)).
    pub fn waiting(&self) -> usize {
        self.waits.len()
    }

    /// The next admitted connection. Cancel-safe: everything in progress
    /// (waiting connections, a back-off) lives in the listener.
    pub async fn accept(&mut self) -> io::Result<Accepted> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next admitted connection: one that finished waiting,
    /// or a new one. Refusals are answered on tasks of their own.
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Accepted>> {
        let mut budget = BUDGET;
        loop {
            // 1. Connections that finished waiting, or were admitted on
            //    the reserve after all.
            while let Poll::Ready(Some(outcome)) = self.waits.poll_next_unpin(cx) {
                match outcome {
                    ((stream, peer, per_ip), Ok(permit)) => {
                        return Poll::Ready(Ok(self.admit(stream, peer, per_ip, permit)));
                    }
                    // A timeout was counted by `Queued`, the rest by the limiter.
                    ((stream, peer, per_ip), Err(_)) => self.refuse_full(stream, peer, per_ip),
                }
            }
            if let Poll::Ready(Some((stream, peer, per_ip, permit))) = self.rescued.poll_recv(cx) {
                let mut accepted = self.admit(stream, peer, per_ip, permit);
                accepted.reserved = true;
                return Poll::Ready(Ok(accepted));
            }

            // 2. Out of descriptors or memory a moment ago: wait a little.
            if let Some(sleep) = self.backoff_sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.backoff_sleep = None;
            }

            if budget == 0 {
                // Let other tasks run; come back at once.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            budget -= 1;

            // 3. Accept one.
            let (stream, peer) = match self.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(accepted)) => {
                    self.backoff.reset();
                    accepted
                }
                Poll::Ready(Err(e)) => match classify(&e) {
                    AcceptErrorKind::Connection => continue,
                    AcceptErrorKind::Resource => {
                        let delay = self.backoff.next_delay();
                        if delay == admit_tcp::backoff::MAX_BACKOFF || delay.as_millis() == 1 {
                            tracing::warn!(
                                error = %e,
                                backoff_ms = delay.as_millis() as u64,
                                "accept() failed: out of file descriptors or memory; backing off"
                            );
                        }
                        self.backoff_sleep = Some(Box::pin(tokio::time::sleep(delay)));
                        continue;
                    }
                    AcceptErrorKind::Fatal => {
                        // A caller that calls again at once must not spin.
                        let delay = self.backoff.next_delay();
                        self.backoff_sleep = Some(Box::pin(tokio::time::sleep(delay)));
                        return Poll::Ready(Err(e));
                    }
                },
            };

            // 4. The per-address share first: an address over its cap never
            //    takes (or waits for) a permit.
            let per_ip = match &self.per_ip {
                None => None,
                Some(limit) => match limit.try_acquire(peer.ip()) {
                    Ok(guard) => Some(guard),
                    Err(_) => {
                        self.limiter.record_rejection(Rejected::PerIp);
                        self.refuse(stream);
                        continue;
                    }
                },
            };

            // 5. A permit now, a place in the queue, or a refusal.
            match self.queue_timeout {
                None => match self.limiter.try_acquire() {
                    Ok(permit) => return Poll::Ready(Ok(self.admit(stream, peer, per_ip, permit))),
                    // try_acquire counted the refusal by reason.
                    Err(_) => self.refuse_full(stream, peer, per_ip),
                },
                Some(timeout) => {
                    // The fast path takes a free permit without queueing;
                    // otherwise the acquire holds its ticket and waits
                    // beside the accept loop.
                    let mut acquire = self.limiter.acquire();
                    match Pin::new(&mut acquire).poll(cx) {
                        Poll::Ready(Ok(permit)) => {
                            return Poll::Ready(Ok(self.admit(stream, peer, per_ip, permit)))
                        }
                        // Counted by the limiter (queue full, closed).
                        Poll::Ready(Err(_)) => self.refuse_full(stream, peer, per_ip),
                        Poll::Pending => self.waits.push(Queued::with_acquire(
                            &self.limiter,
                            acquire,
                            (stream, peer, per_ip),
                            timeout,
                        )),
                    }
                }
            }
        }
    }

    /// Wraps an admitted connection.
    fn admit(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        per_ip: Option<PerIpGuard>,
        permit: Permit,
    ) -> Accepted {
        if self.nodelay {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "could not set TCP_NODELAY");
            }
        }
        // Waiting does not count as idleness.
        permit.touch();
        let mut io = Admitted::new(stream, permit, peer);
        if let Some(timeout) = self.idle_timeout {
            io = io.with_idle_timeout(timeout);
        }
        Accepted {
            io,
            remote_addr: peer,
            per_ip,
            reserved: false,
        }
    }

    /// Refuses a connection the limiter had no permit for, unless its
    /// request may use the reserve (see [`ListenerBuilder::reserve_for`]).
    fn refuse_full(&self, stream: TcpStream, peer: SocketAddr, per_ip: Option<PerIpGuard>) {
        let Some(ReservedPaths(reserved)) = self.reserved.clone() else {
            return self.refuse(stream);
        };
        let Some(guard) = self.start_refusal() else {
            return;
        };
        let limiter = self.limiter.clone();
        let rescue = self.rescue_tx.clone();
        let response = self.response.clone();
        let timeout = self.refusal_timeout;
        tokio::spawn(async move {
            let _guard = guard;
            let answered = tokio::time::timeout(timeout, async move {
                let path = request_path(&stream).await;
                if path.as_deref().is_some_and(|p| reserved(p)) {
                    if let Ok(permit) = limiter.try_acquire_critical() {
                        // The accept loop admits it (if the listener is
                        // gone, so is the connection).
                        let _ = rescue.send((stream, peer, per_ip, permit));
                        return Ok(());
                    }
                }
                answer_refused(stream, &response).await
            });
            let _ = answered.await;
        });
    }

    /// Answers a refused connection on a task of its own.
    fn refuse(&self, stream: TcpStream) {
        let Some(guard) = self.start_refusal() else {
            return;
        };
        let response = self.response.clone();
        let timeout = self.refusal_timeout;
        tokio::spawn(async move {
            let _guard = guard;
            let _ = tokio::time::timeout(timeout, answer_refused(stream, &response)).await;
        });
    }
}

impl HttpListener {
    /// Counts a refusal in progress, or `None` if there are too many
    /// already (the connection is then closed without an answer).
    fn start_refusal(&self) -> Option<Refusing> {
        // Relaxed: a bound, not a synchronisation point; being off by a few
        // under a race is harmless.
        if self.refusing.load(Ordering::Relaxed) >= self.max_refusals {
            return None;
        }
        self.refusing.fetch_add(1, Ordering::Relaxed);
        Some(Refusing(self.refusing.clone()))
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
        if let Some(end) = buf[..n].windows(2).position(|w| w == b"\r\n") {
            let line = std::str::from_utf8(&buf[..end]).ok()?;
            let mut parts = line.split(' ');
            let (_method, target) = (parts.next()?, parts.next()?);
            let path = target.split('?').next()?;
            return path.starts_with('/').then(|| path.to_owned());
        }
        if n == buf.len() {
            return None;
        }
        // Part of a line: peeked bytes stay readable, so wait a moment for
        // the rest rather than spin (the refusal timeout bounds it all).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Accept for HttpListener {
    fn accept(&mut self) -> impl Future<Output = io::Result<Accepted>> + Send {
        HttpListener::accept(self)
    }

    fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

struct Refusing(Arc<AtomicUsize>);

impl Drop for Refusing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads the request head, answers, closes cleanly.
async fn answer_refused(mut stream: TcpStream, response: &[u8]) -> io::Result<()> {
    let mut buf = [0u8; 2048];
    let mut total = 0;
    // The last three bytes of the previous read, so a "\r\n\r\n" split
    // across reads is still found.
    let mut tail: Vec<u8> = Vec::with_capacity(buf.len() + 3);
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            // The client gave up before finishing its request.
            return Ok(());
        }
        total += n;
        tail.extend_from_slice(&buf[..n]);
        if tail.windows(4).any(|w| w == b"\r\n\r\n") || total >= MAX_REFUSED_HEAD {
            break;
        }
        let keep = tail.len().min(3);
        tail.drain(..tail.len() - keep);
    }
    stream.write_all(response).await?;
    stream.shutdown().await?;
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}
