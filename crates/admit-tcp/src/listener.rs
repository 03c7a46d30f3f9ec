//! [`AdmitListener`]: the admitted accept loop.
//!
//! One call, [`AdmitListener::poll_accept`], drives everything: connections
//! that finished waiting, a connection parked by [`Policy::Pause`], the
//! accept back-off, and the accept itself. All of that state lives in the
//! listener, not in the `accept()` future, so `accept()` is cancel-safe:
//! dropping it (in a `select!` with a shutdown signal, say) loses nothing.
//!
//! Connections are accepted with a plain non-blocking `accept4` on the
//! listening socket, whose readiness comes from tokio (`AsyncFd`), and are
//! registered with tokio's reactor only once admitted: a refused connection
//! costs an accept, the refusal and a close, and never an `epoll_ctl`.

use crate::admitted::{Admitted, ReleaseSignal};
use crate::backoff::{classify, AcceptErrorKind, Backoff, WarnLimiter};
use crate::per_ip::{PerIpGuard, PerIpLimit};
use crate::policy::{Policy, DEFAULT_BUSY};
use crate::queued::{QueueDeadline, Queued};
use crate::refuse::{
    Answer, Answering, Readmitted, Refused, DEFAULT_MAX_REFUSALS, DEFAULT_REFUSAL_TIMEOUT,
};
use admit::{Acquire, Limiter, Permit, Rejected};
use futures_core::Stream;
use futures_util::stream::FuturesUnordered;
use futures_util::task::AtomicWaker;
use futures_util::StreamExt;
use socket2::{SockRef, Socket};
use std::borrow::Cow;
use std::future::Future;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::time::Sleep;

/// Connections refused (or errors skipped) in one poll before the accept
/// loop yields to the runtime, so a flood cannot starve other tasks.
const BUDGET: usize = 64;
/// Under [`Policy::Pause`] with a limiter that has no wait queue, how often
/// the listener looks for a permit released outside this listener.
const PAUSE_RECHECK: Duration = Duration::from_millis(10);
/// At most one accept-error warning per this period.
const WARN_PERIOD: Duration = Duration::from_secs(1);

/// TCP keepalive settings for admitted connections, so that a peer that
/// vanished without a FIN is noticed and its slot freed.
///
/// ```
/// use admit_tcp::Keepalive;
/// use std::time::Duration;
/// let k = Keepalive { idle: Duration::from_secs(30), ..Keepalive::default() };
/// assert_eq!(k.interval, Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before the first probe (default 60 s).
    pub idle: Duration,
    /// Time between probes (default 10 s).
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (default 5).
    pub retries: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            retries: 5,
        }
    }
}

/// State shared between a listener, its connections and its [`ListenerStats`].
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Bumped each time one of this listener's connections is dropped.
    pub(crate) releases: AtomicU64,
    /// The listener's task, while it waits for a release.
    pub(crate) release_waker: AtomicWaker,
    accept_errors: AtomicU64,
    skipped_errors: AtomicU64,
    fatal_errors: AtomicU64,
    admitted: AtomicU64,
    refused: AtomicU64,
    waiting: AtomicU64,
    paused: AtomicBool,
    /// Refusals being answered on tasks of their own right now.
    pub(crate) answering: AtomicUsize,
}

/// Counters of one listener. Cheap to clone; reads are relaxed loads.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let listener = admit_tcp::AdmitListener::bind("127.0.0.1:0", admit::Limiter::new(8)).await?;
/// let stats = listener.stats();
/// assert_eq!(stats.accept_errors(), 0);
/// assert_eq!(stats.admitted(), 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ListenerStats {
    shared: Arc<Shared>,
}

impl ListenerStats {
    /// `accept()` failures for want of a resource (`EMFILE`, `ENFILE`,
    /// `ENOBUFS`, `ENOMEM`); each one started or extended a back-off.
    pub fn accept_errors(&self) -> u64 {
        self.shared.accept_errors.load(Ordering::Relaxed)
    }

    /// `accept()` failures that concerned only one connection and were
    /// skipped (`ECONNABORTED`, `ECONNRESET`, `EPERM`, `EINTR`, …).
    pub fn skipped_errors(&self) -> u64 {
        self.shared.skipped_errors.load(Ordering::Relaxed)
    }

    /// `accept()` failures returned to the caller (the listener itself is broken).
    pub fn fatal_errors(&self) -> u64 {
        self.shared.fatal_errors.load(Ordering::Relaxed)
    }

