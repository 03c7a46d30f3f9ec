//! One connection: hyper's HTTP/1.1 connection (with upgrades) or HTTP/2
//! connection over an admitted stream, chosen by the server's protocols (and,
//! when both are served, by the first bytes the client sends), with the
//! first-request deadline and the drain phases.

use crate::listener::Accepted;
use crate::registry::Entry;
use crate::server::{ConnInfo, Protocols};
use crate::BoxError;
use admit_tcp::Admitted;
use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pin_project::pin_project;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What an HTTP/2 client sends first (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Where a server is in its life; every connection task watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Serving,
    /// Finish what is in flight, close idle connections.
    Draining,
    /// The drain deadline passed: close now.
    Forced,
}

/// The stream hyper serves: the admitted stream (which carries the permit,
/// touches the lease on I/O and ends on revocation) plus the registry entry,
/// which therefore lives exactly as long as the socket, upgraded or not.
#[pin_project]
pub(crate) struct ConnIo {
    // Dropped in this order: the socket closes, the permit and the
    // per-address count go back, then the registry entry.
    #[pin]
    io: Admitted<TcpStream>,
    entry: Arc<Entry>,
    /// Bytes read to tell HTTP/1.1 from HTTP/2, handed out again before
    /// anything else is read from the socket.
    replay: Bytes,
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.replay.has_remaining() && buf.remaining() > 0 {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.io.poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// Reads until the first bytes either differ from the HTTP/2 preface
/// (HTTP/1.1, `false`) or are the whole preface (`true`), and keeps what it
/// read for hyper to read again. A client that closes first is handed to
/// HTTP/1.1, which sees the end of the stream.
async fn sniff_http2(io: &mut ConnIo) -> io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    let is_h2 = loop {
        let n = io.read(&mut buf[filled..]).await?;
        filled += n;
        if n == 0 || buf[..filled] != H2_PREFACE[..filled] {
            break false;
        }
        if filled == H2_PREFACE.len() {
            break true;
        }
    };
    io.replay = Bytes::copy_from_slice(&buf[..filled]);
    Ok(is_h2)
}

/// Notes that a request reached the service, which ends the first-request
/// deadline, and hands the request the connection's [`ConnInfo`].
#[derive(Debug, Clone)]
struct Watched<H> {
    inner: H,
    entry: Arc<Entry>,
    info: ConnInfo,
}

impl<H, B> hyper::service::Service<Request<B>> for Watched<H>
where
    H: hyper::service::Service<Request<B>>,
{
    type Response = H::Response;
    type Error = H::Error;
    type Future = H::Future;

    fn call(&self, mut req: Request<B>) -> H::Future {
        // Relaxed: only this connection's own task reads it, after the
        // connection future (which made this call) was polled.
        self.entry.seen_request.store(true, Ordering::Relaxed);
        req.extensions_mut().insert(self.info.clone());
        // What axum's `ConnectInfo<SocketAddr>` extractor looks for, so an
        // app written for `into_make_service_with_connect_info` runs here
        // unchanged.
        #[cfg(feature = "axum")]
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.info.remote_addr));
        self.inner.call(req)
    }
}

/// What every connection of one server shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) http1: http1::Builder,
    pub(crate) http2: http2::Builder<TokioExecutor>,
    pub(crate) protocols: Protocols,
    pub(crate) header_timeout: Option<Duration>,
}

type Io = TokioIo<ConnIo>;

/// hyper's connection future for the protocol the connection speaks.
// One per connection, pinned inside the connection's task, which is
// allocated once anyway; boxing the larger variant would add an allocation.
#[allow(clippy::large_enum_variant)]
#[pin_project(project = ConnProj)]
enum Conn<H>
where
    H: hyper::service::HttpService<Incoming>,
{
    Http1(#[pin] http1::UpgradeableConnection<Io, H>),
    Http2(#[pin] http2::Connection<Io, H, TokioExecutor>),
}

impl<H, B> Conn<H>
where
    H: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    H::Future: Send + 'static,
    H::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.project() {
            ConnProj::Http1(conn) => conn.graceful_shutdown(),
            ConnProj::Http2(conn) => conn.graceful_shutdown(),
        }
    }
}

