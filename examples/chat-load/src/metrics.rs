//! Measurements: latency histograms and a time line of what happened.
//!
//! A load run records hundreds of thousands of latencies from many tasks at
//! once. [`Histogram`] is an HdrHistogram (the `hdrhistogram` crate) with
//! exact count, sum, min and max beside it; it answers percentiles within
//! its precision (two significant digits, 1 %, by default), which is plenty
//! for p50 / p99 / p99.9. [`AtomicHistogram`] is what the tasks share: a few
//! histograms behind their own locks, each thread recording into one of its
//! own, so a lock is almost never contended; reading it merges them into a
//! plain [`Histogram`].
//!
//! [`Timeline`] cuts the run into fixed bins (250 ms by default) and counts,
//! per bin, connections admitted, rejected and failed, the highest `in_use`
//! seen on `/health`, and the latencies recorded in that bin. It is what the
//! plot draws.

use serde::Serialize;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Largest value a histogram keeps apart; larger ones are recorded as this
/// (2^37 µs is about 38 hours). min, max and the mean stay exact.
const MAX_VALUE: u64 = (1 << 37) - 1;

/// Default precision: two significant digits (1 %).
pub const DEFAULT_SIGFIG: u8 = 2;

/// A histogram of values (microseconds by convention) that answers
/// percentiles. Built by [`AtomicHistogram::snapshot`] or by recording
/// directly.
#[derive(Debug, Clone)]
pub struct Histogram {
    hdr: hdrhistogram::Histogram<u64>,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(DEFAULT_SIGFIG)
    }
}

impl Histogram {
    /// An empty histogram keeping `sigfig` significant digits (1 to 5).
    /// Its buckets grow with the largest value recorded, so an unused
    /// histogram costs next to nothing.
    pub fn new(sigfig: u8) -> Self {
        Histogram {
            hdr: hdrhistogram::Histogram::new(sigfig).expect("sigfig must be in 1..=5"),
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Records one value.
    pub fn record(&mut self, v: u64) {
        // Auto-resizing and clamped below the type's range: cannot fail.
        self.hdr
            .record(v.min(MAX_VALUE))
            .expect("an auto-resizing histogram takes any value up to MAX_VALUE");
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        self.hdr
            .add(&other.hdr)
            .expect("an auto-resizing histogram takes any other");
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.hdr.len()
    }

    /// Smallest value recorded, if any.
    pub fn min(&self) -> Option<u64> {
        (self.count() > 0).then_some(self.min)
    }

    /// Largest value recorded, if any.
    pub fn max(&self) -> Option<u64> {
        (self.count() > 0).then_some(self.max)
    }

    /// Arithmetic mean, if any value was recorded.
    pub fn mean(&self) -> Option<f64> {
        (self.count() > 0).then(|| self.sum as f64 / self.count() as f64)
    }

    /// The value at quantile `q` (0.0..=1.0): the smallest recorded value
    /// such that at least `q` of all values are less or equal, within the
    /// histogram's precision (the middle of its bucket, kept within the
    /// exact min and max). `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count() == 0 {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        if q >= 1.0 {
            return Some(self.max);
        }
        let v = self.hdr.median_equivalent(self.hdr.value_at_quantile(q));
        Some(v.clamp(self.min, self.max))
    }

    /// p50, p99, p99.9 and max in milliseconds, for reports.
    pub fn summary_ms(&self) -> LatencySummary {
        let ms = |v: Option<u64>| v.map(|us| us as f64 / 1000.0);
        LatencySummary {
            count: self.count(),
            p50_ms: ms(self.quantile(0.50)),
            p99_ms: ms(self.quantile(0.99)),
            p999_ms: ms(self.quantile(0.999)),
            max_ms: ms(self.max()),
            mean_ms: self.mean().map(|us| us / 1000.0),
        }
    }
}

/// The usual latency figures, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// 99.9th percentile.
    pub p999_ms: Option<f64>,
    /// Largest sample.
    pub max_ms: Option<f64>,
    /// Mean.
    pub mean_ms: Option<f64>,
}

/// How many histograms an [`AtomicHistogram`] spreads its recorders over.
const STRIPES: usize = 8;

/// Which stripe this thread records into: threads take stripes in turn, so
/// a runtime's worker threads each have one to themselves.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// A histogram many tasks record into at once: each thread records into
/// one of a few striped histograms under a lock almost no one else takes.
#[derive(Debug)]
pub struct AtomicHistogram {
    stripes: Box<[Mutex<Histogram>]>,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self::new(DEFAULT_SIGFIG)
    }
}

