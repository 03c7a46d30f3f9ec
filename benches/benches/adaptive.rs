//! Adaptive limits in the simulator: admit's controllers beside ports of
//! Netflix concurrency-limits' Gradient2 and Vegas, on the same seeded
//! scenarios in virtual time.
//!
//! `cargo bench -p admit-benches --bench adaptive` prints the table recorded
//! in benches/README.md; add `-- --plots` to redraw the SVGs under docs/,
//! or run `-- --seeds N` for the worst case of the targets' scenarios over
//! seeds 1..=N instead.
//!
//! The ports follow the Java code's arithmetic and defaults (initial limit
//! 20; Gradient2: smoothing 0.2, queue size 4, long window 600 with a
//! warm-up of 10, the long RTT decayed by 0.9 when it exceeds twice the
//! short; Vegas: alpha 3·log10 L, beta 6·log10 L, threshold log10 L,
//! increase and decrease by log10 L, a probe every 15–30 × L samples),
//! with two adaptations to run them here: they share the controllers' floor
//! and ceiling, and Gradient2 sees one averaged sample per 100 ms window
//! (as behind Netflix's `WindowedLimit`, with the window admit's
//! controllers use) while Vegas sees every sample (as behind its
//! `SimpleLimiter`). As in the originals, Gradient2 averages a timed-out
//! call's latency in with the rest and ignores the drop flag; Vegas backs
//! off on it.

use admit::adaptive::sim::{run, Change, Rng, Run, Scenario};
use admit::adaptive::{
    Aimd, Algorithm, Bounds, Config, Gradient, QueueDelay, Reason, Step, Window,
};
use plotters::prelude::*;
use std::path::Path;
use std::time::Duration;

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// Netflix's `Gradient2Limit`, per window.
struct Gradient2 {
    smoothing: f64,
    queue_size: f64,
    long: ExpAvg,
}

struct ExpAvg {
    window: f64,
    warmup: u32,
    count: u32,
    sum: f64,
    value: f64,
}

impl ExpAvg {
    fn add(&mut self, sample: f64) -> f64 {
        if self.count < self.warmup {
            self.count += 1;
            self.sum += sample;
            self.value = self.sum / f64::from(self.count);
        } else {
            let factor = 2.0 / (self.window + 1.0);
            self.value = self.value * (1.0 - factor) + sample * factor;
        }
        self.value
    }
}

impl Default for Gradient2 {
    fn default() -> Self {
        Gradient2 {
            smoothing: 0.2,
            queue_size: 4.0,
            long: ExpAvg {
                window: 600.0,
                warmup: 10,
                count: 0,
                sum: 0.0,
                value: 0.0,
            },
        }
    }
}

impl Algorithm for Gradient2 {
    fn update(&mut self, w: &Window, limit: f64, bounds: Bounds) -> Step {
        let hold = Step {
            limit,
            reason: Reason::Hold,
        };
        let Some(rtt) = w.mean_latency_all() else {
            return hold;
        };
        let short = rtt.as_secs_f64().max(1e-9);
        let long = self.long.add(short);
        if long / short > 2.0 {
            self.long.value *= 0.9;
        }
        if f64::from(w.max_in_flight) < limit / 2.0 {
            return Step {
                limit,
                reason: Reason::AppLimited,
            };
        }
        let gradient = (long / short).clamp(0.5, 1.0);
        let next = limit * gradient + self.queue_size;
        let next = limit * (1.0 - self.smoothing) + next * self.smoothing;
        let next = next.clamp(f64::from(bounds.min), f64::from(bounds.max));
        Step {
            limit: next,
            reason: if next > limit {
                Reason::Increase
            } else {
                Reason::Decrease
            },
        }
    }
}

/// Netflix's `VegasLimit`, per sample.
struct Vegas {
    rtt_noload: f64,
    probe_multiplier: f64,
    probe_count: u64,
    probe_jitter: f64,
    rng: Rng,
}

impl Default for Vegas {
    fn default() -> Self {
        let mut rng = Rng::new(99);
        let probe_jitter = 0.5 + rng.unit() * 0.5;
        Vegas {
            rtt_noload: 0.0,
            probe_multiplier: 30.0,
            probe_count: 0,
            probe_jitter,
            rng,
        }
    }
}

