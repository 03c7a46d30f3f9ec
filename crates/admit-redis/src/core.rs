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
    /// `in_use` and `waiting` are the local limiter's counts; `pressed` says
    /// callers were turned away since the last plan.
    pub(crate) fn plan(
        &mut self,
        now_ms: u64,
        in_use: u32,
        waiting: u32,
        pressed: bool,
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
        let demand = in_use
            .saturating_add(waiting)
            .saturating_add(u32::from(pressed));
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
        if (spare < low || waiting > 0 || pressed)
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
    pub(crate) fn on_reply(&mut self, sent_ms: u64, want: u32, reply: &SyncReply) {
        if self.unreachable() {
            self.hold_cap = self.capacity();
            self.hold_until_ms = sent_ms + self.tuning.ttl_ms;
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
            self.grow_backoff_until_ms = sent_ms + self.tuning.retry_ms.min(100);
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
