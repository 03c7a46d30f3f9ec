//! Helpers for the browser tests of the chat server's two pages.
//!
//! The tests in `tests/` drive a real headless Chromium through WebDriver
//! (`chromedriver` + [`fantoccini`]) against a real `chat-server` process:
//!
//! - [`ChatServer::start`] finds the `chat-server` binary built by cargo, starts
//!   it on port 0 for every listener with a fresh temporary `--data` directory,
//!   and reads the bound addresses from its `listening http=… tcp=… status=…`
//!   stderr line.
//! - [`Browser::start`] starts `chromedriver` on a port it picks itself and
//!   opens a session with a fresh profile, headless, with background
//!   networking and speculative preconnects off, so the browser only ever
//!   talks to 127.0.0.1 and holds only the connections the page uses.
//! - [`wait_js`] polls a JavaScript expression in the page until it yields a
//!   truthy value or a deadline passes: tests wait for conditions, not for time.
//! - [`web`] drives the web client by the element ids it documents;
//!   [`http_request`], [`LineClient`] and [`fill_to_capacity`] talk to the
//!   server directly (HTTP API, status listener, TCP line protocol).
//!
//! Chromium and chromedriver come from Debian:
//! `apt-get install -y chromium chromium-driver`.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

pub use fantoccini;
use fantoccini::{Client, ClientBuilder};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{header, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Errors of the helpers and the tests: boxed, with a message that says what
/// went wrong and what to do about it.
pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How long one HTTP exchange or one protocol line may take. Registering
/// hashes a password with argon2, which takes seconds in a debug build on a
/// busy machine.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait for a process to report that it is ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A temporary directory, removed with everything in it on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, empty directory under the system's temporary directory.
    pub fn new(prefix: &str) -> Result<Self, Error> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create temporary directory {}: {e}", path.display()))?;
        Ok(Self { path })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The workspace root, two levels above this crate.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Finds the `chat-server` binary that cargo built.
///
/// Looks at `CHAT_SERVER_BIN` if set, else in the running test's own profile
/// directory (`<target>/<profile>/`), else in `$CARGO_TARGET_DIR/{debug,release}`
/// and `<workspace>/target/{debug,release}`, taking the most recently built of
/// those that exist. `cargo test --workspace` builds it before running tests;
/// for `cargo test -p chat-e2e` alone, run `cargo build -p chat-server` first.
pub fn chat_server_binary() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("CHAT_SERVER_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        return Err(format!("CHAT_SERVER_BIN={} is not a file", path.display()).into());
    }
    let name = format!("chat-server{}", std::env::consts::EXE_SUFFIX);
    // A test runs from <target>/<profile>/deps/: the binary cargo built for
    // this very run sits in <target>/<profile>/.
    let beside = std::env::current_exe().ok().and_then(|exe| {
        let profile_dir = exe.parent()?.parent()?;
        Some(profile_dir.join(&name))
    });
    if let Some(path) = beside.filter(|p| p.is_file()) {
        return Ok(path);
    }
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        dirs.push(if dir.is_relative() {
            workspace_root().join(dir)
        } else {
            dir
        });
    }
    dirs.push(workspace_root().join("target"));
    let candidates: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| [d.join("debug").join(&name), d.join("release").join(&name)])
        .collect();
    candidates
        .iter()
        .filter_map(|p| {
            let modified = std::fs::metadata(p).and_then(|m| m.modified()).ok()?;
            Some((modified, p))
        })
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, p)| p.clone())
        .ok_or_else(|| {
            format!(
                "the chat-server binary was not found (looked at {}); build it with \
                 `cargo build -p chat-server` (or run `cargo test --workspace`), or point \
                 CHAT_SERVER_BIN at it",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
            .into()
        })
}

/// The addresses a running chat server listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    /// HTTP API, web client at `/`, WebSocket at `/ws`.
    pub http: SocketAddr,
    /// Raw TCP line protocol.
    pub tcp: SocketAddr,
    /// Status page, health, metrics.
    pub status: SocketAddr,
}

