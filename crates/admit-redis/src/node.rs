//! A node: the local limiter, the driver task that talks to Redis, and the
//! guard thread that ends a lease on time.
//!
//! # Implementation notes
//!
//! * The admission path is the local [`admit::Limiter`] plus one check of
//!   the coarse clock against the lease deadline in the [`Gate`], an
//!   atomic. No lock and no Redis call is on it.
//! * Everything else (the protocol state in [`Core`], capacity changes)
//!   happens under one `Mutex`, held only for short, non-blocking work and
//!   never across an `await`.
//! * Capacity and deadline move in a fixed order. Growing: Redis confirms
//!   first, then the local capacity rises. Shrinking: the local capacity is
//!   lowered first, the permits still in use are read, and only the rest is
//!   returned to Redis (held permits stay, as the core's I1 promises, and
//!   stay covered by the share). Expiring: the capacity is lowered, then
//!   the deadline is moved (see `gate.rs` for the orderings and its loom
//!   model).
//! * The guard is an OS thread, not a task: a wedged async runtime stops
//!   the driver from renewing, and the guard still drops the capacity when
//!   the lease runs out.

use crate::clock::now_ms;
use crate::core::{Authority, Core, Plan, Tuning};
use crate::error::Error;
use crate::gate::Gate;
use crate::script::{self, SyncReply};
use crate::status::{BudgetKeys, ClusterSnapshot, Mode, NodeHealth, NodeStatus};
use admit::{Limiter, Permit, Rejected};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Builds a [`ClusterLimiter`]. Start from [`ClusterLimiter::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    client: redis::Client,
    budget_name: String,
    budget: u32,
    prefix: String,
    node_id: Option<String>,
    heartbeat: Duration,
    ttl: Duration,
    call_timeout: Duration,
    max_drift: f64,
    min_batch: u32,
    max_share: Option<u32>,
    queue_limit: u32,
    reserve: u32,
}

impl Builder {
    /// The key prefix (default `"admit:"`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// This node's id in Redis (default: `"<pid>-<random>"`). Ids must be
    /// unique among live nodes; a restarted process may reuse its id, its
    /// old entry is then replaced.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// How often the lease is renewed (default 1 s).
    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.heartbeat = d;
        self
    }

    /// How long a lease lasts without renewal (default 2.5 s). A killed
    /// node's share is free again at most this long after its last renewal.
    /// Must leave room for two heartbeats and a call deadline.
    pub fn ttl(mut self, d: Duration) -> Self {
        self.ttl = d;
        self
    }

    /// The deadline of every Redis call (default 250 ms): a Redis that is
    /// paused rather than gone cannot hold the node up longer.
    pub fn call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }

    /// The largest relative difference between the node's clock rate and
    /// Redis's that the lease must tolerate (default 0.01, one percent).
    pub fn max_drift(mut self, drift: f64) -> Self {
        self.max_drift = drift;
        self
    }

    /// The smallest step a share grows or shrinks by, and the share an idle
    /// node keeps (default 16).
    pub fn min_batch(mut self, n: u32) -> Self {
        self.min_batch = n;
        self
    }

    /// The most this node ever holds (default: the budget). Sizes the local
    /// limiter's lease table.
    pub fn max_share(mut self, n: u32) -> Self {
        self.max_share = Some(n);
        self
    }

    /// Callers that may wait in the local queue for a permit (default
    /// [`admit::DEFAULT_QUEUE_LIMIT`], as for a plain limiter; 0 makes
    /// [`ClusterLimiter::acquire`] fail at once when the share is full);
    /// waiting callers count as demand, so the share grows for them.
    pub fn queue_limit(mut self, n: u32) -> Self {
        self.queue_limit = n;
        self
    }

    /// Permits of the share kept for critical work (default 0), as
    /// [`admit::Builder::reserve`].
    pub fn reserve(mut self, n: u32) -> Self {
        self.reserve = n;
        self
    }

    fn tuning(&self) -> Result<Tuning, Error> {
        let ms = |d: Duration| d.as_millis() as u64;
        let t = Tuning {
            heartbeat_ms: ms(self.heartbeat),
            ttl_ms: ms(self.ttl),
            call_timeout_ms: ms(self.call_timeout),
            retry_ms: (ms(self.heartbeat) / 4).clamp(10, 250),
            max_drift: self.max_drift,
            min_batch: self.min_batch.max(1),
            max_share: self.max_share.unwrap_or(self.budget),
        };
        if !(0.0..0.5).contains(&t.max_drift) {
            return Err(Error::Config("max_drift must be in [0, 0.5)".into()));
        }
        if t.heartbeat_ms == 0 || t.call_timeout_ms == 0 {
            return Err(Error::Config(
                "heartbeat and call_timeout must be positive".into(),
            ));
        }
        if t.call_timeout_ms >= t.heartbeat_ms {
            return Err(Error::Config(
                "call_timeout must be shorter than the heartbeat".into(),
            ));
        }
        if 2 * t.heartbeat_ms + t.call_timeout_ms > t.local_lease_ms() {
            return Err(Error::Config(format!(
                "ttl {} ms leaves no room for two heartbeats of {} ms and a call deadline of {} ms \
                 (after a {:.0}% clock-rate margin); raise the ttl or shorten the heartbeat",
                t.ttl_ms,
                t.heartbeat_ms,
                t.call_timeout_ms,
                t.max_drift * 100.0
            )));
        }
        Ok(t)
    }

    /// Starts the node: builds the local limiter (capacity 0 until Redis
    /// grants a share), tries to join once (bounded by the call deadline),
    /// and spawns the driver on the current tokio runtime and the guard
    /// thread. Redis being down is not an error: the node joins when it
    /// comes back, and reports `degraded` meanwhile.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn start(self) -> Result<ClusterLimiter, Error> {
        let tuning = self.tuning()?;
        let node_id = self.node_id.clone().unwrap_or_else(default_node_id);
        let limiter = Limiter::builder()
            .capacity(0)
            .max_capacity(tuning.max_share)
            .queue_limit(self.queue_limit)
            .reserve(self.reserve)
            .name(format!("{}@{}", self.budget_name, node_id))
            .build()?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.call_timeout))
            .set_response_timeout(Some(self.call_timeout))
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(tuning.retry_ms))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        let (health_tx, _) = watch::channel(NodeHealth::Degraded(crate::Cause::Cluster));
        let shared = Arc::new(Shared {
            limiter,
            gate: Gate::new(),
            refused: AtomicU32::new(0),
            stop: AtomicBool::new(false),
            wake: Notify::new(),
            core: Mutex::new(Core::new(tuning)),
            keys: BudgetKeys::new(&self.prefix, &self.budget_name),
            node_id,
            default_budget: self.budget,
            conn,
            call_timeout: self.call_timeout,
            sync: redis::Script::new(script::SYNC),
            leave: redis::Script::new(script::LEAVE),
            health: health_tx,
            last_cluster: Mutex::new(ClusterSnapshot::default()),
            stats: Stats::default(),
            guard: Mutex::new(None),
        });
        // One attempt before returning, so a node that starts beside a
        // healthy Redis admits from its first connection on.
        if let Some(plan) = shared.plan() {
            shared.call(plan).await;
        }
        let guard = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("admit-redis-guard".into())
                .spawn(move || guard(shared))
                .map_err(|e| Error::Config(format!("cannot spawn the guard thread: {e}")))?
        };
        *lock(&shared.guard) = Some(guard.thread().clone());
        tokio::spawn(drive(shared.clone()));
        Ok(ClusterLimiter {
            handle: Arc::new(Handle { shared }),
        })
    }
}

fn default_node_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}-{:08x}",
        std::process::id(),
        nanos ^ (now_ms() as u32).rotate_left(16)
    )
}

/// One node's admission against a cluster-wide budget held in Redis.
///
/// Cheap to clone; the background work stops when the last clone is
/// dropped (the lease then runs out in Redis, or call
/// [`leave`](Self::leave) to hand the share back at once).
#[derive(Clone)]
pub struct ClusterLimiter {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for ClusterLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.handle.shared;
        f.debug_struct("ClusterLimiter")
            .field("node", &s.node_id)
            .field("budget", &s.keys.name())
            .field("limiter", &s.limiter)
            .finish()
    }
}

/// Stops the background work when the last user handle goes.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

#[derive(Default)]
struct Stats {
    syncs: AtomicU64,
    failures: AtomicU64,
    lost: AtomicU64,
    fallbacks: AtomicU64,
}

struct Shared {
    limiter: Limiter,
    /// The lease deadline every checked admission reads.
    gate: Gate,
    /// Callers turned away since the driver last looked.
    refused: AtomicU32,
    stop: AtomicBool,
    wake: Notify,
    core: Mutex<Core>,
    keys: BudgetKeys,
    node_id: String,
    default_budget: u32,
    conn: ConnectionManager,
    call_timeout: Duration,
    sync: redis::Script,
    leave: redis::Script,
    health: watch::Sender<NodeHealth>,
    last_cluster: Mutex<ClusterSnapshot>,
    stats: Stats,
    guard: Mutex<Option<std::thread::Thread>>,
}

/// Locks, ignoring poisoning: the state under the lock is always
/// consistent between statements (a panic cannot leave it half-written).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClusterLimiter {
    /// Starts a [`Builder`] for a node of the budget `budget_name`, capped
    /// cluster-wide at `budget` permits. The budget is written to Redis by
    /// the first node to join; later nodes use the value Redis holds (see
    /// [`BudgetKeys::set_budget`] to change it).
    pub fn builder(client: redis::Client, budget_name: impl Into<String>, budget: u32) -> Builder {
        Builder {
            client,
            budget_name: budget_name.into(),
            budget,
            prefix: "admit:".into(),
            node_id: None,
            heartbeat: Duration::from_secs(1),
            ttl: Duration::from_millis(2_500),
            call_timeout: Duration::from_millis(250),
            max_drift: 0.01,
            min_batch: 16,
            max_share: None,
            queue_limit: admit::DEFAULT_QUEUE_LIMIT,
            reserve: 0,
        }
    }

    /// Takes a permit if the node's confirmed share has room. No Redis call:
    /// one clock read and the local limiter's `try_acquire`. A rejection
    /// tells the driver that demand is at the share, so it asks for more.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        let s = &*self.handle.shared;
        if s.gate.expired(now_ms()) {
            s.expire_now();
        }
        s.limiter.try_acquire().inspect_err(|_| s.press())
    }

    /// Waits for a permit in the local queue (see [`Builder::queue_limit`]);
    /// waiting callers count as demand, so the share grows for them. Fails
    /// at once when the queue is full, like [`admit::Limiter::acquire`];
    /// bound the wait with the local limiter's
    /// [`acquire_until`](admit::Limiter::acquire_until) if it needs a deadline.
    pub async fn acquire(&self) -> Result<Permit, Rejected> {
        let s = &*self.handle.shared;
        if s.gate.expired(now_ms()) {
            s.expire_now();
        }
        if let Ok(p) = s.limiter.try_acquire() {
            return Ok(p);
        }
        s.press();
        s.limiter.acquire().await
    }

    /// The local limiter, for adapters such as `admit-tcp` that take an
    /// [`admit::Limiter`]. Its capacity is this node's share and follows it.
    ///
    /// Admissions made directly on it skip the lease-clock check of
    /// [`try_acquire`](Self::try_acquire): they rely on the guard thread to
    /// lower the capacity when a lease runs out, which it does within
    /// milliseconds, but only once it is scheduled (after a process pause,
    /// the first admissions may come before it).
    pub fn limiter(&self) -> &Limiter {
        &self.handle.shared.limiter
    }

    /// This node's id in Redis.
    pub fn node_id(&self) -> &str {
        &self.handle.shared.node_id
    }

    /// The budget's keys.
    pub fn keys(&self) -> &BudgetKeys {
        &self.handle.shared.keys
    }

    /// The node's own view: share, mode, lease, Redis reachability and
    /// counters. No Redis call.
    pub fn status(&self) -> NodeStatus {
        self.handle.shared.status()
    }

    /// The node's health: the local limiter's state, or `degraded` with
    /// cause [`Cluster`](crate::Cause::Cluster) when it cannot confirm its
    /// share with Redis.
    pub fn health(&self) -> NodeHealth {
        self.handle.shared.refresh_health()
    }

    /// Changes of the node's health, as the driver and guard see them
    /// (each change is also logged through `tracing`).
    pub fn changes(&self) -> watch::Receiver<NodeHealth> {
        self.handle.shared.health.subscribe()
    }

    /// Reads every node's share from Redis (one script call, bounded by the
    /// call deadline). When Redis does not answer, returns the last view
    /// that was read with `redis_reachable: false`.
    pub async fn cluster_snapshot(&self) -> ClusterSnapshot {
        let s = &self.handle.shared;
        let mut conn = s.conn.clone();
        match tokio::time::timeout(s.call_timeout, s.keys.snapshot(&mut conn)).await {
            Ok(Ok(snap)) => {
                *lock(&s.last_cluster) = snap.clone();
                snap
            }
            _ => {
                let mut snap = lock(&s.last_cluster).clone();
                snap.redis_reachable = false;
                snap
            }
        }
    }

    /// Publishes the node's figures through the `metrics` facade: the local
    /// limiter's (as [`admit::Health::publish_metrics`]) plus, labelled
    /// `budget` and `node`: gauges `admit_cluster_share`,
    /// `admit_cluster_budget`, `admit_cluster_live_nodes`,
    /// `admit_cluster_fair_share`, `admit_cluster_redis_up`,
    /// `admit_cluster_mode` (0 leased, 1 fallback, 2 lost); counters
    /// `admit_cluster_syncs_total`, `admit_cluster_failures_total`,
    /// `admit_cluster_lost_total`, `admit_cluster_fallbacks_total`; each
    /// with a description.
    ///
    /// Nothing calls it on its own: call it on a timer, or in the handler
    /// that serves a scrape, just before rendering.
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        let h = self.limiter().health();
        h.publish_metrics(&h.snapshot());
        describe_metrics();
        let st = self.status();
        let l = [
            ("budget", st.budget_name.clone()),
            ("node", st.node.clone()),
        ];
        metrics::gauge!("admit_cluster_share", &l).set(st.share as f64);
        metrics::gauge!("admit_cluster_budget", &l).set(st.budget as f64);
        metrics::gauge!("admit_cluster_live_nodes", &l).set(st.live_nodes as f64);
        metrics::gauge!("admit_cluster_fair_share", &l).set(st.fair_share as f64);
        metrics::gauge!("admit_cluster_redis_up", &l).set(if st.redis_reachable {
            1.0
        } else {
            0.0
        });
        let mode = match st.mode {
            Mode::Leased => 0.0,
            Mode::Fallback => 1.0,
            Mode::Lost => 2.0,
        };
        metrics::gauge!("admit_cluster_mode", &l).set(mode);
        metrics::counter!("admit_cluster_syncs_total", &l).absolute(st.syncs_total);
        metrics::counter!("admit_cluster_failures_total", &l).absolute(st.failures_total);
        metrics::counter!("admit_cluster_lost_total", &l).absolute(st.lost_total);
        metrics::counter!("admit_cluster_fallbacks_total", &l).absolute(st.fallbacks_total);
    }

    /// Leaves the cluster: stops the background work, admits nothing new,
    /// and hands the share back to Redis at once (if its epoch is still
    /// current). Permits still held stop being counted cluster-wide, so
    /// call it once the node has drained.
    pub async fn leave(self) -> Result<(), Error> {
        let s = self.handle.shared.clone();
        s.stop();
        let epoch = {
            let mut core = lock(&s.core);
            let epoch = core.epoch();
            core.authority = Authority::Lost;
            s.apply(&core);
            epoch
        };
        let Some(epoch) = epoch else { return Ok(()) };
        let mut conn = s.conn.clone();
        let mut inv = s.leave.key(s.keys.nodes());
        inv.arg(&s.node_id).arg(epoch);
        let call = inv.invoke_async::<i64>(&mut conn);
        match tokio::time::timeout(s.call_timeout, call).await {
            Ok(r) => r.map(drop).map_err(Error::from),
            Err(_) => Err(Error::Timeout(s.call_timeout)),
        }
    }
}

impl Shared {
    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
        if let Some(t) = lock(&self.guard).as_ref() {
            t.unpark();
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Counts demand the share did not cover and wakes the driver (once
    /// per batch of rejections: the rejection path stays one atomic add
    /// when the driver already knows).
    fn press(&self) {
        if self.refused.fetch_add(1, Ordering::Relaxed) == 0 {
            self.wake.notify_one();
        }
    }

    /// Ends the lease now if its deadline passed (admission path, guard).
    #[cold]
    fn expire_now(&self) {
        let mut core = lock(&self.core);
        let before = core.authority;
        if core.expire(now_ms()) {
            self.note_expiry(before, &core);
            self.apply(&core);
        }
    }

    fn note_expiry(&self, before: Authority, core: &Core) {
        match core.authority {
            Authority::Fallback { share, .. } => {
                self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    node = %self.node_id, budget = self.keys.name(), share,
                    "lease ran out with redis unreachable: serving on the fair share of the last view"
                );
            }
            Authority::Lost => tracing::warn!(
                node = %self.node_id, budget = self.keys.name(), ?before,
                "lease ran out without a recent renewal attempt (process paused or runtime wedged): admitting nothing new until redis grants a share"
            ),
            Authority::Leased { .. } => {}
        }
    }

    /// Makes the local limiter and the admission deadline match `core`.
    /// Called with the core lock held, so changes apply in order.
    fn apply(&self, core: &Core) {
        self.gate
            .publish(&self.limiter, core.capacity(), core.deadline_ms());
        self.publish_health(core);
    }

    fn cluster_degraded(core: &Core) -> bool {
        !matches!(core.authority, Authority::Leased { .. }) || core.unreachable()
    }

    fn publish_health(&self, core: &Core) {
        let degraded = Self::cluster_degraded(core);
        // The cheap local state: the full snapshot scans the lease table, so
        // it is read only when asked for (`refresh_health`).
        let l = &self.limiter;
        let local = if l.is_closed() {
            if l.in_use() > 0 {
                admit::HealthState::Draining
            } else {
                admit::HealthState::Closed
            }
        } else if l.waiting() > 0 || l.available() == 0 {
            admit::HealthState::Saturated
        } else {
            admit::HealthState::Healthy
        };
        self.set_health(NodeHealth::combine(local, degraded));
    }

    fn refresh_health(&self) -> NodeHealth {
        let degraded = Self::cluster_degraded(&lock(&self.core));
        let h = NodeHealth::combine(self.limiter.health().state(), degraded);
        self.set_health(h);
        h
    }

    fn set_health(&self, to: NodeHealth) {
        let from = *self.health.borrow();
        if from == to {
            return;
        }
        self.health.send_replace(to);
        let (node, budget) = (&self.node_id, self.keys.name());
        match to {
            NodeHealth::Degraded(_) => {
                tracing::warn!(%node, budget, %from, %to, "cluster limiter degraded")
            }
            _ => tracing::info!(%node, budget, %from, %to, "cluster limiter state changed"),
        }
    }

    fn status(&self) -> NodeStatus {
        let core = lock(&self.core).clone();
        let now = now_ms();
        let view = core.view.unwrap_or_default();
        NodeStatus {
            node: self.node_id.clone(),
            budget_name: self.keys.name().to_owned(),
            mode: match core.authority {
                Authority::Leased { .. } => Mode::Leased,
                Authority::Fallback { .. } => Mode::Fallback,
                Authority::Lost => Mode::Lost,
            },
            share: core.capacity(),
            in_use: self.limiter.in_use(),
            waiting: self.limiter.waiting(),
            epoch: core.epoch(),
            lease_left_ms: match core.authority {
                Authority::Leased { deadline_ms, .. } => Some(deadline_ms.saturating_sub(now)),
                _ => None,
            },
            redis_reachable: core.last_attempt_ms.is_some() && !core.unreachable(),
            last_ok_ms_ago: core.last_ok_ms.map(|t| now.saturating_sub(t)),
            budget: view.budget,
            live_nodes: view.live,
            fair_share: view.fair,
            hand_back: view.hand_back,
            syncs_total: self.stats.syncs.load(Ordering::Relaxed),
            failures_total: self.stats.failures.load(Ordering::Relaxed),
            lost_total: self.stats.lost.load(Ordering::Relaxed),
            fallbacks_total: self.stats.fallbacks.load(Ordering::Relaxed),
            health: *self.health.borrow(),
        }
    }

    /// Expires the lease if due and decides on the next call.
    fn plan(&self) -> Option<Plan> {
        let mut core = lock(&self.core);
        let now = now_ms();
        let before = core.authority;
        if core.expire(now) {
            self.note_expiry(before, &core);
            self.apply(&core);
        }
        let refused = self.refused.swap(0, Ordering::Relaxed);
        core.plan(now, self.limiter.in_use(), self.limiter.waiting(), refused)
    }

    /// Makes one call to Redis, bounded by the call deadline, and applies
    /// its outcome.
    async fn call(&self, plan: Plan) {
        let (want, sent) = {
            let mut core = lock(&self.core);
            let mut want = plan.want;
            if want < core.capacity() {
                // Shrink: lower the local capacity first; what is still in
                // use stays covered by the share we keep.
                let _ = self.limiter.set_capacity(want);
                want = want.max(self.limiter.in_use());
            }
            let sent = now_ms();
            core.sent(sent);
            (want, sent)
        };
        let mut conn = self.conn.clone();
        let ttl_ms = lock(&self.core).tuning.ttl_ms;
        let mut inv = self.sync.key(self.keys.nodes());
        inv.key(self.keys.meta())
            .arg(&self.node_id)
            .arg(plan.epoch)
            .arg(want)
            .arg(self.limiter.in_use())
            .arg(ttl_ms)
            .arg(self.default_budget);
        let call = inv.invoke_async::<Vec<i64>>(&mut conn);
        let outcome = match tokio::time::timeout(self.call_timeout, call).await {
            Ok(Ok(v)) => SyncReply::parse(&v),
            Ok(Err(e)) => Err(Error::Redis(e)),
            Err(_) => Err(Error::Timeout(self.call_timeout)),
        };
        let mut core = lock(&self.core);
        match outcome {
            Ok(reply) => {
                self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                let was_unreachable = core.unreachable();
                if !reply.ok {
                    self.stats.lost.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        node = %self.node_id, budget = self.keys.name(), epoch = plan.epoch,
                        "lease no longer held in redis (expired or redis restarted): joining again"
                    );
                } else if was_unreachable {
                    tracing::info!(node = %self.node_id, budget = self.keys.name(), share = reply.share, epoch = reply.epoch, "redis reachable again");
                }
                core.on_reply(sent, want, &reply);
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                if !core.unreachable() {
                    tracing::warn!(node = %self.node_id, budget = self.keys.name(), error = %e, "redis call failed");
                }
                core.on_failure(sent);
            }
        }
        let before = core.authority;
        if core.expire(now_ms()) {
            self.note_expiry(before, &core);
        }
        self.apply(&core);
    }
}

/// The driver: renews, grows and shrinks the share.
async fn drive(shared: Arc<Shared>) {
    // Demand is noticed by polling the local counts (adapters admit on the
    // limiter directly) and at once when `try_acquire` is refused.
    let poll = Duration::from_millis(10);
    while !shared.stopped() {
        if let Some(plan) = shared.plan() {
            shared.call(plan).await;
            continue;
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// The guard: ends the lease at its deadline even if the driver's runtime
/// is wedged.
fn guard(shared: Arc<Shared>) {
    while !shared.stopped() {
        let now = now_ms();
        let deadline = shared.gate.deadline_ms();
        if now >= deadline {
            shared.expire_now();
            continue;
        }
        // Wake at the deadline, and at least every 50 ms to notice a stop.
        let nap = deadline.saturating_sub(now).clamp(1, 50);
        std::thread::park_timeout(Duration::from_millis(nap));
    }
}

/// Describes the cluster metrics to the recorder in effect (descriptions are
/// kept by name, so describing again changes nothing).
#[cfg(feature = "metrics")]
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(
        "admit_cluster_share",
        Unit::Count,
        "Permits this node may admit: its confirmed share of the cluster budget."
    );
    describe_gauge!(
        "admit_cluster_budget",
        Unit::Count,
        "The cluster-wide budget, as of the node's last Redis reply."
    );
    describe_gauge!(
        "admit_cluster_live_nodes",
        Unit::Count,
        "Nodes alive in the cluster, as of the node's last Redis reply."
    );
    describe_gauge!(
        "admit_cluster_fair_share",
        Unit::Count,
        "The budget over the live nodes, as of the node's last Redis reply."
    );
    describe_gauge!(
        "admit_cluster_redis_up",
        "1 if the node's last Redis call succeeded, else 0."
    );
    describe_gauge!(
        "admit_cluster_mode",
        "How the node admits: 0 on its leased share, 1 on a fallback share (cut off from Redis past its lease), 2 lost (admits nothing new)."
    );
    describe_counter!(
        "admit_cluster_syncs_total",
        Unit::Count,
        "Successful Redis calls."
    );
    describe_counter!(
        "admit_cluster_failures_total",
        Unit::Count,
        "Failed or timed-out Redis calls."
    );
    describe_counter!(
        "admit_cluster_lost_total",
        Unit::Count,
        "Times the node learned its lease was gone (fenced out)."
    );
    describe_counter!(
        "admit_cluster_fallbacks_total",
        Unit::Count,
        "Times the lease ran out with Redis unreachable and the node took a fallback share."
    );
}
