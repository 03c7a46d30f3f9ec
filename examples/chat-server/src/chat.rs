//! The chat service itself, shared by the HTTP API, WebSocket and TCP
//! front ends: accounts, tokens, rooms, posting and history. The front ends
//! only translate their wire format to these calls and back, so every
//! rule (who may read a private room, what an ack means) lives here once.

use crate::hub::{Event, Hub, Outbox, Push};
use crate::protocol::ws::Msg;
use crate::protocol::ProtoError;
use crate::store::{self, Store, StoreError};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// An authenticated user.
#[derive(Debug, Clone)]
pub struct Session {
    /// User id.
    pub user_id: i64,
    /// User name.
    pub name: Arc<str>,
}

/// The chat service.
#[derive(Debug)]
pub struct Chat {
    /// The database.
    pub store: Arc<Store>,
    /// Rooms and fan-out.
    pub hub: Hub,
    token_ttl: Duration,
    argon2_m_cost: u32,
    dummy_hash: OnceLock<String>,
    /// Messages committed since start.
    pub messages_total: AtomicU64,
}

fn internal(e: StoreError) -> ProtoError {
    tracing::error!("store: {e}");
    ProtoError::new(
        "internal",
        "the server could not complete the request; retry later",
    )
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
    pub fn new(
        store: Arc<Store>,
        token_ttl: Duration,
        argon2_m_cost: u32,
    ) -> Result<Chat, StoreError> {
        let hub = Hub::default();
        for r in store.load_rooms()? {
            hub.add_room(r.id, &r.name, r.private, r.owner.as_deref(), &r.members);
        }
        Ok(Chat {
            store,
            hub,
            token_ttl,
            argon2_m_cost,
            dummy_hash: OnceLock::new(),
            messages_total: AtomicU64::new(0),
        })
    }

    fn argon2(&self) -> Argon2<'static> {
        let params = Params::new(self.argon2_m_cost.max(8), 2, 1, None).unwrap_or_default();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    /// Hashes a password off the async runtime: argon2id is slow on purpose.
    async fn hash_password(self: &Arc<Self>, password: String) -> Result<String, ProtoError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            me.argon2()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await
        .ok()
        .and_then(Result::ok)
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

    /// Checks a password and returns a fresh token.
    pub async fn login(
        self: &Arc<Self>,
        name: String,
        password: String,
    ) -> Result<String, ProtoError> {
        let lookup = name.clone();
        let found = self
            .store
            .read(move |c| store::credentials(c, &lookup))
            .await
            .map_err(internal)?;
        let me = self.clone();
        // Unknown names are checked against a dummy hash so that the answer
        // takes as long as for a known name with a wrong password.
        let (user_id, stored) = match found {
            Some((id, h)) => (Some(id), h),
            None => (None, self.dummy_hash().await),
        };
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&stored)
                .map(|h| me.argon2().verify_password(password.as_bytes(), &h).is_ok())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let (true, Some(user_id)) = (ok, user_id) else {
            return Err(ProtoError::new("bad_credentials", "wrong name or password"));
        };
        let token = new_token();
        self.store
            .add_token(user_id, hash_token(&token), self.expiry())
            .await
            .map_err(internal)?;
        Ok(token)
    }

    async fn dummy_hash(self: &Arc<Self>) -> String {
        if let Some(h) = self.dummy_hash.get() {
            return h.clone();
        }
        let h = self
            .hash_password("not a real password".into())
            .await
            .unwrap_or_default();
        self.dummy_hash.get_or_init(|| h).clone()
    }

    /// The user behind a bearer token, if it is known and unexpired.
    pub async fn authenticate(&self, token: &str) -> Result<Session, ProtoError> {
        if token.is_empty() || token.len() > 256 {
            return Err(unauthorized());
        }
        let hash = hash_token(token);
        let now = unix_now();
        match self
            .store
            .read(move |c| store::user_by_token(c, &hash, now))
            .await
        {
            Ok(Some((user_id, name))) => Ok(Session {
                user_id,
                name: name.into(),
            }),
            Ok(None) => Err(unauthorized()),
            Err(e) => Err(internal(e)),
        }
    }

    /// Creates a room owned by `who`.
    pub async fn create_room(
        &self,
        who: &Session,
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
                Ok(())
            }
            Err(StoreError::Exists) => {
                Err(ProtoError::new("room_exists", "that room already exists"))
            }
            Err(e) => Err(internal(e)),
        }
    }

    /// Adds `user` to `room`; only the owner may.
    pub async fn add_member(
        &self,
        who: &Session,
        room: &str,
        user: String,
    ) -> Result<(), ProtoError> {
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
            .read(move |c| store::user_id(c, &user))
            .await
            .map_err(internal)?
            .ok_or_else(|| ProtoError::new("not_found", "no such user"))?;
        self.store
            .add_member(room_id, user_id)
            .await
            .map_err(internal)?;
        self.hub.add_member(room, user_id);
        Ok(())
    }

    /// Queues a message. The ack (or failure) and the message itself reach
    /// connections through their outboxes once the commit is done: the
    /// sender's ack is queued before the fan-out, so it arrives first.
    pub fn send(
        self: &Arc<Self>,
        who: &Session,
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
                        me.hub.broadcast(Arc::new(Event {
                            room,
                            id: p.id,
                            from,
                            text,
                            ts: p.ts,
                        }));
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
        who: &Session,
        room: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Msg>, ProtoError> {
        let room_id = self.hub.access(room, who.user_id)?;
        let room = room.to_owned();
        self.store
            .read(move |c| store::history(c, room_id, &room, before, limit))
            .await
            .map_err(internal)
    }
}
