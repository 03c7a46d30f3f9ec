//! [`Server`]: the accept loop, the per-connection tasks and the drain.

use crate::conn::{self, Phase, Shared};
use crate::listener::Accept;
use crate::registry::Registry;
use crate::requests::{HyperService, Requests};
use crate::BoxError;
use admit::LeaseId;
use admit_tcp::Ending;
use admit_tower::HttpAdmitLayer;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The default header timeout: a connection must deliver each request's
/// headers (the first one counted from the moment it was accepted) within
/// this long.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The default drain deadline: after shutdown is asked for, connections
/// still open after this long are closed.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The default bound on concurrent HTTP/2 streams (requests) per
/// connection, sent to clients in the connection's `SETTINGS` frame. hyper's
/// own default is 200, so one connection slot could carry 200 requests at
/// once; clients queue streams beyond the bound on their side.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 8;

/// How long a forced close waits for the last connections to notice.
const FORCE_GRACE: Duration = Duration::from_secs(1);

/// What the server knows about a connection: given to a per-connection
/// service factory ([`Server::serve_with`]), and put into the extensions of
/// every request the connection carries, so handlers can take it (axum:
/// `Extension<ConnInfo>`).
///
/// A WebSocket handler takes [`ending`](Self::ending) into the upgraded
/// connection and selects on it, to send a close frame when the lease is
/// revoked (see [`Server::goodbye_window`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnInfo {
    /// The peer's address.
    pub remote_addr: SocketAddr,
    /// The address the listener accepted on.
    pub local_addr: SocketAddr,
    /// The connection's lease, for [`Limiter::revoke`](admit::Limiter::revoke).
    pub lease: LeaseId,
    /// Fires when the connection is ended from outside: its lease revoked
    /// (by the watchdog's `max_idle`, an operator, or the drain deadline) or
    /// its idle timeout passed. The stream notices when it is polled, so
    /// the signal reaches a handler that is reading or writing.
    pub ending: Ending,
    /// Whether the connection holds a reserved permit (see
    /// [`Builder::reserve_for`](crate::Builder::reserve_for)):
    /// it serves this one request and closes.
    pub reserved: bool,
}

/// Serves HTTP on connections an [`Accept`] source admitted: an
/// [`HttpListener`](crate::HttpListener), or admit-tcp's `AdmitListener`.
/// HTTP/1.1 only by default (hyper's HTTP/1 connection, upgrades on);
/// HTTP/2 (prior knowledge, "h2c") when asked for with
/// [`http1_and_http2`](Self::http1_and_http2) or
/// [`http2_only`](Self::http2_only).
///
/// * Each connection holds its permit for as long as its socket lives, so
///   the limiter's `in_use` is the server's connection count.
/// * Connections the listener refuses are its business: an
///   [`HttpListener`](crate::HttpListener) answers them with a real `503`
///   with `Retry-After` and `Connection: close`, off the accept loop.
/// * Header timeout ([`header_timeout`](Self::header_timeout), on by
///   default): a connection that sends nothing, or trickles its headers, is
///   closed and its permit freed.
/// * Upgrades (WebSocket) keep the connection's permit until the upgraded
///   stream is dropped; revoking the lease ends the upgraded stream's reads
///   (end of file) and writes (error) — after a goodbye window, if one is
///   set ([`goodbye_window`](Self::goodbye_window)), in which the handler,
///   told by [`ConnInfo::ending`], can still send a close frame.
/// * Every request carries the connection's [`ConnInfo`] in its extensions.
/// * A connection whose lease is revoked finishes the request in flight (if
///   its goodbye window allows) and closes.
/// * Shutdown: stop accepting, let in-flight requests finish, close idle
///   connections, and after [`drain_timeout`](Self::drain_timeout) close the
///   rest, upgraded streams included (by revoking their leases). Upgraded
///   streams belong to the application, which should end them on the same
///   signal (a WebSocket close frame, say); the drain waits for them until
///   the deadline. The limiter is not closed, as other listeners may share
///   it; call [`Limiter::close`](admit::Limiter::close) beside the shutdown
///   signal if health should read `draining`. Dropping the serve future
///   instead closes every connection it serves at once.
///
/// # What a connection slot bounds
///
/// The listener's limiter counts connections. Whether that also bounds the
/// work those connections bring depends on the protocol:
///
/// * **HTTP/1.1** carries one request at a time: hyper hands the service
///   a connection's next request only once the previous response has been
///   written (pipelined requests wait their turn), so `capacity`
///   connections run at most `capacity` requests at once. This is why
///   HTTP/1.1 only is the default: the connection cap is then a request cap
///   too. Browsers never speak HTTP/2 without TLS, and this server speaks
///   plain TCP, so the default turns no browser away; an HTTP/2 client
///   sending its preface to it is refused (the connection closes unanswered
///   and no request is made).
/// * **HTTP/2** multiplexes: one connection carries many requests
///   (streams) at once, so the slot multiplies. With HTTP/2 on, each
///   connection may open at most
///   [`max_concurrent_streams`](Self::max_concurrent_streams) streams at
///   once (default [`DEFAULT_MAX_CONCURRENT_STREAMS`]), and
///   [`admit_requests`](Self::admit_requests) puts every request of every
///   connection through one request limiter, so `N` connections never run
///   more than its capacity of requests at once, whatever `N` is. The
///   header timeout covers an HTTP/2 connection's first request only; one
///   that goes idle after it keeps its slot until a watchdog's `max_idle`
///   revokes its lease (every read and write touches it) — run one when
///   HTTP/2 is on.
///
/// Neither bounds what a request does once admitted: a large or slowly
/// trickling body, CPU or memory spent inside a handler (password hashing,
/// say), or the fan-out of an upgraded WebSocket. A request limiter holds
/// its permit until the response body has been sent (by default), which
/// bounds requests, not their cost; put the expensive step under a limiter
/// of its own (an [`admit::Limiter`] around the work, or admit-tower's
/// layers on the routes that need it).
///
/// ```no_run
/// use admit_hyper::Server;
/// use axum::{routing::get, Router};
/// use std::time::Duration;
///
/// # #[tokio::main]
/// # async fn main() -> std::io::Result<()> {
/// let limiter = admit::Limiter::new(10_000);
/// let listener = admit_hyper::listener(limiter).bind("127.0.0.1:8080").await?;
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// Server::new()
///     .header_timeout(Duration::from_secs(10))
///     .drain_timeout(Duration::from_secs(5))
///     .serve(listener, app, async { let _ = tokio::signal::ctrl_c().await; })
///     .await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Server {
    builders: HyperBuilders,
    protocols: Protocols,
    header_timeout: Option<Duration>,
    drain_timeout: Duration,
    goodbye_window: Option<Duration>,
    requests: Option<HttpAdmitLayer>,
}