    /// Connections this listener admitted.
    pub fn admitted(&self) -> u64 {
        self.shared.admitted.load(Ordering::Relaxed)
    }

    /// Connections this listener accepted and then refused (any reason; the
    /// limiter's health has them by reason).
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Connections held by [`Policy::Wait`] right now.
    pub fn waiting(&self) -> u64 {
        self.shared.waiting.load(Ordering::Relaxed)
    }

    /// Whether [`Policy::Pause`] has stopped accepting for want of a permit
    /// (one connection is accepted and parked; the rest wait in the backlog).
    pub fn paused(&self) -> bool {
        self.shared.paused.load(Ordering::Relaxed)
    }

    /// Refused connections being answered right now (see
    /// [`Builder::answer_refusals`]).
    pub fn answering(&self) -> usize {
        self.shared.answering.load(Ordering::Relaxed)
    }
}

/// Builds an [`AdmitListener`]. Start with [`AdmitListener::builder`].
///
/// ```
/// use admit_tcp::{AdmitListener, Policy};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let limiter = admit::Limiter::builder().capacity(1000).queue_limit(64).build().unwrap();
/// let listener = AdmitListener::builder(limiter)
///     .policy(Policy::Wait(Duration::from_millis(200)))
///     .busy_message(&b"BUSY retry-after=2\n"[..])
///     .per_ip(32)
///     .idle_timeout(Duration::from_secs(300))
///     .bind("127.0.0.1:0")
///     .await?;
/// assert!(listener.per_ip_limit().is_some());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    limiter: Limiter,
    policy: Policy,
    busy: Cow<'static, [u8]>,
    per_ip: Option<PerIpChoice>,
    nodelay: bool,
    keepalive: Option<Keepalive>,
    idle_timeout: Option<Duration>,
    goodbye_window: Option<Duration>,
    reset_rejected: bool,
    answer: Option<Answering>,
    refusal_timeout: Duration,
    max_refusals: usize,
}

#[derive(Debug, Clone)]
enum PerIpChoice {
    Cap(u32),
    Shared(PerIpLimit),
}

impl Builder {
    /// What to do when the limiter is full (default [`Policy::busy_default`]).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// What [`Policy::Wait`] sends when it gives up, and what refusals for
    /// a per-address cap send under `Wait` (default [`DEFAULT_BUSY`]).
    /// [`Policy::Busy`] sends its own message.
    pub fn busy_message(mut self, message: impl Into<Cow<'static, [u8]>>) -> Self {
        self.busy = message.into();
        self
    }

    /// Caps connections per peer address (IPv6: per /64) at `max`, with a
    /// table sized by [`PerIpLimit::for_limiter`] (the limiter's
    /// `max_capacity`, its queue, and the refusals being answered).
    pub fn per_ip(mut self, max: u32) -> Self {
        self.per_ip = Some(PerIpChoice::Cap(max));
        self
    }

    /// Caps connections per peer address with a table that may be shared
    /// with other listeners.
    pub fn per_ip_limit(mut self, limit: PerIpLimit) -> Self {
        self.per_ip = Some(PerIpChoice::Shared(limit));
        self
    }

