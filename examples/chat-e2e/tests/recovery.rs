//! Recovery as people see it: a connection the server revokes (close code
//! 1013, "try again later") comes back by itself, and the status page shows a
//! leaked-permit outage and the watchdog's repair as they happen, and keeps
//! both a leak and a stall in its incident list afterwards; while the
//! server is full, the page waits at least as long as its `Retry-After` says.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chat_e2e::{
    eval, health, http_request, wait_for, wait_js, web, Browser, ChatServer, Error, LineClient,
    ServerOptions,
};
use serde_json::json;

const T: Duration = web::UI_TIMEOUT;
const ADMIN: &str = "e2e-admin-token";

fn admin_server(extra: &[&str], max_connections: usize) -> Result<ChatServer, Error> {
    let mut extra_args = vec!["--admin-token".to_string(), ADMIN.to_string()];
    extra_args.extend(extra.iter().map(|s| s.to_string()));
    ChatServer::start(&ServerOptions {
        max_connections: Some(max_connections),
        extra_args,
        ..ServerOptions::default()
    })
}

/// Records every value the connection indicator takes, so that a short
/// outage is seen even if it is over before the next poll.
const RECORD_STATES: &str = "window.__states = []; \
    new MutationObserver(() => window.__states.push(document.getElementById('conn').dataset.state)) \
      .observe(document.getElementById('conn'), { attributes: true, attributeFilter: ['data-state'] });";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_connection_comes_back_by_itself() -> Result<(), Error> {
    const WINDOWS: usize = 4;
    let server = admin_server(&[], 64)?;
    let browser = Browser::start().await?;
    let result = async {
        let c = browser.client();
        let addrs = server.addrs();
        c.goto(&server.client_url()).await?;
        web::sign_in(c, "frank", "password-frank", true).await?;
        web::wait_online(c, T).await?;
        // More windows of the same person (signed in from the stored
        // session): a small room that loses its connections together.
        let mut windows = vec![c.window().await?];
        for _ in 1..WINDOWS {
            let w = c.new_window(false).await?.handle;
            c.switch_to_window(w.clone()).await?;
            c.goto(&server.client_url()).await?;
            windows.push(w);
        }
        for w in &windows {
            c.switch_to_window(w.clone()).await?;
            web::wait_online(c, T).await?;
            web::trap_alerts(c).await?;
            c.execute(RECORD_STATES, vec![]).await?;
        }

        // The operator revokes every chat connection (idle for 0 ms or more).
        let res = http_request(
            addrs.status,
            "POST",
            "/admin/revoke",
            Some(&json!({"idle_ms": 0})),
            Some(ADMIN),
        )
        .await?;
        assert_eq!(res.status, 200, "revoke: {}", res.json);

        // Every window notices, waits as told (1013: try again later, at
        // least 1 s) plus its own random share, and is back by itself.
        let mut delays = Vec::new();
        for w in &windows {
            c.switch_to_window(w.clone()).await?;
            wait_js(
                c,
                "window.__states.includes('reconnecting')",
                T,
                "the page to notice the revocation",
            )
            .await?;
            assert_eq!(
                eval(c, "document.body.dataset.lastClose").await?,
                "1013",
                "close code of a revoked connection"
            );
            let delay: u64 = eval(c, "document.body.dataset.nextDelayMs")
                .await?
                .as_str()
                .and_then(|v| v.parse().ok())
                .ok_or("no scheduled delay")?;
            assert!(
                (1000..=11_000).contains(&delay),
                "a 1013 close must wait at least 1 s, and back-off is capped: {delay} ms"
            );
            delays.push(delay);
        }
        for w in &windows {
            c.switch_to_window(w.clone()).await?;
            web::wait_online(c, T).await?;
        }
        delays.sort_unstable();
        delays.dedup();
        assert!(
            delays.len() > 1,
            "{WINDOWS} windows all chose the same reconnect delay: no jitter"
        );
        let revoked = health(addrs.status)
            .await?
            .pointer("/limiters/chat/revoked_total")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        assert!(
            revoked >= WINDOWS as u64,
            "revocations not counted: {revoked}"
        );

        // And it works: a message goes through on a new connection, and the
        // other windows of the same person see it.
        c.switch_to_window(windows[0].clone()).await?;
        web::send(c, "back after the revocation").await?;
        for w in &windows {
            c.switch_to_window(w.clone()).await?;
            web::wait_message(c, "back after the revocation", T).await?;
            assert_eq!(web::alerts(c).await?, 0);
        }
        Ok::<_, Error>(())
    }
    .await;
    let _ = browser.close().await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_a_leak_and_its_repair() -> Result<(), Error> {
    // A short idle timeout, so that leaked permits (never touched again)
    // are reclaimed within seconds.
    let server = admin_server(&["--fault-injection", "--idle-timeout", "2"], 8)?;
    let browser = Browser::start().await?;
    let result = async {
        let s = browser.client();
        let addrs = server.addrs();
        s.goto(&server.status_url()).await?;
        s.execute("window.__loadedOnce = true;", vec![]).await?;
        wait_js(
            s,
            "document.getElementById('overall').textContent === 'healthy'",
            T,
            "status page: healthy",
        )
        .await?;

        // A buggy library takes every permit and forgets them.
        let res = http_request(
            addrs.status,
            "POST",
            "/admin/faults",
            Some(&json!({"kind": "leak", "permits": 8})),
            Some(ADMIN),
        )
        .await?;
        assert_eq!(res.status, 200, "leak: {}", res.json);

        // The page shows the outage while it lasts...
        wait_js(
            s,
            "['saturated', 'degraded'].includes(document.getElementById('overall').textContent)",
            T,
            "status page: saturated or degraded",
        )
        .await?;
        // ...and the repair, with the reclaimed permits counted, by itself.
        wait_for(Duration::from_secs(30), "the watchdog's repair", || async {
            let h = health(addrs.status).await.ok()?;
            let reclaimed = h.pointer("/limiters/chat/reclaimed_total")?.as_u64()?;
            (h.get("status")?.as_str()? == "healthy" && reclaimed >= 8).then_some(())
        })
        .await?;
        wait_js(
            s,
            "document.getElementById('overall').textContent === 'healthy' && \
             Number(document.querySelector('[data-limiter=chat] [data-field=reclaimed_total]').textContent.replace(/,/g, '')) >= 8",
            T,
            "status page: healthy again, with the reclaimed permits",
        )
        .await?;
        assert_eq!(eval(s, "window.__loadedOnce === true").await?, true);
        Ok::<_, Error>(())
    }
    .await;
    let _ = browser.close().await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_lists_a_leak_and_a_stall_as_incidents() -> Result<(), Error> {
    let server = admin_server(
        &["--fault-injection", "--idle-timeout", "2", "--queue", "4"],
        2,
    )?;
    let browser = Browser::start().await?;
    let result = async {
        let s = browser.client();
        let addrs = server.addrs();
        s.goto(&server.status_url()).await?;
        s.execute("window.__loadedOnce = true;", vec![]).await?;
        wait_js(
            s,
            "document.querySelectorAll('#uptime-bars > span').length === 90 && \
             document.querySelector('#incidents .empty') !== null",
            T,
            "status page: 90 uptime bars and no incidents yet",
        )
        .await?;

        // A leak: both permits taken and forgotten; reclaimed after the
        // idle timeout and the grace.
        let res = http_request(
            addrs.status,
            "POST",
            "/admin/faults",
            Some(&json!({"kind": "leak", "permits": 2})),
            Some(ADMIN),
        )
        .await?;
        assert_eq!(res.status, 200, "leak: {}", res.json);
        wait_js(
            s,
            "document.querySelector('#incidents li[data-cause=leaking][data-repaired-by=watchdog_reclaim]') !== null && \
             document.getElementById('open-incident').hidden",
            T,
            "status page: the leak, repaired by the watchdog, in the list",
        )
        .await?;

        // A stall: the next wake-ups are lost while a connection waits.
        let first = LineClient::connect(addrs.tcp).await?;
        let second = LineClient::connect(addrs.tcp).await?;
        assert!(first.admitted() && second.admitted());
        let res = http_request(
            addrs.status,
            "POST",
            "/admin/faults",
            Some(&json!({"kind": "stall"})),
            Some(ADMIN),
        )
        .await?;
        assert_eq!(res.status, 200, "stall: {}", res.json);
        let waiter = tokio::spawn(LineClient::connect(addrs.tcp));
        wait_for(Duration::from_secs(10), "a waiter in the queue", || async {
            let h = health(addrs.status).await.ok()?;
            (h.pointer("/limiters/chat/waiting")?.as_u64()? == 1).then_some(())
        })
        .await?;
        drop(first);
        wait_js(
            s,
            "document.querySelector('#incidents li[data-cause=stalled][data-repaired-by=stall_redrive]') !== null",
            T,
            "status page: the stall, re-driven, in the list",
        )
        .await?;
        let _admitted = waiter.await.map_err(|e| e.to_string())??;
        drop(second);

        // Newest first, each with a sentence people can read; today's bar
        // shows the trouble.
        let texts = eval(
            s,
            "Array.from(document.querySelectorAll('#incidents li')).map((li) => li.dataset.cause + ': ' + li.querySelector('.what').textContent)",
        )
        .await?;
        let texts: Vec<String> = serde_json::from_value(texts).map_err(|e| e.to_string())?;
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(texts[0].starts_with("stalled: New connections waited"), "{texts:?}");
        assert!(texts[1].starts_with("leaking: New connections were refused"), "{texts:?}");
        assert!(texts[1].contains("the safeguard reclaimed them"), "{texts:?}");
        let today = eval(s, "document.querySelector('#uptime-bars > span:last-child').className").await?;
        assert_ne!(today, json!("day-none"));
        assert_eq!(eval(s, "window.__loadedOnce === true").await?, true);

        // The page with its two incidents, for the README.
        wait_js(
            s,
            "document.getElementById('overall').textContent === 'healthy'",
            T,
            "status page: healthy again",
        )
        .await?;
        s.set_window_size(1280, 1500).await?;
        chat_e2e::save_screenshot(s, "status-page.png").await?;
        Ok::<_, Error>(())
    }
    .await;
    let _ = browser.close().await;
    result
}

/// Takes every chat slot that frees, until told to stop: a crowd that
/// leaves no room. Connections the server closes (revoked ones) just stay in
/// the list; the loop keeps trying, so any slot that frees is taken again.
fn greedy_crowd(tcp: std::net::SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut held: Vec<LineClient> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match LineClient::connect(tcp).await {
                Ok(c) if c.admitted() => held.push(c),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_while_full() -> Result<(), Error> {
    let server = admin_server(&[], 3)?;
    let browser = Browser::start().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut crowd = None;
    let result = async {
        let c = browser.client();
        let addrs = server.addrs();
        c.goto(&server.client_url()).await?;
        web::sign_in(c, "grace", "password-grace", true).await?;
        web::wait_online(c, T).await?;
        c.execute(RECORD_STATES, vec![]).await?;

        // A crowd takes the free slot, and every slot that frees later.
        crowd = Some(greedy_crowd(addrs.tcp, stop.clone()));
        wait_for(T, "the server to be full", || async {
            let h = health(addrs.status).await.ok()?;
            (h.get("status")?.as_str()? == "saturated").then_some(())
        })
        .await?;

        // The operator revokes every connection: the page's slots go to the
        // crowd, and its attempts are answered 503 with Retry-After.
        let res = http_request(
            addrs.status,
            "POST",
            "/admin/revoke",
            Some(&json!({"idle_ms": 0})),
            Some(ADMIN),
        )
        .await?;
        assert_eq!(res.status, 200, "revoke: {}", res.json);
        // The revoked connections close, and the crowd takes their slots.
        let busy = wait_for(T, "the HTTP listener to answer 503", || async {
            let r = http_request(addrs.http, "GET", "/api/rooms", None, None)
                .await
                .ok()?;
            (r.status == 503).then_some(r)
        })
        .await?;
        let retry_after_ms = busy
            .header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or("a 503 without Retry-After")?
            * 1000;

        // The page read the same Retry-After and waits at least that long.
        let seen = wait_js(
            c,
            "document.body.dataset.retryAfterMs",
            T,
            "the page to read Retry-After",
        )
        .await?;
        assert_eq!(seen, retry_after_ms.to_string());
        let delay: u64 = eval(c, "document.body.dataset.nextDelayMs")
            .await?
            .as_str()
            .and_then(|v| v.parse().ok())
            .ok_or("no scheduled delay")?;
        assert!(
            delay >= retry_after_ms,
            "next attempt in {delay} ms, before the server's Retry-After of {retry_after_ms} ms"
        );
        wait_js(
            c,
            "!document.getElementById('banner').hidden && \
             document.getElementById('banner').textContent.includes('at capacity')",
            T,
            "the banner saying the server is at capacity",
        )
        .await?;

        // The crowd leaves; the page is back by itself.
        stop.store(true, Ordering::Relaxed);
        if let Some(crowd) = crowd.take() {
            crowd.await?;
        }
        web::wait_online(c, Duration::from_secs(45)).await?;
        Ok::<_, Error>(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    if let Some(crowd) = crowd {
        let _ = crowd.await;
    }
    let _ = browser.close().await;
    result
}
