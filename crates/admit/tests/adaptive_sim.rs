//! The adaptive controllers against the simulator, in virtual time.
//!
//! Each test asserts one of the promises of `admit::adaptive`: finding the
//! knee after a start or a capacity step, holding goodput and queueing
//! delay through a demand spike, falling to the floor when every call
//! times out, never shedding healthy steady load, and a no-load latency
//! that neither drifts upward under load nor stays stuck when the service
//! really slows down.

use admit::adaptive::sim::{run, run_with, Change, Scenario};
use admit::adaptive::{Aimd, Algorithm, Config, Gradient, QueueDelay};
use std::time::Duration;

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// Knee k, doubled at 3 s, halved back at 6 s; demand 1.5 times the
/// capacity throughout. The limit must be within ±15 % of the
/// knee within 2 s of the start and of each step, and stay there.
fn converges<A: Algorithm>(algorithm: A, knee: f64) {
    let scenario = Scenario::open(knee, 1.5)
        .duration(s(9))
        .change(s(3), Change::Knee(knee * 2.0))
        .change(s(6), Change::Knee(knee));
    let run = run(&scenario, algorithm, Config::default());
    for (from, to, k) in [(0, 3, knee), (3, 6, knee * 2.0), (6, 9, knee)] {
        let settled = run.settle_time(s(from), s(to), k, 0.15);
        assert!(
            settled.is_some_and(|t| t <= s(2)),
            "knee {k} from {from} s: settled after {settled:?}, limits {:?} (range over the last second {:?})",
            run.limits.iter().filter(|(t, _)| *t > s(from) && *t <= s(to)).map(|l| l.1).collect::<Vec<_>>(),
            run.limit_range(s(to - 1), s(to)),
        );
    }
}

#[test]
fn gradient_finds_knee_10() {
    converges(Gradient::default(), 10.0);
}

#[test]
fn gradient_finds_knee_100() {
    converges(Gradient::default(), 100.0);
}

#[test]
fn gradient_finds_knee_1000() {
    converges(Gradient::default(), 1000.0);
}

#[test]
fn queue_delay_finds_knee_10() {
    converges(QueueDelay::default(), 10.0);
}

#[test]
fn queue_delay_finds_knee_100() {
    converges(QueueDelay::default(), 100.0);
}

#[test]
fn queue_delay_finds_knee_1000() {
    converges(QueueDelay::default(), 1000.0);
}

/// Demand at 0.8 of capacity, then 1.4 for ten seconds, then 0.8 again.
fn spike() -> Scenario {
    Scenario::open(100.0, 0.8)
        .duration(s(20))
        .change(s(5), Change::Demand(1.4))
        .change(s(15), Change::Demand(0.8))
}

#[test]
fn queue_delay_holds_goodput_and_delay_through_a_spike() {
    let run = run(&spike(), QueueDelay::default(), Config::default());
    let (from, to) = (s(5), s(15));
    let goodput = run.goodput(from, to);
    let capacity = run.capacity(from, to);
    let p99 = run.queue_delay_p99(from, to);
    assert!(
        goodput >= 0.95 * capacity,
        "goodput {goodput:.0}/s of capacity {capacity:.0}/s"
    );
    assert!(
        p99 <= Duration::from_millis(10),
        "p99 queueing delay {p99:?}"
    );
    // And the controller was the reason: without it, the same spike
    // through a limiter fixed at the ceiling queues far beyond that.
    assert!(run.shed(from, to) > 0);
}

/// Every call answers with a timeout after 5 s, starting from a limit of
/// 100: the limit must fall to the floor, never climb (Netflix #137).
fn falls_to_min<A: Algorithm>(algorithm: A) {
    let end = s(300);
    let scenario = Scenario::open(100.0, 0.2).duration(end).timeout_all(s(5));
    let run = run(&scenario, algorithm, Config::default().initial(100));
    let (_, highest) = run.limit_range(s(0), end);
    assert!(highest <= 100, "the limit climbed to {highest}");
    assert_eq!(run.limit_at(end), 1, "limits {:?}", run.limits);
    assert_eq!(run.ok(s(0), end), 0);
}

#[test]
fn gradient_falls_to_min_under_constant_timeouts() {
    falls_to_min(Gradient::default());
}

