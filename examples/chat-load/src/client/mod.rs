//! Black-box clients of the chat server: WebSocket and TCP chat connections,
//! the HTTP API, and the status listener.

pub mod http;
pub mod net;
pub mod proto;
pub mod status;

use futures::{SinkExt, StreamExt};
use hyper::Method;
use proto::{Command, Event};
use serde_json::json;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::{FramedRead, LinesCodec};

pub use net::{Connector, OpenGuard};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A socket error (refused, reset, ...).
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The server said something this client did not expect.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server closed the connection.
    #[error("connection closed (code {0:?})")]
    Closed(Option<u16>),
    /// The server refused a request with this HTTP status.
    #[error("HTTP {status}: {body}")]
    Status {
        /// Status code.
        status: u16,
        /// Body text.
        body: String,
    },
}

/// Where the server listens.
#[derive(Debug, Clone)]
pub struct Target {
    /// HTTP API and WebSocket listener.
    pub http: SocketAddr,
    /// TCP line-protocol listener.
    pub tcp: SocketAddr,
    /// Status listener (health, admin).
    pub status: SocketAddr,
    /// Admin bearer token, if the server has one.
    pub admin_token: Option<String>,
}

/// Which chat protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket on the HTTP listener.
    Ws,
    /// Line protocol on the TCP listener.
    Tcp,
}

/// How a connection attempt was answered.
#[derive(Debug)]
pub enum Opened {
    /// Admitted: WebSocket upgraded, or TCP greeting received.
    Admitted(ChatConn),
    /// Answered "busy": HTTP 503 or `BUSY`.
    Rejected {
        /// The retry delay the server suggested, in seconds.
        retry_after: Option<u64>,
    },
}

/// The largest line the server sends over TCP (4 KiB per the contract, a
/// message line adds its header).
const MAX_LINE: usize = 16 * 1024;

enum Inner {
    Ws(Box<WebSocketStream<TcpStream>>),
    Tcp {
        read: FramedRead<OwnedReadHalf, LinesCodec>,
        write: OwnedWriteHalf,
    },
}

/// One chat connection, WebSocket or TCP, with a common command / event
/// interface. [`ChatConn::recv`] is cancel safe, so it can sit in a
/// `select!` next to a send timer.
pub struct ChatConn {
    inner: Inner,
    closed: bool,
    _open: Option<OpenGuard>,
}

impl std::fmt::Debug for ChatConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner {
            Inner::Ws(_) => "ws",
            Inner::Tcp { .. } => "tcp",
        };
        f.debug_struct("ChatConn")
            .field("transport", &kind)
            .field("closed", &self.closed)
            .finish()
    }
}

