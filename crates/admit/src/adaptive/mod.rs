//! Adaptive limits: controllers that find a limiter's capacity from the
//! latency and outcome of the work it admits.
//!
//! A fixed cap is a guess: set too high, a slow backend drowns; too low,
//! healthy capacity is refused. A [`Controller`] watches completed requests
//! and moves the [`Limiter`](crate::Limiter)'s capacity (through
//! [`set_capacity`](crate::Limiter::set_capacity)) within `[min, max]`.
//!
//! Nothing here reads a clock, takes a lock or needs a runtime. Every
//! [`Sample`] carries its own time (`when`, any monotonic origin the caller
//! likes), and the controller is a plain value owned by one caller through
//! `&mut self`, so a run is deterministic: the same samples give the same
//! limits, in real time or in a simulation's virtual time. Requests that
//! complete on other threads report through a [`Recorder`] (atomic
//! counters, no lock), which the owner drains with [`Controller::tick`].
//! [`attach`] does that in real time: it runs the controller on a thread of
//! its own and hands out a [`Sampler`] that times requests.
//!
//! # Algorithms
//!
//! * [`Aimd`] — additive increase, multiplicative decrease on loss (a
//!   dropped or timed-out request). Knows nothing of latency; a reference.
//! * [`Gradient`] — compares the latency of the last window with the
//!   service's no-load latency and moves the limit by their ratio, like
//!   Netflix's Gradient2, with the fixes for its known failure modes
//!   (see its docs).
//! * [`QueueDelay`] — keeps the queueing delay (latency above the no-load
//!   latency) near a target, 5 ms by default, judged once per 100 ms
//!   interval, in the manner of CoDel and Breakwater.
//!
//! # Measuring the no-load latency
//!
//! Both latency controllers need the latency a request sees when nothing
//! queues ([`NoLoad`]). Some controllers measure it by periodically pinning
//! the limit to a small floor and shedding everything above it; that sheds
//! real traffic every interval. Here it is measured passively and never
//! costs a request:
//!
//! * the controller starts at a low limit (`initial`, default 1) and grows
//!   from there, so the first window is measured with nothing queued;
//! * the estimate is the lowest *window mean* seen (a mean of many requests,
//!   so one unusually fast request does not drag it down);
//! * it never rises on evidence taken under load (that is how minimum-RTT
//!   estimates ratchet upward), only when the controller has already cut the
//!   limit to its floor and the latency there is still higher: then the
//!   service itself has become slower, and the floor's latency is its new
//!   no-load latency.
//!
//! The simulator's steady-state test runs ten virtual minutes at half the
//! knee and asserts that not one request is shed.
//!
//! ```
//! use admit::adaptive::{Controller, Config, Gradient, Outcome, Sample};
//! use admit::Limiter;
//! use std::time::Duration;
//!
//! let limiter = Limiter::builder().capacity(4).max_capacity(1_000).build().unwrap();
//! let config = Config::default().initial(4);
//! let mut controller = Controller::new(limiter.clone(), Gradient::default(), config);
//! assert_eq!(limiter.capacity(), 4);
//!
//! // Fast answers with every permit in use: room to grow.
//! let ms = Duration::from_millis;
//! for i in 0..200u64 {
//!     controller.sample(Sample {
//!         when: ms(i),
//!         latency: ms(10),
//!         in_flight: limiter.capacity(),
//!         outcome: Outcome::Ok,
//!     });
//! }
//! assert!(limiter.capacity() > 4);
//! ```

mod aimd;
mod controller;
mod driver;
mod gradient;
mod latency;
mod noload;
mod queue_delay;
pub(crate) mod report;
#[cfg(feature = "sim")]
pub mod sim;
mod window;

pub use aimd::Aimd;
pub use controller::{Algorithm, Bounds, Config, Controller, Decision, Kind, Reason, Step};
pub use driver::{attach, Attached, Sampler, Timer};
pub use gradient::Gradient;
pub use noload::NoLoad;
pub use queue_delay::QueueDelay;
pub use report::AdaptiveView;
pub use window::{Outcome, Recorder, Sample, Window};
