//! Runs `flood` and `wedge` at tiny scale against a real chat-server
//! binary, through the `chat-load` binary itself, so the exit code CI relies
//! on is what is tested.
//!
//! The server is not built here: `common::find_server` says where it is
//! looked for.

mod common;

use common::{figure, find_server};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Numbers each run so parallel tests write distinct report files.
static RUN: AtomicUsize = AtomicUsize::new(0);

fn run_load(server: &Path, args: &[&str]) -> Option<(i32, String, serde_json::Value)> {
    let json = std::env::temp_dir().join(format!(
        "chat-load-test-{}-{}-{}.json",
        std::process::id(),
        args[0],
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_chat-load"))
        .args(args)
        .arg("--spawn-server")
        .arg(server)
        .arg("--quiet")
        .arg("--json")
        .arg(&json)
        .output()
        .expect("chat-load runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{stdout}\n{stderr}");
    if stderr.contains("chat-server exited before listening") {
        // A binary that exits at once is not a chat server yet (the
        // workspace's placeholder); its own tests judge it.
        eprintln!("SKIPPED: {} exited before listening", server.display());
        return None;
    }
    let report = common::take_report(&json);
    Some((out.status.code().unwrap_or(-1), stdout, report))
}

#[test]
fn flood_holds_the_cap_and_answers_every_rejection() {
    let Some(server) = find_server() else { return };
    let Some((code, stdout, report)) = run_load(
        &server,
        &[
            "flood",
            "--capacity",
            "50",
            "--attempts",
            "500",
            "--baseline",
            "1",
            "--ramp",
            "2",
            "--hold",
            "1",
            "--after",
            "2",
        ],
    ) else {
        return;
    };
    assert_eq!(code, 0, "flood failed:\n{stdout}");
    assert!(stdout.contains("PASS cap held"), "{stdout}");
    assert!(figure(&report, "highest in_use seen on /health").as_u64() <= Some(50));
    assert!(figure(&report, "flood rejected (503 / BUSY)").as_u64() > Some(0));
    assert_eq!(
        report["checks"].as_array().map(|c| c.is_empty()),
        Some(false)
    );
}

#[test]
fn wedge_leak_is_noticed_and_repaired() {
    let Some(server) = find_server() else { return };
    let Some((code, stdout, report)) = run_load(
        &server,
        &[
            "wedge",
            "--capacity",
            "50",
            "--idle-timeout",
            "2",
            "--expect-recovery-within",
            "6",
        ],
    ) else {
        return;
    };
    assert_eq!(code, 0, "wedge failed:\n{stdout}");
    assert!(
        figure(&report, "clients admitted again after the fault")
            .as_f64()
            .is_some_and(|s| s <= 6.0),
        "{stdout}"
    );
}

#[test]
fn an_unmet_recovery_bound_fails_the_run() {
    let Some(server) = find_server() else { return };
    // Leaked permits can only be reclaimed after the idle timeout (2 s), so
    // a 0.5 s bound cannot be met: the tool must exit 1.
    let Some((code, stdout, _)) = run_load(
        &server,
        &[
            "wedge",
            "--capacity",
            "20",
            "--idle-timeout",
            "2",
            "--expect-recovery-within",
            "0.5",
        ],
    ) else {
        return;
    };
    assert_eq!(code, 1, "expected a failed check:\n{stdout}");
    assert!(stdout.contains("FAIL recovered in time"), "{stdout}");
}

#[test]
fn wedge_stall_is_repaired() {
    let Some(server) = find_server() else { return };
    // The spawned server gets a wait queue (2 × waiters) for this fault.
    let Some((code, stdout, report)) = run_load(
        &server,
        &[
            "wedge",
            "--fault",
            "stall",
            "--capacity",
            "20",
            "--waiters",
            "5",
        ],
    ) else {
        return;
    };
    assert_eq!(code, 0, "stall wedge failed:\n{stdout}");
    assert_eq!(
        figure(&report, "waiters admitted").as_u64(),
        Some(5),
        "{stdout}"
    );
}