#[test]
fn queue_delay_falls_to_min_under_constant_timeouts() {
    falls_to_min(QueueDelay::default());
}

#[test]
fn aimd_falls_to_min_under_constant_timeouts() {
    falls_to_min(Aimd::default());
}

/// Closed-loop clients, as many as the knee, each thinking as long as a
/// request takes: about half the knee in flight, for ten virtual minutes
/// (one for the knee of 100, to keep the suite fast in debug builds).
/// The controller starts at its default initial limit (4) and grows past
/// the demand within its first windows; from then on not one request may
/// be shed (no periodic re-measurement at a floor, Envoy #8337).
fn never_sheds_steady_load<A: Algorithm>(algorithm: A, knee: f64, minutes: u64) {
    let end = s(1 + 60 * minutes);
    let scenario = Scenario::closed(knee, knee as u32, Duration::from_millis(6)).duration(end);
    let run = run(&scenario, algorithm, Config::default());
    let served = run.ok(s(1), end);
    let expected = knee / 2.0 / 0.0066 * (end - s(1)).as_secs_f64();
    assert!(served as f64 > expected * 0.9, "served {served}");
    assert_eq!(
        run.shed(s(1), end),
        0,
        "limits {:?}",
        run.limit_range(s(1), end)
    );
    assert_eq!(run.timeouts(s(0), end), 0);
}

#[test]
fn gradient_never_sheds_steady_load_10() {
    never_sheds_steady_load(Gradient::default(), 10.0, 10);
}

#[test]
fn gradient_never_sheds_steady_load_100() {
    never_sheds_steady_load(Gradient::default(), 100.0, 1);
}

#[test]
fn queue_delay_never_sheds_steady_load_10() {
    never_sheds_steady_load(QueueDelay::default(), 10.0, 10);
}

#[test]
fn queue_delay_never_sheds_steady_load_100() {
    never_sheds_steady_load(QueueDelay::default(), 100.0, 1);
}

/// A virtual minute of demand at 1.5 times capacity: every request
/// sees a loaded backend. The no-load estimate must not ratchet up to
/// the loaded latency (Vegas #165, Envoy #11579), and so the limit must not
/// creep past the knee.
#[test]
fn no_load_latency_does_not_drift_under_sustained_load() {
    let scenario = Scenario::open(50.0, 1.5).duration(s(60));
    let base = scenario.backend.base;
    let (run, noload) = run_with(&scenario, Gradient::default(), Config::default(), |c| {
        c.algorithm().noload().get()
    });
    let noload = noload.unwrap();
    assert!(
        noload <= base.mul_f64(1.1),
        "no-load estimate {noload:?} against {base:?}"
    );
    let (lo, hi) = run.limit_range(s(5), s(60));
    assert!(lo >= 43 && hi <= 57, "limit between {lo} and {hi}");
}

/// The service itself becomes twice as slow (same knee): the no-load
/// estimate must follow, or the controller would sit at its floor for ever.
#[test]
fn no_load_latency_rebases_when_the_service_slows_down() {
    let scenario = Scenario::open(100.0, 1.5)
        .duration(s(20))
        .change(s(5), Change::Base(Duration::from_millis(12)));
    let (run, noload) = run_with(&scenario, Gradient::default(), Config::default(), |c| {
        c.algorithm().noload().get()
    });
    let noload = noload.unwrap();
    assert!(
        noload >= Duration::from_millis(11),
        "no-load estimate stuck at {noload:?}"
    );
    let settled = run.settle_time(s(5), s(20), 100.0, 0.15);
    assert!(
        settled.is_some_and(|t| t <= s(5)),
        "settled after {settled:?}"
    );
}

/// The same seed gives the same run: nothing reads a clock.
#[test]
fn runs_are_deterministic() {
    let scenario = spike().duration(s(8)).seed(7);
    let a = run(&scenario, Gradient::default(), Config::default());
    let b = run(&scenario, Gradient::default(), Config::default());
    assert_eq!(a.limits, b.limits);
    let c = run(
        &scenario.clone().seed(8),
        Gradient::default(),
        Config::default(),
    );
    assert_ne!(a.limits, c.limits);
}
