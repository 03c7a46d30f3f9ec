//! "This connection is ending": why a connection was ended from outside
//! ([`Ended`]), and the signal that tells the code serving it ([`Ending`]).
//!
//! An [`Admitted`](crate::Admitted) stream notices the end (its permit's
//! revocation, its idle timer) when it is polled, fires its [`Ending`],
//! and from then on its reads and writes answer with [`Ended`]'s error.
//! admit-hyper hands the same signal to handlers in its `ConnInfo`, so
//! every layer hears of an end through this one module.

use admit::Permit;
use pin_project::pin_project;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// Why an [`Admitted`](crate::Admitted) connection was ended from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ended {
    /// The lease was revoked (by the watchdog, an operator, or a drain).
    Revoked,
    /// No bytes moved for longer than the idle timeout.
    IdleTimeout,
}

impl Ended {
    pub(crate) fn error(self) -> io::Error {
        match self {
            Ended::Revoked => io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed: its admission lease was revoked; the client may reconnect",
            ),
            Ended::IdleTimeout => io::Error::new(
                io::ErrorKind::TimedOut,
                "connection closed: no traffic within the idle timeout; the client may reconnect",
            ),
        }
    }
}

const OPEN: u8 = 0;
const REVOKED: u8 = 1;
const IDLE_TIMEOUT: u8 = 2;

#[derive(Debug, Default)]
struct Inner {
    /// `OPEN`, or why the connection was ended. Set once.
    state: AtomicU8,
    notify: Notify,
}

/// Fires once when its [`Admitted`](crate::Admitted) connection is ended
/// from outside: its lease revoked, or its idle timeout passed. Cheap to
/// clone; every clone sees the same signal.
///
/// The connection notices the end when it is polled (a read, a write),
/// and fires this signal then. Code that serves the connection selects on
/// [`ended`](Self::ended) next to its reads, and says goodbye in its own
/// protocol while the connection's goodbye window
/// ([`Admitted::with_goodbye_window`](crate::Admitted::with_goodbye_window))
/// keeps writes working.
///
/// ```
/// use admit_tcp::{Admitted, Ended};
/// use std::time::Duration;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = admit::Limiter::new(1);
/// let (mut client, server) = tokio::io::duplex(64);
/// let mut conn = Admitted::new(server, limiter.try_acquire().unwrap(), "127.0.0.1:4000".parse().unwrap())
///     .with_goodbye_window(Duration::from_secs(1));
/// let ending = conn.ending();
///
/// limiter.revoke(conn.permit().lease_id());
/// let mut buf = [0u8; 16];
/// let why = tokio::select! {
///     _ = conn.read(&mut buf) => unreachable!("reads wait while the window is open"),
///     why = ending.ended() => why,
/// };
/// assert_eq!(why, Ended::Revoked);
/// conn.write_all(b"BYE\n").await.unwrap(); // inside the window
/// let n = client.read(&mut buf).await.unwrap();
/// assert_eq!(&buf[..n], b"BYE\n");
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Ending {
    inner: Arc<Inner>,
}

impl PartialEq for Ending {
    /// Two handles are equal when they are clones of one signal.
    fn eq(&self, other: &Ending) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for Ending {}

impl Ending {
    /// A signal that has not fired.
    #[cfg(test)]
    pub(crate) fn new() -> Ending {
        Ending::default()
    }

    /// Fires the signal with `why`, waking every waiter. Only the first
    /// call counts; returns whether this one did.
    pub(crate) fn fire(&self, why: Ended) -> bool {
        let code = match why {
            Ended::Revoked => REVOKED,
            Ended::IdleTimeout => IDLE_TIMEOUT,
        };
        // Release: pairs with the Acquire in `reason`, so a waiter that sees
        // the reason also sees what the connection did before firing.
        let first = self
            .inner
            .state
            .compare_exchange(OPEN, code, Ordering::Release, Ordering::Relaxed)
            .is_ok();
        if first {
            self.inner.notify.notify_waiters();
        }
        first
    }

    /// Why the connection was ended, once it was.
    pub fn reason(&self) -> Option<Ended> {
        match self.inner.state.load(Ordering::Acquire) {
            REVOKED => Some(Ended::Revoked),
            IDLE_TIMEOUT => Some(Ended::IdleTimeout),
            _ => None,
        }
    }

    /// Whether the signal has fired.
    pub fn is_ended(&self) -> bool {
        self.reason().is_some()
    }

    /// A future that resolves, with the reason, once the signal fires (at
    /// once if it already has). Cancel-safe.
    pub fn ended(&self) -> WaitEnded<'_> {
        WaitEnded {
            ending: self,
            // Created before the first check of the state, so a firing in
            // between is not missed: `notify_waiters` wakes every `Notified`
            // that exists, polled or not.
            notified: self.inner.notify.notified(),
        }
    }
}

/// The future [`Ending::ended`] returns.
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct WaitEnded<'a> {
    ending: &'a Ending,
    #[pin]
    notified: Notified<'a>,
}

