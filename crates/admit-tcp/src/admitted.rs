//! [`Admitted`]: a connection that carries its permit.

use crate::ending::{EndWatch, Ended, Ending, State};
use crate::per_ip::PerIpGuard;
use admit::Permit;
use pin_project::pin_project;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Wakes a paused or backing-off listener when one of its connections
/// closes. Dropped last, after the socket and the permit.
#[derive(Debug)]
pub(crate) struct ReleaseSignal {
    pub(crate) shared: Arc<crate::listener::Shared>,
}

impl Drop for ReleaseSignal {
    fn drop(&mut self) {
        // Release: the socket close and permit release above happen before
        // the listener, which loads the epoch with Acquire, retries.
        self.shared.releases.fetch_add(1, Ordering::Release);
        self.shared.release_waker.wake();
    }
}

/// A connection admitted by the limiter: an `AsyncRead + AsyncWrite` that
/// holds its [`Permit`] for as long as it lives.
///
/// * Every read or write that moves bytes touches the lease, so the
///   watchdog can tell busy connections from dead ones.
/// * When the lease is revoked (or the idle timeout passes), the connection
///   fires its end signal ([`ending`](Self::ending)); then reads return
///   end-of-file, writes fail with `ConnectionAborted` (`TimedOut`), and the
///   stream's write side is shut down, so the peer sees the close too. A task
///   blocked on a read is woken for this.
/// * With a goodbye window ([`with_goodbye_window`](Self::with_goodbye_window)),
///   the end comes in two steps: for the window's length writes keep working
///   and reads wait (they are woken when the window closes), so the
///   application can say goodbye in its own protocol — a WebSocket close
///   frame, a `BYE` line — before the stream ends as above.
/// * Dropping it closes the socket, then releases the permit and the
///   per-address count.
///
/// Revocation is noticed by whichever task polls the stream last: a stream
/// split between a reader task and a writer task wakes the one that polled
/// most recently (the other sees it on its next poll).
///
/// ```
/// use admit_tcp::Admitted;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = admit::Limiter::new(1);
/// let permit = limiter.try_acquire().unwrap();
/// let (client, server) = tokio::io::duplex(64);
/// let mut conn = Admitted::new(server, permit, "127.0.0.1:4000".parse().unwrap());
///
/// let mut client = client;
/// client.write_all(b"hi").await.unwrap();
/// let mut buf = [0; 2];
/// conn.read_exact(&mut buf).await.unwrap();
///
/// limiter.revoke(conn.permit().lease_id());
/// assert_eq!(conn.read(&mut buf).await.unwrap(), 0); // revoked: end of file
/// assert!(conn.write_all(b"late").await.is_err());
/// assert!(conn.ending().is_ended());
/// drop(conn);
/// assert_eq!(limiter.in_use(), 0);
/// # }
/// ```
#[pin_project]
pub struct Admitted<S> {
    #[pin]
    io: S,
    // Dropped in this order after `io`: the socket closes before the
    // permit and the per-address count go back.
    permit: Permit,
    per_ip: Option<PerIpGuard>,
    signal: Option<ReleaseSignal>,
    peer: SocketAddr,
    /// Revocation, the idle timer, the goodbye window and the end signal.
    end: EndWatch,
    shut_down: bool,
    /// Admitted on a reserved permit by a refusal's answer (see
    /// [`Refused::admit`](crate::Refused::admit)).
    reserved: bool,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Admitted<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("io", &self.io)
            .field("peer", &self.peer)
            .field("lease", &self.permit.lease_id())
            .field("ended", &self.end.ended())
            .field("goodbye_window", &self.end.goodbye_window())
            .field("reserved", &self.reserved)
            .finish()
    }
}

impl<S> Admitted<S> {
    /// Wraps `io`, admitted with `permit`, from `peer`.
    pub fn new(io: S, permit: Permit, peer: SocketAddr) -> Admitted<S> {
        Admitted {
            io,
            permit,
            per_ip: None,
            signal: None,
            peer,
            end: EndWatch::default(),
            shut_down: false,
            reserved: false,
        }
    }

    pub(crate) fn with_guards(
        mut self,
        per_ip: Option<PerIpGuard>,
        signal: Option<ReleaseSignal>,
        reserved: bool,
    ) -> Admitted<S> {
        self.per_ip = per_ip;
        self.signal = signal;
        self.reserved = reserved;
        self
    }

    /// Holds a per-address count ([`PerIpLimit::try_acquire`](crate::PerIpLimit::try_acquire))
    /// for as long as the connection lives; it goes back after the socket
    /// closes and the permit is released. [`AdmitListener`](crate::AdmitListener)
    /// does this for the connections it admits.
    pub fn with_per_ip(mut self, guard: PerIpGuard) -> Admitted<S> {
        self.per_ip = Some(guard);
        self
    }

    /// The per-address count this connection holds, if its listener caps
    /// connections per address.
    pub fn per_ip(&self) -> Option<&PerIpGuard> {
        self.per_ip.as_ref()
    }

    /// Whether the connection was refused for want of a permit and then
    /// admitted on a reserved one by the listener's answer to refusals
    /// (see [`Refused::admit`](crate::Refused::admit)). A server should
    /// serve it briefly (one request, say) and close it, so the reserve is
    /// not held.
    pub fn is_reserved(&self) -> bool {
        self.reserved
    }

