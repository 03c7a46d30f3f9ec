//! # chat-server
//!
//! A team chat server assembled from the `admit` crates: an HTTP JSON API
//! and WebSocket on one port, a raw TCP line protocol on another, and a
//! status listener with health, metrics, a live status page and admin
//! endpoints on a third. Its external behaviour is fixed by the contract in
//! `docs/chat-contract.md`; this crate is the reading copy of how to hold a real
//! service up with a limiter that can see, report and repair itself.
//!
//! ## How a connection flows
//!
//! ```text
//! HTTP/WS: admit_hyper::HttpListener (per-IP share + chat permit) ─► admit_hyper::Server ─► axum / ws task
//!            └─ refused: 503 + Retry-After + Connection: close (JSON body)
//! TCP:     admit_tcp::AdmitListener (same per-IP table, same chat limiter) ─► tcp task
//!            └─ refused: BUSY retry-after=N
//! status:  admit_hyper::listener + Server (own `status` limiter) ─► status router
//! watchdog thread ─► revokes leases idle past --idle-timeout ─► the task closes
//! ```
//!
//! Every read and write touches the connection's lease (both listeners
//! yield `admit_tcp::Admitted` streams, and an upgraded WebSocket keeps its
//! connection's), so "idle" means "no traffic". A revoked WebSocket hears of
//! it through the connection's end signal (`admit_hyper::ConnInfo::ending`)
//! and closes with 1013 inside a short goodbye window ([`GOODBYE_WINDOW`])
//! in which its socket still writes. One [`admit::Limiter`] (`chat`) is
//! shared by the HTTP/WebSocket and TCP listeners, and one
//! `admit_tcp::PerIpLimit` too, so each budget is one number however clients
//! connect. The status listener has its own small limiter (`status`), so
//! `/health` answers while chat is full.
//!
//! ## Modules
//!
//! * [`protocol`] — pure decoders for every network input (fuzzable).
//! * [`api`] — HTTP API, web client, WebSocket upgrade.
//! * [`session`] — one chat connection's commands and events, for both
//!   front ends.
//! * [`ws`], [`tcp`] — framing and the select loop of one chat connection.
//! * [`chat`] — accounts, tokens, rooms, posting, history; password
//!   hashing under its own limiter.
//! * [`throttle`] — failed-login limits per account and per address.
//! * [`hub`] — rooms in memory and bounded fan-out.
//! * [`store`] — the storage interface and its engines: SQLite with group
//!   commit on a dedicated thread, or PostgreSQL shared by a cluster.
//! * [`cluster`] — cluster mode: fan-out over Redis, per-room ordering,
//!   the cluster connection budget.
//! * [`status`] — health, metrics, status page, incidents, admin.
//! * [`incidents`] — what went wrong and what repaired it, from the
//!   limiters' transitions and the store's health, kept in the database.
//!
//! ## One signal for the server's life
//!
//! The server's [`Phase`] lives in one `watch` channel
//! ([`App::phase`]): `Running`, then `Draining` (an operator's drain, or
//! the first step of shutdown: the chat limiter closes, chat connections
//! say goodbye, listeners refuse newcomers), then `Stopping` (listeners
//! stop accepting, the status listener goes too). Everything that must
//! react subscribes to it.
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]

pub mod api;
pub mod chat;
pub mod cluster;
pub mod hub;
pub mod incidents;
pub mod protocol;
pub mod session;
pub mod status;
pub mod store;
pub mod tcp;
pub mod throttle;
pub mod ws;

