//! The controller: windows of samples in, capacity out.

use super::report;
use super::window::{Recorder, Sample, Window};
use crate::Limiter;
use std::time::Duration;

/// Which algorithm a controller runs (reported by health).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Kind {
    /// [`Aimd`](super::Aimd).
    Aimd,
    /// [`Gradient`](super::Gradient).
    Gradient,
    /// [`QueueDelay`](super::QueueDelay).
    QueueDelay,
    /// An algorithm from outside this crate.
    Custom,
}

impl Kind {
    /// `"aimd"`, `"gradient"`, `"queue_delay"` or `"custom"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Aimd => "aimd",
            Kind::Gradient => "gradient",
            Kind::QueueDelay => "queue_delay",
            Kind::Custom => "custom",
        }
    }

    pub(crate) fn code(self) -> u64 {
        match self {
            Kind::Aimd => 1,
            Kind::Gradient => 2,
            Kind::QueueDelay => 3,
            Kind::Custom => 4,
        }
    }

    pub(crate) fn from_code(code: u64) -> Kind {
        match code {
            1 => Kind::Aimd,
            2 => Kind::Gradient,
            3 => Kind::QueueDelay,
            _ => Kind::Custom,
        }
    }
}

/// Why the limit moved (or did not) at a window's close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Reason {
    /// The controller was attached and set the initial limit.
    Start,
    /// Latency is below target and the limit is in use: grow.
    Increase,
    /// On target: no change.
    Hold,
    /// Fewer requests in flight than the limit could use: growing would
    /// only loosen a limit nobody tests, so it holds.
    AppLimited,
    /// Latency or queueing delay above target: shrink.
    Decrease,
    /// Requests were dropped or timed out: shrink.
    Loss,
}

impl Reason {
    /// `"start"`, `"increase"`, `"hold"`, `"app_limited"`, `"decrease"` or `"loss"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Start => "start",
            Reason::Increase => "increase",
            Reason::Hold => "hold",
            Reason::AppLimited => "app_limited",
            Reason::Decrease => "decrease",
            Reason::Loss => "loss",
        }
    }

    pub(crate) fn code(self) -> u64 {
        match self {
            Reason::Start => 0,
            Reason::Increase => 1,
            Reason::Hold => 2,
            Reason::AppLimited => 3,
            Reason::Decrease => 4,
            Reason::Loss => 5,
        }
    }

    pub(crate) fn from_code(code: u64) -> Reason {
        match code {
            1 => Reason::Increase,
            2 => Reason::Hold,
            3 => Reason::AppLimited,
            4 => Reason::Decrease,
            5 => Reason::Loss,
            _ => Reason::Start,
        }
    }
}

/// The range a controller keeps the limit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The floor.
    pub min: u32,
    /// The ceiling.
    pub max: u32,
}

/// What an algorithm decided for one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The new limit, before it is clamped to the bounds. Kept as a real
    /// number so that small steps accumulate instead of rounding away.
    pub limit: f64,
    /// Why.
    pub reason: Reason,
}

/// An adaptive-limit algorithm: one decision per closed window.
///
/// Implement it to run your own algorithm through a [`Controller`] (the
/// simulator and its reference ports of other libraries' algorithms do).
pub trait Algorithm {
    /// What health reports as the algorithm.
    fn kind(&self) -> Kind {
        Kind::Custom
    }

    /// Decides the limit after `window`, given the current (unrounded)
    /// limit and the controller's bounds.
    fn update(&mut self, window: &Window, limit: f64, bounds: Bounds) -> Step;
}