impl Addrs {
    /// Parses a `listening http=A tcp=B status=C` line (with anything before
    /// `listening`, such as a log prefix). `None` if the line is not one.
    pub fn parse_line(line: &str) -> Option<Self> {
        let rest = &line[line.find("listening ")? + "listening ".len()..];
        let (mut http, mut tcp, mut status) = (None, None, None);
        for field in rest.split_whitespace() {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let value = value.trim_matches(|c| c == '"' || c == ',');
            match key {
                "http" => http = value.parse().ok(),
                "tcp" => tcp = value.parse().ok(),
                "status" => status = value.parse().ok(),
                _ => {}
            }
        }
        Some(Self {
            http: http?,
            tcp: tcp?,
            status: status?,
        })
    }
}

/// Options for [`ChatServer::start`]; anything else uses the server's defaults.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// `--max-connections`: the budget shared by HTTP/WS and TCP connections.
    pub max_connections: Option<usize>,
    /// `--idle-timeout` in seconds.
    pub idle_timeout_s: Option<u64>,
    /// Extra command line arguments, appended last.
    pub extra_args: Vec<String>,
}

/// A running `chat-server` process, killed on drop.
#[derive(Debug)]
pub struct ChatServer {
    child: Child,
    addrs: Addrs,
    _data: TempDir,
}

impl ChatServer {
    /// Starts the server with every listener on 127.0.0.1 port 0 and a fresh
    /// data directory, and waits for its `listening …` line.
    pub fn start(options: &ServerOptions) -> Result<Self, Error> {
        let bin = chat_server_binary()?;
        let data = TempDir::new("chat-e2e-data")?;
        let mut cmd = Command::new(&bin);
        cmd.args(["--http", "127.0.0.1:0", "--tcp", "127.0.0.1:0"])
            .args(["--status", "127.0.0.1:0"])
            .arg("--data")
            .arg(data.path());
        if let Some(n) = options.max_connections {
            cmd.args(["--max-connections", &n.to_string()]);
        }
        if let Some(s) = options.idle_timeout_s {
            cmd.args(["--idle-timeout", &s.to_string()]);
        }
        cmd.args(&options.extra_args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;

        // The reader thread keeps draining stderr after the address line so
        // that the server never blocks on a full pipe; its lines are echoed to
        // the test's output, which cargo shows when a test fails.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[chat-server] {line}");
                if let Some(addrs) = Addrs::parse_line(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addrs);
                    }
                }
            }
        });
        let addrs = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                return Err(format!(
                    "{} did not print `listening http=… tcp=… status=…` within {:?} \
                     (exit status: {status:?})",
                    bin.display(),
                    STARTUP_TIMEOUT
                )
                .into());
            }
        };
        Ok(Self {
            child,
            addrs,
            _data: data,
        })
    }

    /// The bound addresses.
    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    /// The web client's URL: `http://<http addr>/`.
    pub fn client_url(&self) -> String {
        format!("http://{}/", self.addrs.http)
    }

    /// The status page's URL: `http://<status addr>/status`.
    pub fn status_url(&self) -> String {
        format!("http://{}/status", self.addrs.status)
    }
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds an executable by name on `PATH` or at one of the given paths.
fn find_program(names: &[&str], fallbacks: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    fallbacks.iter().map(PathBuf::from).find(|p| p.is_file())
}

const INSTALL_HINT: &str = "install them with `apt-get install -y chromium chromium-driver` \
     (or set CHROMEDRIVER and CHROMIUM to their paths)";

/// Path of `chromedriver`: `$CHROMEDRIVER`, else on `PATH`, else Debian's.
pub fn chromedriver_path() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("CHROMEDRIVER") {
        return Ok(PathBuf::from(p));
    }
    find_program(&["chromedriver"], &["/usr/lib/chromium/chromedriver"])
        .ok_or_else(|| format!("chromedriver was not found; {INSTALL_HINT}").into())
}

/// Path of the Chromium browser: `$CHROMIUM`, else on `PATH`, else Debian's.
pub fn chromium_path() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Ok(PathBuf::from(p));
    }
    find_program(
        &["chromium", "chromium-browser", "google-chrome"],
        &["/usr/lib/chromium/chromium"],
    )
    .ok_or_else(|| format!("chromium was not found; {INSTALL_HINT}").into())
}

