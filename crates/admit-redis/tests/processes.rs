//! Nodes in their own processes: storms across processes, SIGKILL, SIGSTOP.

mod common;

use admit_redis::{BudgetKeys, ClusterLimiter};
use common::child::NodeProcess;
use std::time::{Duration, Instant};

/// The body of a node process (see `common/child.rs`); does nothing when
/// run as an ordinary test.
#[test]
fn child_node() {
    common::child::run_if_child();
}

async fn snapshot(
    keys: &BudgetKeys,
    con: &mut redis::aio::MultiplexedConnection,
) -> admit_redis::ClusterSnapshot {
    keys.snapshot(con).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storms_in_three_processes_never_exceed_the_budget() {
    let Some(r) = common::redis() else { return };
    const BUDGET: u32 = 30;
    let nodes: Vec<NodeProcess> = (0..3)
        .map(|i| NodeProcess::spawn(&r.url(), "storm", BUDGET, &format!("p{i}"), "storm"))
        .collect();
    let keys = BudgetKeys::new("admit:", "storm");
    let mut con = r.client().get_multiplexed_async_connection().await.unwrap();
    let start = Instant::now();
    let mut max_shares = 0;
    while start.elapsed() < Duration::from_secs(4) {
        let snap = snapshot(&keys, &mut con).await;
        assert!(
            snap.shares_total() <= BUDGET,
            "confirmed shares above the budget: {snap:?}"
        );
        max_shares = max_shares.max(snap.shares_total());
        let held: i64 = redis::cmd("GET")
            .arg("test:held")
            .query_async::<Option<i64>>(&mut con)
            .await
            .unwrap()
            .unwrap_or(0);
        assert!(
            held <= BUDGET as i64,
            "{held} permits held across processes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peak: i64 = redis::cmd("GET")
        .arg("test:peak")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        peak <= BUDGET as i64,
        "peak {peak} above the budget {BUDGET}"
    );
    // The storm really pressed on the budget: most of it was in use at once.
    assert!(
        peak >= (BUDGET as i64) * 2 / 3,
        "peak {peak}: the storm never filled the budget"
    );
    let stats: Vec<_> = nodes.iter().map(|n| n.fresh()).collect();
    for s in &stats {
        assert!(s.held <= s.share, "{s:?}");
        assert!(s.admitted > 50, "a node made no progress: {s:?}");
    }
    assert!(stats.iter().map(|s| s.share).sum::<u32>() <= BUDGET);
    assert_eq!(max_shares, BUDGET, "shares never grew to the whole budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_share_returns_within_3s() {
    let Some(r) = common::redis() else { return };
    let keys = BudgetKeys::new("admit:", "kill");
    let mut victim = NodeProcess::spawn(&r.url(), "kill", 50, "victim", "hold:30");
    victim.until(Duration::from_secs(5), |s| s.held == 30);
    let mut con = r.client().get_multiplexed_async_connection().await.unwrap();
    let before = snapshot(&keys, &mut con).await;
    assert!(
        before
            .nodes
            .iter()
            .any(|n| n.node == "victim" && n.share >= 30),
        "{before:?}"
    );

    // A survivor that wants the whole budget can only have it once the
    // victim's lease is gone.
    let survivor = ClusterLimiter::builder(r.client(), "kill", 50)
        .node_id("survivor")
        .start()
        .await
        .unwrap();
    let mut held = Vec::new();
    victim.sigkill();
    let killed = Instant::now();
    let freed = common::eventually(Duration::from_secs(5), async || {
        !snapshot(&keys, &mut con)
            .await
            .nodes
            .iter()
            .any(|n| n.node == "victim")
    })
    .await
    .expect("the killed node's entry never went away");
    eprintln!("killed node's share freed in redis {freed:?} after SIGKILL");
    assert!(
        freed < Duration::from_secs(3),
        "share freed after {freed:?}"
    );
    let full = common::eventually(Duration::from_secs(5), async || {
        while let Ok(p) = survivor.try_acquire() {
            held.push(p);
        }
        held.len() == 50
    })
    .await;
    let took = killed.elapsed();
    assert!(
        full.is_some(),
        "the survivor never got the whole budget: {:?}",
        survivor.status()
    );
    assert!(
        took < Duration::from_millis(3_300),
        "whole budget usable after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_cannot_over_admit_when_it_wakes() {
    let Some(r) = common::redis() else { return };
    const BUDGET: u32 = 40;
    let keys = BudgetKeys::new("admit:", "pause");
    let sleeper = NodeProcess::spawn(&r.url(), "pause", BUDGET, "sleeper", "hold:20");
    let s = sleeper.until(Duration::from_secs(5), |s| s.held == 20);
    let epoch_before = s.epoch;

    let other = ClusterLimiter::builder(r.client(), "pause", BUDGET)
        .node_id("other")
        .start()
        .await
        .unwrap();
    sleeper.sigstop();
    let paused = Instant::now();
    // While the sleeper is stopped its lease runs out, and the other node
    // takes the whole budget.
    let mut held = Vec::new();
    let got_all = common::eventually(Duration::from_secs(6), async || {
        while let Ok(p) = other.try_acquire() {
            held.push(p);
        }
        held.len() == BUDGET as usize
    })
    .await;
    assert!(
        got_all.is_some(),
        "other never got the budget: {:?}",
        other.status()
    );
    assert!(
        paused.elapsed() > Duration::from_secs(2),
        "the sleeper's lease ended early"
    );

    let woke_ms = common::child::monotonic_ms();
    sleeper.sigcont();
    // It wakes with its lease expired: it admits nothing, and when it asks
    // Redis it is fenced out (new epoch, share 0: the budget is taken).
    let woke = Instant::now();
    let mut con = r.client().get_multiplexed_async_connection().await.unwrap();
    while woke.elapsed() < Duration::from_millis(1_500) {
        let s = sleeper.fresh();
        assert!(s.last_admit_ms < woke_ms, "the woken node admitted: {s:?}");
        assert!(s.share == 0, "the woken node claims a share: {s:?}");
        let snap = snapshot(&keys, &mut con).await;
        assert!(snap.shares_total() <= BUDGET, "{snap:?}");
    }
    let s = sleeper.fresh();
    assert_ne!(
        s.epoch, epoch_before,
        "the woken node kept its old grant: {s:?}"
    );
    assert_eq!(s.mode, "leased", "the woken node never joined again: {s:?}");
    // Once the other node lets go, the sleeper is served again.
    drop(held);
    sleeper.until(Duration::from_secs(4), |s| s.last_admit_ms > woke_ms);
}
