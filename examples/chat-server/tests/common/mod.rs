//! Test helpers: start a server (in this process or as a real child
//! process), and HTTP (hyper's client), WebSocket and TCP clients over real
//! sockets.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use chat_server::{Addrs, Config, Server};
use futures::{SinkExt, StreamExt};
use http::{header, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

pub const DEADLINE: Duration = Duration::from_secs(15);

/// A unique scratch directory under the target dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "chat-server-test-{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ rand_u64()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_u64() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A test configuration: every port 0 on loopback, cheap password hashing.
pub fn config(name: &str) -> Config {
    Config {
        http: "127.0.0.1:0".parse().unwrap(),
        tcp: "127.0.0.1:0".parse().unwrap(),
        status: "127.0.0.1:0".parse().unwrap(),
        data: scratch(name),
        max_connections: 200,
        argon2_m_cost: 64,
        admin_token: Some("admin-secret".into()),
        ..Config::default()
    }
}

/// A server running in this process.
pub struct InProc {
    pub addrs: Addrs,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProc {
    pub async fn start(config: Config) -> InProc {
        let server = Server::bind(config).await.expect("bind");
        let addrs = server.addrs();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .expect("run");
        });
        InProc {
            addrs,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task.take().unwrap())
            .await
            .expect("shutdown within 10 s")
            .unwrap();
    }
}