impl std::fmt::Debug for WaitEnded<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitEnded")
            .field("reason", &self.ending.reason())
            .finish()
    }
}

impl Future for WaitEnded<'_> {
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let this = self.project();
        if let Some(why) = this.ending.reason() {
            return Poll::Ready(why);
        }
        match this.notified.poll(cx) {
            // The state is stored before the waiters are woken.
            Poll::Ready(()) => match this.ending.reason() {
                Some(why) => Poll::Ready(why),
                None => unreachable!("an Ending is only notified after it fired"),
            },
            Poll::Pending => Poll::Pending,
        }
    }
}

/// An [`Admitted`](crate::Admitted) connection's end: watches its
/// permit's revocation and its idle timer, fires its [`Ending`] when either
/// ends it, and keeps the goodbye window that follows.
#[derive(Debug, Default)]
pub(crate) struct EndWatch {
    idle: Option<Idle>,
    ended: Option<Ended>,
    /// Fired when `ended` is first set.
    ending: Ending,
    /// The goodbye window's length, if one was asked for.
    goodbye: Option<Duration>,
    /// While the goodbye window is open: the timer that closes it.
    closing: Option<Pin<Box<Sleep>>>,
}

#[derive(Debug)]
struct Idle {
    timeout: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
}

/// Where an [`Admitted`](crate::Admitted) connection is in its life.
pub(crate) enum State {
    /// Serving normally.
    Open,
    /// Ended from outside, inside the goodbye window: writes work, reads wait.
    Closing,
    /// Ended: reads see end-of-file, writes fail with this reason's error.
    Ended(Ended),
}

impl EndWatch {
    /// Ends the connection after `timeout` without traffic.
    pub(crate) fn set_idle_timeout(&mut self, timeout: Duration) {
        let now = Instant::now();
        self.idle = Some(Idle {
            timeout,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
        });
    }

    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        self.idle.as_ref().map(|i| i.timeout)
    }

    pub(crate) fn set_goodbye_window(&mut self, window: Duration) {
        self.goodbye = Some(window);
    }

    pub(crate) fn goodbye_window(&self) -> Option<Duration> {
        self.goodbye
    }

    pub(crate) fn ending(&self) -> Ending {
        self.ending.clone()
    }

    pub(crate) fn ended(&self) -> Option<Ended> {
        self.ended
    }

    /// Bytes moved: the idle timer starts over (lazily: the timer is only
    /// re-armed when it fires).
    pub(crate) fn note_io(&mut self) {
        if let Some(idle) = self.idle.as_mut() {
            idle.last = Instant::now();
        }
    }

    /// Checks revocation, the idle timer and the goodbye window,
    /// registering for whichever can change the state next. Fires the end
    /// signal when the connection is first ended.
    pub(crate) fn poll(&mut self, permit: &Permit, cx: &mut Context<'_>) -> State {
        let ended = match self.ended {
            Some(ended) => ended,
            None => {
                let why = if permit.poll_revoked(cx).is_ready() {
                    Some(Ended::Revoked)
                } else if let Some(idle) = self.idle.as_mut() {
                    let mut why = None;
                    while idle.timer.as_mut().poll(cx).is_ready() {
                        let deadline = idle.last + idle.timeout;
                        if Instant::now() >= deadline {
                            why = Some(Ended::IdleTimeout);
                            break;
                        }
                        // Bytes moved since the timer was set: re-arm it
                        // for the real deadline (and poll again to register).
                        idle.timer.as_mut().reset(deadline);
                    }
                    why
                } else {
                    None
                };
                let Some(why) = why else {
                    return State::Open;
                };
                self.ended = Some(why);
                if let Some(window) = self.goodbye {
                    self.closing = Some(Box::pin(tokio::time::sleep(window)));
                }
                self.ending.fire(why);
                why
            }
        };
        if let Some(closing) = self.closing.as_mut() {
            if closing.as_mut().poll(cx).is_pending() {
                return State::Closing;
            }
            self.closing = None;
        }
        State::Ended(ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_once_and_wakes_every_waiter() {
        let ending = Ending::new();
        let a = ending.clone();
        let b = ending.clone();
        assert_eq!(a, b);
        assert_ne!(a, Ending::new());
        let wa = tokio::spawn(async move { a.ended().await });
        let wb = tokio::spawn(async move { b.ended().await });
        tokio::task::yield_now().await;
        assert!(!ending.is_ended());
        assert!(ending.fire(Ended::IdleTimeout));
        assert!(!ending.fire(Ended::Revoked), "only the first firing counts");
        assert_eq!(wa.await.unwrap(), Ended::IdleTimeout);
        assert_eq!(wb.await.unwrap(), Ended::IdleTimeout);
        // Already fired: resolves at once.
        assert_eq!(ending.ended().await, Ended::IdleTimeout);
        assert_eq!(ending.reason(), Some(Ended::IdleTimeout));
    }
}
