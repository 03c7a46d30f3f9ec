//! Connection admission for the HTTP listeners: the thin layer between a
//! listening socket and hyper.
//!
//! (The TCP listener uses `admit_tcp::AdmitListener` directly. The HTTP
//! side keeps this layer because an upgraded WebSocket must be able to see
//! its own lease being revoked and send close 1013 *before* the socket
//! goes; a permit sealed inside the upgraded I/O object can only end the
//! stream. Both listeners share one `admit_tcp::PerIpLimit`, so the
//! per-address budget is one number across HTTP, WebSocket and TCP.)
//!
//! Every accepted connection must hold a [`Permit`] from the listener's
//! limiter (and, for chat, a share of its address's per-IP budget) before
//! any protocol work is done for it. A connection that cannot get one is
//! told so in its own protocol — `503` with `Retry-After` for HTTP,
//! `BUSY retry-after=N` for TCP — and closed, so a client is never left
//! hanging in the kernel backlog wondering.
//!
//! The permit rides along with the connection inside [`TouchIo`], which
//! touches the lease on every successful read or write: that is what makes
//! "idle" mean "no traffic", so the watchdog's `max_idle` revocation closes
//! exactly the connections that went quiet.

use admit::{Limiter, Permit, Rejected};
use admit_tcp::{PerIpGuard, PerIpLimit};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// What a client is told to wait before retrying, in seconds.
pub const RETRY_AFTER_SECS: u32 = 2;
/// How long a waiting connection (`--queue`) may wait for a permit.
pub const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// A connection's right to exist: the limiter permit and the per-IP share.
#[derive(Debug)]
pub struct Admission {
    /// The lease; revoked by the watchdog when the connection idles.
    pub permit: Permit,
    _ip: Option<PerIpGuard>,
}

/// The admission policy of one listener.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The limiter connections are counted against.
    pub limiter: Limiter,
    per_ip: Option<PerIpLimit>,
    queue: bool,
}

impl Gate {
    /// A gate over `limiter`, with an optional per-address budget, waiting
    /// in the limiter's queue when `queue` is set.
    pub fn new(limiter: Limiter, per_ip: Option<PerIpLimit>, queue: bool) -> Gate {
        Gate {
            limiter,
            per_ip,
            queue,
        }
    }

    /// Admits a connection from `ip`, or says why not.
    pub async fn admit(&self, ip: IpAddr) -> Result<Admission, Rejected> {
        // The per-address share is taken first: a single address flooding
        // us is refused without touching the shared limiter at all.
        let ip_guard = match &self.per_ip {
            Some(t) => match t.try_acquire(ip) {
                Ok(g) => Some(g),
                Err(_) => {
                    self.limiter.record_rejection(Rejected::PerIp);
                    return Err(Rejected::PerIp);
                }
            },
            None => None,
        };
        let permit = if self.queue {
            match tokio::time::timeout(QUEUE_WAIT, self.limiter.acquire()).await {
                Ok(r) => r?,
                Err(_) => {
                    self.limiter.record_rejection(Rejected::Timeout);
                    return Err(Rejected::Timeout);
                }
            }
        } else {
            self.limiter.try_acquire()?
        };
        Ok(Admission {
            permit,
            _ip: ip_guard,
        })
    }
}

/// An I/O object that touches its connection's lease on every successful
/// read or write, and keeps the admission alive as long as the I/O lives
/// (through an HTTP upgrade too).
#[derive(Debug)]
pub struct TouchIo<T> {
    inner: T,
    admission: Arc<Admission>,
}

impl<T> TouchIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, admission: Arc<Admission>) -> TouchIo<T> {
        TouchIo { inner, admission }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TouchIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            me.admission.permit.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TouchIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            me.admission.permit.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How a listener tells a refused client to go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `503 Service Unavailable` with `Retry-After` and `Connection: close`.
    Http,
    /// `BUSY retry-after=N`.
    Line,
}

impl Refusal {
    fn bytes(self, why: Rejected) -> Vec<u8> {
        match self {
            Refusal::Http => {
                let body = format!(
                    r#"{{"error":"unavailable","message":"{}"}}"#,
                    why.to_string().replace('"', "'")
                );
                format!(
                    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {RETRY_AFTER_SECS}\r\n\
                     Connection: close\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            }
            Refusal::Line => format!("BUSY retry-after={RETRY_AFTER_SECS}\n").into_bytes(),
        }
    }
}

/// At most this many refused connections are kept open at once while
/// their refusal is delivered; beyond it they are just closed.
const MAX_REFUSING: usize = 512;

/// Writes the refusal, then reads (and discards) what the client already
/// sent for a moment before closing: closing a socket with unread input
/// makes the kernel send a reset, which can destroy the refusal before
/// the client reads it.
async fn refuse(mut stream: TcpStream, how: Refusal, why: Rejected) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&how.bytes(why))).await;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut total = 0usize;
        while let Ok(n) = stream.read(&mut sink).await {
            total += n;
            if n == 0 || total > 64 * 1024 {
                break;
            }
        }
    })
    .await;
}

/// Runs an accept loop until `stop` turns true: admits each connection
/// through `gate` and hands it to `handle`, or refuses it.
///
/// Accept errors never end the loop: running out of descriptors (EMFILE)
/// is the classic way accept loops die or spin, so on any error the loop
/// backs off briefly and tries again, which lets connections close and
/// descriptors come back.
pub async fn accept_loop<H, F>(
    listener: TcpListener,
    gate: Gate,
    how: Refusal,
    mut stop: watch::Receiver<bool>,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr, Admission) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = crate::until_true(&mut stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept failed, backing off: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gate = gate.clone();
        let handle = handle.clone();
        let refusing = refusing.clone();
        let admit = async move {
            match gate.admit(peer.ip()).await {
                Ok(a) => handle(stream, peer, a).await,
                Err(why) => {
                    tracing::debug!(%peer, "refused: {why}");
                    if let Ok(slot) = refusing.try_acquire_owned() {
                        refuse(stream, how, why).await;
                        drop(slot);
                    }
                }
            }
        };
        tokio::spawn(admit);
    }
}
