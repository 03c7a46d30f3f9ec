//! The core limiter against its peers, side by side in one run.
//!
//! Groups:
//! 1. `uncontended`: one owned permit taken and dropped — admit (with and
//!    without a `touch()`), tokio's `Semaphore::try_acquire_owned`,
//!    async-lock's `Semaphore::try_acquire_arc`, and a bare atomic
//!    compare-exchange + fetch_sub pair (the floor).
//! 2. `two_threads`: two threads hammering one limiter (throughput), at
//!    capacity 64 (room to spare) and at capacity 4 (the count near the cap
//!    all the time), against tokio's semaphore and a bare atomic pair.
//! 3. `handoff`: latency of a release reaching a waiting task, on tokio's
//!    current-thread and multi-thread runtimes, beside a one-shot channel
//!    doing the same steps (the floor the runtime sets).
//! 4. `watchdog`: one watchdog tick over 10,000 and over 1,000,000 held
//!    leases; and a health snapshot at 1,000,000 held leases, with a live
//!    watchdog (counters only, no table scan) and without one (the
//!    snapshot scans the table for the oldest lease itself).
//!
//! Ratios, not absolute times, are what benches/README.md records.

use admit::{Limiter, Watchdog, WatchdogConfig};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("uncontended");
    let admit = Limiter::new(64);
    g.bench_function("admit", |b| {
        b.iter(|| drop(black_box(admit.try_acquire().unwrap())))
    });
    g.bench_function("admit_touch", |b| {
        b.iter(|| {
            let p = admit.try_acquire().unwrap();
            p.touch();
            drop(black_box(p))
        })
    });
    let untracked = Limiter::builder()
        .capacity(64)
        .track_leases(false)
        .build()
        .unwrap();
    g.bench_function("admit_untracked", |b| {
        b.iter(|| drop(black_box(untracked.try_acquire().unwrap())))
    });
    let tokio_sem = Arc::new(tokio::sync::Semaphore::new(64));
    g.bench_function("tokio", |b| {
        b.iter(|| drop(black_box(tokio_sem.clone().try_acquire_owned().unwrap())))
    });
    let async_lock_sem = Arc::new(async_lock::Semaphore::new(64));
    g.bench_function("async_lock", |b| {
        b.iter(|| drop(black_box(async_lock_sem.try_acquire_arc().unwrap())))
    });
    let bare = AtomicUsize::new(0);
    g.bench_function("bare_atomic", |b| {
        b.iter(|| {
            let cur = bare.load(Ordering::Relaxed);
            if cur < 64
                && bare
                    .compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                black_box(&bare).fetch_sub(1, Ordering::AcqRel);
            }
        })
    });
    g.finish();
}

/// Enough that starting and joining the two threads (about 0.1 ms here) is
/// a small part of each sample: at 20,000 it was a quarter of the fastest
/// limiter's time, and throughput figures measured thread start-up.
const OPS_PER_THREAD: u64 = 200_000;

