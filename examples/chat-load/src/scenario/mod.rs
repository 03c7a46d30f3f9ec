//! The scenarios and what they share: the run context, user accounts,
//! chatting clients and end-to-end delivery tracking.

pub mod flood;
pub mod slowloris;
pub mod steady;
pub mod storm;
pub mod wedge;

use crate::cli::{Common, TransportArg};
use crate::client::proto::{Command, Event};
use crate::client::status::HealthMonitor;
use crate::client::{self, ChatConn, ClientError, Connector, Opened, Target, Transport};
use crate::metrics::{AtomicHistogram, Outcome, Timeline};
use crate::report::{self, Report};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Everything a scenario needs to drive the server.
#[derive(Debug)]
pub struct Ctx {
    /// Where the server listens.
    pub target: Target,
    /// Opens client sockets.
    pub connector: Arc<Connector>,
    /// Per-bin counters.
    pub timeline: Arc<Timeline>,
    /// The `/health` poller.
    pub health: HealthMonitor,
    /// Shared options.
    pub common: Common,
    /// Chat capacity as `/health` reported it at the start.
    pub capacity: u64,
    /// Idle timeout of the server, when known (spawned servers).
    pub idle_timeout: Option<u64>,
    /// Short random id that keeps this run's users and messages apart.
    pub run_id: String,
    /// Cancelled when the run must end (deadline).
    pub stop: CancellationToken,
    /// Every node of a cluster (the first is `target`); just `target`
    /// outside cluster mode.
    pub nodes: Vec<Target>,
    /// The cluster budget, in cluster mode.
    pub cluster_capacity: Option<u64>,
    events: Mutex<Vec<report::Event>>,
    next_transport: AtomicUsize,
}

