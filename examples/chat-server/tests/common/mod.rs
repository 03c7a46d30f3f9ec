//! Test helpers: start a server (in this process or as a real child
//! process), and minimal HTTP, WebSocket and TCP clients over real sockets.
#![allow(dead_code, unreachable_pub)]

use chat_server::{Addrs, Config, Server};
use futures::{SinkExt, StreamExt};
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

/// A parsed HTTP response.
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

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Resp {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or(b"");
    if method != "GET" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    // A refused or oversized request may be answered before the body is
    // read, and the connection closed: ignore write errors.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw)).await;
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let n =
            usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap().trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
    out
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
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    parse_response(&raw_from(src, addr, req.as_bytes()).await)
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
