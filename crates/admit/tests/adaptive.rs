//! The adaptive controllers' contract, sample by sample: bounds, the loss
//! and latency signals, the failure modes each one must not fall into, the
//! lock-free recorder, and what health reports.

use admit::adaptive::{
    Aimd, Algorithm, Config, Controller, Gradient, Kind, Outcome, QueueDelay, Reason, Sample,
};
use admit::{HealthState, Limiter};
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn limiter(max: u32) -> Limiter {
    Limiter::builder()
        .capacity(1)
        .max_capacity(max)
        .build()
        .unwrap()
}

/// Feeds `windows` windows of 100 ms, 50 samples each, all with the given
/// latency and outcome, at `in_flight = limit` (the limit is in use).
fn feed<A: Algorithm>(
    c: &mut Controller<A>,
    start: Duration,
    windows: u64,
    latency: Duration,
    outcome: Outcome,
) -> Duration {
    let mut t = start;
    for _ in 0..windows {
        for _ in 0..50 {
            t += ms(2);
            let in_flight = c.limit();
            c.sample(Sample {
                when: t,
                latency,
                in_flight,
                outcome,
            });
        }
    }
    t
}

#[test]
fn the_limit_stays_within_bounds_and_the_limiter_follows() {
    let l = limiter(500);
    let config = Config::default().min(3).max(40).initial(10);
    let mut c = Controller::new(l.clone(), Gradient::default(), config);
    assert_eq!(l.capacity(), 10);
    // Fast answers: it grows, but never past 40.
    let t = feed(&mut c, Duration::ZERO, 30, ms(5), Outcome::Ok);
    assert_eq!(c.limit(), 40);
    assert_eq!(l.capacity(), 40);
    // Everything lost: it shrinks to 3 and no further.
    feed(&mut c, t, 30, ms(5), Outcome::Dropped);
    assert_eq!(c.limit(), 3);
    assert_eq!(l.capacity(), 3);
    assert_eq!(c.last_decision().unwrap().reason, Reason::Loss);
}

#[test]
fn a_ceiling_above_the_limiters_max_is_clamped() {
    let l = limiter(20);
    let c = Controller::new(l, Aimd::default(), Config::default().max(1_000).initial(50));
    assert_eq!(c.bounds().max, 20);
    assert_eq!(c.limit(), 20);
}

/// Shrinks at every window while the latency holds `latency` after a
/// no-load latency of 10 ms, until the limit has halved. (Past that point
/// a latency that did not move while the concurrency halved is, rightly,
/// taken as the service's new no-load latency; see the simulator's
/// re-basing test.)
fn only_shrinks<A: Algorithm>(algorithm: A, latency: Duration) {
    let l = limiter(1_000);
    let mut c = Controller::new(l, algorithm, Config::default().initial(400));
    // Establish the no-load latency at 10 ms (slow start doubles once).
    let t = feed(&mut c, Duration::ZERO, 2, ms(10), Outcome::Ok);
    // One window straddles the change; count from the first that does not.
    let mut t = feed(&mut c, t, 1, latency, Outcome::Ok);
    let start = c.limit();
    let mut previous = start;
    let mut decisions = 0;
    while c.limit() * 2 > start {
        t = feed(&mut c, t, 1, latency, Outcome::Ok);
        assert!(c.limit() < previous, "from {previous} to {}", c.limit());
        previous = c.limit();
        decisions += 1;
        assert!(decisions < 100);
    }
}

/// Gradient2 grows without bound at a gradient near 0.8 (its additive
/// queue term outweighs the gradient). Here a gradient of 0.8 shrinks the
/// limit at every window.
#[test]
fn a_gradient_below_one_never_grows_the_limit() {
    // 1.8 × 10 ms / 22.5 ms = 0.8.
    only_shrinks(Gradient::default(), Duration::from_micros(22_500));
}

#[test]
fn queue_delay_above_target_never_grows_the_limit() {
    // 6 ms of queueing against a 5 ms target.
    only_shrinks(QueueDelay::default(), ms(16));
}

/// Constant 5 s timeouts look like a perfectly stable latency to a
/// controller that averages them in (Netflix #137). Timeouts are loss.
#[test]
fn constant_timeouts_are_loss_not_a_stable_latency() {
    for kind in [Kind::Gradient, Kind::QueueDelay, Kind::Aimd] {
        let l = limiter(1_000);
        let config = Config::default().initial(100);
        let limit = match kind {
            Kind::Gradient => {
                let mut c = Controller::new(l, Gradient::default(), config);
                feed(&mut c, Duration::ZERO, 100, ms(5_000), Outcome::Timeout);
                c.limit()
            }
            Kind::QueueDelay => {
                let mut c = Controller::new(l, QueueDelay::default(), config);
                feed(&mut c, Duration::ZERO, 100, ms(5_000), Outcome::Timeout);
                c.limit()
            }
            _ => {
                let mut c = Controller::new(l, Aimd::default(), config);
                feed(&mut c, Duration::ZERO, 100, ms(5_000), Outcome::Timeout);
                c.limit()
            }
        };
        assert_eq!(limit, 1, "{kind:?}");
    }
}

#[test]
fn a_small_background_error_rate_is_tolerated() {
    let l = limiter(1_000);
    let mut c = Controller::new(l, Gradient::default(), Config::default().initial(50));
    let mut t = Duration::ZERO;
    for i in 0..1_000u64 {
        t += ms(2);
        let in_flight = c.limit();
        // One request in fifty fails: 2 %, under the 5 % tolerance.
        let outcome = if i % 50 == 0 {
            Outcome::Dropped
        } else {
            Outcome::Ok
        };
        c.sample(Sample {
            when: t,
            latency: ms(5),
            in_flight,
            outcome,
        });
    }
    assert!(c.limit() > 50);
}