/// A running `chromedriver`, killed on drop.
#[derive(Debug)]
pub struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    /// Starts `chromedriver` on a port of 127.0.0.1 that it picks itself
    /// (`--port=0`), and reads the port from its "started successfully on
    /// port N" line, so no other process can take the port in between.
    pub fn start() -> Result<Self, Error> {
        let bin = chromedriver_path()?;
        let mut child = Command::new(&bin)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}; {INSTALL_HINT}", bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            // Keep reading to the end, so chromedriver never blocks on a
            // full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // "Starting ChromeDriver … on port 0" comes first; the
                // real port follows in "… started successfully on port N."
                let port = line
                    .split("successfully on port ")
                    .nth(1)
                    .and_then(|p| p.trim().trim_end_matches('.').parse::<u16>().ok())
                    .filter(|&p| p != 0);
                if let Some(port) = port {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(port) => Ok(Self {
                child,
                url: format!("http://127.0.0.1:{port}"),
            }),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                Err(format!(
                    "{} did not report its port within {STARTUP_TIMEOUT:?} (exit status: \
                     {status:?}); {INSTALL_HINT}",
                    bin.display()
                )
                .into())
            }
        }
    }

    /// The WebDriver endpoint, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Chromium command line used for every session.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
];

/// One browser session with its own chromedriver and a fresh profile.
///
/// Close it with [`Browser::close`]; dropping it kills chromedriver, which
/// takes its browser along.
pub struct Browser {
    client: Client,
    session: Option<String>,
    // Field order matters on drop: the session is ended (in `Drop`), then
    // chromedriver is killed, then the profile directory removed.
    driver: ChromeDriver,
    _profile: TempDir,
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

impl Browser {
    /// Starts chromedriver and opens a headless Chromium session.
    pub async fn start() -> Result<Self, Error> {
        let chromium = chromium_path()?;
        let driver = ChromeDriver::start()?;
        let profile = TempDir::new("chat-e2e-profile")?;
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": args,
                // No speculative preconnects: every connection the page
                // holds is one it uses, which keeps connection counts in
                // the capacity tests exact.
                "prefs": { "net": { "network_prediction_options": 2 } },
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object literal")
        };
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(caps);

        // chromedriver takes a moment to listen; retry until the deadline.
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let client = loop {
            match builder.connect(driver.url()).await {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(format!(
                        "no WebDriver session from chromedriver at {}: {e}; {INSTALL_HINT}",
                        driver.url()
                    )
                    .into())
                }
            }
        };
        let session = client.session_id().await.ok().flatten();
        Ok(Self {
            client,
            session,
            driver,
            _profile: profile,
        })
    }

    /// The WebDriver client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Ends the session and chromedriver.
    pub async fn close(mut self) -> Result<(), Error> {
        self.session = None;
        self.client.clone().close().await?;
        Ok(())
    }
}

impl Drop for Browser {
    /// A browser not closed with [`Browser::close`] (a test that panicked)
    /// still ends its session, so that chromedriver stops Chromium instead
    /// of leaving it running once chromedriver is killed.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let Some(session) = self.session.take() else {
            return;
        };
        let Some(addr) = self
            .driver
            .url
            .strip_prefix("http://")
            .and_then(|a| a.parse::<SocketAddr>().ok())
        else {
            return;
        };
        let end = || -> std::io::Result<()> {
            let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(
                stream,
                "DELETE /session/{session} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            )?;
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
            Ok(())
        };
        let _ = end();
    }
}

