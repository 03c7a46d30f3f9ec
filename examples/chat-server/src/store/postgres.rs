//! The PostgreSQL engine: the database every node of a cluster shares.
//!
//! Writes go through one writer task per node, with group commit as on
//! SQLite: it takes every write already queued (up to the batch size) and
//! applies them in one transaction, messages with one multi-row insert,
//! and answers the callers only after the commit.
//!
//! ## Message ids across nodes
//!
//! A message's id is its room's sequence number: `rooms.last_seq` is raised
//! by the batch's message count in the committing transaction, under the
//! room row's lock. Two nodes posting in one room therefore commit one
//! after the other, ids in a room increase strictly in commit order with no
//! gaps, and a node that sees id `n + 2` after `n` knows one is missing and
//! can read it from the database (see [`crate::cluster`]). Rooms are locked
//! in id order so that two batches never deadlock.
//!
//! A resend of a `client_id` is found inside the transaction; if another
//! node stores the same resend at the same moment, the insert conflicts,
//! the batch is rolled back and applied again, and the resend is then found
//! as a duplicate. Sequence numbers are never spent on a row that was not
//! inserted.
//!
//! ## Health
//!
//! A batch that cannot reach the database, or whose commit fails, fails
//! the store: every write is answered with an error. An idle writer checks
//! the database every [`super::IDENTITY_CHECK_EVERY`], so `/health` notices
//! a database that went away before a write does, and recovers as soon as
//! it answers again.