impl Ctx {
    /// Creates the context.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: Target,
        connector: Arc<Connector>,
        timeline: Arc<Timeline>,
        health: HealthMonitor,
        common: Common,
        capacity: u64,
        idle_timeout: Option<u64>,
        stop: CancellationToken,
    ) -> Self {
        Ctx {
            nodes: vec![target.clone()],
            cluster_capacity: None,
            target,
            connector,
            timeline,
            health,
            common,
            capacity,
            idle_timeout,
            run_id: format!("{:06x}", rand::random::<u32>() & 0xff_ffff),
            stop,
            events: Mutex::new(Vec::new()),
            next_transport: AtomicUsize::new(0),
        }
    }

    /// Runs against these cluster nodes (the first must be `target`) with
    /// this budget.
    pub fn with_cluster(mut self, nodes: Vec<Target>, budget: u64) -> Self {
        if !nodes.is_empty() {
            self.nodes = nodes;
        }
        self.cluster_capacity = Some(budget);
        self
    }

    /// The node client `i` uses: round robin over the nodes.
    pub fn node(&self, i: u64) -> &Target {
        &self.nodes[(i % self.nodes.len() as u64) as usize]
    }

    /// The connection cap that binds: the cluster budget in cluster mode,
    /// else the server's capacity.
    pub fn total_capacity(&self) -> u64 {
        self.cluster_capacity.unwrap_or(self.capacity)
    }

    /// Seconds since the start of the run.
    pub fn t(&self) -> f64 {
        self.timeline.elapsed_s()
    }

    /// Seconds from the start of the run to `at`.
    pub fn t_of(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.timeline.start())
            .as_secs_f64()
    }

    /// Marks an event now.
    pub fn event(&self, what: &str) {
        self.event_at(self.t(), what);
    }

    /// Marks an event at `t_s`.
    pub fn event_at(&self, t_s: f64, what: &str) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(report::Event {
                t_s,
                what: what.to_string(),
            });
    }

    /// The events so far, in time order.
    pub fn events(&self) -> Vec<report::Event> {
        let mut ev = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        ev.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
        ev
    }

    /// The transport for the next client (alternating when mixed).
    pub fn transport(&self) -> Transport {
        match self.common.transport {
            TransportArg::Ws => Transport::Ws,
            TransportArg::Tcp => Transport::Tcp,
            TransportArg::Mixed => {
                if self.next_transport.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
                    Transport::Ws
                } else {
                    Transport::Tcp
                }
            }
        }
    }

    /// The per-step timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.common.timeout_ms.max(1))
    }

    /// A progress bar (hidden with `--quiet` or when stderr is no terminal).
    pub fn bar(&self, len: u64, msg: &str) -> ProgressBar {
        if self.common.quiet {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(msg.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// Sleeps `secs`, advancing a progress bar; returns early on stop.
    pub async fn phase(&self, secs: f64, msg: &str) {
        let bar = self.bar((secs * 10.0).ceil() as u64, msg);
        let end = Instant::now() + Duration::from_secs_f64(secs.max(0.0));
        while Instant::now() < end && !self.stop.is_cancelled() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = self.stop.cancelled() => {}
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
    }
}

/// Errors that end a scenario early.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Preparing the run failed (accounts, baseline).
    #[error("setup failed: {0}")]
    Setup(String),
    /// A client operation failed where the scenario cannot go on.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Registers (or logs in) `n` accounts for this run, a few at a time
/// (password hashing is deliberately slow on the server).
pub async fn register_users(ctx: &Ctx, n: u64) -> Result<Vec<String>, ScenarioError> {
    let bar = ctx.bar(n, "registering users");
    let mut set = JoinSet::new();
    let mut tokens = vec![String::new(); n as usize];
    let mut next = 0u64;
    let password = format!("load-pass-{}", ctx.run_id);
    loop {
        while set.len() < 4 && next < n {
            let name = format!("load{}u{next}", ctx.run_id);
            let connector = ctx.connector.clone();
            let http = ctx.target.http;
            let password = password.clone();
            let timeout = ctx.timeout().max(Duration::from_secs(10));
            let i = next;
            set.spawn(async move {
                let mut last = None;
                for attempt in 0..3u64 {
                    match client::register_or_login(&connector, http, &name, &password, timeout)
                        .await
                    {
                        Ok(t) => return (i, Ok(t)),
                        Err(e) => last = Some(e),
                    }
                    tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                }
                (i, Err(last.unwrap_or(ClientError::Timeout)))
            });
            next += 1;
        }
        let Some(res) = set.join_next().await else {
            break;
        };
        let (i, token) = res.map_err(|e| ScenarioError::Setup(e.to_string()))?;
        tokens[i as usize] = token
            .map_err(|e| ScenarioError::Setup(format!("registering a load user failed: {e}")))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(tokens)
}

/// Why a chat client could not get going.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The server answered "busy".
    #[error("rejected at capacity")]
    Rejected,
    /// Something else failed.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Opens a chat connection, authenticates and joins `room`.
pub async fn connect_chatter(
    ctx: &Ctx,
    token: &str,
    room: &str,
    transport: Transport,
) -> Result<ChatConn, JoinError> {
    open_auth_join(
        &ctx.connector,
        &ctx.target,
        &ctx.timeline,
        ctx.timeout(),
        token,
        room,
        transport,
    )
    .await
}

/// [`connect_chatter`] without the context, for spawned tasks.
pub async fn open_auth_join(
    connector: &Connector,
    target: &Target,
    timeline: &Timeline,
    timeout: Duration,
    token: &str,
    room: &str,
    transport: Transport,
) -> Result<ChatConn, JoinError> {
    let opened = ChatConn::open(connector, target, transport, timeout).await;
    let mut conn = match opened {
        Ok(Opened::Admitted(c)) => {
            timeline.outcome(Outcome::Admitted);
            c
        }
        Ok(Opened::Rejected { .. }) => {
            timeline.outcome(Outcome::Rejected);
            return Err(JoinError::Rejected);
        }
        Err(e) => {
            timeline.outcome(Outcome::Failed);
            return Err(e.into());
        }
    };
    conn.auth(token, timeout).await?;
    conn.join(room, timeout).await?;
    Ok(conn)
}

/// Number of slots in the delivery ring; a message must be delivered
/// before 2^19 newer ones were sent to be timed.
const RING: usize = 1 << 19;

#[derive(Debug, Default)]
struct Slot {
    seq: AtomicU64,
    sent_us: AtomicU64,
    remaining: AtomicU32,
    max_us: AtomicU64,
}

/// End-to-end delivery tracking for chat messages sent by this run.
///
/// Each message carries a sequence number in its text. Sending fills a ring
/// slot with the send time and the number of room members expected to get
/// it; each delivery records its own latency and counts down; the last one
/// records the message's "delivered to every member" latency. Lock-free,
/// so thousands of clients can record at once.
#[derive(Debug)]
pub struct Tracker {
    run_id: String,
    start: Instant,
    slots: Box<[Slot]>,
    next_seq: AtomicU64,
    members: Vec<AtomicU32>,
    /// Whether chatters should send (they stay connected either way).
    pub sending: AtomicBool,
    phase: AtomicUsize,
    /// Messages sent.
    pub sent: AtomicU64,
    /// Messages acknowledged (committed).
    pub acked: AtomicU64,
    /// Deliveries expected (members at send time, summed).
    pub expected: AtomicU64,
    /// Deliveries received.
    pub delivered: AtomicU64,
    /// Messages delivered to every member.
    pub completed: AtomicU64,
    /// `lagged` errors received.
    pub lagged: AtomicU64,
    /// Send → delivered to one member, per delivery.
    pub delivery: AtomicHistogram,
    /// Send → delivered to every member, per message.
    pub full: AtomicHistogram,
    /// Send → ack.
    pub ack: AtomicHistogram,
    /// Per-delivery latency split by phase (before / during / after).
    pub phases: [AtomicHistogram; 3],
}

impl Tracker {
    /// A tracker for `rooms` rooms.
    pub fn new(run_id: &str, rooms: usize) -> Self {
        Tracker {
            run_id: run_id.to_string(),
            start: Instant::now(),
            slots: (0..RING).map(|_| Slot::default()).collect(),
            next_seq: AtomicU64::new(1),
            members: (0..rooms.max(1)).map(|_| AtomicU32::new(0)).collect(),
            sending: AtomicBool::new(false),
            phase: AtomicUsize::new(0),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            lagged: AtomicU64::new(0),
            delivery: AtomicHistogram::default(),
            full: AtomicHistogram::default(),
            ack: AtomicHistogram::default(),
            phases: Default::default(),
        }
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Sets the phase later deliveries are counted in (0, 1 or 2).
    pub fn set_phase(&self, p: usize) {
        self.phase.store(p.min(2), Ordering::Relaxed);
    }

    /// Counts a member joining (`+1`) or going (`-1`) room `room`.
    pub fn member(&self, room: usize, delta: i32) {
        let m = &self.members[room % self.members.len()];
        if delta >= 0 {
            m.fetch_add(delta as u32, Ordering::Relaxed);
        } else {
            let _ = m.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(delta.unsigned_abs()))
            });
        }
    }

    /// Prepares the next message for room `room`: its client id and text.
    pub fn prepare(&self, room: usize) -> (String, String) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let slot = &self.slots[seq as usize % RING];
        let members = self.members[room % self.members.len()].load(Ordering::Relaxed);
        slot.sent_us.store(self.now_us(), Ordering::Relaxed);
        slot.remaining.store(members, Ordering::Relaxed);
        slot.max_us.store(0, Ordering::Relaxed);
        // Release: a reader that sees this seq also sees the fields above.
        slot.seq.store(seq, Ordering::Release);
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.expected
            .fetch_add(u64::from(members), Ordering::Relaxed);
        (
            format!("{}-{seq}", self.run_id),
            format!("cl {} {seq}", self.run_id),
        )
    }

    fn slot_for(&self, seq: u64) -> Option<&Slot> {
        let slot = &self.slots[seq as usize % RING];
        // Acquire pairs with the Release in `prepare`.
        (slot.seq.load(Ordering::Acquire) == seq).then_some(slot)
    }

    /// Parses the sequence number out of a message text of this run.
    pub fn parse_text(&self, text: &str) -> Option<u64> {
        let mut w = text.split(' ');
        (w.next()? == "cl" && w.next()? == self.run_id)
            .then(|| w.next()?.parse().ok())
            .flatten()
    }

    /// Records a delivery of a message with `text`; returns its latency
    /// when it was one of this run's.
    pub fn on_message(&self, text: &str) -> Option<Duration> {
        let seq = self.parse_text(text)?;
        let slot = self.slot_for(seq)?;
        let lat = self
            .now_us()
            .saturating_sub(slot.sent_us.load(Ordering::Relaxed));
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.delivery.record(lat);
        self.phases[self.phase.load(Ordering::Relaxed)].record(lat);
        slot.max_us.fetch_max(lat, Ordering::Relaxed);
        // AcqRel: the last decrement must see every other delivery's max.
        let before = slot
            .remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1));
        if before == Ok(1) {
            self.completed.fetch_add(1, Ordering::Relaxed);
            self.full.record(slot.max_us.load(Ordering::Relaxed));
        }
        Some(Duration::from_micros(lat))
    }

    /// Records an ack for `client_id`.
    pub fn on_ack(&self, client_id: &str) {
        let Some(seq) = client_id
            .strip_prefix(self.run_id.as_str())
            .and_then(|s| s.strip_prefix('-'))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return;
        };
        if let Some(slot) = self.slot_for(seq) {
            self.acked.fetch_add(1, Ordering::Relaxed);
            self.ack.record(
                self.now_us()
                    .saturating_sub(slot.sent_us.load(Ordering::Relaxed)),
            );
        }
    }
}

