//! The queue-delay controller.

use super::controller::{Algorithm, Bounds, Kind, Step};
use super::latency::{LatencyState, Verdict};
use super::noload::NoLoad;
use super::window::Window;
use std::time::Duration;

/// Keeps the queueing delay — the latency above the no-load latency — near
/// a target, judged once per window (the controller's interval, 100 ms by
/// default), as CoDel judges a standing queue over its interval and
/// Breakwater steers a server's queueing delay to a target.
///
/// Each window: `delay = mean latency − noload`; the limit is multiplied by
/// `(target / delay) ^ gain`, clamped to `[0.5, 2]`. Far below the target
/// (a sixteenth of it or less) that doubles the limit, slow start's pace;
/// near it the step is proportional to the error; far above it halves,
/// the most one window may take, so one outlier window cannot collapse
/// the limit. Loss and idle limits are handled as
/// in [`Gradient`](super::Gradient), and the no-load latency is the same
/// non-drifting [`NoLoad`] estimate.
///
/// Unlike a latency ratio, the target is absolute, so it holds the same
/// delay budget for a 1 ms service and a 100 ms one: choose this one when
/// you can say how much queueing your callers tolerate.
///
/// ```
/// use admit::adaptive::{Algorithm, Bounds, QueueDelay, Window};
/// use std::time::Duration;
///
/// let mut q = QueueDelay::default();
/// let bounds = Bounds { min: 1, max: 1000 };
/// let ms = Duration::from_millis;
/// let window = |mean: u64| Window {
///     ok: 100,
///     ok_latency_sum: ms(mean) * 100,
///     max_in_flight: 50,
///     ..Window::default()
/// };
/// q.update(&window(10), 50.0, bounds); // the no-load latency: 10 ms
/// // 20 ms of queueing against a 5 ms target: shrink.
/// assert!(q.update(&window(30), 50.0, bounds).limit < 50.0);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QueueDelay {
    /// The queueing delay to hold (default 5 ms, CoDel's target): small
    /// next to most request budgets, large enough that a service running at
    /// its knee keeps a few requests queued and so never idles between
    /// completions.
    pub target: Duration,
    /// The exponent of the step (default 0.25). A knee where delay grows
    /// with the 4th power of concurrency lands on the target in one window;
    /// a linear queue (delay proportional to the excess concurrency) comes
    /// within a quarter of the error per window without overshooting.
    pub gain: f64,
    /// As [`Gradient::loss_tolerance`](super::Gradient::loss_tolerance) (default 0.05).
    pub loss_tolerance: f64,
    /// As [`Gradient::loss_backoff`](super::Gradient::loss_backoff) (default 0.7).
    pub loss_backoff: f64,
    state: LatencyState,
}

impl Default for QueueDelay {
    fn default() -> Self {
        QueueDelay {
            target: Duration::from_millis(5),
            gain: 0.25,
            loss_tolerance: 0.05,
            loss_backoff: 0.7,
            state: LatencyState::default(),
        }
    }
}

impl QueueDelay {
    /// Sets [`target`](Self::target).
    pub fn target(mut self, d: Duration) -> Self {
        self.target = d.max(Duration::from_micros(1));
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

impl Algorithm for QueueDelay {
    fn kind(&self) -> Kind {
        Kind::QueueDelay
    }

    fn update(&mut self, window: &Window, limit: f64, bounds: Bounds) -> Step {
        let loss = (self.loss_tolerance, self.loss_backoff);
        let (target, gain) = (self.target.as_secs_f64(), self.gain);
        self.state
            .step(window, limit, bounds, loss, |noload, mean| {
                let delay = (mean - noload).max(target / 1e3);
                let factor = (target / delay).powf(gain).clamp(0.5, 2.0);
                Verdict {
                    factor,
                    next: limit * factor,
                }
            })
    }
}