impl AtomicHistogram {
    /// An empty histogram; see [`Histogram::new`].
    pub fn new(sigfig: u8) -> Self {
        AtomicHistogram {
            stripes: (0..STRIPES)
                .map(|_| Mutex::new(Histogram::new(sigfig)))
                .collect(),
        }
    }

    /// Records one value.
    pub fn record(&self, v: u64) {
        // A panic while recording cannot leave a histogram half-updated in
        // a way that matters to a measurement, so a poisoned lock is used.
        self.stripes[stripe()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(v);
    }

    /// Records a duration in microseconds.
    pub fn record_duration(&self, d: Duration) {
        self.record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Everything recorded so far, merged into one histogram.
    pub fn snapshot(&self) -> Histogram {
        let mut all = {
            let first = self.stripes[0]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            first.clone()
        };
        for stripe in &self.stripes[1..] {
            all.merge(&stripe.lock().unwrap_or_else(PoisonError::into_inner));
        }
        all
    }
}

/// Precision of the per-bin latency histograms (one significant digit:
/// within about 6 % at the values measured, enough for a plot).
const BIN_SIGFIG: u8 = 1;

#[derive(Debug)]
struct Bin {
    admitted: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    in_use_max: AtomicI64,
    connected_max: AtomicI64,
    latency: AtomicHistogram,
}

impl Bin {
    fn new() -> Self {
        Bin {
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            in_use_max: AtomicI64::new(-1),
            connected_max: AtomicI64::new(-1),
            latency: AtomicHistogram::new(BIN_SIGFIG),
        }
    }
}

/// What a connection attempt came to, for the time line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server let it in.
    Admitted,
    /// The server answered "busy" (HTTP 503 or TCP `BUSY`).
    Rejected,
    /// No answer: refused, reset, timed out or malformed.
    Failed,
}

/// Counters per fixed time bin since the start of the run.
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
    bin: Duration,
    bins: Box<[Bin]>,
}

/// One bin of the time line, as reported and plotted.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// Start of the bin, seconds since the run started.
    pub t_s: f64,
    /// Connections admitted in this bin.
    pub admitted: u64,
    /// Connections rejected in this bin.
    pub rejected: u64,
    /// Connection attempts that got no answer in this bin.
    pub failed: u64,
    /// Highest chat `in_use` seen on `/health` in this bin.
    pub in_use: Option<u64>,
    /// Highest number of this tool's open chat connections in this bin.
    pub connected: Option<u64>,
    /// Latency median of samples recorded in this bin (ms).
    pub p50_ms: Option<f64>,
    /// Latency 99th percentile of samples recorded in this bin (ms).
    pub p99_ms: Option<f64>,
}

impl Timeline {
    /// A time line of bins of width `bin`, long enough for `horizon`
    /// (events after it land in the last bin).
    pub fn new(start: Instant, bin: Duration, horizon: Duration) -> Self {
        let bin = bin.max(Duration::from_millis(10));
        let n = (horizon.as_secs_f64() / bin.as_secs_f64()).ceil() as usize + 1;
        Timeline {
            start,
            bin,
            bins: (0..n.min(100_000)).map(|_| Bin::new()).collect(),
        }
    }

    /// When the run started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Seconds since the start of the run.
    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn bin_at(&self, at: Instant) -> &Bin {
        let i =
            (at.saturating_duration_since(self.start).as_nanos() / self.bin.as_nanos()) as usize;
        &self.bins[i.min(self.bins.len() - 1)]
    }

