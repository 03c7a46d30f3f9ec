//! `chat-load`: a load generator and outage replay tool for the chat server.
//!
//! It drives a chat server from outside, over real sockets, exactly as the
//! server's contract describes it (HTTP API, WebSocket, TCP line protocol,
//! `/health` and the admin endpoints), and replays the two outages that
//! motivated the project:
//!
//! - [`flood`](scenario::flood): more clients than the server can hold
//!   arrive at once; the cap must hold and every rejected client must get an
//!   answer;
//! - [`wedge`](scenario::wedge): the limiter leaks or stalls; the server
//!   must notice and repair itself in bounded time;
//!
//! plus the everyday shapes of load: [`steady`](scenario::steady) chat,
//! a reconnect [`storm`](scenario::storm), and
//! [`slowloris`](scenario::slowloris) connections.
//!
//! With `--nodes N` (or `--cluster`) the run drives a cluster: N nodes of
//! the server on a PostgreSQL and a redis-server of the run's own, or the
//! running nodes named with `--node`; clients are spread over the nodes
//! and the report adds per-node and cluster figures ([`cluster`]).
//!
//! Layout: [`cli`] parses options, [`server`] starts a server when asked,
//! [`client`] speaks the protocols, [`metrics`] records latencies and the
//! time line, [`scenario`] holds one module per scenario, and [`report`] and
//! [`plot`] turn a run into a table, JSON and an SVG chart. [`run`] ties
//! them together; `main.rs` only prints and sets the exit code.
//!
//! Every target must be a loopback address, every loop is bounded in count
//! and time, and the client sockets planned for a run are checked against
//! the open-file limit before anything starts.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod cli;
pub mod client;
pub mod cluster;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod server;

