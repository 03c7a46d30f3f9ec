//! One raw TCP line-protocol connection.
//!
//! Like the WebSocket side, one task owns the socket and selects over the
//! client's bytes, the outbox, revocation and the server's goodbye. Input
//! goes through [`LineFramer`] (bounded memory, over-long lines refused
//! without being buffered) and [`parse_line`].

use crate::chat::{Chat, Session};
use crate::hub::{Outbox, Push, SEND_WINDOW};
use crate::protocol::tcp::{
    format_msg, parse_line, Command, Frame, LineFramer, GREETING, MAX_LINE,
};
use crate::protocol::ProtoError;
use admit_tcp::{AdmitListener, Admitted};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

type Io = Admitted<TcpStream>;

/// Accepts admitted connections until `stop` turns true, one task each.
pub async fn accept_loop(
    mut listener: AdmitListener,
    chat: Arc<Chat>,
    goodbye: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = crate::until_true(&mut stop) => return,
        };
        match accepted {
            Ok((io, _peer)) => {
                tokio::spawn(run(io, chat.clone(), goodbye.subscribe()));
            }
            Err(e) => {
                // admit-tcp already backs off on descriptor exhaustion;
                // anything it returns is worth a log line and a pause.
                tracing::warn!("tcp accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn line(io: &mut Io, text: &str) -> bool {
    let mut buf = Vec::with_capacity(text.len() + 1);
    buf.extend_from_slice(text.as_bytes());
    buf.push(b'\n');
    write_all(io, &buf).await
}

/// How long one write may wait for a client that does not read; past it
/// the connection is given up rather than left pinned forever.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn write_all(io: &mut Io, buf: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, io.write_all(buf)).await,
        Ok(Ok(()))
    )
}

async fn err(io: &mut Io, e: &ProtoError) -> bool {
    // Messages are ours and single-line, but be safe.
    let msg = e.message.replace(['\n', '\r'], " ");
    line(io, &format!("ERR {} {msg}", e.code)).await
}

struct Conn {
    chat: Arc<Chat>,
    session: Option<(Session, Arc<Outbox>)>,
    joined: Vec<Arc<str>>,
    /// Own messages sent and not yet acknowledged.
    inflight: usize,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some((_, outbox)) = &self.session {
            for room in self.joined.drain(..) {
                self.chat.hub.leave(&room, outbox);
            }
        }
    }
}

enum Next {
    Continue,
    Close,
}

/// Runs a connection until it closes. The permit inside `io` keeps the
/// connection's slot; when the watchdog revokes it, `io`'s reads end and
/// the loop below ends with them.
pub async fn run(mut io: Io, chat: Arc<Chat>, mut goodbye: watch::Receiver<bool>) {
    if !line(&mut io, GREETING).await {
        return;
    }
    let mut conn = Conn {
        chat,
        session: None,
        joined: Vec::new(),
        inflight: 0,
    };
    let mut framer = LineFramer::new();
    let mut inbox: Option<mpsc::Receiver<Push>> = None;
    let mut buf = vec![0u8; MAX_LINE];
    loop {
        let outbox = conn.session.as_ref().map(|(_, o)| o.clone());
        tokio::select! {
            _ = crate::until_true(&mut goodbye) => {
                line(&mut io, "BYE").await;
                break;
            }
            _ = lag(&outbox) => {
                lagged(&mut io).await;
                break;
            }
            Some(push) = async { match inbox.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                if push.settles_send() {
                    conn.inflight = conn.inflight.saturating_sub(1);
                }
                // Race the write against the lag signal: a client that
                // stopped reading must not pin this task forever.
                // `pos` lives outside the write so that, if the write is
                // abandoned mid-line, the error still starts on a new line.
                let out = render_push(&push);
                let mut pos = 0;
                let sent = tokio::select! {
                    ok = write_tracked(&mut io, out.as_bytes(), &mut pos) => ok,
                    _ = lag(&outbox) => {
                        if pos > 0 && pos < out.len() {
                            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), io.write_all(b"\n")).await;
                        }
                        lagged(&mut io).await;
                        break;
                    }
                };
                if !sent {
                    break;
                }
            }
            n = io.read(&mut buf), if conn.inflight < SEND_WINDOW => {
                let n = match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                framer.push(&buf[..n]);
                let mut close = false;
                while let Some(frame) = framer.next_frame() {
                    // One read may carry many SAY lines: with the send
                    // window full, deliver acks before taking the next line.
                    while conn.inflight >= SEND_WINDOW {
                        let Some(push) = inbox.as_mut() else { break };
                        let Some(push) = push.recv().await else { break };
                        if push.settles_send() {
                            conn.inflight -= 1;
                        }
                        if !send_push(&mut io, &push).await {
                            close = true;
                            break;
                        }
                    }
                    if close {
                        break;
                    }
                    let next = match frame {
                        Frame::TooLong => {
                            let ok = err(&mut io, &ProtoError::new("too_long", "lines are at most 4096 bytes")).await;
                            if ok { Next::Continue } else { Next::Close }
                        }
                        Frame::Line(l) => conn.handle(&mut io, &l, &mut inbox).await,
                    };
                    if let Next::Close = next {
                        close = true;
                        break;
                    }
                }
                if close {
                    break;
                }
            }
        }
    }
    let _ = io.shutdown().await;
}

