//! admit-hyper over real sockets on 127.0.0.1, driven by hyper-util's client,
//! raw TCP clients (slowloris) and a tokio-tungstenite WebSocket client.

mod common;

use admit_hyper::Server;
use axum::extract::ws::{Message as WsMessage, WebSocketUpgrade};
use axum::response::Response;
use axum::{routing, Router};
use common::{get, http1_client, http2_client, start, wait_until, within};
use futures::{SinkExt, StreamExt};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

async fn echo(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, WsMessage::Text(_) | WsMessage::Binary(_))
                && socket.send(msg).await.is_err()
            {
                break;
            }
        }
    })
}

fn app() -> Router {
    Router::new()
        .route("/", routing::get(|| async { "hello" }))
        .route("/ws", routing::get(echo))
}

/// Reads until the peer closes (end of file or an error); fails the test if
/// that takes more than five seconds.
async fn closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    within("the server to close the connection", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[tokio::test]
async fn serves_http1_and_http2_and_counts_connections_in_health() {
    let server = start(Server::new().http1_and_http2(), app(), 8).await;
    let h1 = http1_client();
    let (status, _, body) = get(&h1, &server.url("/")).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "hello");

    let h2 = http2_client();
    let mut requests = Vec::new();
    for _ in 0..4 {
        let (h2, url) = (h2.clone(), server.url("/"));
        requests.push(tokio::spawn(async move { get(&h2, &url).await.unwrap().0 }));
    }
    for r in requests {
        assert_eq!(r.await.unwrap(), 200);
    }
    // One pooled HTTP/1.1 connection and one multiplexed HTTP/2 connection.
    let snap = server.limiter.health().snapshot();
    assert_eq!(snap.in_use, 2);
    assert_eq!(snap.admitted_total, 2);

    drop((h1, h2));
    let limiter = server.limiter.clone();
    wait_until("closed client connections give their permits back", || {
        limiter.in_use() == 0
    })
    .await;
}

#[tokio::test]
async fn at_capacity_clients_receive_503_with_retry_after_and_connection_close() {
    let server = start(Server::new(), app(), 1).await;
    let mut holder = TcpStream::connect(server.addr).await.unwrap();
    let limiter = server.limiter.clone();
    wait_until("the first connection is admitted", || limiter.in_use() == 1).await;

    let client = http1_client();
    for _ in 0..20 {
        let (status, headers, body) = get(&client, &server.url("/")).await.unwrap();
        assert_eq!(status, 503);
        assert_eq!(headers["retry-after"], "5");
        assert_eq!(headers["connection"], "close");
        assert!(std::str::from_utf8(&body).unwrap().contains("capacity"));
    }
    let snap = limiter.health().snapshot();
    assert_eq!(snap.rejected_total["full"], 20);
    assert_eq!(snap.in_use, 1);

    // The slot comes back when the holder leaves.
    holder.shutdown().await.unwrap();
    drop(holder);
    wait_until("the holder's permit is released", || limiter.in_use() == 0).await;
    let (status, _, body) = get(&client, &server.url("/")).await.unwrap();
    assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"hello"[..]));
}

#[tokio::test]
async fn slowloris_connections_are_closed_after_the_header_timeout_while_others_are_served() {
    // HTTP/1.1 only (the default): hyper's HTTP/1 header timeout and the
    // server's first-request deadline cut them off.
    slowloris_is_cut_off(Server::new()).await;
}

#[tokio::test]
async fn with_both_protocols_slowloris_connections_are_closed_after_the_header_timeout() {
    // Both protocols: the silent client and the trickled preface are cut
    // off while the server is still telling HTTP/1.1 from HTTP/2.
    slowloris_is_cut_off(Server::new().http1_and_http2()).await;
}

async fn slowloris_is_cut_off(server: Server) {
    let timeout = Duration::from_millis(300);
    let server = start(server.header_timeout(timeout), app(), 4).await;
    let limiter = server.limiter.clone();
    let opened = Instant::now();

    // A: connects and says nothing (protocol not even known yet).
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // B: starts an HTTP/1.1 request and trickles its headers.
    let trickle_http1 = tokio::spawn(trickle(
        server.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ",
    ));
    // C: trickles the HTTP/2 preface.
    let trickle_http2 = tokio::spawn(trickle(server.addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
    wait_until("three slow clients are admitted", || limiter.in_use() == 3).await;

    // A normal client is served meanwhile.
    let client = http1_client();
    let (status, _, body) = get(&client, &server.url("/")).await.unwrap();
    assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"hello"[..]));

    closed_by_server(&mut silent).await;
    let sent_http1 = within("the trickling HTTP/1.1 client is cut off", trickle_http1)
        .await
        .unwrap();
    let sent_http2 = within("the trickling HTTP/2 client is cut off", trickle_http2)
        .await
        .unwrap();
    assert!(
        opened.elapsed() >= timeout,
        "closed by the header timeout, not before"
    );
    assert!(
        sent_http1 > 3 && sent_http2 > 3,
        "they kept sending: {sent_http1} {sent_http2}"
    );

    // Every slow client's slot is free again (and the idle keep-alive
    // connection of the normal client is closed by the same timeout).
    wait_until("the slow clients' permits are released", || {
        limiter.in_use() == 0
    })
    .await;
    let (status, _, _) = get(&client, &server.url("/")).await.unwrap();
    assert_eq!(status, 200);
}