use cli::{Cli, FaultKind, Scenario};
use client::status::{health_once, HealthMonitor};
use client::{net, Connector, Target};
use metrics::Timeline;
use report::Report;
use scenario::{Ctx, ScenarioError};
use server::{SpawnOptions, SpawnedServer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why a run could not be carried out (as opposed to a check failing).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Starting the server failed.
    #[error(transparent)]
    Spawn(#[from] server::SpawnError),
    /// The run was mis-specified or its environment does not allow it.
    #[error("{0}")]
    Setup(String),
    /// The scenario could not proceed.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// Writing an output file failed.
    #[error("writing {0}: {1}")]
    Output(String, String),
}

/// Open files kept free for everything that is not a client socket.
const FD_RESERVE: u64 = 256;

/// Client sockets `scenario` may hold at once with a server of `capacity`.
pub fn planned_sockets(scenario: &Scenario, capacity: u64) -> u64 {
    match scenario {
        Scenario::Steady(a) => scenario::steady::planned_sockets(a),
        Scenario::Flood(a) => scenario::flood::planned_sockets(a, capacity),
        Scenario::Wedge(a) => scenario::wedge::planned_sockets(a, capacity),
        Scenario::Storm(a) => scenario::storm::planned_sockets(a, capacity),
        Scenario::Slowloris(a) => scenario::slowloris::planned_sockets(a, capacity),
    }
}

/// Checks that the planned client sockets fit under this process's
/// open-file `limit`, and the server's sockets (when it runs as our child,
/// with the same limit) under its own. The limit is per process
/// (`RLIMIT_NOFILE`), so the two budgets are separate.
pub fn check_fd_budget(planned: u64, server_sockets: u64, limit: u64) -> Result<(), RunError> {
    for (who, n) in [("client", planned), ("server", server_sockets)] {
        let need = n + FD_RESERVE;
        if need > limit {
            return Err(RunError::Setup(format!(
                "this run needs about {need} open files in the {who} process ({n} {who} \
                 sockets, {FD_RESERVE} spare) but the limit is {limit}; \
                 use fewer clients or a smaller capacity"
            )));
        }
    }
    Ok(())
}

/// An upper bound on a scenario's running time, after which it is stopped.
fn deadline(cli: &Cli, idle: u64) -> Duration {
    let s = match &cli.scenario {
        Scenario::Steady(a) => a.duration + a.drain + 120.0 + a.clients as f64 / 50.0,
        Scenario::Flood(a) => a.baseline + a.ramp + a.hold + a.after + 120.0,
        Scenario::Wedge(a) => {
            a.expect_recovery_within
                .unwrap_or_else(|| scenario::wedge::default_recovery_bound(a.fault, Some(idle)))
                + 120.0
        }
        Scenario::Storm(a) => {
            2.0 * a.max_attempts as f64 * (a.backoff_cap_ms as f64 / 1000.0 + 5.0) + 120.0
        }
        Scenario::Slowloris(a) => a.observe.unwrap_or(idle.min(60) as f64 + 15.0) + 120.0,
    };
    Duration::from_secs_f64(s.min(24.0 * 3600.0))
}

/// Runs the scenario `cli` asks for and returns its report. Starts and
/// stops a server when no running one was named.
pub async fn run(cli: Cli) -> Result<Report, RunError> {
    let common = cli.common.clone();
    let limit = net::open_file_limit().unwrap_or(20_000);
    let connector = Arc::new(Connector::new(
        common.sources as usize,
        Duration::from_millis(common.timeout_ms.max(1)),
    ));

    // The server: spawned, or the one the addresses name; in cluster mode,
    // every node.
    let mut spawned = Vec::new();
    let mut services = None;
    let clustered = common.clustered();
    let named: Vec<(
        std::net::SocketAddr,
        std::net::SocketAddr,
        std::net::SocketAddr,
    )> = match (common.http, common.tcp, common.status) {
        (Some(http), Some(tcp), Some(status)) => vec![(http, tcp, status)],
        _ => common
            .node
            .iter()
            .map(|n| (n.http, n.tcp, n.status))
            .collect(),
    };
    if !named.is_empty() && common.nodes > 1 {
        return Err(RunError::Setup(
            "--nodes spawns the nodes; name running nodes with --node instead".into(),
        ));
    }
    let targets: Vec<Target> = if !named.is_empty() {
        let mut targets = Vec::new();
        for (http, tcp, status) in named {
            for a in [http, tcp, status] {
                net::ensure_loopback(a).map_err(|e| RunError::Setup(e.to_string()))?;
            }
            targets.push(Target {
                http,
                tcp,
                status,
                admin_token: common.admin_token.clone(),
            });
        }
        targets
    } else {
        let path = match &common.spawn_server {
            Some(p) => p.clone(),
            None => server::find_server()?,
        };
        let nodes = if clustered { common.nodes } else { 1 };
        let budget = common
            .cluster_capacity
            .unwrap_or(common.capacity * nodes)
            .max(1);
        let planned = planned_sockets(
            &cli.scenario,
            if clustered { budget } else { common.capacity },
        );
        check_fd_budget(planned, common.capacity + 64, limit)?;
        let mut extra = Vec::new();
        if clustered {
            // Each node's pool is small; leave room for many nodes.
            let s = tokio::task::spawn_blocking(|| cluster::Services::start(400))
                .await
                .map_err(|e| RunError::Setup(e.to_string()))?
                .map_err(|e| RunError::Setup(e.to_string()))?;
            extra = vec![
                "--database".to_string(),
                s.database_url(),
                "--redis".to_string(),
                s.redis_url(),
                "--cluster-max-connections".to_string(),
                budget.to_string(),
            ];
            services = Some(s);
        }
        let mut queue = common.queue;
        if let Scenario::Wedge(w) = &cli.scenario {
            if w.fault == FaultKind::Stall && queue == 0 {
                queue = w.waiters.max(1) * 2;
            }
        }
        let mut targets = Vec::new();
        for i in 0..nodes {
            let mut opts = SpawnOptions {
                path: path.clone(),
                capacity: common.capacity,
                per_ip: common.per_ip.unwrap_or(common.capacity).max(1),
                queue,
                idle_timeout: cli.idle_timeout(),
                fault_injection: matches!(cli.scenario, Scenario::Wedge(_)),
                log: common.server_log.clone(),
                extra: extra.clone(),
            };
            if clustered {
                opts.extra
                    .extend(["--node-id".to_string(), format!("node{i}")]);
            }
            match SpawnedServer::start(&opts).await {
                Ok(s) => {
                    targets.push(s.target.clone());
                    spawned.push(s);
                }
                Err(e) => {
                    for s in spawned {
                        s.stop().await;
                    }
                    return Err(e.into());
                }
            }
        }
        targets
    };

    // Ctrl-C ends the run early but still stops a spawned server.
    let result = tokio::select! {
        r = run_with_target(&cli, targets, connector, limit, !spawned.is_empty()) => r,
        _ = tokio::signal::ctrl_c() => Err(RunError::Setup("interrupted".into())),
    };
    let exits = futures::future::join_all(spawned.into_iter().map(SpawnedServer::stop)).await;
    if let Some(s) = services {
        let _ = tokio::task::spawn_blocking(move || drop(s)).await;
    }
    let mut report = result?;
    for (i, exit) in exits.iter().enumerate() {
        let name = if exits.len() == 1 {
            "spawned server exit".to_string()
        } else {
            format!("spawned node{i} exit")
        };
        report.figure(
            &name,
            match exit {
                Some(s) => s.to_string(),
                None => "killed after 10 s".to_string(),
            },
            "",
        );
    }
    Ok(report)
}

async fn run_with_target(
    cli: &Cli,
    targets: Vec<Target>,
    connector: Arc<Connector>,
    limit: u64,
    spawned: bool,
) -> Result<Report, RunError> {
    let common = cli.common.clone();
    let target = targets
        .first()
        .cloned()
        .ok_or_else(|| RunError::Setup("no server to drive".into()))?;
    // Learn the capacity (and that the server answers) before anything.
    let mut first = None;
    let wait_until = Instant::now() + Duration::from_secs(10);
    while first.is_none() {
        match health_once(&connector, &target, Duration::from_secs(2)).await {
            Ok(h) => first = Some(h),
            Err(e) if Instant::now() > wait_until => {
                return Err(RunError::Setup(format!(
                    "no /health answer from {}: {e}",
                    target.status
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let health = first.unwrap_or_default();
    let capacity = match health.limiters.chat.capacity {
        0 => common.capacity,
        c => c.into(),
    };
    // In cluster mode, every node in view first (their shares are then
    // set); the budget is what binds.
    let budget = if common.clustered() {
        let h = cluster::wait_formed(&connector, &targets, Duration::from_secs(30))
            .await
            .map_err(RunError::Setup)?;
        Some(h.cluster.capacity)
    } else {
        None
    };
    if !spawned {
        check_fd_budget(
            planned_sockets(&cli.scenario, budget.unwrap_or(capacity)),
            0,
            limit,
        )?;
    }
    let idle = spawned.then_some(cli.idle_timeout());

    let stop = CancellationToken::new();
    let max_time = deadline(cli, cli.idle_timeout());
    let start = Instant::now();
    let timeline = Arc::new(Timeline::new(
        start,
        Duration::from_millis(common.bin_ms),
        max_time + Duration::from_secs(30),
    ));
    let monitor_stop = CancellationToken::new();
    let monitor = HealthMonitor::start(
        connector.clone(),
        target.clone(),
        Duration::from_millis(common.poll_ms.max(5)),
        timeline.clone(),
        monitor_stop.clone(),
    );
    let ctx = Ctx::new(
        target,
        connector.clone(),
        timeline.clone(),
        monitor.clone(),
        common.clone(),
        capacity,
        idle,
        stop.clone(),
    );
    let (ctx, cluster_monitor) = match budget {
        Some(b) => {
            let m = cluster::ClusterMonitor::start(
                connector.clone(),
                targets.clone(),
                Duration::from_millis(common.poll_ms.max(5)),
                timeline.clone(),
                monitor_stop.clone(),
            );
            (ctx.with_cluster(targets, b), Some(m))
        }
        None => (ctx, None),
    };

    let fut = async {
        match &cli.scenario {
            Scenario::Steady(a) => scenario::steady::run(&ctx, a).await,
            Scenario::Flood(a) => scenario::flood::run(&ctx, a).await,
            Scenario::Wedge(a) => scenario::wedge::run(&ctx, a).await,
            Scenario::Storm(a) => scenario::storm::run(&ctx, a).await,
            Scenario::Slowloris(a) => scenario::slowloris::run(&ctx, a).await,
        }
    };
    // The deadline first asks the scenario to wrap up, then cuts it off.
    let watchdog = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(max_time).await;
            stop.cancel();
        })
    };
    let outcome = tokio::time::timeout(max_time + Duration::from_secs(30), fut).await;
    watchdog.abort();
    // One more poll after the end, so the last state is in the log.
    tokio::time::sleep(Duration::from_millis(common.poll_ms.max(5) * 2)).await;
    monitor_stop.cancel();

    let mut report = match outcome {
        Ok(r) => r?,
        Err(_) => {
            let mut r = Report::new(cli.scenario.name());
            r.check(
                "finished in time",
                false,
                format!("the run was cut off after {max_time:?}"),
            );
            r
        }
    };
    if stop.is_cancelled() {
        report.check(
            "finished in time",
            false,
            format!("the run hit its deadline of {max_time:?}"),
        );
    }

    // What every scenario reports: the cap as `/health` saw it.
    let end_s = start.elapsed().as_secs_f64();
    let hs = monitor.summary(start);
    report.figure("health polls", hs.polls, "");
    report.figure("health polls unanswered", hs.poll_errors, "");
    report.figure("highest in_use seen on /health", hs.max_in_use, "");
    report.figure(
        "status changes",
        hs.transitions
            .iter()
            .map(|(t, s)| format!("{t:.2}s {s}"))
            .collect::<Vec<_>>()
            .join(", "),
        "",
    );
    report.number("run time", Some(end_s), "s");
    report.check(
        "cap held (in_use <= capacity on every /health answer)",
        hs.cap_violations == 0 && hs.polls > 0,
        format!(
            "max in_use {} at capacity {}; {} violating answers of {}",
            hs.max_in_use, hs.capacity_at_max, hs.cap_violations, hs.polls
        ),
    );
    if let Some(m) = &cluster_monitor {
        cluster::report_cluster(&mut report, &m.summary());
    }
    // The plot's capacity line: the budget in cluster mode (its in_use
    // line is then the sum over the nodes).
    report.capacity = Some(ctx.cluster_capacity.unwrap_or(capacity));
    report.events = ctx.events();
    report.timeline = timeline.samples(end_s);
    report.config = serde_json::json!({
        "scenario": cli.scenario.name(),
        "args": scenario_args(&cli.scenario),
        "capacity": capacity,
        "spawned_server": spawned,
        "nodes": ctx.nodes.iter().map(|t| t.http.to_string()).collect::<Vec<_>>(),
        "cluster_capacity": ctx.cluster_capacity,
        "idle_timeout_s": idle,
        "sources": common.sources,
        "transport": common.transport,
        "http": ctx.target.http.to_string(),
        "tcp": ctx.target.tcp.to_string(),
        "status": ctx.target.status.to_string(),
        "bin_ms": common.bin_ms,
        "poll_ms": common.poll_ms,
    });
    Ok(report)
}

fn scenario_args(s: &Scenario) -> serde_json::Value {
    let v = match s {
        Scenario::Steady(a) => serde_json::to_value(a),
        Scenario::Flood(a) => serde_json::to_value(a),
        Scenario::Wedge(a) => serde_json::to_value(a),
        Scenario::Storm(a) => serde_json::to_value(a),
        Scenario::Slowloris(a) => serde_json::to_value(a),
    };
    v.unwrap_or(serde_json::Value::Null)
}

/// Writes the JSON report and the plot when asked for.
pub fn write_outputs(report: &Report, common: &cli::Common) -> Result<(), RunError> {
    if let Some(path) = &common.json {
        let text = serde_json::to_string_pretty(report)
            .map_err(|e| RunError::Output(path.display().to_string(), e.to_string()))?;
        std::fs::write(path, text)
            .map_err(|e| RunError::Output(path.display().to_string(), e.to_string()))?;
    }
    if let Some(path) = &common.plot {
        plot::draw(report, path)
            .map_err(|e| RunError::Output(path.display().to_string(), e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn fd_budget_counts_server_and_clients_separately() {
        assert!(check_fd_budget(10_080, 10_064, 20_000).is_ok());
        let e = check_fd_budget(19_800, 64, 20_000).unwrap_err();
        assert!(e.to_string().contains("client process"), "{e}");
        let e = check_fd_budget(100, 19_800, 20_000).unwrap_err();
        assert!(e.to_string().contains("server process"), "{e}");
        assert!(e.to_string().contains("limit is 20000"), "{e}");
    }

    #[test]
    fn planned_sockets_follow_the_scenario() {
        let cli = Cli::parse_from(["chat-load", "flood", "--attempts", "500"]);
        // 10 chatters + 50 held + 256 in flight + 16.
        assert_eq!(planned_sockets(&cli.scenario, 50), 332);
        let cli = Cli::parse_from(["chat-load", "steady", "--clients", "10000"]);
        assert_eq!(planned_sockets(&cli.scenario, 10_000), 10_080);
    }
}
