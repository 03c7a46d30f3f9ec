//! The no-load latency estimate shared by the latency controllers.

use super::controller::Bounds;
use super::window::Window;
use std::time::Duration;

/// How long a reading at one concurrency level stays comparable with a
/// later one: long enough to span a descent from a limit to half of it,
/// short enough that two readings describe the same service.
const PAIR_HORIZON: Duration = Duration::from_secs(10);

/// The latency a request sees when nothing queues, measured passively.
///
/// * It starts from the first window (measured at the controller's low
///   initial limit).
/// * It falls at once to any lower *window mean*: the mean of a window's
///   answered requests, not the single fastest one, so a lucky request
///   (a cache hit, a short payload) does not set an impractically low
///   baseline that would shed for ever after.
/// * It never rises on evidence taken under load alone. A minimum that is
///   allowed to age out and be re-measured while the service is busy
///   ratchets upward: each new "minimum" includes queueing, the target
///   rises with it, the limit grows, the queue grows (Netflix Vegas #165,
///   Envoy #11579).
/// * It rises only on evidence that there is no queueing: a window whose
///   mean latency is within 10 % of a recent window (last 10 s) that had at
///   least twice as many requests in flight. Where doubling the concurrency
///   does not raise latency, nothing queues, and the latency there is the
///   no-load latency, even if it is higher than before: the service itself
///   has become slower. A window at the floor (`min` in flight, the limit at
///   `min`) counts too. It takes two such windows in a row, agreeing within
///   10 %, so one reading spoilt by a stalled scheduler cannot lift the
///   target past the knee. Under steady load the concurrency does not
///   change twofold, so steady load cannot move the estimate up.
///
/// It never sheds a request to measure. (Envoy's adaptive concurrency pins
/// the limit to a small floor every interval to re-measure, and sheds the
/// traffic above it, #8337.)
///
/// ```
/// use admit::adaptive::{Bounds, NoLoad, Window};
/// use std::time::Duration;
///
/// let ms = Duration::from_millis;
/// let window = |end: u64, mean: u64, in_flight: u32| Window {
///     end: ms(end),
///     ok: 10,
///     ok_latency_sum: ms(mean) * 10,
///     max_in_flight: in_flight,
///     ..Window::default()
/// };
/// let bounds = Bounds { min: 1, max: 100 };
/// let mut noload = NoLoad::default();
/// noload.observe(&window(100, 10, 4), 4.0, bounds);
/// noload.observe(&window(200, 25, 80), 80.0, bounds); // busy: not a no-load reading
/// assert_eq!(noload.get(), Some(ms(10)));
/// // The service got slower: 20 ms at 80 in flight and at 30 alike, in
/// // two windows in a row.
/// noload.observe(&window(300, 20, 80), 80.0, bounds);
/// noload.observe(&window(400, 20, 30), 30.0, bounds);
/// assert_eq!(noload.get(), Some(ms(10)));
/// noload.observe(&window(500, 21, 28), 28.0, bounds);
/// assert_eq!(noload.get(), Some(ms(20)));
/// ```
#[derive(Debug, Clone, Default)]
pub struct NoLoad {
    estimate: Option<Duration>,
    /// The latest reading per power-of-two band of concurrency:
    /// `(when, in flight, mean latency)`.
    bands: [Option<(Duration, u32, Duration)>; 21],
    /// The last window's mean, when it gave evidence for a rise.
    rising: Option<Duration>,
}

impl NoLoad {
    /// The current estimate, once a window with answered requests was seen.
    pub fn get(&self) -> Option<Duration> {
        self.estimate
    }

    /// Updates the estimate from a closed window, measured while the limit
    /// was `limit`; returns the estimate.
    pub fn observe(&mut self, window: &Window, limit: f64, bounds: Bounds) -> Option<Duration> {
        let Some(mean) = window.mean_latency() else {
            return self.estimate;
        };
        let c = window.max_in_flight.max(1);
        let at_floor = limit <= f64::from(bounds.min) + 0.5 && c <= bounds.min;
        let flat = self.bands.iter().flatten().any(|&(when, c2, mean2)| {
            window.end.saturating_sub(when) <= PAIR_HORIZON
                && c2 >= c.saturating_mul(2)
                && mean2.as_secs_f64() <= mean.as_secs_f64() * 1.1
        });
        let rise = matches!(self.estimate, Some(e) if mean > e) && (at_floor || flat);
        match self.estimate {
            None => self.estimate = Some(mean),
            Some(e) if mean < e => self.estimate = Some(mean),
            // A rise is evidence from two windows, either of which a
            // stalled scheduler or a noisy neighbour may have slowed: it
            // takes two windows in a row that agree within 10 %, and then
            // the lower of the two.
            Some(_) if rise => match self.rising {
                Some(first) if (mean.as_secs_f64() / first.as_secs_f64() - 1.0).abs() <= 0.1 => {
                    self.estimate = Some(first.min(mean));
                }
                _ => {}
            },
            Some(_) => {}
        }
        self.rising = rise.then_some(mean);
        let band = (31 - c.leading_zeros()).min(20) as usize;
        self.bands[band] = Some((window.end, c, mean));
        self.estimate
    }

    /// Forgets the estimate (the next window sets it afresh).
    pub fn reset(&mut self) {
        *self = NoLoad::default();
    }
}
