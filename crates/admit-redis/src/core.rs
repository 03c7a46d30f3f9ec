//! The node's side of the share protocol, as a plain state machine.
//!
//! Everything here is a function of the times and counts passed in: no
//! clock is read and no I/O is done, so the property tests can drive it
//! with virtual time against a model of Redis. The driver (`node.rs`)
//! feeds it real time, the local limiter's counts and Redis's replies, and
//! applies [`Core::capacity`] to the local limiter.

use crate::clock::GRANULARITY_MS;
use crate::script::SyncReply;

/// Timing and sizing, in milliseconds and permits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Tuning {
    pub(crate) heartbeat_ms: u64,
    pub(crate) ttl_ms: u64,
    pub(crate) call_timeout_ms: u64,
    pub(crate) retry_ms: u64,
    /// Largest relative error between the node's clock rate and Redis's.
    pub(crate) max_drift: f64,
    /// Smallest step a share grows or shrinks by, and the share an idle
    /// node keeps so its first connections need no round trip.
    pub(crate) min_batch: u32,
    /// The local limiter's max capacity: no share above it is asked for.
    pub(crate) max_share: u32,
}

impl Tuning {
    /// How long after sending a call whose reply confirmed a lease the node
    /// may still rely on it: the TTL less the clock-rate margin and the
    /// coarse clock's step. Redis starts its TTL when it runs the script,
    /// which is after the send, so this ends before Redis's expiry.
    pub(crate) fn local_lease_ms(&self) -> u64 {
        let margin = (self.ttl_ms as f64 * self.max_drift).ceil() as u64 + GRANULARITY_MS;
        self.ttl_ms.saturating_sub(margin)
    }

    /// The share that serves `demand` with a batch of headroom.
    pub(crate) fn ideal(&self, demand: u32) -> u32 {
        demand
            .saturating_add(self.min_batch.max(demand / 2))
            .min(self.max_share)
    }
}

/// What the node may admit on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Authority {
    /// Nothing confirmed (never joined, or Redis said the lease is gone, or
    /// the lease ran out while the node was not even trying to renew it):
    /// admit nothing new.
    Lost,
    /// A share Redis confirmed, valid until `deadline_ms` on the node's clock.
    Leased {
        epoch: u64,
        share: u32,
        deadline_ms: u64,
    },
    /// The lease ran out while Redis could not be reached: keep serving on
    /// the smaller of the last share and the fair share of the last view.
    Fallback { epoch: u64, share: u32 },
}

/// The cluster as the last reply described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct View {
    pub(crate) budget: u32,
    pub(crate) live: u32,
    pub(crate) fair: u32,
    pub(crate) hand_back: bool,
}

/// A call the driver should make now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// 0 to join.
    pub(crate) epoch: u64,
    pub(crate) want: u32,
}

/// The node's protocol state.
#[derive(Debug, Clone)]
pub(crate) struct Core {
    pub(crate) tuning: Tuning,
    pub(crate) authority: Authority,
    pub(crate) view: Option<View>,
    /// Send time of the last call that succeeded.
    pub(crate) last_ok_ms: Option<u64>,
    /// Send time of the last call that failed or timed out.
    pub(crate) last_fail_ms: Option<u64>,
    /// Send time of the last call.
    pub(crate) last_attempt_ms: Option<u64>,
    /// Since when the share has been far above what demand needs.
    idle_since_ms: Option<u64>,
    /// No growth is asked for again before this time after Redis granted
    /// less than was asked (the budget is taken).
    grow_backoff_until_ms: u64,
    /// After an outage, the share stays at most `hold_cap` (or what is in
    /// use) until this time: see [`Core::on_reply`].
    hold_until_ms: u64,
    hold_cap: u32,
}

impl Core {
    pub(crate) fn new(tuning: Tuning) -> Core {
        Core {
            tuning,
            authority: Authority::Lost,
            view: None,
            last_ok_ms: None,
            last_fail_ms: None,
            last_attempt_ms: None,
            idle_since_ms: None,
            grow_backoff_until_ms: 0,
            hold_until_ms: 0,
            hold_cap: 0,
        }
    }

    /// The local limiter's capacity: never above a share Redis confirmed.
    pub(crate) fn capacity(&self) -> u32 {
        match self.authority {
            Authority::Lost => 0,
            Authority::Leased { share, .. } | Authority::Fallback { share, .. } => share,
        }
        .min(self.tuning.max_share)
    }

    /// When the authority next changes by itself (`u64::MAX`: never).
    pub(crate) fn deadline_ms(&self) -> u64 {
        match self.authority {
            Authority::Leased { deadline_ms, .. } => deadline_ms,
            _ => u64::MAX,
        }
    }

