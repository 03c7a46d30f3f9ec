//! Rooms, memberships and fan-out.
//!
//! The hub keeps every room in memory (rooms and memberships are few and
//! small; messages are not kept here) together with the connections joined
//! to it. Fan-out never waits: each connection has a bounded [`Outbox`], and
//! a push into a full outbox marks that connection *lagged* instead of
//! blocking the sender or buffering without bound. The connection then
//! tells its client and closes; the client catches up from history.
//!
//! The hub lock is a plain mutex held only for map updates and `try_send`
//! calls, never across an `.await` or a database call.

use crate::protocol::ProtoError;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, Notify};

/// Pushes from others (messages, presence) a connection may have pending
/// before it is lagged.
pub const OUTBOX: usize = 64;
/// Messages a connection may have sent and not yet seen acknowledged. A
/// client that pipelines more is simply not read from until acks come
/// back, so its own acks can never overflow its outbox.
pub const SEND_WINDOW: usize = 16;

/// A committed message, shared by every connection it is pushed to.
#[derive(Debug)]
pub struct Event {
    /// Room name.
    pub room: Arc<str>,
    /// Message id.
    pub id: i64,
    /// Author.
    pub from: Arc<str>,
    /// Text.
    pub text: String,
    /// Commit time.
    pub ts: String,
}

/// Something pushed to a connection from elsewhere.
#[derive(Debug)]
pub enum Push {
    /// A message in a joined room.
    Message(Arc<Event>),
    /// Someone joined or left a room this connection is in.
    Presence {
        /// Room.
        room: Arc<str>,
        /// Who.
        user: Arc<str>,
        /// Online (joined) or offline (left).
        online: bool,
    },
    /// This connection's message was committed.
    Ack {
        /// The client's id for it.
        client_id: Box<str>,
        /// Its id.
        id: i64,
    },
    /// This connection's message could not be stored.
    Failed {
        /// The client's id for it.
        client_id: Box<str>,
    },
}

/// The sending half of a connection's outbound queue.
#[derive(Debug)]
pub struct Outbox {
    id: u64,
    hub_lagged: Arc<AtomicU64>,
    user: Arc<str>,
    tx: mpsc::Sender<Push>,
    lagged: AtomicBool,
    lag: Notify,
}

impl Outbox {
    /// A new outbox and the receiver its connection drains.
    pub fn new(hub: &Hub, user: Arc<str>) -> (Arc<Outbox>, mpsc::Receiver<Push>) {
        // Room for the window's acks and its own echoed messages on top of
        // what others push.
        let (tx, rx) = mpsc::channel(OUTBOX + 2 * SEND_WINDOW);
        let outbox = Outbox {
            id: hub.next_id.fetch_add(1, Ordering::Relaxed),
            hub_lagged: hub.lagged_total.clone(),
            user,
            tx,
            lagged: AtomicBool::new(false),
            lag: Notify::new(),
        };
        (Arc::new(outbox), rx)
    }

    /// Queues a push without waiting; a full queue marks the connection lagged.
    pub fn push(&self, p: Push) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(p) {
            if !self.lagged.swap(true, Ordering::AcqRel) {
                self.hub_lagged.fetch_add(1, Ordering::Relaxed);
                // `notify_one` stores a permit, so the connection sees it
                // even if it is not waiting right now.
                self.lag.notify_one();
            }
        }
    }

    /// Resolves once the connection has fallen behind.
    pub async fn lagged(&self) {
        while !self.lagged.load(Ordering::Acquire) {
            self.lag.notified().await;
        }
    }
}

struct Room {
    id: i64,
    private: bool,
    owner: Option<Arc<str>>,
    members: HashSet<i64>,
    subs: HashMap<u64, Arc<Outbox>>,
}

/// A room as the API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomView {
    /// Name.
    pub name: String,
    /// Members only?
    pub private: bool,
    /// Owner (null for `general`).
    pub owner: Option<String>,
}

/// All rooms and their joined connections.
#[derive(Debug, Default)]
pub struct Hub {
    /// By name, in order, so the room list pages by name.
    rooms: Mutex<BTreeMap<Arc<str>, RoomEntry>>,
    next_id: AtomicU64,
    lagged_total: Arc<AtomicU64>,
}

/// Debug-printable wrapper so `Hub` can derive `Debug` cheaply.
struct RoomEntry(Room);

impl std::fmt::Debug for RoomEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("id", &self.0.id)
            .field("subs", &self.0.subs.len())
            .finish()
    }
}

fn not_found() -> ProtoError {
    ProtoError::new("not_found", "no such room")
}

