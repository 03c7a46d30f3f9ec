//! A client that stops reading is not allowed to grow the server's memory:
//! once its bounded outbound queue overflows it gets the `lagged` error and
//! close 1013 (TCP: `ERR lagged` and close), while everyone else carries on.

mod common;
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Keeps sending 3 KB messages to `general` from a few TCP clients until
/// told to stop. With `pace`, the flood never runs more than half an
/// outbox ahead of what a reading client has seen, so that a reader the
/// scheduler starves for a moment is not mistaken for a laggard.
fn flood(
    a: chat_server::Addrs,
    token: String,
    stop: Arc<AtomicBool>,
    pace: Option<tokio::sync::watch::Receiver<u64>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let sent = Arc::new(AtomicU64::new(0));
    (0..3)
        .map(|f| {
            let (token, stop, sent, mut pace) =
                (token.clone(), stop.clone(), sent.clone(), pace.clone());
            tokio::spawn(async move {
                let mut t = Tcp::login(a.tcp, &token, "flooder").await;
                let text = "z".repeat(3000);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(seen) = pace.as_mut() {
                        let ahead = sent.load(Ordering::Relaxed);
                        let limit = (chat_server::hub::OUTBOX / 2) as u64;
                        if seen.wait_for(|n| ahead < n + limit).await.is_err() {
                            return;
                        }
                    }
                    sent.fetch_add(8, Ordering::Relaxed);
                    for _ in 0..8 {
                        t.send(&format!("SAY general f{f}-{i} {text}")).await;
                        i += 1;
                    }
                    // Read our acks so that we never lag ourselves.
                    let mut acks = 0;
                    while acks < 8 {
                        match t.line().await {
                            Some(l) if l.starts_with("OK ack") => acks += 1,
                            Some(_) => {}
                            None => return,
                        }
                    }
                }
            })
        })
        .collect()
}

async fn wait_lagged(a: chat_server::Addrs, n: u64) {
    let start = Instant::now();
    loop {
        let (_, h) = health(a.status).await;
        if h["chat"]["lagged_total"].as_u64().unwrap() >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no lag detected: {h}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_stops_reading_is_closed_with_1013() {
    let srv = InProc::start(config("lag-ws")).await;
    let a = srv.addrs;
    let token = register(a.http, "slowpoke").await;
    let flooder = register(a.http, "flooder").await;

    // A small receive buffer so that the kernel does not hide the lag.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(a.http).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", a.http), stream)
        .await
        .unwrap();
    let mut slow = Ws { ws };
    slow.send(json!({"type":"auth","token":token})).await;
    assert_eq!(slow.recv().await["type"], "ready");
    slow.send(json!({"type":"join","room":"general"})).await;
    assert_eq!(slow.recv().await["type"], "joined");

    // A well-behaved reader in the same room.
    let mut good = Ws::login(a.http, &token).await;
    good.send(json!({"type":"join","room":"general"})).await;
    assert_eq!(good.recv().await["type"], "joined");
    let (seen_tx, seen) = tokio::sync::watch::channel(0u64);
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(Ok(m)) = futures::StreamExt::next(&mut good.ws).await {
            if let Message::Text(t) = m {
                if t.contains("\"type\":\"message\"") {
                    n += 1;
                    seen_tx.send_replace(n);
                }
            }
        }
        n
    });

    let stop = Arc::new(AtomicBool::new(false));
    let floods = flood(a, flooder, stop.clone(), Some(seen));
    wait_lagged(a, 1).await;
    stop.store(true, Ordering::Relaxed);

    // Now read: buffered messages, then the lagged error, then close 1013.
    let mut saw_error = false;
    let code = loop {
        let m = tokio::time::timeout(DEADLINE, futures::StreamExt::next(&mut slow.ws))
            .await
            .unwrap();
        match m {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "error" {
                    assert_eq!(v["code"], "lagged");
                    saw_error = true;
                }
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("connection broke instead of closing: {e}"),
            None => break None,
        }
    };
    assert_eq!(code, Some(1013));
    assert!(saw_error, "the lagged error precedes the close");
    for f in floods {
        f.await.unwrap();
    }
    // Only the laggard was cut off.
    let (_, h) = health(a.status).await;
    assert_eq!(h["chat"]["lagged_total"], 1, "{h}");
    srv.stop().await;
    assert!(reader.await.unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_client_that_stops_reading_gets_err_lagged() {
    let srv = InProc::start(config("lag-tcp")).await;
    let a = srv.addrs;
    let token = register(a.http, "slowpoke").await;
    let flooder = register(a.http, "flooder").await;

    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(a.tcp).await.unwrap();
    let (r, w) = stream.into_split();
    let mut slow = Tcp {
        r: tokio::io::BufReader::new(r),
        w,
    };
    assert_eq!(slow.line().await.unwrap(), "HELLO chat 1");
    slow.send(&format!("AUTH {token}")).await;
    assert_eq!(slow.line().await.unwrap(), "OK ready slowpoke");
    slow.send("JOIN general").await;
    assert_eq!(slow.line().await.unwrap(), "OK joined general");

    let stop = Arc::new(AtomicBool::new(false));
    let floods = flood(a, flooder, stop.clone(), None);
    wait_lagged(a, 1).await;
    stop.store(true, Ordering::Relaxed);
    let mut last = String::new();
    while let Some(l) = slow.line().await {
        last = l;
    }
    assert!(
        last.starts_with("ERR lagged "),
        "last line before close: {last:.80}"
    );
    for f in floods {
        f.await.unwrap();
    }
    srv.stop().await;
}