/// Whether a JSON value counts as true in JavaScript.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Evaluates `expr` (a JavaScript expression) in the page every 50 ms until
/// it is truthy, and returns its value; fails after `timeout` with `what` and
/// the last value seen.
pub async fn wait_js(
    client: &Client,
    expr: &str,
    timeout: Duration,
    what: &str,
) -> Result<Value, Error> {
    let script = format!("return ({expr});");
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match client.execute(&script, vec![]).await {
            Ok(v) if truthy(&v) => return Ok(v),
            Ok(v) => last = v,
            Err(e) => last = Value::String(format!("error: {e}")),
        }
        if Instant::now() >= deadline {
            let page = client
                .execute(
                    "return location.href + ' :: ' + \
                     (document.body ? document.body.innerText : '').slice(0, 600);",
                    vec![],
                )
                .await
                .unwrap_or_default();
            // A picture of the page as it was, for whoever reads the failure.
            let shot: String = what
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            let shot = write_screenshot(client, &format!("failed-{shot}.png"), false)
                .await
                .ok()
                .and_then(|paths| paths.into_iter().next())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Err(format!(
                "timed out after {timeout:?} waiting for {what}; last value: {last}; \
                 page: {page}; screenshot: {shot}"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Evaluates a JavaScript expression once and returns its value.
pub async fn eval(client: &Client, expr: &str) -> Result<Value, Error> {
    Ok(client.execute(&format!("return ({expr});"), vec![]).await?)
}

/// Polls an async condition every 50 ms until it returns `Some`, or fails
/// after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The target directory cargo builds into: `$CARGO_TARGET_DIR` or
/// `<workspace>/target`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Writes a PNG screenshot of the current page to
/// `<target>/chat-e2e-screenshots/<name>`, and also to `<workspace>/docs/<name>`
/// when `CHAT_E2E_UPDATE_DOCS=1` (that is how the README's pictures are made).
/// Returns the paths written.
pub async fn save_screenshot(client: &Client, name: &str) -> Result<Vec<PathBuf>, Error> {
    write_screenshot(client, name, true).await
}

async fn write_screenshot(
    client: &Client,
    name: &str,
    for_docs: bool,
) -> Result<Vec<PathBuf>, Error> {
    let png = client.screenshot().await?;
    let mut dirs = vec![target_dir().join("chat-e2e-screenshots")];
    if for_docs && std::env::var_os("CHAT_E2E_UPDATE_DOCS").is_some_and(|v| v == "1") {
        dirs.push(workspace_root().join("docs"));
    }
    let mut written = Vec::new();
    for dir in dirs {
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join(name);
        std::fs::write(&path, &png).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// A response from [`http_request`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, or `Value::Null` if it is empty or not JSON.
    pub json: Value,
}

impl HttpResponse {
    /// The first header with this (lower case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request with `Connection: close` over a fresh connection,
/// through hyper's client, so that it holds no connection slot afterwards.
/// `body` is sent as JSON, and `token` as `Authorization: Bearer`.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> Result<HttpResponse, Error> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONNECTION, "close")
        .header(header::ACCEPT, "application/json");
    if !body.is_empty() {
        req = req
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len());
    }
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::from(body)))?;
    tokio::time::timeout(IO_TIMEOUT, exchange(addr, req))
        .await
        .map_err(|_| format!("{method} http://{addr}{path}: no answer within {IO_TIMEOUT:?}"))?
        .map_err(|e| format!("{method} http://{addr}{path}: {e}").into())
}

/// Sends `req` on a new connection to `addr` and reads the whole answer.
/// The connection is driven here, beside the exchange, and dropped (the
/// socket closed) as soon as the answer is read.
async fn exchange(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<HttpResponse, Error> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let talk = async move {
        let res = sender.send_request(req).await?;
        let status = res.status().as_u16();
        let headers = res
            .headers()
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_owned(), v)
            })
            .collect();
        let body = res.into_body().collect().await?.to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok::<_, hyper::Error>(HttpResponse {
            status,
            headers,
            json,
        })
    };
    tokio::pin!(talk);
    let res = tokio::select! {
        res = &mut talk => res,
        // The server closed: what it sent is still to be read.
        _ = conn => talk.await,
    };
    Ok(res?)
}

/// Registers a user over the HTTP API and returns its token.
pub async fn register(addr: SocketAddr, name: &str, password: &str) -> Result<String, Error> {
    let res = http_request(
        addr,
        "POST",
        "/api/register",
        Some(&json!({"name": name, "password": password})),
        None,
    )
    .await?;
    match res.json.get("token").and_then(Value::as_str) {
        Some(token) if res.status == 201 || res.status == 200 => Ok(token.to_string()),
        _ => Err(format!("register {name}: HTTP {} {}", res.status, res.json).into()),
    }
}

