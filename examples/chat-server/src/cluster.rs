//! Cluster mode: many nodes on one PostgreSQL database and one Redis.
//!
//! * **Fan-out**: a node publishes what it committed (messages, room and
//!   membership changes, token revocations) on one Redis pub/sub channel,
//!   only after the commit, and holds one subscription to it. A node's own
//!   messages are delivered locally without waiting for Redis.
//! * **Order**: every message, local or remote, goes through the node's
//!   [`Sequencer`], which delivers each room's messages in id order with
//!   no gaps. Ids are the room's sequence in PostgreSQL (see
//!   [`crate::store::postgres`]), so a missing id is seen at once; it is
//!   read from the database when it has not arrived within
//!   [`GAP_WAIT`]. Published messages can be lost (Redis down, a
//!   subscription being re-established), so the sequencer also compares
//!   its rooms with the database's newest ids on every reconnect and every
//!   [`CATCH_UP_EVERY`], and fills what it missed.
//! * **Connections**: the chat limiter is the local limiter of an
//!   [`admit_redis::ClusterLimiter`], whose share of the cluster budget
//!   never exceeds `--max-connections`.
//!
//! When Redis is lost the node keeps serving: it commits, delivers its own
//! messages to its own connections, admits on its last fair share (the
//! limiter reports `degraded`, cause `cluster`), and catches up with the
//! other nodes from the database when Redis returns.

use crate::chat::Chat;
use crate::hub::Event;
use admit_redis::ClusterLimiter;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a missing id may be awaited from Redis before it is read from
/// the database.
pub const GAP_WAIT: Duration = Duration::from_millis(100);
/// How often a node compares its rooms with the database.
pub const CATCH_UP_EVERY: Duration = Duration::from_secs(2);
/// How long a node waits before subscribing again after losing Redis.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(250);
/// How often the view of every node is read from Redis.
const VIEW_EVERY: Duration = Duration::from_millis(500);
/// Messages read from the database per query when filling a gap.
const FILL_PAGE: u32 = 500;

/// This node's default name: the host name and the HTTP port.
pub fn default_node_id(http: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}:{}", http.port())
}

/// What nodes tell each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Note {
    /// A committed message.
    Msg {
        /// The node that committed it.
        node: String,
        /// Room id.
        room_id: i64,
        /// Room name.
        room: String,
        /// Message id (the room's sequence).
        id: i64,
        /// Author.
        from: String,
        /// Text.
        text: String,
        /// Commit time.
        ts: String,
    },
    /// A room was created or gained a member: read it again.
    Room {
        /// The node that changed it.
        node: String,
        /// Room name.
        name: String,
    },
    /// A token was logged out: end its connections.
    Revoke {
        /// The node that logged it out.
        node: String,
        /// The token's hash.
        hash: String,
    },
}

/// A node in the cluster, as `/health` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// Its name.
    pub node: String,
    /// Chat connections it holds.
    pub in_use: u32,
    /// Milliseconds since it last reached Redis.
    pub last_seen_ms: u64,
}

/// The cluster, as `/health` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// This node.
    pub node: String,
    /// `single`, `cluster` or `degraded`.
    pub mode: &'static str,
    /// Every live node.
    pub nodes: Vec<NodeReport>,
    /// Chat connections across the cluster.
    pub in_use: u32,
    /// The cluster's budget.
    pub capacity: u32,
    /// Whether Redis answers: `ok` or `down`.
    pub redis: &'static str,
}

/// The cluster link of one node.
#[derive(Debug)]
pub struct Cluster {
    node: String,
    limiter: ClusterLimiter,
    client: redis::Client,
    notes: mpsc::UnboundedSender<Note>,
    seq: mpsc::UnboundedSender<SeqIn>,
    seq_rx: Mutex<Option<mpsc::UnboundedReceiver<SeqIn>>>,
    subscribed: AtomicBool,
    budget: u32,
    view: Mutex<(Vec<NodeReport>, u32, u32)>,
}

/// Inputs of the sequencer.
#[derive(Debug)]
enum SeqIn {
    /// A committed message, from here or elsewhere.
    Msg(i64, Arc<Event>),
    /// Compare every room with the database now.
    CatchUp,
}

