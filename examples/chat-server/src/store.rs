//! Persistence behind one interface ([`Engine`]), with two engines:
//!
//! * embedded SQLite (the default, described below): one process, one file;
//! * PostgreSQL ([`postgres`]): the database every node of a cluster shares.
//!
//! Both group commit, both answer a write only after its commit, and both
//! keep a [`StoreHealth`] that `/health` reports.
//!
//! ## SQLite: WAL mode, one writer thread with group commit, a small pool
//! of reader connections
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
//!
//! ## Telling the truth about the disk
//!
//! The store keeps its own health ([`StoreHealth`]): a write or commit that
//! the database refuses, or a database file that is gone or was replaced
//! under the server (its device and inode no longer match the file opened at
//! start), marks it failed, and every write is then answered with an error
//! instead of an ack. The writer checks the file's identity before each
//! batch and, when idle, every [`IDENTITY_CHECK_EVERY`]: one `stat` call.
//!
//! ## Schema versions
//!
//! `PRAGMA user_version` says which [`MIGRATIONS`] a database has had; at
//! start the missing ones run in order, each in its own transaction, so a
//! database written by an older server is brought forward in place.

use crate::protocol::ws::Msg;
use futures::future::BoxFuture;
use rusqlite::{params, Connection, OptionalExtension};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// Most writes applied in one transaction.
pub const MAX_BATCH: usize = 1024;
/// Rooms one user may own.
pub const ROOM_QUOTA: i64 = 100;
/// How often an idle writer checks that the database file is still the one
/// it opened.
pub const IDENTITY_CHECK_EVERY: Duration = Duration::from_secs(1);
const READERS: usize = 2;

pub mod postgres;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique name is already in use.
    #[error("already exists")]
    Exists,
    /// The user already owns [`ROOM_QUOTA`] rooms.
    #[error("room quota reached")]
    Quota,
    /// The store is failed (see [`StoreHealth`]); nothing was written.
    #[error("the store is failing: {0}")]
    Failed(String),
    /// The data directory or database file could not be prepared.
    #[error("{0}")]
    Io(String),
    /// The database failed; the operation did not happen.
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// PostgreSQL failed, or could not be reached; the operation did not
    /// happen.
    #[error("database error: {0}")]
    Pg(String),
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
    /// The same user already sent this `client_id` in this room: nothing
    /// was stored.
    pub duplicate: bool,
}

/// Called on the writer thread after the commit, in commit order.
pub type OnCommit = Box<dyn FnOnce(Result<Posted, StoreError>) + Send>;

/// A write for [`Store::write`]: runs on the writer thread, inside the
/// batch's transaction.
pub type OtherWrite = Box<dyn FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<i64> + Send>;

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
    /// The room's newest message id (0 for none).
    pub last_id: i64,
}

/// A row of the incident log (see [`crate::incidents`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentRow {
    /// Row id (0 before it is written).
    pub id: i64,
    /// Which limiter, or `store`.
    pub limiter: String,
    /// Why.
    pub cause: String,
    /// Start, unix milliseconds.
    pub started_ms: i64,
    /// End, unix milliseconds, if it ended.
    pub ended_ms: Option<i64>,
    /// What ended it.
    pub repaired_by: Option<String>,
    /// One line for people.
    pub summary: String,
}