impl ChatConn {
    /// Connects over `transport` and waits for the server's admission
    /// decision (upgrade or 503 for WebSocket, `HELLO` or `BUSY` for TCP),
    /// at most `timeout` after the TCP connection is made.
    pub async fn open(
        connector: &Connector,
        target: &Target,
        transport: Transport,
        timeout: Duration,
    ) -> Result<Opened, ClientError> {
        match transport {
            Transport::Ws => {
                let stream = connector.connect(target.http).await?;
                let req = format!("ws://{}/ws", target.http)
                    .into_client_request()
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                // Small buffers: a run holds thousands of these, and chat
                // frames are at most 16 KiB.
                let mut config = WebSocketConfig::default();
                config.read_buffer_size = 8 * 1024;
                config.write_buffer_size = 0;
                config.max_message_size = Some(1 << 20);
                let handshake =
                    tokio_tungstenite::client_async_with_config(req, stream, Some(config));
                match tokio::time::timeout(timeout, handshake).await {
                    Err(_) => Err(ClientError::Timeout),
                    Ok(Ok((ws, _resp))) => Ok(Opened::Admitted(ChatConn {
                        inner: Inner::Ws(Box::new(ws)),
                        closed: false,
                        _open: Some(OpenGuard::new(connector.open_gauge())),
                    })),
                    Ok(Err(tungstenite::Error::Http(resp))) if resp.status() == 503 => {
                        let retry_after = resp
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse().ok());
                        Ok(Opened::Rejected { retry_after })
                    }
                    Ok(Err(tungstenite::Error::Http(resp))) => Err(ClientError::Status {
                        status: resp.status().as_u16(),
                        body: String::new(),
                    }),
                    Ok(Err(tungstenite::Error::Io(e))) => Err(ClientError::Io(e)),
                    Ok(Err(e)) => Err(ClientError::Protocol(e.to_string())),
                }
            }
            Transport::Tcp => {
                let stream = connector.connect(target.tcp).await?;
                let (r, w) = stream.into_split();
                let mut read = FramedRead::new(r, LinesCodec::new_with_max_length(MAX_LINE));
                let first = tokio::time::timeout(timeout, read.next())
                    .await
                    .map_err(|_| ClientError::Timeout)?;
                match first {
                    Some(Ok(line)) => match proto::tcp_decode(&line) {
                        Event::Hello => Ok(Opened::Admitted(ChatConn {
                            inner: Inner::Tcp { read, write: w },
                            closed: false,
                            _open: Some(OpenGuard::new(connector.open_gauge())),
                        })),
                        Event::Busy { retry_after } => Ok(Opened::Rejected { retry_after }),
                        _ => Err(ClientError::Protocol(format!(
                            "unexpected greeting {line:?}"
                        ))),
                    },
                    Some(Err(e)) => Err(ClientError::Protocol(e.to_string())),
                    None => Err(ClientError::Closed(None)),
                }
            }
        }
    }

    /// Sends a command.
    pub async fn send(&mut self, cmd: &Command) -> Result<(), ClientError> {
        if self.closed {
            return Err(ClientError::Closed(None));
        }
        match &mut self.inner {
            Inner::Ws(ws) => {
                let msg = if *cmd == Command::Quit {
                    Message::Close(None)
                } else {
                    Message::text(proto::ws_encode(cmd))
                };
                ws.send(msg).await.map_err(ws_err)
            }
            Inner::Tcp { write, .. } => {
                write.write_all(proto::tcp_encode(cmd).as_bytes()).await?;
                Ok(())
            }
        }
    }

    /// Waits for the next event. Cancel safe. After `Event::Closed` the
    /// connection is done and further calls return `Event::Closed(None)`.
    pub async fn recv(&mut self) -> Event {
        if self.closed {
            return Event::Closed(None);
        }
        let ev = match &mut self.inner {
            Inner::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => break proto::ws_decode(t.as_str()),
                    Some(Ok(Message::Close(frame))) => {
                        break Event::Closed(frame.map(|f| u16::from(f.code)))
                    }
                    Some(Ok(_)) => continue, // ping / pong / binary
                    Some(Err(_)) | None => break Event::Closed(None),
                }
            },
            Inner::Tcp { read, .. } => match read.next().await {
                Some(Ok(line)) => proto::tcp_decode(&line),
                Some(Err(_)) | None => Event::Closed(None),
            },
        };
        if matches!(ev, Event::Closed(_) | Event::Bye) {
            self.closed = true;
        }
        ev
    }

    /// Waits for an event matching `want`, skipping others (presence,
    /// pushed messages), for at most `timeout`.
    pub async fn expect(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&Event) -> bool,
    ) -> Result<Event, ClientError> {
        let fut = async {
            loop {
                let ev = self.recv().await;
                if want(&ev) {
                    return Ok(ev);
                }
                match ev {
                    Event::Closed(code) => return Err(ClientError::Closed(code)),
                    Event::Error { code } if code != "bad_request" => {
                        return Err(ClientError::Protocol(format!("server error {code}")))
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Authenticates and waits for `ready`.
    pub async fn auth(&mut self, token: &str, timeout: Duration) -> Result<(), ClientError> {
        self.send(&Command::Auth(token.to_string())).await?;
        self.expect(timeout, |e| matches!(e, Event::Ready { .. }))
            .await
            .map(drop)
    }

    /// Joins `room` and waits for `joined`.
    pub async fn join(&mut self, room: &str, timeout: Duration) -> Result<(), ClientError> {
        self.send(&Command::Join(room.to_string())).await?;
        self.expect(timeout, |e| matches!(e, Event::Joined(r) if r == room))
            .await
            .map(drop)
    }

    /// Says goodbye (best effort) and closes.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(500), self.send(&Command::Quit)).await;
        if let Inner::Tcp { write, .. } = &mut self.inner {
            let _ = write.shutdown().await;
        }
    }
}

fn ws_err(e: tungstenite::Error) -> ClientError {
    match e {
        tungstenite::Error::Io(e) => ClientError::Io(e),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            ClientError::Closed(None)
        }
        e => ClientError::Protocol(e.to_string()),
    }
}

/// Result of [`timed_open`]: the answer and how long it took from the
/// start of the TCP connect.
#[derive(Debug)]
pub struct TimedOpen {
    /// The answer, or why there was none.
    pub result: Result<Opened, ClientError>,
    /// Time from starting the connect to the answer (or failure).
    pub elapsed: Duration,
}

/// [`ChatConn::open`] with its answer time measured.
pub async fn timed_open(
    connector: &Connector,
    target: &Target,
    transport: Transport,
    timeout: Duration,
) -> TimedOpen {
    let t0 = Instant::now();
    let result = ChatConn::open(connector, target, transport, timeout).await;
    TimedOpen {
        result,
        elapsed: t0.elapsed(),
    }
}

/// Registers `name` (or logs in if it exists) and returns its token.
pub async fn register_or_login(
    connector: &Connector,
    http: SocketAddr,
    name: &str,
    password: &str,
    timeout: Duration,
) -> Result<String, ClientError> {
    let body = json!({"name": name, "password": password});
    let resp = http::request(
        connector,
        http,
        Method::POST,
        "/api/register",
        None,
        Some(&body),
        timeout,
    )
    .await?;
    let resp = if resp.status == 409 {
        http::request(
            connector,
            http,
            Method::POST,
            "/api/login",
            None,
            Some(&body),
            timeout,
        )
        .await?
    } else {
        resp
    };
    if !(200..300).contains(&resp.status) {
        return Err(ClientError::Status {
            status: resp.status,
            body: String::from_utf8_lossy(&resp.body).into_owned(),
        });
    }
    resp.json()?
        .get("token")
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .ok_or_else(|| ClientError::Protocol("no token in answer".into()))
}
