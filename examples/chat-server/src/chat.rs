//! The chat service itself, shared by the HTTP API, WebSocket and TCP
//! front ends: accounts, tokens, rooms, posting and history. The front ends
//! only translate their wire format to these calls and back, so every
//! rule (who may read a private room, what an ack means) lives here once.
//!
//! ## Password hashing is admitted work
//!
//! argon2id needs its memory cost (19 MiB by default) for every hash while
//! it runs, so unbounded concurrent logins are unbounded memory. Every hash
//! runs under its own [`admit::Limiter`] (`hashing`): at most
//! [`ChatOptions::max_hashes`] at once (2 × cores by default: enough to
//! keep every core busy, since the blocking pool can run them side by side)
//! and a short queue; beyond that the request is refused `busy` with a
//! `Retry-After`. The permit moves into the hashing job, so a client that
//! hangs up mid-hash cannot start another before this one ends.
//!
//! Hashes run on a pool of their own threads, as many as the limiter
//! admits, and each thread allocates argon2's working memory once and
//! reuses it ([`Hasher`]). Allocating it per hash, as argon2's convenience
//! API does, is not bounded in practice: the 64-byte-aligned 19 MiB blocks
//! fragment the allocator's arenas, and resident memory was measured
//! growing by 19 MiB a hash up to 760 MB with one hash at a time.
//!
//! Failed logins are counted per account and per address
//! ([`crate::throttle`]) and checked before any hashing.

use crate::cluster::Cluster;
use crate::hub::{Event, Hub, Outbox, Push};
use crate::protocol::ws::Msg;
use crate::protocol::ProtoError;
use crate::store::{self, Store, StoreError};
use crate::throttle::FailedLogins;
use admit::Limiter;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// How long a hash may wait in the hashing limiter's queue.
pub const HASH_QUEUE_WAIT: Duration = Duration::from_secs(2);

/// An authenticated user.
#[derive(Debug, Clone)]
pub struct User {
    /// User id.
    pub user_id: i64,
    /// User name, as registered.
    pub name: Arc<str>,
    /// The hash of the token it authenticated with (what logout revokes).
    pub token_hash: Arc<str>,
}

/// What the chat service is set up with.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// Lifetime of a bearer token.
    pub token_ttl: Duration,
    /// Argon2id memory cost in KiB.
    pub argon2_m_cost: u32,
    /// Password hashes run at once.
    pub max_hashes: u32,
}

/// The chat service.
#[derive(Debug)]
pub struct Chat {
    /// The database.
    pub store: Arc<Store>,
    /// Rooms and fan-out.
    pub hub: Hub,
    /// Admission for password hashing.
    pub hashing: Limiter,
    hash_pool: HashPool,
    failed_logins: FailedLogins,
    live: Arc<LiveTokens>,
    token_ttl: Duration,
    dummy_hash: OnceLock<String>,
    /// Messages committed since start.
    pub messages_total: AtomicU64,
    /// The cluster link, in cluster mode.
    pub cluster: OnceLock<Arc<Cluster>>,
}

/// One hashing thread's argon2id: the parameters new hashes use, and the
/// working memory, allocated once and reused by every hash on the thread.
pub struct Hasher {
    argon2: Argon2<'static>,
    blocks: Vec<Block>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("blocks", &self.blocks.len())
            .finish()
    }
}

impl Hasher {
    /// A hasher for new hashes with `m_cost` KiB of memory.
    pub fn new(m_cost: u32) -> Hasher {
        Hasher {
            argon2: argon2(m_cost),
            blocks: Vec::new(),
        }
    }