/// What a store future resolves to.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// The storage interface the chat service uses, whichever engine is behind
/// it. Every write is acknowledged only after its commit.
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// The engine's name: `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;
    /// The store's own health.
    fn health(&self) -> &StoreHealth;
    /// Creates a user with its first token. `Exists` if the name is taken
    /// in any case.
    fn register(
        &self,
        name: String,
        pw_hash: String,
        token_hash: String,
        expires: i64,
    ) -> StoreFuture<'_, i64>;
    /// Stores a new token hash for a user.
    fn add_token(&self, user_id: i64, token_hash: String, expires: i64) -> StoreFuture<'_, ()>;
    /// Creates a room owned (and joined) by `owner`; `Exists`, or `Quota`
    /// when the owner already owns [`ROOM_QUOTA`] rooms.
    fn create_room(&self, name: String, private: bool, owner: i64) -> StoreFuture<'_, i64>;
    /// Adds a member to a room (idempotent).
    fn add_member(&self, room: i64, user: i64) -> StoreFuture<'_, ()>;
    /// Deletes a token (logout); deleting an unknown one is not an error.
    fn delete_token(&self, token_hash: String) -> StoreFuture<'_, ()>;
    /// Deletes every token that expired at or before `now` (unix seconds).
    fn purge_tokens(&self, now: i64) -> StoreFuture<'_, ()>;
    /// Queues a message; `done` runs after the commit, in commit order.
    /// A resend of a `client_id` the user already used in the room stores
    /// nothing and answers with the first message's id.
    fn post(&self, room: i64, user: i64, text: String, client_id: String, done: OnCommit);
    /// A user's id and password hash, by name in any case.
    fn credentials(&self, name: String) -> StoreFuture<'_, Option<(i64, String)>>;
    /// The user behind a token hash that has not expired at `now`.
    fn user_by_token(&self, hash: String, now: i64) -> StoreFuture<'_, Option<(i64, String)>>;
    /// A user's id by name in any case.
    fn user_id(&self, name: String) -> StoreFuture<'_, Option<i64>>;
    /// Up to `limit` messages of a room before `before`, ascending by id.
    fn history(
        &self,
        room_id: i64,
        room: String,
        before: Option<i64>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<Msg>>;
    /// Up to `limit` messages of a room after `after`, ascending by id.
    fn history_after(
        &self,
        room_id: i64,
        room: String,
        after: i64,
        limit: u32,
    ) -> StoreFuture<'_, Vec<Msg>>;
    /// Every room with its members.
    fn load_rooms(&self) -> StoreFuture<'_, Vec<RoomRow>>;
    /// Every room that has messages: its id and newest message id.
    fn room_heads(&self) -> StoreFuture<'_, Vec<(i64, i64)>>;
    /// One room with its members, by name.
    fn load_room(&self, name: String) -> StoreFuture<'_, Option<RoomRow>>;
    /// Incidents this server left open (a crash): their rows.
    fn open_incidents(&self) -> StoreFuture<'_, Vec<IncidentRow>>;
    /// Writes an incident and drops those that started before `keep_from`
    /// (unix ms) or are more than `max_rows` older; answers its id.
    fn insert_incident(
        &self,
        row: IncidentRow,
        keep_from: i64,
        max_rows: i64,
    ) -> StoreFuture<'_, i64>;
    /// Records the end of an incident.
    fn end_incident(
        &self,
        id: i64,
        ended_ms: i64,
        repaired_by: String,
        summary: String,
    ) -> StoreFuture<'_, ()>;
    /// The newest `limit` incidents, newest first.
    fn recent_incidents(&self, limit: u32) -> StoreFuture<'_, Vec<IncidentRow>>;
    /// When the database was made (unix ms), and the incidents still open
    /// or ended at or after `from_ms`.
    fn incident_spans(&self, from_ms: i64) -> StoreFuture<'_, (Option<i64>, Vec<IncidentRow>)>;
    /// Commits what is queued and stops writing; later writes fail with
    /// [`StoreError::Closed`]. Blocks: call it off the async runtime.
    fn shutdown(&self);
}

/// The store, whichever engine is behind it.
pub type Store = dyn Engine;

/// Where the data lives: `--database`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// Embedded SQLite: `chat.db` in this directory.
    Sqlite(PathBuf),
    /// A PostgreSQL connection string (`postgres://…`).
    Postgres(String),
}