/// Which protocols a [`Server`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocols {
    /// hyper's HTTP/1 connection only.
    Http1,
    /// hyper's HTTP/2 connection only (prior knowledge).
    Http2,
    /// Either, told apart by the first bytes (the HTTP/2 preface).
    Both,
}

/// hyper's connection builders a [`Server`] serves with, for settings not
/// covered by the server's own methods ([`Server::builder_mut`]).
///
/// ```
/// let mut server = admit_hyper::Server::new().http1_and_http2();
/// server.builder_mut().http1().max_buf_size(64 * 1024);
/// server.builder_mut().http2().max_header_list_size(16 * 1024);
/// ```
#[derive(Debug, Clone)]
pub struct HyperBuilders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl HyperBuilders {
    /// The HTTP/1.1 connection settings (header limits, buffer sizes, …).
    /// The header timeout is set by [`Server::header_timeout`].
    pub fn http1(&mut self) -> &mut http1::Builder {
        &mut self.http1
    }

    /// The HTTP/2 connection settings (windows, keep-alive pings, header
    /// list size, …). The stream bound is set by
    /// [`Server::max_concurrent_streams`].
    pub fn http2(&mut self) -> &mut http2::Builder<TokioExecutor> {
        &mut self.http2
    }
}

impl Default for Server {
    fn default() -> Self {
        Server::new()
    }
}

impl Server {
    /// A server with the defaults: HTTP/1.1 only (see [what a connection
    /// slot bounds](Self#what-a-connection-slot-bounds)), header timeout
    /// [`DEFAULT_HEADER_TIMEOUT`], drain deadline [`DEFAULT_DRAIN_TIMEOUT`],
    /// no request limiter; should HTTP/2 be turned on,
    /// [`DEFAULT_MAX_CONCURRENT_STREAMS`] streams per connection.
    pub fn new() -> Server {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(DEFAULT_HEADER_TIMEOUT);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(DEFAULT_MAX_CONCURRENT_STREAMS);
        Server {
            builders: HyperBuilders { http1, http2 },
            protocols: Protocols::Http1,
            header_timeout: Some(DEFAULT_HEADER_TIMEOUT),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            goodbye_window: None,
            requests: None,
        }
    }

