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
pub(crate) const SYNC: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node = ARGV[1]
local epoch = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local in_use = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local budget = tonumber(redis.call('HGET', KEYS[2], 'budget'))
if not budget then
  budget = tonumber(ARGV[6])
  redis.call('HSET', KEYS[2], 'budget', ARGV[6])
end
local function parse(v)
  local r = {}
  for x in string.gmatch(v, '%S+') do r[#r + 1] = tonumber(x) end
  return r
end
local all = redis.call('HGETALL', KEYS[1])
local others = {}
local others_sum = 0
local mine = nil
for i = 1, #all, 2 do
  local e = parse(all[i + 1])
  if e[3] <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif all[i] == node then
    mine = e
  else
    others[#others + 1] = e
    others_sum = others_sum + e[1]
  end
end
local live = #others + 1
local fair = math.floor(budget / live)
local function starving(e) return e[5] > e[1] and e[1] < fair end
local cur = 0
if epoch == 0 then
  -- A fresh counter starts from the server clock, so epochs keep rising
  -- even after Redis lost its data: a grant from before the loss can
  -- never be mistaken for a later one.
  if redis.call('HEXISTS', KEYS[2], 'epoch') == 0 then
    redis.call('HSET', KEYS[2], 'epoch', string.format('%d', now * 1000))
  end
  epoch = redis.call('HINCRBY', KEYS[2], 'epoch', 1)
elseif mine == nil or mine[2] ~= epoch then
  return {0, epoch, 0, budget, live, fair, 0, now}
else
  cur = mine[1]
end
if want > budget then want = budget end
local share = want
if want > cur then
  local room = budget - others_sum
  local any_starving = false
  for _, e in ipairs(others) do
    if starving(e) then any_starving = true end
  end
  -- While another node is starved below its fair share, nobody grows
  -- past fair: what is handed back goes to the starved first.
  if any_starving and room > fair then room = fair end
  if share > room then share = room end
  if share < cur then share = cur end
end
local hand_back = 0
if others_sum + share > budget then hand_back = 1 end
for _, e in ipairs(others) do
  if starving(e) then hand_back = 1 end
end
if want > share and share < fair then hand_back = 1 end
redis.call('HSET', KEYS[1], node, string.format('%d %d %d %d %d %d',
  share, epoch, now + ttl, in_use, want, now))
return {1, epoch, share, budget, live, fair, hand_back, now}
"#;

/// Give a node's share back at once (graceful shutdown).
///
/// KEYS: nodes. ARGV: node, epoch. Returns 1 if the entry was ours and is
/// gone, 0 if it belonged to another epoch (then nothing is touched).
pub(crate) const LEAVE: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local e = {}
for x in string.gmatch(v, '%S+') do e[#e + 1] = tonumber(x) end
if e[2] ~= tonumber(ARGV[2]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"#;

/// Read every live node at one moment, without writing.
///
/// KEYS: nodes, meta. Returns `{now_ms, budget, node1, value1, ...}`, only
/// unexpired entries; budget is -1 when unset.
pub(crate) const SNAPSHOT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local budget = tonumber(redis.call('HGET', KEYS[2], 'budget')) or -1
local out = {now, budget}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local exp = tonumber(string.match(all[i + 1], '^%S+ %S+ (%S+)'))
  if exp > now then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
end
return out
"#;

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

/// Parses [`SNAPSHOT`]'s reply: `(now_ms, budget, [(node, entry)])`.
pub(crate) fn parse_snapshot(v: Value) -> Result<(u64, Option<u32>, Vec<(String, Entry)>), Error> {
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
    Ok((now, budget, nodes))
}
