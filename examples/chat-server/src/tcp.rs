//! One raw TCP line-protocol connection: framing and its select loop.
//!
//! Like the WebSocket side, one task owns the socket and selects over the
//! client's lines and the session's events (pushes, lag, logout, the auth
//! deadline, the server going away). Input is cut by [`LineFramer`]
//! (bounded memory, over-long lines refused without being buffered) and
//! parsed by [`parse_line`]; what a command means is the session's business
//! ([`crate::session`]).

use crate::chat::Chat;
use crate::hub::Push;
use crate::protocol::tcp::{format_msg, parse_line, too_long, Frame, LineFramer, GREETING};
use crate::protocol::ProtoError;
use crate::session::{Event, Reply, Session};
use crate::Phase;
use admit_tcp::{AdmitListener, Admitted};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::codec::FramedRead;

type Io = Admitted<TcpStream>;
type Writer = WriteHalf<Io>;

/// How long one write may wait for a client that does not read; past it
/// the connection is given up rather than left pinned forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts admitted connections until the server stops, one task each.
pub async fn accept_loop(
    mut listener: AdmitListener,
    chat: Arc<Chat>,
    mut phase: watch::Receiver<Phase>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = phase.wait_for(|p| *p == Phase::Stopping) => return,
        };
        match accepted {
            Ok((io, _peer)) => {
                let session = Session::new(chat.clone(), phase.clone());
                tokio::spawn(run(io, session));
            }
            Err(e) => {
                // admit-tcp already backs off on descriptor exhaustion;
                // anything it returns is worth a log line and a pause.
                tracing::warn!("tcp accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn write_all(w: &mut (impl AsyncWrite + Unpin), buf: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, w.write_all(buf)).await,
        Ok(Ok(()))
    )
}

async fn line(w: &mut Writer, text: &str) -> bool {
    let mut buf = Vec::with_capacity(text.len() + 1);
    buf.extend_from_slice(text.as_bytes());
    buf.push(b'\n');
    write_all(w, &buf).await
}

async fn err(w: &mut Writer, e: &ProtoError) -> bool {
    // Messages are ours and single-line, but be safe.
    let msg = e.message.replace(['\n', '\r'], " ");
    line(w, &format!("ERR {} {msg}", e.code)).await
}

/// Runs a connection until it closes. The permit inside `io` keeps the
/// connection's slot; when the watchdog revokes it, `io`'s reads end and
/// the loop below ends with them.
pub async fn run(io: Io, mut session: Session) {
    let (r, mut w) = tokio::io::split(io);
    if !line(&mut w, GREETING).await {
        return;
    }
    // The framer buffers what one read brought beyond the current line, so
    // a pipelining client is read one command at a time and the send
    // window is honoured between any two lines.
    let mut lines = FramedRead::new(r, LineFramer::new());
    loop {
        tokio::select! {
            event = session.next_event() => match event {
                Event::Push(push) => {
                    if !deliver(&mut w, &mut session, &push).await {
                        break;
                    }
                }
                event => {
                    ended(&mut w, event).await;
                    break;
                }
            },
            frame = lines.next(), if session.reading() => {
                let raw = match frame {
                    Some(Ok(Frame::Line(raw))) => raw,
                    Some(Ok(Frame::TooLong)) => {
                        if !err(&mut w, &too_long()).await {
                            break;
                        }
                        continue;
                    }
                    Some(Err(_)) | None => break,
                };
                let reply = match parse_line(&raw) {
                    Ok(cmd) => session.handle(cmd).await,
                    Err(e) => Err(e),
                };
                let ok = match reply {
                    Ok(Reply::Bye) => {
                        line(&mut w, "BYE").await;
                        break;
                    }
                    Ok(reply) => send_reply(&mut w, reply).await,
                    Err(e) => err(&mut w, &e).await,
                };
                if !ok {
                    break;
                }
            }
        }
    }
    drop(session);
    let _ = w.shutdown().await;
}

/// Writes a push, racing the write against the session's endings: a
/// client that stopped reading must not pin this task forever.
async fn deliver(w: &mut Writer, session: &mut Session, push: &Push) -> bool {
    let out = render_push(push);
    // `pos` lives outside the write so that, if the write is abandoned
    // mid-line, what follows still starts on a new line.
    let mut pos = 0;
    tokio::select! {
        ok = write_tracked(w, out.as_bytes(), &mut pos) => ok,
        event = session.closing() => {
            if pos > 0 && pos < out.len() {
                let _ = tokio::time::timeout(Duration::from_secs(3), w.write_all(b"\n")).await;
            }
            ended(w, event).await;
            false
        }
    }
}

/// Says why the connection ends, where the protocol has words for it.
async fn ended(w: &mut Writer, event: Event) {
    let last = match event {
        Event::GoingAway => "BYE".to_owned(),
        Event::AuthTimeout => "ERR unauthorized auth timeout".to_owned(),
        Event::LoggedOut => "ERR unauthorized this token was logged out".to_owned(),
        Event::Lagged => {
            "ERR lagged too far behind; reconnect and catch up with HISTORY".to_owned()
        }
        Event::Push(_) => return,
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), line(w, &last)).await;
}

/// Writes `buf[*pos..]`, advancing `pos` as bytes go out.
async fn write_tracked(w: &mut Writer, buf: &[u8], pos: &mut usize) -> bool {
    while *pos < buf.len() {
        match tokio::time::timeout(WRITE_TIMEOUT, w.write(&buf[*pos..])).await {
            Ok(Ok(n)) if n > 0 => *pos += n,
            _ => return false,
        }
    }
    true
}

/// The line(s) a push becomes, `\n` included (empty for presence, which
/// the line protocol does not carry).
fn render_push(push: &Push) -> String {
    let mut s = match push {
        Push::Message(ev) => format_msg(&ev.room, ev.id, &ev.from, &ev.text),
        Push::Presence { .. } => return String::new(),
        Push::Ack { client_id, id } => format!("OK ack {client_id} {id}"),
        Push::Failed { client_id } => {
            format!("ERR internal message {client_id} was not stored; send it again")
        }
    };
    s.push('\n');
    s
}

async fn send_reply(w: &mut Writer, reply: Reply) -> bool {
    match reply {
        Reply::Ready(user) => line(w, &format!("OK ready {user}")).await,
        Reply::Joined(room) => line(w, &format!("OK joined {room}")).await,
        Reply::Left(room) => line(w, &format!("OK left {room}")).await,
        Reply::Queued => true,
        Reply::History { room, messages } => {
            let mut out = format!("HISTORY {room} {}\n", messages.len());
            for m in &messages {
                out.push_str(&format_msg(&m.room, m.id, &m.from, &m.text));
                out.push('\n');
            }
            // One write keeps the page contiguous.
            write_all(w, out.as_bytes()).await
        }
        Reply::Pong => line(w, "PONG").await,
        Reply::Bye => line(w, "BYE").await,
    }
}