use super::{
    now_rfc3339, Engine, IncidentRow, OnCommit, Pending, Posted, RoomRow, StoreError, StoreFuture,
    StoreHealth, Write, IDENTITY_CHECK_EVERY, MAX_BATCH, ROOM_QUOTA,
};
use crate::protocol::ws::Msg;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Connections in the pool (the writer uses one at a time; reads share
/// the rest).
const POOL_SIZE: usize = 8;
/// How long a write or read waits for a connection or an answer.
const TIMEOUT: Duration = Duration::from_secs(3);
/// How often a batch that lost a race with another node's resend is
/// applied again before its callers get an error.
const RETRIES: usize = 3;

/// Schema versions, in order; `schema_version` says how many a database
/// has had. Every node runs the missing ones at start, under an advisory
/// lock, so nodes starting together migrate once.
pub const MIGRATIONS: &[&str] = &[
    // 1: the whole schema of the SQLite store at its version 3, with names
    // unique in any case, per-room message sequences, and incidents tagged
    // with the node that saw them.
    "CREATE TABLE users (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL,
        pw_hash TEXT NOT NULL
    );
    CREATE UNIQUE INDEX users_name_lower ON users (lower(name));
    CREATE TABLE tokens (
        hash TEXT PRIMARY KEY,
        user_id BIGINT NOT NULL REFERENCES users(id),
        expires BIGINT NOT NULL
    );
    CREATE INDEX tokens_expires ON tokens(expires);
    CREATE TABLE rooms (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        private BOOLEAN NOT NULL,
        owner BIGINT REFERENCES users(id),
        last_seq BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX rooms_owner ON rooms(owner);
    CREATE TABLE members (
        room_id BIGINT NOT NULL REFERENCES rooms(id),
        user_id BIGINT NOT NULL REFERENCES users(id),
        PRIMARY KEY (room_id, user_id)
    );
    CREATE TABLE messages (
        room_id BIGINT NOT NULL REFERENCES rooms(id),
        seq BIGINT NOT NULL,
        user_id BIGINT NOT NULL REFERENCES users(id),
        client_id TEXT NOT NULL,
        text TEXT NOT NULL,
        ts TEXT NOT NULL,
        PRIMARY KEY (room_id, seq),
        UNIQUE (user_id, room_id, client_id)
    );
    CREATE TABLE incidents (
        id BIGSERIAL PRIMARY KEY,
        node TEXT NOT NULL,
        limiter TEXT NOT NULL,
        cause TEXT NOT NULL,
        started_ms BIGINT NOT NULL,
        ended_ms BIGINT,
        repaired_by TEXT,
        summary TEXT NOT NULL
    );
    CREATE INDEX incidents_started ON incidents(started_ms);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO meta (key, value)
        VALUES ('created_ms', (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT);
    INSERT INTO rooms (name, private, owner) VALUES ('general', false, NULL);",
];

/// Any key, as long as every node uses the same one.
const MIGRATION_LOCK: i64 = 0x6368_6174; // "chat"

fn pg(e: impl std::fmt::Display) -> StoreError {
    StoreError::Pg(e.to_string())
}

/// The PostgreSQL engine.
#[derive(Debug)]
pub struct PgStore {
    pool: Pool,
    node: String,
    writer: Mutex<Option<mpsc::UnboundedSender<Write>>>,
    stopped: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    health: Arc<StoreHealth>,
}

impl PgStore {
    /// Connects, migrates and starts the writer task. `node` tags this
    /// server's incidents.
    pub async fn open(url: &str, max_batch: usize, node: &str) -> Result<PgStore, StoreError> {
        let config: tokio_postgres::Config = url.parse().map_err(pg)?;
        let mut config = config;
        config.connect_timeout(TIMEOUT);
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(TIMEOUT))
            .create_timeout(Some(TIMEOUT))
            .recycle_timeout(Some(TIMEOUT))
            .build()
            .map_err(pg)?;
        migrate(&pool).await?;
        let health = Arc::new(StoreHealth::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
        let writer = Writer {
            pool: pool.clone(),
            health: health.clone(),
            max_batch: max_batch.clamp(1, MAX_BATCH),
        };
        tokio::spawn(async move {
            writer.run(rx).await;
            let _ = stopped_tx.send(());
        });
        Ok(PgStore {
            pool,
            node: node.to_owned(),
            writer: Mutex::new(Some(tx)),
            stopped: Mutex::new(Some(stopped_rx)),
            health,
        })
    }

    fn send(&self, w: Write) {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let w = match guard.as_ref() {
            Some(tx) => match tx.send(w) {
                Ok(()) => return,
                Err(mpsc::error::SendError(w)) => w,
            },
            None => w,
        };
        drop(guard);
        super::fail(w, StoreError::Closed);
    }

    fn call<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Write,
    ) -> StoreFuture<'static, T> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx));
        Box::pin(async move { rx.await.map_err(|_| StoreError::Closed)? })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pg)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let c = self.client().await?;
        let stmt = c.prepare_cached(sql).await.map_err(pg)?;
        tokio::time::timeout(TIMEOUT, c.query(&stmt, params))
            .await
            .map_err(|_| StoreError::Pg("the database did not answer in time".into()))?
            .map_err(pg)
    }

    async fn rooms(&self, only: Option<&str>) -> Result<Vec<RoomRow>, StoreError> {
        let rows = self
            .query(
                "SELECT r.id, r.name, r.private, u.name, r.last_seq FROM rooms r
                 LEFT JOIN users u ON u.id = r.owner
                 WHERE $1::TEXT IS NULL OR r.name = $1 ORDER BY r.id",
                &[&only],
            )
            .await?;
        let mut rooms: Vec<RoomRow> = rows
            .iter()
            .map(|r| RoomRow {
                id: r.get(0),
                name: r.get(1),
                private: r.get(2),
                owner: r.get(3),
                members: Vec::new(),
                last_id: r.get(4),
            })
            .collect();
        let ids: Vec<i64> = rooms.iter().map(|r| r.id).collect();
        let members = self
            .query(
                "SELECT room_id, user_id FROM members WHERE room_id = ANY($1)",
                &[&ids],
            )
            .await?;
        let mut by_room: HashMap<i64, Vec<i64>> = HashMap::new();
        for m in &members {
            by_room.entry(m.get(0)).or_default().push(m.get(1));
        }
        for r in &mut rooms {
            r.members = by_room.remove(&r.id).unwrap_or_default();
        }
        Ok(rooms)
    }
}

async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut c = pool.get().await.map_err(pg)?;
    let tx = c.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .await
        .map_err(pg)?;
    let version: i32 = tx
        .query_opt("SELECT version FROM schema_version", &[])
        .await
        .map_err(pg)?
        .map_or(0, |r| r.get(0));
    if version == 0 {
        tx.execute("INSERT INTO schema_version (version) VALUES (0)", &[])
            .await
            .map_err(pg)?;
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tx.batch_execute(step).await.map_err(pg)?;
        tx.execute("UPDATE schema_version SET version = $1", &[&(i as i32 + 1)])
            .await
            .map_err(pg)?;
        tracing::info!("database migrated to schema version {}", i + 1);
    }
    tx.commit().await.map_err(pg)
}

