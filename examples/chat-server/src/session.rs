//! One chat connection's state, whatever its wire format.
//!
//! The WebSocket and TCP front ends decode their input into
//! [`Command`]s, hand them to [`Session::handle`], and encode the typed
//! [`Reply`] or [`ProtoError`] that comes back; everything else they learn
//! from [`Session::next_event`]. So the rules of a chat connection live
//! here once: what may come before `auth`, how long authentication may
//! take, which rooms are joined (and left again however the connection
//! ends), the send window, lag, logout and the server going away. `ws` and
//! `tcp` keep only their framing and their select loops.

use crate::chat::{Chat, TokenWatch, User};
use crate::hub::{Outbox, Push, SEND_WINDOW};
use crate::protocol::ws::Msg;
use crate::protocol::{Command, ProtoError};
use crate::Phase;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long a new connection has to authenticate, whatever else it sends.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to a command.
#[derive(Debug)]
pub enum Reply {
    /// Authenticated as this user.
    Ready(Arc<str>),
    /// Joined the room.
    Joined(String),
    /// Left the room.
    Left(String),
    /// A message was queued for the store; its ack (or failure) arrives
    /// later as a [`Push`].
    Queued,
    /// A page of history, ascending by id.
    History {
        /// The room.
        room: String,
        /// The messages.
        messages: Vec<Msg>,
    },
    /// Reply to ping.
    Pong,
    /// The client asked to quit.
    Bye,
}

/// Something that happens to a connection without a command.
#[derive(Debug)]
pub enum Event {
    /// A push to deliver (message, presence, ack, failure).
    Push(Push),
    /// The outbox overflowed: tell the client and close.
    Lagged,
    /// The token was logged out: close as unauthorized.
    LoggedOut,
    /// No successful `auth` within [`AUTH_TIMEOUT`].
    AuthTimeout,
    /// The server is draining or stopping: say goodbye and close.
    GoingAway,
}

/// The authenticated part of a session.
#[derive(Debug)]
struct Authed {
    user: User,
    outbox: Arc<Outbox>,
    inbox: mpsc::Receiver<Push>,
    token: TokenWatch,
}

/// One connection's chat state.
#[derive(Debug)]
pub struct Session {
    chat: Arc<Chat>,
    phase: watch::Receiver<Phase>,
    authed: Option<Authed>,
    auth_deadline: Instant,
    joined: Vec<Arc<str>>,
    /// Own messages sent and not yet acknowledged.
    inflight: usize,
}

impl Session {
    /// A new, unauthenticated session; its [`AUTH_TIMEOUT`] starts now.
    pub fn new(chat: Arc<Chat>, phase: watch::Receiver<Phase>) -> Session {
        Session {
            chat,
            phase,
            authed: None,
            auth_deadline: Instant::now() + AUTH_TIMEOUT,
            joined: Vec::new(),
            inflight: 0,
        }
    }

    /// Whether the front end should read the next command. A full send
    /// window stops reading, which pushes back on the client instead of
    /// queueing acks without bound.
    pub fn reading(&self) -> bool {
        self.inflight < SEND_WINDOW
    }

    /// Whether `auth` has succeeded.
    pub fn is_authenticated(&self) -> bool {
        self.authed.is_some()
    }

    /// Carries out one command.
    pub async fn handle(&mut self, cmd: Command) -> Result<Reply, ProtoError> {
        let Some(authed) = &self.authed else {
            return match cmd {
                Command::Auth { token } => self.authenticate(&token).await,
                Command::Ping => Ok(Reply::Pong),
                Command::Quit => Ok(Reply::Bye),
                _ => Err(ProtoError::new("unauthorized", "authenticate first")),
            };
        };
        let chat = &self.chat;
        match cmd {
            Command::Auth { .. } => Err(ProtoError::bad_request("already authenticated")),
            Command::Ping => Ok(Reply::Pong),
            Command::Quit => Ok(Reply::Bye),
            Command::Join { room } => {
                let name = chat.hub.join(&room, authed.user.user_id, &authed.outbox)?;
                if !self.joined.contains(&name) {
                    self.joined.push(name);
                }
                Ok(Reply::Joined(room))
            }
            Command::Leave { room } => {
                chat.hub.leave(&room, &authed.outbox);
                self.joined.retain(|r| **r != *room);
                Ok(Reply::Left(room))
            }
            Command::Send {
                room,
                text,
                client_id,
            } => {
                chat.send(&authed.user, &authed.outbox, &room, client_id, text)?;
                self.inflight += 1;
                Ok(Reply::Queued)
            }
            Command::History {
                room,
                before,
                limit,
            } => {
                let messages = chat.history(&authed.user, &room, before, limit).await?;
                Ok(Reply::History { room, messages })
            }
        }
    }

    async fn authenticate(&mut self, token: &str) -> Result<Reply, ProtoError> {
        let (user, token) = self.chat.authenticate_live(token).await?;
        let (outbox, inbox) = Outbox::new(&self.chat.hub, user.name.clone());
        let name = user.name.clone();
        self.authed = Some(Authed {
            user,
            outbox,
            inbox,
            token,
        });
        Ok(Reply::Ready(name))
    }

    /// The next thing that happens to the connection. Cancel-safe: it only
    /// waits on channels and timers, so a front end can race it against
    /// its socket in a `select!` loop without losing anything.
    pub async fn next_event(&mut self) -> Event {
        let event = self.wait(true).await;
        if let Event::Push(push) = &event {
            if push.settles_send() {
                self.inflight = self.inflight.saturating_sub(1);
            }
        }
        event
    }

    /// The next event that ends the connection, leaving pushes queued: for
    /// racing a write that a client may never let finish.
    pub async fn closing(&mut self) -> Event {
        self.wait(false).await
    }

    async fn wait(&mut self, pushes: bool) -> Event {
        let phase = &mut self.phase;
        let going_away = async {
            let _ = phase.wait_for(|p| *p != Phase::Running).await;
        };
        let Some(authed) = &mut self.authed else {
            return tokio::select! {
                _ = going_away => Event::GoingAway,
                _ = tokio::time::sleep_until(self.auth_deadline) => Event::AuthTimeout,
            };
        };
        tokio::select! {
            // Endings first: a client flooded with pushes still hears them.
            biased;
            _ = going_away => Event::GoingAway,
            _ = authed.token.revoked() => Event::LoggedOut,
            _ = authed.outbox.lagged() => Event::Lagged,
            push = authed.inbox.recv(), if pushes => match push {
                Some(push) => Event::Push(push),
                // The session holds the outbox, so the channel cannot
                // close while it lives; treat it as lag if it ever does.
                None => Event::Lagged,
            },
        }
    }

    fn leave_all(&mut self) {
        if let Some(authed) = &self.authed {
            for room in self.joined.drain(..) {
                self.chat.hub.leave(&room, &authed.outbox);
            }
        }
    }
}

impl Drop for Session {
    /// However the connection ends (even if its task is cancelled), it
    /// leaves its rooms, so the others see it go offline and no push is
    /// queued for it any more.
    fn drop(&mut self) {
        self.leave_all();
    }
}