/// How a chatting client ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatterEnd {
    /// Told to stop.
    Stopped,
    /// The server closed it (close code when WebSocket).
    Lost(Option<u16>),
}

/// A connected, joined client that sends a message to `room` every `period`
/// (while `tracker.sending`) and records every delivery, until `stop`.
pub async fn chatter(
    mut conn: ChatConn,
    room: String,
    room_idx: usize,
    period: Duration,
    tracker: Arc<Tracker>,
    timeline: Arc<Timeline>,
    stop: CancellationToken,
) -> ChatterEnd {
    tracker.member(room_idx, 1);
    let first = period.mul_f64(rand::random::<f64>());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        tokio::select! {
            _ = stop.cancelled() => break ChatterEnd::Stopped,
            _ = tick.tick() => {
                if tracker.sending.load(Ordering::Relaxed) {
                    let (client_id, text) = tracker.prepare(room_idx);
                    let cmd = Command::Say { room: room.clone(), client_id, text };
                    if conn.send(&cmd).await.is_err() {
                        break ChatterEnd::Lost(None);
                    }
                }
            }
            ev = conn.recv() => match ev {
                Event::Message { text, .. } => {
                    if let Some(lat) = tracker.on_message(&text) {
                        timeline.latency(lat);
                    }
                }
                Event::Ack { client_id, .. } => tracker.on_ack(&client_id),
                Event::Error { code } if code == "lagged" => {
                    tracker.lagged.fetch_add(1, Ordering::Relaxed);
                }
                Event::Closed(code) => break ChatterEnd::Lost(code),
                Event::Bye | Event::Busy { .. } => break ChatterEnd::Lost(None),
                _ => {}
            },
        }
    };
    tracker.member(room_idx, -1);
    if end == ChatterEnd::Stopped {
        conn.close().await;
    }
    end
}

