//! Where connections come from: the [`Accept`] trait, and [`HttpListener`],
//! an admitted accept loop whose refusals speak HTTP.

use crate::busy::busy_response;
use admit::{Limiter, Rejected};
use admit_tcp::backoff::{classify, AcceptErrorKind, Backoff};
use admit_tcp::{AdmitListener, Admitted, PerIpGuard, PerIpLimit};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::time::Sleep;

/// One admitted connection, as a [`Server`](crate::Server) receives it.
#[derive(Debug)]
pub struct Accepted {
    pub(crate) io: Admitted<TcpStream>,
    pub(crate) remote_addr: SocketAddr,
    pub(crate) per_ip: Option<PerIpGuard>,
}

impl Accepted {
    /// An admitted stream from `remote_addr`.
    pub fn new(io: Admitted<TcpStream>, remote_addr: SocketAddr) -> Accepted {
        Accepted {
            io,
            remote_addr,
            per_ip: None,
        }
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
}

impl ListenerBuilder {
    /// The `Retry-After` sent with refusals (default
    /// [`DEFAULT_RETRY_AFTER`](crate::DEFAULT_RETRY_AFTER)).
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
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
    /// other listeners (an admit-tcp listener serving the same users, say).
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
        let per_ip = self.per_ip.or_else(|| {
            self.per_ip_max.map(|max| {
                let most = self.limiter.max_capacity() as usize + self.max_refusals;
                PerIpLimit::for_connections(max, most)
            })
        });
        HttpListener {
            listener,
            limiter: self.limiter,
            per_ip,
            response: busy_response(self.retry_after).into(),
            refusal_timeout: self.refusal_timeout,
            max_refusals: self.max_refusals,
            refusing: Arc::new(AtomicUsize::new(0)),
            nodelay: self.nodelay,
            idle_timeout: self.idle_timeout,
            backoff: Backoff::new(),
            backoff_sleep: None,
        }
    }
}

/// An admitted accept loop for HTTP servers: connections that hold a permit
/// come out of [`accept`](Self::accept) as [`Admitted`] streams; the others
/// are answered `HTTP/1.1 503 Service Unavailable` with `Retry-After` and
/// `Connection: close`.
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
    response: Arc<[u8]>,
    refusal_timeout: Duration,
    max_refusals: usize,
    refusing: Arc<AtomicUsize>,
    nodelay: bool,
    idle_timeout: Option<Duration>,
    backoff: Backoff,
    backoff_sleep: Option<Pin<Box<Sleep>>>,
}

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

    /// The next admitted connection. Cancel-safe.
    pub async fn accept(&mut self) -> io::Result<Accepted> {
        self.accept_with_guard().await
    }

    async fn accept_with_guard(&mut self) -> io::Result<Accepted> {
        loop {
            if let Some(sleep) = self.backoff_sleep.as_mut() {
                sleep.await;
                self.backoff_sleep = None;
            }
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => {
                    self.backoff.reset();
                    accepted
                }
                Err(e) => match classify(&e) {
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
                        let delay = self.backoff.next_delay();
                        self.backoff_sleep = Some(Box::pin(tokio::time::sleep(delay)));
                        return Err(e);
                    }
                },
            };
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
            match self.limiter.try_acquire() {
                Ok(permit) => {
                    if self.nodelay {
                        let _ = stream.set_nodelay(true);
                    }
                    let mut io = Admitted::new(stream, permit, peer);
                    if let Some(timeout) = self.idle_timeout {
                        io = io.with_idle_timeout(timeout);
                    }
                    return Ok(Accepted {
                        io,
                        remote_addr: peer,
                        per_ip,
                    });
                }
                // try_acquire counted the refusal by reason.
                Err(_) => self.refuse(stream),
            }
        }
    }

    /// Answers a refused connection on a task of its own.
    fn refuse(&self, stream: TcpStream) {
        // Relaxed: a bound, not a synchronisation point; being off by a few
        // under a race is harmless.
        if self.refusing.load(Ordering::Relaxed) >= self.max_refusals {
            drop(stream);
            return;
        }
        self.refusing.fetch_add(1, Ordering::Relaxed);
        let guard = Refusing(self.refusing.clone());
        let response = self.response.clone();
        let timeout = self.refusal_timeout;
        tokio::spawn(async move {
            let _guard = guard;
            let _ = tokio::time::timeout(timeout, answer_refused(stream, &response)).await;
        });
    }
}

impl Accept for HttpListener {
    fn accept(&mut self) -> impl Future<Output = io::Result<Accepted>> + Send {
        self.accept_with_guard()
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
