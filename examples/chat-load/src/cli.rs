//! Command-line arguments.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Load generator and outage replay for the chat server.
///
/// Starts a chat server (`--spawn-server PATH`, or the `chat-server` binary
/// next to this one or under the cargo target directory) or drives a running one
/// (`--http`, `--tcp`, `--status`, `--admin-token`). Exits 1 when a
/// scenario's safety check fails, 2 when the run could not be set up.
#[derive(Debug, Parser)]
#[command(name = "chat-load", version)]
pub struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Options shared by every scenario.
    #[command(flatten)]
    pub common: Common,
}

impl Cli {
    /// The idle timeout a spawned server gets: short where the scenario
    /// waits for it (wedge's leak repair, slowloris), long elsewhere so
    /// quiet load clients are not closed mid-run.
    pub fn idle_timeout(&self) -> u64 {
        self.common.idle_timeout.unwrap_or(match self.scenario {
            Scenario::Wedge(_) => 3,
            Scenario::Slowloris(_) => 5,
            _ => 60,
        })
    }
}

/// Options shared by every scenario.
#[derive(Debug, Args, Clone)]
pub struct Common {
    /// HTTP/WebSocket address of a running server (loopback only).
    #[arg(long, global = true, requires_all = ["tcp", "status"])]
    pub http: Option<SocketAddr>,
    /// TCP line-protocol address of a running server.
    #[arg(long, global = true)]
    pub tcp: Option<SocketAddr>,
    /// Status listener address of a running server.
    #[arg(long, global = true)]
    pub status: Option<SocketAddr>,
    /// Admin token of a running server (needed by `wedge`).
    #[arg(long, global = true, env = "CHAT_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Start this chat-server binary for the run (default when no --http is
    /// given: the chat-server next to this binary, else under
    /// $CARGO_TARGET_DIR or ./target/{release,debug}).
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "http")]
    pub spawn_server: Option<PathBuf>,
    /// Spawned server: --max-connections.
    #[arg(long, global = true, default_value_t = 200)]
    pub capacity: u64,
    /// Spawned server: --per-ip (default: the capacity, so only the global
    /// cap rejects).
    #[arg(long, global = true)]
    pub per_ip: Option<u64>,
    /// Spawned server: --queue.
    #[arg(long, global = true, default_value_t = 0)]
    pub queue: u64,
    /// Spawned server: --idle-timeout in seconds (also what `wedge` expects
    /// the leak repair to wait for). Default: 3 for wedge, 5 for slowloris,
    /// 60 otherwise.
    #[arg(long, global = true)]
    pub idle_timeout: Option<u64>,
    /// Append the spawned server's log to this file.
    #[arg(long, global = true, value_name = "FILE")]
    pub server_log: Option<PathBuf>,
    /// Number of 127.0.0.x source addresses to spread clients over.
    #[arg(long, global = true, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=254))]
    pub sources: u64,
    /// Chat protocol of the load clients.
    #[arg(long, global = true, value_enum, default_value_t = TransportArg::Ws)]
    pub transport: TransportArg,
    /// Timeout for one connect or one protocol step, in milliseconds.
    #[arg(long, global = true, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// `/health` poll period in milliseconds.
    #[arg(long, global = true, default_value_t = 50)]
    pub poll_ms: u64,
    /// Width of a time-line bin (plot resolution) in milliseconds.
    #[arg(long, global = true, default_value_t = 250)]
    pub bin_ms: u64,
    /// Write the full report as JSON to FILE.
    #[arg(long, global = true, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw admitted / rejected connections and latency over time to FILE.svg.
    #[arg(long, global = true, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Cluster mode: spawn this many chat-server nodes on a throw-away
    /// PostgreSQL and redis-server of the run's own (loopback, temp dir).
    /// More than one implies --cluster.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub nodes: u64,
    /// Cluster mode with the spawned nodes (`--nodes`, default 1), or, with
    /// `--node`, drive running cluster nodes.
    #[arg(long, global = true)]
    pub cluster: bool,
    /// A running cluster node, as `HTTP,TCP,STATUS` addresses (repeat for
    /// every node; the first also takes the run's admin requests).
    #[arg(long = "node", global = true, value_name = "HTTP,TCP,STATUS", value_parser = parse_node, conflicts_with_all = ["http", "spawn_server"])]
    pub node: Vec<NodeAddrs>,
    /// Spawned cluster: --cluster-max-connections (default: --capacity ×
    /// --nodes, so only the nodes' own caps bind).
    #[arg(long, global = true)]
    pub cluster_capacity: Option<u64>,
}

