//! `chat-server`: parses flags, sets up logging and signals, and runs the
//! library's server. Everything else lives in the library.
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]

use chat_server::Config;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A team chat server with a working connection cap, a self-repairing
/// limiter and a public status page.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// HTTP API, web client at `/`, WebSocket at `/ws`.
    #[arg(long, env = "CHAT_HTTP", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Raw TCP line protocol.
    #[arg(long, env = "CHAT_TCP", default_value = "127.0.0.1:7070")]
    tcp: SocketAddr,
    /// Status page, health, metrics and admin.
    #[arg(long, env = "CHAT_STATUS", default_value = "127.0.0.1:8081")]
    status: SocketAddr,
    /// Directory for the SQLite database `chat.db`; created if missing.
    #[arg(long, env = "CHAT_DATA", default_value = "./data")]
    data: PathBuf,
    /// One budget shared by HTTP/WS and TCP chat connections
    /// [default: min(10000, half the open-file limit)].
    #[arg(long, env = "CHAT_MAX_CONNECTIONS")]
    max_connections: Option<u32>,
    /// Concurrent chat connections from one address (IPv6: one /64).
    #[arg(long, env = "CHAT_PER_IP", default_value_t = 256)]
    per_ip: u32,
    /// Connections that may wait for a slot; 0 = reject at once.
    #[arg(long, env = "CHAT_QUEUE", default_value_t = 0)]
    queue: u32,
    /// Seconds without traffic after which a connection is closed.
    #[arg(long, env = "CHAT_IDLE_TIMEOUT", default_value_t = 300)]
    idle_timeout: u64,
    /// Password hashes (register, login) run at once; more wait briefly or
    /// are refused `busy` [default: 2 x cores].
    #[arg(long, env = "CHAT_MAX_HASHES", value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_hashes: Option<u32>,
    /// Enables `/admin/*` with this bearer token.
    #[arg(long, env = "CHAT_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Enables `POST /admin/faults` (tests and drills only).
    #[arg(long, env = "CHAT_FAULT_INJECTION", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0, default_missing_value = "true")]
    fault_injection: bool,
    /// `postgres://…`: the database every node of a cluster shares;
    /// `sqlite://DIR` or none: embedded SQLite in `--data`.
    #[arg(long, env = "CHAT_DATABASE")]
    database: Option<String>,
    /// `redis://HOST:PORT`: cluster mode, with fan-out between nodes and
    /// the cluster-wide connection budget (needs `--database postgres://…`).
    #[arg(long, env = "CHAT_REDIS")]
    redis: Option<String>,
    /// This node's name [default: host name and HTTP port].
    #[arg(long, env = "CHAT_NODE_ID")]
    node_id: Option<String>,
    /// Chat connections across all nodes of the cluster;
    /// `--max-connections` stays this node's own cap [default: --max-connections].
    #[arg(long, env = "CHAT_CLUSTER_MAX_CONNECTIONS")]
    cluster_max_connections: Option<u32>,
}

/// Resolves on SIGINT or SIGTERM.
async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM ({e}); only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: logs piped to files stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let defaults = Config::default();
    let config = Config {
        http: args.http,
        tcp: args.tcp,
        status: args.status,
        data: args.data,
        max_connections: args.max_connections.unwrap_or(defaults.max_connections),
        per_ip: args.per_ip,
        queue: args.queue,
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        max_hashes: args.max_hashes.unwrap_or(defaults.max_hashes),
        admin_token: args.admin_token.filter(|t| !t.is_empty()),
        fault_injection: args.fault_injection,
        database: args.database.filter(|d| !d.is_empty()),
        redis: args.redis.filter(|r| !r.is_empty()),
        node_id: args.node_id.filter(|n| !n.is_empty()),
        cluster_max_connections: args.cluster_max_connections,
        ..defaults
    };
    match chat_server::run(config, signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("chat-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