    /// How long a connection may take to deliver a request's headers; the
    /// first request's clock starts when the connection is accepted, later
    /// ones' (HTTP/1.1 keep-alive) when the previous response was sent, so
    /// idle keep-alive connections are closed after it too. `None` turns it
    /// off (not advised for servers open to the internet).
    pub fn header_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Server {
        self.header_timeout = timeout.into();
        self.builders.http1.header_read_timeout(self.header_timeout);
        self
    }

    /// How long a shutdown waits for in-flight requests and upgraded streams
    /// before closing them.
    pub fn drain_timeout(mut self, timeout: Duration) -> Server {
        self.drain_timeout = timeout;
        self
    }

    /// Gives every connection a goodbye window (see admit-tcp's
    /// `Admitted::with_goodbye_window`): when its lease is revoked, its
    /// [`ConnInfo::ending`] fires and for `window` writes keep working while
    /// reads wait, so a handler can answer in its own protocol — a WebSocket
    /// close frame with code 1013 (try again later), say — before the
    /// stream ends. Default: none, unless the listener set one (the stream
    /// ends at once, and a WebSocket peer sees the TCP connection close
    /// without a close frame).
    ///
    /// Keep it shorter than the watchdog's `grace`, or a connection still
    /// saying goodbye may have its slot reclaimed.
    ///
    /// ```no_run
    /// use admit_hyper::{ConnInfo, Server};
    /// use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
    /// use axum::{response::Response, routing::get, Extension, Router};
    /// use std::time::Duration;
    ///
    /// async fn ws(upgrade: WebSocketUpgrade, Extension(conn): Extension<ConnInfo>) -> Response {
    ///     upgrade.on_upgrade(move |mut socket| async move {
    ///         loop {
    ///             tokio::select! {
    ///                 msg = socket.recv() => match msg {
    ///                     Some(Ok(Message::Text(text))) => {
    ///                         if socket.send(Message::Text(text)).await.is_err() {
    ///                             return;
    ///                         }
    ///                     }
    ///                     Some(Ok(_)) => {}
    ///                     _ => return,
    ///                 },
    ///                 _ = conn.ending.ended() => {
    ///                     let close = CloseFrame { code: 1013, reason: "try again later".into() };
    ///                     let _ = socket.send(Message::Close(Some(close))).await;
    ///                     return;
    ///                 }
    ///             }
    ///         }
    ///     })
    /// }
    ///
    /// # #[tokio::main]
    /// # async fn main() -> std::io::Result<()> {
    /// let limiter = admit::Limiter::new(10_000);
    /// let _watchdog = admit::Watchdog::spawn(
    ///     limiter.clone(),
    ///     admit::WatchdogConfig::default()
    ///         .max_idle(Duration::from_secs(300))
    ///         .grace(Duration::from_secs(2)),
    /// )?;
    /// let listener = admit_hyper::listener(limiter).bind("127.0.0.1:8080").await?;
    /// let app = Router::new().route("/ws", get(ws));
    /// Server::new()
    ///     .goodbye_window(Duration::from_millis(500))
    ///     .serve(listener, app, async { let _ = tokio::signal::ctrl_c().await; })
    ///     .await
    /// # }
    /// ```
    pub fn goodbye_window(mut self, window: Duration) -> Server {
        self.goodbye_window = Some(window);
        self
    }

    /// Serves HTTP/1.1 only, with hyper's HTTP/1 connection (upgrades on):
    /// the default. A client that opens with the HTTP/2 preface is refused —
    /// the connection closes without an answer and no request reaches the
    /// service.
    pub fn http1_only(mut self) -> Server {
        self.protocols = Protocols::Http1;
        self
    }

    /// Serves HTTP/2 only (prior knowledge), with hyper's HTTP/2 connection.
    /// See [`max_concurrent_streams`](Self::max_concurrent_streams) and
    /// [`admit_requests`](Self::admit_requests).
    pub fn http2_only(mut self) -> Server {
        self.protocols = Protocols::Http2;
        self
    }

    /// Serves HTTP/1.1 and HTTP/2 (prior knowledge), told apart by the
    /// client's first bytes, as hyper-util's auto builder and `axum::serve`
    /// do. An HTTP/2 connection carries up to
    /// [`max_concurrent_streams`](Self::max_concurrent_streams) requests at
    /// once; to bound the requests of all connections together, add
    /// [`admit_requests`](Self::admit_requests).
    ///
    /// ```
    /// use admit_hyper::{HttpAdmitLayer, Server};
    ///
    /// let requests = admit::Limiter::builder().capacity(64).name("requests").build().unwrap();
    /// let server = Server::new()
    ///     .http1_and_http2()
    ///     .max_concurrent_streams(16)
    ///     .admit_requests(HttpAdmitLayer::new(requests));
    /// # let _ = server;
    /// ```
    pub fn http1_and_http2(mut self) -> Server {
        self.protocols = Protocols::Both;
        self
    }