/// Log10RootFunction: max(1, floor(log10 L)).
fn log10(limit: f64) -> f64 {
    limit.max(1.0).log10().floor().max(1.0)
}

impl Algorithm for Vegas {
    fn update(&mut self, w: &Window, limit: f64, bounds: Bounds) -> Step {
        let hold = Step {
            limit,
            reason: Reason::Hold,
        };
        let Some(rtt) = w.mean_latency_all() else {
            return hold;
        };
        let rtt = rtt.as_secs_f64().max(1e-9);
        self.probe_count += 1;
        if self.probe_jitter * self.probe_multiplier * limit.floor() <= self.probe_count as f64 {
            self.probe_jitter = 0.5 + self.rng.unit() * 0.5;
            self.probe_count = 0;
            self.rtt_noload = rtt;
            return hold;
        }
        if self.rtt_noload == 0.0 || rtt < self.rtt_noload {
            self.rtt_noload = rtt;
            return hold;
        }
        let queue = (limit * (1.0 - self.rtt_noload / rtt)).ceil();
        let l = log10(limit);
        let (alpha, beta, threshold) = (3.0 * l, 6.0 * l, l);
        let next = if w.lost() > 0 {
            limit - l
        } else if f64::from(w.max_in_flight) * 2.0 < limit {
            return Step {
                limit,
                reason: Reason::AppLimited,
            };
        } else if queue <= threshold {
            limit + beta
        } else if queue < alpha {
            limit + l
        } else if queue > beta {
            limit - l
        } else {
            return hold;
        };
        let next = next.clamp(f64::from(bounds.min.max(1)), f64::from(bounds.max));
        Step {
            limit: next,
            reason: if next > limit {
                Reason::Increase
            } else {
                Reason::Decrease
            },
        }
    }
}

#[derive(Clone, Copy)]
enum Algo {
    Gradient,
    QueueDelay,
    Aimd,
    Gradient2,
    Vegas,
}

const ALGOS: [Algo; 5] = [
    Algo::Gradient,
    Algo::QueueDelay,
    Algo::Aimd,
    Algo::Gradient2,
    Algo::Vegas,
];

impl Algo {
    fn name(self) -> &'static str {
        match self {
            Algo::Gradient => "admit Gradient",
            Algo::QueueDelay => "admit QueueDelay",
            Algo::Aimd => "admit Aimd",
            Algo::Gradient2 => "Gradient2 (port)",
            Algo::Vegas => "Vegas (port)",
        }
    }

    fn color(self) -> RGBColor {
        match self {
            Algo::Gradient => RGBColor(31, 119, 180),
            Algo::QueueDelay => RGBColor(44, 160, 44),
            Algo::Aimd => RGBColor(140, 86, 75),
            Algo::Gradient2 => RGBColor(214, 39, 40),
            Algo::Vegas => RGBColor(255, 127, 14),
        }
    }

    /// Runs `scenario`; `initial` overrides each algorithm's own starting
    /// limit (admit's 1, the ports' 20).
    fn run(self, scenario: &Scenario, initial: Option<u32>) -> Run {
        let config = |own: u32| Config::default().initial(initial.unwrap_or(own));
        match self {
            Algo::Gradient => run(scenario, Gradient::default(), config(1)),
            Algo::QueueDelay => run(scenario, QueueDelay::default(), config(1)),
            Algo::Aimd => run(scenario, Aimd::default(), config(1)),
            Algo::Gradient2 => run(scenario, Gradient2::default(), config(20)),
            Algo::Vegas => run(
                scenario,
                Vegas::default(),
                config(20).interval(Duration::ZERO).min_samples(1),
            ),
        }
    }
}

/// Every algorithm on one scenario, in the table's column order.
fn run_all(scenario: &Scenario, initial: Option<u32>) -> Vec<(Algo, Run)> {
    ALGOS
        .iter()
        .map(|a| (*a, a.run(scenario, initial)))
        .collect()
}