/// The status listener's `/health` JSON (whatever its HTTP status).
pub async fn health(status_addr: SocketAddr) -> Result<Value, Error> {
    Ok(http_request(status_addr, "GET", "/health", None, None)
        .await?
        .json)
}

/// A client of the raw TCP line protocol.
#[derive(Debug)]
pub struct LineClient {
    reader: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    /// The server's first line: `HELLO chat 1`, or `BUSY retry-after=N` at capacity.
    pub greeting: String,
}

impl LineClient {
    /// Connects and reads the greeting line.
    pub async fn connect(addr: SocketAddr) -> Result<Self, Error> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to the TCP listener {addr}: {e}"))?;
        let (read, writer) = stream.into_split();
        let mut client = Self {
            reader: tokio::io::BufReader::new(read),
            writer,
            greeting: String::new(),
        };
        client.greeting = client.read_line().await?.unwrap_or_default();
        Ok(client)
    }

    /// Whether the server greeted with `HELLO`, i.e. this connection holds a slot.
    pub fn admitted(&self) -> bool {
        self.greeting.starts_with("HELLO")
    }

    /// Sends one line (the newline is added).
    pub async fn send(&mut self, line: &str) -> Result<(), Error> {
        use tokio::io::AsyncWriteExt;
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await?;
        Ok(())
    }

    /// Reads one line without its line ending; `None` at end of stream.
    /// Fails after 10 s without a line.
    pub async fn read_line(&mut self) -> Result<Option<String>, Error> {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        let n = tokio::time::timeout(IO_TIMEOUT, self.reader.read_line(&mut line))
            .await
            .map_err(|_| format!("no line from the TCP listener within {IO_TIMEOUT:?}"))??;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
    }

    /// Reads lines until one starts with `prefix`, and returns it; pushed
    /// `MSG` lines and others in between are skipped.
    pub async fn expect(&mut self, prefix: &str) -> Result<String, Error> {
        loop {
            match self.read_line().await? {
                Some(line) if line.starts_with(prefix) => return Ok(line),
                Some(line) if line.starts_with("ERR") => {
                    return Err(format!("expected `{prefix}…`, got `{line}`").into())
                }
                Some(_) => continue,
                None => return Err(format!("connection closed while expecting `{prefix}…`").into()),
            }
        }
    }
}

/// Opens TCP connections to the chat listener until the server answers
/// `BUSY`, and returns the admitted ones: while they are held, every
/// connection slot is taken.
pub async fn fill_to_capacity(tcp: SocketAddr, limit: usize) -> Result<Vec<LineClient>, Error> {
    let mut held = Vec::new();
    for _ in 0..limit {
        let client = LineClient::connect(tcp).await?;
        if !client.admitted() {
            if client.greeting.starts_with("BUSY") {
                return Ok(held);
            }
            return Err(format!("unexpected greeting `{}`", client.greeting).into());
        }
        held.push(client);
    }
    Err(format!("still admitted after {limit} connections: is --max-connections set?").into())
}

/// Actions on the web client page, by the element ids it documents.
pub mod web {
    use super::*;
    use fantoccini::Locator;

    /// How long a page action may take to show its effect.
    /// Generous: a debug build hashes passwords (argon2) slowly, and CI
    /// machines are small.
    pub const UI_TIMEOUT: Duration = Duration::from_secs(30);

    /// Fills in the sign-in form and presses "Create account" (`register`
    /// true) or "Sign in".
    pub async fn sign_in(
        c: &Client,
        name: &str,
        password: &str,
        register: bool,
    ) -> Result<(), Error> {
        c.wait()
            .at_most(UI_TIMEOUT)
            .for_element(Locator::Id("auth-name"))
            .await?;
        wait_js(
            c,
            "!document.getElementById('auth-view').hidden",
            UI_TIMEOUT,
            "the sign-in form",
        )
        .await?;
        let field = c.find(Locator::Id("auth-name")).await?;
        field.clear().await?;
        field.send_keys(name).await?;
        let field = c.find(Locator::Id("auth-password")).await?;
        field.clear().await?;
        field.send_keys(password).await?;
        let button = if register {
            "register-btn"
        } else {
            "login-btn"
        };
        c.find(Locator::Id(button)).await?.click().await?;
        Ok(())
    }

