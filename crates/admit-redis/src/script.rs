//! The share protocol's Redis side: three Lua scripts, run atomically by
//! Redis (EVALSHA, falling back to EVAL once after a restart).
//!
//! State for one budget lives in two hashes that share a hash tag, so the
//! scripts also run on a Redis Cluster shard:
//!
//! * `<prefix>{<budget>}:nodes` — one field per node, the value
//!   `"share epoch expires_ms in_use want seen_ms"`;
//! * `<prefix>{<budget>}:meta` — `budget` (the cluster-wide cap) and
//!   `epoch` (the fencing counter, incremented for every new grant).
//!
//! Every script first reads Redis's own clock (`TIME`) and ignores or
//! deletes entries whose lease has expired, so a crashed node's share comes
//! back with no cleanup job: the next call from any node frees it.

use crate::error::Error;
use redis::Value;

/// Join, renew, grow or shrink one node's share.
///
/// KEYS: nodes, meta. ARGV: node, epoch (0 = join), want, in_use, ttl_ms,
/// default budget (written only if the budget key is absent).
///
/// Returns `{ok, epoch, share, budget, live, fair, hand_back, now_ms}`, where
/// `ok` is 0 when the caller's epoch is no longer the one Redis holds (its
/// lease expired and was purged, or Redis lost its data): the caller owns
/// nothing and must join again.
pub(crate) const SYNC: &str = include_str!("lua/sync.lua");

/// Give a node's share back at once (graceful shutdown).
///
/// KEYS: nodes. ARGV: node, epoch. Returns 1 if the entry was ours and is
/// gone, 0 if it belonged to another epoch (then nothing is touched).
pub(crate) const LEAVE: &str = include_str!("lua/leave.lua");

/// Read every live node at one moment, without writing.
///
/// KEYS: nodes, meta. Returns `{now_ms, budget, node1, value1, ...}`, only
/// unexpired entries; budget is -1 when unset.
pub(crate) const SNAPSHOT: &str = include_str!("lua/snapshot.lua");

/// Redis's answer to [`SYNC`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SyncReply {
    /// False when the caller's epoch is stale: it owns nothing any more.
    pub(crate) ok: bool,
    pub(crate) epoch: u64,
    pub(crate) share: u32,
    pub(crate) budget: u32,
    pub(crate) live: u32,
    pub(crate) fair: u32,
    /// Nodes above their fair share should give idle permits back.
    pub(crate) hand_back: bool,
    pub(crate) now_ms: u64,
}

impl SyncReply {
    pub(crate) fn parse(v: &[i64]) -> Result<SyncReply, Error> {
        let [ok, epoch, share, budget, live, fair, hand_back, now_ms] = v else {
            return Err(Error::Protocol(format!(
                "sync returned {} fields, expected 8",
                v.len()
            )));
        };
        let u32_of =
            |x: i64| u32::try_from(x).map_err(|_| Error::Protocol(format!("{x} out of range")));
        Ok(SyncReply {
            ok: *ok == 1,
            epoch: *epoch as u64,
            share: u32_of(*share)?,
            budget: u32_of(*budget)?,
            live: u32_of(*live)?,
            fair: u32_of(*fair)?,
            hand_back: *hand_back == 1,
            now_ms: *now_ms as u64,
        })
    }
}

/// One node's entry as stored in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) share: u32,
    pub(crate) epoch: u64,
    pub(crate) expires_ms: u64,
    pub(crate) in_use: u32,
    pub(crate) want: u32,
    pub(crate) seen_ms: u64,
}

impl Entry {
    pub(crate) fn parse(s: &str) -> Result<Entry, Error> {
        let bad = || Error::Protocol(format!("malformed node entry {s:?}"));
        let mut it = s.split_ascii_whitespace();
        let mut next =
            || -> Result<u64, Error> { it.next().and_then(|x| x.parse().ok()).ok_or_else(bad) };
        let share = next()?;
        let epoch = next()?;
        let expires_ms = next()?;
        let in_use = next()?;
        let want = next()?;
        let seen_ms = next()?;
        let small = |x: u64| u32::try_from(x).map_err(|_| bad());
        Ok(Entry {
            share: small(share)?,
            epoch,
            expires_ms,
            in_use: small(in_use)?,
            want: small(want)?,
            seen_ms,
        })
    }
}

/// [`SNAPSHOT`]'s reply.
pub(crate) struct RawSnapshot {
    pub(crate) now_ms: u64,
    pub(crate) budget: Option<u32>,
    /// `(node, entry)`, sorted by node.
    pub(crate) nodes: Vec<(String, Entry)>,
}

/// Parses [`SNAPSHOT`]'s reply.
pub(crate) fn parse_snapshot(v: Value) -> Result<RawSnapshot, Error> {
    let items: Vec<Value> =
        redis::from_redis_value(v).map_err(|e| Error::Protocol(e.to_string()))?;
    let mut it = items.into_iter();
    let int = |v: Option<Value>| -> Result<i64, Error> {
        let v = v.ok_or_else(|| Error::Protocol("short snapshot".into()))?;
        redis::from_redis_value(v).map_err(|e| Error::Protocol(e.to_string()))
    };
    let now = int(it.next())? as u64;
    let budget = int(it.next())?;
    let budget = u32::try_from(budget).ok();
    let mut nodes = Vec::new();
    while let Some(name) = it.next() {
        let name: String =
            redis::from_redis_value(name).map_err(|e| Error::Protocol(e.to_string()))?;
        let value: String = redis::from_redis_value(
            it.next()
                .ok_or_else(|| Error::Protocol("odd snapshot".into()))?,
        )
        .map_err(|e| Error::Protocol(e.to_string()))?;
        nodes.push((name, Entry::parse(&value)?));
    }
    nodes.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(RawSnapshot {
        now_ms: now,
        budget,
        nodes,
    })
}