    /// The epoch this node holds, if any.
    pub(crate) fn epoch(&self) -> Option<u64> {
        match self.authority {
            Authority::Lost => None,
            Authority::Leased { epoch, .. } | Authority::Fallback { epoch, .. } => Some(epoch),
        }
    }

    /// Whether the node has been trying and failing to reach Redis lately:
    /// the last call failed and was sent recently enough that the node was
    /// running all along. A node that was paused (SIGSTOP, a frozen VM) or
    /// whose runtime was wedged has no recent attempt.
    pub(crate) fn cut_off(&self, now_ms: u64) -> bool {
        let Some(fail) = self.last_fail_ms else {
            return false;
        };
        let recent = 2 * self.tuning.heartbeat_ms + self.tuning.call_timeout_ms;
        self.last_ok_ms.is_none_or(|ok| fail > ok) && now_ms.saturating_sub(fail) <= recent
    }

    /// Whether the last call failed (Redis unreachable, as far as we know).
    pub(crate) fn unreachable(&self) -> bool {
        match (self.last_fail_ms, self.last_ok_ms) {
            (Some(f), Some(o)) => f > o,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// Ends a lease whose deadline has passed. A node cut off from Redis
    /// falls back to its fair share of the last view (never more than it
    /// had); any other node drops to nothing until Redis confirms a share
    /// again. Returns whether anything changed.
    pub(crate) fn expire(&mut self, now_ms: u64) -> bool {
        let Authority::Leased {
            epoch,
            share,
            deadline_ms,
        } = self.authority
        else {
            return false;
        };
        if now_ms < deadline_ms {
            return false;
        }
        self.authority = if self.cut_off(now_ms) {
            let fair = self.view.map_or(0, |v| v.fair);
            Authority::Fallback {
                epoch,
                share: share.min(fair),
            }
        } else {
            Authority::Lost
        };
        true
    }

    /// Decides whether to call Redis now, and with what.
    ///
    /// `in_use` and `waiting` are the local limiter's counts; `refused` is
    /// how many callers were turned away since the last plan (each is
    /// demand the share did not cover).
    pub(crate) fn plan(
        &mut self,
        now_ms: u64,
        in_use: u32,
        waiting: u32,
        refused: u32,
    ) -> Option<Plan> {
        let t = self.tuning;
        let interval = if self.unreachable() {
            t.retry_ms
        } else {
            t.heartbeat_ms
        };
        let due = self
            .last_attempt_ms
            .is_none_or(|a| now_ms.saturating_sub(a) >= interval);
        let demand = in_use.saturating_add(waiting).saturating_add(refused);
        let mut ideal = t.ideal(demand).max(in_use);
        if now_ms < self.hold_until_ms {
            ideal = ideal.min(self.hold_cap.max(in_use));
        }
        // While Redis is unreachable, only the retry interval paces calls:
        // growth or hand-back cannot happen anyway.
        if self.unreachable() && !due {
            return None;
        }

        let (epoch, share) = match self.authority {
            Authority::Lost => {
                // Join (again) as soon as the retry interval allows.
                return due.then_some(Plan {
                    epoch: 0,
                    want: ideal,
                });
            }
            Authority::Leased { epoch, share, .. } | Authority::Fallback { epoch, share } => {
                (epoch, share)
            }
        };

        // Hand idle permits back when Redis says someone is starved or the
        // budget is overcommitted, down to the fair share (never below what
        // is in use).
        if let Some(v) = self.view {
            if v.hand_back && share > v.fair {
                let want = v.fair.max(in_use);
                if want < share {
                    return Some(Plan { epoch, want });
                }
            }
        }

        // Grow when demand nears the share: ask for a batch of headroom.
        let spare = share.saturating_sub(in_use);
        let low = (t.min_batch / 2).max(1).max(share / 8);
        if (spare < low || waiting > 0 || refused > 0)
            && ideal > share
            && share < t.max_share
            && now_ms >= self.grow_backoff_until_ms
        {
            self.idle_since_ms = None;
            return Some(Plan { epoch, want: ideal });
        }

        // Shrink when the share has been more than twice what demand needs
        // for two heartbeats.
        if share > ideal.saturating_mul(2) && share - ideal >= t.min_batch {
            let since = *self.idle_since_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) >= 2 * t.heartbeat_ms {
                self.idle_since_ms = None;
                return Some(Plan { epoch, want: ideal });
            }
        } else {
            self.idle_since_ms = None;
        }

        due.then_some(Plan { epoch, want: share })
    }

    /// Records that a call was sent at `now_ms`.
    pub(crate) fn sent(&mut self, now_ms: u64) {
        self.last_attempt_ms = Some(now_ms);
    }

    /// Applies Redis's reply to a call sent at `sent_ms` that asked for `want`.
    ///
    /// The first reply after an outage starts a hold of one TTL during which
    /// the node asks for no more than it admitted on while cut off (or what
    /// it has in use). Redis forgot, or expired, every node's entry while it
    /// was away, but the nodes kept serving on their fallback shares; until
    /// each has had time to come back and register what it holds, growing
    /// into the "free" budget could count those permits twice.
    ///
    /// A blip (a call or two failing, no renewal missed) starts no hold: no
    /// lease can have run out over it.
    pub(crate) fn on_reply(&mut self, sent_ms: u64, want: u32, reply: &SyncReply) {
        let t = self.tuning;
        let away = self.last_ok_ms.map_or(0, |ok| sent_ms.saturating_sub(ok));
        let missed_renewal = away > t.heartbeat_ms + t.call_timeout_ms + t.retry_ms;
        if self.unreachable()
            && (missed_renewal || !reply.ok || !matches!(self.authority, Authority::Leased { .. }))
        {
            self.hold_cap = self.capacity();
            self.hold_until_ms = sent_ms + t.ttl_ms;
        }
        self.last_ok_ms = Some(sent_ms);
        self.view = Some(View {
            budget: reply.budget,
            live: reply.live,
            fair: reply.fair,
            hand_back: reply.hand_back,
        });
        if !reply.ok {
            // Fenced out: whatever share this node had is gone. Join again
            // at once rather than after the retry interval.
            self.authority = Authority::Lost;
            self.last_attempt_ms = None;
            return;
        }
        if reply.share < want {
            // The budget is taken. Below its fair share the node is starved
            // and asks again soon (others hand back at their heartbeats);
            // above it, growth waits for the next heartbeat.
            let wait = if reply.share < reply.fair {
                self.tuning.retry_ms.min(100)
            } else {
                self.tuning.heartbeat_ms
            };
            self.grow_backoff_until_ms = sent_ms + wait;
        }
        self.authority = Authority::Leased {
            epoch: reply.epoch,
            share: reply.share,
            deadline_ms: sent_ms + self.tuning.local_lease_ms(),
        };
    }

    /// Records that a call sent at `sent_ms` failed or timed out.
    pub(crate) fn on_failure(&mut self, sent_ms: u64) {
        self.last_fail_ms = Some(sent_ms);
    }
}

#[cfg(test)]
mod tests {
    //! The node's state machine against a model of Redis, in virtual time:
    //! nodes with changing demand, Redis going away and coming back, nodes
    //! paused past their lease. (The scripts themselves are checked against
    //! the same rules on a real Redis in `tests/model.rs`.)

    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const BUDGET: u32 = 24;