use admit::{Limiter, Watchdog, WatchdogConfig};
use chat::{Chat, ChatOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Connections the status listener admits at once.
pub const STATUS_CAPACITY: u32 = 64;
/// Of those, held back for `/health`, `/metrics` and `/admin`: a
/// connection that finds the rest taken may still use one of these for a
/// request to one of those paths.
pub const STATUS_RESERVE: u32 = 8;
/// Status connections from one address (IPv6: one /64).
pub const STATUS_PER_IP: u32 = 8;
/// What a refused client is told to wait before retrying, in seconds
/// (HTTP `Retry-After`, TCP `BUSY retry-after=N`).
pub const RETRY_AFTER_SECS: u32 = 2;
/// How long a waiting connection (`--queue`) may wait for a slot.
pub const QUEUE_WAIT: Duration = Duration::from_secs(10);
/// How long a revoked HTTP/WebSocket connection may still write, so the
/// WebSocket close frame 1013 reaches the client before the socket closes.
/// Shorter than the watchdog's reclaim grace (1 s), so a connection saying
/// goodbye gives its slot back itself rather than having it reclaimed.
pub const GOODBYE_WINDOW: Duration = Duration::from_millis(500);
/// The body of the HTTP listener's `503` at capacity: the contract's error
/// shape.
const BUSY_BODY: &[u8] =
    br#"{"error":"unavailable","message":"no connection slot is free; retry after the Retry-After delay"}"#;
/// How long shutdown waits for connections to finish before closing the
/// database anyway (the contract allows 10 s in all).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything the server needs to start; `main.rs` fills it from flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP API, web client and WebSocket.
    pub http: SocketAddr,
    /// Raw TCP line protocol.
    pub tcp: SocketAddr,
    /// Status listener.
    pub status: SocketAddr,
    /// Directory holding `chat.db`.
    pub data: PathBuf,
    /// One budget for HTTP/WS and TCP chat connections.
    pub max_connections: u32,
    /// Concurrent chat connections per address (IPv6: per /64).
    pub per_ip: u32,
    /// Connections that may wait for a slot; 0 rejects at once.
    pub queue: u32,
    /// Connections with no traffic this long are closed.
    pub idle_timeout: Duration,
    /// Enables `/admin/*`.
    pub admin_token: Option<String>,
    /// Enables `POST /admin/faults`.
    pub fault_injection: bool,
    /// Lifetime of a bearer token.
    pub token_ttl: Duration,
    /// Argon2id memory cost in KiB (the OWASP-recommended 19 MiB by default;
    /// tests lower it to run fast).
    pub argon2_m_cost: u32,
    /// Most writes committed in one transaction (group commit); 1 commits
    /// every message on its own, for comparison.
    pub max_batch: usize,
    /// Password hashes run at once (2 × cores by default).
    pub max_hashes: u32,
    /// How often expired tokens are deleted.
    pub token_purge_every: Duration,
    /// How long the chat limiter must stay saturated to be an incident.
    pub incident_saturated_after: Duration,
    /// Incidents kept at most.
    pub incident_max_rows: i64,
    /// `postgres://…` or `sqlite://DIR`; none: SQLite in [`Config::data`].
    pub database: Option<String>,
    /// `redis://…`: cluster mode (fan-out and the cluster connection
    /// budget); needs PostgreSQL.
    pub redis: Option<String>,
    /// This node's name in the cluster (default: host name and HTTP port).
    pub node_id: Option<String>,
    /// Chat connections across all nodes (cluster mode); defaults to
    /// `max_connections`.
    pub cluster_max_connections: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: ([127, 0, 0, 1], 8080).into(),
            tcp: ([127, 0, 0, 1], 7070).into(),
            status: ([127, 0, 0, 1], 8081).into(),
            data: "./data".into(),
            max_connections: default_max_connections(),
            per_ip: 256,
            queue: 0,
            idle_timeout: Duration::from_secs(300),
            admin_token: None,
            fault_injection: false,
            token_ttl: Duration::from_secs(30 * 24 * 3600),
            argon2_m_cost: 19 * 1024,
            max_batch: store::MAX_BATCH,
            max_hashes: 2 * cores(),
            token_purge_every: Duration::from_secs(600),
            incident_saturated_after: incidents::SATURATED_AFTER,
            incident_max_rows: incidents::MAX_ROWS,
            database: None,
            redis: None,
            node_id: None,
            cluster_max_connections: None,
        }
    }
}

