//! Several nodes and budgets in one process: storms, fairness, and Redis
//! stopped, paused and restarted under load.

mod common;

use admit_redis::{BudgetKeys, Cause, ClusterLimiter, Mode, NodeHealth};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A storm on one node: tasks that acquire, hold for a few ms and release,
/// counting held permits per budget in `held` and checking the cap on
/// every admission.
fn storm(node: &ClusterLimiter, held: Arc<AtomicU32>, cap: u32, stop: Arc<AtomicBool>, seed: u64) {
    // Enough tasks that three nodes together ask for half again the budget.
    for i in 0..u64::from((cap / 2).max(4)) {
        let node = node.clone();
        let (held, stop) = (held.clone(), stop.clone());
        tokio::spawn(async move {
            let mut x = (seed * 31 + i).wrapping_mul(0x9e3779b97f4a7c15) | 1;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if let Ok(p) = node.try_acquire() {
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    assert!(now <= cap, "{now} permits held against a budget of {cap}");
                    tokio::time::sleep(Duration::from_millis(1 + x % 8)).await;
                    held.fetch_sub(1, Ordering::SeqCst);
                    drop(p);
                } else {
                    tokio::time::sleep(Duration::from_millis(1 + x % 3)).await;
                }
            }
        });
    }
}

async fn nodes(r: &common::Redis, budget: &str, cap: u32, n: usize) -> Vec<ClusterLimiter> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(
            ClusterLimiter::builder(r.client(), budget, cap)
                .node_id(format!("{budget}-{i}"))
                .min_batch(4)
                .start()
                .await
                .unwrap(),
        );
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storms_on_two_budgets_never_exceed_either() {
    let Some(r) = common::redis() else { return };
    let budgets = [("small", 12u32), ("large", 40u32)];
    let stop = Arc::new(AtomicBool::new(false));
    let mut all = Vec::new();
    let mut counters = Vec::new();
    for (name, cap) in budgets {
        let ns = nodes(&r, name, cap, 3).await;
        let held = Arc::new(AtomicU32::new(0));
        for (i, n) in ns.iter().enumerate() {
            storm(n, held.clone(), cap, stop.clone(), i as u64);
        }
        counters.push((name, cap, held));
        all.push(ns);
    }
    let mut con = r.client().get_multiplexed_async_connection().await.unwrap();
    let mut peaks = [0u32; 2];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        for (k, (name, cap, held)) in counters.iter().enumerate() {
            let snap = BudgetKeys::new("admit:", name)
                .snapshot(&mut con)
                .await
                .unwrap();
            assert!(snap.shares_total() <= *cap, "{snap:?}");
            assert!(snap.nodes.len() == 3, "{snap:?}");
            let local: u32 = all[k].iter().map(|n| n.status().share).sum();
            assert!(local <= *cap, "nodes admit on {local} against {cap}");
            peaks[k] = peaks[k].max(held.load(Ordering::SeqCst));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for (k, (_, cap, _)) in counters.iter().enumerate() {
        assert!(
            peaks[k] >= cap * 2 / 3,
            "budget {k} never came near full: peak {}",
            peaks[k]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starved_node_gets_its_fair_share_within_2s() {
    let Some(r) = common::redis() else { return };
    const BUDGET: u32 = 30;
    let greedy = ClusterLimiter::builder(r.client(), "fair", BUDGET)
        .node_id("greedy")
        .start()
        .await
        .unwrap();
    // greedy grows to the whole budget, then most of it goes idle.
    let mut held = Vec::new();
    common::eventually(Duration::from_secs(3), async || {
        while let Ok(p) = greedy.try_acquire() {
            held.push(p);
        }
        held.len() == BUDGET as usize
    })
    .await
    .expect("greedy never got the budget");
    held.truncate(8);
    assert_eq!(greedy.status().share, BUDGET);

    let late = ClusterLimiter::builder(r.client(), "fair", BUDGET)
        .node_id("late")
        .start()
        .await
        .unwrap();
    let joined = Instant::now();
    let mut mine = Vec::new();
    let took = common::eventually(Duration::from_secs(4), async || {
        while let Ok(p) = late.try_acquire() {
            mine.push(p);
        }
        mine.len() >= (BUDGET / 2) as usize
    })
    .await;
    assert!(
        took.is_some(),
        "late node stuck at {}: {:?} / {:?}",
        mine.len(),
        late.status(),
        greedy.status()
    );
    let took = joined.elapsed();
    eprintln!("late node held its fair share {took:?} after joining");
    assert!(took < Duration::from_secs(2), "fair share after {took:?}");
    // greedy kept what it uses, gave back the idle rest down to its fair share.
    let g = greedy.status();
    assert!(g.share >= 8 && g.share <= BUDGET / 2 + 1, "{g:?}");
}

/// Nodes under a storm while Redis is paused, killed and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_and_restarted_mid_storm() {
    let Some(mut r) = common::redis() else { return };
    const BUDGET: u32 = 30;
    let ns = nodes(&r, "outage", BUDGET, 3).await;
    let held = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    for (i, n) in ns.iter().enumerate() {
        storm(n, held.clone(), BUDGET, stop.clone(), i as u64);
    }
    let keys = BudgetKeys::new("admit:", "outage");
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    for outage in ["pause", "restart"] {
        let before: Vec<_> = ns.iter().map(|n| n.status()).collect();
        for s in &before {
            assert_eq!(s.mode, Mode::Leased, "{outage}: {s:?}");
        }
        let fair = BUDGET / 3;
        let mut changes = ns[0].changes();
        changes.mark_unchanged();
        match outage {
            "pause" => r.pause(),
            _ => r.kill(),
        }
        let down = Instant::now();
        // Every node notices within a heartbeat and a call deadline, and
        // reports degraded with cause `cluster`.
        for n in &ns {
            let t = common::eventually(Duration::from_secs(3), async || {
                n.health() == NodeHealth::Degraded(Cause::Cluster)
            })
            .await;
            assert!(
                t.is_some(),
                "{outage}: {:?} never went degraded",
                n.status()
            );
        }
        // The change was announced to subscribers too.
        tokio::time::timeout(
            Duration::from_secs(1),
            changes.wait_for(|h| *h == NodeHealth::Degraded(Cause::Cluster)),
        )
        .await
        .expect("no degraded change announced")
        .unwrap();
        // Within shares all along; past the lease, within the fair share.
        while down.elapsed() < Duration::from_secs(4) {
            for (n, b) in ns.iter().zip(&before) {
                let s = n.status();
                assert!(
                    s.share <= b.share,
                    "{outage}: share grew while cut off: {s:?}"
                );
                if down.elapsed() > Duration::from_millis(2_600) {
                    assert_eq!(s.mode, Mode::Fallback, "{outage}: {s:?}");
                    assert!(
                        s.share <= fair,
                        "{outage}: fallback above fair share: {s:?}"
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let admitted: u64 = ns
            .iter()
            .map(|n| n.limiter().health().snapshot().admitted_total)
            .sum();
        match outage {
            "pause" => r.resume(),
            _ => r.start(),
        }
        let back = Instant::now();
        for n in &ns {
            let t = common::eventually(Duration::from_secs(6), async || {
                let s = n.status();
                s.mode == Mode::Leased && s.redis_reachable && n.health().cause().is_none()
            })
            .await;
            assert!(t.is_some(), "{outage}: {:?} never rejoined", n.status());
        }
        let rejoined = back.elapsed();
        eprintln!("{outage}: every node rejoined {rejoined:?} after redis came back");
        assert!(
            rejoined < Duration::from_secs(5),
            "{outage}: rejoined after {rejoined:?}"
        );
        // Still serving: admissions went on through the outage and after.
        let after: u64 = ns
            .iter()
            .map(|n| n.limiter().health().snapshot().admitted_total)
            .sum();
        assert!(after > admitted, "{outage}: no admissions after rejoining");

        // No permit counted twice: one entry per node, shares within the
        // budget, and each node's entry covers what it holds.
        let mut con = r.client().get_multiplexed_async_connection().await.unwrap();
        let snap = keys.snapshot(&mut con).await.unwrap();
        assert_eq!(snap.nodes.len(), 3, "{outage}: {snap:?}");
        assert!(snap.shares_total() <= BUDGET, "{outage}: {snap:?}");
        for n in &ns {
            let s = n.status();
            let entry = snap.nodes.iter().find(|e| e.node == s.node).unwrap();
            assert_eq!(Some(entry.epoch), s.epoch, "{outage}: {s:?} vs {entry:?}");
            assert!(s.share <= entry.share, "{outage}: {s:?} vs {entry:?}");
        }
        if outage == "restart" {
            for (n, b) in ns.iter().zip(&before) {
                assert!(
                    n.status().epoch > b.epoch,
                    "a grant from before the restart survived"
                );
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_share_shrinks_back_to_a_batch() {
    let Some(r) = common::redis() else { return };
    let node = ClusterLimiter::builder(r.client(), "idle", 100)
        .node_id("idle")
        .min_batch(4)
        .start()
        .await
        .unwrap();
    let mut held = Vec::new();
    common::eventually(Duration::from_secs(3), async || {
        while let Ok(p) = node.try_acquire() {
            held.push(p);
        }
        held.len() >= 60
    })
    .await
    .expect("the share never grew");
    held.clear();
    let grown = node.status().share;
    assert!(grown >= 60, "{:?}", node.status());
    // Idle for two heartbeats, the node gives back all but a batch, in
    // Redis too.
    let mut con = r.client().get_multiplexed_async_connection().await.unwrap();
    let keys = BudgetKeys::new("admit:", "idle");
    let took = common::eventually(Duration::from_secs(5), async || {
        let snap = keys.snapshot(&mut con).await.unwrap();
        node.status().share <= 4 && snap.shares_total() <= 4
    })
    .await;
    assert!(took.is_some(), "share still {:?}", node.status());
    eprintln!(
        "idle share {grown} shrank to {} in {took:?}",
        node.status().share
    );
}