impl Cluster {
    /// Joins the cluster budget (`budget` connections across all nodes, at
    /// most `node_cap` here) and starts publishing; [`Cluster::attach`]
    /// starts the rest once the chat service exists.
    pub async fn start(
        redis_url: &str,
        node: String,
        budget: u32,
        node_cap: u32,
        queue: u32,
    ) -> Result<Arc<Cluster>, String> {
        let client = redis::Client::open(redis_url).map_err(|e| e.to_string())?;
        let limiter = ClusterLimiter::builder(client.clone(), "chat", budget.max(1))
            .node_id(node.clone())
            .max_share(node_cap.max(1))
            // Batches sized to the budget, so that a small cluster's first
            // nodes do not take it all before the others join.
            .min_batch((budget / 16).clamp(1, 16))
            .queue_limit(queue.min(admit::MAX_QUEUE))
            .start()
            .await
            .map_err(|e| e.to_string())?;
        let (notes, notes_rx) = mpsc::unbounded_channel();
        let (seq, seq_rx) = mpsc::unbounded_channel();
        tokio::spawn(publisher(client.clone(), notes_rx));
        Ok(Arc::new(Cluster {
            node,
            limiter,
            client,
            notes,
            seq,
            seq_rx: Mutex::new(Some(seq_rx)),
            subscribed: AtomicBool::new(false),
            budget,
            view: Mutex::new((Vec::new(), 0, budget)),
        }))
    }