/// The cores this process may use.
fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// `min(10000, half the open-file limit)`: every connection costs a
/// descriptor, and the database, listeners and refusals need some too.
pub fn default_max_connections() -> u32 {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1024);
    (soft / 2).clamp(1, 10_000) as u32
}

/// The addresses the server actually bound (ports may have been 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    /// HTTP listener.
    pub http: SocketAddr,
    /// TCP listener.
    pub tcp: SocketAddr,
    /// Status listener.
    pub status: SocketAddr,
}

impl std::fmt::Display for Addrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "listening http={} tcp={} status={}",
            self.http, self.tcp, self.status
        )
    }
}

/// Where the server is in its life; see the crate docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving.
    Running,
    /// Refusing newcomers, asking chat clients to go; the status listener
    /// still answers.
    Draining,
    /// Shutting down: listeners stop.
    Stopping,
}

/// State shared by every handler.
#[derive(Debug)]
pub struct App {
    /// The chat service.
    pub chat: Arc<Chat>,
    /// The shared chat connection limiter.
    pub chat_limiter: Limiter,
    /// The status listener's limiter.
    pub status_limiter: Limiter,
    /// Admin bearer token, if admin is enabled.
    pub admin_token: Option<String>,
    /// Whether fault injection is enabled.
    pub fault_injection: bool,
    /// When the server started.
    pub started: Instant,
    /// This server's metrics recorder.
    pub recorder: metrics_exporter_prometheus::PrometheusRecorder,
    /// The server's phase: the one signal for drain and shutdown.
    pub phase: watch::Sender<Phase>,
    /// `GET /events` streams open at once.
    pub events_limiter: Limiter,
    /// The incident log.
    pub incidents: incidents::Incidents,
    /// This node's name.
    pub node: String,
    /// The cluster link, in cluster mode.
    pub cluster: Option<Arc<cluster::Cluster>>,
}

impl App {
    /// Stops admitting chat connections and asks every connected client
    /// to go away (WebSocket close 1001, TCP `BYE`). Listeners stay up and
    /// refuse newcomers with 503 / `BUSY`.
    pub fn begin_drain(&self) {
        self.advance(Phase::Draining);
    }

    /// Moves the phase forward (never back) and closes the chat limiter,
    /// so that nothing new is admitted once draining began.
    fn advance(&self, to: Phase) {
        self.chat_limiter.close();
        self.phase.send_if_modified(|p| {
            let later = matches!(
                (*p, to),
                (Phase::Running, Phase::Draining | Phase::Stopping)
                    | (Phase::Draining, Phase::Stopping)
            );
            if later {
                *p = to;
            }
            later
        });
    }

    /// Whether a drain or shutdown began.
    pub fn draining(&self) -> bool {
        *self.phase.borrow() != Phase::Running
    }

    /// Resolves once the phase is `phase` or later.
    pub fn reached(&self, phase: Phase) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.phase.subscribe();
        async move {
            let _ = rx
                .wait_for(|p| match phase {
                    Phase::Running => true,
                    Phase::Draining => *p != Phase::Running,
                    Phase::Stopping => *p == Phase::Stopping,
                })
                .await;
        }
    }
}

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    app: Arc<App>,
    addrs: Addrs,
    listeners: (TcpListener, TcpListener, TcpListener),
    queue: bool,
    per_ip: u32,
    idle_timeout: Duration,
    token_purge_every: Duration,
    incident_saturated_after: Duration,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error("cannot open the database: {0}")]
    Store(#[from] store::StoreError),
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The limiter or watchdog could not be set up.
    #[error("cannot set up admission: {0}")]
    Admission(String),
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    // std's listen backlog (128) is too short for a connection storm; with
    // socket2-free code the simplest larger backlog is tokio's TcpSocket.
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .and_then(|s| {
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        Ok(s)
    })
    .map_err(|source| StartError::Bind { addr, source })?;
    socket
        .listen(1024)
        .map_err(|source| StartError::Bind { addr, source })
}