async fn lag(outbox: &Option<Arc<Outbox>>) {
    match outbox {
        Some(o) => o.lagged().await,
        None => std::future::pending().await,
    }
}

async fn lagged(io: &mut Io) {
    let e = ProtoError::new(
        "lagged",
        "too far behind; reconnect and catch up with HISTORY",
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), err(io, &e)).await;
}

/// Writes `buf[*pos..]`, advancing `pos` as bytes go out.
async fn write_tracked(io: &mut Io, buf: &[u8], pos: &mut usize) -> bool {
    while *pos < buf.len() {
        match tokio::time::timeout(WRITE_TIMEOUT, io.write(&buf[*pos..])).await {
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

async fn send_push(io: &mut Io, push: &Push) -> bool {
    let out = render_push(push);
    write_all(io, out.as_bytes()).await
}

impl Conn {
    async fn handle(
        &mut self,
        io: &mut Io,
        raw: &[u8],
        inbox: &mut Option<mpsc::Receiver<Push>>,
    ) -> Next {
        let cmd = match parse_line(raw) {
            Ok(c) => c,
            Err(e) => return cont(err(io, &e).await),
        };
        if self.session.is_none() && !cmd.allowed_before_auth() {
            return cont(err(io, &ProtoError::new("unauthorized", "AUTH first")).await);
        }
        let ok = match cmd {
            Command::Ping => line(io, "PONG").await,
            Command::Quit => {
                line(io, "BYE").await;
                return Next::Close;
            }
            Command::Auth(token) => {
                if self.session.is_some() {
                    err(io, &ProtoError::bad_request("already authenticated")).await
                } else {
                    match self.chat.authenticate(&token).await {
                        Ok(s) => {
                            let (outbox, rx) = Outbox::new(&self.chat.hub, s.name.clone());
                            *inbox = Some(rx);
                            let ok = line(io, &format!("OK ready {}", s.name)).await;
                            self.session = Some((s, outbox));
                            ok
                        }
                        Err(e) => err(io, &e).await,
                    }
                }
            }
            Command::Join(room) => {
                let Some((s, outbox)) = &self.session else {
                    return Next::Close;
                };
                match self.chat.hub.join(&room, s.user_id, outbox) {
                    Ok(name) => {
                        if !self.joined.contains(&name) {
                            self.joined.push(name);
                        }
                        line(io, &format!("OK joined {room}")).await
                    }
                    Err(e) => err(io, &e).await,
                }
            }
            Command::Leave(room) => {
                let Some((_, outbox)) = &self.session else {
                    return Next::Close;
                };
                self.chat.hub.leave(&room, outbox);
                self.joined.retain(|r| **r != *room);
                line(io, &format!("OK left {room}")).await
            }
            Command::Say {
                room,
                client_id,
                text,
            } => {
                let Some((s, outbox)) = &self.session else {
                    return Next::Close;
                };
                match self.chat.send(s, outbox, &room, client_id, text) {
                    Ok(()) => {
                        self.inflight += 1;
                        true
                    }
                    Err(e) => err(io, &e).await,
                }
            }
            Command::History { room, limit } => {
                let Some((s, _)) = &self.session else {
                    return Next::Close;
                };
                match self.chat.history(s, &room, None, limit).await {
                    Ok(msgs) => {
                        let mut out = format!("HISTORY {room} {}\n", msgs.len());
                        for m in &msgs {
                            out.push_str(&format_msg(&m.room, m.id, &m.from, &m.text));
                            out.push('\n');
                        }
                        // One write keeps the page contiguous.
                        write_all(io, out.as_bytes()).await
                    }
                    Err(e) => err(io, &e).await,
                }
            }
        };
        cont(ok)
    }
}

fn cont(ok: bool) -> Next {
    if ok {
        Next::Continue
    } else {
        Next::Close
    }
}
