//! Persistence: SQLite in WAL mode, one writer thread with group commit, a
//! small pool of reader connections.
//!
//! Every write goes through one dedicated OS thread. It blocks for the
//! first pending write, then takes every other write already queued (up to
//! [`MAX_BATCH`]) and applies them all in one transaction: one commit, one
//! fsync, however many messages arrived meanwhile. Only after the commit
//! returns does it answer the callers, so an acknowledgement always means
//! "on disk". Under light load a batch is one message and latency is one
//! fsync; under heavy load the fsync is shared and throughput scales with
//! the batch size instead of the disk's sync rate.
//!
//! Because the writer assigns message ids and runs the commit callbacks in
//! commit order, fan-out happens in id order too: no reordering buffer is
//! needed anywhere downstream.
//!
//! Reads (token checks, history, password hashes) use separate connections,
//! which WAL lets run beside the writer without blocking it.

use crate::protocol::ws::Msg;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// Most writes applied in one transaction.
pub const MAX_BATCH: usize = 1024;
const READERS: usize = 2;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique name is already in use.
    #[error("already exists")]
    Exists,
    /// The database failed; the operation did not happen.
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// The writer has shut down.
    #[error("the store is shut down")]
    Closed,
}

/// The outcome of posting a message.
#[derive(Debug, Clone)]
pub struct Posted {
    /// The message id (the earlier one when this was a resend).
    pub id: i64,
    /// Commit time, RFC 3339.
    pub ts: String,
    /// The same user already sent this `client_id`: nothing was stored.
    pub duplicate: bool,
}

/// Called on the writer thread after the commit, in commit order.
pub type OnCommit = Box<dyn FnOnce(Result<Posted, StoreError>) + Send>;

/// A room as loaded at start-up.
#[derive(Debug, Clone)]
pub struct RoomRow {
    /// Row id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Members only?
    pub private: bool,
    /// Owner's user name (none for `general`).
    pub owner: Option<String>,
    /// Member user ids.
    pub members: Vec<i64>,
}

enum Write {
    Register {
        name: String,
        pw_hash: String,
        token_hash: String,
        expires: i64,
        reply: oneshot::Sender<Result<i64, StoreError>>,
    },
    AddToken {
        user_id: i64,
        token_hash: String,
        expires: i64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    CreateRoom {
        name: String,
        private: bool,
        owner: i64,
        reply: oneshot::Sender<Result<i64, StoreError>>,
    },
    AddMember {
        room: i64,
        user: i64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Post {
        room: i64,
        user: i64,
        text: String,
        client_id: String,
        done: OnCommit,
    },
    Shutdown,
}

/// Handle to the database; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    writer: Mutex<Option<mpsc::Sender<Write>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // WAL lets readers run beside the writer; FULL makes each commit
    // durable against power loss, which group commit makes affordable.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    pw_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    expires INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rooms (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    private INTEGER NOT NULL,
    owner INTEGER REFERENCES users(id)
);
CREATE TABLE IF NOT EXISTS members (
    room_id INTEGER NOT NULL REFERENCES rooms(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    PRIMARY KEY (room_id, user_id)
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id INTEGER NOT NULL REFERENCES rooms(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    client_id TEXT NOT NULL,
    text TEXT NOT NULL,
    ts TEXT NOT NULL,
    UNIQUE (user_id, client_id)
);
CREATE INDEX IF NOT EXISTS messages_room ON messages(room_id, id);
INSERT OR IGNORE INTO rooms (name, private, owner) VALUES ('general', 0, NULL);
";

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A uniqueness violation means the name is taken; anything else is a
/// database failure.
fn exists_or_db(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Exists
        }
        e => e.into(),
    }
}

fn insert_token(
    tx: &rusqlite::Transaction<'_>,
    token_hash: &str,
    user_id: i64,
    expires: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO tokens (hash, user_id, expires) VALUES (?1, ?2, ?3)",
        params![token_hash, user_id, expires],
    )
    .map(|_| ())
}