    /// Counts a connection outcome now.
    pub fn outcome(&self, o: Outcome) {
        let b = self.bin_at(Instant::now());
        let c = match o {
            Outcome::Admitted => &b.admitted,
            Outcome::Rejected => &b.rejected,
            Outcome::Failed => &b.failed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a latency now.
    pub fn latency(&self, d: Duration) {
        self.bin_at(Instant::now()).latency.record_duration(d);
    }

    /// Records the server's `in_use` and this tool's connection count now.
    pub fn gauges(&self, in_use: Option<u64>, connected: u64) {
        let b = self.bin_at(Instant::now());
        if let Some(v) = in_use {
            b.in_use_max
                .fetch_max(i64::try_from(v).unwrap_or(i64::MAX), Ordering::Relaxed);
        }
        b.connected_max.fetch_max(
            i64::try_from(connected).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The bins from the start up to `end` seconds.
    pub fn samples(&self, end_s: f64) -> Vec<Sample> {
        let n = ((end_s / self.bin.as_secs_f64()).ceil() as usize).clamp(1, self.bins.len());
        let opt = |v: i64| u64::try_from(v).ok();
        self.bins[..n]
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let h = b.latency.snapshot();
                let s = h.summary_ms();
                Sample {
                    t_s: i as f64 * self.bin.as_secs_f64(),
                    admitted: b.admitted.load(Ordering::Relaxed),
                    rejected: b.rejected.load(Ordering::Relaxed),
                    failed: b.failed.load(Ordering::Relaxed),
                    in_use: opt(b.in_use_max.load(Ordering::Relaxed)),
                    connected: opt(b.connected_max.load(Ordering::Relaxed)),
                    p50_ms: s.p50_ms,
                    p99_ms: s.p99_ms,
                }
            })
            .collect()
    }

    /// Width of one bin.
    pub fn bin_width(&self) -> Duration {
        self.bin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        for v in [3, 3, 7, 100] {
            h.record(v);
        }
        assert_eq!(h.quantile(0.0), Some(3));
        assert_eq!(h.quantile(0.5), Some(3));
        assert_eq!(h.quantile(0.75), Some(7));
        assert_eq!(h.quantile(1.0), Some(100));
        assert_eq!(h.min(), Some(3));
        assert_eq!(h.max(), Some(100));
        assert_eq!(h.mean(), Some(28.25));
    }

    #[test]
    fn percentiles_of_uniform_values_within_precision() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.quantile(q).unwrap() as f64;
            assert!(
                (got - want).abs() / want < 0.02,
                "q{q}: got {got}, want {want}"
            );
        }
        assert_eq!(h.quantile(1.0), Some(100_000));
    }

    #[test]
    fn empty_histogram_has_no_percentiles() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.summary_ms(), LatencySummary::default());
    }

    #[test]
    fn huge_values_are_clamped_not_lost() {
        let mut h = Histogram::default();
        h.record(u64::MAX);
        assert_eq!(h.count(), 1);
        assert_eq!(h.quantile(0.5), Some(u64::MAX));
        assert_eq!(h.max(), Some(u64::MAX));
    }

    #[test]
    fn atomic_snapshot_and_merge_agree_with_plain_recording() {
        let a = AtomicHistogram::default();
        let mut plain = Histogram::default();
        for v in (0..5000u64).map(|i| i * 37 % 9000) {
            a.record(v);
            plain.record(v);
        }
        let snap = a.snapshot();
        assert_eq!(snap.count(), plain.count());
        for q in [0.1, 0.5, 0.9, 0.99] {
            assert_eq!(snap.quantile(q), plain.quantile(q));
        }
        let mut twice = snap.clone();
        twice.merge(&plain);
        assert_eq!(twice.count(), 10_000);
        assert_eq!(twice.quantile(0.5), plain.quantile(0.5));
    }

    #[test]
    fn recordings_from_many_threads_all_count() {
        let h = AtomicHistogram::default();
        std::thread::scope(|s| {
            for t in 0..16u64 {
                let h = &h;
                s.spawn(move || (1..=1000).for_each(|v| h.record(t * 1000 + v)));
            }
        });
        let snap = h.snapshot();
        assert_eq!(snap.count(), 16_000);
        assert_eq!(snap.min(), Some(1));
        assert_eq!(snap.max(), Some(16_000));
        let p50 = snap.quantile(0.5).unwrap() as f64;
        assert!((p50 - 8_000.0).abs() / 8_000.0 < 0.01, "{p50}");
    }

    #[test]
    fn timeline_counts_into_bins() {
        let start = Instant::now() - Duration::from_millis(600);
        let t = Timeline::new(start, Duration::from_millis(250), Duration::from_secs(2));
        t.outcome(Outcome::Admitted);
        t.outcome(Outcome::Rejected);
        t.outcome(Outcome::Rejected);
        t.gauges(Some(5), 3);
        t.latency(Duration::from_millis(4));
        let s = t.samples(1.0);
        assert_eq!(s.len(), 4);
        assert_eq!(s[2].admitted, 1);
        assert_eq!(s[2].rejected, 2);
        assert_eq!(s[2].in_use, Some(5));
        assert_eq!(s[2].connected, Some(3));
        assert_eq!(s[0].in_use, None);
        let p50 = s[2].p50_ms.unwrap();
        assert!((p50 - 4.0).abs() < 0.3, "{p50}");
    }
}
