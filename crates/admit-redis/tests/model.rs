//! The share protocol's Redis side against a reference model: random
//! sequences of joins, renewals, growth, shrinking, stale epochs, leaves and
//! budget changes, run on a real redis-server, must give exactly the
//! replies the model predicts, and a grant may never take the confirmed
//! shares above the budget.

mod common;

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};

const SYNC: &str = include_str!("../src/lua/sync.lua");
const LEAVE: &str = include_str!("../src/lua/leave.lua");
const NODES: usize = 4;
/// Long enough that nothing expires during a case: expiry is covered by
/// the process tests, with real time.
const TTL_MS: u64 = 600_000;

#[derive(Debug, Clone, Copy)]
enum EpochKind {
    Current,
    Stale,
    Join,
}

#[derive(Debug, Clone)]
enum Op {
    Sync {
        node: usize,
        kind: EpochKind,
        want: u32,
        in_use: u32,
    },
    Leave {
        node: usize,
        stale: bool,
    },
    SetBudget(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..NODES, prop_oneof![3 => Just(EpochKind::Current), 1 => Just(EpochKind::Stale), 2 => Just(EpochKind::Join)], 0u32..48, 0u32..48)
            .prop_map(|(node, kind, want, in_use)| Op::Sync { node, kind, want, in_use: in_use.min(want) }),
        1 => (0..NODES, any::<bool>()).prop_map(|(node, stale)| Op::Leave { node, stale }),
        1 => (5u32..45).prop_map(Op::SetBudget),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    share: u32,
    epoch: u64,
    want: u32,
}

/// What the scripts should do, written plainly.
#[derive(Debug, Default)]
struct Model {
    budget: Option<u32>,
    /// The epoch the next join gets (learned from the first join's reply:
    /// Redis seeds the counter from its clock).
    next_epoch: Option<u64>,
    entries: BTreeMap<usize, Entry>,
    /// Per node: the epoch it holds and the one before.
    held: [Option<u64>; NODES],
    stale: [Option<u64>; NODES],
}

/// `{ok, epoch, share, budget, live, fair, hand_back}` (Redis's clock left out).
type Reply = [i64; 7];

impl Model {
    fn sync(&mut self, node: usize, epoch: u64, want: u32, default_budget: u32) -> Reply {
        let budget = *self.budget.get_or_insert(default_budget);
        let others: Vec<Entry> = self
            .entries
            .iter()
            .filter(|(n, _)| **n != node)
            .map(|(_, e)| *e)
            .collect();
        let others_sum: i64 = others.iter().map(|e| e.share as i64).sum();
        let live = others.len() as i64 + 1;
        let fair = budget as i64 / live;
        let starving = |e: &Entry| (e.want as i64) > e.share as i64 && (e.share as i64) < fair;
        let (epoch, cur) = if epoch == 0 {
            let e = self.next_epoch.expect("seeded by the caller");
            self.next_epoch = Some(e + 1);
            (e, 0i64)
        } else {
            match self.entries.get(&node) {
                Some(e) if e.epoch == epoch => (epoch, e.share as i64),
                _ => return [0, epoch as i64, 0, budget as i64, live, fair, 0],
            }
        };
        // Growth is bounded by the room left; a renewal or shrink keeps
        // what it asks for even above a lowered budget (held permits stay).
        let want = want as i64;
        let mut share = want;
        if want > cur {
            let mut room = budget as i64 - others_sum;
            if others.iter().any(starving) && room > fair {
                room = fair;
            }
            share = share.min(room).max(cur);
            assert!(
                others_sum + share <= budget as i64 || share == cur,
                "a grant took the shares above the budget"
            );
        }
        let hand_back = others_sum + share > budget as i64
            || others.iter().any(starving)
            || (want > share && share < fair);
        self.entries.insert(
            node,
            Entry {
                share: share as u32,
                epoch,
                want: want as u32,
            },
        );
        [
            1,
            epoch as i64,
            share,
            budget as i64,
            live,
            fair,
            hand_back as i64,
        ]
    }
}

static CASE: AtomicU32 = AtomicU32::new(0);

fn run(con: &mut redis::Connection, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let name = format!("model{}", CASE.fetch_add(1, Ordering::Relaxed));
    let keys = admit_redis::BudgetKeys::new("admit:", &name);
    let (sync, leave) = (redis::Script::new(SYNC), redis::Script::new(LEAVE));
    let mut m = Model::default();
    let default_budget = 20u32;
    for op in ops {
        match op {
            Op::Sync {
                node,
                kind,
                want,
                in_use,
            } => {
                let epoch = match kind {
                    EpochKind::Join => 0,
                    EpochKind::Current => m.held[node].unwrap_or(0),
                    // Never granted to this node: must be refused.
                    EpochKind::Stale => m.stale[node].unwrap_or(1),
                };
                let got: Vec<i64> = sync
                    .key(keys.nodes())
                    .key(keys.meta())
                    .arg(format!("n{node}"))
                    .arg(epoch)
                    .arg(want)
                    .arg(in_use)
                    .arg(TTL_MS)
                    .arg(default_budget)
                    .invoke(con)
                    .unwrap();
                prop_assert_eq!(got.len(), 8);
                if epoch == 0 && m.next_epoch.is_none() {
                    m.next_epoch = Some(got[1] as u64);
                }
                let want_reply = m.sync(node, epoch, want, default_budget);
                prop_assert_eq!(&got[..7], &want_reply[..], "op {:?}", op);
                if got[0] == 1 && epoch == 0 {
                    m.stale[node] = m.held[node];
                    m.held[node] = Some(got[1] as u64);
                }
            }
            Op::Leave { node, stale } => {
                let epoch = if stale { m.stale[node] } else { m.held[node] };
                let Some(epoch) = epoch else { continue };
                let got: i64 = leave
                    .key(keys.nodes())
                    .arg(format!("n{node}"))
                    .arg(epoch)
                    .invoke(con)
                    .unwrap();
                let ours = m.entries.get(&node).is_some_and(|e| e.epoch == epoch);
                prop_assert_eq!(got == 1, ours, "op {:?}", op);
                if ours {
                    m.entries.remove(&node);
                }
            }
            Op::SetBudget(b) => {
                redis::cmd("HSET")
                    .arg(keys.meta())
                    .arg("budget")
                    .arg(b)
                    .exec(con)
                    .unwrap();
                m.budget = Some(b);
            }
        }
    }
    Ok(())
}

#[test]
fn scripts_match_the_reference_model() {
    let Some(r) = common::redis() else { return };
    let con = std::cell::RefCell::new(r.client().get_connection().unwrap());
    proptest!(ProptestConfig::with_cases(128), |(ops in proptest::collection::vec(op(), 1..60))| {
        run(&mut con.borrow_mut(), ops)?;
    });
}