impl Common {
    /// Whether the run is in cluster mode.
    pub fn clustered(&self) -> bool {
        self.cluster || self.nodes > 1 || !self.node.is_empty()
    }
}

/// The three addresses of one running node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAddrs {
    /// HTTP/WebSocket.
    pub http: SocketAddr,
    /// TCP line protocol.
    pub tcp: SocketAddr,
    /// Status listener.
    pub status: SocketAddr,
}

fn parse_node(s: &str) -> Result<NodeAddrs, String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [http, tcp, status] = parts.as_slice() else {
        return Err("expected HTTP,TCP,STATUS addresses".into());
    };
    let addr = |a: &str| a.parse::<SocketAddr>().map_err(|e| format!("{a}: {e}"));
    Ok(NodeAddrs {
        http: addr(http)?,
        tcp: addr(tcp)?,
        status: addr(status)?,
    })
}

/// Chat protocol choice for load clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportArg {
    /// WebSocket only.
    Ws,
    /// TCP line protocol only.
    Tcp,
    /// Alternate between the two.
    Mixed,
}

/// The scenarios.
#[derive(Debug, Subcommand, Clone)]
pub enum Scenario {
    /// N clients in R rooms sending at a total rate: end-to-end latency
    /// (send → delivered to every member) and throughput.
    Steady(SteadyArgs),
    /// The first outage: ramp to k × capacity while admitted clients chat;
    /// checks the cap held and every rejected client was answered.
    Flood(FloodArgs),
    /// The second outage: inject a leak or a stall, keep connecting, time
    /// detection and recovery.
    Wedge(WedgeArgs),
    /// Every client disconnects and reconnects at once, with and without
    /// full jitter.
    Storm(StormArgs),
    /// Connections that trickle or send nothing, while normal clients chat.
    Slowloris(SlowlorisArgs),
}

impl Scenario {
    /// The scenario's name.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Steady(_) => "steady",
            Scenario::Flood(_) => "flood",
            Scenario::Wedge(_) => "wedge",
            Scenario::Storm(_) => "storm",
            Scenario::Slowloris(_) => "slowloris",
        }
    }
}

/// `steady` options.
#[derive(Debug, Args, Clone, serde::Serialize)]
pub struct SteadyArgs {
    /// Connected clients.
    #[arg(long, default_value_t = 200)]
    pub clients: u64,
    /// Rooms the clients are spread over.
    #[arg(long, default_value_t = 10)]
    pub rooms: u64,
    /// Messages per second over all clients.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Distinct user accounts the clients share.
    #[arg(long, default_value_t = 20)]
    pub users: u64,
    /// Connections opened at once while connecting.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: u64,
    /// Seconds to wait after sending stops for messages still in flight
    /// (the wait ends early once every message reached every member).
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Fail when the delivery p99 exceeds this many milliseconds.
    #[arg(long)]
    pub expect_p99_ms: Option<f64>,
}

