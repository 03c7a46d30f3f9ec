//! Cluster mode: the run's own PostgreSQL and redis-server, and a monitor
//! that polls every node's `/health`.
//!
//! With `--nodes N` (or `--cluster`) and no running nodes named, the run
//! starts a throw-away PostgreSQL cluster (`initdb` + `postgres`, with
//! `fsync` off: the data is thrown away) and a `redis-server`, each on a
//! free loopback port with its files in a temp dir, then N chat-server
//! nodes on them. Everything is stopped and deleted at the end.
//!
//! The [`ClusterMonitor`] polls every node's `/health` in rounds. A round's
//! sum of the nodes' own chat `in_use` is what the cluster holds at that
//! moment (give or take the few milliseconds a round takes); the check is
//! that it never exceeds the cluster budget (`cluster.capacity`).

use crate::client::http::HttpConn;
use crate::client::{ClientError, Connector, Target};
use crate::metrics::Timeline;
use crate::report::Report;
use hyper::Method;
use serde::Deserialize;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why the services could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cluster services: {0}")]
pub struct ServiceError(String);

fn err(what: impl std::fmt::Display) -> ServiceError {
    ServiceError(what.to_string())
}

fn free_port() -> Result<u16, ServiceError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(err)?;
    Ok(l.local_addr().map_err(err)?.port())
}

fn temp_dir(what: &str) -> Result<PathBuf, ServiceError> {
    let dir = std::env::temp_dir().join(format!(
        "chat-load-{what}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).map_err(err)?;
    Ok(dir)
}

/// The uid and gid of the `postgres` account: PostgreSQL refuses to run
/// as root, so as root it runs as that account.
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

fn as_postgres(cmd: &mut Command, dir: &Path) -> Result<(), ServiceError> {
    if !is_root() {
        return Ok(());
    }
    let (uid, gid) =
        postgres_ids().ok_or_else(|| err("running as root and no postgres account to run as"))?;
    let _ = Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(dir)
        .status();
    cmd.uid(uid).gid(gid);
    Ok(())
}

/// PostgreSQL's binaries: the newest /usr/lib/postgresql/*/bin, else
/// /usr/local/bin.
fn postgres_bin() -> Result<PathBuf, ServiceError> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    // Newest version first (numeric, so 16 before 9).
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.reverse();
    dirs.push("/usr/local/bin".into());
    dirs.into_iter()
        .find(|d| d.join("initdb").is_file())
        .ok_or_else(|| err("PostgreSQL is not installed (no initdb); install `postgresql`"))
}

fn redis_bin() -> Result<PathBuf, ServiceError> {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| err("redis-server is not installed; install `redis-server`"))
}