fn incident(r: &tokio_postgres::Row) -> IncidentRow {
    IncidentRow {
        id: r.get(0),
        limiter: r.get(1),
        cause: r.get(2),
        started_ms: r.get(3),
        ended_ms: r.get(4),
        repaired_by: r.get(5),
        summary: r.get(6),
    }
}

const INCIDENT_COLUMNS: &str =
    "SELECT id, limiter, cause, started_ms, ended_ms, repaired_by, summary FROM incidents";

fn msgs(rows: &[tokio_postgres::Row], room: &str) -> Vec<Msg> {
    rows.iter()
        .map(|r| Msg {
            id: r.get(0),
            room: room.to_owned(),
            from: r.get(1),
            text: r.get(2),
            ts: r.get(3),
        })
        .collect()
}

impl Engine for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
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
        self.send(Write::Post {
            room,
            user,
            text,
            client_id,
            done,
        });
    }

    fn credentials(&self, name: String) -> StoreFuture<'_, Option<(i64, String)>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "SELECT id, pw_hash FROM users WHERE lower(name) = lower($1)",
                    &[&name],
                )
                .await?;
            Ok(rows.first().map(|r| (r.get(0), r.get(1))))
        })
    }

    fn user_by_token(&self, hash: String, now: i64) -> StoreFuture<'_, Option<(i64, String)>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "SELECT u.id, u.name FROM tokens t JOIN users u ON u.id = t.user_id
                     WHERE t.hash = $1 AND t.expires > $2",
                    &[&hash, &now],
                )
                .await?;
            Ok(rows.first().map(|r| (r.get(0), r.get(1))))
        })
    }

    fn user_id(&self, name: String) -> StoreFuture<'_, Option<i64>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "SELECT id FROM users WHERE lower(name) = lower($1)",
                    &[&name],
                )
                .await?;
            Ok(rows.first().map(|r| r.get(0)))
        })
    }

    fn history(
        &self,
        room_id: i64,
        room: String,
        before: Option<i64>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<Msg>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "SELECT m.seq, u.name, m.text, m.ts FROM messages m
                     JOIN users u ON u.id = m.user_id
                     WHERE m.room_id = $1 AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3",
                    &[&room_id, &before.unwrap_or(i64::MAX), &i64::from(limit)],
                )
                .await?;
            let mut out = msgs(&rows, &room);
            out.reverse();
            Ok(out)
        })
    }

    fn history_after(
        &self,
        room_id: i64,
        room: String,
        after: i64,
        limit: u32,
    ) -> StoreFuture<'_, Vec<Msg>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "SELECT m.seq, u.name, m.text, m.ts FROM messages m
                     JOIN users u ON u.id = m.user_id
                     WHERE m.room_id = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3",
                    &[&room_id, &after, &i64::from(limit)],
                )
                .await?;
            Ok(msgs(&rows, &room))
        })
    }

    fn load_rooms(&self) -> StoreFuture<'_, Vec<RoomRow>> {
        Box::pin(self.rooms(None))
    }

    fn room_heads(&self) -> StoreFuture<'_, Vec<(i64, i64)>> {
        Box::pin(async move {
            let rows = self
                .query("SELECT id, last_seq FROM rooms WHERE last_seq > 0", &[])
                .await?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn load_room(&self, name: String) -> StoreFuture<'_, Option<RoomRow>> {
        Box::pin(async move { Ok(self.rooms(Some(&name)).await?.pop()) })
    }

    fn open_incidents(&self) -> StoreFuture<'_, Vec<IncidentRow>> {
        Box::pin(async move {
            let rows = self
                .query(
                    &format!("{INCIDENT_COLUMNS} WHERE ended_ms IS NULL AND node = $1 ORDER BY id"),
                    &[&self.node],
                )
                .await?;
            Ok(rows.iter().map(incident).collect())
        })
    }

    fn insert_incident(
        &self,
        row: IncidentRow,
        keep_from: i64,
        max_rows: i64,
    ) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            let rows = self
                .query(
                    "INSERT INTO incidents (node, limiter, cause, started_ms, ended_ms, repaired_by, summary)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                    &[
                        &self.node,
                        &row.limiter,
                        &row.cause,
                        &row.started_ms,
                        &row.ended_ms,
                        &row.repaired_by,
                        &row.summary,
                    ],
                )
                .await?;
            let id: i64 = rows.first().map_or(0, |r| r.get(0));
            self.query(
                "DELETE FROM incidents WHERE started_ms < $1 OR id <= $2",
                &[&keep_from, &(id - max_rows)],
            )
            .await?;
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
        Box::pin(async move {
            self.query(
                "UPDATE incidents SET ended_ms = $1, repaired_by = $2, summary = $3 WHERE id = $4",
                &[&ended_ms, &repaired_by, &summary, &id],
            )
            .await
            .map(|_| ())
        })
    }

    fn recent_incidents(&self, limit: u32) -> StoreFuture<'_, Vec<IncidentRow>> {
        Box::pin(async move {
            let rows = self
                .query(
                    &format!("{INCIDENT_COLUMNS} ORDER BY id DESC LIMIT $1"),
                    &[&i64::from(limit)],
                )
                .await?;
            Ok(rows.iter().map(incident).collect())
        })
    }

    fn incident_spans(&self, from_ms: i64) -> StoreFuture<'_, (Option<i64>, Vec<IncidentRow>)> {
        Box::pin(async move {
            let created = self
                .query("SELECT value FROM meta WHERE key = 'created_ms'", &[])
                .await?
                .first()
                .map(|r| r.get(0));
            let rows = self
                .query(
                    &format!("{INCIDENT_COLUMNS} WHERE ended_ms IS NULL OR ended_ms >= $1"),
                    &[&from_ms],
                )
                .await?;
            Ok((created, rows.iter().map(incident).collect()))
        })
    }

    fn shutdown(&self) {
        let tx = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(Write::Shutdown);
        }
        let stopped = self
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(rx) = stopped {
            // The writer runs on the async runtime; this thread only waits.
            let _ = rx.recv_timeout(TIMEOUT * 2);
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // No waiting here: the writer may need this very thread's runtime.
        let _ = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map(|tx| tx.send(Write::Shutdown));
    }
}