/// One row of the table: a cell per algorithm.
fn row(
    rows: &mut Vec<(String, Vec<String>)>,
    label: impl Into<String>,
    runs: &[(Algo, Run)],
    cell: impl Fn(&Run) -> String,
) {
    rows.push((label.into(), runs.iter().map(|(_, r)| cell(r)).collect()));
}

fn settle(run: &Run, from: u64, to: u64, knee: f64) -> String {
    match run.settle_time(s(from), s(to), knee, 0.15) {
        Some(t) => format!("{:.1}", t.as_secs_f64()),
        None => {
            let (lo, hi) = run.limit_range(s(to - 1), s(to));
            format!("never ({lo}–{hi})")
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let plots = args.iter().any(|a| a == "--plots");
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    if let Some(n) = args
        .iter()
        .position(|a| a == "--seeds")
        .and_then(|i| args.get(i + 1))
    {
        seeds(n.parse().expect("--seeds N"));
        return;
    }
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();

    // 1. Finding the knee after a start and after capacity steps.
    for knee in [10.0, 100.0, 1000.0] {
        let scenario = Scenario::open(knee, 1.5)
            .duration(s(9))
            .change(s(3), Change::Knee(knee * 2.0))
            .change(s(6), Change::Knee(knee));
        let runs = run_all(&scenario, None);
        row(
            &mut rows,
            format!("knee {knee}: seconds to ±15 % after start / doubling / halving"),
            &runs,
            |r| {
                format!(
                    "{} / {} / {}",
                    settle(r, 0, 3, knee),
                    settle(r, 3, 6, knee * 2.0),
                    settle(r, 6, 9, knee)
                )
            },
        );
        if plots && knee == 100.0 {
            draw(
                &docs.join("adaptive-steps.svg"),
                "knee 100, doubled at 3 s, halved at 6 s; demand 1.5x capacity",
                &runs,
                9.0,
            );
        }
    }

    // 2. A 1.4x demand spike.
    let spike = Scenario::open(100.0, 0.8)
        .duration(s(20))
        .change(s(5), Change::Demand(1.4))
        .change(s(15), Change::Demand(0.8));
    let runs = run_all(&spike, None);
    row(
        &mut rows,
        "1.4x spike (5–15 s): goodput, % of capacity",
        &runs,
        |r| {
            format!(
                "{:.1} %",
                100.0 * r.goodput(s(5), s(15)) / r.capacity(s(5), s(15))
            )
        },
    );
    row(&mut rows, "1.4x spike: p99 queueing delay", &runs, |r| {
        ms(r.queue_delay_p99(s(5), s(15)))
    });
    if plots {
        draw(
            &docs.join("adaptive-spike.svg"),
            "knee 100; demand 0.8x capacity, 1.4x from 5 s to 15 s",
            &runs,
            20.0,
        );
    }

    // 3. Every call times out at 5 s; every controller starts at 100.
    let timeouts = Scenario::open(100.0, 0.2)
        .duration(s(300))
        .timeout_all(s(5));
    let runs = run_all(&timeouts, Some(100));
    row(
        &mut rows,
        "constant 5 s timeouts from 100: limit after 60 s / 300 s (highest)",
        &runs,
        |r| {
            let (_, hi) = r.limit_range(s(0), s(300));
            format!("{} / {} ({hi})", r.limit_at(s(60)), r.limit_at(s(300)))
        },
    );
    if plots {
        draw(
            &docs.join("adaptive-timeouts.svg"),
            "knee 100; every call answered by a timeout after 5 s; all start at 100",
            &runs,
            300.0,
        );
    }

    // 4. Steady load at half the knee for ten minutes.
    let steady = Scenario::closed(100.0, 100, Duration::from_millis(6)).duration(s(601));
    row(
        &mut rows,
        "steady half-knee load, 10 min: requests shed after the first second (first second)",
        &run_all(&steady, None),
        |r| format!("{} ({})", r.shed(s(1), s(601)), r.shed(s(0), s(1))),
    );

    // 5. Sustained overload: does the no-load latency drift and the limit creep?
    let sustained = Scenario::open(100.0, 1.5).duration(s(600));
    let runs = run_all(&sustained, None);
    row(
        &mut rows,
        "1.5x demand for 10 min: limit range over the last 5 min (knee 100)",
        &runs,
        |r| {
            let (lo, hi) = r.limit_range(s(300), s(600));
            format!("{lo}–{hi}")
        },
    );
    row(
        &mut rows,
        "1.5x demand for 10 min: p99 latency over the last 5 min (no-load 6 ms)",
        &runs,
        |r| ms(r.latency_p99(s(300), s(600))),
    );
    if plots {
        draw(
            &docs.join("adaptive-sustained.svg"),
            "knee 100; demand 1.5x capacity for 10 minutes",
            &runs,
            600.0,
        );
    }

    per_request_cost();

    println!();
    print!("| scenario |");
    for a in ALGOS {
        print!(" {} |", a.name());
    }
    println!();
    println!("|---|{}", "---|".repeat(ALGOS.len()));
    for (name, cells) in rows {
        println!("| {name} | {} |", cells.join(" | "));
    }
}

/// What the adaptive layer adds to a request in-process, beside the plain
/// admission layer: two clock reads, a read of the in-flight count and the
/// recorder's relaxed atomic additions. Interleaved rounds of wall time on
/// a current-thread runtime; the service answers at once.
fn per_request_cost() {
    use admit_tower::adaptive::AdaptiveLayer;
    use admit_tower::AdmitLayer;
    use tower::{Layer, Service, ServiceExt};

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let base = tower::service_fn(|_: ()| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(()))
    });
    let limiter = admit::Limiter::builder()
        .capacity(1 << 16)
        .max_capacity(1 << 16)
        .track_leases(false)
        .build()
        .unwrap();
    let admit = AdmitLayer::new(limiter.clone()).layer(base);
    let attached = admit::adaptive::attach(
        limiter.clone(),
        QueueDelay::default(),
        Config::default().initial(1 << 16),
    )
    .unwrap();
    let adaptive = AdaptiveLayer::new(attached.sampler()).layer(base);
    let mut times = [Duration::ZERO; 2];
    admit_benches::interleaved(
        "per request, in-process",
        &["AdmitLayer", "AdaptiveLayer"],
        9,
        200_000,
        |i, n| {
            let start = std::time::Instant::now();
            rt.block_on(async {
                for _ in 0..n {
                    if i == 0 {
                        let mut svc = admit.clone();
                        svc.ready().await.unwrap().call(()).await.unwrap();
                    } else {
                        let mut svc = adaptive.clone();
                        svc.ready().await.unwrap().call(()).await.unwrap();
                    }
                }
            });
            let t = start.elapsed();
            times[i] += t;
            t
        },
    );
    let per_call = |t: Duration| t.as_nanos() as f64 / (9.0 * 200_000.0);
    println!(
        "per request, in-process: AdmitLayer {:.0} ns, AdaptiveLayer {:.0} ns (mean over all rounds)",
        per_call(times[0]),
        per_call(times[1])
    );
}

