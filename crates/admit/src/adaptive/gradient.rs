//! The gradient controller.

use super::controller::{Algorithm, Bounds, Kind, Step};
use super::latency::{LatencyState, Verdict};
use super::noload::NoLoad;
use super::window::Window;

/// Moves the limit by the ratio of the no-load latency to the latency of
/// the last window, like Netflix's Gradient2, with the failure modes of
/// that family fixed:
///
/// * **Timeouts are loss, not latency.** Gradient2 averages a timed-out
///   call's latency in with the rest; when every call times out at a
///   constant 5 s the short and long averages agree, the gradient is 1, and
///   its additive term climbs the limit to the maximum (Netflix #137). Here
///   a window whose losses exceed [`loss_tolerance`](Self::loss_tolerance)
///   cuts the limit by [`loss_backoff`](Self::loss_backoff), and lost
///   requests never enter the latency average.
/// * **No growth without room.** Gradient2 adds its queue size on every
///   window whatever the gradient, so at a gradient near 0.8 the limit
///   settles where `0.8·L + q = L` and, as the long average follows the
///   short one upward, keeps climbing (PR #134). Here the limit grows only
///   when the latency is *below* target (gradient above 1) and only while
///   the limit is actually used (the most requests in flight reached half of
///   it); any gradient below 1 shrinks it.
/// * **A baseline that does not drift.** The reference is [`NoLoad`], which
///   does not follow load-induced latency upward.
///
/// Each window: `gradient = tolerance × noload / mean latency`, clamped to
/// `[0.5, 2]` (one window, however slow, takes off at most a quarter of the
/// limit at the default gain, so a single outlier window cannot collapse
/// it); the limit moves `gain` of the way to `limit × gradient`.
/// While the latency shows no queueing at all (within 10 % of the no-load
/// latency) and the limit is in use, it doubles instead (slow start), so a
/// knee of 1,000 is found in about a second from the initial limit of 1.
///
/// ```
/// use admit::adaptive::{Algorithm, Bounds, Gradient, Window};
/// use std::time::Duration;
///
/// let mut g = Gradient::default();
/// let bounds = Bounds { min: 1, max: 1000 };
/// let ms = Duration::from_millis;
/// let window = |mean: u64, in_flight: u32| Window {
///     ok: 100,
///     ok_latency_sum: ms(mean) * 100,
///     max_in_flight: in_flight,
///     ..Window::default()
/// };
/// // No queueing yet: slow start doubles.
/// assert_eq!(g.update(&window(10, 10), 10.0, bounds).limit, 20.0);
/// // Latency three times the no-load latency: shrink.
/// assert!(g.update(&window(30, 20), 20.0, bounds).limit < 20.0);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Gradient {
    /// How far latency may rise above the no-load latency before the limit
    /// shrinks (default 1.8). Twice the no-load latency is where queueing
    /// time equals service time: the knee of a saturating service, past
    /// which more concurrency buys latency and no throughput. The target
    /// sits a little under it because requests arrive at random: the
    /// concurrency the service sees averages a request or two below the
    /// limit, so aiming the *latency* just under the knee puts the *limit*
    /// on it. Lower values keep latency tighter at the cost of headroom
    /// against noise.
    pub tolerance: f64,
    /// The fraction of the way to the gradient's target taken per window
    /// (default 0.5). For a knee where latency grows with the 4th power of
    /// concurrency this lands on the target in one window; steeper knees
    /// overshoot less than one full swing, gentler ones converge in a few.
    pub gain: f64,
    /// Lost requests (dropped or timed out) tolerated as a fraction of a
    /// window before it counts as overload (default 0.05): a service's
    /// background error rate must not walk the limit down.
    pub loss_tolerance: f64,
    /// The factor applied to the limit on a window with loss (default 0.7):
    /// harder than a latency decrease because loss is the stronger signal,
    /// and at a window or two per second it takes a limit of 1,000 to the
    /// floor in under 20 decisions.
    pub loss_backoff: f64,
    state: LatencyState,
}

impl Default for Gradient {
    fn default() -> Self {
        Gradient {
            tolerance: 1.8,
            gain: 0.5,
            loss_tolerance: 0.05,
            loss_backoff: 0.7,
            state: LatencyState::default(),
        }
    }
}

impl Gradient {
    /// Sets [`tolerance`](Self::tolerance).
    pub fn tolerance(mut self, t: f64) -> Self {
        self.tolerance = t.max(1.0);
        self
    }
    /// Sets [`gain`](Self::gain).
    pub fn gain(mut self, g: f64) -> Self {
        self.gain = g.clamp(0.01, 1.0);
        self
    }
    /// Sets [`loss_tolerance`](Self::loss_tolerance).
    pub fn loss_tolerance(mut self, f: f64) -> Self {
        self.loss_tolerance = f.clamp(0.0, 1.0);
        self
    }
    /// Sets [`loss_backoff`](Self::loss_backoff).
    pub fn loss_backoff(mut self, f: f64) -> Self {
        self.loss_backoff = f.clamp(0.01, 1.0);
        self
    }
    /// The no-load latency estimate.
    pub fn noload(&self) -> &NoLoad {
        &self.state.noload
    }
}

impl Algorithm for Gradient {
    fn kind(&self) -> Kind {
        Kind::Gradient
    }

    fn update(&mut self, window: &Window, limit: f64, bounds: Bounds) -> Step {
        let loss = (self.loss_tolerance, self.loss_backoff);
        let (tolerance, gain) = (self.tolerance, self.gain);
        self.state
            .step(window, limit, bounds, loss, |noload, short| {
                let short = short.max(1e-9);
                let gradient = (tolerance * noload / short).clamp(0.5, 2.0);
                let next = if short <= noload * 1.1 {
                    limit * 2.0
                } else {
                    limit * (1.0 + gain * (gradient - 1.0))
                };
                Verdict {
                    factor: gradient,
                    next,
                }
            })
    }
}