fn wait_until(
    what: &str,
    within: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), ServiceError> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > within {
            return Err(err(format!("{what} did not start within {within:?}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A throw-away PostgreSQL and redis-server on loopback.
#[derive(Debug)]
pub struct Services {
    postgres: Child,
    redis: Child,
    pg_dir: PathBuf,
    redis_dir: PathBuf,
    pg_port: u16,
    redis_port: u16,
}

impl Services {
    /// Starts both (blocking; call from a blocking task). `connections` is
    /// PostgreSQL's `max_connections`.
    pub fn start(connections: u32) -> Result<Services, ServiceError> {
        let bin = postgres_bin()?;
        let redis = redis_bin()?;
        let pg_dir = temp_dir("pg")?;
        let mut init = Command::new(bin.join("initdb"));
        init.args([
            "-D",
            "data",
            "-U",
            "chat",
            "--auth=trust",
            "-E",
            "UTF8",
            "-N",
        ])
        .current_dir(&pg_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        as_postgres(&mut init, &pg_dir)?;
        let out = init.output().map_err(err)?;
        if !out.status.success() {
            return Err(err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let pg_port = free_port()?;
        let mut pg = Command::new(bin.join("postgres"));
        pg.args(["-D", "data", "-h", "127.0.0.1", "-k"])
            .arg(&pg_dir)
            .args(["-p", &pg_port.to_string()])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", &format!("max_connections={connections}")])
            .current_dir(&pg_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_postgres(&mut pg, &pg_dir)?;
        let postgres = pg.spawn().map_err(err)?;
        let redis_dir = temp_dir("redis")?;
        let redis_port = free_port()?;
        let redis = Command::new(redis)
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&redis_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(err)?;
        let s = Services {
            postgres,
            redis,
            pg_dir,
            redis_dir,
            pg_port,
            redis_port,
        };
        // Listening is not yet accepting: pg_isready says when it is.
        let isready = bin.join("pg_isready");
        wait_until("PostgreSQL", Duration::from_secs(30), || {
            Command::new(&isready)
                .args(["-q", "-h", "127.0.0.1", "-p", &pg_port.to_string()])
                .status()
                .is_ok_and(|st| st.success())
        })?;
        wait_until("redis-server", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_ok()
        })?;
        Ok(s)
    }

    /// `--database` for the nodes.
    pub fn database_url(&self) -> String {
        format!("postgres://chat@127.0.0.1:{}/postgres", self.pg_port)
    }

    /// `--redis` for the nodes.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.redis_port)
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        // SIGQUIT: PostgreSQL's immediate shutdown (the data is thrown away).
        let _ = Command::new("kill")
            .args(["-QUIT", &self.postgres.id().to_string()])
            .status();
        let _ = self.postgres.wait();
        let _ = self.redis.kill();
        let _ = self.redis.wait();
        let _ = std::fs::remove_dir_all(&self.pg_dir);
        let _ = std::fs::remove_dir_all(&self.redis_dir);
    }
}

/// The parts of `/health` the cluster monitor reads (every field
/// defaults, so a node without a cluster section still parses).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NodeHealth {
    /// `healthy`, `saturated`, `degraded`, `draining`.
    pub status: String,
    /// The chat limiter's figures.
    pub limiters: NodeLimiters,
    /// The cluster section.
    pub cluster: ClusterSection,
}

/// `limiters` of `/health`, the chat limiter only.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NodeLimiters {
    /// The chat limiter.
    pub chat: ChatFigures,
}

/// The chat limiter's figures the monitor needs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ChatFigures {
    /// This node's cap now (its share of the cluster budget).
    pub capacity: u64,
    /// Connections it holds.
    pub in_use: u64,
}

/// `cluster` of `/health`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ClusterSection {
    /// This node's name.
    pub node: String,
    /// `single`, `cluster` or `degraded`.
    pub mode: String,
    /// Live nodes as Redis knows them.
    pub nodes: Vec<serde_json::Value>,
    /// Connections across the cluster, as Redis knows them.
    pub in_use: u64,
    /// The cluster budget.
    pub capacity: u64,
}

/// Fetches one node's `/health` on `conn` (opened when needed).
async fn poll(
    connector: &Connector,
    target: &Target,
    conn: &mut Option<HttpConn>,
    timeout: Duration,
) -> Result<NodeHealth, ClientError> {
    if !conn.as_ref().is_some_and(HttpConn::is_open) {
        *conn = Some(HttpConn::open(connector, target.status, timeout).await?);
    }
    let Some(c) = conn.as_mut() else {
        return Err(ClientError::Closed(None));
    };
    let resp = match tokio::time::timeout(
        timeout,
        c.send(Method::GET, "/health", None, None, false),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            *conn = None;
            return Err(e);
        }
        Err(_) => {
            *conn = None;
            return Err(ClientError::Timeout);
        }
    };
    serde_json::from_slice(&resp.body)
        .map_err(|e| ClientError::Protocol(format!("bad /health body: {e}")))
}

/// Waits until every node reports cluster mode with all `targets.len()`
/// nodes in view (their shares are then set).
pub async fn wait_formed(
    connector: &Connector,
    targets: &[Target],
    within: Duration,
) -> Result<NodeHealth, String> {
    let start = Instant::now();
    let mut conns: Vec<Option<HttpConn>> = targets.iter().map(|_| None).collect();
    loop {
        let mut formed = None;
        let mut last = String::new();
        for (t, c) in targets.iter().zip(conns.iter_mut()) {
            match poll(connector, t, c, Duration::from_secs(2)).await {
                Ok(h) if h.cluster.mode == "cluster" && h.cluster.nodes.len() == targets.len() => {
                    formed.get_or_insert(h);
                }
                Ok(h) => {
                    last = format!(
                        "{} says mode {:?} with {} nodes",
                        t.status,
                        h.cluster.mode,
                        h.cluster.nodes.len()
                    );
                    formed = None;
                    break;
                }
                Err(e) => {
                    last = format!("{}: {e}", t.status);
                    formed = None;
                    break;
                }
            }
        }
        if let Some(h) = formed {
            return Ok(h);
        }
        if start.elapsed() > within {
            return Err(format!(
                "the cluster did not form within {within:?}: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug, Default, Clone)]
struct NodeLog {
    name: String,
    polls: u64,
    errors: u64,
    max_in_use: u64,
    max_capacity: u64,
    degraded_polls: u64,
}

#[derive(Debug, Default)]
struct Log {
    nodes: Vec<NodeLog>,
    rounds: u64,
    max_sum: u64,
    max_reported: u64,
    budget: u64,
    violations: u64,
}

/// Polls every node's `/health` in rounds until stopped.
#[derive(Debug, Clone)]
pub struct ClusterMonitor {
    log: Arc<Mutex<Log>>,
}

/// What the cluster monitor saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClusterSummary {
    /// Rounds in which every node answered.
    pub rounds: u64,
    /// The cluster budget (`cluster.capacity`).
    pub budget: u64,
    /// Highest sum of the nodes' own `in_use` in one round.
    pub max_sum_in_use: u64,
    /// Highest cluster `in_use` a node reported (Redis's view).
    pub max_reported_in_use: u64,
    /// Rounds whose sum exceeded the budget.
    pub violations: u64,
    /// Per node: name, polls, unanswered polls, highest `in_use`, highest
    /// share, polls that said `degraded`.
    pub nodes: Vec<(String, u64, u64, u64, u64, u64)>,
}

impl ClusterMonitor {
    /// Starts polling `targets` every `period` until `stop`. Each round's
    /// sum goes into `timeline` as the server's `in_use`, so the plot shows
    /// the cluster's connections against its budget.
    pub fn start(
        connector: Arc<Connector>,
        targets: Vec<Target>,
        period: Duration,
        timeline: Arc<Timeline>,
        stop: CancellationToken,
    ) -> ClusterMonitor {
        let log = Arc::new(Mutex::new(Log {
            nodes: targets
                .iter()
                .map(|t| NodeLog {
                    name: t.http.to_string(),
                    ..NodeLog::default()
                })
                .collect(),
            ..Log::default()
        }));
        let monitor = ClusterMonitor { log: log.clone() };
        tokio::spawn(async move {
            let mut conns: Vec<Option<HttpConn>> = targets.iter().map(|_| None).collect();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let timeout = period.max(Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                // One round: every node at once, so the sum is of one moment.
                let answers = futures::future::join_all(
                    targets
                        .iter()
                        .zip(conns.iter_mut())
                        .map(|(t, c)| poll(&connector, t, c, timeout)),
                )
                .await;
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                let mut sum = 0;
                let mut all = true;
                for (i, a) in answers.into_iter().enumerate() {
                    let n = &mut log.nodes[i];
                    match a {
                        Ok(h) => {
                            n.polls += 1;
                            if !h.cluster.node.is_empty() {
                                n.name.clone_from(&h.cluster.node);
                            }
                            n.max_in_use = n.max_in_use.max(h.limiters.chat.in_use);
                            n.max_capacity = n.max_capacity.max(h.limiters.chat.capacity);
                            if h.status == "degraded" {
                                n.degraded_polls += 1;
                            }
                            sum += h.limiters.chat.in_use;
                            log.max_reported = log.max_reported.max(h.cluster.in_use);
                            if h.cluster.capacity > 0 {
                                log.budget = h.cluster.capacity;
                            }
                        }
                        Err(_) => {
                            n.errors += 1;
                            all = false;
                        }
                    }
                }
                if all {
                    timeline.gauges(Some(sum), connector.open_now());
                    log.rounds += 1;
                    log.max_sum = log.max_sum.max(sum);
                    if log.budget > 0 && sum > log.budget {
                        log.violations += 1;
                    }
                }
            }
        });
        monitor
    }

    /// What it saw so far.
    pub fn summary(&self) -> ClusterSummary {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        ClusterSummary {
            rounds: log.rounds,
            budget: log.budget,
            max_sum_in_use: log.max_sum,
            max_reported_in_use: log.max_reported,
            violations: log.violations,
            nodes: log
                .nodes
                .iter()
                .map(|n| {
                    (
                        n.name.clone(),
                        n.polls,
                        n.errors,
                        n.max_in_use,
                        n.max_capacity,
                        n.degraded_polls,
                    )
                })
                .collect(),
        }
    }
}

/// Adds the per-node and cluster figures and the cluster cap check.
pub fn report_cluster(report: &mut Report, s: &ClusterSummary) {
    for (name, polls, errors, in_use, share, degraded) in &s.nodes {
        report.figure(
            &format!("node {name}"),
            format!(
                "highest in_use {in_use}, highest share {share}, {polls} polls \
                 ({errors} unanswered, {degraded} degraded)"
            ),
            "",
        );
    }
    report.figure("cluster budget", s.budget, "");
    report.figure(
        "cluster: highest sum of in_use over nodes",
        s.max_sum_in_use,
        "",
    );
    report.figure(
        "cluster: highest in_use reported by a node",
        s.max_reported_in_use,
        "",
    );
    report.check(
        "cluster cap held (sum of in_use over nodes <= budget in every round)",
        s.violations == 0 && s.rounds > 0 && s.budget > 0,
        format!(
            "highest sum {} at budget {}; {} violating rounds of {}",
            s.max_sum_in_use, s.budget, s.violations, s.rounds
        ),
    );
}