/// Sends `bytes` one at a time every 40 ms (cycling), until the server
/// closes the connection. Returns how many bytes it sent.
async fn trickle(addr: std::net::SocketAddr, bytes: &'static [u8]) -> usize {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.split();
    let mut buf = [0u8; 256];
    let mut sent = 0;
    loop {
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => return sent,
                Ok(_) => {}
            },
            () = tokio::time::sleep(Duration::from_millis(40)) => {
                if wr.write_all(&bytes[sent % bytes.len()..][..1]).await.is_err() {
                    return sent;
                }
                sent += 1;
            }
        }
    }
}

#[tokio::test]
async fn an_upgraded_websocket_holds_its_permit_and_loses_it_on_revoke() {
    websocket_holds_its_permit(Server::new()).await;
}

#[tokio::test]
async fn with_both_protocols_an_upgraded_websocket_holds_its_permit_and_loses_it_on_revoke() {
    // The upgrade request's first bytes were read to tell HTTP/1.1 from
    // HTTP/2 and handed to hyper again.
    websocket_holds_its_permit(Server::new().http1_and_http2()).await;
}

async fn websocket_holds_its_permit(server: Server) {
    let timeout = Duration::from_millis(200);
    let server = start(server.header_timeout(timeout), app(), 1).await;
    let limiter = server.limiter.clone();

    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut ws, res) = tokio_tungstenite::client_async(format!("ws://{}/ws", server.addr), stream)
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    assert_eq!(limiter.in_use(), 1);

    // Outlive the header timeout: it applies to requests, not to an
    // upgraded stream.
    tokio::time::sleep(timeout * 2).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );

    // The WebSocket still holds the only permit: HTTP clients get a 503.
    let (status, headers, _) = get(&http1_client(), &server.url("/")).await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "5");

    // Revoking the lease ends the upgraded stream and frees the slot.
    assert_eq!(limiter.revoke_idle(Duration::ZERO), 1);
    within("the upgraded stream ends", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    wait_until("the revoked permit is released", || limiter.in_use() == 0).await;
    let snap = limiter.health().snapshot();
    assert_eq!(snap.revoked_total, 1);
    assert_eq!(
        snap.reclaimed_total, 0,
        "released by the stream closing, not reclaimed"
    );
    let (status, _, _) = get(&http1_client(), &server.url("/")).await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_watchdog_revokes_an_idle_websocket() {
    let server = start(Server::new(), app(), 4).await;
    let limiter = server.limiter.clone();
    let _watchdog = admit::Watchdog::spawn(
        limiter.clone(),
        admit::WatchdogConfig::default()
            .interval(Duration::from_millis(10))
            .max_idle(Duration::from_millis(300))
            .grace(Duration::from_secs(5)),
    )
    .unwrap();

    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", server.addr), stream)
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    let quiet = Instant::now();
    within("the idle WebSocket is closed", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(quiet.elapsed() >= Duration::from_millis(250));
    wait_until("the permit is released", || limiter.in_use() == 0).await;
    assert!(limiter.health().snapshot().revoked_total >= 1);
}

/// An app with `/slow`, which signals when it starts and answers when the
/// test opens its gate, and `/stuck`, which never answers.
fn gated_app() -> (Router, oneshot::Receiver<()>, oneshot::Sender<()>) {
    let (entered_tx, entered_rx) = oneshot::channel::<()>();
    let (gate_tx, gate_rx) = oneshot::channel::<()>();
    let entered = Arc::new(Mutex::new(Some(entered_tx)));
    let gate = Arc::new(Mutex::new(Some(gate_rx)));
    let app = app()
        .route(
            "/slow",
            routing::get(move || {
                let entered = entered.lock().unwrap().take();
                let gate = gate.lock().unwrap().take();
                async move {
                    if let Some(entered) = entered {
                        let _ = entered.send(());
                    }
                    if let Some(gate) = gate {
                        let _ = gate.await;
                    }
                    "slow done"
                }
            }),
        )
        .route("/stuck", routing::get(std::future::pending::<&'static str>));
    (app, entered_rx, gate_tx)
}

#[tokio::test]
async fn graceful_shutdown_completes_in_flight_requests_and_closes_idle_connections() {
    let (app, entered, gate) = gated_app();
    let mut server = start(Server::new().drain_timeout(Duration::from_secs(30)), app, 8).await;

    // An idle keep-alive connection.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"hello") {
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server closed before answering");
        response.extend_from_slice(&buf[..n]);
    }

    // A request in flight.
    let client = http1_client();
    let url = server.url("/slow");
    let in_flight = tokio::spawn(async move { get(&client, &url).await });
    entered.await.unwrap();

    server.shutdown();
    closed_by_server(&mut idle).await;
    // No longer accepting: the listening socket is closed.
    assert!(TcpStream::connect(server.addr).await.is_err());
    assert!(
        !server.task.is_finished(),
        "the drain waits for the request in flight"
    );
    assert_eq!(server.limiter.in_use(), 1);

    gate.send(()).unwrap();
    let (status, headers, body) = within("the in-flight request completes", in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (status, &body[..]),
        (http::StatusCode::OK, &b"slow done"[..])
    );
    assert_eq!(headers["connection"], "close");
    within("serve returns after the drain", &mut server.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server.limiter.in_use(), 0);
}

#[tokio::test]
async fn the_drain_deadline_closes_stuck_requests_and_upgraded_streams() {
    let (app, _entered, _gate) = gated_app();
    let deadline = Duration::from_millis(300);
    let mut server = start(Server::new().drain_timeout(deadline), app, 8).await;

    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", server.addr), stream)
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));

    let client = http1_client();
    let url = server.url("/stuck");
    let stuck = tokio::spawn(async move { get(&client, &url).await });
    let limiter = server.limiter.clone();
    wait_until("both connections are admitted", || limiter.in_use() == 2).await;

    let asked = Instant::now();
    server.shutdown();
    within("serve returns at the drain deadline", &mut server.task)
        .await
        .unwrap()
        .unwrap();
    assert!(asked.elapsed() >= deadline);
    assert!(
        stuck.await.unwrap().is_err(),
        "the stuck request was cut off"
    );
    within("the upgraded stream is closed", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert_eq!(server.limiter.in_use(), 0);
}

/// A WebSocket handler that splits the socket: one task reads, another
/// writes, as chat servers do. Revocation must still end it.
async fn split_echo(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|socket| async move {
        let (mut sink, mut stream) = socket.split();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<WsMessage>(8);
        let writer = tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
        });
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, WsMessage::Text(_)) && tx.send(msg).await.is_err() {
                break;
            }
        }
        drop(tx);
        let _ = writer.await;
    })
}