    /// Sets `TCP_NODELAY` on admitted connections (default true).
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }

    /// TCP keepalive on admitted connections (default
    /// `Some(Keepalive::default())`; `None` leaves the system default).
    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Ends admitted connections that move no bytes for this long (see
    /// [`Admitted::with_idle_timeout`]). Default: none (the watchdog's
    /// `max_idle` still applies).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Gives admitted connections a goodbye window (see
    /// [`Admitted::with_goodbye_window`]): when one is ended from outside,
    /// its writes keep working for `window` while its reads wait, so the
    /// server can tell the client why before the socket closes. Default:
    /// none (the stream ends at once).
    pub fn goodbye_window(mut self, window: Duration) -> Self {
        self.goodbye_window = Some(window);
        self
    }

    /// Closes connections refused without a message ([`Policy::Reject`],
    /// per-address refusals under `Reject` and `Pause`) with a RST
    /// (`SO_LINGER` 0) instead of a FIN, so no `TIME_WAIT` state is left
    /// behind (default false).
    pub fn reset_rejected(mut self, on: bool) -> Self {
        self.reset_rejected = on;
        self
    }

    /// Answers refused connections with `answer`, each on a task of its
    /// own, instead of the policy's message: connections over their
    /// address's cap, connections the limiter had no permit for, and (under
    /// [`Policy::Wait`]) those whose wait ran out. Use it for protocols in
    /// which the server must hear the client before it answers (admit-hyper
    /// answers HTTP this way), or to admit some refused connections after
    /// all ([`Refused::admit`]). Answers are bounded by
    /// [`refusal_timeout`](Self::refusal_timeout) and
    /// [`max_refusals`](Self::max_refusals).
    ///
    /// Unlike the policy's message, an answer costs the refused socket a
    /// registration with the reactor and a task.
    pub fn answer_refusals(mut self, answer: impl Answer) -> Self {
        self.answer = Some(Answering {
            answer: Arc::new(answer),
            timeout: self.refusal_timeout,
            max: self.max_refusals,
        });
        self
    }

    /// How long one answer to a refused connection may take, all told
    /// (default [`DEFAULT_REFUSAL_TIMEOUT`]); then its task is dropped and
    /// the connection closed.
    pub fn refusal_timeout(mut self, timeout: Duration) -> Self {
        self.refusal_timeout = timeout;
        self
    }

    /// How many refused connections may be answered at once (default
    /// [`DEFAULT_MAX_REFUSALS`]); beyond that, refused connections are
    /// closed unanswered, so a flood cannot grow memory.
    pub fn max_refusals(mut self, max: usize) -> Self {
        self.max_refusals = max;
        self
    }

    /// Binds a new listener to `addr`.
    pub async fn bind(self, addr: impl ToSocketAddrs) -> io::Result<AdmitListener> {
        self.from_tokio(TcpListener::bind(addr).await?)
    }

    /// Wraps a tokio listener. Must be called inside a tokio runtime.
    pub fn from_tokio(self, listener: TcpListener) -> io::Result<AdmitListener> {
        // Back to a plain non-blocking socket, watched through AsyncFd.
        self.from_std(listener.into_std()?)
    }

    /// Wraps a std listener (switching it to non-blocking mode). Must be
    /// called inside a tokio runtime.
    pub fn from_std(self, listener: std::net::TcpListener) -> io::Result<AdmitListener> {
        listener.set_nonblocking(true)?;
        // Where accepted sockets inherit them, the socket options are set
        // once, on the listener, rather than with four or five system calls
        // on every connection.
        let options_per_connection = !cfg!(admit_inherited_sockopts);
        if !options_per_connection {
            let at = listener.local_addr()?;
            set_options(&SockRef::from(&listener), at, self.nodelay, self.keepalive);
        }
        // `AsyncFd::new` is deprecated in favour of an `unsafe fn register`
        // whose contract is that the descriptor stays open and unchanged while
        // registered. It does here: the listener is owned by the `AsyncFd`
        // and only ever borrowed from it, so the safe constructor is sound.
        #[allow(deprecated)]
        let listener = AsyncFd::new(listener)?;
        let answer = self.answer.map(|answer| Answering {
            timeout: self.refusal_timeout,
            max: self.max_refusals,
            ..answer
        });
        let answering = answer.as_ref().map_or(0, |a| a.max);
        let per_ip = self.per_ip.map(|choice| match choice {
            PerIpChoice::Shared(limit) => limit,
            PerIpChoice::Cap(max) => PerIpLimit::for_limiter_with(max, &self.limiter, answering),
        });
        let (readmit_tx, readmit_rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(AdmitListener {
            listener,
            limiter: self.limiter,
            policy: self.policy,
            busy: self.busy,
            per_ip,
            nodelay: self.nodelay,
            keepalive: self.keepalive,
            options_per_connection,
            idle_timeout: self.idle_timeout,
            goodbye_window: self.goodbye_window,
            reset_rejected: self.reset_rejected,
            answer,
            readmit_tx,
            readmit_rx,
            shared: Arc::new(Shared::default()),
            backoff: Backoff::new(),
            backoff_sleep: None,
            warn: WarnLimiter::new(WARN_PERIOD),
            waits: FuturesUnordered::new(),
            pause: Pause::default(),
        })
    }
}

/// An accepted connection not yet admitted: a plain non-blocking socket,
/// not yet registered with the reactor.
struct Accepted {
    socket: Socket,
    peer: SocketAddr,
    per_ip: Option<PerIpGuard>,
}

/// [`Policy::Pause`]: the one connection accepted ahead, and how it waits.
#[derive(Default)]
struct Pause {
    parked: Option<Accepted>,
    acquire: Option<Acquire>,
    /// The queue refused this connection: fall back to watching releases.
    no_queue: bool,
    recheck: Option<Pin<Box<Sleep>>>,
}

/// A TCP listener that yields only connections its [`Limiter`] admitted.
///
/// Each accepted connection is first checked against the per-address cap
/// (if any), then given a permit; one that gets none is handled by the
/// listener's [`Policy`]. Admitted connections come out as
/// [`Admitted<TcpStream>`], which holds the permit until it is dropped.
///
/// `accept()` errors never end the loop: out of descriptors or memory, it
/// backs off (1 ms doubling to 1 s, or until one of its own connections
/// closes) with a rate-limited warning; a failure of one connection is
/// skipped. Only an error of the listener itself is returned.
///
/// ```no_run
/// use admit_tcp::AdmitListener;
/// use tokio::io::AsyncWriteExt;
///
/// # #[tokio::main]
/// # async fn main() -> std::io::Result<()> {
/// let limiter = admit::Limiter::new(10_000);
/// let mut listener = AdmitListener::bind("127.0.0.1:7070", limiter).await?;
/// loop {
///     let (mut conn, _peer) = listener.accept().await?;
///     tokio::spawn(async move {
///         let _ = conn.write_all(b"HELLO chat 1\n").await;
///         // ... serve; the permit is released when `conn` drops.
///     });
/// }
/// # }
/// ```
///
/// It is also a [`Stream`] of the same items:
///
/// ```
/// use admit_tcp::AdmitListener;
/// use futures_util::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let mut listener = AdmitListener::bind("127.0.0.1:0", admit::Limiter::new(4)).await?;
/// let addr = listener.local_addr()?;
/// let _client = tokio::net::TcpStream::connect(addr).await?;
/// let (conn, peer) = listener.next().await.unwrap()?;
/// assert_eq!(conn.peer_addr(), peer);
/// assert_eq!(listener.limiter().in_use(), 1);
/// # Ok(()) }
/// ```
pub struct AdmitListener {
    listener: AsyncFd<std::net::TcpListener>,
    limiter: Limiter,
    policy: Policy,
    busy: Cow<'static, [u8]>,
    per_ip: Option<PerIpLimit>,
    nodelay: bool,
    keepalive: Option<Keepalive>,
    /// Whether `nodelay` and `keepalive` are set on each accepted socket
    /// (false where sockets inherit them from the listener).
    options_per_connection: bool,
    idle_timeout: Option<Duration>,
    goodbye_window: Option<Duration>,
    reset_rejected: bool,
    answer: Option<Answering>,
    /// Refused connections an answer admitted after all, on their way back.
    readmit_tx: UnboundedSender<Readmitted>,
    readmit_rx: UnboundedReceiver<Readmitted>,
    shared: Arc<Shared>,
    backoff: Backoff,
    /// The back-off timer and the release count when it was armed.
    backoff_sleep: Option<(Pin<Box<Sleep>>, u64)>,
    warn: WarnLimiter,
    waits: FuturesUnordered<Queued<Accepted>>,
    pause: Pause,
}

impl std::fmt::Debug for AdmitListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmitListener")
            .field("local_addr", &self.local_addr().ok())
            .field("limiter", &self.limiter)
            .field("policy", &self.policy)
            .field("per_ip", &self.per_ip)
            .field("waiting", &self.waits.len())
            .field("paused", &self.pause.parked.is_some())
            .field("backing_off", &self.backoff_sleep.is_some())
            .finish()
    }
}

