//! What the network benches in `benches/benches/` share: the runtime they
//! run on, the driver that keeps a fixed number of client connections in
//! flight, and the interleaved rounds that turn noisy timings on a shared
//! machine into ratios worth recording.

use futures::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Client connections the network benches keep in flight at once.
pub const IN_FLIGHT: usize = 32;

/// The two-thread runtime clients and servers share in every network bench.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The criterion settings of the network benches: few, short samples (each
/// is thousands of connections), no plots, overridable from the command
/// line.
pub fn criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
        .configure_from_args()
}

/// Runs `n` client sessions made by `one`, [`IN_FLIGHT`] at a time, and
/// returns how long they took together.
pub async fn in_flight<F, Fut>(n: u64, mut one: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let start = Instant::now();
    let mut running = FuturesUnordered::new();
    let mut started = 0;
    while started < n && running.len() < IN_FLIGHT {
        running.push(one());
        started += 1;
    }
    while running.next().await.is_some() {
        if started < n {
            running.push(one());
            started += 1;
        }
    }
    start.elapsed()
}

/// Runs every variant for `per_round` elements, in turn, `rounds` times,
/// and prints each variant's median per-round throughput ratio against the
/// first, with the quartiles. Interleaving keeps a background load that
/// comes and goes (these machines are shared) from landing on one variant
/// only, which sequential criterion groups cannot avoid.
///
/// ```
/// use std::time::Duration;
/// // Variant 1 takes twice as long as variant 0: ratio 0.5.
/// admit_benches::interleaved("demo", &["fast", "slow"], 4, 10, |i, n| {
///     Duration::from_micros(n * (i as u64 + 1))
/// });
/// ```
pub fn interleaved(
    group: &str,
    names: &[&str],
    rounds: usize,
    per_round: u64,
    mut run: impl FnMut(usize, u64) -> Duration,
) {
    let mut ratios = vec![Vec::with_capacity(rounds); names.len()];
    for round in 0..rounds {
        // Rotate the order each round so no variant always runs first.
        let times: Vec<(usize, Duration)> = (0..names.len())
            .map(|k| (k + round) % names.len())
            .map(|i| (i, run(i, per_round)))
            .collect();
        let base = times.iter().find(|(i, _)| *i == 0).map(|t| t.1);
        let base = base.expect("variant 0 ran this round");
        for (i, t) in times {
            ratios[i].push(base.as_secs_f64() / t.as_secs_f64());
        }
    }
    for (i, name) in names.iter().enumerate().skip(1) {
        let r = &mut ratios[i];
        r.sort_by(f64::total_cmp);
        println!(
            "{group} (interleaved, {rounds} rounds of {per_round}): throughput ratio {name}/{} \
             median {:.3} (quartiles {:.3}..{:.3})",
            names[0],
            r[r.len() / 2],
            r[r.len() / 4],
            r[r.len() * 3 / 4],
        );
    }
}