    fn tuning() -> Tuning {
        Tuning {
            heartbeat_ms: 1_000,
            ttl_ms: 2_500,
            call_timeout_ms: 250,
            retry_ms: 250,
            max_drift: 0.01,
            min_batch: 4,
            max_share: BUDGET,
        }
    }

    /// Redis as the scripts define it: entries with expiry, epochs, shares.
    #[derive(Default)]
    struct Store {
        /// node -> (share, epoch, expires, want)
        entries: BTreeMap<usize, (u32, u64, u64, u32)>,
        epoch: u64,
    }

    impl Store {
        fn sync(&mut self, now: u64, node: usize, epoch: u64, want: u32, ttl: u64) -> SyncReply {
            self.entries.retain(|_, e| e.2 > now);
            let others: Vec<_> = self
                .entries
                .iter()
                .filter(|(n, _)| **n != node)
                .map(|(_, e)| *e)
                .collect();
            let others_sum: u32 = others.iter().map(|e| e.0).sum();
            let live = others.len() as u32 + 1;
            let fair = BUDGET / live;
            let starving = |e: &(u32, u64, u64, u32)| e.3 > e.0 && e.0 < fair;
            let lost = SyncReply {
                ok: false,
                epoch,
                share: 0,
                budget: BUDGET,
                live,
                fair,
                hand_back: false,
                now_ms: now,
            };
            let (epoch, cur) = if epoch == 0 {
                self.epoch += 1;
                (self.epoch, 0)
            } else {
                match self.entries.get(&node) {
                    Some(e) if e.1 == epoch => (epoch, e.0),
                    _ => return lost,
                }
            };
            let mut share = want;
            if want > cur {
                let mut room = BUDGET.saturating_sub(others_sum);
                if others.iter().any(starving) {
                    room = room.min(fair);
                }
                share = share.min(room).max(cur);
            }
            let hand_back = others_sum + share > BUDGET
                || others.iter().any(starving)
                || (want > share && share < fair);
            self.entries.insert(node, (share, epoch, now + ttl, want));
            SyncReply {
                ok: true,
                epoch,
                share,
                budget: BUDGET,
                live,
                fair,
                hand_back,
                now_ms: now,
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Ev {
        /// Time passes; node `n`'s demand becomes `d`.
        Step {
            dt: u64,
            n: usize,
            d: u32,
        },
        RedisDown,
        RedisUp,
        /// Node `n` stops running for `ms`.
        Pause {
            n: usize,
            ms: u64,
        },
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            20 => (1u64..300, 0usize..3, 0u32..30).prop_map(|(dt, n, d)| Ev::Step { dt, n, d }),
            1 => Just(Ev::RedisDown),
            2 => Just(Ev::RedisUp),
            1 => (0usize..3, 100u64..5_000).prop_map(|(n, ms)| Ev::Pause { n, ms }),
        ]
    }

    struct Node {
        core: Core,
        in_use: u32,
        demand: u32,
        paused_until: u64,
        slept: bool,
        slept_ms: u64,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn nodes_never_admit_beyond_what_redis_confirmed(evs in proptest::collection::vec(ev(), 1..300)) {
            let mut store = Store::default();
            let mut up = true;
            let mut now = 0u64;
            let mut nodes: Vec<Node> = (0..3).map(|_| Node { core: Core::new(tuning()), in_use: 0, demand: 0, paused_until: 0, slept: false, slept_ms: 0 }).collect();
            for ev in evs {
                match ev {
                    Ev::RedisDown => up = false,
                    Ev::RedisUp => up = true,
                    Ev::Pause { n, ms } => {
                        nodes[n].paused_until = now + ms;
                        nodes[n].slept_ms = ms;
                    }
                    Ev::Step { dt, n, d } => {
                        now += dt;
                        nodes[n].demand = d;
                    }
                }
                for (i, node) in nodes.iter_mut().enumerate() {
                    if now < node.paused_until {
                        node.slept = true;
                        continue;
                    }
                    // The lease check every admission makes, then admissions
                    // and releases toward the demand.
                    // A node that slept through its lease, longer than its
                    // failures count as recent, must not wake into a fallback
                    // share: it was away, not cut off, and others may hold
                    // its share now.
                    let recent = 2 * node.core.tuning.heartbeat_ms + node.core.tuning.call_timeout_ms;
                    let slept_through = node.slept && node.slept_ms > recent && matches!(node.core.authority,
                        Authority::Leased { deadline_ms, .. } if deadline_ms <= now);
                    node.slept = false;
                    node.core.expire(now);
                    if slept_through {
                        prop_assert_eq!(node.core.authority, Authority::Lost);
                    }
                    let cap = node.core.capacity();
                    node.in_use = if node.demand > node.in_use {
                        node.in_use.max(node.demand.min(cap))
                    } else {
                        node.demand
                    };
                    // The driver: at most a few calls per step.
                    for _ in 0..3 {
                        let Some(plan) = node.core.plan(now, node.in_use, 0, node.demand.saturating_sub(node.in_use)) else { break };
                        let want = if plan.want < node.core.capacity() { plan.want.max(node.in_use) } else { plan.want };
                        node.core.sent(now);
                        if up {
                            let reply = store.sync(now, i, plan.epoch, want, node.core.tuning.ttl_ms);
                            node.core.on_reply(now, want, &reply);
                        } else {
                            node.core.on_failure(now);
                        }
                        node.core.expire(now);
                    }
                }
                // Every node on a live lease admits within a share Redis
                // holds for it, and the shares fit the budget.
                let live: u32 = store.entries.values().filter(|e| e.2 > now).map(|e| e.0).sum();
                prop_assert!(live <= BUDGET, "confirmed shares {} above the budget", live);
                for (i, node) in nodes.iter().enumerate() {
                    if let Authority::Leased { epoch, share, deadline_ms } = node.core.authority {
                        if now < deadline_ms {
                            let e = store.entries.get(&i);
                            prop_assert!(e.is_some_and(|e| e.1 == epoch && e.0 >= share && e.2 > deadline_ms),
                                "node {} admits on {} (epoch {}) but redis holds {:?}", i, share, epoch, e);
                        }
                    }
                    if let Authority::Fallback { share, .. } = node.core.authority {
                        let fair = node.core.view.map_or(0, |v| v.fair);
                        prop_assert!(share <= fair, "fallback {} above fair {}", share, fair);
                    }
                }
            }
        }
    }
}
