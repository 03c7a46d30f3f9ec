//! admit-redis against the plain local limiter and a per-permit Redis
//! semaphore, side by side in one run. Starts its own redis-server on a
//! free loopback port (and skips, saying so, when there is none).
//!
//! Groups:
//! 1. `cluster_admission`: one permit taken and dropped within the node's
//!    confirmed share (`ClusterLimiter::try_acquire`) against the plain
//!    `admit::Limiter` it wraps, and against the peer, a Redis semaphore
//!    that pays one INCR and one DECR round trip per connection.
//! 2. `share_growth`: a node going from 0 to 1,000 connections in a burst:
//!    time until all 1,000 are admitted, and the rejections suffered
//!    meanwhile (printed), against the per-permit semaphore. Our node is
//!    measured twice: callers that are refused and retry after 100 µs
//!    (`try_acquire`, as a rejecting accept loop sees it), and callers that
//!    wait in the node's local queue (`acquire`).
//!
//! Ratios, not absolute times, are what benches/README.md records.

use admit::Limiter;
use admit_redis::ClusterLimiter;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BURST: u32 = 1_000;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> Option<(Server, redis::Client)> {
    let bin = "/usr/bin/redis-server";
    if !Path::new(bin).exists() {
        if std::env::var_os("ADMIT_REQUIRE_SERVICES").is_some() {
            panic!("{bin} is missing and ADMIT_REQUIRE_SERVICES is set");
        }
        eprintln!("SKIPPED: {bin} not found; the admit-redis benches need redis-server");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let dir = std::env::temp_dir().join(format!("admit-bench-redis-{port}"));
    std::fs::create_dir_all(&dir).ok()?;
    let child = Command::new(bin)
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    for _ in 0..500 {
        if let Ok(mut c) = client.get_connection() {
            if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                return Some((server, client));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// The peer: one INCR per admission (refused and undone with a DECR when
/// the count passes the budget), one DECR per release.
#[derive(Clone)]
struct RedisSemaphore {
    con: redis::aio::MultiplexedConnection,
    key: String,
    budget: i64,
}

impl RedisSemaphore {
    async fn try_acquire(&mut self) -> bool {
        let n: i64 = redis::cmd("INCR")
            .arg(&self.key)
            .query_async(&mut self.con)
            .await
            .unwrap();
        if n > self.budget {
            self.release().await;
            return false;
        }
        true
    }

    async fn release(&mut self) {
        let _: i64 = redis::cmd("DECR")
            .arg(&self.key)
            .query_async(&mut self.con)
            .await
            .unwrap();
    }
}

static BUDGET_SEQ: AtomicU64 = AtomicU64::new(0);

fn fresh_name() -> String {
    format!("bench{}", BUDGET_SEQ.fetch_add(1, Ordering::Relaxed))
}

fn benches(c: &mut Criterion) {
    let Some((_server, client)) = redis_server() else {
        return;
    };
    let rt = admit_benches::runtime();

    // 1. Admission within the share.
    let local = Limiter::builder()
        .capacity(64)
        .max_capacity(BURST)
        .build()
        .unwrap();
    let node = rt
        .block_on(
            ClusterLimiter::builder(client.clone(), fresh_name(), BURST)
                .min_batch(64)
                .start(),
        )
        .unwrap();
    assert!(node.status().share >= 1, "the node joined with a share");
    let mut g = c.benchmark_group("cluster_admission");
    g.bench_function("admit_local", |b| {
        b.iter(|| drop(black_box(local.try_acquire().unwrap())))
    });
    g.bench_function("admit_redis_node", |b| {
        b.iter(|| drop(black_box(node.try_acquire().unwrap())))
    });
    let sem = RedisSemaphore {
        con: rt
            .block_on(client.get_multiplexed_async_connection())
            .unwrap(),
        key: fresh_name(),
        budget: BURST as i64,
    };
    g.bench_function("redis_incr_decr", |b| {
        b.to_async(&rt).iter(|| {
            let mut s = sem.clone();
            async move {
                assert!(s.try_acquire().await);
                s.release().await;
            }
        })
    });
    g.finish();
    admit_benches::interleaved(
        "cluster_admission",
        &["admit_local", "admit_redis_node"],
        15,
        2_000_000,
        |i, n| {
            let start = Instant::now();
            for _ in 0..n {
                if i == 0 {
                    drop(black_box(local.try_acquire().unwrap()));
                } else {
                    drop(black_box(node.try_acquire().unwrap()));
                }
            }
            start.elapsed()
        },
    );

    // 2. Share growth: 0 -> 1,000 connections at once.
    let mut g = c.benchmark_group("share_growth");
    g.sample_size(10);
    let rejections = Arc::new(AtomicU64::new(0));
    let bursts = Arc::new(AtomicU64::new(0));
    {
        let (rej, n) = (rejections.clone(), bursts.clone());
        let client = client.clone();
        g.bench_function("admit_redis_retry", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (rej, n, client) = (rej.clone(), n.clone(), client.clone());
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let node = ClusterLimiter::builder(client.clone(), fresh_name(), BURST)
                            .start()
                            .await
                            .unwrap();
                        let start = Instant::now();
                        let tasks: Vec<_> = (0..BURST)
                            .map(|_| {
                                let (node, rej) = (node.clone(), rej.clone());
                                tokio::spawn(async move {
                                    loop {
                                        match node.try_acquire() {
                                            Ok(p) => return p,
                                            Err(_) => {
                                                rej.fetch_add(1, Ordering::Relaxed);
                                                tokio::time::sleep(Duration::from_micros(100))
                                                    .await;
                                            }
                                        }
                                    }
                                })
                            })
                            .collect();
                        let mut held = Vec::with_capacity(BURST as usize);
                        for t in tasks {
                            held.push(t.await.unwrap());
                        }
                        total += start.elapsed();
                        n.fetch_add(1, Ordering::Relaxed);
                        drop(held);
                        let _ = node.leave().await;
                    }
                    total
                }
            })
        });
    }
    println!(
        "share_growth/admit_redis_retry: {:.1} rejections per burst of {BURST}",
        rejections.swap(0, Ordering::Relaxed) as f64
            / bursts.swap(0, Ordering::Relaxed).max(1) as f64
    );
    {
        let client = client.clone();
        g.bench_function("admit_redis_queue", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let client = client.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let node = ClusterLimiter::builder(client.clone(), fresh_name(), BURST)
                            .queue_limit(BURST)
                            .start()
                            .await
                            .unwrap();
                        let start = Instant::now();
                        let tasks: Vec<_> = (0..BURST)
                            .map(|_| {
                                let node = node.clone();
                                tokio::spawn(async move { node.acquire().await.unwrap() })
                            })
                            .collect();
                        let mut held = Vec::with_capacity(BURST as usize);
                        for t in tasks {
                            held.push(t.await.unwrap());
                        }
                        total += start.elapsed();
                        drop(held);
                        let _ = node.leave().await;
                    }
                    total
                }
            })
        });
    }
    {
        let (rej, n) = (rejections.clone(), bursts.clone());
        let client = client.clone();
        g.bench_function("redis_incr_decr", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (rej, n, client) = (rej.clone(), n.clone(), client.clone());
                async move {
                    let con = client.get_multiplexed_async_connection().await.unwrap();
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let sem = RedisSemaphore {
                            con: con.clone(),
                            key: fresh_name(),
                            budget: BURST as i64,
                        };
                        let held = Arc::new(AtomicU32::new(0));
                        let start = Instant::now();
                        let tasks: Vec<_> = (0..BURST)
                            .map(|_| {
                                let (mut sem, rej, held) = (sem.clone(), rej.clone(), held.clone());
                                tokio::spawn(async move {
                                    while !sem.try_acquire().await {
                                        rej.fetch_add(1, Ordering::Relaxed);
                                        tokio::time::sleep(Duration::from_micros(100)).await;
                                    }
                                    held.fetch_add(1, Ordering::Relaxed);
                                    sem
                                })
                            })
                            .collect();
                        let mut sems = Vec::with_capacity(BURST as usize);
                        for t in tasks {
                            sems.push(t.await.unwrap());
                        }
                        total += start.elapsed();
                        n.fetch_add(1, Ordering::Relaxed);
                        assert_eq!(held.load(Ordering::Relaxed), BURST);
                        // Releases cost a round trip each too (not timed).
                        for mut s in sems.drain(..10) {
                            s.release().await;
                        }
                    }
                    total
                }
            })
        });
    }
    println!(
        "share_growth/redis_incr_decr: {:.1} rejections per burst of {BURST}",
        rejections.swap(0, Ordering::Relaxed) as f64
            / bursts.swap(0, Ordering::Relaxed).max(1) as f64
    );
    g.finish();
    drop(node);
}

criterion_group! {
    name = redis_benches;
    config = admit_benches::criterion();
    targets = benches
}
criterion_main!(redis_benches);
