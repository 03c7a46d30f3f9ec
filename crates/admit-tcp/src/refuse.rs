//! Answering refused connections on tasks of their own: the [`Answer`]
//! trait, the [`Refused`] connection it is handed, and the bounds the
//! listener keeps on them (a time limit each, a number at once).
//!
//! The policies that write a few bytes (or nothing) close a refused
//! connection inside the accept loop without registering it with the
//! reactor. Some protocols must hear the client first: an HTTP client sees
//! an answer sent before its request as a protocol error. An [`Answer`]
//! does that work on a task of its own, and may even admit the connection
//! after all, on a permit it found (the limiter's reserve, say).

use crate::listener::Shared;
use crate::per_ip::PerIpGuard;
use admit::{Limiter, Permit, Rejected};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedSender;

/// The default for [`Builder::refusal_timeout`](crate::Builder::refusal_timeout).
pub const DEFAULT_REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// The default for [`Builder::max_refusals`](crate::Builder::max_refusals).
pub const DEFAULT_MAX_REFUSALS: usize = 1024;

/// The future an [`Answer`] returns.
pub type AnswerFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Answers connections an [`AdmitListener`](crate::AdmitListener) refused,
/// each on a task of its own (set with
/// [`Builder::answer_refusals`](crate::Builder::answer_refusals)).
///
/// The listener bounds every answer by
/// [`refusal_timeout`](crate::Builder::refusal_timeout) (then the task is
/// dropped and the socket closed) and the answers in progress by
/// [`max_refusals`](crate::Builder::max_refusals) (beyond it a refused
/// connection is closed unanswered), so a flood of refusals cannot grow
/// memory.
///
/// ```
/// use admit_tcp::{AdmitListener, Answer, AnswerFuture, Refused};
/// use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
///
/// /// Reads the client's greeting line, then says why it is turned away.
/// #[derive(Debug)]
/// struct AfterHello;
///
/// impl Answer for AfterHello {
///     fn answer(&self, refused: Refused) -> AnswerFuture {
///         Box::pin(async move {
///             let reason = refused.reason();
///             let mut stream = BufReader::new(refused.into_stream());
///             let mut line = String::new();
///             if stream.read_line(&mut line).await.is_ok() {
///                 let bye = format!("BUSY {}\n", reason.as_str());
///                 let _ = stream.get_mut().write_all(bye.as_bytes()).await;
///             }
///         })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let listener = AdmitListener::builder(admit::Limiter::new(100))
///     .answer_refusals(AfterHello)
///     .bind("127.0.0.1:0")
///     .await?;
/// # drop(listener); Ok(()) }
/// ```
pub trait Answer: Send + Sync + 'static {
    /// Answers one refused connection. Runs on a task of its own; the
    /// socket is closed when the future finishes or the refusal timeout
    /// passes, unless the answer admitted it ([`Refused::admit`]).
    fn answer(&self, refused: Refused) -> AnswerFuture;
}

/// A connection the listener refused, handed to an [`Answer`].
///
/// Dropping it closes the connection (and gives back its per-address
/// count, if it holds one).
pub struct Refused {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) reason: Rejected,
    pub(crate) per_ip: Option<PerIpGuard>,
    pub(crate) limiter: Limiter,
    pub(crate) readmit: UnboundedSender<Readmitted>,
}

/// A refused connection admitted after all, on its way back to the
/// listener's accept loop.
pub(crate) struct Readmitted {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) per_ip: Option<PerIpGuard>,
    pub(crate) permit: Permit,
}

impl fmt::Debug for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refused")
            .field("peer", &self.peer)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl Refused {
    /// The connection (registered with the reactor, non-blocking).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The connection, mutably: read the client's request, write the answer.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Why the connection was refused (already counted in the limiter's
    /// health): [`Rejected::PerIp`] for an address over its cap, otherwise
    /// a reason the limiter gave (full, queue full, timed out, closed).
    pub fn reason(&self) -> Rejected {
        self.reason
    }

    /// The limiter that refused it (for
    /// [`try_acquire_critical`](Limiter::try_acquire_critical), say).
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// The connection itself, for an answer that only talks and closes.
    /// Its per-address count, if any, goes back now.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Admits the connection after all, with `permit` (a reserved one from
    /// [`Limiter::try_acquire_critical`], typically): the listener's
    /// `accept` yields it, marked [`Admitted::is_reserved`](crate::Admitted::is_reserved),
    /// with its per-address count. Bytes the answer only peeked at are
    /// still there to read. Gives the connection back if the listener is
    /// gone.
    pub fn admit(self, permit: Permit) -> Result<(), Refused> {
        let Refused {
            stream,
            peer,
            reason,
            per_ip,
            limiter,
            readmit,
        } = self;
        readmit
            .send(Readmitted {
                stream,
                peer,
                per_ip,
                permit,
            })
            .map_err(|back| {
                let Readmitted { stream, per_ip, .. } = back.0;
                Refused {
                    stream,
                    peer,
                    reason,
                    per_ip,
                    limiter,
                    readmit,
                }
            })
    }
}

/// How a listener answers refused connections off its accept loop.
#[derive(Clone)]
pub(crate) struct Answering {
    pub(crate) answer: Arc<dyn Answer>,
    pub(crate) timeout: Duration,
    pub(crate) max: usize,
}

impl fmt::Debug for Answering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answering")
            .field("timeout", &self.timeout)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Answering {
    /// Starts answering `refused` on a task of its own. The caller checked
    /// the bound on answers in progress.
    pub(crate) fn spawn(&self, shared: &Arc<Shared>, refused: Refused) {
        // Relaxed: a bound, not a synchronisation point.
        shared.answering.fetch_add(1, Ordering::Relaxed);
        let guard = InProgress(shared.clone());
        let answer = self.answer.answer(refused);
        let timeout = self.timeout;
        tokio::spawn(async move {
            let _guard = guard;
            let _ = tokio::time::timeout(timeout, answer).await;
        });
    }
}

/// One answer in progress; counted down when its task ends.
struct InProgress(Arc<Shared>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Ordering::Relaxed);
    }
}