impl Database {
    /// `postgres://…` or `postgresql://…`, `sqlite://DIR`, or none (the
    /// data directory).
    pub fn parse(url: Option<&str>, data: &Path) -> Result<Database, StoreError> {
        match url {
            None | Some("") => Ok(Database::Sqlite(data.to_owned())),
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Ok(Database::Postgres(u.to_owned()))
            }
            Some(u) => match u.strip_prefix("sqlite://") {
                Some(dir) if !dir.is_empty() => Ok(Database::Sqlite(dir.into())),
                _ => Err(StoreError::Io(format!(
                    "--database must be postgres://… or sqlite://DIR, not {u}"
                ))),
            },
        }
    }
}

/// Opens the store: SQLite (on a blocking thread) or PostgreSQL. `node`
/// names this server in shared tables (its incidents).
pub async fn open(db: &Database, max_batch: usize, node: &str) -> Result<Arc<Store>, StoreError> {
    match db {
        Database::Sqlite(dir) => {
            let dir = dir.clone();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&dir, max_batch))
                .await
                .map_err(|e| StoreError::Io(e.to_string()))??;
            Ok(Arc::new(store))
        }
        Database::Postgres(url) => {
            let store = postgres::PgStore::open(url, max_batch, node).await?;
            Ok(Arc::new(store))
        }
    }
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
    DeleteToken {
        token_hash: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    PurgeTokens {
        now: i64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Anything else, off the hot path (incidents): runs in the batch's
    /// transaction; its result is answered after the commit.
    Other {
        apply: OtherWrite,
        reply: oneshot::Sender<Result<i64, StoreError>>,
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

/// Whether the store can be trusted with a write right now, and the last
/// thing that went wrong. Shared by the writer thread (which sets it) and
/// `/health` (which reports it).
#[derive(Debug)]
pub struct StoreHealth {
    failed: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Whether the store is ok, for those who follow its changes.
    changes: tokio::sync::watch::Sender<bool>,
}

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth {
            failed: AtomicBool::new(false),
            last_error: Mutex::new(None),
            changes: tokio::sync::watch::Sender::new(true),
        }
    }
}

impl StoreHealth {
    /// Whether the last batch committed and the database file is the one
    /// opened at start.
    pub fn ok(&self) -> bool {
        !self.failed.load(Ordering::Acquire)
    }

    /// The last failure seen, if any (kept after recovery, for the record).
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Follows the store's health: `true` while ok.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.changes.subscribe()
    }

    pub(crate) fn fail(&self, what: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(what.clone());
        // Log once per failure episode, not once per write.
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!("store failed: {what}; writes are refused until it recovers");
            self.changes.send_replace(false);
        }
    }

    pub(crate) fn recover(&self) {
        if self.failed.swap(false, Ordering::AcqRel) {
            tracing::warn!("store recovered: a batch committed again");
            self.changes.send_replace(true);
        }
    }
}

/// The identity of the database file: if it changes, the file was deleted
/// or replaced under the server, and whatever the writer commits goes to a
/// file nobody will open again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

fn file_id(path: &Path) -> std::io::Result<FileId> {
    let m = std::fs::metadata(path)?;
    Ok(FileId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// The SQLite engine; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct SqliteStore {
    writer: Mutex<Option<mpsc::Sender<Write>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<Readers>,
    health: Arc<StoreHealth>,
}

/// The SQLite reader connections, used in turn.
#[derive(Debug)]
struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

/// Creates the data directory owner-only (0700), or narrows an existing
/// one, and creates the database file owner-only (0600), or narrows it:
/// the file holds password hashes and the history of private rooms.
fn prepare_files(dir: &Path) -> Result<PathBuf, StoreError> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        StoreError::Io(format!("cannot {what} {}: {e}", p.display()))
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io("create", dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("restrict", dir, e))?;
    let path = dir.join("chat.db");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io("create", &path, e))?;
    restrict_files(&path)?;
    Ok(path)
}

/// Narrows the database file and its WAL companions to 0600. SQLite gives
/// the companions the database file's mode when it creates them, but files
/// left by an older server keep whatever mode they had.
fn restrict_files(path: &Path) -> Result<(), StoreError> {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Io(format!(
                    "cannot restrict {}: {e}",
                    p.display()
                )))
            }
        }
    }
    Ok(())
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // WAL lets readers run beside the writer; FULL makes each commit
    // durable against power loss, which group commit makes affordable.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// The first schema. Never edited: later changes are [`MIGRATIONS`].
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