    /// Ends the connection after `timeout` without any bytes read or
    /// written (as if its lease were revoked). Needs a tokio runtime with
    /// the time driver.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Admitted<S> {
        self.end.set_idle_timeout(timeout);
        self
    }

    /// When the connection is ended from outside (lease revoked, idle
    /// timeout), keeps writes working for `window` before the stream ends,
    /// so the application can say goodbye in its own protocol. Meanwhile
    /// reads wait (returning `Pending`, woken when the window closes): the
    /// peer gets no more say. The connection's end signal
    /// ([`ending`](Self::ending)) fires when the window opens. Default: no
    /// window — the stream ends at once, as described on [`Admitted`].
    /// Needs a tokio runtime with the time driver.
    ///
    /// ```
    /// use admit_tcp::Admitted;
    /// use std::time::Duration;
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = admit::Limiter::new(1);
    /// let (mut client, server) = tokio::io::duplex(64);
    /// let mut conn = Admitted::new(server, limiter.try_acquire().unwrap(), "127.0.0.1:4000".parse().unwrap())
    ///     .with_goodbye_window(Duration::from_millis(50));
    /// let ending = conn.ending();
    ///
    /// // The serving loop: reads, and the end signal beside them.
    /// limiter.revoke(conn.permit().lease_id());
    /// let mut buf = [0u8; 16];
    /// tokio::select! {
    ///     _ = conn.read(&mut buf) => unreachable!("reads wait while the window is open"),
    ///     _ = ending.ended() => conn.write_all(b"BYE revoked\n").await.unwrap(),
    /// }
    /// // The window closes: end of file, and the peer got its goodbye.
    /// assert_eq!(conn.read(&mut buf).await.unwrap(), 0);
    /// assert!(conn.write_all(b"late").await.is_err());
    /// let mut got = String::new();
    /// client.read_to_string(&mut got).await.unwrap();
    /// assert_eq!(got, "BYE revoked\n");
    /// # }
    /// ```
    pub fn with_goodbye_window(mut self, window: Duration) -> Admitted<S> {
        self.end.set_goodbye_window(window);
        self
    }

    /// The goodbye window, if one is set.
    pub fn goodbye_window(&self) -> Option<Duration> {
        self.end.goodbye_window()
    }

    /// The connection's end signal: fires when the connection is ended from
    /// outside (see [`Ending`]). Hand a clone to the code that serves the
    /// connection, so it can say goodbye inside the goodbye window.
    pub fn ending(&self) -> Ending {
        self.end.ending()
    }

    /// The permit this connection holds.
    pub fn permit(&self) -> &Permit {
        &self.permit
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// How long ago the connection was admitted (to the limiter clock's
    /// resolution: one watchdog interval).
    pub fn lease_age(&self) -> Duration {
        self.permit.age()
    }

    /// The idle timeout, if one is set.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.end.idle_timeout()
    }

    /// Whether the lease was revoked. Reads see end-of-file from then on.
    pub fn is_revoked(&self) -> bool {
        self.permit.is_revoked()
    }

    /// Why the connection was ended from outside, once it was.
    pub fn ended(&self) -> Option<Ended> {
        self.end.ended()
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The wrapped stream, mutably. Bytes moved through it directly do not
    /// touch the lease.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// The wrapped stream, pinned.
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut S> {
        self.project().io
    }
}

impl<S: AsyncWrite> Admitted<S> {
    /// Where the connection is in its life (see [`EndWatch::poll`]); once
    /// it has ended for good, also shuts its write side down.
    fn poll_state(self: Pin<&mut Self>, cx: &mut Context<'_>) -> State {
        let this = self.project();
        let state = this.end.poll(this.permit, cx);
        if let State::Ended(_) = state {
            if !*this.shut_down {
                // Best effort: a TCP stream shuts down at once; a stream
                // whose shutdown is pending is closed when it is dropped.
                if let Poll::Ready(res) = this.io.poll_shutdown(cx) {
                    *this.shut_down = true;
                    if let Err(e) = res {
                        tracing::debug!(peer = %this.peer, error = %e, "shutdown of an ended connection failed");
                    }
                }
            }
        }
        state
    }

    fn note_io(self: Pin<&mut Self>) {
        let this = self.project();
        this.permit.touch();
        this.end.note_io();
    }
}

impl<S: AsyncRead + AsyncWrite> AsyncRead for Admitted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.as_mut().poll_state(cx) {
            State::Open => {}
            // The window's timer wakes this task when it closes.
            State::Closing => return Poll::Pending,
            State::Ended(_) => return Poll::Ready(Ok(())),
        }
        let before = buf.filled().len();
        let res = self.as_mut().project().io.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            if buf.filled().len() > before {
                self.note_io();
            }
        }
        res
    }
}

impl<S: AsyncWrite> AsyncWrite for Admitted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.as_mut().poll_state(cx) {
            State::Open => {}
            // Saying goodbye: the bytes go out, but no longer count as
            // activity on the lease.
            State::Closing => return self.project().io.poll_write(cx, buf),
            State::Ended(ended) => return Poll::Ready(Err(ended.error())),
        }
        let res = self.as_mut().project().io.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.note_io();
            }
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.as_mut().poll_state(cx) {
            State::Open => {}
            State::Closing => return self.project().io.poll_write_vectored(cx, bufs),
            State::Ended(ended) => return Poll::Ready(Err(ended.error())),
        }
        let res = self.as_mut().project().io.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.note_io();
            }
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if *this.shut_down {
            return Poll::Ready(Ok(()));
        }
        let res = this.io.poll_shutdown(cx);
        if res.is_ready() {
            *this.shut_down = true;
        }
        res
    }
}
