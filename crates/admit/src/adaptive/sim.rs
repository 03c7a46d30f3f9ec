//! A discrete-event simulator for adaptive limits, in virtual time.
//!
//! Clients send requests through a real [`Limiter`]; admitted requests go
//! to a simulated backend whose latency grows past a knee,
//! `latency = base × noise × (1 + (c / knee) ^ exponent)` where `c` is the
//! number of requests in flight when the request is admitted and `noise` is
//! log-normal; the part `base × noise × (c / knee) ^ exponent` is the
//! request's queueing delay. A [`Controller`] sees every completion as a
//! [`Sample`]. Nothing reads a clock and the randomness is a seeded
//! generator, so a run is exactly reproducible, and ten virtual minutes
//! take well under a second.
//!
//! Load is either *open* (Poisson arrivals at a multiple of the backend's
//! capacity; a shed request is lost) or *closed* (a fixed set of clients,
//! each thinking, sending, and on a rejection retrying after a pause).
//! Scenarios change the knee (a capacity step) or the demand at set times,
//! or make the backend answer every call with a timeout.
//!
//! ```
//! use admit::adaptive::sim::{Scenario, run};
//! use admit::adaptive::{Config, Gradient};
//! use std::time::Duration;
//!
//! let scenario = Scenario::open(20.0, 2.0).duration(Duration::from_secs(3));
//! let result = run(&scenario, Gradient::default(), Config::default());
//! let settled = result.limit_at(Duration::from_secs(3));
//! assert!((17..=23).contains(&settled), "{settled}");
//! ```

use super::controller::{Algorithm, Config, Controller};
use super::window::{Outcome, Sample};
use crate::{Limiter, Permit};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

/// A small seeded generator (SplitMix64): deterministic and dependency-free.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `(0, 1]`.
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * self.unit().ln()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// The simulated service.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Latency with nothing queued (default 6 ms).
    pub base: Duration,
    /// Concurrency at which latency has doubled; with the default exponent
    /// 2 it is also where throughput peaks.
    pub knee: f64,
    /// How sharply latency grows past the knee (default 2: throughput
    /// `c / latency(c)` then peaks exactly at the knee, so "the knee" means
    /// one thing for latency and throughput alike).
    pub exponent: f64,
    /// Standard deviation of the log-normal noise on each latency (default 0.1).
    pub noise: f64,
    /// When set, every call is answered with a timeout after this long.
    pub timeout_all: Option<Duration>,
}

impl Backend {
    /// A backend with the defaults and the given knee.
    pub fn new(knee: f64) -> Backend {
        Backend {
            base: Duration::from_millis(6),
            knee,
            exponent: 2.0,
            noise: 0.1,
            timeout_all: None,
        }
    }

    /// The most requests per second it can answer (the peak of
    /// `c / latency(c)`).
    pub fn capacity(&self) -> f64 {
        let e = self.exponent;
        let x = (e - 1.0).max(1e-9).powf(-1.0 / e);
        self.knee * x / (self.base.as_secs_f64() * (1.0 + x.powf(e)))
    }

    /// Latency and queueing delay, in seconds, for a request admitted at
    /// concurrency `c`.
    fn latency(&self, c: u32, rng: &mut Rng) -> (f64, f64) {
        let service = self.base.as_secs_f64() * (self.noise * rng.normal()).exp();
        let queue = service * (f64::from(c) / self.knee).powf(self.exponent);
        (service + queue, queue)
    }
}

/// How clients offer load.
#[derive(Debug, Clone)]
pub enum Load {
    /// Poisson arrivals at `demand ×` the backend's capacity (following
    /// the capacity when the knee or the base latency changes).
    Open {
        /// The multiple of capacity.
        demand: f64,
    },
    /// A fixed population of clients.
    Closed {
        /// How many.
        clients: u32,
        /// Mean (exponential) pause between a response and the next request.
        think: Duration,
        /// Pause after a rejection before trying again.
        retry: Duration,
    },
}

/// A change during a run.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    /// The backend's knee becomes this (a capacity step).
    Knee(f64),
    /// Open load: the demand becomes this multiple of the capacity.
    Demand(f64),
    /// The backend's no-load latency becomes this (the service itself
    /// became slower or faster).
    Base(Duration),
}