impl AdmitListener {
    /// Starts a [`Builder`] for a listener admitting through `limiter`.
    pub fn builder(limiter: Limiter) -> Builder {
        Builder {
            limiter,
            policy: Policy::default(),
            busy: Cow::Borrowed(DEFAULT_BUSY),
            per_ip: None,
            nodelay: true,
            keepalive: Some(Keepalive::default()),
            idle_timeout: None,
            goodbye_window: None,
            reset_rejected: false,
            answer: None,
            refusal_timeout: DEFAULT_REFUSAL_TIMEOUT,
            max_refusals: DEFAULT_MAX_REFUSALS,
            // Keep in step with the builder's documented defaults.
        }
    }

    /// Binds to `addr` with the default settings ([`Policy::busy_default`],
    /// nodelay, keepalive, no per-address cap).
    pub async fn bind(addr: impl ToSocketAddrs, limiter: Limiter) -> io::Result<AdmitListener> {
        AdmitListener::builder(limiter).bind(addr).await
    }

    /// Wraps a tokio listener with the default settings (inside a tokio runtime).
    pub fn from_tokio(listener: TcpListener, limiter: Limiter) -> io::Result<AdmitListener> {
        AdmitListener::builder(limiter).from_tokio(listener)
    }

    /// Wraps a std listener with the default settings (inside a tokio runtime).
    pub fn from_std(
        listener: std::net::TcpListener,
        limiter: Limiter,
    ) -> io::Result<AdmitListener> {
        AdmitListener::builder(limiter).from_std(listener)
    }