/// How a [`Controller`] windows samples and bounds the limit.
///
/// ```
/// use admit::adaptive::Config;
/// use std::time::Duration;
/// let config = Config::default().min(2).max(500).interval(Duration::from_millis(200));
/// assert_eq!(config.initial, 1);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The floor (default 1). One request at a time is the no-load point;
    /// the controller must be able to get there when every call fails, and
    /// the latency measured there is what re-bases the no-load latency.
    pub min: u32,
    /// The ceiling (default: the limiter's `max_capacity`, also the most it
    /// could be set to).
    pub max: Option<u32>,
    /// The limit set when the controller is attached (default 1). Low on
    /// purpose: the first window then measures the no-load latency with
    /// nothing queued (starting at 4 against a knee of 10 would already
    /// count a sixth of queueing as "no load"), and slow start doubles from
    /// there, reaching a knee of 1,000 in about a second. Set it to the old
    /// fixed cap to avoid shedding while the first windows run; the
    /// estimate is then taken at that concurrency and corrected downward as
    /// soon as a quieter window is seen.
    pub initial: u32,
    /// The shortest window (default 100 ms): long enough to hold many
    /// requests of a service answering in milliseconds, short enough to
    /// react to a capacity step within a few hundred milliseconds. It is
    /// also CoDel's interval, over which a standing queue is judged.
    pub interval: Duration,
    /// Samples a window needs before it is judged (default 10), so a
    /// decision never rests on one or two requests. A window that has not
    /// reached it is judged anyway after ten intervals, so a service that
    /// answers rarely (every call timing out) is still acted on.
    pub min_samples: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            min: 1,
            max: None,
            initial: 1,
            interval: Duration::from_millis(100),
            min_samples: 10,
        }
    }
}

impl Config {
    /// Sets [`min`](Self::min) (at least 1).
    pub fn min(mut self, n: u32) -> Self {
        self.min = n.max(1);
        self
    }
    /// Sets [`max`](Self::max).
    pub fn max(mut self, n: u32) -> Self {
        self.max = Some(n);
        self
    }
    /// Sets [`initial`](Self::initial).
    pub fn initial(mut self, n: u32) -> Self {
        self.initial = n;
        self
    }
    /// Sets [`interval`](Self::interval).
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }
    /// Sets [`min_samples`](Self::min_samples) (at least 1).
    pub fn min_samples(mut self, n: u64) -> Self {
        self.min_samples = n.max(1);
        self
    }
}

/// One change (or confirmation) of the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// The time of the window's close (the caller's clock).
    pub at: Duration,
    /// The limit before.
    pub previous: u32,
    /// The limit after.
    pub limit: u32,
    /// Why.
    pub reason: Reason,
    /// The window the decision was made on.
    pub window: Window,
}

/// Sets a limiter's capacity from samples of the work it admits.
///
/// Owned by one caller (`&mut self`): feed it [`Sample`]s with
/// [`sample`](Self::sample), or let other threads [`record`](Recorder::record)
/// into its [`recorder`](Self::recorder) and call [`tick`](Self::tick)
/// with the current time now and then. Every interval (once enough samples
/// arrived) the window closes, the [`Algorithm`] decides, and the limit is
/// applied with [`Limiter::set_capacity`]. Health snapshots of the limiter
/// then report the algorithm, the limit and the last decision.
///
/// Dropping the controller leaves the capacity where it last set it.
#[derive(Debug)]
pub struct Controller<A> {
    limiter: Limiter,
    algorithm: A,
    bounds: Bounds,
    interval: Duration,
    min_samples: u64,
    limit: f64,
    pending: Window,
    window_start: Option<Duration>,
    recorder: Recorder,
    last: Option<Decision>,
    decisions: u64,
}

impl<A: Algorithm> Controller<A> {
    /// Attaches a controller to `limiter` and sets its capacity to
    /// `config.initial` (clamped to the bounds, and the bounds to the
    /// limiter's `max_capacity`).
    pub fn new(limiter: Limiter, algorithm: A, config: Config) -> Controller<A> {
        let max = config
            .max
            .unwrap_or(u32::MAX)
            .min(limiter.max_capacity())
            .max(1);
        let min = config.min.clamp(1, max);
        let initial = config.initial.clamp(min, max);
        let c = Controller {
            limiter,
            algorithm,
            bounds: Bounds { min, max },
            interval: config.interval,
            min_samples: config.min_samples.max(1),
            limit: f64::from(initial),
            pending: Window::default(),
            window_start: None,
            recorder: Recorder::new(),
            last: None,
            decisions: 0,
        };
        c.apply(initial);
        c.publish(initial, Reason::Start);
        c
    }

