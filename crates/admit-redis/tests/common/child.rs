//! A node in its own process: the test binary runs itself again with
//! `ADMIT_REDIS_CHILD` set, and the `child_node` test becomes the node.
//!
//! Modes: `hold:<n>` takes `n` permits and keeps them, then churns one
//! (release, acquire again) every 2 ms; `storm` runs random acquire/release
//! tasks and counts held permits in a Redis counter (`test:held`, high-water
//! mark `test:peak`). Either way it prints a `stat` line every 20 ms.
#![allow(dead_code, unreachable_pub)]

use admit_redis::ClusterLimiter;
use rustix::process::{kill_process, Pid, Signal};
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

pub const ENV: &str = "ADMIT_REDIS_CHILD";

pub const PEAK: &str = r#"
local v = redis.call('INCR', KEYS[1])
local p = tonumber(redis.call('GET', KEYS[2]) or '0')
if v > p then redis.call('SET', KEYS[2], v) end
return v
"#;

/// The child's body; call from a `#[test] fn child_node()`.
pub fn run_if_child() {
    let Ok(spec) = std::env::var(ENV) else { return };
    let parts: Vec<&str> = spec.split(',').collect();
    let [url, budget_name, budget, node, mode] = parts[..] else {
        panic!("bad {ENV}: {spec}")
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let client = redis::Client::open(url).unwrap();
        let node = ClusterLimiter::builder(client.clone(), budget_name, budget.parse().unwrap())
            .node_id(node)
            .min_batch(4)
            .start()
            .await
            .unwrap();
        let admitted = Arc::new(AtomicU64::new(0));
        let last_admit = Arc::new(AtomicU64::new(0));
        if let Some(n) = mode.strip_prefix("hold:") {
            let n: usize = n.parse().unwrap();
            let node2 = node.clone();
            let admitted2 = admitted.clone();
            let last_admit = last_admit.clone();
            tokio::spawn(async move {
                let mut held = Vec::new();
                loop {
                    if held.len() >= n {
                        held.pop();
                    }
                    if let Ok(p) = node2.try_acquire() {
                        admitted2.fetch_add(1, Ordering::Relaxed);
                        last_admit.store(monotonic_ms(), Ordering::Relaxed);
                        held.push(p);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
        } else if mode == "storm" {
            let con = client.get_connection_manager().await.unwrap();
            for i in 0..8u64 {
                let node = node.clone();
                let mut con = con.clone();
                let admitted = admitted.clone();
                tokio::spawn(async move {
                    let peak = redis::Script::new(PEAK);
                    let mut x = i.wrapping_mul(0x9e3779b97f4a7c15) | 1;
                    loop {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        if let Ok(p) = node.try_acquire() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            let _: i64 = peak
                                .key("test:held")
                                .key("test:peak")
                                .invoke_async(&mut con)
                                .await
                                .unwrap();
                            tokio::time::sleep(Duration::from_millis(1 + x % 10)).await;
                            let _: i64 = redis::cmd("DECR")
                                .arg("test:held")
                                .query_async(&mut con)
                                .await
                                .unwrap();
                            drop(p);
                        } else {
                            tokio::time::sleep(Duration::from_millis(1 + x % 3)).await;
                        }
                    }
                });
            }
        }
        loop {
            let s = node.status();
            println!(
                "stat admitted={} last_admit_ms={} held={} share={} mode={} epoch={}",
                admitted.load(Ordering::Relaxed),
                last_admit.load(Ordering::Relaxed),
                s.in_use,
                s.share,
                s.mode.as_str(),
                s.epoch.unwrap_or(0)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// The system-wide monotonic clock in milliseconds: the same in every
/// process, so a parent can tell whether a child admitted after a moment.
pub fn monotonic_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000 + t.tv_nsec as u64 / 1_000_000
}

/// One stat line from a child.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    pub admitted: u64,
    /// When the last admission happened, by [`monotonic_ms`].
    pub last_admit_ms: u64,
    pub held: u32,
    pub share: u32,
    pub mode: String,
    pub epoch: u64,
}

pub struct NodeProcess {
    child: Child,
    stats: Arc<Mutex<Vec<Stat>>>,
}

fn parse(line: &str) -> Option<Stat> {
    let rest = line.trim().strip_prefix("stat ")?;
    let mut s = Stat::default();
    for kv in rest.split(' ') {
        let (k, v) = kv.split_once('=')?;
        match k {
            "admitted" => s.admitted = v.parse().ok()?,
            "last_admit_ms" => s.last_admit_ms = v.parse().ok()?,
            "held" => s.held = v.parse().ok()?,
            "share" => s.share = v.parse().ok()?,
            "mode" => s.mode = v.to_owned(),
            "epoch" => s.epoch = v.parse().ok()?,
            _ => {}
        }
    }
    Some(s)
}

impl NodeProcess {
    pub fn spawn(url: &str, budget_name: &str, budget: u32, node: &str, mode: &str) -> NodeProcess {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_node", "--nocapture", "--test-threads=1"])
            .env(ENV, format!("{url},{budget_name},{budget},{node},{mode}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out: ChildStdout = child.stdout.take().unwrap();
        let stats = Arc::new(Mutex::new(Vec::new()));
        let sink = stats.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(s) = parse(&line) {
                    sink.lock().unwrap().push(s);
                }
            }
        });
        NodeProcess { child, stats }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32).unwrap()
    }

    /// Every stat line so far.
    pub fn history(&self) -> Vec<Stat> {
        self.stats.lock().unwrap().clone()
    }

    /// A stat line printed after this call (waits up to 5 s).
    pub fn fresh(&self) -> Stat {
        let seen = self.stats.lock().unwrap().len();
        for _ in 0..500 {
            if let Some(s) = self.stats.lock().unwrap().get(seen) {
                return s.clone();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("child node printed nothing for 5 s");
    }

    /// Fresh stat lines until `f` holds, for at most `within`.
    pub fn until(&self, within: Duration, f: impl Fn(&Stat) -> bool) -> Stat {
        let start = std::time::Instant::now();
        loop {
            let s = self.fresh();
            if f(&s) {
                return s;
            }
            assert!(
                start.elapsed() < within,
                "child never reached the expected state; last {s:?}"
            );
        }
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigstop(&self) {
        kill_process(self.pid(), Signal::STOP).unwrap();
    }

    pub fn sigcont(&self) {
        kill_process(self.pid(), Signal::CONT).unwrap();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = kill_process(self.pid(), Signal::CONT);
        self.sigkill();
    }
}