    /// Starts the sequencer, the subscription and the cluster view for
    /// `chat`; `rooms` are the rooms loaded at start with their newest ids.
    pub fn attach(self: &Arc<Self>, chat: &Arc<Chat>, rooms: Vec<(i64, i64)>) {
        let Some(rx) = self.seq_rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let seq = Sequencer {
            chat: Arc::downgrade(chat),
            rooms: rooms
                .into_iter()
                .map(|(id, last)| (id, RoomSeq::new(last)))
                .collect(),
        };
        tokio::spawn(seq.run(rx));
        tokio::spawn(subscriber(self.clone(), Arc::downgrade(chat)));
        tokio::spawn(viewer(Arc::downgrade(self)));
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The cluster limiter (its local limiter is the chat limiter).
    pub fn limiter(&self) -> &ClusterLimiter {
        &self.limiter
    }

    /// A message this node committed: delivered here in order, and
    /// published for the others.
    pub fn committed(&self, room_id: i64, event: Arc<Event>) {
        let _ = self.notes.send(Note::Msg {
            node: self.node.clone(),
            room_id,
            room: event.room.to_string(),
            id: event.id,
            from: event.from.to_string(),
            text: event.text.clone(),
            ts: event.ts.clone(),
        });
        let _ = self.seq.send(SeqIn::Msg(room_id, event));
    }

    /// A room this node created or changed.
    pub fn room_changed(&self, name: &str) {
        let _ = self.notes.send(Note::Room {
            node: self.node.clone(),
            name: name.to_owned(),
        });
    }

    /// A token this node logged out.
    pub fn revoked(&self, hash: &str) {
        let _ = self.notes.send(Note::Revoke {
            node: self.node.clone(),
            hash: hash.to_owned(),
        });
    }

    /// Whether this node is cut off: its share is not confirmed, or its
    /// subscription is down.
    pub fn degraded(&self) -> bool {
        self.limiter.health().cause().is_some() || !self.subscribed.load(Ordering::Acquire)
    }

    /// The report for `/health`.
    pub fn report(&self) -> ClusterReport {
        let status = self.limiter.status();
        let (mut nodes, in_use, capacity) =
            self.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let redis_ok = status.redis_reachable && self.subscribed.load(Ordering::Acquire);
        if nodes.is_empty() || !redis_ok {
            // Redis cannot say: this node speaks for itself.
            nodes.retain(|n| n.node != self.node);
            nodes.insert(
                0,
                NodeReport {
                    node: self.node.clone(),
                    in_use: status.in_use,
                    last_seen_ms: 0,
                },
            );
        }
        ClusterReport {
            node: self.node.clone(),
            mode: if self.degraded() {
                "degraded"
            } else {
                "cluster"
            },
            in_use: in_use.max(nodes.iter().map(|n| n.in_use).sum()),
            nodes,
            capacity,
            redis: if redis_ok { "ok" } else { "down" },
        }
    }
}

/// The report of a server that is not in a cluster.
pub fn single_report(node: &str, in_use: u32, capacity: u32) -> ClusterReport {
    ClusterReport {
        node: node.to_owned(),
        mode: "single",
        nodes: vec![NodeReport {
            node: node.to_owned(),
            in_use,
            last_seen_ms: 0,
        }],
        in_use,
        capacity,
        redis: "down",
    }
}

const CHANNEL: &str = "chat:notes";

/// Publishes notes in the order they were committed. A note that cannot
/// be published is dropped: the other nodes catch up from the database.
async fn publisher(client: redis::Client, mut rx: mpsc::UnboundedReceiver<Note>) {
    let mut con: Option<redis::aio::MultiplexedConnection> = None;
    while let Some(note) = rx.recv().await {
        let Ok(payload) = serde_json::to_string(&note) else {
            continue;
        };
        if con.is_none() {
            con = tokio::time::timeout(
                Duration::from_secs(1),
                client.get_multiplexed_async_connection(),
            )
            .await
            .ok()
            .and_then(Result::ok);
        }
        let Some(c) = con.as_mut() else {
            continue;
        };
        let sent: Result<Result<i64, redis::RedisError>, _> = tokio::time::timeout(
            Duration::from_secs(1),
            redis::cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(payload)
                .query_async(c),
        )
        .await;
        if !matches!(sent, Ok(Ok(_))) {
            con = None;
        }
    }
}

/// Holds this node's one subscription, and subscribes again when it is
/// lost; every (re)subscription is followed by a catch-up.
async fn subscriber(cluster: Arc<Cluster>, chat: Weak<Chat>) {
    use futures::StreamExt;
    loop {
        if chat.strong_count() == 0 {
            return;
        }
        let sub = async {
            let mut ps = cluster.client.get_async_pubsub().await?;
            ps.subscribe(CHANNEL).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        match tokio::time::timeout(Duration::from_secs(1), sub).await {
            Ok(Ok(mut ps)) => {
                cluster.subscribed.store(true, Ordering::Release);
                tracing::info!(node = %cluster.node, "subscribed to the cluster's notes");
                // Whatever was missed while unsubscribed: rooms and members
                // first, then messages.
                if let Some(chat) = chat.upgrade() {
                    chat.reload_rooms().await;
                }
                let _ = cluster.seq.send(SeqIn::CatchUp);
                let mut stream = ps.on_message();
                while let Some(msg) = stream.next().await {
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    let Ok(note) = serde_json::from_str::<Note>(&payload) else {
                        continue;
                    };
                    let Some(chat) = chat.upgrade() else {
                        return;
                    };
                    on_note(&cluster, &chat, note);
                }
                cluster.subscribed.store(false, Ordering::Release);
                tracing::warn!(node = %cluster.node, "lost the cluster's notes; serving locally");
            }
            _ => cluster.subscribed.store(false, Ordering::Release),
        }
        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
    }
}

fn on_note(cluster: &Arc<Cluster>, chat: &Arc<Chat>, note: Note) {
    match note {
        Note::Msg { node, .. } | Note::Room { node, .. } | Note::Revoke { node, .. }
            if node == cluster.node => {}
        Note::Msg {
            room_id,
            room,
            id,
            from,
            text,
            ts,
            ..
        } => {
            let event = Arc::new(Event {
                room: room.into(),
                id,
                from: from.into(),
                text,
                ts,
            });
            let _ = cluster.seq.send(SeqIn::Msg(room_id, event));
        }
        Note::Room { name, .. } => {
            let chat = chat.clone();
            tokio::spawn(async move { chat.reload_room(name).await });
        }
        Note::Revoke { hash, .. } => chat.revoke_here(&hash),
    }
}

/// Reads every node's figures from Redis now and then, for `/health`.
async fn viewer(cluster: Weak<Cluster>) {
    loop {
        let Some(c) = cluster.upgrade() else {
            return;
        };
        let snap = c.limiter.cluster_snapshot().await;
        if snap.redis_reachable {
            let nodes: Vec<NodeReport> = snap
                .nodes
                .iter()
                .map(|n| NodeReport {
                    node: n.node.clone(),
                    in_use: n.in_use,
                    last_seen_ms: n.last_seen_ms_ago,
                })
                .collect();
            *c.view.lock().unwrap_or_else(|p| p.into_inner()) =
                (nodes, snap.in_use_total(), snap.budget.unwrap_or(c.budget));
        }
        drop(c);
        tokio::time::sleep(VIEW_EVERY).await;
    }
}

/// One room's delivery state.
#[derive(Debug)]
struct RoomSeq {
    /// The id delivered next.
    next: i64,
    /// Arrived ahead of `next`.
    ahead: BTreeMap<i64, Arc<Event>>,
    /// Since when `next` has been missing while later ids wait.
    missing_since: Option<Instant>,
}

impl RoomSeq {
    fn new(last: i64) -> RoomSeq {
        RoomSeq {
            next: last + 1,
            ahead: BTreeMap::new(),
            missing_since: None,
        }
    }
}

/// Delivers every room's messages in id order, with no gaps.
#[derive(Debug)]
struct Sequencer {
    chat: Weak<Chat>,
    rooms: HashMap<i64, RoomSeq>,
}

impl Sequencer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<SeqIn>) {
        let mut tick = tokio::time::interval(GAP_WAIT / 2);
        let mut catch_up = tokio::time::interval(CATCH_UP_EVERY);
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(SeqIn::Msg(room_id, event)) => self.arrive(room_id, event),
                    Some(SeqIn::CatchUp) => self.catch_up().await,
                    None => return,
                },
                _ = tick.tick() => self.fill_gaps().await,
                _ = catch_up.tick() => self.catch_up().await,
            }
            if self.chat.strong_count() == 0 {
                return;
            }
        }
    }

    fn arrive(&mut self, room_id: i64, event: Arc<Event>) {
        let Some(chat) = self.chat.upgrade() else {
            return;
        };
        // A room unknown at start was created after it: its ids start at 1.
        let r = self.rooms.entry(room_id).or_insert_with(|| RoomSeq::new(0));
        if event.id < r.next {
            return; // delivered already
        }
        r.ahead.insert(event.id, event);
        while let Some(e) = r.ahead.remove(&r.next) {
            r.next += 1;
            chat.hub.broadcast(e);
        }
        r.missing_since = if r.ahead.is_empty() {
            None
        } else {
            r.missing_since.or(Some(Instant::now()))
        };
    }

    /// Reads from the database what has been missing for [`GAP_WAIT`].
    async fn fill_gaps(&mut self) {
        let now = Instant::now();
        let late: Vec<(i64, i64, Arc<str>)> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.missing_since.is_some_and(|t| now - t >= GAP_WAIT))
            .filter_map(|(id, r)| {
                let room = r.ahead.values().next()?.room.clone();
                Some((*id, r.next - 1, room))
            })
            .collect();
        for (room_id, after, room) in late {
            self.fill(room_id, after, &room).await;
        }
    }

    /// Delivers what the database has after `after` in a room.
    async fn fill(&mut self, room_id: i64, after: i64, room: &str) {
        let Some(chat) = self.chat.upgrade() else {
            return;
        };
        let mut after = after;
        loop {
            let page = match chat
                .store
                .history_after(room_id, room.to_owned(), after, FILL_PAGE)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("cannot read missed messages of {room}: {e}");
                    return;
                }
            };
            let full = page.len() == FILL_PAGE as usize;
            for m in page {
                after = m.id;
                self.arrive(
                    room_id,
                    Arc::new(Event {
                        room: m.room.into(),
                        id: m.id,
                        from: m.from.into(),
                        text: m.text,
                        ts: m.ts,
                    }),
                );
            }
            if !full {
                return;
            }
        }
    }

    /// Compares every room with the database's newest ids and fills what
    /// was missed (notes lost while Redis was away).
    async fn catch_up(&mut self) {
        let Some(chat) = self.chat.upgrade() else {
            return;
        };
        let Ok(heads) = chat.store.room_heads().await else {
            return;
        };
        for (room_id, last) in heads {
            let next = self.rooms.get(&room_id).map_or(1, |r| r.next);
            if last < next {
                continue;
            }
            let Some(name) = chat.hub.room_name(room_id) else {
                continue;
            };
            self.fill(room_id, next - 1, &name).await;
        }
    }
}
