//! Throw-away PostgreSQL and Redis servers for the tests, each on a free
//! loopback port with its files in a temp dir. A test whose binary is
//! missing skips with a message, unless `ADMIT_REQUIRE_SERVICES` is set
//! (as in CI): then it fails.
#![allow(dead_code, unreachable_pub)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary, or `None` (after saying why) when the test should skip.
pub fn require(name: &str, candidates: &[PathBuf]) -> Option<PathBuf> {
    if let Some(found) = candidates.iter().find(|p| p.exists()) {
        return Some(found.clone());
    }
    if std::env::var_os("ADMIT_REQUIRE_SERVICES").is_some() {
        panic!("{name} is not installed, and ADMIT_REQUIRE_SERVICES is set");
    }
    eprintln!("SKIPPED: {name} is not installed (looked at {candidates:?})");
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "chat-{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wait_port(port: u16, within: Duration) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < within, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY-free: `kill` through the command line, as the other tests do.
    let _ = Command::new("kill")
        .args([format!("-{sig}"), child.id().to_string()])
        .status();
}

/// The uid and gid of the `postgres` account: PostgreSQL refuses to run as
/// root, so as root the server runs as that account.
fn postgres_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let mut f = line.split(':').skip(2);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A PostgreSQL server of its own.
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Postgres {
    /// Makes a cluster with `initdb` and starts it, or `None` to skip.
    pub fn start() -> Option<Postgres> {
        let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path().join("bin"))
                    .collect()
            })
            .unwrap_or_default();
        candidates.sort();
        candidates.reverse();
        candidates.push("/usr/local/bin".into());
        let initdb = require(
            "PostgreSQL (initdb)",
            &candidates
                .iter()
                .map(|b| b.join("initdb"))
                .collect::<Vec<_>>(),
        )?;
        let bin = initdb.parent().unwrap().to_owned();
        let dir = temp_dir("pg");
        let mut cmd = Command::new(&initdb);
        cmd.args([
            "-D",
            "data",
            "-U",
            "chat",
            "--auth=trust",
            "-E",
            "UTF8",
            "-N",
        ])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        as_postgres(&mut cmd, &dir);
        let out = cmd.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            bin,
            dir,
            port: free_port(),
            child: None,
        };
        pg.resume();
        Some(pg)
    }

    /// `postgres://…` for the servers under test.
    pub fn url(&self) -> String {
        format!("postgres://chat@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (immediate shutdown): nothing answers.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, 3); // SIGQUIT: immediate shutdown
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn resume(&mut self) {
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.args(["-D", "data", "-h", "127.0.0.1", "-k"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string()])
            // Throw-away data: durability is not what these tests check.
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_postgres(&mut cmd, &self.dir);
        self.child = Some(cmd.spawn().expect("start postgres"));
        // Listening is not yet accepting (recovery after an immediate
        // shutdown runs first): wait until pg_isready says so.
        let start = Instant::now();
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "postgres did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn as_postgres(cmd: &mut Command, dir: &Path) {
    if !is_root() {
        return;
    }
    let (uid, gid) = postgres_ids().expect("a postgres account to run PostgreSQL as");
    let _ = Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(dir)
        .status();
    cmd.uid(uid).gid(gid);
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis server of its own.
pub struct Redis {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts `redis-server`, or `None` to skip.
    pub fn start() -> Option<Redis> {
        let bin = require(
            "redis-server",
            &[
                "/usr/bin/redis-server".into(),
                "/usr/local/bin/redis-server".into(),
            ],
        )?;
        let mut r = Redis {
            bin,
            dir: temp_dir("redis"),
            port: free_port(),
            child: None,
        };
        r.resume();
        Some(r)
    }

    /// `redis://…` for the servers under test.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills it: connections drop, nothing answers.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty).
    pub fn resume(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_port(self.port, Duration::from_secs(10));
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
