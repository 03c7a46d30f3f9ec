"use strict";
// Live status page: listens to /events (server-sent events carrying the /health
// JSON) and falls back to polling /health when the stream is unavailable.
// Every figure from the server is written with textContent.
(function () {
  const POLL_MS = 1000;
  const STALE_MS = 5000;
  const WINDOW_MS = 5 * 60 * 1000;
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  };
  const num = (v) => (typeof v === "number" && isFinite(v) ? v : 0);
  const fmt = (v) => num(v).toLocaleString("en-US");

  const WORDS = {
    healthy: ["All systems operational", "Chat is accepting new connections normally.", "M12 23l7 7 13-15"],
    saturated: ["At capacity", "Chat is full: new connections are asked to retry shortly. People already connected are not affected.", "M22 12v12M22 31v1"],
    degraded: ["Degraded", "The connection limiter is not admitting as it should; the watchdog is repairing it automatically.", "M22 12v12M22 31v1"],
    draining: ["Maintenance", "The server is shutting down gracefully; clients will reconnect to it when it is back.", "M14 22h16"],
    closed: ["Closed", "The server is not accepting connections.", "M14 22h16"],
    unknown: ["Status unavailable", "The status service cannot be reached right now; showing the last known figures.", "M13 22h18"],
  };

  let lastUpdate = 0;
  let lastStreamMsg = 0;
  let pollTimer = null;
  const samples = []; // {t, inUse, cap, rejected}

  function render(h) {
    if (!h || typeof h !== "object") return;
    lastUpdate = Date.now();
    const status = typeof h.status === "string" ? h.status : "unknown";
    const words = WORDS[status] || [status, "", "M13 22h18"];
    const hero = $("hero");
    hero.dataset.status = WORDS[status] ? status : "unknown";
    $("overall").textContent = status;
    $("hero-title").textContent = words[0];
    const cause = typeof h.cause === "string" ? h.cause : null;
    $("hero-detail").textContent = status === "degraded" && cause && CAUSES[cause] ? CAUSES[cause] : words[1];
    $("hero-icon").setAttribute("d", words[2]);
    // A change of state is a reason to look at the history at once.
    const key = status + "/" + (cause || "");
    if (lastStatus !== null && key !== lastStatus) loadHistory();
    lastStatus = key;
    document.title = words[0] + " — admit chat status";

    const limiters = h.limiters && typeof h.limiters === "object" ? h.limiters : {};
    renderLimiters(limiters);
    renderCluster(h.cluster);

    const wd = h.watchdog || {};
    const alive = wd.alive === true;
    let age = num(wd.last_tick_ms);
    if (age > 1e12) age = Math.max(0, Date.now() - age); // an epoch timestamp, not an age
    const heart = $("heart");
    heart.className = alive ? "" : "dead";
    if (alive) { void heart.offsetWidth; heart.className = "alive"; }
    $("watchdog-beat").textContent = alive
      ? "Alive — last heartbeat " + age + " ms ago."
      : "Not responding — last heartbeat " + (age / 1000).toFixed(1) + " s ago.";
    const ws = $("watchdog-state");
    ws.textContent = alive ? "alive" : "stopped";
    ws.className = "pill " + (alive ? "ok" : "bad");
    $("uptime").textContent = uptime(num(h.uptime_s));
    let repairs = 0;
    for (const k of Object.keys(limiters)) repairs += num(limiters[k] && limiters[k].repaired_total);
    $("repairs-all").textContent = fmt(repairs);
    const chatFigures = h.chat && typeof h.chat === "object" ? h.chat : {};
    $("messages-total").textContent = fmt(chatFigures.messages_total);
    $("subscriptions").textContent = fmt(chatFigures.subscriptions);
    $("lagged-total").textContent = fmt(chatFigures.lagged_total);

    const chat = limiters.chat || {};
    samples.push({ t: Date.now(), inUse: num(chat.in_use), cap: num(chat.capacity), rejected: sumRejected(chat) });
    while (samples.length && samples[0].t < Date.now() - WINDOW_MS) samples.shift();
    drawChart();
    $("updated").textContent = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    setLive();
  }

  function sumRejected(snap) {
    const r = snap && snap.rejected_total;
    if (typeof r === "number") return r;
    let s = 0;
    if (r && typeof r === "object") for (const k of Object.keys(r)) s += num(r[k]);
    return s;
  }

  function uptime(s) {
    const d = Math.floor(s / 86400), hh = Math.floor(s % 86400 / 3600), mm = Math.floor(s % 3600 / 60), ss = Math.floor(s % 60);
    return (d ? d + "d " : "") + (d || hh ? hh + "h " : "") + (d || hh || mm ? mm + "m " : "") + ss + "s";
  }

  const CAUSES = {
    stalled: "Wake-ups were lost: connections are waiting beside free slots. The watchdog is re-driving them automatically.",
    leaking: "Connection slots were held idle past the limit; the watchdog revoked them and is reclaiming the slots automatically.",
    watchdog_silent: "The watchdog has stopped reporting, so nothing is repairing the limiter right now.",
    store: "Messages cannot be saved right now, so sending is refused rather than losing them. People can still read and stay connected.",
    cluster: "This server has lost touch with the rest of the cluster. It keeps serving within its last share of connections and rejoins by itself.",
  };

  // Every node of a cluster, and the shared budget (hidden on a single server).
  function renderCluster(c) {
    const card = $("cluster-card");
    const clustered = c && typeof c === "object" && c.mode !== "single";
    card.hidden = !clustered;
    if (!clustered) return;
    const mode = $("cluster-mode");
    mode.textContent = String(c.mode);
    mode.className = "pill " + (c.mode === "cluster" ? "ok" : "bad");
    $("cluster-summary").textContent = fmt(c.in_use) + " of " + fmt(c.capacity) +
      " connections in use across the cluster; shared state " + (c.redis === "ok" ? "reachable" : "unreachable") +
      ". This page is served by " + String(c.node) + ".";
    const t = $("cluster-nodes");
    const head = el("tr");
    for (const h of ["Node", "Connections", "Last seen"]) head.append(el("td", "h", h));
    const rows = (Array.isArray(c.nodes) ? c.nodes : []).map((n) => {
      const tr = el("tr");
      tr.dataset.node = String(n.node);
      tr.append(el("td", null, String(n.node)), el("td", "n", fmt(n.in_use)), el("td", "n", duration(num(n.last_seen_ms)) + " ago"));
      return tr;
    });
    t.replaceChildren(head, ...rows);
  }

  const CAUSE_LABELS = {
    leaking: "connections held",
    stalled: "lost wake-ups",
    watchdog_silent: "monitor silent",
    saturated: "full",
    store: "saving failed",
    cluster: "cluster",
  };

  // ---------- history: the open incident, uptime bars, the incident list ----------
  const HISTORY_MS = 5000;
  let historyTimer = null;
  let lastStatus = null;

  function when(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return "";
    return d.toLocaleString([], { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function renderIncidents(list) {
    const ongoing = list.find((i) => i && i.ended === null);
    const box = $("open-incident");
    box.hidden = !ongoing;
    if (ongoing) {
      $("open-incident-cause").textContent = CAUSE_LABELS[ongoing.cause] || String(ongoing.cause);
      $("open-incident-summary").textContent = String(ongoing.summary || "");
      $("open-incident-since").textContent = "Since " + when(ongoing.started) + ".";
    }
    const ol = $("incidents");
    if (list.length === 0) {
      ol.replaceChildren(el("li", "empty", "No incidents recorded. When something goes wrong, it is listed here with what fixed it."));
      return;
    }
    ol.replaceChildren(...list.map((i) => {
      const li = el("li", i.ended === null ? "ongoing" : null);
      li.dataset.cause = String(i.cause);
      li.dataset.repairedBy = i.repaired_by === null ? "" : String(i.repaired_by);
      const head = el("div", "when", when(i.started) + " · " + (CAUSE_LABELS[i.cause] || String(i.cause)) + (i.ended === null ? " · ongoing" : ""));
      li.append(head, el("div", "what", String(i.summary || "")));
      return li;
    }));
  }

  function renderUptime(days) {
    const bars = $("uptime-bars");
    let sum = 0, n = 0;
    bars.replaceChildren(...days.map((d) => {
      const up = typeof d.up === "number" ? d.up : null;
      const cls = up === null ? "day-none" : up >= 0.9999 ? "day-up" : up >= 0.99 ? "day-dip" : "day-down";
      const bar = el("span", cls);
      const pct = up === null ? "no record" : (up * 100).toFixed(up >= 0.9999 ? 2 : 3) + "% up";
      bar.setAttribute("title", d.date + ": " + pct + (d.incidents ? ", " + d.incidents + " incident" + (d.incidents === 1 ? "" : "s") : ""));
      if (up !== null) { sum += up; n += 1; }
      return bar;
    }));
    $("uptime-caption").textContent = "last " + days.length + " days" + (n ? " · " + (sum / n * 100).toFixed(3) + "% up where recorded" : "");
  }

  async function loadHistory() {
    clearTimeout(historyTimer);
    try {
      const [inc, up] = await Promise.all([
        fetch("incidents?limit=20", { cache: "no-store" }).then((r) => r.json()),
        fetch("uptime", { cache: "no-store" }).then((r) => r.json()),
      ]);
      if (inc && Array.isArray(inc.incidents)) renderIncidents(inc.incidents);
      if (up && Array.isArray(up.days)) renderUptime(up.days);
    } catch (_) { /* the live part shows when the service is unreachable */ }
    historyTimer = setTimeout(loadHistory, HISTORY_MS);
  }

  const REASONS = {
    full: "At capacity",
    per_ip: "Too many from one address",
    queue_full: "Waiting line full",
    timeout: "Waited too long",
    closed: "Shutting down",
  };

  const LIMITER_TEXT = {
    chat: ["Chat connections", "Web and TCP chat connections share this budget."],
    status: ["Status service", "Serves this page and the health checks, with its own small budget."],
    hashing: ["Password checks", "Sign-ups and logins are checked a few at a time, so a flood of them cannot exhaust the server's memory."],
    events: ["Live updates", "Live streams like the one feeding this page; at most a few dozen at once."],
  };

  function renderLimiters(limiters) {
    const box = $("limiters");
    const names = Object.keys(limiters).sort((a, b) => (a === "chat" ? -1 : b === "chat" ? 1 : a.localeCompare(b)));
    box.replaceChildren(...names.map((name) => limiterCard(name, limiters[name] || {})));
  }

  function limiterCard(name, s) {
    const card = el("div", "card");
    card.dataset.limiter = name;
    const text = LIMITER_TEXT[name] || [name, ""];
    const state = typeof s.state === "string" ? s.state : "";
    const h2 = el("h2", null, text[0]);
    const cls = /healthy|open|ok/.test(state) ? "ok" : /saturat|full|drain/.test(state) ? "warn" : state ? "bad" : "";
    h2.append(el("span", "pill " + cls, state || "–"));
    card.append(h2, el("div", "sub", text[1]));

    const cap = num(s.capacity), used = num(s.in_use), waiting = num(s.waiting);
    const figs = el("div", "figures");
    for (const [k, v, key] of [["capacity", cap, "capacity"], ["in use", used, "in_use"], ["waiting", waiting, "waiting"]]) {
      const f = el("div", "fig");
      const vEl = el("div", "v", fmt(v));
      vEl.dataset.field = key;
      f.append(vEl, el("div", "k", k));
      figs.append(f);
    }
    card.append(figs);

    const pressure = typeof s.pressure === "number" ? s.pressure : cap > 0 ? (used + waiting) / cap : (used + waiting > 0 ? 1 : 0);
    const pct = Math.round(pressure * 100);
    const bl = el("div", "barlabel");
    bl.append(el("span", null, "Pressure"), el("span", null, pct + "%"));
    bl.lastChild.dataset.field = "pressure";
    const bar = el("div", "bar");
    const fill = el("div", pct >= 100 ? "bad" : pct >= 75 ? "warn" : "");
    fill.style.width = Math.min(100, Math.max(0, pct)) + "%";
    bar.append(fill);
    card.append(bl, bar);

    const t = el("table");
    const row = (k, v, field) => {
      const tr = el("tr");
      const td = el("td", "n", v);
      if (field) td.dataset.field = field;
      tr.append(el("td", null, k), td);
      t.append(tr);
    };
    row("Admitted since start", fmt(s.admitted_total), "admitted_total");
    const head = el("tr"); const th = el("td", "h", "Rejections by reason"); th.colSpan = 2; head.append(th); t.append(head);
    const rej = s.rejected_total && typeof s.rejected_total === "object" ? s.rejected_total : {};
    // Reasons that never happened are left out, so the list reads at a glance.
    const reasons = Object.keys(rej).filter((r) => num(rej[r]) > 0).sort();
    if (reasons.length === 0) row("None so far", "0", "rejected");
    for (const r of reasons) row(REASONS[r] || r.replace(/_/g, " "), fmt(rej[r]), "rejected." + r);
    const head2 = el("tr"); const th2 = el("td", "h", "Self-repair"); th2.colSpan = 2; head2.append(th2); t.append(head2);
    row("Revoked (idle or stuck connections)", fmt(s.revoked_total), "revoked_total");
    row("Reclaimed (leaked slots)", fmt(s.reclaimed_total), "reclaimed_total");
    row("Repairs", fmt(s.repaired_total), "repaired_total");
    if (num(s.revoked_pending) > 0) row("Revoked, not yet returned", fmt(s.revoked_pending), "revoked_pending");
    row("Oldest connection", duration(num(s.oldest_lease_ms)), "oldest_lease_ms");
    card.append(t);
    return card;
  }

  function duration(ms) {
    if (ms < 1000) return ms + " ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min";
  }

  // ---------- chart: hand-drawn SVG ----------
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const k of Object.keys(attrs)) e.setAttribute(k, String(attrs[k]));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function drawChart() {
    const chart = $("chart");
    const W = 1000, H = 220, L = 44, R = 44, T = 10, B = 24;
    const pw = W - L - R, ph = H - T - B;
    const now = Date.now();
    const span = samples.length ? Math.min(WINDOW_MS, Math.max(30000, now - samples[0].t)) : 30000;
    const x = (t) => L + pw * (1 - (now - t) / span);
    const nodes = [];

    // per-second rejection rate between consecutive samples
    const rates = [];
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1], b = samples[i];
      const dt = (b.t - a.t) / 1000;
      if (dt > 0) rates.push({ t0: a.t, t1: b.t, r: Math.max(0, b.rejected - a.rejected) / dt });
    }
    // Axis tops are four "nice" steps (1, 2 or 5 times a power of ten).
    const nice = (v) => { const x = v / 4, p = Math.pow(10, Math.floor(Math.log10(x))); const m = x / p; return 4 * p * (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10); };
    const maxConn = Math.max(4, nice(Math.max(1, ...samples.map((s) => Math.max(s.inUse, s.cap)))));
    const maxRate = nice(Math.max(1, ...rates.map((r) => r.r)));
    const yc = (v) => T + ph * (1 - v / maxConn);
    const yr = (v) => T + ph * (1 - v / maxRate);

    for (let i = 0; i <= 4; i++) {
      const y = T + ph * i / 4;
      nodes.push(svg("line", { x1: L, x2: W - R, y1: y, y2: y, stroke: "#e3e6ec", "stroke-width": 1 }));
      nodes.push(svg("text", { x: L - 6, y: y + 4, "text-anchor": "end" }, String(Math.round(maxConn * (1 - i / 4)))));
      nodes.push(svg("text", { x: W - R + 6, y: y + 4, "text-anchor": "start" }, String(+(maxRate * (1 - i / 4)).toFixed(2)) + "/s"));
    }
    const step = [10000, 15000, 30000, 60000, 120000].find((st) => span / st <= 6) || 120000;
    for (let k = 0; k * step <= span; k++) {
      const ago = k * step;
      const label = k === 0 ? "now" : ago % 60000 === 0 ? "-" + ago / 60000 + " min" : "-" + ago / 1000 + " s";
      nodes.push(svg("text", { x: x(now - ago), y: H - 6, "text-anchor": k === 0 ? "end" : "middle" }, label));
    }
    for (const r of rates) {
      if (r.r <= 0) continue;
      const x0 = x(r.t0), x1 = x(r.t1);
      nodes.push(svg("rect", { x: x0, y: yr(r.r), width: Math.max(1, x1 - x0), height: T + ph - yr(r.r), fill: "#e0654f", opacity: 0.75 }));
    }
    if (samples.length > 0) {
      const path = (f) => samples.map((s, i) => (i ? "L" : "M") + x(s.t).toFixed(1) + " " + f(s).toFixed(1)).join(" ");
      nodes.push(svg("path", { d: path((s) => yc(s.cap)), stroke: "#9aa3b5", "stroke-width": 2, "stroke-dasharray": "6 5", fill: "none", "vector-effect": "non-scaling-stroke" }));
      nodes.push(svg("path", { d: path((s) => yc(s.inUse)), stroke: "#2f6fec", "stroke-width": 2.5, fill: "none", "stroke-linejoin": "round", "vector-effect": "non-scaling-stroke" }));
    }
    chart.replaceChildren(...nodes);
    $("chart-span").textContent = samples.length && now - samples[0].t >= WINDOW_MS - 1000 ? "last 5 minutes" : "since this page was opened";
  }

  // ---------- transport ----------
  function setLive() {
    const live = $("live");
    const age = Date.now() - lastUpdate;
    if (!lastUpdate || age > STALE_MS) {
      live.dataset.mode = "stale";
      live.textContent = lastUpdate ? "No update for " + Math.round(age / 1000) + " s — retrying" : "Connecting…";
      if (lastUpdate) {
        $("hero").dataset.status = "unknown";
        $("hero-title").textContent = WORDS.unknown[0];
        $("hero-detail").textContent = WORDS.unknown[1];
      }
    } else if (Date.now() - lastStreamMsg < STALE_MS) {
      live.dataset.mode = "stream"; live.textContent = "Live";
    } else {
      live.dataset.mode = "polling"; live.textContent = "Live (polling)";
    }
  }

  async function poll() {
    pollTimer = null;
    // While the stream delivers, polling rests.
    if (Date.now() - lastStreamMsg > 2000) {
      try {
        const res = await fetch("health", { cache: "no-store", headers: { "Accept": "application/json" } });
        // /health answers 503 with the same JSON body while degraded or draining.
        const body = await res.json();
        if (Date.now() - lastStreamMsg > 2000) render(body);
      } catch (_) { /* unreachable: the stale indicator shows it */ }
    }
    pollTimer = setTimeout(poll, POLL_MS);
  }

  function stream() {
    if (typeof EventSource === "undefined") return;
    const es = new EventSource("events");
    const onData = (ev) => {
      let h;
      try { h = JSON.parse(ev.data); } catch (_) { return; }
      lastStreamMsg = Date.now();
      render(h);
    };
    es.onmessage = onData;
    es.addEventListener("health", onData);
    // EventSource reconnects by itself after an error; polling covers the gap.
    es.onerror = () => { if (es.readyState === EventSource.CLOSED) setTimeout(stream, 5000); };
  }

  stream();
  poll();
  loadHistory();
  setInterval(() => { setLive(); if (Date.now() - lastUpdate > 1000) drawChart(); }, 1000);
})();
