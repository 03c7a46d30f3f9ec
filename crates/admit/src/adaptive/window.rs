//! Samples, the window they are summed into, and the lock-free recorder
//! that lets many threads report into one controller.
//!
//! # Implementation notes
//!
//! The [`Recorder`] is a handful of independent atomic counters. Every
//! operation is `Relaxed`: they are statistics, nothing is published through
//! them, and the owner that drains them only needs each counter's own value.
//! A drain swaps each counter out one after another, so a sample recorded
//! during a drain may have some of its fields counted in this window and
//! the rest in the next; a window is a statistical summary and one sample
//! split across two windows does not move a decision.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered: its latency says how loaded the service is.
    Ok,
    /// Failed because the service was overloaded (a 5xx, a refused
    /// connection): a loss signal, its latency is not used.
    Dropped,
    /// Gave up waiting: a loss signal, its latency is only the timeout.
    Timeout,
}

/// One completed request, as a controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When it completed, from any fixed origin the caller chooses (the
    /// controller never reads a clock; every time it knows comes from here
    /// and from [`Controller::tick`](super::Controller::tick)).
    pub when: Duration,
    /// How long it took.
    pub latency: Duration,
    /// Requests in flight when it was admitted, itself included.
    pub in_flight: u32,
    /// How it ended.
    pub outcome: Outcome,
}

/// The summary of the samples of one window, handed to an
/// [`Algorithm`](super::Algorithm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    /// When the window opened.
    pub start: Duration,
    /// When it closed.
    pub end: Duration,
    /// Requests answered.
    pub ok: u64,
    /// Requests dropped.
    pub dropped: u64,
    /// Requests timed out.
    pub timeouts: u64,
    /// Sum of the latencies of answered requests.
    pub ok_latency_sum: Duration,
    /// Sum of the latencies of every request, timeouts and drops included
    /// (what a controller that ignores outcomes sees).
    pub all_latency_sum: Duration,
    /// The lowest latency of an answered request.
    pub min_latency: Option<Duration>,
    /// The most requests in flight at any admission in the window.
    pub max_in_flight: u32,
}

impl Window {
    /// Every request in the window.
    pub fn samples(&self) -> u64 {
        self.ok + self.dropped + self.timeouts
    }

    /// Dropped and timed-out requests.
    pub fn lost(&self) -> u64 {
        self.dropped + self.timeouts
    }

    /// The mean latency of answered requests.
    pub fn mean_latency(&self) -> Option<Duration> {
        (self.ok > 0).then(|| div(self.ok_latency_sum, self.ok))
    }

    /// The mean latency of every request, whatever its outcome.
    pub fn mean_latency_all(&self) -> Option<Duration> {
        let n = self.samples();
        (n > 0).then(|| div(self.all_latency_sum, n))
    }

    /// Adds one sample.
    pub fn add(&mut self, s: &Sample) {
        match s.outcome {
            Outcome::Ok => {
                self.ok += 1;
                self.ok_latency_sum += s.latency;
                self.min_latency = Some(self.min_latency.map_or(s.latency, |m| m.min(s.latency)));
            }
            Outcome::Dropped => self.dropped += 1,
            Outcome::Timeout => self.timeouts += 1,
        }
        self.all_latency_sum += s.latency;
        self.max_in_flight = self.max_in_flight.max(s.in_flight);
    }

    fn merge(&mut self, other: &Window) {
        self.ok += other.ok;
        self.dropped += other.dropped;
        self.timeouts += other.timeouts;
        self.ok_latency_sum += other.ok_latency_sum;
        self.all_latency_sum += other.all_latency_sum;
        self.min_latency = match (self.min_latency, other.min_latency) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max_in_flight = self.max_in_flight.max(other.max_in_flight);
    }
}

fn div(d: Duration, n: u64) -> Duration {
    Duration::from_nanos((d.as_nanos() / n as u128) as u64)
}