/// The targets' scenarios for admit's two latency controllers over seeds
/// 1..=n: the worst case of each, so a figure is not one lucky seed.
fn seeds(n: u64) {
    for algo in [Algo::Gradient, Algo::QueueDelay] {
        let (mut worst, mut misses) = (Duration::ZERO, 0);
        for seed in 1..=n {
            for knee in [10.0, 100.0, 1000.0] {
                let scenario = Scenario::open(knee, 1.5)
                    .seed(seed)
                    .duration(s(9))
                    .change(s(3), Change::Knee(knee * 2.0))
                    .change(s(6), Change::Knee(knee));
                let r = algo.run(&scenario, None);
                for (from, to, k) in [(0, 3, knee), (3, 6, knee * 2.0), (6, 9, knee)] {
                    match r.settle_time(s(from), s(to), k, 0.15) {
                        Some(t) if t <= s(2) => worst = worst.max(t),
                        _ => misses += 1,
                    }
                }
            }
        }
        println!(
            "{}: knee steps, worst settling {:.2} s, segments missing 2 s: {misses}",
            algo.name(),
            worst.as_secs_f64()
        );
        let (mut goodput, mut p99) = (f64::MAX, Duration::ZERO);
        for seed in 1..=n {
            let spike = Scenario::open(100.0, 0.8)
                .seed(seed)
                .duration(s(20))
                .change(s(5), Change::Demand(1.4))
                .change(s(15), Change::Demand(0.8));
            let r = algo.run(&spike, None);
            goodput = goodput.min(r.goodput(s(5), s(15)) / r.capacity(s(5), s(15)));
            p99 = p99.max(r.queue_delay_p99(s(5), s(15)));
        }
        println!(
            "{}: 1.4x spike, lowest goodput {:.1} %, highest p99 queueing delay {}",
            algo.name(),
            goodput * 100.0,
            ms(p99)
        );
        let mut shed = 0;
        for seed in 1..=n {
            for knee in [10.0, 100.0] {
                let steady = Scenario::closed(knee, knee as u32, Duration::from_millis(6))
                    .seed(seed)
                    .duration(s(601));
                shed += algo.run(&steady, None).shed(s(1), s(601));
            }
        }
        println!(
            "{}: steady half-knee load, knees 10 and 100, 10 min: {shed} shed after the first second",
            algo.name()
        );
    }
}