/// Runs `op` OPS_PER_THREAD times on each of two threads; returns the time.
fn two_threads(op: impl Fn() + Send + Sync + 'static) -> Duration {
    let op = Arc::new(op);
    let start = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let op = op.clone();
            std::thread::spawn(move || {
                for _ in 0..OPS_PER_THREAD {
                    op();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    start.elapsed()
}

fn contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("two_threads");
    g.throughput(Throughput::Elements(2 * OPS_PER_THREAD));
    g.sample_size(20);
    for capacity in [64, 4] {
        for (name, leases) in [("admit", true), ("admit_untracked", false)] {
            g.bench_function(format!("{name}/cap{capacity}"), |b| {
                b.iter_custom(|iters| {
                    let l = Limiter::builder()
                        .capacity(capacity)
                        .track_leases(leases)
                        .build()
                        .unwrap();
                    (0..iters)
                        .map(|_| {
                            let l = l.clone();
                            two_threads(move || {
                                if let Ok(p) = l.try_acquire() {
                                    drop(black_box(p));
                                }
                            })
                        })
                        .sum()
                })
            });
        }
        g.bench_function(format!("tokio/cap{capacity}"), |b| {
            b.iter_custom(|iters| {
                let s = Arc::new(tokio::sync::Semaphore::new(capacity as usize));
                (0..iters)
                    .map(|_| {
                        let s = s.clone();
                        two_threads(move || {
                            if let Ok(p) = s.clone().try_acquire_owned() {
                                drop(black_box(p));
                            }
                        })
                    })
                    .sum()
            })
        });
        g.bench_function(format!("bare_atomic/cap{capacity}"), |b| {
            b.iter_custom(|iters| {
                let n = Arc::new(AtomicUsize::new(0));
                (0..iters)
                    .map(|_| {
                        let n = n.clone();
                        two_threads(move || {
                            let cur = n.load(Ordering::Relaxed);
                            if cur < capacity as usize
                                && n.compare_exchange(
                                    cur,
                                    cur + 1,
                                    Ordering::AcqRel,
                                    Ordering::Relaxed,
                                )
                                .is_ok()
                            {
                                black_box(&*n).fetch_sub(1, Ordering::AcqRel);
                            }
                        })
                    })
                    .sum()
            })
        });
    }
    g.finish();
}

/// One hand-off: the measuring task queues for a permit another task
/// holds, the other task releases it, and the clock stops when the waiting
/// task has the permit. Both limiters run the same steps.
fn handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("handoff");
    for (name, rt) in [
        (
            "current_thread",
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
        ),
        (
            "multi_thread",
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .build()
                .unwrap(),
        ),
    ] {
        g.bench_function(format!("admit/{name}"), |b| {
            let l = Limiter::builder()
                .capacity(1)
                .queue_limit(1)
                .build()
                .unwrap();
            b.to_async(&rt).iter(|| {
                let l = l.clone();
                async move {
                    let held = l.try_acquire().unwrap();
                    let mut wait = std::pin::pin!(l.acquire());
                    assert!(futures::poll!(&mut wait).is_pending());
                    tokio::spawn(async move { drop(held) });
                    drop(wait.await.unwrap());
                }
            })
        });
        g.bench_function(format!("tokio/{name}"), |b| {
            let s = Arc::new(tokio::sync::Semaphore::new(1));
            b.to_async(&rt).iter(|| {
                let s = s.clone();
                async move {
                    let held = s.clone().try_acquire_owned().unwrap();
                    let mut wait = std::pin::pin!(s.clone().acquire_owned());
                    assert!(futures::poll!(&mut wait).is_pending());
                    tokio::spawn(async move { drop(held) });
                    drop(wait.await.unwrap());
                }
            })
        });
        // The floor: the same steps with a one-shot channel in place of a
        // limiter (a waker registered, one wake, a value passed on), so the
        // runtime's share of a hand-off (spawn, scheduling, the wake) is on
        // record beside the limiters.
        g.bench_function(format!("oneshot_floor/{name}"), |b| {
            b.to_async(&rt).iter(|| async {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let mut wait = std::pin::pin!(rx);
                assert!(futures::poll!(&mut wait).is_pending());
                tokio::spawn(async move {
                    let _ = tx.send(());
                });
                wait.await.unwrap();
            })
        });
    }
    g.finish();
}

fn watchdog(c: &mut Criterion) {
    let mut g = c.benchmark_group("watchdog");
    let l = Limiter::new(10_000);
    let held: Vec<_> = (0..10_000).map(|_| l.try_acquire().unwrap()).collect();
    let mut dog = Watchdog::new(
        l.clone(),
        WatchdogConfig::default().max_idle(Duration::from_secs(3600)),
    );
    g.bench_function("tick_10k_leases", |b| b.iter(|| black_box(dog.tick())));
    drop(held);
    let l = Limiter::new(1_000_000);
    let held: Vec<_> = (0..1_000_000).map(|_| l.try_acquire().unwrap()).collect();
    // An hour's interval: the watchdog stays alive through the snapshot
    // bench below without a thread ticking it.
    let mut dog = Watchdog::new(
        l.clone(),
        WatchdogConfig::default()
            .interval(Duration::from_secs(3600))
            .max_idle(Duration::from_secs(3600)),
    );
    g.sample_size(10);
    g.bench_function("tick_1m_leases", |b| b.iter(|| black_box(dog.tick())));
    let health = l.health();
    assert!(health.snapshot().watchdog.alive);
    g.sample_size(100);
    g.bench_function("snapshot_1m_leases_watchdog_alive", |b| {
        b.iter(|| black_box(health.snapshot()))
    });
    drop((held, dog, health, l));
    let l = Limiter::new(1_000_000);
    let held: Vec<_> = (0..1_000_000).map(|_| l.try_acquire().unwrap()).collect();
    let health = l.health();
    g.sample_size(10);
    g.bench_function("snapshot_1m_leases_no_watchdog", |b| {
        b.iter(|| black_box(health.snapshot()))
    });
    drop(held);
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = uncontended, contended, handoff, watchdog
}
criterion_main!(benches);
