//! Starting a chat server for a run, and finding its binary.
//!
//! A spawned server listens on port 0 everywhere; its first log lines name
//! the bound addresses (`listening http=… tcp=… status=…`), which is how
//! this tool learns them. It gets a fresh data directory and a random admin
//! token, and is stopped with SIGTERM (then killed if it lingers) at the end.

use crate::client::Target;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Why the server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// No binary was given or found.
    #[error(
        "no chat-server binary found (looked in {0}); build it with \
         `cargo build --release -p chat-server` or pass --spawn-server PATH, \
         or target a running server with --http/--tcp/--status"
    )]
    NotFound(String),
    /// The process could not be started.
    #[error("starting {path}: {source}")]
    Start {
        /// The binary.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// It exited before printing its addresses.
    #[error("chat-server exited before listening ({0}){1}")]
    Exited(String, String),
    /// It started but never printed its addresses.
    #[error("chat-server did not print `listening http=… tcp=… status=…` within {0:?}{1}")]
    NoAddresses(Duration, String),
}

/// How to start the server.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    /// The binary.
    pub path: PathBuf,
    /// `--max-connections`.
    pub capacity: u64,
    /// `--per-ip`.
    pub per_ip: u64,
    /// `--queue`.
    pub queue: u64,
    /// `--idle-timeout` in seconds.
    pub idle_timeout: u64,
    /// Whether to pass `--fault-injection`.
    pub fault_injection: bool,
    /// Where to append the server's output, if anywhere.
    pub log: Option<PathBuf>,
    /// More arguments (cluster mode: `--database`, `--redis`, `--node-id`,
    /// `--cluster-max-connections`).
    pub extra: Vec<String>,
}

/// A running server started by this tool.
#[derive(Debug)]
pub struct SpawnedServer {
    child: Child,
    /// Where it listens, with its admin token.
    pub target: Target,
    data_dir: PathBuf,
}

/// The binaries looked for when none is given, most preferred first: next
/// to this executable (the same build), then
/// `$CARGO_TARGET_DIR/{release,debug}` and `./target/{release,debug}`.
pub fn candidate_paths(
    cargo_target_dir: Option<&Path>,
    cwd: Option<&Path>,
    exe_dir: Option<&Path>,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(d) = exe_dir {
        out.push(d.join("chat-server"));
    }
    for base in [
        cargo_target_dir.map(Path::to_path_buf),
        cwd.map(|c| c.join("target")),
    ]
    .into_iter()
    .flatten()
    {
        out.push(base.join("release").join("chat-server"));
        out.push(base.join("debug").join("chat-server"));
    }
    out.dedup();
    out
}

/// Finds a chat-server binary in the usual places.
pub fn find_server() -> Result<PathBuf, SpawnError> {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from);
    let cwd = std::env::current_dir().ok();
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let candidates = candidate_paths(target_dir.as_deref(), cwd.as_deref(), exe_dir.as_deref());
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            SpawnError::NotFound(
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })
}