    /// Waits until the page reports a live, authenticated connection.
    pub async fn wait_online(c: &Client, timeout: Duration) -> Result<(), Error> {
        wait_js(
            c,
            "document.getElementById('conn').dataset.state === 'online'",
            timeout,
            "the connection state `online`",
        )
        .await?;
        Ok(())
    }

    /// Types a message into the composer and sends it.
    pub async fn send(c: &Client, text: &str) -> Result<(), Error> {
        let field = c.find(Locator::Id("composer-text")).await?;
        field.clear().await?;
        // Typing goes through the real keyboard path; the value is then
        // checked, since a few characters are special to WebDriver.
        field.send_keys(text).await?;
        let typed = eval(c, "document.getElementById('composer-text').value").await?;
        if typed.as_str() != Some(text) {
            return Err(format!("composer holds {typed}, expected {text:?}").into());
        }
        c.find(Locator::Id("send-btn")).await?.click().await?;
        Ok(())
    }

    /// The texts of the confirmed messages (those with a server id) shown
    /// for the current room, in order.
    pub async fn message_texts(c: &Client) -> Result<Vec<String>, Error> {
        let v = eval(
            c,
            "Array.from(document.querySelectorAll('#messages li.msg[data-id] .text'), e => e.textContent)",
        )
        .await?;
        Ok(serde_json::from_value(v)?)
    }

    /// Waits until a confirmed message with exactly this text is shown.
    pub async fn wait_message(c: &Client, text: &str, timeout: Duration) -> Result<(), Error> {
        let expr = format!(
            "Array.from(document.querySelectorAll('#messages li.msg[data-id] .text')).some(e => e.textContent === {})",
            Value::String(text.to_string())
        );
        wait_js(c, &expr, timeout, &format!("the message {text:?}")).await?;
        Ok(())
    }

    /// Opens a room from the sidebar, refreshing the list until it shows.
    pub async fn open_room(c: &Client, room: &str) -> Result<(), Error> {
        let selector = format!("#rooms li[data-room=\"{room}\"]");
        let deadline = Instant::now() + UI_TIMEOUT;
        loop {
            if let Ok(li) = c.find(Locator::Css(&selector)).await {
                li.click().await?;
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("room {room} never appeared in the sidebar").into());
            }
            c.find(Locator::Id("refresh-rooms")).await?.click().await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        wait_js(
            c,
            &format!("document.getElementById('room-title').textContent === '#{room}'"),
            UI_TIMEOUT,
            "the room title",
        )
        .await?;
        Ok(())
    }

    /// Replaces `window.alert` (and friends) with a recorder, so a script
    /// that runs by mistake is counted instead of blocking the session.
    pub async fn trap_alerts(c: &Client) -> Result<(), Error> {
        c.execute(
            "window.__alerts = []; \
             for (const f of ['alert', 'confirm', 'prompt']) \
               window[f] = (m) => { window.__alerts.push(String(m)); };",
            vec![],
        )
        .await?;
        Ok(())
    }

    /// How many times a trapped dialog was called.
    pub async fn alerts(c: &Client) -> Result<u64, Error> {
        Ok(eval(c, "(window.__alerts || []).length")
            .await?
            .as_u64()
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_line() {
        let line = "2026-11-27T14:00:00Z  INFO chat_server: listening http=127.0.0.1:40001 \
                    tcp=127.0.0.1:40002 status=127.0.0.1:40003";
        let addrs = Addrs::parse_line(line).expect("a listening line");
        assert_eq!(addrs.http.port(), 40001);
        assert_eq!(addrs.tcp.port(), 40002);
        assert_eq!(addrs.status.port(), 40003);
        assert_eq!(Addrs::parse_line("listening http=127.0.0.1:1"), None);
        assert_eq!(Addrs::parse_line("something else"), None);
    }

    #[test]
    fn truthiness_follows_javascript() {
        assert!(!truthy(&json!(null)));
        assert!(!truthy(&json!(0)));
        assert!(!truthy(&json!("")));
        assert!(truthy(&json!("x")));
        assert!(truthy(&json!([])));
    }
}