/// One simulated run's setup.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The seed.
    pub seed: u64,
    /// How long to run.
    pub duration: Duration,
    /// The service.
    pub backend: Backend,
    /// The clients.
    pub load: Load,
    /// Changes at set times.
    pub changes: Vec<(Duration, Change)>,
    /// A request not answered within this is abandoned as a timeout (default 5 s).
    pub client_timeout: Duration,
    /// The limiter's `max_capacity`, the controller's ceiling (default 4 × knee).
    pub max_limit: u32,
    /// The resolution of the recorded series (default 100 ms).
    pub bucket: Duration,
}

impl Scenario {
    /// Open load at `demand ×` capacity against a knee, for 10 s.
    pub fn open(knee: f64, demand: f64) -> Scenario {
        Scenario::with_load(knee, Load::Open { demand })
    }

    /// `clients` closed-loop clients with a mean think time, against a knee.
    pub fn closed(knee: f64, clients: u32, think: Duration) -> Scenario {
        Scenario::with_load(
            knee,
            Load::Closed {
                clients,
                think,
                retry: Duration::from_millis(10),
            },
        )
    }

    fn with_load(knee: f64, load: Load) -> Scenario {
        Scenario {
            seed: 1,
            duration: Duration::from_secs(10),
            backend: Backend::new(knee),
            load,
            changes: Vec::new(),
            client_timeout: Duration::from_secs(5),
            max_limit: (knee * 4.0).ceil().max(16.0) as u32,
            bucket: Duration::from_millis(100),
        }
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Scenario {
        self.seed = seed;
        self
    }

    /// Sets the duration.
    pub fn duration(mut self, d: Duration) -> Scenario {
        self.duration = d;
        self
    }

    /// Adds a change at `at`.
    pub fn change(mut self, at: Duration, change: Change) -> Scenario {
        self.changes.push((at, change));
        self
    }

    /// Makes the backend answer every call with a timeout after `after`.
    pub fn timeout_all(mut self, after: Duration) -> Scenario {
        self.backend.timeout_all = Some(after);
        self
    }

    /// Sets the controller's ceiling.
    pub fn max_limit(mut self, n: u32) -> Scenario {
        self.max_limit = n;
        self
    }
}

/// One bucket of a run's series.
#[derive(Debug, Clone, Default)]
pub struct Point {
    /// The bucket's end.
    pub t: Duration,
    /// The limit at the bucket's end.
    pub limit: u32,
    /// The knee at the bucket's end.
    pub knee: f64,
    /// The backend's capacity at the bucket's end (requests per second).
    pub capacity: f64,
    /// Requests answered in the bucket.
    pub ok: u64,
    /// Requests shed (rejected by the limiter) in the bucket.
    pub shed: u64,
    /// Requests timed out in the bucket.
    pub timeouts: u64,
    latencies: Vec<f32>,
    queue_delays: Vec<f32>,
}

impl Point {
    /// Answered requests per second in the bucket.
    pub fn goodput(&self, bucket: Duration) -> f64 {
        self.ok as f64 / bucket.as_secs_f64()
    }

    /// The bucket's p99 latency (zero if nothing was answered).
    pub fn p99_latency(&self) -> Duration {
        p99(self.latencies.iter().copied())
    }

    /// The bucket's mean latency (zero if nothing was answered).
    pub fn mean_latency(&self) -> Duration {
        let n = self.latencies.len().max(1) as f64;
        Duration::from_secs_f64(self.latencies.iter().map(|&l| f64::from(l)).sum::<f64>() / n)
    }
}

fn p99(values: impl Iterator<Item = f32>) -> Duration {
    let mut v: Vec<f32> = values.collect();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1;
    let (_, x, _) = v.select_nth_unstable_by(i, f32::total_cmp);
    Duration::from_secs_f64(f64::from(*x))
}

/// What a run produced: a series per bucket and totals over time ranges.
#[derive(Debug, Clone)]
pub struct Run {
    /// The series' resolution.
    pub bucket: Duration,
    /// One point per bucket.
    pub points: Vec<Point>,
    /// The limit after every window the controller closed: `(time, limit)`.
    pub limits: Vec<(Duration, u32)>,
}

impl Run {
    fn range(&self, from: Duration, to: Duration) -> impl Iterator<Item = &Point> {
        let b = self.bucket;
        self.points
            .iter()
            .filter(move |p| p.t > from && p.t.saturating_sub(b) < to)
    }

