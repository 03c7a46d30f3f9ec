//! What a listener does with a connection when the limiter is full.

use std::borrow::Cow;
use std::time::Duration;

/// The message [`Policy::busy_default`] and [`Policy::Wait`] send before
/// closing: `BUSY retry-after=5\n`.
pub const DEFAULT_BUSY: &[u8] = b"BUSY retry-after=5\n";

/// What an [`AdmitListener`](crate::AdmitListener) does when the limiter has
/// no permit for a new connection. Chosen per listener with
/// [`Builder::policy`](crate::Builder::policy).
///
/// None of them blocks the accept loop: a rejected connection is closed (or
/// written to without waiting, then closed) before the next is accepted, and
/// waiting connections are polled beside the accept loop, not in it.
///
/// ```
/// use admit_tcp::Policy;
/// use std::time::Duration;
///
/// let reject = Policy::Reject;
/// let busy = Policy::busy(&b"BUSY retry-after=5\n"[..]);
/// let wait = Policy::Wait(Duration::from_millis(250));
/// let pause = Policy::Pause;
/// assert_eq!(busy, Policy::busy_default());
/// # let _ = (reject, wait, pause);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Policy {
    /// Accept and close at once (with a RST instead of a FIN when
    /// [`Builder::reset_rejected`](crate::Builder::reset_rejected) is set).
    /// Counted as `full` (or `closed` once the limiter is closed).
    Reject,
    /// Accept, write these bytes without waiting (whatever the socket buffer
    /// takes at once; a fresh socket takes a short message whole), then
    /// close. Counted as `full`.
    Busy(Cow<'static, [u8]>),
    /// Hold the accepted connection in the limiter's wait queue for up to
    /// this long; admit it if a permit comes free in time, otherwise send
    /// the busy message ([`Builder::busy_message`](crate::Builder::busy_message))
    /// and close, counted as `timeout`. A full queue (or a limiter built
    /// without one, `queue_limit(0)`) sends the busy message at once,
    /// counted as `queue_full` (or `full`).
    Wait(Duration),
    /// Stop accepting while the limiter is full and leave new connections in
    /// the kernel's backlog; resume when a permit is released. At most one
    /// connection is accepted ahead and held until a permit is free. Nothing
    /// is counted as rejected (the clients are not refused; they wait).
    Pause,
}

impl Policy {
    /// [`Policy::Busy`] with a message of your own.
    pub fn busy(message: impl Into<Cow<'static, [u8]>>) -> Policy {
        Policy::Busy(message.into())
    }

    /// [`Policy::Busy`] with [`DEFAULT_BUSY`].
    pub fn busy_default() -> Policy {
        Policy::Busy(Cow::Borrowed(DEFAULT_BUSY))
    }
}

impl Default for Policy {
    /// [`Policy::busy_default`].
    fn default() -> Policy {
        Policy::busy_default()
    }
}
