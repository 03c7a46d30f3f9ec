//! One WebSocket connection, from the first frame to the close code.
//!
//! A single task owns the socket and selects over four things: a frame
//! from the client, a push from the outbox, the connection's end signal
//! (its lease revoked by the watchdog or an operator), and the server saying
//! goodbye. One owner means no locks around the socket and exactly one place
//! where the close code is chosen.
//!
//! When the lease is revoked, the admitted stream under the socket keeps
//! its writes working for a short goodbye window
//! ([`GOODBYE_WINDOW`](crate::GOODBYE_WINDOW)) while its reads wait, which
//! is what lets the close frame 1013 reach the client before the socket
//! goes.

use crate::chat::{Chat, Session};
use crate::hub::{Outbox, Push, SEND_WINDOW};
use crate::protocol::ws::{decode, ClientFrame, ServerFrame, MAX_FRAME};
use crate::protocol::ProtoError;
use admit_tcp::Ending;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a new connection has to authenticate.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Invalid frames in a row before the connection is closed with 4400.
pub const MAX_BAD_FRAMES: u32 = 5;

/// Close codes used by the server.
pub mod close {
    /// The server is shutting down or draining.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame was larger than 16 KiB.
    pub const TOO_BIG: u16 = 1009;
    /// Revoked (idle) or lagged: try again later.
    pub const TRY_AGAIN: u16 = 1013;
    /// Too many invalid frames in a row.
    pub const BAD_REQUESTS: u16 = 4400;
    /// No valid `auth` frame in time.
    pub const UNAUTHORIZED: u16 = 4401;
}

/// How long one write may wait for a client that does not read. Past it
/// the connection is given up: a blocked write would otherwise keep the
/// task (and its socket) alive even after the watchdog reclaimed its slot.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

async fn send(socket: &mut WebSocket, frame: ServerFrame<'_>) -> bool {
    let write = socket.send(Message::Text(frame.encode().into()));
    matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
}

async fn send_error(socket: &mut WebSocket, e: &ProtoError) -> bool {
    send(
        socket,
        ServerFrame::Error {
            code: e.code,
            message: &e.message,
        },
    )
    .await
}