/// Schema changes after [`SCHEMA`], in order; database version `n` has had
/// the first `n`.
pub const MIGRATIONS: &[&str] = &[
    // 1: `client_id` is unique per (user, room), not per user: the same id in
    // another room is another message. SQLite cannot change a table's
    // constraints, so the table is rebuilt; ids are copied as they are.
    "CREATE TABLE messages_v1 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        room_id INTEGER NOT NULL REFERENCES rooms(id),
        user_id INTEGER NOT NULL REFERENCES users(id),
        client_id TEXT NOT NULL,
        text TEXT NOT NULL,
        ts TEXT NOT NULL,
        UNIQUE (user_id, room_id, client_id)
    );
    INSERT INTO messages_v1 (id, room_id, user_id, client_id, text, ts)
        SELECT id, room_id, user_id, client_id, text, ts FROM messages ORDER BY id;
    DROP TABLE messages;
    ALTER TABLE messages_v1 RENAME TO messages;
    CREATE INDEX messages_room ON messages(room_id, id);",
    // 2: names are one name whatever their case. Lookups and the uniqueness
    // check use NOCASE; the index makes them fast. (Not UNIQUE: a database
    // from before may hold `alice` and `Alice`; both keep working, the older
    // one answers to the name, and no new pair can be made.)
    "CREATE INDEX users_name_nocase ON users(name COLLATE NOCASE);
    CREATE INDEX tokens_expires ON tokens(expires);
    CREATE INDEX rooms_owner ON rooms(owner);",
    // 3: incidents for the status page (see `crate::incidents`), and when
    // this database was made, so uptime is not claimed for days before it.
    "CREATE TABLE incidents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        limiter TEXT NOT NULL,
        cause TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        ended_ms INTEGER,
        repaired_by TEXT,
        summary TEXT NOT NULL
    );
    CREATE INDEX incidents_started ON incidents(started_ms);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (key, value) VALUES ('created_ms', CAST(unixepoch('subsec') * 1000 AS INTEGER));",
];

/// Brings a database to the current schema.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
        tracing::info!("database migrated to schema version {}", i + 1);
    }
    Ok(())
}

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

impl SqliteStore {
    /// Opens (creating if needed) `dir/chat.db` and starts the writer thread.
    ///
    /// `max_batch` caps the writes committed together (at most
    /// [`MAX_BATCH`]); 1 turns group commit off, for comparison.
    pub fn open(dir: &Path, max_batch: usize) -> Result<SqliteStore, StoreError> {
        let max_batch = max_batch.clamp(1, MAX_BATCH);
        let path = prepare_files(dir)?;
        let mut conn = open_conn(&path)?;
        migrate(&mut conn)?;
        let conns = (0..READERS)
            .map(|_| open_conn(&path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        restrict_files(&path)?;
        let id = file_id(&path)
            .map_err(|e| StoreError::Io(format!("cannot stat {}: {e}", path.display())))?;
        let health = Arc::new(StoreHealth::default());
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            conn,
            path,
            id,
            health: health.clone(),
            max_batch,
        };
        let thread = std::thread::Builder::new()
            .name("chat-db-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Io(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            readers: Arc::new(Readers {
                conns,
                next: AtomicUsize::new(0),
            }),
            health,
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
        fail(w, StoreError::Closed);
        Err(StoreError::Closed)
    }