/// Adds the tracker's figures to a report.
pub fn report_tracker(report: &mut Report, t: &Tracker, seconds: f64) {
    let sent = t.sent.load(Ordering::Relaxed);
    let acked = t.acked.load(Ordering::Relaxed);
    report.figure("messages sent", sent, "");
    report.figure("messages acked", acked, "");
    report.number(
        "throughput (acked)",
        (seconds > 0.0).then(|| acked as f64 / seconds),
        "msg/s",
    );
    report.figure(
        "deliveries expected",
        t.expected.load(Ordering::Relaxed),
        "",
    );
    report.figure(
        "deliveries received",
        t.delivered.load(Ordering::Relaxed),
        "",
    );
    report.figure(
        "messages delivered to every member",
        t.completed.load(Ordering::Relaxed),
        "",
    );
    report.figure("lagged errors", t.lagged.load(Ordering::Relaxed), "");
}

/// Keeps an admitted connection alive like a real idle client (a ping every
/// `ping_every`, so the idle timeout does not apply) until `end`. Returns
/// `false` when the server closed it first.
pub async fn hold(conn: &mut ChatConn, end: &CancellationToken, ping_every: Duration) -> bool {
    let mut tick = tokio::time::interval(ping_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = end.cancelled() => return true,
            _ = tick.tick() => {
                if conn.send(&Command::Ping).await.is_err() {
                    return false;
                }
            }
            ev = conn.recv() => {
                if matches!(ev, Event::Closed(_) | Event::Bye | Event::Busy { .. }) {
                    return false;
                }
            }
        }
    }
}

/// Reads events until the server closes the connection.
pub async fn wait_closed(conn: &mut ChatConn) -> Event {
    loop {
        let ev = conn.recv().await;
        if matches!(ev, Event::Closed(_) | Event::Bye | Event::Busy { .. }) {
            return ev;
        }
    }
}

/// Counts what a batch of chatters came to.
pub fn count_lost(ends: &[ChatterEnd]) -> u64 {
    ends.iter()
        .filter(|e| matches!(e, ChatterEnd::Lost(_)))
        .count() as u64
}

/// A shared counter for "how many are currently X".
pub fn gauge() -> Arc<AtomicI64> {
    Arc::new(AtomicI64::new(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_times_deliveries_and_completion() {
        let t = Tracker::new("abc", 2);
        t.member(0, 1);
        t.member(0, 1);
        let (cid, text) = t.prepare(0);
        assert!(cid.starts_with("abc-"));
        assert_eq!(t.parse_text(&text), Some(1));
        assert_eq!(t.parse_text("cl other 1"), None);
        assert_eq!(t.parse_text("hello"), None);
        assert!(t.on_message(&text).is_some());
        assert_eq!(t.completed.load(Ordering::Relaxed), 0);
        assert!(t.on_message(&text).is_some());
        assert_eq!(t.completed.load(Ordering::Relaxed), 1);
        // A duplicate delivery does not complete it twice.
        assert!(t.on_message(&text).is_some());
        assert_eq!(t.completed.load(Ordering::Relaxed), 1);
        t.on_ack(&cid);
        t.on_ack("zzz-1");
        assert_eq!(t.acked.load(Ordering::Relaxed), 1);
        assert_eq!(t.expected.load(Ordering::Relaxed), 2);
        assert_eq!(t.delivery.snapshot().count(), 3);
        assert_eq!(t.full.snapshot().count(), 1);
        t.member(0, -5);
        let (_, text2) = t.prepare(0);
        assert_eq!(t.parse_text(&text2), Some(2));
        assert_eq!(t.expected.load(Ordering::Relaxed), 2);
    }
}