/// `flood` options.
#[derive(Debug, Args, Clone, serde::Serialize)]
pub struct FloodArgs {
    /// Connection attempts as a multiple of the capacity.
    #[arg(long, default_value_t = 10.0)]
    pub factor: f64,
    /// Total connection attempts (overrides --factor).
    #[arg(long)]
    pub attempts: Option<u64>,
    /// Admitted clients that keep chatting through the flood (default:
    /// a fifth of the capacity, at most 50).
    #[arg(long)]
    pub chatters: Option<u64>,
    /// Messages per second over all chatters.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of chatting before the flood.
    #[arg(long, default_value_t = 3.0)]
    pub baseline: f64,
    /// Seconds over which the flood's attempts are spread.
    #[arg(long, default_value_t = 5.0)]
    pub ramp: f64,
    /// Seconds the admitted flood connections stay after the ramp.
    #[arg(long, default_value_t = 2.0)]
    pub hold: f64,
    /// Seconds observed after the flood ends.
    #[arg(long, default_value_t = 3.0)]
    pub after: f64,
    /// Attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: u64,
    /// Fail when the rejection answer p99 exceeds this many milliseconds.
    #[arg(long)]
    pub expect_reject_p99_ms: Option<f64>,
    /// Fail when the server is not back to healthy this many seconds after
    /// the flood connections leave.
    #[arg(long)]
    pub expect_healthy_within: Option<f64>,
    /// Fail when the chatters' p99 during the flood exceeds this multiple of
    /// their p99 before it.
    #[arg(long)]
    pub expect_latency_ratio: Option<f64>,
}

/// Which fault `wedge` injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// Take every permit and forget it.
    Leak,
    /// Lose the limiter's next wake-ups (needs --queue > 0).
    Stall,
}

/// `wedge` options.
#[derive(Debug, Args, Clone, serde::Serialize)]
pub struct WedgeArgs {
    /// The fault to inject.
    #[arg(long, value_enum, default_value_t = FaultKind::Leak)]
    pub fault: FaultKind,
    /// Milliseconds between connection probes.
    #[arg(long, default_value_t = 100)]
    pub probe_interval_ms: u64,
    /// Fail unless new clients get in within SECS of the fault being
    /// injected (leak) or of the permits being freed (stall). Default:
    /// idle timeout + 2 s for a leak, 2 s for a stall.
    #[arg(long, value_name = "SECS")]
    pub expect_recovery_within: Option<f64>,
    /// Fail unless `/health` shows the problem within SECS of it becoming
    /// visible (leak: after the idle timeout; stall: after the release).
    #[arg(long, value_name = "SECS")]
    pub expect_detect_within: Option<f64>,
    /// Queued connections used to expose a stall (at most --queue).
    #[arg(long, default_value_t = 5)]
    pub waiters: u64,
}

/// `storm` options.
#[derive(Debug, Args, Clone, serde::Serialize)]
pub struct StormArgs {
    /// Clients that all reconnect at once (default: 80 % of capacity).
    #[arg(long)]
    pub clients: Option<u64>,
    /// Full-jitter window for the first reconnect, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub window_ms: u64,
    /// Base of the exponential backoff after a rejection, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub backoff_ms: u64,
    /// Cap of the backoff, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub backoff_cap_ms: u64,
    /// Attempts per client before it gives up.
    #[arg(long, default_value_t = 20)]
    pub max_attempts: u64,
}

/// Kind of slow connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowKind {
    /// An HTTP connection that sends nothing.
    Silent,
    /// An HTTP request whose header arrives one byte per interval.
    Trickle,
    /// A WebSocket that never authenticates.
    Noauth,
    /// A TCP chat connection that never authenticates.
    Tcp,
    /// An even mix of the four.
    Mixed,
}