    fn call<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Write,
    ) -> StoreFuture<'static, T> {
        let (tx, rx) = oneshot::channel();
        // On failure `send` has already answered through `tx`.
        let _ = self.send(make(tx));
        Box::pin(async move { rx.await.map_err(|_| StoreError::Closed)? })
    }

    /// Runs `apply` on the writer thread in its next batch's transaction
    /// and answers with its result once that commits: for writes that are
    /// not on any request's path and not worth a variant of their own.
    fn write(
        &self,
        apply: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<i64> + Send + 'static,
    ) -> StoreFuture<'static, i64> {
        self.call(|reply| Write::Other {
            apply: Box::new(apply),
            reply,
        })
    }

    /// Runs a read on a pooled connection, off the async runtime.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        let readers = self.readers.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let i = readers.next.fetch_add(1, Ordering::Relaxed) % readers.conns.len();
                let conn = readers.conns[i].lock().unwrap_or_else(|p| p.into_inner());
                f(&conn).map_err(StoreError::from)
            })
            .await
            .map_err(|_| StoreError::Closed)?
        })
    }
}

impl Engine for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn health(&self) -> &StoreHealth {
        &self.health
    }

    fn register(
        &self,
        name: String,
        pw_hash: String,
        token_hash: String,
        expires: i64,
    ) -> StoreFuture<'_, i64> {
        self.call(|reply| Write::Register {
            name,
            pw_hash,
            token_hash,
            expires,
            reply,
        })
    }

    fn add_token(&self, user_id: i64, token_hash: String, expires: i64) -> StoreFuture<'_, ()> {
        self.call(|reply| Write::AddToken {
            user_id,
            token_hash,
            expires,
            reply,
        })
    }

    fn create_room(&self, name: String, private: bool, owner: i64) -> StoreFuture<'_, i64> {
        self.call(|reply| Write::CreateRoom {
            name,
            private,
            owner,
            reply,
        })
    }

    fn add_member(&self, room: i64, user: i64) -> StoreFuture<'_, ()> {
        self.call(|reply| Write::AddMember { room, user, reply })
    }

    fn delete_token(&self, token_hash: String) -> StoreFuture<'_, ()> {
        self.call(|reply| Write::DeleteToken { token_hash, reply })
    }

    fn purge_tokens(&self, now: i64) -> StoreFuture<'_, ()> {
        self.call(|reply| Write::PurgeTokens { now, reply })
    }

    fn post(&self, room: i64, user: i64, text: String, client_id: String, done: OnCommit) {
        // On failure `send` has already called `done` with the error.
        let _ = self.send(Write::Post {
            room,
            user,
            text,
            client_id,
            done,
        });
    }

    fn credentials(&self, name: String) -> StoreFuture<'_, Option<(i64, String)>> {
        self.read(move |c| credentials(c, &name))
    }

    fn user_by_token(&self, hash: String, now: i64) -> StoreFuture<'_, Option<(i64, String)>> {
        self.read(move |c| user_by_token(c, &hash, now))
    }

    fn user_id(&self, name: String) -> StoreFuture<'_, Option<i64>> {
        self.read(move |c| user_id(c, &name))
    }

    fn history(
        &self,
        room_id: i64,
        room: String,
        before: Option<i64>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<Msg>> {
        self.read(move |c| history(c, room_id, &room, before, limit))
    }

    fn history_after(
        &self,
        room_id: i64,
        room: String,
        after: i64,
        limit: u32,
    ) -> StoreFuture<'_, Vec<Msg>> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT m.id, u.name, m.text, m.ts FROM messages m JOIN users u ON u.id = m.user_id
                 WHERE m.room_id = ?1 AND m.id > ?2 ORDER BY m.id LIMIT ?3",
            )?
            .query_map(params![room_id, after, limit], |r| {
                Ok(Msg {
                    id: r.get(0)?,
                    room: room.clone(),
                    from: r.get(1)?,
                    text: r.get(2)?,
                    ts: r.get(3)?,
                })
            })?
            .collect()
        })
    }

    fn load_rooms(&self) -> StoreFuture<'_, Vec<RoomRow>> {
        self.read(|c| load_rooms(c, None))
    }

    fn room_heads(&self) -> StoreFuture<'_, Vec<(i64, i64)>> {
        self.read(|c| {
            c.prepare_cached("SELECT room_id, MAX(id) FROM messages GROUP BY room_id")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
    }

    fn load_room(&self, name: String) -> StoreFuture<'_, Option<RoomRow>> {
        self.read(move |c| Ok(load_rooms(c, Some(&name))?.pop()))
    }

    fn open_incidents(&self) -> StoreFuture<'_, Vec<IncidentRow>> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "{INCIDENT_COLUMNS} FROM incidents WHERE ended_ms IS NULL ORDER BY id"
            ))?
            .query_map([], incident_row)?
            .collect()
        })
    }

    fn insert_incident(
        &self,
        row: IncidentRow,
        keep_from: i64,
        max_rows: i64,
    ) -> StoreFuture<'_, i64> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO incidents (limiter, cause, started_ms, ended_ms, repaired_by, summary)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    row.limiter,
                    row.cause,
                    row.started_ms,
                    row.ended_ms,
                    row.repaired_by,
                    row.summary
                ],
            )?;
            let id = tx.last_insert_rowid();
            tx.execute(
                "DELETE FROM incidents WHERE started_ms < ?1 OR id <= ?2",
                params![keep_from, id - max_rows],
            )?;
            Ok(id)
        })
    }

    fn end_incident(
        &self,
        id: i64,
        ended_ms: i64,
        repaired_by: String,
        summary: String,
    ) -> StoreFuture<'_, ()> {
        let w = self.write(move |tx| {
            tx.execute(
                "UPDATE incidents SET ended_ms = ?1, repaired_by = ?2, summary = ?3 WHERE id = ?4",
                params![ended_ms, repaired_by, summary, id],
            )?;
            Ok(id)
        });
        Box::pin(async move { w.await.map(|_| ()) })
    }

    fn recent_incidents(&self, limit: u32) -> StoreFuture<'_, Vec<IncidentRow>> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "{INCIDENT_COLUMNS} FROM incidents ORDER BY id DESC LIMIT ?1"
            ))?
            .query_map([limit], incident_row)?
            .collect()
        })
    }

    fn incident_spans(&self, from_ms: i64) -> StoreFuture<'_, (Option<i64>, Vec<IncidentRow>)> {
        self.read(move |c| {
            let created: Option<i64> = c
                .query_row("SELECT value FROM meta WHERE key = 'created_ms'", [], |r| {
                    r.get(0)
                })
                .optional()?;
            let rows = c
                .prepare_cached(&format!(
                    "{INCIDENT_COLUMNS} FROM incidents WHERE ended_ms IS NULL OR ended_ms >= ?1"
                ))?
                .query_map([from_ms], incident_row)?
                .collect::<rusqlite::Result<_>>()?;
            Ok((created, rows))
        })
    }

    fn shutdown(&self) {
        let tx = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(Write::Shutdown);
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

const INCIDENT_COLUMNS: &str =
    "SELECT id, limiter, cause, started_ms, ended_ms, repaired_by, summary";

fn incident_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IncidentRow> {
    Ok(IncidentRow {
        id: r.get(0)?,
        limiter: r.get(1)?,
        cause: r.get(2)?,
        started_ms: r.get(3)?,
        ended_ms: r.get(4)?,
        repaired_by: r.get(5)?,
        summary: r.get(6)?,
    })
}

/// Every room (or the one named) with its members.
fn load_rooms(conn: &Connection, only: Option<&str>) -> rusqlite::Result<Vec<RoomRow>> {
    let mut rooms = conn
        .prepare_cached(
            "SELECT r.id, r.name, r.private, u.name,
                    (SELECT COALESCE(MAX(m.id), 0) FROM messages m WHERE m.room_id = r.id)
             FROM rooms r LEFT JOIN users u ON u.id = r.owner
             WHERE ?1 IS NULL OR r.name = ?1 ORDER BY r.id",
        )?
        .query_map([only], |r| {
            Ok(RoomRow {
                id: r.get(0)?,
                name: r.get(1)?,
                private: r.get::<_, i64>(2)? != 0,
                owner: r.get(3)?,
                members: Vec::new(),
                last_id: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut stmt = conn.prepare_cached("SELECT user_id FROM members WHERE room_id = ?1")?;
    for room in &mut rooms {
        room.members = stmt
            .query_map([room.id], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?;
    }
    Ok(rooms)
}

impl Drop for SqliteStore {
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
    conn.prepare_cached(
        "SELECT id, pw_hash FROM users WHERE name = ?1 COLLATE NOCASE ORDER BY id LIMIT 1",
    )?
    .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()
}

/// A user's id by name.
pub fn user_id(conn: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT id FROM users WHERE name = ?1 COLLATE NOCASE ORDER BY id LIMIT 1")?
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

/// The writer thread's state: the one connection that writes.
struct Writer {
    conn: Connection,
    path: PathBuf,
    /// The database file's identity when it was opened.
    id: FileId,
    health: Arc<StoreHealth>,
    max_batch: usize,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Write>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            let first = match rx.recv_timeout(IDENTITY_CHECK_EVERY) {
                Ok(w) => w,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Idle: still notice a file deleted or replaced, so
                    // `/health` says so before the next write is lost.
                    let _ = self.check_file();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            batch.push(first);
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            if self.apply(&mut batch) {
                return;
            }
        }
    }

    /// Whether the database file is still the one opened at start. A
    /// deleted or replaced file fails the store for good: the writer's
    /// connection would go on committing to an unlinked inode.
    fn check_file(&self) -> Result<(), String> {
        let problem = match file_id(&self.path) {
            Ok(id) if id == self.id => return Ok(()),
            Ok(_) => format!(
                "the database file {} was replaced under the server; restart it",
                self.path.display()
            ),
            Err(e) => format!(
                "the database file {} is gone ({e}); restart the server",
                self.path.display()
            ),
        };
        self.health.fail(problem.clone());
        Err(problem)
    }

    /// Applies a batch in one transaction and answers every caller after the
    /// commit. Returns whether a shutdown was requested.
    fn apply(&mut self, batch: &mut Vec<Write>) -> bool {
        if let Err(problem) = self.check_file() {
            let stop = batch.iter().any(|w| matches!(w, Write::Shutdown));
            for w in batch.drain(..) {
                fail(w, StoreError::Failed(problem.clone()));
            }
            return stop;
        }
        let health = self.health.clone();
        let (stop, outcome) = apply_batch(&mut self.conn, batch);
        match outcome {
            Ok(()) => health.recover(),
            Err(e) => health.fail(e),
        }
        stop
    }
}

/// Applies a batch in one transaction and answers every caller after the
/// commit. Returns whether a shutdown was requested, and the database error
/// that failed the batch or one of its writes, if any.
fn apply_batch(conn: &mut Connection, batch: &mut Vec<Write>) -> (bool, Result<(), String>) {
    let mut stop = false;
    let mut pending = Vec::with_capacity(batch.len());
    let mut db_error = None;
    let ts = now_rfc3339();
    // IMMEDIATE takes the write lock up front, waiting for it under the
    // busy timeout, instead of upgrading a read mid-batch (which SQLite may
    // refuse at once when another process holds the lock).
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let what = format!("cannot begin a transaction: {e}");
            for w in batch.drain(..) {
                fail(w, StoreError::Failed(what.clone()));
            }
            return (false, Err(what));
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
                // The writer is the only one inserting, so this check and
                // the insert cannot race.
                let r = name_free(&tx, &name)
                    .and_then(|()| {
                        tx.execute(
                            "INSERT INTO users (name, pw_hash) VALUES (?1, ?2)",
                            params![name, pw_hash],
                        )
                        .map_err(exists_or_db)
                    })
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
                let r = within_quota(&tx, owner)
                    .and_then(|()| {
                        tx.execute(
                            "INSERT INTO rooms (name, private, owner) VALUES (?1, ?2, ?3)",
                            params![name, private as i64, owner],
                        )
                        .map_err(exists_or_db)
                    })
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
            Write::DeleteToken { token_hash, reply } => {
                let r = tx
                    .execute("DELETE FROM tokens WHERE hash = ?1", [token_hash])
                    .map(|_| ())
                    .map_err(StoreError::from);
                pending.push(Pending::Unit(reply, r));
            }
            Write::Other { apply, reply } => {
                pending.push(Pending::Id(reply, apply(&tx).map_err(StoreError::from)));
            }
            Write::PurgeTokens { now, reply } => {
                let r = tx
                    .execute("DELETE FROM tokens WHERE expires <= ?1", [now])
                    .map(|n| {
                        if n > 0 {
                            tracing::info!(deleted = n, "expired tokens deleted");
                        }
                    })
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
    for p in &pending {
        if let Some(StoreError::Db(e)) = p.error() {
            db_error.get_or_insert_with(|| format!("a write failed: {e}"));
        }
    }
    // Nobody hears "done" before the commit returns: that is the durability
    // promise behind every ack.
    let committed = tx.commit().map_err(|e| {
        let what = format!("commit failed, {} writes lost: {e}", pending.len());
        tracing::error!("{what}");
        what
    });
    fn failed<T>(
        committed: &Result<(), String>,
        r: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match committed {
            Ok(()) => r,
            Err(what) => Err(StoreError::Failed(what.clone())),
        }
    }
    for p in pending {
        match p {
            Pending::Id(reply, r) => {
                let _ = reply.send(failed(&committed, r));
            }
            Pending::Unit(reply, r) => {
                let _ = reply.send(failed(&committed, r));
            }
            Pending::Post(done, r) => done(failed(&committed, r)),
        }
    }
    let outcome = match (committed, db_error) {
        (Err(what), _) | (Ok(()), Some(what)) => Err(what),
        (Ok(()), None) => Ok(()),
    };
    (stop, outcome)
}

impl Pending {
    /// Tells the caller: only ever after the commit.
    fn answer(self) {
        match self {
            Pending::Id(reply, r) => {
                let _ = reply.send(r);
            }
            Pending::Unit(reply, r) => {
                let _ = reply.send(r);
            }
            Pending::Post(done, r) => done(r),
        }
    }

    fn error(&self) -> Option<&StoreError> {
        match self {
            Pending::Id(_, Err(e)) | Pending::Unit(_, Err(e)) | Pending::Post(_, Err(e)) => Some(e),
            _ => None,
        }
    }
}

/// Answers a write that will not be applied.
fn fail(w: Write, e: StoreError) {
    let e = || match &e {
        StoreError::Failed(what) => StoreError::Failed(what.clone()),
        _ => StoreError::Closed,
    };
    match w {
        Write::Register { reply, .. }
        | Write::CreateRoom { reply, .. }
        | Write::Other { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Write::AddToken { reply, .. }
        | Write::AddMember { reply, .. }
        | Write::DeleteToken { reply, .. }
        | Write::PurgeTokens { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Write::Post { done, .. } => done(Err(e())),
        Write::Shutdown => {}
    }
}

/// `Exists` if a user of that name, in any case, is already registered.
fn name_free(tx: &rusqlite::Transaction<'_>, name: &str) -> Result<(), StoreError> {
    let taken = tx
        .prepare_cached("SELECT 1 FROM users WHERE name = ?1 COLLATE NOCASE LIMIT 1")?
        .exists([name])?;
    if taken {
        Err(StoreError::Exists)
    } else {
        Ok(())
    }
}

/// `Quota` if `owner` already owns [`ROOM_QUOTA`] rooms.
fn within_quota(tx: &rusqlite::Transaction<'_>, owner: i64) -> Result<(), StoreError> {
    let owned: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM rooms WHERE owner = ?1")?
        .query_row([owner], |r| r.get(0))?;
    if owned >= ROOM_QUOTA {
        Err(StoreError::Quota)
    } else {
        Ok(())
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
        .prepare_cached(
            "SELECT id, ts FROM messages WHERE user_id = ?1 AND room_id = ?2 AND client_id = ?3",
        )?
        .query_row(params![user, room, client_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
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
