mod common;
use admit_redis::ClusterLimiter;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let Some(r) = common::redis() else { return };
    let a = ClusterLimiter::builder(r.client(), "b", 100).node_id("a").start().await.unwrap();
    let b = ClusterLimiter::builder(r.client(), "b", 100).node_id("b").start().await.unwrap();
    println!("{:?}", a.status());
    let mut held = vec![];
    for _ in 0..200 {
        if let Ok(p) = a.try_acquire() { held.push(p) }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("a held {} {:?}", held.len(), a.status());
    println!("{:?}", b.status());
    println!("{:?}", a.cluster_snapshot().await);
}