#[tokio::test]
async fn revocation_ends_a_websocket_read_and_written_from_separate_tasks() {
    let app = Router::new().route("/split", routing::get(split_echo));
    let server = start(Server::new(), app, 2).await;
    let limiter = server.limiter.clone();
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{}/split", server.addr), stream)
            .await
            .unwrap();
    for text in ["one", "two"] {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    assert_eq!(limiter.in_use(), 1);
    assert_eq!(limiter.revoke_idle(Duration::ZERO), 1);
    within("the split WebSocket ends", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    wait_until("its permit is released", || limiter.in_use() == 0).await;
}

#[tokio::test]
async fn http2_requests_in_flight_complete_on_shutdown() {
    let (app, entered, gate) = gated_app();
    let mut server = start(Server::new().http1_and_http2(), app, 4).await;
    let client = http2_client();
    let url = server.url("/slow");
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { get(&client, &url).await })
    };
    entered.await.unwrap();
    server.shutdown();
    gate.send(()).unwrap();
    let (status, _, body) = within("the HTTP/2 request completes", in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (status, &body[..]),
        (http::StatusCode::OK, &b"slow done"[..])
    );
    within("serve returns", &mut server.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server.limiter.in_use(), 0);
}

#[tokio::test]
async fn request_admission_and_connection_admission_work_together() {
    // Connections are capped by the listener's limiter; requests on them by
    // admit-tower's layer with a limiter of its own.
    let requests = admit::Limiter::new(1);
    let (app, entered, gate) = gated_app();
    let app = app.layer(admit_tower::HttpAdmitLayer::new(requests.clone()));
    let server = start(Server::new().http1_and_http2(), app, 8).await;

    let client = http2_client();
    let url = server.url("/slow");
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { get(&client, &url).await })
    };
    entered.await.unwrap();
    // Same HTTP/2 connection, second request: shed by the request limiter.
    let (status, headers, _) = get(&client, &server.url("/")).await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "5");
    assert_eq!(server.limiter.in_use(), 1, "one connection");

    gate.send(()).unwrap();
    let (status, _, _) = slow.await.unwrap().unwrap();
    assert_eq!(status, 200);
    let (status, _, body) = get(&client, &server.url("/")).await.unwrap();
    assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"hello"[..]));
    assert_eq!(requests.in_use(), 0);
}