impl<H, B> Future for Conn<H>
where
    H: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    H::Future: Send + 'static,
    H::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ConnProj::Http1(conn) => conn.poll(cx),
            ConnProj::Http2(conn) => conn.poll(cx),
        }
    }
}

/// Serves one connection until it closes, is upgraded, misses its first
/// request deadline, or is closed by the drain. A connection ended from
/// outside (revoked) is shut down gracefully: hyper finishes the request in
/// flight, as far as the goodbye window lets it write, and closes.
pub(crate) async fn run<H, B>(
    shared: Arc<Shared>,
    accepted: Accepted,
    info: ConnInfo,
    entry: Arc<Entry>,
    service: H,
    mut phase: watch::Receiver<Phase>,
) where
    H: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    H::Future: Send + 'static,
    H::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let reserved = accepted.is_reserved();
    let (io, peer) = accepted.into_parts();
    let mut io = ConnIo {
        io,
        entry: entry.clone(),
        replay: Bytes::new(),
    };
    let ending = info.ending.clone();
    let service = Watched {
        inner: service,
        entry: entry.clone(),
        info,
    };

    // hyper's own header timeout covers HTTP/1 requests once the protocol
    // is known; this deadline also covers the protocol sniffing before it
    // (a client that sends nothing at all) and HTTP/2's first request.
    let mut first_deadline = shared.header_timeout;
    let sleep = tokio::time::sleep(first_deadline.unwrap_or(Duration::ZERO));
    let mut sleep = std::pin::pin!(sleep);

    let http2 = match shared.protocols {
        Protocols::Http1 => false,
        Protocols::Http2 => true,
        Protocols::Both => {
            // Nothing is in flight yet, so anything that ends the
            // connection ends it at once.
            tokio::select! {
                biased;
                sniffed = sniff_http2(&mut io) => match sniffed {
                    Ok(http2) => http2,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "connection ended before its first request");
                        return;
                    }
                },
                _ = ending.ended() => return,
                () = sleep.as_mut(), if first_deadline.is_some() => {
                    tracing::debug!(%peer, "no request within the header timeout; closing");
                    return;
                }
                _ = phase.wait_for(|phase| *phase != Phase::Serving) => return,
            }
        }
    };
    let io = TokioIo::new(io);
    let conn = if http2 {
        Conn::Http2(shared.http2.serve_connection(io, service))
    } else {
        // An HTTP/2 preface sent here is refused by hyper's HTTP/1 parser:
        // the connection closes without an answer and no request is made.
        // A connection on the reserve answers one request: keep-alive would
        // let it hold the reserve.
        let http1 = if reserved {
            let mut one = shared.http1.clone();
            one.keep_alive(false);
            one.serve_connection(io, service)
        } else {
            shared.http1.serve_connection(io, service)
        };
        Conn::Http1(http1.with_upgrades())
    };
    let mut conn = std::pin::pin!(conn);

    // Set once hyper was asked to finish up (drain or revocation).
    let mut draining = false;
    if *phase.borrow_and_update() != Phase::Serving {
        draining = true;
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            biased;
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = ending.ended(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = sleep.as_mut(), if first_deadline.is_some() => {
                first_deadline = None;
                if !entry.seen_request.load(Ordering::Relaxed) {
                    tracing::debug!(%peer, "no request headers within the header timeout; closing");
                    return;
                }
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    // The server is gone without a drain: close.
                    return;
                }
                match *phase.borrow_and_update() {
                    Phase::Serving => {}
                    Phase::Draining => {
                        if !draining {
                            draining = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                    Phase::Forced => {
                        tracing::debug!(%peer, "drain deadline passed; closing");
                        return;
                    }
                }
            }
        }
    }
}
