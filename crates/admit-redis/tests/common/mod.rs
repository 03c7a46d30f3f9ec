//! A throw-away `redis-server` on a free loopback port, in a temp dir, that
//! tests can stop, pause (SIGSTOP), resume and restart.
#![allow(dead_code, unreachable_pub)]

pub mod child;

use rustix::process::{kill_process, Pid, Signal};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "/usr/bin/redis-server";

pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Starts a server, or returns `None` (with a message) when the binary is
/// absent and `ADMIT_REQUIRE_SERVICES` is unset. With it set, a missing
/// binary fails the test.
pub fn redis() -> Option<Redis> {
    if !Path::new(BINARY).exists() {
        if std::env::var_os("ADMIT_REQUIRE_SERVICES").is_some() {
            panic!("{BINARY} is missing and ADMIT_REQUIRE_SERVICES is set: install redis-server");
        }
        eprintln!("SKIPPED: {BINARY} not found (apt-get install redis-server); set ADMIT_REQUIRE_SERVICES to make this a failure");
        return None;
    }
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("admit-redis-test-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut r = Redis {
        port,
        dir,
        child: None,
    };
    r.start();
    Some(r)
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Redis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    /// Starts (or restarts) the server on the same port, with no
    /// persistence: a restart loses every key, like a failed-over replica.
    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new(BINARY)
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        // Ready when it answers PING.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = self.client().get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32).unwrap()
    }

    /// SIGKILL: gone at once, data lost.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: connections stay open, nothing answers.
    pub fn pause(&self) {
        kill_process(self.pid(), Signal::STOP).unwrap();
    }

    pub fn resume(&self) {
        kill_process(self.pid(), Signal::CONT).unwrap();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = kill_process(Pid::from_raw(c.id() as i32).unwrap(), Signal::CONT);
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `f` every 10 ms until it returns true or `within` passes; returns
/// the time it took.
pub async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}
