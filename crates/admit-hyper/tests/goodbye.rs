//! The connection's `ConnInfo` in request extensions, and the goodbye
//! window: an axum WebSocket handler hears of its revocation and sends a
//! close frame the client really receives. Loopback only.

mod common;

use admit_hyper::{ConnInfo, Ended, Server};
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocketUpgrade};
use axum::{routing, Extension, Router};
use common::{get, http1_client, http2_client, start, wait_until, within};
use futures::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// Echoes text; when the connection is ended from outside, closes with
/// 1013 and the reason. Reports to `report` when it finishes: why the
/// connection was ended from outside (if it was), and whether a close frame
/// was written.
fn app(report: mpsc::UnboundedSender<(Option<Ended>, bool)>) -> Router {
    Router::new().route(
        "/ws",
        routing::get(
            move |upgrade: WebSocketUpgrade, Extension(conn): Extension<ConnInfo>| {
                let report = report.clone();
                async move {
                    upgrade.on_upgrade(move |mut socket| async move {
                        loop {
                            tokio::select! {
                                msg = socket.recv() => match msg {
                                    Some(Ok(WsMessage::Text(t))) => {
                                        if socket.send(WsMessage::Text(t)).await.is_err() {
                                            break;
                                        }
                                    }
                                    Some(Ok(_)) => {}
                                    _ => break,
                                },
                                why = conn.ending.ended() => {
                                    let reason = match why {
                                        Ended::Revoked => "revoked",
                                        _ => "idle",
                                    };
                                    let close = CloseFrame { code: 1013, reason: reason.into() };
                                    let sent = socket.send(WsMessage::Close(Some(close))).await.is_ok();
                                    let _ = report.send((Some(why), sent));
                                    return;
                                }
                            }
                        }
                        let _ = report.send((conn.ending.reason(), false));
                    })
                }
            },
        ),
    )
}

type Client = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn connect(addr: std::net::SocketAddr) -> Client {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut ws, res) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    ws
}

/// Reads until the connection ends; the close frame, if one came.
async fn close_frame(ws: &mut Client) -> Option<(u16, String)> {
    within("the WebSocket ends", async {
        let mut frame = None;
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(Some(c)) = msg {
                frame = Some((u16::from(c.code), c.reason.to_string()));
            }
        }
        frame
    })
    .await
}

#[tokio::test]
async fn a_revoked_websocket_receives_its_close_frame_inside_the_goodbye_window() {
    let (report, mut reports) = mpsc::unbounded_channel();
    let server = start(
        Server::new().goodbye_window(Duration::from_millis(500)),
        app(report),
        2,
    )
    .await;
    let limiter = server.limiter.clone();
    let mut ws = connect(server.addr).await;

    assert_eq!(limiter.revoke_idle(Duration::ZERO), 1);
    assert_eq!(
        close_frame(&mut ws).await,
        Some((1013, "revoked".to_owned()))
    );
    assert_eq!(
        within("the handler finishes", reports.recv()).await,
        Some((Some(Ended::Revoked), true))
    );
    wait_until("the revoked permit is released", || limiter.in_use() == 0).await;
    let snap = limiter.health().snapshot();
    assert_eq!((snap.revoked_total, snap.reclaimed_total), (1, 0));
}

#[tokio::test]
async fn the_watchdog_revoking_an_idle_websocket_sends_close_1013() {
    let (report, mut reports) = mpsc::unbounded_channel();
    let server = start(
        Server::new().goodbye_window(Duration::from_millis(500)),
        app(report),
        2,
    )
    .await;
    let limiter = server.limiter.clone();
    let _watchdog = admit::Watchdog::spawn(
        limiter.clone(),
        admit::WatchdogConfig::default()
            .interval(Duration::from_millis(10))
            .max_idle(Duration::from_millis(300))
            .grace(Duration::from_secs(5)),
    )
    .unwrap();
    let mut ws = connect(server.addr).await;
    let quiet = Instant::now();
    let (code, reason) = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(CloseCode::from(code), CloseCode::Again);
    assert_eq!(reason, "revoked");
    assert!(quiet.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        within("the handler finishes", reports.recv()).await,
        Some((Some(Ended::Revoked), true))
    );
    wait_until("the permit is released", || limiter.in_use() == 0).await;
}

#[tokio::test]
async fn without_a_goodbye_window_the_close_frame_cannot_be_sent() {
    let (report, mut reports) = mpsc::unbounded_channel();
    let server = start(Server::new(), app(report), 2).await;
    let limiter = server.limiter.clone();
    let mut ws = connect(server.addr).await;
    assert_eq!(limiter.revoke_idle(Duration::ZERO), 1);
    assert_eq!(close_frame(&mut ws).await, None);
    // The handler heard of it (from the signal, or from its read ending at
    // the same moment), but no close frame could be written.
    assert_eq!(
        within("the handler finishes", reports.recv()).await,
        Some((Some(Ended::Revoked), false))
    );
    wait_until("the permit is released", || limiter.in_use() == 0).await;
}

#[tokio::test]
async fn every_request_carries_its_connections_info() {
    let app = Router::new().route(
        "/",
        routing::get(|Extension(conn): Extension<ConnInfo>| async move {
            format!("{} {} {}", conn.remote_addr, conn.local_addr, conn.lease)
        }),
    );
    let server = start(Server::new().http1_and_http2(), app, 4).await;
    for client in [http1_client(), http2_client()] {
        let (status, _, body) = get(&client, &server.url("/")).await.unwrap();
        assert_eq!(status, 200);
        let body = String::from_utf8(body.to_vec()).unwrap();
        let fields: Vec<&str> = body.split(' ').collect();
        assert_eq!(fields.len(), 3, "{body}");
        assert!(fields[0].starts_with("127.0.0.1:"), "{body}");
        assert_eq!(fields[1], server.addr.to_string());
    }
    // Two connections held at once: two leases, each request told its own.
    let mut leases = std::collections::HashSet::new();
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let stream2 = TcpStream::connect(server.addr).await.unwrap();
    let limiter = server.limiter.clone();
    wait_until("both connections are admitted", || limiter.in_use() == 2).await;
    for mut s in [stream, stream2] {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        within("the answer", s.read_to_string(&mut out))
            .await
            .unwrap();
        let local = s.local_addr().unwrap().to_string();
        let body = out.rsplit("\r\n\r\n").next().unwrap().to_owned();
        assert!(body.starts_with(&format!("{local} ")), "{body}");
        leases.insert(body.rsplit(' ').next().unwrap().to_owned());
    }
    assert_eq!(leases.len(), 2);
}

#[tokio::test]
async fn a_revoked_idle_keep_alive_connection_closes_without_waiting_for_the_window() {
    let app = Router::new().route("/", routing::get(|| async { "hello" }));
    let window = Duration::from_secs(3);
    let server = start(Server::new().goodbye_window(window), app, 2).await;
    let limiter = server.limiter.clone();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"hello") {
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let revoked = Instant::now();
    assert_eq!(limiter.revoke_idle(Duration::ZERO), 1);
    let mut rest = Vec::new();
    within(
        "the revoked connection closes",
        stream.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    assert!(rest.is_empty());
    assert!(
        revoked.elapsed() < window,
        "hyper shut the idle connection down at once: {:?}",
        revoked.elapsed()
    );
    wait_until("the permit is released", || limiter.in_use() == 0).await;
}