/// The writer task.
struct Writer {
    pool: Pool,
    health: Arc<StoreHealth>,
    max_batch: usize,
}

/// Why a batch was not committed.
enum BatchError {
    /// Another node stored one of the batch's resends meanwhile: apply the
    /// batch again.
    Raced,
    /// The database failed.
    Failed(String),
}

impl From<tokio_postgres::Error> for BatchError {
    fn from(e: tokio_postgres::Error) -> Self {
        BatchError::Failed(e.to_string())
    }
}

/// A write of the batch, without its reply.
enum Op {
    Nothing,
    Register(String, String, String, i64),
    AddToken(i64, String, i64),
    CreateRoom(String, bool, i64),
    AddMember(i64, i64),
    DeleteToken(String),
    PurgeTokens(i64),
}

/// A message of the batch waiting for its id.
struct NewPost {
    room: i64,
    user: i64,
    text: String,
    client_id: String,
}

impl Writer {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Write>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            let first = match tokio::time::timeout(IDENTITY_CHECK_EVERY, rx.recv()).await {
                Ok(Some(w)) => w,
                Ok(None) => return,
                Err(_) => {
                    self.probe().await;
                    continue;
                }
            };
            batch.push(first);
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            let stop = batch.iter().any(|w| matches!(w, Write::Shutdown));
            self.apply(&mut batch).await;
            if stop {
                return;
            }
        }
    }

    /// An idle writer's check that the database still answers.
    async fn probe(&self) {
        let ok = async {
            let c = self.pool.get().await.map_err(|e| e.to_string())?;
            tokio::time::timeout(TIMEOUT, c.simple_query("SELECT 1"))
                .await
                .map_err(|_| "the database did not answer in time".to_owned())?
                .map_err(|e| e.to_string())
        }
        .await;
        match ok {
            Ok(_) => self.health.recover(),
            Err(e) => self
                .health
                .fail(format!("the database cannot be reached: {e}")),
        }
    }

    async fn apply(&self, batch: &mut Vec<Write>) {
        let mut outcome = Err(BatchError::Raced);
        for _ in 0..RETRIES {
            outcome = tokio::time::timeout(TIMEOUT, self.try_apply(batch))
                .await
                .unwrap_or_else(|_| {
                    Err(BatchError::Failed(
                        "the database did not answer in time".into(),
                    ))
                });
            if !matches!(outcome, Err(BatchError::Raced)) {
                break;
            }
        }
        match outcome {
            Ok(pending) => {
                self.health.recover();
                batch.clear();
                for p in pending {
                    p.answer();
                }
            }
            Err(e) => {
                let what = match e {
                    BatchError::Failed(e) => {
                        format!("a batch of {} writes failed: {e}", batch.len())
                    }
                    BatchError::Raced => "a batch kept racing other nodes' resends".to_owned(),
                };
                self.health.fail(what.clone());
                for w in batch.drain(..) {
                    super::fail(w, StoreError::Failed(what.clone()));
                }
            }
        }
    }

    /// Applies the batch in one transaction; on success the batch is
    /// consumed into answers to give after the commit (which has happened
    /// by then). On failure nothing is consumed, so the batch can be
    /// applied again or failed.
    async fn try_apply(&self, batch: &mut Vec<Write>) -> Result<Vec<Pending>, BatchError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| BatchError::Failed(e.to_string()))?;
        let tx = client.transaction().await?;
        let ts = now_rfc3339();
        // Results by position in the batch; messages are stored together
        // after the other writes.
        // What to do, copied out of the batch: the batch's callbacks are
        // not `Sync`, so no reference to it may be held across an await.
        let mut posts: Vec<(usize, NewPost)> = Vec::new();
        let ops: Vec<Op> = batch
            .iter()
            .enumerate()
            .map(|(i, w)| match w {
                Write::Shutdown | Write::Other { .. } => Op::Nothing,
                Write::Register {
                    name,
                    pw_hash,
                    token_hash,
                    expires,
                    ..
                } => Op::Register(name.clone(), pw_hash.clone(), token_hash.clone(), *expires),
                Write::AddToken {
                    user_id,
                    token_hash,
                    expires,
                    ..
                } => Op::AddToken(*user_id, token_hash.clone(), *expires),
                Write::CreateRoom {
                    name,
                    private,
                    owner,
                    ..
                } => Op::CreateRoom(name.clone(), *private, *owner),
                Write::AddMember { room, user, .. } => Op::AddMember(*room, *user),
                Write::DeleteToken { token_hash, .. } => Op::DeleteToken(token_hash.clone()),
                Write::PurgeTokens { now, .. } => Op::PurgeTokens(*now),
                Write::Post {
                    room,
                    user,
                    text,
                    client_id,
                    ..
                } => {
                    posts.push((
                        i,
                        NewPost {
                            room: *room,
                            user: *user,
                            text: text.clone(),
                            client_id: client_id.clone(),
                        },
                    ));
                    Op::Nothing
                }
            })
            .collect();
        let mut results: Vec<Option<Result<i64, StoreError>>> = Vec::with_capacity(ops.len());
        for op in &ops {
            let r = match op {
                Op::Nothing => None,
                Op::Register(name, pw_hash, token_hash, expires) => {
                    let row = tx
                        .query_opt(
                            "INSERT INTO users (name, pw_hash) VALUES ($1, $2)
                             ON CONFLICT DO NOTHING RETURNING id",
                            &[name, pw_hash],
                        )
                        .await?;
                    match row {
                        None => Some(Err(StoreError::Exists)),
                        Some(row) => {
                            let id: i64 = row.get(0);
                            tx.execute(
                                "INSERT INTO tokens (hash, user_id, expires) VALUES ($1, $2, $3)",
                                &[token_hash, &id, expires],
                            )
                            .await?;
                            Some(Ok(id))
                        }
                    }
                }
                Op::AddToken(user_id, token_hash, expires) => {
                    tx.execute(
                        "INSERT INTO tokens (hash, user_id, expires) VALUES ($1, $2, $3)",
                        &[token_hash, user_id, expires],
                    )
                    .await?;
                    Some(Ok(0))
                }
                Op::CreateRoom(name, private, owner) => {
                    // The owner's row lock makes the quota check and the
                    // insert one step across nodes.
                    tx.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[owner])
                        .await?;
                    let owned: i64 = tx
                        .query_one("SELECT COUNT(*) FROM rooms WHERE owner = $1", &[owner])
                        .await?
                        .get(0);
                    if owned >= ROOM_QUOTA {
                        Some(Err(StoreError::Quota))
                    } else {
                        let row = tx
                            .query_opt(
                                "INSERT INTO rooms (name, private, owner) VALUES ($1, $2, $3)
                                 ON CONFLICT DO NOTHING RETURNING id",
                                &[name, private, owner],
                            )
                            .await?;
                        match row {
                            None => Some(Err(StoreError::Exists)),
                            Some(row) => {
                                let id: i64 = row.get(0);
                                tx.execute(
                                    "INSERT INTO members (room_id, user_id) VALUES ($1, $2)",
                                    &[&id, owner],
                                )
                                .await?;
                                Some(Ok(id))
                            }
                        }
                    }
                }
                Op::AddMember(room, user) => {
                    tx.execute(
                        "INSERT INTO members (room_id, user_id) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING",
                        &[room, user],
                    )
                    .await?;
                    Some(Ok(0))
                }
                Op::DeleteToken(token_hash) => {
                    tx.execute("DELETE FROM tokens WHERE hash = $1", &[token_hash])
                        .await?;
                    Some(Ok(0))
                }
                Op::PurgeTokens(now) => {
                    let n = tx
                        .execute("DELETE FROM tokens WHERE expires <= $1", &[now])
                        .await?;
                    if n > 0 {
                        tracing::info!(deleted = n, "expired tokens deleted");
                    }
                    Some(Ok(0))
                }
            };
            results.push(r);
        }
        let posted = store_posts(&tx, &posts, &ts).await?;
        tx.commit().await?;
        // Committed: turn the batch into answers, in batch order.
        let mut posted = posted.into_iter();
        let mut pending = Vec::with_capacity(batch.len());
        for (w, r) in batch.drain(..).zip(results) {
            match w {
                Write::Shutdown => {}
                Write::Other { reply, .. } => {
                    let _ = reply.send(Err(StoreError::Closed));
                }
                Write::Register { reply, .. } | Write::CreateRoom { reply, .. } => {
                    pending.push(Pending::Id(reply, r.unwrap_or(Err(StoreError::Closed))));
                }
                Write::AddToken { reply, .. }
                | Write::AddMember { reply, .. }
                | Write::DeleteToken { reply, .. }
                | Write::PurgeTokens { reply, .. } => {
                    let r = r.unwrap_or(Err(StoreError::Closed)).map(|_| ());
                    pending.push(Pending::Unit(reply, r));
                }
                Write::Post { done, .. } => {
                    let p = posted.next().ok_or(StoreError::Closed);
                    pending.push(Pending::Post(done, p));
                }
            }
        }
        Ok(pending)
    }
}