    /// Answered requests per second over `[from, to)`.
    pub fn goodput(&self, from: Duration, to: Duration) -> f64 {
        let ok: u64 = self.range(from, to).map(|p| p.ok).sum();
        ok as f64 / (to - from).as_secs_f64()
    }

    /// The backend's mean capacity over `[from, to)`.
    pub fn capacity(&self, from: Duration, to: Duration) -> f64 {
        let (n, sum) = self
            .range(from, to)
            .fold((0.0, 0.0), |(n, s), p| (n + 1.0, s + p.capacity));
        sum / f64::max(n, 1.0)
    }

    /// Requests shed over `[from, to)`.
    pub fn shed(&self, from: Duration, to: Duration) -> u64 {
        self.range(from, to).map(|p| p.shed).sum()
    }

    /// Requests answered over `[from, to)`.
    pub fn ok(&self, from: Duration, to: Duration) -> u64 {
        self.range(from, to).map(|p| p.ok).sum()
    }

    /// Requests timed out over `[from, to)`.
    pub fn timeouts(&self, from: Duration, to: Duration) -> u64 {
        self.range(from, to).map(|p| p.timeouts).sum()
    }

    /// p99 of the queueing delay of requests answered over `[from, to)`.
    pub fn queue_delay_p99(&self, from: Duration, to: Duration) -> Duration {
        p99(self
            .range(from, to)
            .flat_map(|p| p.queue_delays.iter().copied()))
    }

    /// p99 latency of requests answered over `[from, to)`.
    pub fn latency_p99(&self, from: Duration, to: Duration) -> Duration {
        p99(self
            .range(from, to)
            .flat_map(|p| p.latencies.iter().copied()))
    }

    /// The limit in force at `t`.
    pub fn limit_at(&self, t: Duration) -> u32 {
        self.limits
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map_or(0, |&(_, l)| l)
    }

    /// The limit's lowest and highest values over `[from, to]`.
    pub fn limit_range(&self, from: Duration, to: Duration) -> (u32, u32) {
        let mut lo = self.limit_at(from);
        let mut hi = lo;
        for &(at, l) in &self.limits {
            if at > from && at <= to {
                lo = lo.min(l);
                hi = hi.max(l);
            }
        }
        (lo, hi)
    }

    /// How long after `from` the limit entered `target ± tolerance`
    /// (a fraction) and stayed there until `to`; `None` if it never settled.
    pub fn settle_time(
        &self,
        from: Duration,
        to: Duration,
        target: f64,
        tolerance: f64,
    ) -> Option<Duration> {
        let inside = |l: u32| (f64::from(l) - target).abs() <= target * tolerance;
        let mut since = inside(self.limit_at(from)).then_some(from);
        for &(at, l) in &self.limits {
            if at <= from || at > to {
                continue;
            }
            match (inside(l), since) {
                (true, None) => since = Some(at),
                (false, Some(_)) => since = None,
                _ => {}
            }
        }
        since.map(|s| s - from)
    }
}

enum Ev {
    Arrival,
    Wake(u32),
    Done {
        permit: Permit,
        client: Option<u32>,
        latency: f64,
        queue: f64,
        in_flight: u32,
        outcome: Outcome,
    },
    Bucket,
    Change(Change),
}

struct Item {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, o: &Item) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Item) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    // Reversed: the heap pops the earliest event first.
    fn cmp(&self, o: &Item) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

struct Queue {
    heap: BinaryHeap<Item>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Item {
            at,
            seq: self.seq,
            ev,
        });
    }
}

fn ns(secs: f64) -> u64 {
    (secs * 1e9).max(1.0) as u64
}

/// Runs `scenario` with `algorithm` in a [`Controller`] configured by
/// `config` (its ceiling is the scenario's `max_limit` unless the config
/// sets a lower one).
pub fn run<A: Algorithm>(scenario: &Scenario, algorithm: A, config: Config) -> Run {
    run_with(scenario, algorithm, config, |_| ()).0
}