/// A server running as a child process (the real binary).
pub struct Proc {
    pub child: Child,
    pub addrs: Addrs,
    pub stderr_log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Proc {
    pub fn start(data: &std::path::Path, extra: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args([
                "--http",
                "127.0.0.1:0",
                "--tcp",
                "127.0.0.1:0",
                "--status",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chat-server");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.find("listening http=") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line[i..].to_owned());
                    }
                }
                log2.lock().unwrap().push_str(&line);
                log2.lock().unwrap().push('\n');
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server printed its listening line");
        let get = |key: &str| -> SocketAddr {
            let start = line.find(key).unwrap() + key.len();
            line[start..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        Proc {
            addrs: Addrs {
                http: get("http="),
                tcp: get("tcp="),
                status: get("status="),
            },
            child,
            stderr_log: log,
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Waits for exit with a deadline; returns the exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if start.elapsed() > within {
                let _ = self.child.kill();
                panic!("server did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response, as hyper's client read it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request with the headers every helper sends: `Host`,
/// `Connection: close` (so the connection holds no slot afterwards), and a
/// bearer token when given.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> http::request::Builder {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONNECTION, "close");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    req
}

/// A JSON body with its `Content-Type` and `Content-Length`.
fn with_json(req: http::request::Builder, body: &[u8]) -> Request<Full<Bytes>> {
    req.header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap()
}

/// Sends `req` over `io` with hyper's HTTP/1.1 client and reads the answer.
///
/// The connection is driven here, beside the exchange, and dropped (the
/// socket closed) once the answer is read. A body cut short — by a caller
/// that read raw bytes only until the head was complete — is kept as far
/// as it came.
async fn exchange<I>(io: I, req: Request<Full<Bytes>>) -> Result<Resp, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let talk = async move {
        let (parts, mut body) = sender.send_request(req).await?.into_parts();
        let mut bytes = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                bytes.extend_from_slice(&data);
            }
        }
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_owned(), v)
            })
            .collect();
        Ok(Resp {
            status: parts.status.as_u16(),
            headers,
            body: bytes,
        })
    };
    let talk = std::pin::pin!(talk);
    match futures::future::select(talk, conn).await {
        futures::future::Either::Left((resp, _conn)) => resp,
        // The server closed: what it sent is still to be read.
        futures::future::Either::Right((_closed, talk)) => talk.await,
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Resp {
    let s = TcpStream::connect(addr).await.expect("connect");
    let req = request(addr, method, path, token);
    let req = if method == "GET" {
        req.body(Full::default()).unwrap()
    } else {
        with_json(req, body.unwrap_or(b""))
    };
    // A refused or oversized request may be answered before its body is
    // read; hyper's client reads that answer all the same.
    tokio::time::timeout(DEADLINE, exchange(TokioIo::new(s), req))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Reads one response from bytes already read off a socket (by
/// [`raw_from`] or a test's own reads), with hyper's client: the bytes are
/// played back as the server's side of an in-memory connection, once the
/// client has sent its request (an HTTP/1.1 client takes bytes that come
/// before its request for a protocol error).
pub fn parse_response(raw: &[u8]) -> Resp {
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    let req = Request::get("/").body(Full::default()).unwrap();
    let play_back = async move {
        // The first bytes of the request are the cue; the rest is not read.
        let mut request = [0u8; 1024];
        if server.read(&mut request).await? == 0 {
            return Ok(());
        }
        server.write_all(raw).await?;
        server.shutdown().await
    };
    let (resp, _) = futures::executor::block_on(futures::future::join(
        exchange(TokioIo::new(client), req),
        play_back,
    ));
    resp.unwrap_or_else(|e| panic!("no HTTP response ({e}): {:?}", String::from_utf8_lossy(raw)))
}

pub async fn post_json(addr: SocketAddr, path: &str, token: Option<&str>, body: Value) -> Resp {
    http(addr, "POST", path, token, Some(body.to_string().as_bytes())).await
}

/// Registers a user and returns its token.
pub async fn register(addr: SocketAddr, name: &str) -> String {
    let r = post_json(
        addr,
        "/api/register",
        None,
        serde_json::json!({"name": name, "password": "correct horse"}),
    )
    .await;
    assert_eq!(
        r.status,
        201,
        "register {name}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["token"].as_str().unwrap().to_owned()
}

pub async fn health(status: SocketAddr) -> (u16, Value) {
    let r = http(status, "GET", "/health", None, None).await;
    (r.status, r.json())
}

/// Polls `/health` until `pred` holds, with a deadline.
pub async fn wait_health(
    status: SocketAddr,
    within: Duration,
    pred: impl Fn(u16, &Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let (code, h) = health(status).await;
        if pred(code, &h) {
            return h;
        }
        assert!(
            start.elapsed() < within,
            "health condition not reached: {code} {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A WebSocket client.
pub struct Ws {
    pub ws: WsStream,
}

impl Ws {
    pub async fn connect(addr: SocketAddr) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("ws connect");
        Ws { ws }
    }

    /// Connects and authenticates; returns after `ready`.
    pub async fn login(addr: SocketAddr, token: &str) -> Ws {
        let mut ws = Ws::connect(addr).await;
        ws.send(serde_json::json!({"type":"auth","token":token}))
            .await;
        let r = ws.recv().await;
        assert_eq!(r["type"], "ready", "{r}");
        ws
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// The next JSON frame (panics on close or timeout).
    pub async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("frame within deadline")
                .expect("stream open")
                .expect("frame ok");
            match m {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Next frame of the given type, skipping others (e.g. presence).
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// Reads until the server's close frame; returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let m = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("close within deadline");
            match m {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

/// A TCP line-protocol client.
pub struct Tcp {
    pub r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    pub w: tokio::net::tcp::OwnedWriteHalf,
}

impl Tcp {
    pub async fn connect(addr: SocketAddr) -> Tcp {
        let s = TcpStream::connect(addr).await.expect("tcp connect");
        let (r, w) = s.into_split();
        Tcp {
            r: BufReader::new(r),
            w,
        }
    }

    /// Connects and checks the greeting.
    pub async fn hello(addr: SocketAddr) -> Tcp {
        let mut t = Tcp::connect(addr).await;
        assert_eq!(t.line().await.as_deref(), Some("HELLO chat 1"));
        t
    }

    pub async fn login(addr: SocketAddr, token: &str, user: &str) -> Tcp {
        let mut t = Tcp::hello(addr).await;
        t.send(&format!("AUTH {token}")).await;
        assert_eq!(t.line().await.unwrap(), format!("OK ready {user}"));
        t
    }

    pub async fn send(&mut self, line: &str) {
        self.w
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        self.w.write_all(b).await.unwrap();
    }

    /// The next line, or `None` at EOF.
    pub async fn line(&mut self) -> Option<String> {
        let mut s = String::new();
        let n = tokio::time::timeout(DEADLINE, self.r.read_line(&mut s))
            .await
            .expect("line within deadline")
            .ok()?;
        if n == 0 {
            return None;
        }
        Some(s.trim_end_matches(['\n', '\r']).to_owned())
    }

    /// Next line that starts with `prefix`, skipping others.
    pub async fn line_starting(&mut self, prefix: &str) -> String {
        loop {
            let l = self.line().await.expect("connection open");
            if l.starts_with(prefix) {
                return l;
            }
        }
    }
}

/// Sends raw bytes on a fresh connection from `src` (any 127.0.0.0/8
/// address, so tests can act as several clients) and reads the answer
/// until the server closes or `DEADLINE` passes.
pub async fn raw_from(src: std::net::IpAddr, addr: SocketAddr, req: &[u8]) -> Vec<u8> {
    let mut s = connect_from(src, addr).await;
    let _ = s.write_all(req).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw)).await;
    raw
}

/// A connection from a chosen loopback source address.
pub async fn connect_from(src: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(src, 0)).unwrap();
    sock.connect(addr).await.expect("connect")
}

/// One JSON POST from a chosen loopback source address.
pub async fn post_json_from(
    src: std::net::IpAddr,
    addr: SocketAddr,
    path: &str,
    body: Value,
) -> Resp {
    let s = connect_from(src, addr).await;
    let req = with_json(
        request(addr, "POST", path, None),
        body.to_string().as_bytes(),
    );
    tokio::time::timeout(DEADLINE, exchange(TokioIo::new(s), req))
        .await
        .unwrap_or_else(|_| panic!("POST {path}: no answer within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// Logs in; returns the response.
pub async fn login(addr: SocketAddr, name: &str, password: &str) -> Resp {
    post_json(
        addr,
        "/api/login",
        None,
        serde_json::json!({"name": name, "password": password}),
    )
    .await
}