    /// The next admitted connection and its peer's address.
    ///
    /// Cancel-safe: all progress is kept in the listener.
    pub async fn accept(&mut self) -> io::Result<(Admitted<TcpStream>, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// The local address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.get_ref().local_addr()
    }

    /// The limiter that admits connections.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// The per-address cap, if one is set.
    pub fn per_ip_limit(&self) -> Option<&PerIpLimit> {
        self.per_ip.as_ref()
    }

    /// The policy for a full limiter.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// This listener's counters.
    pub fn stats(&self) -> ListenerStats {
        ListenerStats {
            shared: self.shared.clone(),
        }
    }

    /// `accept()` failures for want of descriptors or memory so far (see
    /// [`ListenerStats::accept_errors`]).
    pub fn accept_errors(&self) -> u64 {
        self.shared.accept_errors.load(Ordering::Relaxed)
    }

    /// Whether a back-off after an accept error is in progress.
    pub fn is_backing_off(&self) -> bool {
        self.backoff_sleep.is_some()
    }

    /// Whether [`Policy::Pause`] has stopped accepting for want of a permit.
    pub fn is_paused(&self) -> bool {
        self.pause.parked.is_some()
    }

    /// The listening socket (non-blocking; its readiness is watched by
    /// the tokio reactor).
    pub fn get_ref(&self) -> &std::net::TcpListener {
        self.listener.get_ref()
    }

