//! What a node and the cluster look like from outside: health, the node's
//! own status, and the cluster snapshot read from Redis.

use crate::error::Error;
use crate::script::{self, Entry};

/// Why a node is degraded.
///
/// The core's [`admit::Cause`] covers the local limiter; a node adds one
/// cause of its own, [`Cause::Cluster`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The node cannot confirm its share with Redis (unreachable, timing
    /// out, or its lease was lost and not yet granted again). It serves
    /// within its last confirmed share, then its fair share, never more.
    Cluster,
    /// The local limiter itself is degraded.
    Local(admit::Cause),
}

impl Cause {
    /// `"cluster"`, or the local cause in snake case (`"stalled"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Cluster => "cluster",
            Cause::Local(admit::Cause::Stalled) => "stalled",
            Cause::Local(admit::Cause::Leaking) => "leaking",
            Cause::Local(admit::Cause::WatchdogSilent) => "watchdog_silent",
        }
    }
}

/// A node's health: the local limiter's state, unless the cluster side is
/// what is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeHealth {
    /// Admitting, with room to spare in its share.
    Healthy,
    /// At its share: rejecting or queueing, but permits are moving.
    Saturated,
    /// Something is wrong; see the cause.
    Degraded(Cause),
    /// Closed, with permits still held.
    Draining,
    /// Closed, with no permit held.
    Closed,
}

impl NodeHealth {
    /// Combines the local limiter's state with the cluster side. Closing
    /// and local faults win (they say more about this process); otherwise a
    /// node that cannot confirm its share is degraded with cause `cluster`.
    pub fn combine(local: admit::HealthState, cluster_degraded: bool) -> NodeHealth {
        use admit::HealthState as L;
        match local {
            L::Draining => NodeHealth::Draining,
            L::Closed => NodeHealth::Closed,
            L::Degraded(c) => NodeHealth::Degraded(Cause::Local(c)),
            _ if cluster_degraded => NodeHealth::Degraded(Cause::Cluster),
            L::Saturated => NodeHealth::Saturated,
            L::Healthy => NodeHealth::Healthy,
        }
    }

    /// `"healthy"`, `"saturated"`, `"degraded"`, `"draining"` or `"closed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeHealth::Healthy => "healthy",
            NodeHealth::Saturated => "saturated",
            NodeHealth::Degraded(_) => "degraded",
            NodeHealth::Draining => "draining",
            NodeHealth::Closed => "closed",
        }
    }

    /// The cause when degraded.
    pub fn cause(self) -> Option<Cause> {
        match self {
            NodeHealth::Degraded(c) => Some(c),
            _ => None,
        }
    }
}

impl std::fmt::Display for NodeHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeHealth::Degraded(c) => write!(f, "degraded ({})", c.as_str()),
            s => f.write_str(s.as_str()),
        }
    }
}

/// On what the node admits right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// A share Redis confirmed, within its lease.
    Leased,
    /// Cut off from Redis past the lease: the smaller of the last share and
    /// the fair share (budget / live nodes at the last view).
    Fallback,
    /// No confirmed share: nothing new is admitted until Redis grants one.
    Lost,
}

impl Mode {
    /// `"leased"`, `"fallback"` or `"lost"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Leased => "leased",
            Mode::Fallback => "fallback",
            Mode::Lost => "lost",
        }
    }
}

/// One node's own view of its share, read without a Redis call.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    /// This node's id in Redis.
    pub node: String,
    /// The budget's name.
    pub budget_name: String,
    /// Leased, fallback or lost.
    pub mode: Mode,
    /// The share it admits on (the local limiter's capacity).
    pub share: u32,
    /// Permits held on this node.
    pub in_use: u32,
    /// Callers waiting on this node.
    pub waiting: u32,
    /// The fencing epoch of its grant, if it holds one.
    pub epoch: Option<u64>,
    /// Milliseconds left on its lease by its own clock (`None` unless leased).
    pub lease_left_ms: Option<u64>,
    /// Whether its last Redis call succeeded.
    pub redis_reachable: bool,
    /// Milliseconds since its last successful Redis call was sent.
    pub last_ok_ms_ago: Option<u64>,
    /// The cluster budget at the last view (0 before the first reply).
    pub budget: u32,
    /// Live nodes at the last view.
    pub live_nodes: u32,
    /// `budget / live_nodes` at the last view.
    pub fair_share: u32,
    /// Redis asked nodes above their fair share to hand permits back.
    pub hand_back: bool,
    /// Successful Redis calls.
    pub syncs_total: u64,
    /// Failed or timed-out Redis calls.
    pub failures_total: u64,
    /// Times the node learned its lease was gone (fenced out).
    pub lost_total: u64,
    /// Times the lease ran out with Redis unreachable (fallback taken).
    pub fallbacks_total: u64,
    /// The node's combined health.
    pub health: NodeHealth,
}