impl Store {
    /// Opens (creating if needed) `dir/chat.db` and starts the writer thread.
    ///
    /// `max_batch` caps the writes committed together (at most
    /// [`MAX_BATCH`]); 1 turns group commit off, for comparison.
    pub fn open(dir: &Path, max_batch: usize) -> Result<Store, StoreError> {
        let max_batch = max_batch.clamp(1, MAX_BATCH);
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Db(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!("cannot create {}: {e}", dir.display())),
            ))
        })?;
        let path = dir.join("chat.db");
        let conn = open(&path)?;
        conn.execute_batch(SCHEMA)?;
        let readers = (0..READERS)
            .map(|_| open(&path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("chat-db-writer".into())
            .spawn(move || writer_loop(conn, rx, max_batch))
            .map_err(|e| {
                StoreError::Db(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                    Some(format!("cannot start writer thread: {e}")),
                ))
            })?;
        Ok(Store {
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    /// Hands a write to the writer thread; after shutdown it is failed
    /// at once, so no caller waits forever and no commit callback is lost.
    fn send(&self, w: Write) -> Result<(), StoreError> {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let w = match guard.as_ref() {
            Some(tx) => match tx.send(w) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(w)) => w,
            },
            None => w,
        };
        drop(guard);
        fail(w);
        Err(StoreError::Closed)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Write,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        // On failure `send` has already answered through `tx`.
        let _ = self.send(make(tx));
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Creates a user with its first token. `Exists` if the name is taken.
    pub async fn register(
        &self,
        name: String,
        pw_hash: String,
        token_hash: String,
        expires: i64,
    ) -> Result<i64, StoreError> {
        self.call(|reply| Write::Register {
            name,
            pw_hash,
            token_hash,
            expires,
            reply,
        })
        .await
    }

    /// Stores a new token hash for a user.
    pub async fn add_token(
        &self,
        user_id: i64,
        token_hash: String,
        expires: i64,
    ) -> Result<(), StoreError> {
        self.call(|reply| Write::AddToken {
            user_id,
            token_hash,
            expires,
            reply,
        })
        .await
    }

    /// Creates a room owned (and joined) by `owner`.
    pub async fn create_room(
        &self,
        name: String,
        private: bool,
        owner: i64,
    ) -> Result<i64, StoreError> {
        self.call(|reply| Write::CreateRoom {
            name,
            private,
            owner,
            reply,
        })
        .await
    }

    /// Adds a member to a room (idempotent).
    pub async fn add_member(&self, room: i64, user: i64) -> Result<(), StoreError> {
        self.call(|reply| Write::AddMember { room, user, reply })
            .await
    }

    /// Queues a message; `done` runs on the writer thread after the commit.
    pub fn post(&self, room: i64, user: i64, text: String, client_id: String, done: OnCommit) {
        // On failure `send` has already called `done` with the error.
        let _ = self.send(Write::Post {
            room,
            user,
            text,
            client_id,
            done,
        });
    }

    /// Commits what is queued and stops the writer thread. Later writes fail
    /// with [`StoreError::Closed`].
    pub fn shutdown(&self) {
        let tx = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(Write::Shutdown);
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// Runs a read on a pooled connection, off the async runtime.
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let i = me.next_reader.fetch_add(1, Ordering::Relaxed) % me.readers.len();
            let conn = me.readers[i].lock().unwrap_or_else(|p| p.into_inner());
            f(&conn).map_err(StoreError::from)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Loads every room with its members (at start-up).
    pub fn load_rooms(&self) -> Result<Vec<RoomRow>, StoreError> {
        let conn = self.readers[0].lock().unwrap_or_else(|p| p.into_inner());
        let mut rooms = conn
            .prepare(
                "SELECT r.id, r.name, r.private, u.name FROM rooms r
                 LEFT JOIN users u ON u.id = r.owner ORDER BY r.id",
            )?
            .query_map([], |r| {
                Ok(RoomRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    private: r.get::<_, i64>(2)? != 0,
                    owner: r.get(3)?,
                    members: Vec::new(),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut stmt = conn.prepare("SELECT user_id FROM members WHERE room_id = ?1")?;
        for room in &mut rooms {
            room.members = stmt
                .query_map([room.id], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<i64>>>()?;
        }
        Ok(rooms)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Looks up the user behind a token hash that has not expired.
pub fn user_by_token(
    conn: &Connection,
    hash: &str,
    now: i64,
) -> rusqlite::Result<Option<(i64, String)>> {
    conn.prepare_cached(
        "SELECT u.id, u.name FROM tokens t JOIN users u ON u.id = t.user_id
         WHERE t.hash = ?1 AND t.expires > ?2",
    )?
    .query_row(params![hash, now], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()
}

/// A user's id and password hash.
pub fn credentials(conn: &Connection, name: &str) -> rusqlite::Result<Option<(i64, String)>> {
    conn.prepare_cached("SELECT id, pw_hash FROM users WHERE name = ?1")?
        .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

/// A user's id by name.
pub fn user_id(conn: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT id FROM users WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()
}

/// Up to `limit` messages of a room before `before`, ascending by id.
pub fn history(
    conn: &Connection,
    room_id: i64,
    room: &str,
    before: Option<i64>,
    limit: u32,
) -> rusqlite::Result<Vec<Msg>> {
    let mut msgs = conn
        .prepare_cached(
            "SELECT m.id, u.name, m.text, m.ts FROM messages m JOIN users u ON u.id = m.user_id
             WHERE m.room_id = ?1 AND m.id < ?2 ORDER BY m.id DESC LIMIT ?3",
        )?
        .query_map(params![room_id, before.unwrap_or(i64::MAX), limit], |r| {
            Ok(Msg {
                id: r.get(0)?,
                room: room.to_owned(),
                from: r.get(1)?,
                text: r.get(2)?,
                ts: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    msgs.reverse();
    Ok(msgs)
}

/// What to tell a caller once the batch's commit is known.
enum Pending {
    Id(
        oneshot::Sender<Result<i64, StoreError>>,
        Result<i64, StoreError>,
    ),
    Unit(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    Post(OnCommit, Result<Posted, StoreError>),
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Write>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        let Ok(first) = rx.recv() else { return };
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let stop = apply_batch(&mut conn, &mut batch);
        if stop {
            return;
        }
    }
}

/// Applies a batch in one transaction and answers every caller after the
/// commit. Returns whether a shutdown was requested.
fn apply_batch(conn: &mut Connection, batch: &mut Vec<Write>) -> bool {
    let mut stop = false;
    let mut pending = Vec::with_capacity(batch.len());
    let ts = now_rfc3339();
    let tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!("cannot begin a transaction: {e}");
            for w in batch.drain(..) {
                fail(w);
            }
            return false;
        }
    };
    for w in batch.drain(..) {
        match w {
            Write::Shutdown => stop = true,
            Write::Register {
                name,
                pw_hash,
                token_hash,
                expires,
                reply,
            } => {
                let r = tx
                    .execute(
                        "INSERT INTO users (name, pw_hash) VALUES (?1, ?2)",
                        params![name, pw_hash],
                    )
                    .map_err(exists_or_db)
                    .and_then(|_| {
                        let id = tx.last_insert_rowid();
                        insert_token(&tx, &token_hash, id, expires)?;
                        Ok(id)
                    });
                pending.push(Pending::Id(reply, r));
            }
            Write::AddToken {
                user_id,
                token_hash,
                expires,
                reply,
            } => {
                let r = insert_token(&tx, &token_hash, user_id, expires).map_err(StoreError::from);
                pending.push(Pending::Unit(reply, r));
            }
            Write::CreateRoom {
                name,
                private,
                owner,
                reply,
            } => {
                let r = tx
                    .execute(
                        "INSERT INTO rooms (name, private, owner) VALUES (?1, ?2, ?3)",
                        params![name, private as i64, owner],
                    )
                    .map_err(exists_or_db)
                    .and_then(|_| {
                        let id = tx.last_insert_rowid();
                        tx.execute(
                            "INSERT INTO members (room_id, user_id) VALUES (?1, ?2)",
                            params![id, owner],
                        )?;
                        Ok(id)
                    });
                pending.push(Pending::Id(reply, r));
            }
            Write::AddMember { room, user, reply } => {
                let r = tx
                    .execute(
                        "INSERT OR IGNORE INTO members (room_id, user_id) VALUES (?1, ?2)",
                        params![room, user],
                    )
                    .map(|_| ())
                    .map_err(StoreError::from);
                pending.push(Pending::Unit(reply, r));
            }
            Write::Post {
                room,
                user,
                text,
                client_id,
                done,
            } => {
                let r = post(&tx, room, user, &text, &client_id, &ts);
                pending.push(Pending::Post(done, r));
            }
        }
    }
    // Nobody hears "done" before the commit returns: that is the durability
    // promise behind every ack.
    let committed = tx.commit();
    if let Err(e) = &committed {
        tracing::error!("commit failed, {} writes lost: {e}", pending.len());
    }
    for p in pending {
        let ok = committed.is_ok();
        match p {
            Pending::Id(reply, r) => {
                let _ = reply.send(if ok { r } else { Err(StoreError::Closed) });
            }
            Pending::Unit(reply, r) => {
                let _ = reply.send(if ok { r } else { Err(StoreError::Closed) });
            }
            Pending::Post(done, r) => done(if ok { r } else { Err(StoreError::Closed) }),
        }
    }
    stop
}

fn fail(w: Write) {
    match w {
        Write::Register { reply, .. } | Write::CreateRoom { reply, .. } => {
            let _ = reply.send(Err(StoreError::Closed));
        }
        Write::AddToken { reply, .. } | Write::AddMember { reply, .. } => {
            let _ = reply.send(Err(StoreError::Closed));
        }
        Write::Post { done, .. } => done(Err(StoreError::Closed)),
        Write::Shutdown => {}
    }
}

fn post(
    tx: &rusqlite::Transaction<'_>,
    room: i64,
    user: i64,
    text: &str,
    client_id: &str,
    ts: &str,
) -> Result<Posted, StoreError> {
    // The idempotence check runs inside the same transaction as the insert,
    // so two resends in one batch still store one message.
    let existing: Option<(i64, String)> = tx
        .prepare_cached("SELECT id, ts FROM messages WHERE user_id = ?1 AND client_id = ?2")?
        .query_row(params![user, client_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((id, ts)) = existing {
        return Ok(Posted {
            id,
            ts,
            duplicate: true,
        });
    }
    tx.prepare_cached(
        "INSERT INTO messages (room_id, user_id, client_id, text, ts) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![room, user, client_id, text, ts])?;
    Ok(Posted {
        id: tx.last_insert_rowid(),
        ts: ts.to_owned(),
        duplicate: false,
    })
}