    /// Folds one sample into the open window, and closes the window if it
    /// is due at `sample.when`.
    pub fn sample(&mut self, sample: Sample) -> Option<Decision> {
        self.pending.add(&sample);
        self.maybe_close(sample.when)
    }

    /// Folds in what the [`Recorder`] collected, and closes the window if
    /// it is due at `now`.
    pub fn tick(&mut self, now: Duration) -> Option<Decision> {
        self.recorder.drain_into(&mut self.pending);
        self.maybe_close(now)
    }

    /// A recorder feeding this controller (clones share it).
    pub fn recorder(&self) -> Recorder {
        self.recorder.clone()
    }

    /// The current limit, as applied to the limiter.
    pub fn limit(&self) -> u32 {
        self.rounded()
    }

    /// The bounds the limit is kept in.
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// The last decision, if a window has closed.
    pub fn last_decision(&self) -> Option<&Decision> {
        self.last.as_ref()
    }

    /// The samples of the window still open.
    pub fn pending(&self) -> &Window {
        &self.pending
    }

    /// The algorithm.
    pub fn algorithm(&self) -> &A {
        &self.algorithm
    }

    /// The algorithm, mutably.
    pub fn algorithm_mut(&mut self) -> &mut A {
        &mut self.algorithm
    }

    /// The limiter it controls.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    fn maybe_close(&mut self, now: Duration) -> Option<Decision> {
        let start = *self.window_start.get_or_insert(now);
        let age = now.saturating_sub(start);
        if age < self.interval {
            return None;
        }
        let n = self.pending.samples();
        if n == 0 {
            // Idle: nothing to judge. The next window starts now, so a
            // burst after a quiet hour is not averaged over the hour.
            self.window_start = Some(now);
            return None;
        }
        if n < self.min_samples && age < self.interval * 10 {
            return None;
        }
        let window = Window {
            start,
            end: now,
            ..std::mem::take(&mut self.pending)
        };
        self.window_start = Some(now);

        let previous = self.rounded();
        let step = self.algorithm.update(&window, self.limit, self.bounds);
        if step.limit.is_finite() {
            self.limit = step
                .limit
                .clamp(f64::from(self.bounds.min), f64::from(self.bounds.max));
        }
        let limit = self.rounded();
        self.apply(limit);
        if limit != previous {
            tracing::debug!(
                limiter = self.limiter.name(),
                algorithm = self.algorithm.kind().as_str(),
                from = previous,
                to = limit,
                reason = step.reason.as_str(),
                "adaptive limit changed"
            );
        }
        let decision = Decision {
            at: now,
            previous,
            limit,
            reason: step.reason,
            window,
        };
        self.decisions += 1;
        self.publish(limit, step.reason);
        self.last = Some(decision);
        Some(decision)
    }

    fn rounded(&self) -> u32 {
        (self.limit.round() as u32).clamp(self.bounds.min, self.bounds.max)
    }

    fn apply(&self, limit: u32) {
        if self.limiter.capacity() != limit {
            // Cannot fail: `max` was clamped to the limiter's max_capacity.
            let _ = self.limiter.set_capacity(limit);
        }
    }

    fn publish(&self, limit: u32, reason: Reason) {
        report::shared(&self.limiter).publish(report::Published {
            kind: self.algorithm.kind(),
            limit,
            bounds: self.bounds,
            reason,
            decisions: self.decisions,
        });
    }
}

impl<A> Drop for Controller<A> {
    fn drop(&mut self) {
        report::shared(&self.limiter).detach();
    }
}
