//! `--nodes`: `steady`, `flood` and `wedge` against chat-server nodes in
//! cluster mode, spawned by the `chat-load` binary itself on a PostgreSQL
//! and a redis-server of its own, at small scale.
//!
//! Needs the chat-server binary (see `common::find_server`), PostgreSQL
//! (`initdb`) and `redis-server`. Without them the tests say so and pass,
//! unless `ADMIT_REQUIRE_SERVICES` is set (as in CI): then they fail.

mod common;

use common::{figure, find_server};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static RUN: AtomicUsize = AtomicUsize::new(0);

/// Whether PostgreSQL and redis-server are installed; when they are not,
/// the test skips, or fails under `ADMIT_REQUIRE_SERVICES`.
fn services_present() -> bool {
    let pg = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.path().join("bin/initdb").is_file())
        })
        .unwrap_or(false)
        || Path::new("/usr/local/bin/initdb").is_file();
    let redis = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .iter()
        .any(|p| Path::new(p).is_file());
    if pg && redis {
        return true;
    }
    assert!(
        std::env::var_os("ADMIT_REQUIRE_SERVICES").is_none(),
        "PostgreSQL ({pg}) or redis-server ({redis}) missing, and ADMIT_REQUIRE_SERVICES is set"
    );
    eprintln!("SKIPPED: PostgreSQL installed: {pg}, redis-server installed: {redis}");
    false
}

/// Runs chat-load with `args`; answers its exit code, output and report.
fn run_load(args: &[&str]) -> Option<(i32, String, serde_json::Value)> {
    let server = find_server()?;
    if !services_present() {
        return None;
    }
    let json = std::env::temp_dir().join(format!(
        "chat-load-cluster-{}-{}-{}.json",
        std::process::id(),
        args[0],
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_chat-load"))
        .args(args)
        .arg("--spawn-server")
        .arg(server)
        .args(["--quiet", "--json"])
        .arg(&json)
        .output()
        .expect("chat-load runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report = common::take_report(&json);
    Some((out.status.code().unwrap_or(-1), stdout, report))
}

fn passed(report: &serde_json::Value, check: &str) -> Option<bool> {
    report["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with(check)))?["passed"]
        .as_bool()
}

#[test]
fn steady_across_three_nodes_delivers_every_message_to_every_member() {
    let Some((code, stdout, report)) = run_load(&[
        "steady",
        "--nodes",
        "3",
        "--clients",
        "60",
        "--rooms",
        "6",
        "--users",
        "6",
        "--rate",
        "60",
        "--duration",
        "3",
    ]) else {
        return;
    };
    assert_eq!(code, 0, "steady failed:\n{stdout}");
    assert_eq!(
        passed(&report, "every message reached every member"),
        Some(true)
    );
    assert_eq!(passed(&report, "cluster cap held"), Some(true), "{stdout}");
    assert_eq!(report["config"]["nodes"].as_array().map(Vec::len), Some(3));
    // Every node held a share of the clients: rooms of 10 span the nodes.
    for n in 0..3 {
        let v = figure(&report, &format!("node node{n}"));
        let text = v.as_str().unwrap_or_default();
        let in_use: u64 = text
            .strip_prefix("highest in_use ")
            .and_then(|t| t.split(',').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        assert!(in_use >= 15, "node{n} held {in_use}: {stdout}");
    }
    assert!(
        figure(&report, "messages sent").as_u64() > Some(100),
        "{stdout}"
    );
}

#[test]
fn flood_across_three_nodes_holds_the_cluster_budget() {
    let Some((code, stdout, report)) = run_load(&[
        "flood",
        "--nodes",
        "3",
        "--capacity",
        "20",
        "--cluster-capacity",
        "30",
        "--attempts",
        "300",
        "--baseline",
        "1",
        "--ramp",
        "2",
        "--hold",
        "1",
        "--after",
        "2",
    ]) else {
        return;
    };
    assert_eq!(code, 0, "flood failed:\n{stdout}");
    assert_eq!(passed(&report, "cluster cap held"), Some(true), "{stdout}");
    assert_eq!(figure(&report, "cluster budget").as_u64(), Some(30));
    let sum = figure(&report, "cluster: highest sum of in_use over nodes").as_u64();
    // The budget was reached (less the few the batches keep back), never passed.
    assert!(sum <= Some(30) && sum >= Some(20), "{stdout}");
    assert!(figure(&report, "flood rejected (503 / BUSY)").as_u64() > Some(0));
}

#[test]
fn wedge_leak_on_one_node_heals_and_leaves_the_others_alone() {
    let Some((code, stdout, report)) = run_load(&[
        "wedge",
        "--nodes",
        "2",
        "--capacity",
        "20",
        "--idle-timeout",
        "2",
        "--expect-recovery-within",
        "6",
    ]) else {
        return;
    };
    assert_eq!(code, 0, "wedge failed:\n{stdout}");
    assert_eq!(
        passed(&report, "other nodes unaffected"),
        Some(true),
        "{stdout}"
    );
    assert!(figure(&report, "probes on the other nodes").as_u64() > Some(10));
    assert!(
        figure(&report, "clients admitted again after the fault")
            .as_f64()
            .is_some_and(|s| s <= 6.0),
        "{stdout}"
    );
}