/// Parses `listening http=A tcp=B status=C` anywhere in a log line
/// (timestamps, levels and colour codes around it are ignored).
pub fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr, SocketAddr)> {
    let clean = strip_ansi(line);
    if !clean.contains("listening") {
        return None;
    }
    let mut http = None;
    let mut tcp = None;
    let mut status = None;
    for word in clean.split(|c: char| c.is_whitespace() || c == ',') {
        let word = word.trim_matches(|c| c == '"' || c == '\'');
        let Some((k, v)) = word.split_once('=') else {
            continue;
        };
        let v = v.trim_matches(|c| c == '"' || c == '\'');
        match k {
            "http" => http = v.parse().ok(),
            "tcp" => tcp = v.parse().ok(),
            "status" => status = v.parse().ok(),
            _ => {}
        }
    }
    Some((http?, tcp?, status?))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip "ESC [ ... letter".
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl SpawnedServer {
    /// Starts the server and waits (up to 30 s) for its addresses.
    pub async fn start(opts: &SpawnOptions) -> Result<Self, SpawnError> {
        let nonce: u64 = rand::random();
        let data_dir = std::env::temp_dir().join(format!(
            "chat-load-{}-{:08x}",
            std::process::id(),
            nonce as u32
        ));
        let token = format!("load-admin-{nonce:016x}");
        let mut cmd = Command::new(&opts.path);
        cmd.arg("--http")
            .arg("127.0.0.1:0")
            .arg("--tcp")
            .arg("127.0.0.1:0")
            .arg("--status")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(&data_dir)
            .arg("--max-connections")
            .arg(opts.capacity.to_string())
            .arg("--per-ip")
            .arg(opts.per_ip.to_string())
            .arg("--queue")
            .arg(opts.queue.to_string())
            .arg("--idle-timeout")
            .arg(opts.idle_timeout.to_string())
            .arg("--admin-token")
            .arg(&token);
        if opts.fault_injection {
            cmd.arg("--fault-injection");
        }
        cmd.args(&opts.extra);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd.spawn().map_err(|source| SpawnError::Start {
            path: opts.path.clone(),
            source,
        })?;

        // Both streams are read to the end, so the server never blocks on a
        // full pipe; lines go to the log file if one was asked for.
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let mut log_file = match &opts.log {
            Some(p) => tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .await
                .ok(),
            None => None,
        };
        let (line_tx, mut line_rx) = mpsc::unbounded_channel::<String>();
        if let Some(out) = child.stdout.take() {
            spawn_reader(out, tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            spawn_reader(err, tx);
        }
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if let Some(f) = log_file.as_mut() {
                    let _ = f.write_all(line.as_bytes()).await;
                    let _ = f.write_all(b"\n").await;
                }
                let _ = line_tx.send(line);
            }
        });

        let wait = Duration::from_secs(30);
        let mut seen = Vec::new();
        let found = tokio::time::timeout(wait, async {
            while let Some(line) = line_rx.recv().await {
                if let Some(addrs) = parse_listening(&line) {
                    return Some(addrs);
                }
                if seen.len() < 20 {
                    seen.push(line);
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        // Keep draining so the forwarding task never stalls.
        tokio::spawn(async move { while line_rx.recv().await.is_some() {} });
        let Some((http, tcp, status)) = found else {
            let tail = if seen.is_empty() {
                String::new()
            } else {
                format!("; it printed:\n{}", seen.join("\n"))
            };
            // Output ended early when the process exited; give it a moment
            // to be reaped so the error can say so.
            let exited = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            let _ = child.kill().await;
            let _ = std::fs::remove_dir_all(&data_dir);
            return Err(match exited {
                Ok(Ok(status)) => SpawnError::Exited(status.to_string(), tail),
                _ => SpawnError::NoAddresses(wait, tail),
            });
        };
        Ok(SpawnedServer {
            child,
            target: Target {
                http,
                tcp,
                status,
                admin_token: Some(token),
            },
            data_dir,
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Asks the server to stop (SIGTERM), waits up to 10 s, then kills it.
    /// Returns its exit status when it stopped by itself.
    pub async fn stop(mut self) -> Option<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        let status = match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                let _ = self.child.kill().await;
                None
            }
        };
        let _ = std::fs::remove_dir_all(&self.data_dir);
        status
    }
}

fn spawn_reader(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    tx: mpsc::UnboundedSender<String>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_line_in_log_formats() {
        let a = "listening http=127.0.0.1:8080 tcp=127.0.0.1:7070 status=127.0.0.1:8081";
        let want = (
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:7070".parse().unwrap(),
            "127.0.0.1:8081".parse().unwrap(),
        );
        assert_eq!(parse_listening(a), Some(want));
        let b = "2026-11-27T14:00:00Z \u{1b}[32m INFO\u{1b}[0m chat_server: listening \
                 http=127.0.0.1:8080 tcp=127.0.0.1:7070 status=127.0.0.1:8081";
        assert_eq!(parse_listening(b), Some(want));
        assert_eq!(parse_listening("listening http=127.0.0.1:1"), None);
        assert_eq!(parse_listening("starting up"), None);
    }

    #[test]
    fn candidates_prefer_the_same_build_then_cargo_target_dir() {
        let c = candidate_paths(
            Some(Path::new("/t")),
            Some(Path::new("/w")),
            Some(Path::new("/e")),
        );
        assert_eq!(
            c,
            vec![
                PathBuf::from("/e/chat-server"),
                PathBuf::from("/t/release/chat-server"),
                PathBuf::from("/t/debug/chat-server"),
                PathBuf::from("/w/target/release/chat-server"),
                PathBuf::from("/w/target/debug/chat-server"),
            ]
        );
    }
}