fn forbidden() -> ProtoError {
    ProtoError::new("forbidden", "this room is private and you are not a member")
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<Arc<str>, RoomEntry>> {
        // A panic elsewhere while holding the lock leaves the maps valid
        // (every update is a single insert or remove), so carry on.
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a room (at start-up or after it was created).
    pub fn add_room(
        &self,
        id: i64,
        name: &str,
        private: bool,
        owner: Option<&str>,
        members: &[i64],
    ) {
        self.lock().insert(
            name.into(),
            RoomEntry(Room {
                id,
                private,
                owner: owner.map(Into::into),
                members: members.iter().copied().collect(),
                subs: HashMap::new(),
            }),
        );
    }

    /// A room's name by id.
    pub fn room_name(&self, id: i64) -> Option<Arc<str>> {
        self.lock()
            .iter()
            .find(|(_, r)| r.0.id == id)
            .map(|(name, _)| name.clone())
    }

    /// Brings a room up to date with the database (a change made on
    /// another node): adds it if unknown, else refreshes its members and
    /// keeps its connections.
    pub fn refresh_room(
        &self,
        id: i64,
        name: &str,
        private: bool,
        owner: Option<&str>,
        members: &[i64],
    ) {
        let mut rooms = self.lock();
        if let Some(r) = rooms.get_mut(name) {
            r.0.members.extend(members.iter().copied());
            return;
        }
        drop(rooms);
        self.add_room(id, name, private, owner, members);
    }

    /// Records a new member.
    pub fn add_member(&self, room: &str, user: i64) {
        if let Some(r) = self.lock().get_mut(room) {
            r.0.members.insert(user);
        }
    }

    /// The room's id if `user` may read and write it.
    pub fn access(&self, room: &str, user: i64) -> Result<i64, ProtoError> {
        let rooms = self.lock();
        let r = &rooms.get(room).ok_or_else(not_found)?.0;
        if r.private && !r.members.contains(&user) {
            return Err(forbidden());
        }
        Ok(r.id)
    }

    /// The room's id and owner name, if it exists.
    pub fn owner(&self, room: &str) -> Option<(i64, Option<Arc<str>>)> {
        self.lock().get(room).map(|r| (r.0.id, r.0.owner.clone()))
    }

    /// Up to `limit` of the public rooms and the private rooms `user`
    /// belongs to, by name, starting after the name `after`.
    pub fn list(&self, user: i64, after: Option<&str>, limit: usize) -> Vec<RoomView> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.lock()
            .range::<str, _>((start, Bound::Unbounded))
            .filter(|(_, r)| !r.0.private || r.0.members.contains(&user))
            .take(limit)
            .map(|(name, r)| RoomView {
                name: name.to_string(),
                private: r.0.private,
                owner: r.0.owner.as_ref().map(|o| o.to_string()),
            })
            .collect()
    }

    /// Subscribes a connection to a room and announces it to the others.
    /// Returns the room's interned name.
    pub fn join(
        &self,
        room: &str,
        user: i64,
        outbox: &Arc<Outbox>,
    ) -> Result<Arc<str>, ProtoError> {
        let mut rooms = self.lock();
        let (name, r) = rooms.get_key_value(room).ok_or_else(not_found)?;
        if r.0.private && !r.0.members.contains(&user) {
            return Err(forbidden());
        }
        let name = name.clone();
        let r = &mut rooms.get_mut(room).ok_or_else(not_found)?.0;
        if r.subs.insert(outbox.id, outbox.clone()).is_none() {
            announce(r, &name, outbox, true);
        }
        Ok(name)
    }

    /// Unsubscribes a connection; announces it if it was joined.
    pub fn leave(&self, room: &str, outbox: &Outbox) -> bool {
        let mut rooms = self.lock();
        let Some((name, _)) = rooms.get_key_value(room) else {
            return false;
        };
        let name = name.clone();
        let Some(r) = rooms.get_mut(room) else {
            return false;
        };
        if r.0.subs.remove(&outbox.id).is_some() {
            announce(&r.0, &name, outbox, false);
            true
        } else {
            false
        }
    }

    /// Pushes a committed message to every connection joined to its room.
    pub fn broadcast(&self, event: Arc<Event>) {
        let rooms = self.lock();
        if let Some(r) = rooms.get(&event.room) {
            for sub in r.0.subs.values() {
                sub.push(Push::Message(event.clone()));
            }
        }
    }

    /// Connections closed for lagging since start.
    pub fn lagged_total(&self) -> u64 {
        self.lagged_total.load(Ordering::Relaxed)
    }

    /// Connections joined to any room (for metrics).
    pub fn subscriptions(&self) -> usize {
        self.lock().values().map(|r| r.0.subs.len()).sum()
    }
}

fn announce(r: &Room, name: &Arc<str>, who: &Outbox, online: bool) {
    for (id, sub) in &r.subs {
        if *id != who.id {
            sub.push(Push::Presence {
                room: name.clone(),
                user: who.user.clone(),
                online,
            });
        }
    }
}

impl Push {
    /// Whether this settles one of the connection's own sends.
    pub fn settles_send(&self) -> bool {
        matches!(self, Push::Ack { .. } | Push::Failed { .. })
    }
}
