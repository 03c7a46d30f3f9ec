//! What to do when `accept()` fails, and the back-off that keeps a starved
//! accept loop from spinning.
//!
//! `accept()` fails for two very different reasons:
//!
//! * **The process is out of a resource** (`EMFILE`, `ENFILE`, `ENOBUFS`,
//!   `ENOMEM`). The pending connection stays in the kernel's backlog and the
//!   listener stays readable, so retrying at once fails again at once: a
//!   loop that retries spins at 100 % CPU, and a loop that exits takes the
//!   server down. The right answer is to wait, longer each time (1 ms
//!   doubling to 1 s), and try again; see [`Backoff`].
//! * **One connection went bad** between the handshake and `accept()`
//!   (`ECONNABORTED`, `ECONNRESET`, `EPERM` from a firewall, `EINTR`, …).
//!   Nothing is wrong with the listener; the loop skips it and accepts the
//!   next.
//!
//! Anything else concerns the listener itself (`EBADF`, `EINVAL`, …) and is
//! returned to the caller, with the back-off armed so that a caller who
//! simply calls `accept()` again does not spin either.

use std::io;
use std::time::{Duration, Instant};

/// The first back-off delay after a resource error.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(1);
/// The longest back-off delay: a starved listener retries at least this often.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How an `accept()` error is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptErrorKind {
    /// Out of descriptors, buffers or memory: back off and retry.
    Resource,
    /// Only the connection being accepted failed: skip it.
    Connection,
    /// The listener itself is broken: report it to the caller.
    Fatal,
}

/// Sorts an `accept()` error into an [`AcceptErrorKind`].
pub(crate) fn classify(err: &io::Error) -> AcceptErrorKind {
    if let Some(code) = err.raw_os_error() {
        return match code {
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => AcceptErrorKind::Resource,
            libc::ECONNABORTED
            | libc::ECONNRESET
            | libc::ECONNREFUSED
            | libc::EPERM
            | libc::EINTR
            | libc::EAGAIN
            | libc::EPROTO
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::EHOSTUNREACH
            | libc::ENETDOWN
            | libc::ENETUNREACH
            | libc::ETIMEDOUT => AcceptErrorKind::Connection,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            libc::ENONET => AcceptErrorKind::Connection,
            _ => AcceptErrorKind::Fatal,
        };
    }
    match err.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionRefused
        | io::ErrorKind::Interrupted
        | io::ErrorKind::WouldBlock
        | io::ErrorKind::PermissionDenied
        | io::ErrorKind::TimedOut => AcceptErrorKind::Connection,
        io::ErrorKind::OutOfMemory => AcceptErrorKind::Resource,
        _ => AcceptErrorKind::Fatal,
    }
}

/// Exponential back-off from [`MIN_BACKOFF`] to [`MAX_BACKOFF`].
///
/// Each [`next_delay`](Self::next_delay) doubles the delay up to the cap;
/// [`reset`](Self::reset) (after a successful accept) starts over.
#[derive(Debug, Clone, Default)]
pub(crate) struct Backoff {
    current: Option<Duration>,
}

impl Backoff {
    /// A back-off that has not failed yet.
    pub(crate) fn new() -> Backoff {
        Backoff { current: None }
    }

    /// The delay to wait before the next attempt; doubles each call.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let next = match self.current {
            None => MIN_BACKOFF,
            Some(d) => (d * 2).min(MAX_BACKOFF),
        };
        self.current = Some(next);
        next
    }

    /// Starts over from [`MIN_BACKOFF`] (call after a success).
    pub(crate) fn reset(&mut self) {
        self.current = None;
    }
}

/// Lets one warning through per `period`, counting the ones it held back.
#[derive(Debug)]
pub(crate) struct WarnLimiter {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    pub(crate) fn new(period: Duration) -> WarnLimiter {
        WarnLimiter {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last warning)` if a warning may be logged now.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.period => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..12).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), MIN_BACKOFF);
    }

    #[test]
    fn warnings_are_rate_limited() {
        let mut w = WarnLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(w.allow(t0), Some(0));
        assert_eq!(w.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(w.allow(t0 + Duration::from_millis(500)), None);
        assert_eq!(w.allow(t0 + Duration::from_millis(1001)), Some(2));
    }

    #[test]
    fn classification() {
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(
                classify(&io::Error::from_raw_os_error(code)),
                AcceptErrorKind::Resource
            );
        }
        for code in [
            libc::ECONNABORTED,
            libc::ECONNRESET,
            libc::EPERM,
            libc::EINTR,
        ] {
            assert_eq!(
                classify(&io::Error::from_raw_os_error(code)),
                AcceptErrorKind::Connection
            );
        }
        for code in [libc::EBADF, libc::EINVAL, libc::ENOTSOCK] {
            assert_eq!(
                classify(&io::Error::from_raw_os_error(code)),
                AcceptErrorKind::Fatal
            );
        }
    }
}