/// A lock-free sink for samples from any thread; cheap to clone.
///
/// The owner of the [`Controller`](super::Controller) folds what was
/// recorded into its window with [`tick`](super::Controller::tick). A
/// recorder never decides anything itself, so recording costs a few relaxed
/// atomic additions and never waits.
///
/// ```
/// use admit::adaptive::{Config, Controller, Gradient, Outcome, Sample};
/// use std::time::Duration;
///
/// let limiter = admit::Limiter::builder().capacity(4).max_capacity(100).build().unwrap();
/// let mut controller = Controller::new(limiter, Gradient::default(), Config::default());
/// let recorder = controller.recorder();
/// std::thread::spawn(move || {
///     recorder.record(Sample {
///         when: Duration::from_millis(3),
///         latency: Duration::from_millis(3),
///         in_flight: 1,
///         outcome: Outcome::Ok,
///     });
/// })
/// .join()
/// .unwrap();
/// controller.tick(Duration::from_millis(5));
/// assert_eq!(controller.pending().ok, 1);
/// ```
#[derive(Clone, Default)]
pub struct Recorder {
    cells: Arc<Cells>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("ok", &self.cells.ok.load(Ordering::Relaxed))
            .finish()
    }
}

struct Cells {
    ok: AtomicU64,
    dropped: AtomicU64,
    timeouts: AtomicU64,
    ok_ns: AtomicU64,
    /// Latency of dropped and timed-out requests.
    lost_ns: AtomicU64,
    /// `u64::MAX` when no answered request was recorded.
    min_ns: AtomicU64,
    max_in_flight: AtomicU64,
}

impl Default for Cells {
    fn default() -> Self {
        Cells {
            ok: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            ok_ns: AtomicU64::new(0),
            lost_ns: AtomicU64::new(0),
            min_ns: AtomicU64::new(u64::MAX),
            max_in_flight: AtomicU64::new(0),
        }
    }
}

impl Recorder {
    /// A recorder not yet attached to any controller.
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Records one completed request. The sample's `when` is not kept: the
    /// window it lands in is the one open when the owner next drains.
    ///
    /// An answered request costs two relaxed additions and two relaxed
    /// loads; the minimum and maximum are only written (a compare-and-swap
    /// loop on most targets) when the sample actually moves them.
    pub fn record(&self, s: Sample) {
        let c = &*self.cells;
        // Saturate rather than wrap: 584 years of latency fit in a u64 of ns.
        let ns = u64::try_from(s.latency.as_nanos()).unwrap_or(u64::MAX);
        match s.outcome {
            Outcome::Ok => {
                c.ok.fetch_add(1, Ordering::Relaxed);
                c.ok_ns.fetch_add(ns, Ordering::Relaxed);
                if ns < c.min_ns.load(Ordering::Relaxed) {
                    c.min_ns.fetch_min(ns, Ordering::Relaxed);
                }
            }
            Outcome::Dropped => {
                c.dropped.fetch_add(1, Ordering::Relaxed);
                c.lost_ns.fetch_add(ns, Ordering::Relaxed);
            }
            Outcome::Timeout => {
                c.timeouts.fetch_add(1, Ordering::Relaxed);
                c.lost_ns.fetch_add(ns, Ordering::Relaxed);
            }
        }
        let in_flight = u64::from(s.in_flight);
        if in_flight > c.max_in_flight.load(Ordering::Relaxed) {
            c.max_in_flight.fetch_max(in_flight, Ordering::Relaxed);
        }
    }

    /// Moves everything recorded so far into `window` and starts afresh.
    pub(crate) fn drain_into(&self, window: &mut Window) {
        let c = &*self.cells;
        let min = c.min_ns.swap(u64::MAX, Ordering::Relaxed);
        let ok_ns = c.ok_ns.swap(0, Ordering::Relaxed);
        let lost_ns = c.lost_ns.swap(0, Ordering::Relaxed);
        let part = Window {
            ok: c.ok.swap(0, Ordering::Relaxed),
            dropped: c.dropped.swap(0, Ordering::Relaxed),
            timeouts: c.timeouts.swap(0, Ordering::Relaxed),
            ok_latency_sum: Duration::from_nanos(ok_ns),
            all_latency_sum: Duration::from_nanos(ok_ns.saturating_add(lost_ns)),
            min_latency: (min != u64::MAX).then(|| Duration::from_nanos(min)),
            max_in_flight: c.max_in_flight.swap(0, Ordering::Relaxed) as u32,
            ..Window::default()
        };
        window.merge(&part);
    }
}