    /// Runs `argon2` into `out` on this thread's memory.
    fn run(
        blocks: &mut Vec<Block>,
        argon2: &Argon2<'_>,
        params: &Params,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> Result<(), argon2::Error> {
        let n = params.block_count();
        if blocks.len() < n {
            blocks.resize(n, Block::default());
        }
        argon2.hash_password_into_with_memory(password, salt, out, &mut blocks[..n])
    }

    /// A new salted hash of `password`, as a PHC string.
    pub fn hash(&mut self, password: &[u8]) -> Option<String> {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let mut salt_buf = [0u8; 64];
        let salt_bytes = salt.as_salt().decode_b64(&mut salt_buf).ok()?;
        let params = self.argon2.params().clone();
        let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let blocks = &mut self.blocks;
        let argon2 = &self.argon2;
        let hash = Output::init_with(len, |out| {
            Hasher::run(blocks, argon2, &params, password, salt_bytes, out)
                .map_err(|_| argon2::password_hash::Error::Crypto)
        })
        .ok()?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).ok()?,
            salt: Some(salt.as_salt()),
            hash: Some(hash),
        };
        Some(phc.to_string())
    }

    /// Whether `password` matches the PHC string `stored` (with whatever
    /// parameters it was made with).
    pub fn verify(&mut self, stored: &str, password: &[u8]) -> bool {
        let mut check = || -> Option<bool> {
            let phc = PasswordHash::new(stored).ok()?;
            let algorithm = Algorithm::try_from(phc.algorithm).ok()?;
            let version = match phc.version {
                Some(v) => Version::try_from(v).ok()?,
                None => Version::default(),
            };
            let params = Params::try_from(&phc).ok()?;
            let expected = phc.hash?;
            let mut salt_buf = [0u8; 64];
            let salt = phc.salt?.decode_b64(&mut salt_buf).ok()?;
            let argon2 = Argon2::new(algorithm, version, params.clone());
            let mut out = vec![0u8; expected.len()];
            Hasher::run(&mut self.blocks, &argon2, &params, password, salt, &mut out).ok()?;
            Some(bool::from(subtle::ConstantTimeEq::ct_eq(
                &out[..],
                expected.as_bytes(),
            )))
        };
        check().unwrap_or(false)
    }
}

/// A job for the hashing threads.
type HashJob = Box<dyn FnOnce(&mut Hasher) + Send>;

/// The threads that run password hashes; see the module docs.
#[derive(Debug)]
struct HashPool {
    jobs: Mutex<std::sync::mpsc::Sender<HashJob>>,
}

impl HashPool {
    fn start(threads: u32, m_cost: u32) -> std::io::Result<HashPool> {
        let (tx, rx) = std::sync::mpsc::channel::<HashJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let mut hasher = Hasher::new(m_cost);
            std::thread::Builder::new()
                .name(format!("chat-hash-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    match job {
                        Ok(job) => job(&mut hasher),
                        // The chat service is gone.
                        Err(_) => return,
                    }
                })?;
        }
        Ok(HashPool {
            jobs: Mutex::new(tx),
        })
    }

    fn run(&self, job: HashJob) -> bool {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .is_ok()
    }
}

/// The tokens live connections authenticated with, each with a flag that
/// logout raises: HTTP requests check the database every time, but a
/// connection checked its token once, at `auth`.
#[derive(Debug, Default)]
struct LiveTokens {
    map: Mutex<HashMap<Arc<str>, watch::Sender<bool>>>,
}

/// A live connection's view of its token: resolves when it is logged out.
#[derive(Debug)]
pub struct TokenWatch {
    hash: Arc<str>,
    rx: watch::Receiver<bool>,
    live: Arc<LiveTokens>,
}

impl TokenWatch {
    /// Resolves once the token has been logged out.
    pub async fn revoked(&mut self) {
        let _ = self.rx.wait_for(|v| *v).await;
    }
}

impl Drop for TokenWatch {
    fn drop(&mut self) {
        let mut map = self.live.map.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = map.get(&self.hash) else {
            return;
        };
        // The last watcher of a token takes its entry with it (if the entry
        // is still the one it watched: a logout replaces nothing, but be
        // exact).
        let mine = tx.subscribe().same_channel(&self.rx);
        if mine && tx.receiver_count() <= 1 {
            map.remove(&self.hash);
        }
    }
}

impl LiveTokens {
    fn watch(self: &Arc<Self>, hash: Arc<str>) -> TokenWatch {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let rx = map
            .entry(hash.clone())
            .or_insert_with(|| watch::Sender::new(false))
            .subscribe();
        TokenWatch {
            hash,
            rx,
            live: self.clone(),
        }
    }

    fn revoke(&self, hash: &str) {
        let tx = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(hash);
        if let Some(tx) = tx {
            tx.send_replace(true);
        }
    }
}