/// `slowloris` options.
#[derive(Debug, Args, Clone, serde::Serialize)]
pub struct SlowlorisArgs {
    /// Slow connections (default: half the capacity).
    #[arg(long)]
    pub slow: Option<u64>,
    /// What the slow connections do.
    #[arg(long, value_enum, default_value_t = SlowKind::Mixed)]
    pub kind: SlowKind,
    /// Milliseconds between trickled bytes.
    #[arg(long, default_value_t = 1000)]
    pub trickle_ms: u64,
    /// Normal clients chatting meanwhile.
    #[arg(long, default_value_t = 5)]
    pub normal: u64,
    /// Seconds to watch at most (default: idle timeout + 15).
    #[arg(long)]
    pub observe: Option<f64>,
    /// Fail unless every slow connection is closed by the server within SECS.
    #[arg(long, value_name = "SECS")]
    pub expect_closed_within: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("chat-load").chain(args.iter().copied()))
    }

    #[test]
    fn global_options_go_before_or_after_the_scenario() {
        let a = parse(&["--capacity", "50", "flood", "--attempts", "500"]).unwrap();
        let b = parse(&["flood", "--capacity", "50", "--attempts", "500"]).unwrap();
        for cli in [a, b] {
            assert_eq!(cli.common.capacity, 50);
            let Scenario::Flood(f) = cli.scenario else {
                panic!("not flood")
            };
            assert_eq!(f.attempts, Some(500));
            assert_eq!(f.factor, 10.0);
        }
    }

    #[test]
    fn wedge_defaults_and_bounds() {
        let cli = parse(&[
            "wedge",
            "--expect-recovery-within",
            "7.5",
            "--fault",
            "stall",
            "--queue",
            "10",
        ])
        .unwrap();
        let Scenario::Wedge(w) = &cli.scenario else {
            panic!("not wedge")
        };
        assert_eq!(w.expect_recovery_within, Some(7.5));
        assert_eq!(w.fault, FaultKind::Stall);
        assert_eq!(cli.common.queue, 10);
        assert_eq!(cli.common.idle_timeout, None);
        assert_eq!(cli.idle_timeout(), 3);
        assert_eq!(cli.scenario.name(), "wedge");
    }

    #[test]
    fn running_server_needs_all_three_addresses() {
        assert!(parse(&["steady", "--http", "127.0.0.1:8080"]).is_err());
        let cli = parse(&[
            "steady",
            "--http",
            "127.0.0.1:8080",
            "--tcp",
            "127.0.0.1:7070",
            "--status",
            "127.0.0.1:8081",
        ])
        .unwrap();
        assert_eq!(cli.common.http, Some("127.0.0.1:8080".parse().unwrap()));
        assert!(parse(&[
            "steady",
            "--http",
            "127.0.0.1:8080",
            "--tcp",
            "127.0.0.1:7070",
            "--status",
            "127.0.0.1:8081",
            "--spawn-server",
            "/x"
        ])
        .is_err());
    }

    #[test]
    fn cluster_options() {
        let cli = parse(&["steady", "--nodes", "3"]).unwrap();
        assert!(cli.common.clustered());
        assert_eq!(cli.common.nodes, 3);
        let cli = parse(&["flood"]).unwrap();
        assert!(!cli.common.clustered());
        let cli = parse(&["flood", "--cluster", "--cluster-capacity", "90"]).unwrap();
        assert!(cli.common.clustered());
        assert_eq!(cli.common.cluster_capacity, Some(90));
        let cli = parse(&[
            "wedge",
            "--node",
            "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3",
            "--node",
            "127.0.0.1:4, 127.0.0.1:5, 127.0.0.1:6",
        ])
        .unwrap();
        assert!(cli.common.clustered());
        assert_eq!(cli.common.node.len(), 2);
        assert_eq!(cli.common.node[1].status, "127.0.0.1:6".parse().unwrap());
        assert!(parse(&["steady", "--node", "127.0.0.1:1,127.0.0.1:2"]).is_err());
        assert!(parse(&["steady", "--nodes", "0"]).is_err());
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["flood", "--sources", "0"]).is_err());
        assert!(parse(&["flood", "--sources", "255"]).is_err());
        assert!(parse(&["wedge", "--fault", "melt"]).is_err());
        assert!(parse(&["nosuch"]).is_err());
        assert!(parse(&["slowloris", "--kind", "trickle", "--transport", "mixed"]).is_ok());
    }
}