/// Sends a close frame and waits briefly for the client's reply, so the
/// close code reaches it before the TCP connection goes away. (After a
/// revocation the reply is not read: reads wait out the goodbye window and
/// then end, which ends this wait too.)
async fn close_with(mut socket: WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    // A client that stopped reading would block this send forever.
    let sent = tokio::time::timeout(
        Duration::from_secs(2),
        socket.send(Message::Close(Some(frame))),
    );
    if !matches!(sent.await, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Runs a connection until it closes. The socket holds the connection's
/// slot for as long as it lives; `ending` fires when its lease is revoked.
pub async fn run(
    mut socket: WebSocket,
    ending: Ending,
    chat: Arc<Chat>,
    mut goodbye: watch::Receiver<bool>,
) {
    // Authentication: the first frame, within AUTH_TIMEOUT.
    let first = tokio::select! {
        r = tokio::time::timeout(AUTH_TIMEOUT, socket.recv()) => r,
        _ = crate::until_true(&mut goodbye) => {
            return close_with(socket, close::GOING_AWAY, "server going away").await;
        }
        _ = ending.ended() => {
            return close_with(socket, close::TRY_AGAIN, "idle timeout").await;
        }
    };
    let token = match first {
        Ok(Some(Ok(Message::Text(t)))) => match decode(t.as_bytes()) {
            Ok(ClientFrame::Auth { token }) => token,
            _ => return close_with(socket, close::UNAUTHORIZED, "first frame must be auth").await,
        },
        Ok(Some(Ok(_))) => {
            return close_with(socket, close::UNAUTHORIZED, "first frame must be auth").await
        }
        Ok(_) => return,
        Err(_) => return close_with(socket, close::UNAUTHORIZED, "auth timeout").await,
    };
    let session = match chat.authenticate(&token).await {
        Ok(s) => s,
        Err(e) => {
            send_error(&mut socket, &e).await;
            return close_with(socket, close::UNAUTHORIZED, "unauthorized").await;
        }
    };
    if !send(
        &mut socket,
        ServerFrame::Ready {
            user: &session.name,
        },
    )
    .await
    {
        return;
    }

    let (outbox, mut inbox) = Outbox::new(&chat.hub, session.name.clone());
    let mut conn = Conn {
        chat,
        session,
        outbox,
        joined: Vec::new(),
        bad: 0,
        inflight: 0,
    };
    // The three ways a connection is ended from outside, made once: made
    // inside the loop, each would be built and registered again for every
    // frame and every push.
    let outbox = conn.outbox.clone();
    let going_away = crate::until_true(&mut goodbye);
    let revoked = ending.ended();
    let lag = outbox.lagged();
    tokio::pin!(going_away, revoked, lag);
    let (code, reason) = loop {
        tokio::select! {
            _ = &mut going_away => break (close::GOING_AWAY, "server going away"),
            // Revoked: the goodbye window keeps writes working for the close.
            _ = &mut revoked => break (close::TRY_AGAIN, "idle timeout"),
            _ = &mut lag => break lagged(&mut socket).await,
            Some(push) = inbox.recv() => {
                if push.settles_send() {
                    conn.inflight = conn.inflight.saturating_sub(1);
                }
                // A client that stops reading blocks this write; racing it
                // against the lag signal is what lets a stuck connection be
                // closed instead of lingering with a full queue forever.
                let sent = tokio::select! {
                    ok = send_push(&mut socket, &push) => ok,
                    _ = &mut lag => break lagged(&mut socket).await,
                };
                if !sent {
                    break (0, "");
                }
            }
            // A full send window stops reading: backpressure on the client
            // instead of unbounded acks.
            frame = socket.recv(), if conn.inflight < SEND_WINDOW => match frame {
                Some(Ok(Message::Text(t))) => {
                    if t.len() > MAX_FRAME {
                        break (close::TOO_BIG, "frame too large");
                    }
                    match conn.handle(&mut socket, t.as_bytes()).await {
                        Ok(true) => {}
                        Ok(false) => break (0, ""),
                        Err(code) => break (code, "too many invalid frames"),
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    if b.len() > MAX_FRAME {
                        break (close::TOO_BIG, "frame too large");
                    }
                    match conn.bad_frame(&mut socket, &ProtoError::bad_request("binary frames are not part of the protocol")).await {
                        Ok(true) => {}
                        Ok(false) => break (0, ""),
                        Err(code) => break (code, "too many invalid frames"),
                    }
                }
                // Pings are answered by the WebSocket layer itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => break (0, ""),
                Some(Err(e)) => {
                    // The WebSocket layer refuses frames over its own
                    // limit with a capacity error: tell the client why.
                    let msg = e.to_string();
                    if msg.contains("too long") || msg.contains("Space limit") || msg.contains("capacity") {
                        break (close::TOO_BIG, "frame too large");
                    }
                    break (0, "");
                }
            },
        }
    };
    conn.leave_all();
    if code != 0 {
        close_with(socket, code, reason).await;
    }
}

/// Tells a lagging client why it is being closed (if it still reads at
/// all) and picks the close code.
async fn lagged(socket: &mut WebSocket) -> (u16, &'static str) {
    let e = ProtoError::new(
        "lagged",
        "too far behind; reconnect and catch up from history",
    );
    // Give a client that resumes reading a moment to learn why.
    let _ = tokio::time::timeout(Duration::from_secs(3), send_error(socket, &e)).await;
    (close::TRY_AGAIN, "lagged")
}

async fn send_push(socket: &mut WebSocket, push: &Push) -> bool {
    match push {
        Push::Message(ev) => {
            send(
                socket,
                ServerFrame::Message {
                    room: &ev.room,
                    id: ev.id,
                    from: &ev.from,
                    text: &ev.text,
                    ts: &ev.ts,
                },
            )
            .await
        }
        Push::Presence { room, user, online } => {
            send(
                socket,
                ServerFrame::Presence {
                    room,
                    user,
                    state: if *online { "online" } else { "offline" },
                },
            )
            .await
        }
        Push::Ack { client_id, id } => send(socket, ServerFrame::Ack { client_id, id: *id }).await,
        Push::Failed { client_id } => {
            let e = ProtoError::new(
                "internal",
                format!("message {client_id} was not stored; send it again"),
            );
            send_error(socket, &e).await
        }
    }
}

struct Conn {
    chat: Arc<Chat>,
    session: Session,
    outbox: Arc<Outbox>,
    joined: Vec<Arc<str>>,
    bad: u32,
    /// Own messages sent and not yet acknowledged.
    inflight: usize,
}

impl Conn {
    /// Handles one text frame. `Ok(false)`: the socket failed; `Err(code)`:
    /// close with that code.
    async fn handle(&mut self, socket: &mut WebSocket, frame: &[u8]) -> Result<bool, u16> {
        let cmd = match decode(frame) {
            Ok(c) => c,
            Err(e) => return self.bad_frame(socket, &e).await,
        };
        self.bad = 0;
        let chat = &self.chat;
        let ok = match cmd {
            ClientFrame::Auth { .. } => {
                send_error(socket, &ProtoError::bad_request("already authenticated")).await
            }
            ClientFrame::Ping => send(socket, ServerFrame::Pong).await,
            ClientFrame::Join { room } => {
                match chat.hub.join(&room, self.session.user_id, &self.outbox) {
                    Ok(name) => {
                        if !self.joined.contains(&name) {
                            self.joined.push(name);
                        }
                        send(socket, ServerFrame::Joined { room: &room }).await
                    }
                    Err(e) => send_error(socket, &e).await,
                }
            }
            ClientFrame::Leave { room } => {
                chat.hub.leave(&room, &self.outbox);
                self.joined.retain(|r| **r != *room);
                send(socket, ServerFrame::Left { room: &room }).await
            }
            ClientFrame::Send {
                room,
                text,
                client_id,
            } => match chat.send(&self.session, &self.outbox, &room, client_id, text) {
                Ok(()) => {
                    self.inflight += 1;
                    true
                }
                Err(e) => send_error(socket, &e).await,
            },
            ClientFrame::History {
                room,
                before,
                limit,
            } => match chat.history(&self.session, &room, before, limit).await {
                Ok(messages) => {
                    send(
                        socket,
                        ServerFrame::History {
                            room: &room,
                            messages: &messages,
                        },
                    )
                    .await
                }
                Err(e) => send_error(socket, &e).await,
            },
        };
        Ok(ok)
    }

    async fn bad_frame(&mut self, socket: &mut WebSocket, e: &ProtoError) -> Result<bool, u16> {
        self.bad += 1;
        if self.bad >= MAX_BAD_FRAMES {
            send_error(socket, e).await;
            return Err(close::BAD_REQUESTS);
        }
        Ok(send_error(socket, e).await)
    }

    fn leave_all(&mut self) {
        for room in self.joined.drain(..) {
            self.chat.hub.leave(&room, &self.outbox);
        }
    }
}

impl Drop for Conn {
    /// However the connection ends (even if its task is cancelled), it
    /// leaves its rooms, so the others see it go offline and no push is
    /// queued for it any more.
    fn drop(&mut self) {
        self.leave_all();
    }
}
