//! One WebSocket connection: framing and its select loop.
//!
//! A single task owns the socket and selects over three things: a frame
//! from the client, the session's next event (a push, lag, logout, the
//! auth deadline, the server going away), and the connection's end signal
//! (its lease revoked by the watchdog or an operator). One owner means no
//! locks around the socket and exactly one place where the close code is
//! chosen. What a command means is the session's business
//! ([`crate::session`]); this file only turns frames into commands and
//! replies into frames.
//!
//! When the lease is revoked, the admitted stream under the socket keeps
//! its writes working for a short goodbye window
//! ([`GOODBYE_WINDOW`](crate::GOODBYE_WINDOW)) while its reads wait, which
//! is what lets the close frame 1013 reach the client before the socket
//! goes.

use crate::hub::Push;
use crate::protocol::ws::{decode, ServerFrame, MAX_FRAME};
use crate::protocol::{Command, ProtoError};
use crate::session::{Event, Reply, Session};
use admit_tcp::Ending;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use std::time::Duration;

/// Invalid frames in a row before the connection is closed with 4400.
pub const MAX_BAD_FRAMES: u32 = 5;

/// Close codes used by the server.
pub mod close {
    /// The server is shutting down or draining.
    pub const GOING_AWAY: u16 = 1001;
    /// A WebSocket protocol violation (bad framing, bad opcode, …).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A frame was larger than 16 KiB.
    pub const TOO_BIG: u16 = 1009;
    /// Revoked (idle) or lagged: try again later.
    pub const TRY_AGAIN: u16 = 1013;
    /// Too many invalid frames in a row.
    pub const BAD_REQUESTS: u16 = 4400;
    /// No valid `auth` frame in time, a bad token, or logged out.
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

/// How a connection ends: a close frame with this code and reason, or
/// (code 0) no close frame because the socket is already gone.
type Close = (u16, &'static str);

const GONE: Close = (0, "");

/// The close code for an error the WebSocket layer reported while reading.
fn read_error_close(e: &axum::Error) -> Close {
    use tungstenite::error::Error as WsError;
    match std::error::Error::source(e).and_then(|s| s.downcast_ref::<WsError>()) {
        Some(WsError::Utf8(_)) => (close::INVALID_DATA, "text frame is not valid UTF-8"),
        Some(WsError::Protocol(_)) => (close::PROTOCOL_ERROR, "WebSocket protocol error"),
        Some(WsError::Capacity(_)) => (close::TOO_BIG, "frame too large"),
        _ => GONE,
    }
}

/// Runs a connection until it closes. The socket holds the connection's
/// slot for as long as it lives; `ending` fires when its lease is revoked.
pub async fn run(mut socket: WebSocket, ending: Ending, mut session: Session) {
    let revoked = ending.ended();
    tokio::pin!(revoked);
    let mut bad = 0u32;
    let (code, reason) = loop {
        tokio::select! {
            // Revoked: the goodbye window keeps writes working for the close.
            _ = &mut revoked => break (close::TRY_AGAIN, "idle timeout"),
            event = session.next_event() => match event {
                Event::Push(push) => {
                    // A client that stops reading blocks this write; racing
                    // it against the session's events (lag among them) is
                    // what lets a stuck connection be closed instead of
                    // lingering with a full queue forever.
                    let sent = tokio::select! {
                        ok = send_push(&mut socket, &push) => ok,
                        event = session.closing() => break ended(&mut socket, event).await,
                    };
                    if !sent {
                        break GONE;
                    }
                }
                event => break ended(&mut socket, event).await,
            },
            frame = socket.recv(), if session.reading() => match frame {
                Some(Ok(Message::Text(t))) => {
                    if t.len() > MAX_FRAME {
                        break (close::TOO_BIG, "frame too large");
                    }
                    match decode(t.as_bytes()) {
                        Ok(cmd) => {
                            bad = 0;
                            match command(&mut socket, &mut session, cmd).await {
                                Ok(()) => {}
                                Err(close) => break close,
                            }
                        }
                        Err(e) => match bad_frame(&mut socket, &mut session, &mut bad, &e).await {
                            Ok(()) => {}
                            Err(close) => break close,
                        },
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    if b.len() > MAX_FRAME {
                        break (close::TOO_BIG, "frame too large");
                    }
                    let e = ProtoError::bad_request("binary frames are not part of the protocol");
                    if let Err(close) = bad_frame(&mut socket, &mut session, &mut bad, &e).await {
                        break close;
                    }
                }
                // Pings are answered by the WebSocket layer itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => break GONE,
                // A protocol violation gets a close frame that says which.
                Some(Err(e)) => break read_error_close(&e),
            },
        }
    };
    // Leave the rooms before the (possibly slow) close handshake.
    drop(session);
    if code != 0 {
        close_with(socket, code, reason).await;
    }
}

/// Carries out one command and writes its reply. `Err`: close this way.
async fn command(socket: &mut WebSocket, session: &mut Session, cmd: Command) -> Result<(), Close> {
    let first = !session.is_authenticated();
    if first && !matches!(cmd, Command::Auth { .. }) {
        return Err((close::UNAUTHORIZED, "first frame must be auth"));
    }
    let sent = match session.handle(cmd).await {
        Ok(reply) => send_reply(socket, reply).await,
        Err(e) if first => {
            send_error(socket, &e).await;
            return Err((close::UNAUTHORIZED, "unauthorized"));
        }
        Err(e) => send_error(socket, &e).await,
    };
    if sent {
        Ok(())
    } else {
        Err(GONE)
    }
}

/// An invalid frame: an error frame, and after [`MAX_BAD_FRAMES`] in a row
/// close 4400. Before `auth`, any invalid frame is close 4401.
async fn bad_frame(
    socket: &mut WebSocket,
    session: &mut Session,
    bad: &mut u32,
    e: &ProtoError,
) -> Result<(), Close> {
    if !session.is_authenticated() {
        return Err((close::UNAUTHORIZED, "first frame must be auth"));
    }
    *bad += 1;
    let sent = send_error(socket, e).await;
    if *bad >= MAX_BAD_FRAMES {
        return Err((close::BAD_REQUESTS, "too many invalid frames"));
    }
    if sent {
        Ok(())
    } else {
        Err(GONE)
    }
}

/// Says why the connection ends, where the protocol has words for it, and
/// picks the close code.
async fn ended(socket: &mut WebSocket, event: Event) -> Close {
    match event {
        Event::GoingAway => (close::GOING_AWAY, "server going away"),
        Event::AuthTimeout => (close::UNAUTHORIZED, "auth timeout"),
        Event::LoggedOut => {
            let e = ProtoError::new("unauthorized", "this token was logged out");
            let _ = tokio::time::timeout(Duration::from_secs(1), send_error(socket, &e)).await;
            (close::UNAUTHORIZED, "logged out")
        }
        Event::Lagged => {
            let e = ProtoError::new(
                "lagged",
                "too far behind; reconnect and catch up from history",
            );
            // Give a client that resumes reading a moment to learn why.
            let _ = tokio::time::timeout(Duration::from_secs(3), send_error(socket, &e)).await;
            (close::TRY_AGAIN, "lagged")
        }
        // Not an ending: `closing` never yields one, and `run` handles
        // pushes from `next_event` itself.
        Event::Push(_) => GONE,
    }
}

async fn send_reply(socket: &mut WebSocket, reply: Reply) -> bool {
    match reply {
        Reply::Ready(user) => send(socket, ServerFrame::Ready { user: &user }).await,
        Reply::Joined(room) => send(socket, ServerFrame::Joined { room: &room }).await,
        Reply::Left(room) => send(socket, ServerFrame::Left { room: &room }).await,
        Reply::Queued | Reply::Bye => true,
        Reply::History { room, messages } => {
            send(
                socket,
                ServerFrame::History {
                    room: &room,
                    messages: &messages,
                },
            )
            .await
        }
        Reply::Pong => send(socket, ServerFrame::Pong).await,
    }
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