/// Three panels over the first `until` seconds: limit (with the knee),
/// p99 latency and goodput per 100 ms.
fn draw(path: &Path, title: &str, runs: &[(Algo, Run)], until: f64) {
    draw_inner(path, title, runs, until)
        .unwrap_or_else(|e| panic!("drawing {}: {e}", path.display()));
    println!("wrote {}", path.display());
}

fn draw_inner(
    path: &Path,
    title: &str,
    runs: &[(Algo, Run)],
    until: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 960)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(40);
    head.titled(title, ("sans-serif", 20).into_font())?;
    let panels = body.split_evenly((3, 1));
    // At most about 600 points a line: long runs keep every nth bucket.
    let in_range = |r: &Run| {
        let kept: Vec<_> = r
            .points
            .iter()
            .filter(|p| p.t.as_secs_f64() <= until)
            .collect();
        let step = kept.len().div_ceil(600).max(1);
        kept.into_iter().step_by(step).cloned().collect::<Vec<_>>()
    };
    let series: Vec<_> = runs
        .iter()
        .map(|(a, r)| (*a, r.bucket, in_range(r)))
        .collect();
    type Get = fn(&admit::adaptive::sim::Point, Duration) -> f64;
    let panels_spec: [(&str, &str, Get); 3] = [
        ("limit (grey: the knee)", "requests", |p, _| {
            f64::from(p.limit)
        }),
        ("p99 latency per 100 ms (clipped at 60 ms)", "ms", |p, _| {
            p.p99_latency().as_secs_f64() * 1e3
        }),
        ("goodput (grey: capacity)", "per second", |p, b| {
            p.goodput(b)
        }),
    ];
    for (i, (caption, unit, get)) in panels_spec.iter().enumerate() {
        let reference = |p: &admit::adaptive::sim::Point| match i {
            0 => p.knee,
            2 => p.capacity,
            _ => 0.0,
        };
        let y_max = series
            .iter()
            .flat_map(|(_, b, ps)| ps.iter().map(move |p| get(p, *b)))
            .chain(series[0].2.iter().map(reference))
            .fold(1.0, f64::max)
            * 1.1;
        let y_max = if i == 1 { y_max.min(60.0) } else { y_max };
        let mut chart = ChartBuilder::on(&panels[i])
            .caption(*caption, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..until, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(*unit)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        if i != 1 {
            chart.draw_series(LineSeries::new(
                series[0]
                    .2
                    .iter()
                    .map(|p| (p.t.as_secs_f64(), reference(p))),
                RGBColor(160, 160, 160).stroke_width(3),
            ))?;
        }
        for (a, b, ps) in &series {
            let color = a.color();
            chart
                .draw_series(LineSeries::new(
                    ps.iter()
                        .map(|p| (p.t.as_secs_f64(), get(p, *b).min(y_max))),
                    color.stroke_width(1),
                ))?
                .label(a.name())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        if i == 0 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