#[test]
fn an_unused_limit_does_not_grow() {
    let l = limiter(1_000);
    let mut c = Controller::new(l, Gradient::default(), Config::default().initial(100));
    let mut t = Duration::ZERO;
    for _ in 0..2_000 {
        t += ms(1);
        // Ten in flight against a limit of 100, answering fast.
        c.sample(Sample {
            when: t,
            latency: ms(5),
            in_flight: 10,
            outcome: Outcome::Ok,
        });
    }
    assert_eq!(c.limit(), 100);
    assert_eq!(c.last_decision().unwrap().reason, Reason::AppLimited);
}

#[test]
fn windows_wait_for_enough_samples_but_not_for_ever() {
    let l = limiter(100);
    let mut c = Controller::new(l, Aimd::default(), Config::default().initial(10));
    let timeout = |when| Sample {
        when,
        latency: ms(5_000),
        in_flight: 10,
        outcome: Outcome::Timeout,
    };
    assert!(c.sample(timeout(ms(0))).is_none());
    // Past the interval but short of ten samples: still open.
    assert!(c.sample(timeout(ms(500))).is_none());
    // Ten intervals: judged on what it has.
    let d = c.sample(timeout(ms(1_000))).unwrap();
    assert_eq!(d.reason, Reason::Loss);
    assert_eq!(d.window.timeouts, 3);
    assert_eq!(c.limit(), 9);
}

#[test]
fn an_idle_service_moves_nothing() {
    let l = limiter(100);
    let mut c = Controller::new(
        l.clone(),
        Gradient::default(),
        Config::default().initial(10),
    );
    for s in 0..100 {
        assert!(c.tick(Duration::from_secs(s)).is_none());
    }
    assert_eq!(l.capacity(), 10);
}

#[test]
fn the_recorder_counts_every_sample_from_many_threads() {
    let l = limiter(100);
    let mut c = Controller::new(l, Aimd::default(), Config::default().min_samples(1));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let r = c.recorder();
            std::thread::spawn(move || {
                for n in 0..1_000u64 {
                    r.record(Sample {
                        when: Duration::ZERO,
                        latency: ms(1 + n % 7),
                        in_flight: i + 1,
                        outcome: if n % 10 == 0 {
                            Outcome::Timeout
                        } else {
                            Outcome::Ok
                        },
                    });
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(c.tick(ms(50)).is_none());
    let w = *c.pending();
    assert_eq!((w.ok, w.timeouts), (3_600, 400));
    assert_eq!(w.max_in_flight, 4);
    assert_eq!(w.min_latency, Some(ms(1)));
    let d = c.tick(ms(150)).unwrap();
    assert_eq!(d.window.samples(), 4_000);
    assert_eq!(c.pending().samples(), 0);
}

#[test]
fn health_reports_the_algorithm_the_limit_and_the_last_decision() {
    let l = limiter(100);
    assert_eq!(l.health().snapshot().adaptive, None);
    let mut c = Controller::new(
        l.clone(),
        QueueDelay::default(),
        Config::default().initial(8),
    );
    let view = l.health().snapshot().adaptive.unwrap();
    assert_eq!(view.algorithm, Kind::QueueDelay);
    assert_eq!((view.limit, view.min, view.max), (8, 1, 100));
    assert_eq!(view.last_decision, Reason::Start);
    // Four windows' worth of samples close three windows (the first
    // opens with the first sample).
    feed(&mut c, Duration::ZERO, 4, ms(5), Outcome::Dropped);
    let snap = l.health().snapshot();
    let view = snap.adaptive.unwrap();
    assert_eq!(view.last_decision, Reason::Loss);
    assert_eq!(view.limit, c.limit());
    assert_eq!(snap.capacity, c.limit());
    assert_eq!(view.decisions, 3);
    // The serialised snapshot carries it too.
    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json["adaptive"]["algorithm"], "queue_delay");
    assert_eq!(json["adaptive"]["last_decision"], "loss");
    drop(c);
    assert_eq!(l.health().snapshot().adaptive, None);
}

#[test]
fn health_transitions_follow_the_moving_capacity() {
    let l = limiter(100);
    let mut c = Controller::new(l.clone(), Aimd::default(), Config::default().initial(4));
    let held: Vec<_> = (0..3).map(|_| l.try_acquire().unwrap()).collect();
    assert_eq!(l.health().state(), HealthState::Healthy);
    // Loss shrinks the limit under the permits held: saturated.
    let mut t = Duration::ZERO;
    for _ in 0..10 {
        t = feed(&mut c, t, 1, ms(5), Outcome::Dropped);
    }
    assert!(c.limit() < 3);
    assert_eq!(l.health().state(), HealthState::Saturated);
    // Growth gives room again: healthy.
    for _ in 0..20 {
        t = feed(&mut c, t, 1, ms(5), Outcome::Ok);
    }
    assert!(c.limit() > 3);
    assert_eq!(l.health().state(), HealthState::Healthy);
    drop(held);
}

#[test]
fn the_watchdog_tick_reports_the_controller() {
    let l = limiter(100);
    let mut dog = admit::Watchdog::new(l.clone(), admit::WatchdogConfig::default());
    assert_eq!(dog.tick().adaptive, None);
    let mut c = Controller::new(l.clone(), Gradient::default(), Config::default().initial(6));
    feed(&mut c, Duration::ZERO, 3, ms(5), Outcome::Ok);
    let view = dog.tick().adaptive.unwrap();
    assert_eq!(view.algorithm, Kind::Gradient);
    assert_eq!(view.limit, c.limit());
    assert_eq!(view.last_decision, c.last_decision().unwrap().reason);
}