/// argon2id with the OWASP-recommended time and parallelism and the given
/// memory cost in KiB.
fn argon2(m_cost: u32) -> Argon2<'static> {
    let params = Params::new(m_cost.max(8), 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn internal(e: StoreError) -> ProtoError {
    match e {
        StoreError::Failed(what) => {
            tracing::warn!("refused: {what}");
            ProtoError::new(
                "unavailable",
                "the server cannot store anything right now; retry later",
            )
        }
        e => {
            tracing::error!("store: {e}");
            ProtoError::new(
                "internal",
                "the server could not complete the request; retry later",
            )
        }
    }
}

fn busy() -> ProtoError {
    ProtoError::new(
        "busy",
        "too many logins and sign-ups are being checked right now; retry shortly",
    )
    .retry_after(Duration::from_secs(1))
}

fn unauthorized() -> ProtoError {
    ProtoError::new("unauthorized", "missing, unknown or expired token")
}

/// The hex SHA-256 of a token: tokens are stored only in this form, so a
/// copy of the database does not let anyone log in.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_token() -> String {
    // 256 bits from the OS generator.
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Chat {
    /// A chat service over an open store; loads the rooms into the hub.
    pub async fn new(store: Arc<Store>, options: ChatOptions) -> Result<Chat, StoreError> {
        let hub = Hub::default();
        for r in store.load_rooms().await? {
            hub.add_room(r.id, &r.name, r.private, r.owner.as_deref(), &r.members);
        }
        let max_hashes = options.max_hashes.clamp(1, admit::MAX_CAPACITY);
        let hashing = Limiter::builder()
            .capacity(max_hashes)
            // A short queue: a burst waits a moment instead of failing, but
            // a flood is told to come back rather than piling up.
            .queue_limit(max_hashes.saturating_mul(4).min(admit::MAX_QUEUE))
            .name("hashing")
            .build()
            .map_err(|e| StoreError::Io(format!("cannot build the hashing limiter: {e}")))?;
        let hash_pool = HashPool::start(max_hashes, options.argon2_m_cost)
            .map_err(|e| StoreError::Io(format!("cannot start the hashing threads: {e}")))?;
        Ok(Chat {
            store,
            hub,
            hashing,
            hash_pool,
            failed_logins: FailedLogins::default(),
            live: Arc::default(),
            token_ttl: options.token_ttl,
            dummy_hash: OnceLock::new(),
            messages_total: AtomicU64::new(0),
            cluster: OnceLock::new(),
        })
    }

    /// Runs password work on the hashing threads under the hashing
    /// limiter: argon2id is slow and memory-hungry on purpose.
    async fn hash_work<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Hasher) -> T + Send + 'static,
    ) -> Result<T, ProtoError> {
        // `acquire_until`, not a timeout around `acquire`: the limiter then
        // counts a wait that ran out as a timeout, not a cancellation.
        let permit = match self
            .hashing
            .acquire_until(tokio::time::sleep(HASH_QUEUE_WAIT))
            .await
        {
            Ok(permit) => permit,
            Err(_) => return Err(busy()),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.hash_pool.run(Box::new(move |hasher| {
            // Held until the hash is done, even if the request is gone.
            let _permit = permit;
            let _ = tx.send(work(hasher));
        }));
        let failed = || ProtoError::new("internal", "password hashing failed");
        if !sent {
            return Err(failed());
        }
        rx.await.map_err(|_| failed())
    }

    /// Hashes a new password.
    async fn hash_password(self: &Arc<Self>, password: String) -> Result<String, ProtoError> {
        self.hash_work(move |hasher| hasher.hash(password.as_bytes()))
            .await?
            .ok_or_else(|| ProtoError::new("internal", "password hashing failed"))
    }

    fn expiry(&self) -> i64 {
        unix_now().saturating_add(self.token_ttl.as_secs().min(i64::MAX as u64) as i64)
    }

    /// Creates an account and returns its first token.
    pub async fn register(
        self: &Arc<Self>,
        name: String,
        password: String,
    ) -> Result<String, ProtoError> {
        let hash = self.hash_password(password).await?;
        let token = new_token();
        match self
            .store
            .register(name, hash, hash_token(&token), self.expiry())
            .await
        {
            Ok(_) => Ok(token),
            Err(StoreError::Exists) => Err(ProtoError::new("name_taken", "that name is taken")),
            Err(e) => Err(internal(e)),
        }
    }

    /// Checks a password and returns a fresh token. `from` is the client's
    /// address, for the failed-login limit.
    pub async fn login(
        self: &Arc<Self>,
        name: String,
        password: String,
        from: IpAddr,
    ) -> Result<String, ProtoError> {
        // Counted as a failure from the start, and forgiven on success or
        // when the server was too busy to check: concurrent guesses cannot
        // slip past the limit while their hashes run.
        let attempt = self.failed_logins.attempt(&name, from).map_err(|wait| {
            ProtoError::new(
                "rate_limited",
                "too many failed logins for this account or from this address; wait and retry",
            )
            .retry_after(wait)
        })?;
        let lookup = name.clone();
        let found = self.store.credentials(lookup).await.map_err(internal)?;
        // Unknown names are checked against a dummy hash so that the answer
        // takes as long as for a known name with a wrong password.
        let (user_id, stored) = match found {
            Some((id, h)) => (Some(id), h),
            None => (None, self.dummy_hash().await?),
        };
        let verified = self
            .hash_work(move |hasher| hasher.verify(&stored, password.as_bytes()))
            .await;
        let ok = match verified {
            Ok(ok) => ok,
            Err(e) => {
                attempt.forgive();
                return Err(e);
            }
        };
        let (true, Some(user_id)) = (ok, user_id) else {
            return Err(ProtoError::new("bad_credentials", "wrong name or password"));
        };
        attempt.forgive();
        let token = new_token();
        self.store
            .add_token(user_id, hash_token(&token), self.expiry())
            .await
            .map_err(internal)?;
        Ok(token)
    }

    async fn dummy_hash(self: &Arc<Self>) -> Result<String, ProtoError> {
        if let Some(h) = self.dummy_hash.get() {
            return Ok(h.clone());
        }
        let h = self.hash_password("not a real password".into()).await?;
        Ok(self.dummy_hash.get_or_init(|| h).clone())
    }

    /// The user behind a bearer token, if it is known and unexpired.
    pub async fn authenticate(&self, token: &str) -> Result<User, ProtoError> {
        if token.is_empty() || token.len() > 256 {
            return Err(unauthorized());
        }
        let hash: Arc<str> = hash_token(token).into();
        let now = unix_now();
        let key = hash.clone();
        match self.store.user_by_token(key.to_string(), now).await {
            Ok(Some((user_id, name))) => Ok(User {
                user_id,
                name: name.into(),
                token_hash: hash,
            }),
            Ok(None) => Err(unauthorized()),
            Err(e) => Err(internal(e)),
        }
    }

    /// Authenticates a connection: the user, and a watch that fires when
    /// the token is logged out. The watch is taken before the token is
    /// checked, so a logout racing the check is never missed.
    pub async fn authenticate_live(&self, token: &str) -> Result<(User, TokenWatch), ProtoError> {
        let watch = self.live.watch(hash_token(token).into());
        let user = self.authenticate(token).await?;
        Ok((user, watch))
    }

    /// Logs a token out everywhere: it is deleted, and connections that
    /// authenticated with it are told to end.
    pub async fn logout(&self, user: &User) -> Result<(), ProtoError> {
        self.store
            .delete_token(user.token_hash.to_string())
            .await
            .map_err(internal)?;
        // After the delete: a connection authenticating now either sees the
        // token gone or is already watching it.
        self.live.revoke(&user.token_hash);
        if let Some(c) = self.cluster.get() {
            c.revoked(&user.token_hash);
        }
        Ok(())
    }

    /// Ends this node's connections that use a token logged out on another
    /// node.
    pub fn revoke_here(&self, token_hash: &str) {
        self.live.revoke(token_hash);
    }

    /// Reads every room again: after this node missed notes (its
    /// subscription was down), rooms and members made elsewhere meanwhile.
    pub async fn reload_rooms(&self) {
        match self.store.load_rooms().await {
            Ok(rooms) => {
                for r in rooms {
                    self.hub
                        .refresh_room(r.id, &r.name, r.private, r.owner.as_deref(), &r.members);
                }
            }
            Err(e) => tracing::warn!("cannot read the rooms again: {e}"),
        }
    }

    /// Reads a room again after another node changed it.
    pub async fn reload_room(&self, name: String) {
        match self.store.load_room(name).await {
            Ok(Some(r)) => {
                self.hub
                    .refresh_room(r.id, &r.name, r.private, r.owner.as_deref(), &r.members)
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot read a room changed elsewhere: {e}"),
        }
    }

    /// Deletes expired tokens.
    pub async fn purge_expired_tokens(&self) -> Result<(), StoreError> {
        self.store.purge_tokens(unix_now()).await
    }

    /// Creates a room owned by `who`.
    pub async fn create_room(
        &self,
        who: &User,
        name: String,
        private: bool,
    ) -> Result<(), ProtoError> {
        match self
            .store
            .create_room(name.clone(), private, who.user_id)
            .await
        {
            Ok(id) => {
                self.hub
                    .add_room(id, &name, private, Some(&who.name), &[who.user_id]);
                if let Some(c) = self.cluster.get() {
                    c.room_changed(&name);
                }
                Ok(())
            }
            Err(StoreError::Exists) => {
                Err(ProtoError::new("room_exists", "that room already exists"))
            }
            Err(StoreError::Quota) => Err(ProtoError::new(
                "quota",
                format!(
                    "you already own {} rooms, the most one user may own",
                    store::ROOM_QUOTA
                ),
            )),
            Err(e) => Err(internal(e)),
        }
    }

    /// Adds `user` to `room`; only the owner may.
    pub async fn add_member(&self, who: &User, room: &str, user: String) -> Result<(), ProtoError> {
        let (room_id, owner) = self
            .hub
            .owner(room)
            .ok_or_else(|| ProtoError::new("not_found", "no such room"))?;
        if owner.as_deref() != Some(&*who.name) {
            return Err(ProtoError::new(
                "forbidden",
                "only the room's owner may add members",
            ));
        }
        let user_id = self
            .store
            .user_id(user)
            .await
            .map_err(internal)?
            .ok_or_else(|| ProtoError::new("not_found", "no such user"))?;
        self.store
            .add_member(room_id, user_id)
            .await
            .map_err(internal)?;
        self.hub.add_member(room, user_id);
        if let Some(c) = self.cluster.get() {
            c.room_changed(room);
        }
        Ok(())
    }

    /// Queues a message. The ack (or failure) and the message itself reach
    /// connections through their outboxes once the commit is done: the
    /// sender's ack is queued before the fan-out, so it arrives first.
    pub fn send(
        self: &Arc<Self>,
        who: &User,
        outbox: &Arc<Outbox>,
        room: &str,
        client_id: String,
        text: String,
    ) -> Result<(), ProtoError> {
        let room_id = self.hub.access(room, who.user_id)?;
        let me = self.clone();
        let outbox = outbox.clone();
        let from = who.name.clone();
        let room: Arc<str> = room.into();
        let client_id: Box<str> = client_id.into();
        // The text is needed both by the store and, after the commit, by
        // the fan-out; the store gets its own copy.
        let stored = text.clone();
        self.store.post(
            room_id,
            who.user_id,
            stored,
            client_id.to_string(),
            Box::new(move |r| match r {
                Ok(p) => {
                    outbox.push(Push::Ack {
                        client_id,
                        id: p.id,
                    });
                    if !p.duplicate {
                        me.messages_total.fetch_add(1, Ordering::Relaxed);
                        let event = Arc::new(Event {
                            room,
                            id: p.id,
                            from,
                            text,
                            ts: p.ts,
                        });
                        // In a cluster, delivery waits for the room's
                        // earlier ids from other nodes.
                        match me.cluster.get() {
                            Some(c) => c.committed(room_id, event),
                            None => me.hub.broadcast(event),
                        }
                    }
                }
                Err(_) => outbox.push(Push::Failed { client_id }),
            }),
        );
        Ok(())
    }

    /// A page of a room's history, if `who` may read it.
    pub async fn history(
        &self,
        who: &User,
        room: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Msg>, ProtoError> {
        let room_id = self.hub.access(room, who.user_id)?;
        let room = room.to_owned();
        self.store
            .history(room_id, room, before, limit)
            .await
            .map_err(internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_match_argon2s_own() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let mut h = Hasher::new(64);
        let phc = h.hash(b"correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=2,p=1$"), "{phc}");
        assert!(h.verify(&phc, b"correct horse"));
        assert!(!h.verify(&phc, b"correct horsf"));
        assert!(!h.verify("not a hash", b"correct horse"));
        // Interchangeable with argon2's own API, both ways, and with other
        // parameters than the hasher's.
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(argon2(64)
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let theirs = argon2(128).hash_password(b"pw", &salt).unwrap().to_string();
        assert!(h.verify(&theirs, b"pw"));
        assert!(!h.verify(&theirs, b"pW"));
    }

    #[tokio::test]
    async fn live_tokens_outlive_their_other_watchers() {
        let live = Arc::new(LiveTokens::default());
        let a = live.watch("t".into());
        let mut b = live.watch("t".into());
        drop(a);
        let revoked = tokio::time::timeout(Duration::from_millis(50), b.revoked()).await;
        assert!(revoked.is_err(), "b is still live");
        live.revoke("t");
        b.revoked().await;
        drop(b);
        assert!(live.map.lock().unwrap().is_empty());
    }
}
