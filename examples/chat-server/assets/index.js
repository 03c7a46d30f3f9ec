"use strict";
// The admit chat web client: one file, no dependencies.
//
// Everything the server or other users send is rendered with textContent or
// attribute setters, never parsed as HTML.
//
// Connection handling, in short:
//  - one WebSocket at a time; auth first, then join every room we had joined;
//  - on failure, wait a random time in [0, min(cap, base * 2^attempt)] ("full
//    jitter") so a whole room does not come back at the same instant; when the
//    server said how long to wait (Retry-After on the 503 answer, or close code
//    1013 "try again later") wait at least that long, plus jitter;
//  - a browser hides why an upgrade failed, so after a failed connect a plain
//    fetch asks the server and reads its status and Retry-After;
//  - messages are kept in an outbox keyed by client_id until the server acks
//    them, survive a reload, and are sent again after a reconnect with the same
//    client_id; the server answers a repeated client_id with the same id, and the
//    page keys messages by id, so nothing is shown twice.
//
// The browser tests (examples/chat-e2e) rely on these ids and attributes:
// #auth-view #auth-name #auth-password #login-btn #register-btn #auth-error,
// #logout-btn #rooms li[data-room] #refresh-rooms #new-room-name
// #new-room-private #create-room-btn, #room-title #presence,
// #conn[data-state=online|connecting|reconnecting|offline], #banner
// #banner-next, #scroller #older #messages li.msg[data-id] / li.pending
// [data-client-id] .text, #composer-text #send-btn, and on <body>
// data-last-close, data-retry-after-ms, data-next-delay-ms.
(function () {
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 10000;
  const TRY_AGAIN_LATER_MIN_MS = 1000;   // close code 1013 without a Retry-After
  const CONNECT_TIMEOUT_MS = 10000;
  const PING_EVERY_MS = 20000;
  const PONG_TIMEOUT_MS = 10000;
  const STABLE_AFTER_MS = 10000;          // a connection this old resets the back-off
  const HISTORY_PAGE = 50;
  const NAME_RE = /^[A-Za-z0-9_-]{1,32}$/;
  const ROOM_RE = /^[a-z0-9_-]{1,32}$/;
  const STORE = "admit-chat:";

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  };

  const S = {
    token: null, user: null,
    rooms: [],                 // [{name, private, owner}]
    current: null,             // room name shown
    roomState: new Map(),      // room -> {msgs: Map(id -> MSG), hasMore, loading, unread, want}
    presence: new Map(),       // room -> Set(user)
    outbox: new Map(),         // client_id -> {room, text, at, sent}
    ws: null, ready: false, joined: new Set(), wanted: false, connGen: 0,
    attempt: 0, timer: null, nextAt: 0, readyAt: 0, reason: "",
    pingTimer: null, pongTimer: null, connectTimer: null, tick: null,
  };

  // ---------- storage ----------
  function load(key, dflt) {
    try { const v = localStorage.getItem(STORE + key); return v === null ? dflt : JSON.parse(v); }
    catch (_) { return dflt; }
  }
  function save(key, v) {
    try { if (v === null) localStorage.removeItem(STORE + key); else localStorage.setItem(STORE + key, JSON.stringify(v)); }
    catch (_) { /* storage full or disabled: the page still works */ }
  }
  function saveOutbox() { if (S.user) save("outbox:" + S.user, Array.from(S.outbox.entries())); }

  function newClientId() {
    const b = new Uint8Array(12);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }

  // ---------- HTTP ----------
  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (S.token) headers["Authorization"] = "Bearer " + S.token;
    const res = await fetch(path, { method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body) });
    let data = null;
    const text = await res.text();
    if (text) { try { data = JSON.parse(text); } catch (_) { data = null; } }
    return { status: res.status, data, retryAfter: parseRetryAfter(res.headers.get("Retry-After")) };
  }
  function parseRetryAfter(v) {
    if (!v) return null;
    if (/^\s*\d+\s*$/.test(v)) return Math.min(parseInt(v, 10), 3600) * 1000;
    const t = Date.parse(v);
    return isNaN(t) ? null : Math.max(0, Math.min(t - Date.now(), 3600000));
  }
  function describe(res) {
    if (res.status === 503) return "The chat server is at capacity right now" + (res.retryAfter !== null ? "; try again in " + Math.ceil(res.retryAfter / 1000) + " s." : ".");
    if (res.data && res.data.message) return res.data.message;
    if (res.data && res.data.error) return res.data.error.replace(/_/g, " ");
    return "Request failed (HTTP " + res.status + ").";
  }

  // ---------- sign in ----------
  let authRetry = null;
  async function authenticate(kind, tries) {
    tries = tries || 0;
    clearTimeout(authRetry); authRetry = null;
    const name = $("auth-name").value.trim();
    const password = $("auth-password").value;
    const err = $("auth-error");
    err.textContent = "";
    if (!NAME_RE.test(name)) { err.textContent = "Names are 1–32 letters, digits, _ or -."; return; }
    if (password.length < 8 || password.length > 128) { err.textContent = "Passwords are 8–128 characters."; return; }
    $("login-btn").disabled = $("register-btn").disabled = true;
    try {
      const res = await api("POST", kind === "register" ? "/api/register" : "/api/login", { name, password });
      if ((res.status === 200 || res.status === 201) && res.data && res.data.token) {
        $("auth-password").value = "";
        signedIn(res.data.token, name);
      } else if (res.status === 409) {
        err.textContent = "That name is taken. Sign in instead, or pick another name.";
      } else if (res.status === 401) {
        err.textContent = "Wrong name or password.";
      } else if (res.status === 503 && tries < 20) {
        // Full: try again by ourselves, after Retry-After plus jitter.
        const wait = (res.retryAfter === null ? 2000 : res.retryAfter) + Math.random() * 2000;
        const at = new Date(Date.now() + wait).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
        err.textContent = "The chat server is at capacity. Trying again by itself at " + at + "…";
        authRetry = setTimeout(() => authenticate(kind, tries + 1), wait);
      } else {
        err.textContent = describe(res);
      }
    } catch (e) {
      err.textContent = "Cannot reach the chat server. Check your connection and try again.";
    } finally {
      $("login-btn").disabled = $("register-btn").disabled = false;
    }
  }

  function signedIn(token, user) {
    S.token = token; S.user = user;
    save("session", { token, user });
    // Only what the user wrote survives a reload; whether it was sent on
    // some earlier connection is forgotten, so it is sent again (same
    // client_id, so stored at most once).
    const saved = load("outbox:" + user, []);
    S.outbox = new Map((Array.isArray(saved) ? saved : [])
      .filter((e) => Array.isArray(e) && e[1] && typeof e[1].text === "string" && typeof e[1].room === "string")
      .map(([cid, o]) => [String(cid), { room: o.room, text: o.text, at: o.at }]));
    S.roomState.clear(); S.presence.clear(); S.joined.clear();
    const last = load("room:" + user, "general");
    $("me-name").textContent = user;
    $("auth-view").hidden = true;
    $("chat-view").hidden = false;
    document.body.dataset.user = user;
    S.wanted = true;
    S.attempt = 0;
    openRoom(last || "general");
    refreshRooms();
    connect();
    $("composer-text").focus();
  }

  function signOut(message) {
    S.wanted = false;
    clearTimers();
    if (S.ws) { const ws = S.ws; S.ws = null; try { ws.close(1000, "signed out"); } catch (_) {} }
    S.ready = false; S.token = null; S.user = null; S.current = null;
    save("session", null);
    delete document.body.dataset.user;
    $("messages").replaceChildren();
    $("rooms").replaceChildren();
    $("chat-view").hidden = true;
    $("auth-view").hidden = false;
    $("auth-error").textContent = message || "";
    setConn("offline", "Offline");
    $("banner").hidden = true;
  }

  // ---------- rooms ----------
  async function refreshRooms() {
    if (!S.token) return;
    try {
      const res = await api("GET", "/api/rooms");
      if (res.status === 200 && Array.isArray(res.data)) { S.rooms = res.data; renderRooms(); }
      else if (res.status === 401) signOut("Your session has expired. Please sign in again.");
    } catch (_) { /* offline: keep the list we have */ }
  }

  function renderRooms() {
    const ul = $("rooms");
    const names = new Set(S.rooms.map((r) => r.name));
    if (S.current && !names.has(S.current)) S.rooms.push({ name: S.current, private: false, owner: null });
    S.rooms.sort((a, b) => a.name.localeCompare(b.name));
    ul.replaceChildren(...S.rooms.map((r) => {
      const li = el("li");
      li.dataset.room = r.name;
      li.tabIndex = 0;
      li.append(el("span", "hash", "#"), el("span", "name", r.name));
      if (r.private) li.append(el("span", "lock", "private"));
      const st = S.roomState.get(r.name);
      if (st && st.unread > 0 && r.name !== S.current) li.append(el("span", "unread", st.unread));
      if (r.name === S.current) li.classList.add("active");
      li.addEventListener("click", () => openRoom(r.name));
      li.addEventListener("keydown", (e) => { if (e.key === "Enter") openRoom(r.name); });
      return li;
    }));
    renderInvite();
  }

  function renderInvite() {
    const r = S.rooms.find((x) => x.name === S.current);
    $("invite").hidden = !(r && r.private && r.owner === S.user);
  }

  async function createRoom() {
    const name = $("new-room-name").value.trim();
    const err = $("room-error");
    err.textContent = "";
    if (!ROOM_RE.test(name)) { err.textContent = "Room names are 1–32 of a-z, 0-9, _ or -."; return; }
    try {
      const res = await api("POST", "/api/rooms", { name, private: $("new-room-private").checked });
      if (res.status === 201 || res.status === 200) {
        $("new-room-name").value = ""; $("new-room-private").checked = false;
        await refreshRooms();
        openRoom(name);
      } else if (res.status === 409) {
        err.textContent = "That room exists already.";
      } else err.textContent = describe(res);
    } catch (_) { err.textContent = "Cannot reach the chat server."; }
  }

  async function invite() {
    const user = $("invite-name").value.trim();
    if (!S.current || !NAME_RE.test(user)) return;
    try {
      const res = await api("POST", "/api/rooms/" + encodeURIComponent(S.current) + "/members", { user });
      if (res.status === 204 || res.status === 200) { $("invite-name").value = ""; notice(user + " was added to #" + S.current + "."); }
      else if (res.status === 404) notice("No such user: " + user);
      else notice(describe(res));
    } catch (_) { notice("Cannot reach the chat server."); }
  }

  function roomState(room) {
    let st = S.roomState.get(room);
    if (!st) { st = { msgs: new Map(), hasMore: true, loading: null, unread: 0, loaded: false }; S.roomState.set(room, st); }
    return st;
  }

  function openRoom(room) {
    if (!ROOM_RE.test(room)) room = "general";
    S.current = room;
    if (S.user) save("room:" + S.user, room);
    const st = roomState(room);
    st.unread = 0;
    $("room-title").textContent = "#" + room;
    renderRooms();
    renderMessages(true);
    renderPresence();
    if (S.ready && !S.joined.has(room)) sendFrame({ type: "join", room });
  }

  // ---------- presence ----------
  function renderPresence() {
    const p = $("presence");
    p.replaceChildren();
    if (!S.current) return;
    const set = S.presence.get(S.current) || new Set();
    const others = Array.from(set).filter((u) => u !== S.user).sort();
    const online = S.ready && S.joined.has(S.current);
    if (!online && others.length === 0) return;
    p.append(el("span", "dot"));
    const names = (online ? ["you"] : []).concat(others);
    p.append(el("span", null, names.join(", ") + " online"));
  }
  function setPresence(room, user, state) {
    let set = S.presence.get(room);
    if (!set) { set = new Set(); S.presence.set(room, set); }
    if (state === "online") set.add(user); else set.delete(user);
    if (room === S.current) renderPresence();
  }

  // ---------- messages ----------
  function colorFor(name) {
    let h = 0;
    for (const c of String(name)) h = (h * 31 + c.codePointAt(0)) >>> 0;
    return "hsl(" + (h % 360) + " 55% 45%)";
  }
  function fmtTime(ts) {
    const d = ts ? new Date(ts) : new Date();
    if (isNaN(d.getTime())) return "";
    const today = new Date().toDateString() === d.toDateString();
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return today ? hm : d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + hm;
  }

  function messageNode(m, pending) {
    const li = el("li", "msg" + (pending ? " pending" : ""));
    if (pending) li.dataset.clientId = m.client_id; else li.dataset.id = String(m.id);
    const av = el("div", "avatar", String(m.from || "?").slice(0, 1));
    av.style.background = colorFor(m.from);
    const body = el("div");
    const meta = el("div", "meta");
    meta.append(el("span", "from", m.from), el("span", "time", fmtTime(m.ts)));
    if (pending) meta.append(el("span", "state", S.ready ? "sending…" : "queued, will send when connected"));
    body.append(meta, el("div", "text", m.text));
    li.append(av, body);
    return li;
  }

  function nearBottom() {
    const s = $("scroller");
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }
  function toBottom() { const s = $("scroller"); s.scrollTop = s.scrollHeight; }

  // Rebuilds the list for the current room: messages in id order, then the
  // outbox entries the server has not acknowledged yet.
  function renderMessages(scrollDown) {
    const ol = $("messages");
    const room = S.current;
    if (!room) { ol.replaceChildren(); $("empty").hidden = false; $("older").hidden = true; return; }
    const st = roomState(room);
    const ids = Array.from(st.msgs.keys()).sort((a, b) => a - b);
    const nodes = ids.map((id) => messageNode(st.msgs.get(id), false));
    for (const [cid, o] of S.outbox) {
      if (o.room === room && !(o.id !== undefined && st.msgs.has(o.id))) {
        nodes.push(messageNode({ client_id: cid, from: S.user, text: o.text, ts: o.at }, true));
      }
    }
    const s = $("scroller");
    const keep = !scrollDown && !nearBottom();
    const fromBottom = s.scrollHeight - s.scrollTop;
    ol.replaceChildren(...nodes);
    const empty = $("empty");
    empty.hidden = nodes.length > 0;
    empty.textContent = st.loaded ? "No messages in #" + room + " yet. Say hello!" : (S.ready ? "Loading…" : "Messages will load when connected.");
    renderOlder();
    if (keep) s.scrollTop = s.scrollHeight - fromBottom; else toBottom();
  }

  function renderOlder() {
    const box = $("older");
    const st = S.current ? roomState(S.current) : null;
    box.replaceChildren();
    if (!st || !st.loaded || st.msgs.size === 0) { box.hidden = true; return; }
    box.hidden = false;
    if (st.loading === "older") box.append(el("span", "note", "Loading older messages…"));
    else if (st.hasMore) {
      const b = el("button", null, "Load older messages");
      b.type = "button"; b.id = "load-older";
      b.addEventListener("click", loadOlder);
      box.append(b);
    } else box.append(el("span", "note", "Start of #" + S.current));
  }

  function loadOlder() {
    const room = S.current;
    if (!room || !S.ready) return;
    const st = roomState(room);
    if (!st.hasMore || st.loading || st.msgs.size === 0) return;
    const oldest = Math.min(...st.msgs.keys());
    st.loading = "older";
    renderOlder();
    sendFrame({ type: "history", room, before: oldest, limit: HISTORY_PAGE });
  }

  function addMessage(m) {
    if (!m || typeof m.id !== "number" || typeof m.room !== "string") return false;
    const st = roomState(m.room);
    if (st.msgs.has(m.id)) return false;
    st.msgs.set(m.id, { id: m.id, room: m.room, from: String(m.from), text: String(m.text), ts: m.ts });
    return true;
  }

  function onLiveMessage(m) {
    if (!addMessage(m)) return;
    // Our own message may arrive before its ack. The echo carries no
    // client_id, so match it to the oldest sent outbox entry with the same
    // room and text: that entry is then hidden (and not sent again), and the
    // ack removes it for good.
    if (m.from === S.user) {
      for (const [cid, o] of S.outbox) {
        if (o.room === m.room && o.sent && o.id === undefined && o.text === m.text) {
          o.id = m.id;
          const li = document.querySelector('#messages li.pending[data-client-id="' + CSS.escape(cid) + '"]');
          if (li) li.remove();
          break;
        }
      }
    }
    if (m.room === S.current) {
      const follow = nearBottom() || m.from === S.user;
      insertOrRender(m);
      if (follow) toBottom();
      if (document.hidden) document.title = "(new) admit chat";
    } else {
      roomState(m.room).unread++;
      renderRooms();
    }
  }

  // Inserts one confirmed message at its place without rebuilding the list.
  function insertOrRender(m) {
    const ol = $("messages");
    const node = messageNode(m, false);
    let before = null;
    for (const li of ol.children) {
      if (li.classList.contains("pending") || Number(li.dataset.id) > m.id) { before = li; break; }
    }
    ol.insertBefore(node, before);
    $("empty").hidden = true;
    renderOlder();
  }

  function onHistory(f) {
    const room = f.room;
    const st = roomState(room);
    const msgs = Array.isArray(f.messages) ? f.messages : [];
    const kind = st.loading;
    const wasOlder = kind === "older";
    st.loading = null;
    const hadNewest = st.msgs.size ? Math.max(...st.msgs.keys()) : null;
    for (const m of msgs) addMessage(Object.assign({ room }, m));
    if (wasOlder || !st.loaded) st.hasMore = msgs.length >= HISTORY_PAGE;
    // Back after an absence: more than a page may have been said meanwhile.
    // Fetch further back until the pages meet what was already here.
    if ((kind === "latest" || kind === "gap") && hadNewest !== null && msgs.length >= HISTORY_PAGE &&
        typeof msgs[0].id === "number" && msgs[0].id > hadNewest && S.ready) {
      st.loading = "gap";
      sendFrame({ type: "history", room, before: msgs[0].id, limit: HISTORY_PAGE });
    }
    st.loaded = true;
    if (room === S.current) renderMessages(!wasOlder);
  }

  // ---------- outbox ----------
  function queueMessage(text) {
    const room = S.current;
    if (!room) return;
    const cid = newClientId();
    S.outbox.set(cid, { room, text, at: new Date().toISOString() });
    saveOutbox();
    renderMessages(true);
    flushOutbox(room);
    updateBanner();
  }

  function flushOutbox(room) {
    if (!S.ready || !S.joined.has(room)) return;
    for (const [cid, o] of S.outbox) {
      // Once per connection: a message sent on an earlier connection and
      // not acknowledged is sent again, with the same client_id.
      if (o.room === room && o.id === undefined && o.sentOn !== S.connGen) {
        if (sendFrame({ type: "send", room, text: o.text, client_id: cid })) {
          o.sent = true;
          o.sentOn = S.connGen;
        }
      }
    }
  }

  function onAck(f) {
    const o = S.outbox.get(f.client_id);
    if (!o) return;
    S.outbox.delete(f.client_id);
    saveOutbox();
    const st = roomState(o.room);
    // The server's echo of our message may not have arrived yet; show it now
    // under its id, so the echo (same id) is dropped as a duplicate.
    if (typeof f.id === "number" && !st.msgs.has(f.id)) {
      addMessage({ id: f.id, room: o.room, from: S.user, text: o.text, ts: f.ts || o.at });
    }
    if (o.room === S.current) {
      const pendingLi = document.querySelector('#messages li.pending[data-client-id="' + CSS.escape(f.client_id) + '"]');
      if (pendingLi) pendingLi.remove();
      if (typeof f.id === "number" && !document.querySelector('#messages li[data-id="' + f.id + '"]')) insertOrRender(st.msgs.get(f.id));
    }
    updateBanner();
  }

  // ---------- connection ----------
  function setConn(state, text) {
    const c = $("conn");
    c.dataset.state = state;
    c.textContent = text;
    document.body.dataset.conn = state;
  }

  function wsUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  }

  function clearTimers() {
    for (const t of ["timer", "pingTimer", "pongTimer", "connectTimer"]) { clearTimeout(S[t]); S[t] = null; }
    clearInterval(S.tick); S.tick = null;
  }

  function connect() {
    if (!S.wanted || !S.token) return;
    clearTimers();
    if (S.ws) { const old = S.ws; S.ws = null; try { old.close(); } catch (_) {} }
    setConn("connecting", S.attempt > 0 ? "Reconnecting…" : "Connecting…");
    updateBanner();
    let ws;
    try { ws = new WebSocket(wsUrl()); } catch (_) { scheduleReconnect(null, "Cannot open a connection."); return; }
    S.ws = ws;
    S.connGen++;
    let opened = false;
    S.connectTimer = setTimeout(() => { if (S.ws === ws && !S.ready) { try { ws.close(); } catch (_) {} } }, CONNECT_TIMEOUT_MS);
    ws.onopen = () => {
      if (S.ws !== ws) return;
      opened = true;
      ws.send(JSON.stringify({ type: "auth", token: S.token }));
    };
    ws.onmessage = (ev) => {
      if (S.ws !== ws) return;
      let f;
      try { f = JSON.parse(ev.data); } catch (_) { return; }
      if (f && typeof f === "object") handleFrame(f);
    };
    ws.onclose = (ev) => {
      if (S.ws !== ws) return;
      S.ws = null;
      document.body.dataset.lastClose = String(ev.code);
      const wasReady = S.ready;
      S.ready = false;
      S.joined.clear();
      clearTimers();
      if (!S.wanted) return;
      if (wasReady && Date.now() - S.readyAt > STABLE_AFTER_MS) S.attempt = 0;
      renderPresence();
      rerenderPending();
      if (ev.code === 4401) { signOut("Your session has expired. Please sign in again."); return; }
      if (!opened) { probeThenSchedule(); return; }
      if (ev.code === 1013) scheduleReconnect(TRY_AGAIN_LATER_MIN_MS, "The server asked us to try again later.");
      else if (ev.code === 1001) scheduleReconnect(null, "The server is restarting.");
      else scheduleReconnect(null, "The connection was lost.");
    };
    ws.onerror = () => { /* onclose follows and handles it */ };
  }

  // The upgrade failed before the socket opened; the browser does not say why,
  // so ask the server with an ordinary request and honour its Retry-After.
  async function probeThenSchedule() {
    setConn("reconnecting", "Reconnecting");
    try {
      const res = await api("GET", "/api/rooms");
      if (!S.wanted) return;
      if (res.status === 503) {
        document.body.dataset.retryAfterMs = String(res.retryAfter);
        scheduleReconnect(res.retryAfter === null ? TRY_AGAIN_LATER_MIN_MS : res.retryAfter, "The chat server is at capacity.");
      } else if (res.status === 401) {
        signOut("Your session has expired. Please sign in again.");
      } else {
        if (res.status === 200 && Array.isArray(res.data)) { S.rooms = res.data; renderRooms(); }
        scheduleReconnect(null, "The live connection was refused; the chat server may be full.");
      }
    } catch (_) {
      if (S.wanted) scheduleReconnect(null, "The chat server cannot be reached.");
    }
  }

  function scheduleReconnect(minMs, reason) {
    if (!S.wanted) return;
    clearTimers();
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(2, S.attempt));
    S.attempt = Math.min(S.attempt + 1, 30);
    // Full jitter; a server-given minimum is added to, not replaced by, the
    // random part, so clients told "1 s" still spread out.
    let delay = Math.random() * ceiling;
    if (minMs !== null && minMs !== undefined) delay = minMs + Math.random() * Math.min(ceiling, Math.max(minMs, BACKOFF_BASE_MS));
    delay = Math.round(delay);
    document.body.dataset.nextDelayMs = String(delay);
    S.nextAt = Date.now() + delay;
    S.reason = reason || "";
    S.timer = setTimeout(connect, delay);
    setConn("reconnecting", "Reconnecting");
    S.tick = setInterval(updateBanner, 250);
    updateBanner();
  }

  function updateBanner() {
    const b = $("banner");
    const queued = Array.from(S.outbox.values()).filter((o) => o.id === undefined).length;
    // The banner shows from the first failure until the server says ready.
    if (S.ready || !S.wanted || S.attempt === 0) {
      b.hidden = true;
      $("composer-hint").textContent = S.ready || !queued ? "" : queued + " message(s) will be sent when connected.";
      return;
    }
    b.hidden = false;
    $("banner-title").textContent = "Reconnecting…";
    $("banner-detail").textContent = S.reason;
    $("banner-queue").textContent = queued ? queued + " unsent message" + (queued > 1 ? "s" : "") + " will be sent then." : "";
    $("composer-hint").textContent = "You can keep typing: messages are queued until the connection is back.";
    if (S.timer !== null && S.nextAt) {
      const at = new Date(S.nextAt);
      $("banner-next").textContent = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
      const secs = Math.max(0, Math.ceil((S.nextAt - Date.now()) / 1000));
      $("banner-in").textContent = "(in " + secs + " s)";
      setConn("reconnecting", "Reconnecting in " + secs + " s");
    } else {
      $("banner-next").textContent = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
      $("banner-in").textContent = "(trying now)";
    }
  }

  function rerenderPending() {
    for (const li of document.querySelectorAll("#messages li.pending .state")) {
      li.textContent = S.ready ? "sending…" : "queued, will send when connected";
    }
  }

  function sendFrame(f) {
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return false;
    S.ws.send(JSON.stringify(f));
    return true;
  }

  function schedulePing() {
    clearTimeout(S.pingTimer);
    S.pingTimer = setTimeout(() => {
      if (!sendFrame({ type: "ping" })) return;
      clearTimeout(S.pongTimer);
      S.pongTimer = setTimeout(() => { if (S.ws) { try { S.ws.close(); } catch (_) {} } }, PONG_TIMEOUT_MS);
    }, PING_EVERY_MS);
  }

  function handleFrame(f) {
    // Any frame proves the connection is alive.
    clearTimeout(S.pongTimer); S.pongTimer = null;
    if (S.ready) schedulePing();
    switch (f.type) {
      case "ready": {
        clearTimeout(S.connectTimer);
        S.ready = true; S.readyAt = Date.now(); S.nextAt = 0;
        clearInterval(S.tick); S.tick = null;
        setConn("online", "Connected");
        updateBanner();
        schedulePing();
        // Join the room on screen and every room we had joined before.
        const rooms = new Set(S.roomState.keys());
        if (S.current) rooms.add(S.current);
        for (const o of S.outbox.values()) rooms.add(o.room);
        for (const r of rooms) sendFrame({ type: "join", room: r });
        rerenderPending();
        break;
      }
      case "joined": {
        S.joined.add(f.room);
        const list = Array.isArray(f.online) ? f.online : (Array.isArray(f.members) ? f.members : null);
        if (list) { const set = new Set(); for (const u of list) set.add(String(u)); S.presence.set(f.room, set); }
        setPresence(f.room, S.user, "online");
        const st = roomState(f.room);
        st.loading = "latest";
        sendFrame({ type: "history", room: f.room, limit: HISTORY_PAGE });
        flushOutbox(f.room);
        break;
      }
      case "left": S.joined.delete(f.room); break;
      case "presence": if (f.room && f.user) setPresence(f.room, String(f.user), f.state); break;
      case "message": onLiveMessage(f); break;
      case "history": onHistory(f); break;
      case "ack": onAck(f); break;
      case "pong": break;
      case "error":
        if (f.code === "forbidden") notice("You are not a member of that private room.");
        else if (f.code === "lagged") notice("Fell behind; catching up from history.");
        else if (f.message) notice(String(f.message));
        break;
      default: break;
    }
  }

  function notice(text) {
    const ol = $("messages");
    ol.append(el("li", "sys", text));
    if (nearBottom()) toBottom();
  }

  // ---------- wiring ----------
  $("auth-form").addEventListener("submit", (e) => { e.preventDefault(); authenticate("login"); });
  $("register-btn").addEventListener("click", () => authenticate("register"));
  $("logout-btn").addEventListener("click", () => signOut(""));
  $("refresh-rooms").addEventListener("click", refreshRooms);
  $("new-room").addEventListener("submit", (e) => { e.preventDefault(); createRoom(); });
  $("invite").addEventListener("submit", (e) => { e.preventDefault(); invite(); });
  $("banner-retry").addEventListener("click", () => { connect(); });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const ta = $("composer-text");
    const text = ta.value;
    if (!text.trim() || !S.current) return;
    if (text.length > 4000) { $("composer-hint").textContent = "Messages are at most 4000 characters."; return; }
    ta.value = "";
    queueMessage(text);
  });
  // The composer grows with its text, up to its max-height.
  function fitComposer() {
    const ta = $("composer-text");
    ta.style.height = "44px";
    const h = Math.min(ta.scrollHeight + 2, 160);
    ta.style.height = h + "px";
    ta.style.overflowY = ta.scrollHeight + 2 > 160 ? "auto" : "hidden";
  }
  $("composer-text").addEventListener("input", fitComposer);
  $("composer").addEventListener("submit", () => setTimeout(fitComposer, 0));
  $("composer-text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("scroller").addEventListener("scroll", () => { if ($("scroller").scrollTop < 40) loadOlder(); });
  window.addEventListener("online", () => { if (S.wanted && !S.ws) connect(); });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) document.title = "admit chat"; });
  window.addEventListener("storage", (e) => { if (e.key === STORE + "session" && e.newValue === null && S.user) signOut(""); });

  const session = load("session", null);
  if (session && session.token && session.user) signedIn(session.token, session.user);
  else { $("auth-view").hidden = false; $("auth-name").focus(); }
})();