    /// Polls for the next admitted connection; see [`accept`](Self::accept).
    pub fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Admitted<TcpStream>, SocketAddr)>> {
        let mut budget = BUDGET;
        loop {
            // 1. Connections that finished waiting under Policy::Wait.
            while let Poll::Ready(Some(outcome)) = self.waits.poll_next_unpin(cx) {
                self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
                match outcome {
                    (conn, Ok(permit)) => {
                        if let Some(admitted) = self.admit(conn, permit) {
                            return Poll::Ready(Ok(admitted));
                        }
                    }
                    // Counted by the limiter, a timeout too.
                    (conn, Err(why)) => self.refuse(conn, why, Some(&self.busy)),
                }
            }
            // Refused connections that their answer admitted after all
            // (only answers send them: without one, the channel is not
            // polled, so it costs the accept loop nothing).
            if self.answer.is_some() {
                if let Poll::Ready(Some(back)) = self.readmit_rx.poll_recv(cx) {
                    let Readmitted {
                        stream,
                        peer,
                        per_ip,
                        permit,
                    } = back;
                    if self.options_per_connection {
                        set_options(&SockRef::from(&stream), peer, self.nodelay, self.keepalive);
                    }
                    return Poll::Ready(Ok(self.wrap(stream, peer, per_ip, permit, true)));
                }
            }

            // 2. Policy::Pause: nothing more is accepted until the parked
            //    connection has a permit.
            if self.pause.parked.is_some() {
                match self.poll_pause_permit(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(permit) => {
                        let conn = self.pause.parked.take().expect("parked connection");
                        self.pause = Pause::default();
                        self.shared.paused.store(false, Ordering::Relaxed);
                        match permit {
                            Some(permit) => {
                                if let Some(admitted) = self.admit(conn, permit) {
                                    return Poll::Ready(Ok(admitted));
                                }
                            }
                            None => self.refuse(conn, Rejected::Closed, None),
                        }
                    }
                }
            }

            // 3. Back-off after a resource error. A connection of ours
            //    closing frees a descriptor, so it ends the wait early.
            if let Some((sleep, epoch)) = self.backoff_sleep.as_mut() {
                // Acquire: pairs with the Release bump in ReleaseSignal.
                let released = || self.shared.releases.load(Ordering::Acquire) != *epoch;
                if !released() {
                    self.shared.release_waker.register(cx.waker());
                    if !released() && sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                self.backoff_sleep = None;
            }

            if budget == 0 {
                // Let other tasks run; come back at once.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            budget -= 1;

            // 4. Accept one.
            let accepted = {
                let mut ready = match self.listener.poll_read_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(ready)) => ready,
                    Poll::Ready(Err(e)) => {
                        // The reactor is gone: nothing can be accepted.
                        self.shared.fatal_errors.fetch_add(1, Ordering::Relaxed);
                        // A caller that calls again at once must not spin.
                        self.arm_backoff();
                        return Poll::Ready(Err(e));
                    }
                };
                match accept_nonblocking(ready.get_inner()) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Drained: wait for the next readiness event.
                        ready.clear_ready();
                        continue;
                    }
                    other => other,
                }
            };
            let (socket, peer) = match accepted {
                Ok(accepted) => {
                    self.backoff.reset();
                    accepted
                }
                Err(e) => match classify(&e) {
                    AcceptErrorKind::Connection => {
                        self.shared.skipped_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "accept() failed for one connection; skipped");
                        continue;
                    }
                    AcceptErrorKind::Resource => {
                        self.shared.accept_errors.fetch_add(1, Ordering::Relaxed);
                        let delay = self.arm_backoff();
                        if let Some(suppressed) = self.warn.allow(Instant::now()) {
                            tracing::warn!(
                                error = %e,
                                backoff_ms = delay.as_millis() as u64,
                                accept_errors = self.accept_errors(),
                                suppressed,
                                "accept() failed: out of file descriptors or memory; \
                                 backing off (raise the open-file limit or lower the limiter's capacity)"
                            );
                        }
                        continue;
                    }
                    AcceptErrorKind::Fatal => {
                        self.shared.fatal_errors.fetch_add(1, Ordering::Relaxed);
                        // A caller that calls again at once must not spin.
                        self.arm_backoff();
                        tracing::error!(error = %e, "accept() failed: the listener itself is broken");
                        return Poll::Ready(Err(e));
                    }
                },
            };

            // 5. The per-address cap comes first, so an address over its cap
            //    never takes (or waits for) a permit.
            let per_ip = match &self.per_ip {
                None => None,
                Some(limit) => match limit.try_acquire(peer.ip()) {
                    Ok(guard) => Some(guard),
                    Err(_) => {
                        self.limiter.record_rejection(Rejected::PerIp);
                        let conn = Accepted {
                            socket,
                            peer,
                            per_ip: None,
                        };
                        self.refuse(conn, Rejected::PerIp, self.refusal_message());
                        continue;
                    }
                },
            };
            let conn = Accepted {
                socket,
                peer,
                per_ip,
            };

            // 6. A permit, or the policy.
            match &self.policy {
                Policy::Reject | Policy::Busy(_) => match self.limiter.try_acquire() {
                    // try_acquire counted any refusal by reason.
                    Ok(permit) => {
                        if let Some(admitted) = self.admit(conn, permit) {
                            return Poll::Ready(Ok(admitted));
                        }
                    }
                    Err(why) => self.refuse(conn, why, self.refusal_message()),
                },
                Policy::Wait(timeout) => {
                    // The fast path takes a free permit without queueing;
                    // otherwise the acquire has its ticket and waits beside
                    // the accept loop, not in it, until the limiter itself
                    // times it out.
                    let mut acquire = self.limiter.acquire_until(QueueDeadline::after(*timeout));
                    match Pin::new(&mut acquire).poll(cx) {
                        Poll::Ready(Ok(permit)) => {
                            if let Some(admitted) = self.admit(conn, permit) {
                                return Poll::Ready(Ok(admitted));
                            }
                        }
                        Poll::Ready(Err(why)) => self.refuse(conn, why, Some(&self.busy)),
                        Poll::Pending => {
                            self.shared.waiting.fetch_add(1, Ordering::Relaxed);
                            self.waits.push(Queued::new(acquire, conn));
                        }
                    }
                }
                Policy::Pause => {
                    self.shared.paused.store(true, Ordering::Relaxed);
                    self.pause.parked = Some(conn);
                }
            }
        }
    }

    /// Waits for a permit for the parked connection. `Ready(None)`: the
    /// limiter is closed.
    fn poll_pause_permit(&mut self, cx: &mut Context<'_>) -> Poll<Option<Permit>> {
        loop {
            if let Some(acquire) = self.pause.acquire.as_mut() {
                match Pin::new(acquire).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(permit)) => return Poll::Ready(Some(permit)),
                    Poll::Ready(Err(Rejected::Closed)) => return Poll::Ready(None),
                    Poll::Ready(Err(_)) => {
                        // The queue is full of other waiters: watch releases.
                        self.pause.acquire = None;
                        self.pause.no_queue = true;
                    }
                }
            }
            if self.limiter.is_closed() {
                self.limiter.record_rejection(Rejected::Closed);
                return Poll::Ready(None);
            }
            if !self.pause.no_queue && self.limiter.queue_limit() > 0 {
                // The limiter's FIFO queue wakes us on the next release.
                self.pause.acquire = Some(self.limiter.acquire());
                continue;
            }
            // No queue: take a permit only when one looks free, so that
            // waiting is not counted as a stream of rejections.
            if self.limiter.available() > 0 {
                if let Ok(permit) = self.limiter.try_acquire() {
                    return Poll::Ready(Some(permit));
                }
            }
            // Our own connections wake us when they close; releases by other
            // users of the limiter are seen on the next recheck.
            self.shared.release_waker.register(cx.waker());
            if self.limiter.available() > 0 {
                continue;
            }
            let recheck = self
                .pause
                .recheck
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(PAUSE_RECHECK)));
            match recheck.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    recheck
                        .as_mut()
                        .reset(tokio::time::Instant::now() + PAUSE_RECHECK);
                }
            }
        }
    }

    fn arm_backoff(&mut self) -> Duration {
        let delay = self.backoff.next_delay();
        let epoch = self.shared.releases.load(Ordering::Acquire);
        match self.backoff_sleep.as_mut() {
            Some((sleep, e)) => {
                sleep.as_mut().reset(tokio::time::Instant::now() + delay);
                *e = epoch;
            }
            None => self.backoff_sleep = Some((Box::pin(tokio::time::sleep(delay)), epoch)),
        }
        delay
    }

    /// Sets the socket options, registers the socket with the reactor and
    /// wraps it. `None` if registering failed (the connection is dropped and
    /// counted as skipped; its permit goes back).
    fn admit(
        &mut self,
        conn: Accepted,
        permit: Permit,
    ) -> Option<(Admitted<TcpStream>, SocketAddr)> {
        let Accepted {
            socket,
            peer,
            per_ip,
        } = conn;
        if self.options_per_connection {
            set_options(&SockRef::from(&socket), peer, self.nodelay, self.keepalive);
        }
        let stream = match TcpStream::from_std(socket.into()) {
            Ok(stream) => stream,
            Err(e) => {
                self.shared.skipped_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, error = %e, "could not register an admitted connection; dropped");
                return None;
            }
        };
        Some(self.wrap(stream, peer, per_ip, permit, false))
    }

    /// Wraps a registered, admitted stream with its permit and guards.
    fn wrap(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        per_ip: Option<PerIpGuard>,
        permit: Permit,
        reserved: bool,
    ) -> (Admitted<TcpStream>, SocketAddr) {
        // Waiting (in the queue, parked, or answered) is not idleness.
        permit.touch();
        self.shared.admitted.fetch_add(1, Ordering::Relaxed);
        let mut conn = Admitted::new(stream, permit, peer).with_guards(
            per_ip,
            Some(ReleaseSignal {
                shared: self.shared.clone(),
            }),
            reserved,
        );
        if let Some(timeout) = self.idle_timeout {
            conn = conn.with_idle_timeout(timeout);
        }
        if let Some(window) = self.goodbye_window {
            conn = conn.with_goodbye_window(window);
        }
        (conn, peer)
    }

    /// What a refused connection is sent before the close, by policy:
    /// `Busy` its message, `Wait` the busy message, the others nothing.
    fn refusal_message(&self) -> Option<&[u8]> {
        match &self.policy {
            Policy::Busy(message) => Some(message),
            Policy::Wait(_) => Some(&self.busy),
            _ => None,
        }
    }

    /// Refuses a connection (already counted by reason in the limiter's
    /// health). With an answer set, hands it to the answer on a task of its
    /// own; otherwise, or when too many answers are in progress, closes it
    /// without waiting and without registering it with the reactor: with
    /// `message`, written with one non-blocking send, then a FIN; without, a
    /// FIN (or a RST when `reset_rejected` is set).
    fn refuse(&self, conn: Accepted, reason: Rejected, message: Option<&[u8]>) {
        self.shared.refused.fetch_add(1, Ordering::Relaxed);
        let Accepted {
            socket,
            peer,
            per_ip,
        } = conn;
        let (socket, message) = match &self.answer {
            None => (socket, message),
            Some(answer) => match self.answer_refusal(answer, socket, peer, reason, per_ip) {
                None => return,
                // Too many answers in progress: close unanswered.
                Some(socket) => (socket, None),
            },
        };
        let sock = &socket;
        match message {
            Some(message) => {
                // A direct send: the socket is non-blocking, and a fresh
                // socket's empty buffer takes a short message whole. A
                // peer that already reset gets EPIPE, without a SIGPIPE.
                let _ = sock.send_with_flags(message, SEND_FLAGS);
                let _ = sock.shutdown(Shutdown::Write);
                // Discard what the client already sent, so the close is a
                // FIN after the message rather than a RST that could
                // destroy it.
                let mut buf = [0u8; 1024];
                for _ in 0..4 {
                    match { sock }.read(&mut buf) {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
            }
            None => {
                if self.reset_rejected {
                    let _ = sock.set_linger(Some(Duration::ZERO));
                }
            }
        }
        drop(socket);
    }
}

impl AdmitListener {
    /// Starts `answer` on the refused connection. Gives the socket back if
    /// the answers in progress are at their bound; `None` when the
    /// connection was handed over (or could not be registered, and so is
    /// closed).
    fn answer_refusal(
        &self,
        answer: &Answering,
        socket: Socket,
        peer: SocketAddr,
        reason: Rejected,
        per_ip: Option<PerIpGuard>,
    ) -> Option<Socket> {
        // Relaxed: a bound, not a synchronisation point; being off by a few
        // under a race is harmless.
        if self.shared.answering.load(Ordering::Relaxed) >= answer.max {
            return Some(socket);
        }
        let stream = match TcpStream::from_std(socket.into()) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "could not register a refused connection; closed");
                return None;
            }
        };
        let refused = Refused {
            stream,
            peer,
            reason,
            per_ip,
            limiter: self.limiter.clone(),
            readmit: self.readmit_tx.clone(),
        };
        // Only the accept loop starts answers, so the check above holds.
        answer.spawn(&self.shared, refused);
        None
    }
}

