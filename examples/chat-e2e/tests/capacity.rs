//! The chat server at capacity, seen from a browser: the web client shows its
//! reconnecting banner, queues what is typed, and connects by itself once a
//! slot frees; the status page says `saturated` while full and `healthy`
//! after, without a reload.
//!
//! The budget is three connections. The web client's page keeps one HTTP
//! keep-alive connection (page, sign-in, room list); its WebSocket needs a
//! second. Raw TCP chat connections, which count toward the same budget,
//! take the rest.

use std::time::Duration;

use chat_e2e::{
    eval, fill_to_capacity, health, save_screenshot, wait_for, wait_js, web, Browser, ChatServer,
    Error, ServerOptions,
};

const T: Duration = web::UI_TIMEOUT;
/// The client backs off at most 10 s between attempts, plus jitter; the
/// rest is room for a slow machine.
const RECONNECT: Duration = Duration::from_secs(45);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rides_out_a_full_server_and_status_page_follows() -> Result<(), Error> {
    let server = ChatServer::start(&ServerOptions {
        max_connections: Some(3),
        ..ServerOptions::default()
    })?;
    let (chat, status) = tokio::try_join!(Browser::start(), Browser::start())?;
    let result = scenario(&server, &chat, &status).await;
    let _ = tokio::join!(chat.close(), status.close());
    result
}

async fn status_word(status_addr: std::net::SocketAddr) -> Option<String> {
    let h = health(status_addr).await.ok()?;
    h.get("status")?.as_str().map(str::to_string)
}

async fn chat_in_use(status_addr: std::net::SocketAddr) -> Option<u64> {
    let h = health(status_addr).await.ok()?;
    h.pointer("/limiters/chat/in_use")?.as_u64()
}

async fn scenario(server: &ChatServer, chat: &Browser, status: &Browser) -> Result<(), Error> {
    let addrs = server.addrs();
    let (c, s) = (chat.client(), status.client());

    // The status page, opened once; a marker in its window proves later
    // that it was never reloaded.
    s.goto(&server.status_url()).await?;
    s.execute("window.__loadedOnce = true;", vec![]).await?;
    wait_js(
        s,
        "document.getElementById('overall').textContent === 'healthy'",
        T,
        "status page: healthy",
    )
    .await?;

    // Sign up and connect while there is room, then sign out, which closes
    // the WebSocket; the page's keep-alive HTTP connection stays.
    c.goto(&server.client_url()).await?;
    web::sign_in(c, "erin", "password-erin", true).await?;
    web::wait_online(c, T).await?;
    let online = chat_in_use(addrs.status)
        .await
        .ok_or("no chat limiter in /health")?;
    c.find(chat_e2e::fantoccini::Locator::Id("logout-btn"))
        .await?
        .click()
        .await?;
    wait_for(T, "the WebSocket's slot to be released", || async {
        (chat_in_use(addrs.status).await? < online).then_some(())
    })
    .await?;

    // Raw TCP connections take every remaining slot.
    let mut held = fill_to_capacity(addrs.tcp, 16).await?;
    assert!(!held.is_empty(), "no slot was free for the TCP client");
    wait_js(
        s,
        "document.getElementById('overall').textContent === 'saturated'",
        T,
        "status page: saturated",
    )
    .await?;
    assert_eq!(
        status_word(addrs.status).await.as_deref(),
        Some("saturated")
    );

    // Signing in works over the open HTTP connection, but the WebSocket
    // is refused: the page says it is reconnecting and when it will try.
    web::sign_in(c, "erin", "password-erin", false).await?;
    wait_js(
        c,
        "!document.getElementById('banner').hidden && \
         document.getElementById('banner').textContent.includes('Reconnecting') && \
         /\\d\\d:\\d\\d/.test(document.getElementById('banner-next').textContent)",
        T,
        "the reconnecting banner with the next attempt time",
    )
    .await?;
    assert_eq!(
        eval(c, "document.getElementById('conn').dataset.state").await?,
        "reconnecting"
    );

    // A message typed while offline is queued, not lost.
    let queued = "typed while the server was full";
    web::send(c, queued).await?;
    wait_js(
        c,
        "document.querySelectorAll('#messages li.pending').length === 1",
        T,
        "the message queued",
    )
    .await?;

    // The status page stayed current the whole time.
    assert_eq!(
        eval(s, "document.getElementById('overall').textContent").await?,
        "saturated"
    );

    // One slot frees: the client connects on its own, and the queued
    // message is sent once.
    drop(held.remove(0));
    web::wait_online(c, RECONNECT).await?;
    wait_js(
        c,
        "document.getElementById('banner').hidden",
        T,
        "the banner to go away",
    )
    .await?;
    web::wait_message(c, queued, T).await?;
    wait_js(
        c,
        "document.querySelectorAll('#messages li.pending').length === 0",
        T,
        "the outbox to empty",
    )
    .await?;
    let texts = web::message_texts(c).await?;
    assert_eq!(
        texts.iter().filter(|t| t.as_str() == queued).count(),
        1,
        "queued message duplicated: {texts:?}"
    );

    // The rest of the TCP connections go: below capacity, the status page
    // says healthy again, still without a reload.
    drop(held);
    wait_js(
        s,
        "document.getElementById('overall').textContent === 'healthy'",
        T,
        "status page: healthy again",
    )
    .await?;
    assert_eq!(eval(s, "window.__loadedOnce === true").await?, true);

    // A typical moment of the status page: healthy, with the saturation
    // and its rejections in the chart.
    status.client().set_window_size(1280, 1150).await?;
    wait_js(
        s,
        "document.querySelectorAll('#chart path').length >= 2",
        T,
        "the chart",
    )
    .await?;
    save_screenshot(s, "status-page-saturated.png").await?;
    Ok(())
}