impl Server {
    /// Opens the database and binds the three listeners.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        let http = bind(config.http).await?;
        let tcp = bind(config.tcp).await?;
        let status = bind(config.status).await?;
        let addrs = Addrs {
            http: http.local_addr().map_err(|source| StartError::Bind {
                addr: config.http,
                source,
            })?,
            tcp: tcp.local_addr().map_err(|source| StartError::Bind {
                addr: config.tcp,
                source,
            })?,
            status: status.local_addr().map_err(|source| StartError::Bind {
                addr: config.status,
                source,
            })?,
        };
        let database = store::Database::parse(config.database.as_deref(), &config.data)?;
        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(|| cluster::default_node_id(addrs.http));
        let store = store::open(&database, config.max_batch, &node_id).await?;
        let incident_log = incidents::Incidents::new(store.clone(), config.incident_max_rows);
        let chat = Chat::new(
            store,
            ChatOptions {
                token_ttl: config.token_ttl,
                argon2_m_cost: config.argon2_m_cost,
                max_hashes: config.max_hashes,
            },
        )
        .await?;
        let max = config.max_connections.max(1);
        let cluster = match &config.redis {
            None => None,
            Some(_) if !matches!(database, store::Database::Postgres(_)) => {
                return Err(StartError::Config(
                    "--redis (cluster mode) needs --database postgres://…: the nodes share it"
                        .into(),
                ))
            }
            Some(url) => Some(
                cluster::Cluster::start(
                    url,
                    node_id.clone(),
                    config.cluster_max_connections.unwrap_or(max),
                    max,
                    config.queue,
                )
                .await
                .map_err(|e| StartError::Admission(format!("cannot join the cluster: {e}")))?,
            ),
        };
        let chat_limiter = match &cluster {
            // The node admits from its share of the cluster budget, which
            // never exceeds its own cap.
            Some(c) => c.limiter().limiter().clone(),
            None => Limiter::builder()
                .capacity(max)
                // Room for an operator to raise the capacity at run time.
                .max_capacity(max.saturating_mul(2).min(admit::MAX_CAPACITY))
                .queue_limit(config.queue.min(admit::MAX_QUEUE))
                .name("chat")
                .build()
                .map_err(|e| StartError::Admission(e.to_string()))?,
        };
        // The status and event limiters only ever try: a request is served
        // or refused at once, so their queues are 0 (and health says so).
        let status_limiter = Limiter::builder()
            .capacity(STATUS_CAPACITY)
            .reserve(STATUS_RESERVE)
            .queue_limit(0)
            .name("status")
            .build()
            .map_err(|e| StartError::Admission(e.to_string()))?;
        let events_limiter = Limiter::builder()
            .capacity(status::MAX_EVENT_STREAMS)
            .queue_limit(0)
            .name("events")
            .build()
            .map_err(|e| StartError::Admission(e.to_string()))?;
        let app = Arc::new(App {
            chat: Arc::new(chat),
            chat_limiter,
            status_limiter,
            admin_token: config.admin_token.clone(),
            fault_injection: config.fault_injection,
            started: Instant::now(),
            recorder: metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder(),
            phase: watch::Sender::new(Phase::Running),
            events_limiter,
            incidents: incident_log,
            node: node_id,
            cluster: cluster.clone(),
        });
        if let Some(c) = &cluster {
            let heads = app.chat.store.room_heads().await?;
            let _ = app.chat.cluster.set(c.clone());
            c.attach(&app.chat, heads);
        }
        Ok(Server {
            app,
            addrs,
            listeners: (http, tcp, status),
            queue: config.queue > 0,
            per_ip: config.per_ip.max(1),
            idle_timeout: config.idle_timeout,
            token_purge_every: config.token_purge_every.max(Duration::from_millis(10)),
            incident_saturated_after: config.incident_saturated_after,
        })
    }

    /// The bound addresses.
    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    /// The shared state (for embedding and tests).
    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }

    /// Serves until `shutdown` resolves, then drains: stops accepting, says
    /// goodbye to every client, waits up to [`SHUTDOWN_GRACE`] for them to
    /// go, and commits what the database still has queued.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), StartError> {
        let app = self.app;
        tracing::info!("{}", self.addrs);

        // The watchdog runs on its own thread. Idle leases are revoked after
        // --idle-timeout; the connection then closes itself, and a lease
        // whose holder never lets go (a leak) is reclaimed after the grace.
        // A live holder closes within milliseconds of its revocation, so one
        // second is plenty, and it keeps recovery from a leak within
        // --idle-timeout + 2 s whatever the timeout.
        let grace = Duration::from_secs(1);
        let wd_config = WatchdogConfig::default()
            .interval(Duration::from_millis(100))
            .max_idle(self.idle_timeout)
            .grace(grace);
        let chat_watchdog = Watchdog::spawn(app.chat_limiter.clone(), wd_config)
            .map_err(|e| StartError::Admission(format!("watchdog: {e}")))?;
        let status_watchdog = Watchdog::spawn(
            app.status_limiter.clone(),
            WatchdogConfig::default().max_idle(Duration::from_secs(300)),
        )
        .map_err(|e| StartError::Admission(format!("watchdog: {e}")))?;

        // Incidents are recorded from the start, watchdogs included.
        let recorder = tokio::spawn(incidents::run(app.clone(), self.incident_saturated_after));

        // Expired tokens are deleted, not kept: once at start, then
        // regularly.
        let purge = tokio::spawn({
            let chat = app.chat.clone();
            let every = self.token_purge_every;
            async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    if let Err(e) = chat.purge_expired_tokens().await {
                        tracing::warn!("cannot delete expired tokens: {e}");
                    }
                }
            }
        });

        let (http, tcp, status) = self.listeners;
        // One per-address budget for HTTP/WebSocket and TCP alike, sized for
        // every connection that can hold a share at once: those admitted,
        // those waiting in the queue and refusals being answered.
        let per_ip = admit_tcp::PerIpLimit::for_limiter(self.per_ip, &app.chat_limiter);

        // The HTTP/WebSocket listener is admit-hyper's: a connection takes
        // its per-address share and a chat permit (waiting in the limiter's
        // queue with --queue) before hyper sees it; a refused one is
        // answered 503 with Retry-After and the contract's error body, off
        // the accept loop. The admitted stream touches its lease on every
        // read and write, and keeps the permit through a WebSocket upgrade.
        let retry_after = Duration::from_secs(RETRY_AFTER_SECS.into());
        let mut http_listener = admit_hyper::listener(app.chat_limiter.clone())
            .per_ip_limit(per_ip.clone())
            .retry_after(retry_after)
            .busy_body("application/json", BUSY_BODY)
            .nodelay(true);
        if self.queue {
            http_listener = http_listener.queue_timeout(QUEUE_WAIT);
        }
        let http_listener = http_listener
            .from_tokio(http)
            .map_err(|e| StartError::Admission(format!("http listener: {e}")))?;
        let mut http_server = admit_hyper::Server::new()
            .http1_only()
            .header_timeout(api::HEADER_TIMEOUT)
            .goodbye_window(GOODBYE_WINDOW)
            .drain_timeout(SHUTDOWN_GRACE);
        http_server.builder_mut().http1().max_buf_size(64 * 1024);
        let http_task = tokio::spawn(http_server.serve(
            http_listener,
            api::router(app.clone()),
            app.reached(Phase::Stopping),
        ));

        // The TCP listener is admit-tcp's: refusals get `BUSY retry-after=N`
        // written off the accept loop, EMFILE is backed off, and the stream
        // it yields touches its lease on every read and write.
        let busy = format!("BUSY retry-after={RETRY_AFTER_SECS}\n").into_bytes();
        let policy = if self.queue {
            admit_tcp::Policy::Wait(QUEUE_WAIT)
        } else {
            admit_tcp::Policy::busy(busy.clone())
        };
        let tcp = admit_tcp::AdmitListener::builder(app.chat_limiter.clone())
            .policy(policy)
            .busy_message(busy)
            .per_ip_limit(per_ip)
            .from_tokio(tcp)
            .map_err(|e| StartError::Admission(format!("tcp listener: {e}")))?;
        let tcp_task = tokio::spawn(tcp::accept_loop(
            tcp,
            app.chat.clone(),
            app.phase.subscribe(),
        ));
        // The status listener is served by admit-hyper too: its own small
        // limiter, 503 + Retry-After when that is full, a header timeout,
        // and a bounded drain at shutdown. It stops at `Stopping`, not at
        // `Draining`: after `POST /admin/drain` it must keep answering.
        // Anonymous clients cannot starve it: a few connections per
        // address, a cap on live `/events` streams (in the router), and
        // the limiter's reserve kept for `/health`, `/metrics` and `/admin`.
        let status_listener = admit_hyper::listener(app.status_limiter.clone())
            .retry_after(retry_after)
            .busy_body("application/json", BUSY_BODY)
            .per_ip(STATUS_PER_IP)
            .reserve_for(|path| {
                path == "/health" || path == "/metrics" || path.starts_with("/admin/")
            })
            .from_tokio(status)
            .map_err(|e| StartError::Admission(format!("status listener: {e}")))?;
        let status_task = tokio::spawn(
            admit_hyper::Server::new()
                .http1_only()
                .header_timeout(api::HEADER_TIMEOUT)
                .drain_timeout(Duration::from_secs(3))
                .serve(
                    status_listener,
                    status::router(app.clone()),
                    app.reached(Phase::Stopping),
                ),
        );

        shutdown.await;
        tracing::info!("shutting down: closing listeners and saying goodbye to clients");
        app.advance(Phase::Stopping);
        purge.abort();
        let _ = tcp_task.await;
        // The HTTP server, chat clients and the status listener drain side
        // by side, each within its own deadline, so the whole shutdown stays
        // well inside the contract's 10 s. The HTTP server finishes requests
        // in flight and waits for WebSocket tasks to close with 1001; past
        // its deadline it revokes what is left.
        let http_done = async {
            match http_task.await {
                Ok(Err(e)) => tracing::warn!("http listener: {e}"),
                Err(e) => tracing::warn!("http listener task: {e}"),
                Ok(Ok(())) => {}
            }
        };
        let chat_drained = async {
            if tokio::time::timeout(SHUTDOWN_GRACE, app.chat_limiter.drained())
                .await
                .is_err()
            {
                tracing::warn!(
                    in_use = app.chat_limiter.in_use(),
                    "some connections did not close in time; closing the database anyway"
                );
            }
        };
        let status_done = async {
            if let Ok(Err(e)) = status_task.await {
                tracing::warn!("status listener: {e}");
            }
        };
        tokio::join!(http_done, chat_drained, status_done);
        // The recorder closes what is open before the database closes.
        let _ = recorder.await;
        app.status_limiter.close();
        if let Some(c) = &app.cluster {
            // Drained: the share goes back to the other nodes now rather
            // than when its lease runs out.
            let leave = c.limiter().clone().leave();
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(1), leave).await {
                tracing::warn!("cannot hand the cluster share back: {e}");
            }
        }
        let store = app.chat.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.shutdown()).await;
        drop((chat_watchdog, status_watchdog));
        tracing::info!("shut down cleanly");
        Ok(())
    }
}

/// Binds and serves `config` until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    Server::bind(config).await?.run(shutdown).await
}
