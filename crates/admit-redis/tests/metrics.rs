//! With the `metrics` feature, a node publishes its cluster figures beside
//! the local limiter's.
#![cfg(feature = "metrics")]

mod common;

use admit_redis::ClusterLimiter;
use metrics_exporter_prometheus::PrometheusBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_publishes_its_share_and_redis_state() {
    let Some(r) = common::redis() else { return };
    let node = ClusterLimiter::builder(r.client(), "metrics", 40)
        .node_id("m")
        .start()
        .await
        .unwrap();
    let _p = node.try_acquire().unwrap();
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || node.publish_metrics());
    let text = handle.render();
    let share = node.status().share;
    for line in [
        format!("admit_cluster_share{{budget=\"metrics\",node=\"m\"}} {share}"),
        "admit_cluster_budget{budget=\"metrics\",node=\"m\"} 40".to_owned(),
        "admit_cluster_redis_up{budget=\"metrics\",node=\"m\"} 1".to_owned(),
        "admit_cluster_mode{budget=\"metrics\",node=\"m\"} 0".to_owned(),
        "admit_in_use{limiter=\"metrics@m\"} 1".to_owned(),
    ] {
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
    // Every metric comes with its description, the cluster's and the
    // local limiter's alike.
    for name in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
    {
        // A summary's `_sum` and `_count` lines share its description.
        let name = ["_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| text.contains(&format!("# HELP {base} ")))
            .unwrap_or(name);
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no description in:\n{text}"
        );
    }
    assert!(text.contains("# HELP admit_cluster_share Permits this node may admit"));
}