/// Sets `TCP_NODELAY` and keepalive on an admitted connection (or on the
/// listener its connections inherit them from); failures are logged and
/// otherwise ignored.
fn set_options(sock: &SockRef<'_>, addr: SocketAddr, nodelay: bool, keepalive: Option<Keepalive>) {
    if nodelay {
        if let Err(e) = sock.set_nodelay(true) {
            tracing::debug!(%addr, error = %e, "could not set TCP_NODELAY");
        }
    }
    if let Some(k) = keepalive {
        if let Err(e) = sock.set_tcp_keepalive(&tcp_keepalive(k)) {
            tracing::debug!(%addr, error = %e, "could not set TCP keepalive");
        }
    }
}

/// Flags for the busy message's `send`: no SIGPIPE where the platform
/// supports asking.
#[cfg(admit_accept4)]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(admit_accept4))]
const SEND_FLAGS: libc::c_int = 0;

/// One non-blocking accept: the new socket is non-blocking and close-on-exec
/// from the start (`accept4`), so no further call is needed before use.
fn accept_nonblocking(listener: &std::net::TcpListener) -> io::Result<(Socket, SocketAddr)> {
    let listener = SockRef::from(listener);
    #[cfg(admit_accept4)]
    let (socket, addr) = listener.accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    #[cfg(not(admit_accept4))]
    let (socket, addr) = {
        let (socket, addr) = listener.accept()?;
        socket.set_nonblocking(true)?;
        (socket, addr)
    };
    let peer = addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "accept() returned a peer address that is not IPv4 or IPv6",
        )
    })?;
    Ok((socket, peer))
}

fn tcp_keepalive(k: Keepalive) -> socket2::TcpKeepalive {
    let ka = socket2::TcpKeepalive::new().with_time(k.idle);
    #[cfg(admit_keepalive_interval)]
    let ka = ka.with_interval(k.interval);
    #[cfg(admit_keepalive_retries)]
    let ka = ka.with_retries(k.retries);
    ka
}

/// Never ends: yields admitted connections, and `Err` only for errors of the
/// listener itself (see [`AdmitListener::poll_accept`]).
impl Stream for AdmitListener {
    type Item = io::Result<(Admitted<TcpStream>, SocketAddr)>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_accept(cx).map(Some)
    }
}