/// Like [`run`], and also hands back what `inspect` read from the
/// controller at the end (e.g. the algorithm's no-load estimate).
pub fn run_with<A: Algorithm, T>(
    scenario: &Scenario,
    algorithm: A,
    config: Config,
    inspect: impl FnOnce(&Controller<A>) -> T,
) -> (Run, T) {
    let limiter = Limiter::builder()
        .capacity(1)
        .max_capacity(scenario.max_limit)
        .track_leases(false)
        .build()
        .expect("simulated limiter within limits");
    let mut controller = Controller::new(limiter.clone(), algorithm, config);
    let mut rng = Rng::new(scenario.seed);
    let mut backend = scenario.backend.clone();
    let end = scenario.duration.as_nanos() as u64;
    let bucket = scenario.bucket.as_nanos() as u64;
    let timeout = scenario.client_timeout.as_secs_f64();

    let mut q = Queue {
        heap: BinaryHeap::new(),
        seq: 0,
    };
    let mut demand = 0.0;
    match scenario.load {
        Load::Open { demand: d } => {
            demand = d;
            q.push(0, Ev::Arrival);
        }
        Load::Closed { clients, think, .. } => {
            for c in 0..clients {
                let at = ns(rng.exp(think.as_secs_f64().max(1e-4)));
                q.push(at, Ev::Wake(c));
            }
        }
    }
    for &(at, change) in &scenario.changes {
        q.push(at.as_nanos() as u64, Ev::Change(change));
    }
    q.push(bucket, Ev::Bucket);

    let mut points = Vec::new();
    let mut cur = Point::default();
    let mut limits = vec![(Duration::ZERO, controller.limit())];

    while let Some(Item { at, ev, .. }) = q.heap.pop() {
        if at > end {
            break;
        }
        let now = Duration::from_nanos(at);
        let attempt =
            |client: Option<u32>, q: &mut Queue, rng: &mut Rng, cur: &mut Point| match limiter
                .try_acquire()
            {
                Ok(permit) => {
                    let in_flight = limiter.in_use();
                    let (latency, queue, outcome) = match backend.timeout_all {
                        Some(t) => (t.as_secs_f64(), 0.0, Outcome::Timeout),
                        None => {
                            let (l, qd) = backend.latency(in_flight, rng);
                            if l > timeout {
                                (timeout, qd, Outcome::Timeout)
                            } else {
                                (l, qd, Outcome::Ok)
                            }
                        }
                    };
                    q.push(
                        at + ns(latency),
                        Ev::Done {
                            permit,
                            client,
                            latency,
                            queue,
                            in_flight,
                            outcome,
                        },
                    );
                }
                Err(_) => {
                    cur.shed += 1;
                    if let (Some(c), Load::Closed { retry, .. }) = (client, &scenario.load) {
                        q.push(at + retry.as_nanos() as u64, Ev::Wake(c));
                    }
                }
            };
        match ev {
            Ev::Arrival => {
                attempt(None, &mut q, &mut rng, &mut cur);
                let rate = demand * backend.capacity();
                if rate > 0.0 {
                    q.push(at + ns(rng.exp(1.0 / rate)), Ev::Arrival);
                }
            }
            Ev::Wake(c) => attempt(Some(c), &mut q, &mut rng, &mut cur),
            Ev::Done {
                permit,
                client,
                latency,
                queue,
                in_flight,
                outcome,
            } => {
                drop(permit);
                match outcome {
                    Outcome::Ok => {
                        cur.ok += 1;
                        cur.latencies.push(latency as f32);
                        cur.queue_delays.push(queue as f32);
                    }
                    _ => cur.timeouts += 1,
                }
                let sample = Sample {
                    when: now,
                    latency: Duration::from_secs_f64(latency),
                    in_flight,
                    outcome,
                };
                if let Some(d) = controller.sample(sample) {
                    limits.push((now, d.limit));
                }
                if let (Some(c), Load::Closed { think, .. }) = (client, &scenario.load) {
                    q.push(at + ns(rng.exp(think.as_secs_f64())), Ev::Wake(c));
                }
            }
            Ev::Bucket => {
                if let Some(d) = controller.tick(now) {
                    limits.push((now, d.limit));
                }
                cur.t = now;
                cur.limit = controller.limit();
                cur.knee = backend.knee;
                cur.capacity = backend.capacity();
                points.push(std::mem::take(&mut cur));
                q.push(at + bucket, Ev::Bucket);
            }
            Ev::Change(Change::Knee(k)) => backend.knee = k,
            Ev::Change(Change::Base(b)) => backend.base = b,
            Ev::Change(Change::Demand(d)) => {
                let was = demand;
                demand = d;
                if was <= 0.0 && d > 0.0 {
                    q.push(at, Ev::Arrival);
                }
            }
        }
    }
    let kept = inspect(&controller);
    let run = Run {
        bucket: scenario.bucket,
        points,
        limits,
    };
    (run, kept)
}
