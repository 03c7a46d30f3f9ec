//! What the chat-load tests share: finding the chat-server binary they
//! drive, and reading the report chat-load writes.
//!
//! The server is not built by these tests. It is looked for, in order, at
//! `$CHAT_SERVER_BIN`, next to this test's own target directory (the same
//! profile, then the other one), under `$CARGO_TARGET_DIR`, and under the
//! workspace's `target/`. `cargo test --workspace` builds it, since the
//! server has tests of its own. When none exists the tests say so and pass,
//! unless `ADMIT_REQUIRE_SERVICES` is set (as in CI): then they fail.

use std::path::{Path, PathBuf};

fn server_candidates() -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(p) = std::env::var_os("CHAT_SERVER_BIN") {
        c.push(PathBuf::from(p));
    }
    // This test runs from <target>/<profile>/deps/.
    if let Some(profile_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(Path::parent).map(Path::to_path_buf))
    {
        c.push(profile_dir.join("chat-server"));
        if let Some(target) = profile_dir.parent() {
            c.push(target.join("debug").join("chat-server"));
            c.push(target.join("release").join("chat-server"));
        }
    }
    let workspace_target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    for base in std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([workspace_target])
    {
        c.push(base.join("debug").join("chat-server"));
        c.push(base.join("release").join("chat-server"));
    }
    c
}

/// The chat-server binary, or `None` (said on stderr) when there is none.
///
/// # Panics
/// When there is none and `ADMIT_REQUIRE_SERVICES` is set.
pub fn find_server() -> Option<PathBuf> {
    let found = server_candidates().into_iter().find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("ADMIT_REQUIRE_SERVICES").is_none(),
            "no chat-server binary found (looked in {:?}) and ADMIT_REQUIRE_SERVICES is set",
            server_candidates()
        );
        eprintln!(
            "SKIPPED: no chat-server binary found (looked in {:?}); \
             build it with `cargo build -p chat-server` or set CHAT_SERVER_BIN",
            server_candidates()
        );
    }
    found
}

/// The `--json` report chat-load wrote at `path` (null if it wrote none),
/// removing the file.
pub fn take_report(path: &Path) -> serde_json::Value {
    let report = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    let _ = std::fs::remove_file(path);
    report
}

/// A figure of the report by name (null if absent).
pub fn figure<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["figures"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == name))
        .map(|f| &f["value"])
        .unwrap_or(&serde_json::Value::Null)
}