/// Stores the batch's messages: resends found, then ids drawn from the
/// rooms' sequences, then one insert. Answers one [`Posted`] per message,
/// in batch order.
async fn store_posts(
    tx: &deadpool_postgres::Transaction<'_>,
    posts: &[(usize, NewPost)],
    ts: &str,
) -> Result<Vec<Posted>, BatchError> {
    if posts.is_empty() {
        return Ok(Vec::new());
    }
    let users: Vec<i64> = posts.iter().map(|(_, p)| p.user).collect();
    let rooms: Vec<i64> = posts.iter().map(|(_, p)| p.room).collect();
    let cids: Vec<&str> = posts.iter().map(|(_, p)| p.client_id.as_str()).collect();
    let mut known: HashMap<(i64, i64, String), Posted> = HashMap::new();
    // Every statement here runs once per batch: prepared once per pooled
    // connection, so each is one round trip instead of two.
    let resent = tx
        .prepare_cached(
            "SELECT m.user_id, m.room_id, m.client_id, m.seq, m.ts FROM messages m
             JOIN unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[]) AS k(u, r, c)
               ON m.user_id = k.u AND m.room_id = k.r AND m.client_id = k.c",
        )
        .await?;
    for r in tx.query(&resent, &[&users, &rooms, &cids]).await? {
        known.insert(
            (r.get(0), r.get(1), r.get(2)),
            Posted {
                id: r.get(3),
                ts: r.get(4),
                duplicate: true,
            },
        );
    }
    // What is new, once: a resend within the batch is a duplicate of the
    // first copy.
    let mut fresh: Vec<usize> = Vec::new();
    let mut first: HashMap<(i64, i64, &str), usize> = HashMap::new();
    for (k, (_, p)) in posts.iter().enumerate() {
        let key = (p.user, p.room, p.client_id.as_str());
        if known.contains_key(&(p.user, p.room, p.client_id.clone())) || first.contains_key(&key) {
            continue;
        }
        first.insert(key, k);
        fresh.push(k);
    }
    let mut per_room: BTreeMap<i64, i64> = BTreeMap::new();
    for &k in &fresh {
        *per_room.entry(posts[k].1.room).or_default() += 1;
    }
    let mut next: HashMap<i64, i64> = HashMap::new();
    if !per_room.is_empty() {
        let ids: Vec<i64> = per_room.keys().copied().collect();
        let counts: Vec<i64> = per_room.values().copied().collect();
        // Rows locked in id order first, so that batches on two nodes
        // touching the same rooms wait for each other instead of
        // deadlocking.
        let lock = tx
            .prepare_cached("SELECT id FROM rooms WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .await?;
        tx.query(&lock, &[&ids]).await?;
        let bump = tx
            .prepare_cached(
                "UPDATE rooms r SET last_seq = r.last_seq + c.n
                 FROM unnest($1::BIGINT[], $2::BIGINT[]) AS c(id, n)
                 WHERE r.id = c.id RETURNING r.id, r.last_seq",
            )
            .await?;
        for r in tx.query(&bump, &[&ids, &counts]).await? {
            let (id, last): (i64, i64) = (r.get(0), r.get(1));
            next.insert(id, last - per_room[&id] + 1);
        }
    }
    let mut seqs = vec![0i64; posts.len()];
    for &k in &fresh {
        let n = next.entry(posts[k].1.room).or_insert(0);
        seqs[k] = *n;
        *n += 1;
    }
    if !fresh.is_empty() {
        let col = |f: &dyn Fn(usize) -> i64| fresh.iter().map(|&k| f(k)).collect::<Vec<i64>>();
        let rooms = col(&|k| posts[k].1.room);
        let s = col(&|k| seqs[k]);
        let users = col(&|k| posts[k].1.user);
        let cids: Vec<&str> = fresh
            .iter()
            .map(|&k| posts[k].1.client_id.as_str())
            .collect();
        let texts: Vec<&str> = fresh.iter().map(|&k| posts[k].1.text.as_str()).collect();
        let insert = tx
            .prepare_cached(
                "INSERT INTO messages (room_id, seq, user_id, client_id, text, ts)
                 SELECT r, s, u, c, t, $6 FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[]) AS x(r, s, u, c, t)
                 ON CONFLICT (user_id, room_id, client_id) DO NOTHING",
            )
            .await?;
        let inserted = tx
            .execute(&insert, &[&rooms, &s, &users, &cids, &texts, &ts])
            .await?;
        if inserted as usize != fresh.len() {
            // Another node stored one of these resends after our check: a
            // sequence number would go unused. Start again; the resend is
            // found next time.
            return Err(BatchError::Raced);
        }
    }
    let mut out = Vec::with_capacity(posts.len());
    for (k, (_, p)) in posts.iter().enumerate() {
        if let Some(d) = known.get(&(p.user, p.room, p.client_id.clone())) {
            out.push(d.clone());
        } else if seqs[k] != 0 {
            out.push(Posted {
                id: seqs[k],
                ts: ts.to_owned(),
                duplicate: false,
            });
        } else {
            let f = first[&(p.user, p.room, p.client_id.as_str())];
            out.push(Posted {
                id: seqs[f],
                ts: ts.to_owned(),
                duplicate: true,
            });
        }
    }
    Ok(out)
}
