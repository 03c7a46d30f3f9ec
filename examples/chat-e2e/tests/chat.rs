//! Two people chat through the web client in two separate browsers; a message
//! that looks like HTML is shown as text; history scrolls back.

use std::time::Duration;

use chat_e2e::fantoccini::Locator;
use chat_e2e::{eval, save_screenshot, wait_js, web, Browser, ChatServer, Error, ServerOptions};

const XSS: &str = "<img src=x onerror=alert(1)>";
const T: Duration = web::UI_TIMEOUT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_chat_and_markup_stays_text() -> Result<(), Error> {
    let server = ChatServer::start(&ServerOptions::default())?;
    let (alice, bob) = tokio::try_join!(Browser::start(), Browser::start())?;
    let result = conversation(&server, &alice, &bob).await;
    let _ = tokio::join!(alice.close(), bob.close());
    result
}

async fn conversation(server: &ChatServer, alice: &Browser, bob: &Browser) -> Result<(), Error> {
    let (a, b) = (alice.client(), bob.client());
    let url = server.client_url();
    tokio::try_join!(a.goto(&url), b.goto(&url))?;

    // Both create their accounts through the page.
    web::sign_in(a, "alice", "correct horse", true).await?;
    web::sign_in(b, "bob", "battery staple", true).await?;
    tokio::try_join!(web::wait_online(a, T), web::wait_online(b, T))?;
    web::trap_alerts(a).await?;
    web::trap_alerts(b).await?;

    // Alice creates a room; Bob finds it in his list and joins.
    let name = a.find(Locator::Id("new-room-name")).await?;
    name.send_keys("design").await?;
    a.find(Locator::Id("create-room-btn"))
        .await?
        .click()
        .await?;
    wait_js(
        a,
        "document.getElementById('room-title').textContent === '#design'",
        T,
        "alice in #design",
    )
    .await?;
    // Alice's join must be confirmed before Bob joins, so that she is told
    // that he came online.
    wait_js(
        a,
        "document.getElementById('presence').textContent.includes('you')",
        T,
        "alice joined",
    )
    .await?;
    web::open_room(b, "design").await?;
    wait_js(
        a,
        "document.getElementById('presence').textContent.includes('bob')",
        T,
        "alice seeing bob online",
    )
    .await?;

    // A conversation, each line seen by both sides exactly once.
    let lines = [
        (a, "Morning! Did the new limiter land?"),
        (
            b,
            "It did: the cap holds and the watchdog repairs leaks on its own.",
        ),
        (a, "And the status page?"),
        (b, "Live, and it stays up while chat is full."),
    ];
    for (who, text) in lines {
        web::send(who, text).await?;
        web::wait_message(a, text, T).await?;
        web::wait_message(b, text, T).await?;
    }

    // Markup in a message is shown as text, on both sides, and runs nothing.
    web::send(b, XSS).await?;
    web::wait_message(a, XSS, T).await?;
    web::wait_message(b, XSS, T).await?;
    for c in [a, b] {
        let images = eval(c, "document.querySelectorAll('#messages img').length").await?;
        assert_eq!(images, 0, "a message text became an element");
        assert_eq!(web::alerts(c).await?, 0, "a message text ran a script");
        assert!(c.get_alert_text().await.is_err(), "a native dialog is open");
    }

    // Nothing is shown twice: the sender's own echo and its ack are one message.
    for c in [a, b] {
        let texts = web::message_texts(c).await?;
        for (_, text) in lines {
            let n = texts.iter().filter(|t| t.as_str() == text).count();
            assert_eq!(n, 1, "{text:?} shown {n} times: {texts:?}");
        }
        let pending = eval(
            c,
            "document.querySelectorAll('#messages li.pending').length",
        )
        .await?;
        assert_eq!(pending, 0, "messages left unacknowledged");
    }

    // A typical moment, as Alice sees it.
    web::send(a, "Ha, that one stays text. Shipping it.").await?;
    web::wait_message(a, "Ha, that one stays text. Shipping it.", T).await?;
    wait_js(
        a,
        "document.getElementById('composer-text').value === ''",
        T,
        "the composer to clear",
    )
    .await?;
    save_screenshot(a, "web-client.png").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_scrolls_back_to_the_first_message() -> Result<(), Error> {
    let server = ChatServer::start(&ServerOptions::default())?;
    let addrs = server.addrs();

    // 75 messages in #general, written over the TCP line protocol.
    let token = chat_e2e::register(addrs.http, "carol", "password-carol").await?;
    let mut tcp = chat_e2e::LineClient::connect(addrs.tcp).await?;
    assert!(tcp.admitted(), "greeting: {}", tcp.greeting);
    tcp.send(&format!("AUTH {token}")).await?;
    tcp.expect("OK ready").await?;
    tcp.send("JOIN general").await?;
    tcp.expect("OK joined").await?;
    for i in 1..=75 {
        tcp.send(&format!("SAY general seed-{i} history line {i}"))
            .await?;
        tcp.expect(&format!("OK ack seed-{i} ")).await?;
    }
    tcp.send("QUIT").await?;

    let browser = Browser::start().await?;
    let result = async {
        let c = browser.client();
        c.goto(&server.client_url()).await?;
        web::sign_in(c, "dave", "password-dave", true).await?;
        web::wait_online(c, T).await?;
        // The newest page arrives first...
        web::wait_message(c, "history line 75", T).await?;
        let first = web::message_texts(c).await?;
        assert!(first.len() < 75, "all history at once: {}", first.len());
        assert!(!first.iter().any(|t| t == "history line 1"));
        // ...and scrolling to the top loads older pages until the first.
        wait_js(
            c,
            "(() => { const s = document.getElementById('scroller'); s.scrollTop = 0; \
               s.dispatchEvent(new Event('scroll')); \
               return document.querySelector('#messages li.msg[data-id] .text').textContent === 'history line 1'; })()",
            T,
            "scroll-back to the first message",
        )
        .await?;
        let all = web::message_texts(c).await?;
        let expected: Vec<String> = (1..=75).map(|i| format!("history line {i}")).collect();
        assert_eq!(all, expected, "history out of order or with gaps");
        wait_js(
            c,
            "document.getElementById('older').textContent.startsWith('Start of')",
            T,
            "the start-of-room marker",
        )
        .await?;
        Ok::<_, Error>(())
    }
    .await;
    let _ = browser.close().await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_survives_a_reload_and_is_stored_once() -> Result<(), Error> {
    let server = ChatServer::start(&ServerOptions::default())?;
    let browser = Browser::start().await?;
    let result = async {
        let c = browser.client();
        let addrs = server.addrs();
        c.goto(&server.client_url()).await?;
        web::sign_in(c, "heidi", "password-heidi", true).await?;
        web::wait_online(c, T).await?;
        let token = eval(
            c,
            "JSON.parse(localStorage.getItem('admit-chat:session')).token",
        )
        .await?;
        let token = token.as_str().ok_or("no stored session token")?.to_string();

        // A message that reached the server, but whose ack the page never
        // saw: it is stored (here over TCP, as the same person, same
        // client_id) and still in the page's outbox when the page reloads.
        let mut tcp = chat_e2e::LineClient::connect(addrs.tcp).await?;
        tcp.send(&format!("AUTH {token}")).await?;
        tcp.expect("OK ready").await?;
        tcp.send("SAY general reload-1 said before the reload").await?;
        let ack = tcp.expect("OK ack reload-1 ").await?;
        let id = ack.rsplit(' ').next().unwrap_or_default().to_string();
        // And one the server never got.
        c.execute(
            "localStorage.setItem('admit-chat:outbox:heidi', JSON.stringify([\
               ['reload-1', {room: 'general', text: 'said before the reload', at: new Date().toISOString()}],\
               ['reload-2', {room: 'general', text: 'typed, never sent', at: new Date().toISOString()}]]));",
            vec![],
        )
        .await?;
        c.refresh().await?;

        // After the reload both are sent; the first gets its old id back,
        // and each shows exactly once.
        web::wait_online(c, T).await?;
        web::wait_message(c, "typed, never sent", T).await?;
        web::wait_message(c, "said before the reload", T).await?;
        wait_js(
            c,
            "document.querySelectorAll('#messages li.pending').length === 0",
            T,
            "the outbox to empty",
        )
        .await?;
        let texts = web::message_texts(c).await?;
        for text in ["said before the reload", "typed, never sent"] {
            let n = texts.iter().filter(|t| t.as_str() == text).count();
            assert_eq!(n, 1, "{text:?} shown {n} times: {texts:?}");
        }
        let shown_id = eval(
            c,
            "Array.from(document.querySelectorAll('#messages li.msg[data-id]'))\
               .find(li => li.querySelector('.text').textContent === 'said before the reload').dataset.id",
        )
        .await?;
        assert_eq!(shown_id, id.as_str(), "the resent message got a new id");
        assert_eq!(
            eval(c, "localStorage.getItem('admit-chat:outbox:heidi')").await?,
            "[]"
        );

        // The server stored it once: history has one copy.
        tcp.send("HISTORY general 50").await?;
        let head = tcp.expect("HISTORY general ").await?;
        let count: usize = head.rsplit(' ').next().unwrap_or("0").parse()?;
        let mut copies = 0;
        for _ in 0..count {
            let line = tcp.read_line().await?.unwrap_or_default();
            if line.ends_with("said before the reload") {
                copies += 1;
            }
        }
        assert_eq!(copies, 1, "stored {copies} times");
        tcp.send("QUIT").await?;
        Ok::<_, Error>(())
    }
    .await;
    let _ = browser.close().await;
    result
}