    /// How many HTTP/2 streams (requests) one connection may have open at
    /// once (default [`DEFAULT_MAX_CONCURRENT_STREAMS`]). It is announced in
    /// the connection's `SETTINGS`; well-behaved clients queue further
    /// requests on their side, and streams opened beyond it are refused
    /// (`REFUSED_STREAM`, safe for the client to retry). Has no effect on
    /// HTTP/1.1, which carries one request at a time.
    pub fn max_concurrent_streams(mut self, max: u32) -> Server {
        self.builders.http2.max_concurrent_streams(max);
        self
    }

    /// Admits every request of every connection through `layer` (admit-tower's
    /// [`HttpAdmitLayer`]) before it reaches the service: at most the
    /// layer's limiter's capacity of requests run at once across the whole
    /// server, HTTP/2 streams and HTTP/1.1 requests alike. Beyond that a
    /// request is answered `503 Service Unavailable` with `Retry-After`, or
    /// waits in the limiter's queue ([`HttpAdmitLayer::queue`]). The
    /// permit is held until the response body has been sent, unless the
    /// layer says otherwise ([`ReleaseAt`](crate::ReleaseAt)).
    ///
    /// It is the layer you could put on the service yourself; given to the
    /// server, it also covers [`serve_hyper`](Self::serve_hyper) and every
    /// per-connection service of [`serve_with`](Self::serve_with). Share
    /// one limiter between servers to bound their requests together.
    ///
    /// ```no_run
    /// use admit_hyper::{HttpAdmitLayer, Server};
    /// use axum::{routing::get, Router};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main]
    /// # async fn main() -> std::io::Result<()> {
    /// let connections = admit::Limiter::builder().capacity(1_000).name("http").build().unwrap();
    /// let requests = admit::Limiter::builder()
    ///     .capacity(64)
    ///     .queue_limit(256)
    ///     .name("requests")
    ///     .build()
    ///     .unwrap();
    /// let listener = admit_hyper::listener(connections).bind("127.0.0.1:8080").await?;
    /// let app = Router::new().route("/", get(|| async { "hello" }));
    /// Server::new()
    ///     .http1_and_http2()
    ///     .admit_requests(HttpAdmitLayer::new(requests).queue().retry_after(Duration::from_secs(2)))
    ///     .serve(listener, app, async { let _ = tokio::signal::ctrl_c().await; })
    ///     .await
    /// # }
    /// ```
    pub fn admit_requests(mut self, layer: HttpAdmitLayer) -> Server {
        self.requests = Some(layer);
        self
    }

    /// hyper's connection builders, for settings not covered here (HTTP/2
    /// windows and keep-alive pings, HTTP/1 header limits, …). The header
    /// timeout is set by [`header_timeout`](Self::header_timeout), the
    /// HTTP/2 stream bound by
    /// [`max_concurrent_streams`](Self::max_concurrent_streams), and the
    /// protocols by [`http1_only`](Self::http1_only),
    /// [`http2_only`](Self::http2_only) and
    /// [`http1_and_http2`](Self::http1_and_http2).
    pub fn builder_mut(&mut self) -> &mut HyperBuilders {
        &mut self.builders
    }

    /// Serves a tower service (an axum `Router`, say) until `shutdown`
    /// resolves, then drains. Returns once every connection is closed; an
    /// error only if the listener itself failed (after draining).
    pub async fn serve<L, S, B, F>(self, listener: L, service: S, shutdown: F) -> io::Result<()>
    where
        L: Accept,
        S: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send + From<bytes::Bytes>,
        B::Error: Into<BoxError>,
        F: Future<Output = ()>,
    {
        self.serve_with(listener, move |_: &ConnInfo| service.clone(), shutdown)
            .await
    }