/// One node as Redis records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The node's id.
    pub node: String,
    /// Its confirmed share.
    pub share: u32,
    /// Permits it had in use at its last call.
    pub in_use: u32,
    /// The share it last asked for.
    pub want: u32,
    /// Its grant's fencing epoch.
    pub epoch: u64,
    /// Milliseconds since its last call, by Redis's clock.
    pub last_seen_ms_ago: u64,
    /// Milliseconds until its lease expires, by Redis's clock.
    pub expires_in_ms: u64,
}

/// The whole cluster at one moment, as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterSnapshot {
    /// The cluster budget (`None` before any node joined).
    pub budget: Option<u32>,
    /// Whether Redis answered this read. When false, `nodes` is the last
    /// view that was read successfully (possibly empty).
    pub redis_reachable: bool,
    /// Every live node (leases not yet expired), by id.
    pub nodes: Vec<NodeView>,
}

impl ClusterSnapshot {
    /// Sum of the confirmed shares: never above the budget.
    pub fn shares_total(&self) -> u32 {
        self.nodes.iter().map(|n| n.share).sum()
    }

    /// Sum of the permits nodes reported in use at their last calls.
    pub fn in_use_total(&self) -> u32 {
        self.nodes.iter().map(|n| n.in_use).sum()
    }
}

/// The Redis keys of one budget.
///
/// ```
/// let keys = admit_redis::BudgetKeys::new("admit:", "chat");
/// assert_eq!(keys.nodes(), "admit:{chat}:nodes");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetKeys {
    name: String,
    nodes: String,
    meta: String,
}

impl BudgetKeys {
    /// The keys for the budget `name` under `prefix`. The name is the hash
    /// tag, so both keys live on one shard of a Redis Cluster.
    pub fn new(prefix: &str, name: &str) -> BudgetKeys {
        BudgetKeys {
            name: name.to_owned(),
            nodes: format!("{prefix}{{{name}}}:nodes"),
            meta: format!("{prefix}{{{name}}}:meta"),
        }
    }

    /// The budget's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hash of node entries.
    pub fn nodes(&self) -> &str {
        &self.nodes
    }

    /// The hash holding the budget and the epoch counter.
    pub fn meta(&self) -> &str {
        &self.meta
    }

    /// Reads the cluster from Redis at one moment (one script call, no
    /// writes). Needs no node: operators and tests use it too.
    pub async fn snapshot<C>(&self, con: &mut C) -> Result<ClusterSnapshot, Error>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        let reply: redis::Value = redis::Script::new(script::SNAPSHOT)
            .key(&self.nodes)
            .key(&self.meta)
            .invoke_async(con)
            .await?;
        let script::RawSnapshot {
            now_ms: now,
            budget,
            nodes: entries,
        } = script::parse_snapshot(reply)?;
        Ok(ClusterSnapshot {
            budget,
            redis_reachable: true,
            nodes: entries
                .into_iter()
                .map(|(node, e): (String, Entry)| NodeView {
                    node,
                    share: e.share,
                    in_use: e.in_use,
                    want: e.want,
                    epoch: e.epoch,
                    last_seen_ms_ago: now.saturating_sub(e.seen_ms),
                    expires_in_ms: e.expires_ms.saturating_sub(now),
                })
                .collect(),
        })
    }

    /// Sets the cluster budget. Nodes pick it up at their next call; when it
    /// shrinks below the shares held, nodes above their fair share hand
    /// permits back as they become idle.
    pub async fn set_budget<C>(&self, con: &mut C, budget: u32) -> Result<(), Error>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        redis::cmd("HSET")
            .arg(&self.meta)
            .arg("budget")
            .arg(budget)
            .query_async::<()>(con)
            .await?;
        Ok(())
    }
}
