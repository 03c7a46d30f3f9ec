//! Running a controller in real time: a thread that ticks it, and a
//! sampler that adapters use to time requests.
//!
//! The controller itself never reads a clock. This is the one place that
//! does: the driver thread passes the elapsed time into
//! [`Controller::tick`], and the [`Sampler`] stamps each sample from the
//! same origin.

use super::controller::{Algorithm, Config, Controller};
use super::window::{Outcome, Recorder, Sample};
use crate::Limiter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Attaches `algorithm` to `limiter` and runs it on its own thread, which
/// ticks it four times per window interval. Report requests through the
/// returned handle's [`sampler`](Attached::sampler); dropping the handle
/// stops the thread (the capacity stays where it was last set).
///
/// Adapters need no change for it: a listener's limiter (admit-tcp,
/// admit-hyper) is attached the same way, and whatever serves the requests
/// times them with the sampler — for tower services,
/// `admit_tower::adaptive::AdaptiveLayer::observe` does it.
///
/// ```
/// use admit::adaptive::{attach, Config, Outcome, QueueDelay};
///
/// let limiter = admit::Limiter::builder().capacity(8).max_capacity(512).build().unwrap();
/// let attached = attach(limiter.clone(), QueueDelay::default(), Config::default()).unwrap();
/// let sampler = attached.sampler();
///
/// let permit = limiter.try_acquire().unwrap();
/// let timer = sampler.start();
/// // ... serve the request ...
/// sampler.finish(timer, Outcome::Ok);
/// drop(permit);
/// assert!(limiter.health().snapshot().adaptive.is_some());
/// ```
pub fn attach<A>(limiter: Limiter, algorithm: A, config: Config) -> std::io::Result<Attached>
where
    A: Algorithm + Send + 'static,
{
    let every = (config.interval / 4).max(Duration::from_millis(1));
    let name = format!("admit-adaptive-{}", limiter.name());
    let mut controller = Controller::new(limiter.clone(), algorithm, config);
    let sampler = Sampler {
        recorder: controller.recorder(),
        epoch: Instant::now(),
        limiter,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let epoch = sampler.epoch;
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        // Acquire pairs with the Release in Drop: nothing else is published.
        while !thread_stop.load(Ordering::Acquire) {
            std::thread::park_timeout(every);
            controller.tick(epoch.elapsed());
        }
    })?;
    Ok(Attached {
        sampler,
        stop,
        thread: Some(thread),
    })
}

/// A controller running on its own thread; see [`attach`].
#[derive(Debug)]
pub struct Attached {
    sampler: Sampler,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Attached {
    /// A sampler feeding the controller (clones share it).
    pub fn sampler(&self) -> Sampler {
        self.sampler.clone()
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Times requests for a controller running under [`attach`]; cheap to
/// clone, never blocks.
#[derive(Debug, Clone)]
pub struct Sampler {
    recorder: Recorder,
    epoch: Instant,
    limiter: Limiter,
}

/// A request being timed: when it started and how many were in flight.
#[derive(Debug, Clone, Copy)]
pub struct Timer {
    started: Instant,
    in_flight: u32,
}

impl Sampler {
    /// Starts timing a request that was just admitted (the number in
    /// flight is read from the limiter now).
    pub fn start(&self) -> Timer {
        Timer {
            started: Instant::now(),
            in_flight: self.limiter.in_use(),
        }
    }

    /// Records how the request ended. A request that was cancelled (its
    /// caller went away) says nothing about the service: drop its timer
    /// instead.
    pub fn finish(&self, timer: Timer, outcome: Outcome) {
        let now = Instant::now();
        self.recorder.record(Sample {
            when: now.duration_since(self.epoch),
            latency: now.duration_since(timer.started),
            in_flight: timer.in_flight,
            outcome,
        });
    }

    /// The limiter whose capacity the controller sets.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }
}
