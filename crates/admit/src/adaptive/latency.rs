//! What the two latency controllers, [`Gradient`](super::Gradient) and
//! [`QueueDelay`](super::QueueDelay), decide the same way: loss first, then
//! the no-load estimate, then whether demand has earned the limit a rise.
//! Each controller only says how far the latency it sees should move the
//! limit.

use super::controller::{Bounds, Reason, Step};
use super::noload::NoLoad;
use super::window::Window;

/// The state a latency controller keeps besides its own tuning.
#[derive(Debug, Clone, Default)]
pub(super) struct LatencyState {
    pub(super) noload: NoLoad,
    demand: Demand,
}

/// A latency controller's verdict on one window.
pub(super) struct Verdict {
    /// How the latency wants the limit moved: above 1 it asks for more.
    pub(super) factor: f64,
    /// The limit it proposes.
    pub(super) next: f64,
}

impl LatencyState {
    /// One decision. A window that lost more than `loss_tolerance` of its
    /// requests cuts the limit by `loss_backoff`; without a latency (or a
    /// no-load estimate yet) the limit holds; otherwise `judge(noload, mean)`
    /// (both in seconds) proposes the next limit, which is held back while
    /// the limit is unused or demand has just arrived.
    pub(super) fn step(
        &mut self,
        window: &Window,
        limit: f64,
        bounds: Bounds,
        (loss_tolerance, loss_backoff): (f64, f64),
        judge: impl FnOnce(f64, f64) -> Verdict,
    ) -> Step {
        if window.lost() > 0 && window.lost() as f64 > loss_tolerance * window.samples() as f64 {
            return Step {
                limit: limit * loss_backoff,
                reason: Reason::Loss,
            };
        }
        let (Some(noload), Some(mean)) = (
            self.noload.observe(window, limit, bounds),
            window.mean_latency(),
        ) else {
            return Step {
                limit,
                reason: Reason::Hold,
            };
        };
        let verdict = judge(noload.as_secs_f64(), mean.as_secs_f64());
        match self.demand.holds(window, limit) {
            Some(reason) if verdict.factor >= 1.0 => return Step { limit, reason },
            _ => {}
        }
        let reason = if verdict.next > limit {
            Reason::Increase
        } else if verdict.next < limit {
            Reason::Decrease
        } else {
            Reason::Hold
        };
        Step {
            limit: verdict.next,
            reason,
        }
    }
}

/// Whether the limit may grow.
///
/// * Not while it is unused: growth needs a window whose busiest moment
///   reached `HEADROOM` of the limit, so the limit stays within about a
///   fifth above the demand actually seen, and a sudden surge meets a
///   limit at most that far above what was proven.
/// * Not on the first busy window after an idle one: that window mixes
///   the quiet before a surge with the surge itself, its latency still
///   looks good, and growing on it would meet the surge with a larger
///   limit. The next window, wholly under the new demand, decides.
#[derive(Debug, Clone, Default)]
struct Demand {
    idle: bool,
}

/// The share of the limit a window must have used for the limit to grow.
const HEADROOM: f64 = 0.85;

impl Demand {
    /// Notes the window; `None` if the limit may grow after it, else why not.
    fn holds(&mut self, window: &Window, limit: f64) -> Option<Reason> {
        let idle = f64::from(window.max_in_flight) < limit * HEADROOM;
        let was_idle = std::mem::replace(&mut self.idle, idle);
        if idle {
            Some(Reason::AppLimited)
        } else if was_idle {
            Some(Reason::Hold)
        } else {
            None
        }
    }
}
