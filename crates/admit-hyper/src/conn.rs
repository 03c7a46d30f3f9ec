//! One connection: hyper's auto (HTTP/1.1 + HTTP/2) connection over an
//! admitted stream, with the first-request deadline and the drain phases.

use crate::listener::Accepted;
use crate::registry::Entry;
use crate::server::ConnInfo;
use crate::BoxError;
use admit_tcp::{Admitted, PerIpGuard};
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use pin_project::pin_project;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

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
    // Dropped in this order: the socket closes and the permit goes back,
    // then the per-address count, then the registry entry.
    #[pin]
    io: Admitted<TcpStream>,
    _per_ip: Option<PerIpGuard>,
    entry: Arc<Entry>,
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
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
        self.inner.call(req)
    }
}

/// What every connection of one server shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) builder: auto::Builder<TokioExecutor>,
    pub(crate) header_timeout: Option<Duration>,
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
    let (io, peer, per_ip) = accepted.into_parts();
    let io = TokioIo::new(ConnIo {
        io,
        _per_ip: per_ip,
        entry: entry.clone(),
    });
    let ending = info.ending.clone();
    let service = Watched {
        inner: service,
        entry: entry.clone(),
        info,
    };
    let conn = shared.builder.serve_connection_with_upgrades(io, service);
    let mut conn = std::pin::pin!(conn);

    // hyper's own header timeout covers HTTP/1 requests once the protocol
    // is known; this deadline also covers the protocol sniffing before it
    // (a client that sends nothing at all) and HTTP/2's first request.
    let mut first_deadline = shared.header_timeout;
    let sleep = tokio::time::sleep(first_deadline.unwrap_or(Duration::ZERO));
    let mut sleep = std::pin::pin!(sleep);

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