    /// Like [`serve`](Self::serve), with a tower service made for each
    /// connection, e.g. to give handlers the peer's address:
    ///
    /// ```no_run
    /// use admit_hyper::{ConnInfo, Server};
    /// use axum::extract::ConnectInfo;
    /// use axum::{routing::get, Extension, Router};
    /// use std::net::SocketAddr;
    /// use tower::Layer;
    ///
    /// # #[tokio::main]
    /// # async fn main() -> std::io::Result<()> {
    /// let listener = admit_hyper::listener(admit::Limiter::new(100))
    ///     .bind("127.0.0.1:0")
    ///     .await?;
    /// let app = Router::new().route(
    ///     "/",
    ///     get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    /// );
    /// Server::new()
    ///     .serve_with(
    ///         listener,
    ///         move |conn: &ConnInfo| Extension(ConnectInfo(conn.remote_addr)).layer(app.clone()),
    ///         std::future::pending(),
    ///     )
    ///     .await
    /// # }
    /// ```
    pub async fn serve_with<L, M, S, B, F>(
        self,
        listener: L,
        mut make_service: M,
        shutdown: F,
    ) -> io::Result<()>
    where
        L: Accept,
        M: FnMut(&ConnInfo) -> S,
        S: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send + From<bytes::Bytes>,
        B::Error: Into<BoxError>,
        F: Future<Output = ()>,
    {
        let requests = self.requests.clone();
        self.run(
            listener,
            move |info: &ConnInfo| {
                TowerToHyperService::new(Requests::new(make_service(info), requests.as_ref()))
            },
            shutdown,
        )
        .await
    }

    /// Like [`serve`](Self::serve), for a hyper service (e.g.
    /// `hyper::service::service_fn`).
    pub async fn serve_hyper<L, H, B, F>(
        self,
        listener: L,
        service: H,
        shutdown: F,
    ) -> io::Result<()>
    where
        L: Accept,
        H: hyper::service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        H::Future: Send + 'static,
        H::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send + From<bytes::Bytes>,
        B::Error: Into<BoxError>,
        F: Future<Output = ()>,
    {
        let service = HyperService(service);
        self.serve_with(listener, move |_: &ConnInfo| service.clone(), shutdown)
            .await
    }

    async fn run<L, M, H, B, F>(
        self,
        mut listener: L,
        mut make_service: M,
        shutdown: F,
    ) -> io::Result<()>
    where
        L: Accept,
        M: FnMut(&ConnInfo) -> H,
        H: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        H::Future: Send + 'static,
        H::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        F: Future<Output = ()>,
    {
        let limiter = listener.limiter().clone();
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            http1: self.builders.http1,
            http2: self.builders.http2,
            protocols: self.protocols,
            header_timeout: self.header_timeout,
        });
        let registry = Arc::new(Registry::default());
        let (phase_tx, phase_rx) = watch::channel(Phase::Serving);

        let mut shutdown = std::pin::pin!(shutdown);
        let result = loop {
            tokio::select! {
                biased;
                () = shutdown.as_mut() => break Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(mut accepted) => {
                        if let Some(window) = self.goodbye_window {
                            accepted.io = accepted.io.with_goodbye_window(window);
                        }
                        let lease = accepted.io.permit().lease_id();
                        let info = ConnInfo {
                            remote_addr: accepted.remote_addr,
                            local_addr,
                            lease,
                            ending: accepted.io.ending(),
                            reserved: accepted.is_reserved(),
                        };
                        let service = make_service(&info);
                        let entry = registry.register(lease);
                        tokio::spawn(conn::run(shared.clone(), accepted, info, entry, service, phase_rx.clone()));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the listener failed; draining and stopping");
                        break Err(e);
                    }
                },
            }
        };

        // Stop accepting: the listening socket closes now.
        drop(listener);
        phase_tx.send_replace(Phase::Draining);
        let drained = tokio::time::timeout(self.drain_timeout, registry.emptied())
            .await
            .is_ok();
        if !drained {
            let revoked = registry.revoke_all(&limiter);
            tracing::warn!(
                open = registry.len(),
                revoked,
                "drain deadline passed; closing the remaining connections"
            );
            phase_tx.send_replace(Phase::Forced);
            // Connection tasks close at once; an upgraded stream closes when
            // its owner next polls it and sees the revocation.
            let _ = tokio::time::timeout(FORCE_GRACE, registry.emptied()).await;
        }
        result
    }
}

/// Serves a tower service (an axum `Router`, say) on `listener` with the
/// [`Server`] defaults until `shutdown` resolves, then drains.
///
/// ```no_run
/// use axum::{routing::get, Router};
///
/// # #[tokio::main]
/// # async fn main() -> std::io::Result<()> {
/// let limiter = admit::Limiter::new(1_000);
/// let listener = admit_hyper::listener(limiter).bind("127.0.0.1:8080").await?;
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// admit_hyper::serve(listener, app, async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
pub async fn serve<L, S, B, F>(listener: L, service: S, shutdown: F) -> io::Result<()>
where
    L: Accept,
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send + From<bytes::Bytes>,
    B::Error: Into<BoxError>,
    F: Future<Output = ()>,
{
    Server::new().serve(listener, service, shutdown).await
}
