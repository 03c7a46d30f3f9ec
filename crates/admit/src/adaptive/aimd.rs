//! Additive increase, multiplicative decrease.

use super::controller::{Algorithm, Bounds, Kind, Reason, Step};
use super::window::Window;
use std::time::Duration;

/// The classic loss-driven controller: grow by [`increase`](Self::increase)
/// per round of the limit while nothing is lost, multiply by
/// [`backoff`](Self::backoff) on a window with any loss.
///
/// A round is one limit's worth of completions (like TCP's one segment per
/// round trip), so the growth rate follows the service's own pace instead
/// of the window length. It never looks at latency unless given a
/// [`latency_threshold`](Self::latency_threshold), so on a service that
/// slows down without failing it grows to the ceiling: it is here as a
/// reference and for services whose only overload signal is failure.
///
/// ```
/// use admit::adaptive::{Aimd, Algorithm, Bounds, Window};
///
/// let mut aimd = Aimd::default();
/// let bounds = Bounds { min: 1, max: 100 };
/// let busy = Window { ok: 40, max_in_flight: 20, ..Window::default() };
/// assert_eq!(aimd.update(&busy, 20.0, bounds).limit, 22.0);
/// let lossy = Window { timeouts: 1, ..busy };
/// assert_eq!(aimd.update(&lossy, 20.0, bounds).limit, 18.0);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Aimd {
    /// Added per round without loss (default 1, TCP's additive step).
    pub increase: f64,
    /// Applied on a window with loss (default 0.9: gentle, because one
    /// lost request is weak evidence; repeated loss compounds quickly).
    pub backoff: f64,
    /// A window whose mean latency exceeds this counts as loss (default
    /// none: only drops and timeouts do).
    pub latency_threshold: Option<Duration>,
}

impl Default for Aimd {
    fn default() -> Self {
        Aimd {
            increase: 1.0,
            backoff: 0.9,
            latency_threshold: None,
        }
    }
}

impl Aimd {
    /// Sets [`increase`](Self::increase).
    pub fn increase(mut self, n: f64) -> Self {
        self.increase = n.max(0.0);
        self
    }
    /// Sets [`backoff`](Self::backoff).
    pub fn backoff(mut self, f: f64) -> Self {
        self.backoff = f.clamp(0.01, 1.0);
        self
    }
    /// Sets [`latency_threshold`](Self::latency_threshold).
    pub fn latency_threshold(mut self, d: Duration) -> Self {
        self.latency_threshold = Some(d);
        self
    }
}

impl Algorithm for Aimd {
    fn kind(&self) -> Kind {
        Kind::Aimd
    }

    fn update(&mut self, window: &Window, limit: f64, _bounds: Bounds) -> Step {
        let slow = match (self.latency_threshold, window.mean_latency()) {
            (Some(t), Some(mean)) => mean > t,
            _ => false,
        };
        if window.lost() > 0 || slow {
            return Step {
                limit: limit * self.backoff,
                reason: Reason::Loss,
            };
        }
        if f64::from(window.max_in_flight) < limit / 2.0 {
            return Step {
                limit,
                reason: Reason::AppLimited,
            };
        }
        let rounds = window.samples() as f64 / limit.max(1.0);
        Step {
            limit: limit + self.increase * rounds.max(1.0),
            reason: Reason::Increase,
        }
    }
}
