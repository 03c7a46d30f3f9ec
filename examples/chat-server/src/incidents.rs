//! Incidents: what went wrong, when, for how long and what repaired it, kept
//! in the database so the status page can tell the story after the fact
//! and across restarts.
//!
//! An incident is derived, never reported by hand:
//!
//! * from the limiters' health transitions ([`admit::Health::changes`]):
//!   entering `degraded` opens one with the limiter's cause (`leaking`,
//!   `stalled`, `watchdog_silent`); leaving it closes it. What repaired it
//!   is read from the limiter's own counters between the two moments:
//!   leases reclaimed (the watchdog took back connections that had gone
//!   silent), repairs (lost wake-ups re-driven, or the count's drift
//!   corrected) or a changed capacity (an operator). A stall repaired in
//!   half a second is an incident like any other.
//! * from the chat limiter staying `saturated` for longer than
//!   [`SATURATED_AFTER`] (30 s: long enough that a burst which merely
//!   fills the server for a moment, as the flood replay's does, is not an
//!   incident; short enough that a server full for minutes is one), started
//!   at the moment it filled up;
//! * from the store's health ([`crate::store::StoreHealth`]): cause
//!   `store`, closed when a batch commits again.
//! * in cluster mode, from the node being cut off from the others
//!   ([`crate::cluster::Cluster::degraded`]: Redis unreachable, its share
//!   unconfirmed or its subscription down): limiter and cause `cluster`,
//!   closed when it has rejoined. It must last [`CLUSTER_NOTICE`]: a node
//!   is cut off for the moment it takes to subscribe at start.
//!
//! Each cause has a notice period ([`Notice`]) before it counts. `leaking`
//! also describes a live connection revoked for idleness in the moment
//! before it closes, which is the watchdog working as meant, so a `leaking`
//! episode is an incident only if it lasts [`LEAK_NOTICE`] or ends with
//! leases reclaimed from holders that never let go. Saturation must last
//! its 30 s, `cluster` its [`CLUSTER_NOTICE`]. Everything else counts at
//! once.
//!
//! The recorder is one task ([`run`]) that follows those signals; the
//! writes go through the store's writer thread like any other write, never
//! on a request's path. An incident is written when it opens (with
//! `ended` null) and updated when it closes, so one open at a crash is in
//! the database: at the next start it is closed as ended by the restart.
//! Incidents of the store itself cannot be written while the store fails;
//! they are kept in memory (and shown) until it takes writes again.
//!
//! The table is bounded: incidents older than [`KEEP`] or beyond the
//! newest `max_rows` ([`MAX_ROWS`] by default) are deleted whenever one is
//! opened.

use crate::store::{IncidentRow, Store, StoreError};
use crate::{App, Phase};
use admit::{Cause, HealthState, Snapshot};
use futures::StreamExt;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the chat limiter must stay saturated before that is an
/// incident (see the module docs).
pub const SATURATED_AFTER: Duration = Duration::from_secs(30);
/// How long incidents are kept.
pub const KEEP: Duration = Duration::from_secs(90 * 24 * 3600);
/// How long `leaking` must last to be an incident without a reclaim (see
/// the module docs): longer than a watchdog tick plus the moment a live
/// connection takes to close, shorter than the reclaim grace.
pub const LEAK_NOTICE: Duration = Duration::from_millis(500);
/// How long a node must be cut off from the cluster before that is an
/// incident (see the module docs).
pub const CLUSTER_NOTICE: Duration = Duration::from_secs(1);
/// How often the recorder looks whether the node is cut off from the
/// cluster.
const CLUSTER_POLL: Duration = Duration::from_millis(200);
/// How many incidents are kept at most.
pub const MAX_ROWS: i64 = 10_000;
/// Days of uptime the status page shows.
pub const UPTIME_DAYS: u32 = 90;

/// One incident as `GET /incidents` gives it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    /// Its id (0 for a store incident not yet written).
    pub id: i64,
    /// Which limiter (`chat`, `status`), `store` or `cluster`.
    pub limiter: String,
    /// `leaking`, `stalled`, `watchdog_silent`, `saturated`, `store` or
    /// `cluster`.
    pub cause: String,
    /// When it started, RFC 3339 UTC.
    pub started: String,
    /// When it ended, if it has.
    pub ended: Option<String>,
    /// What ended it: `watchdog_reclaim`, `stall_redrive`,
    /// `drift_correction`, `capacity_change`, `load_fell`,
    /// `store_recovered`, `watchdog_resumed`, `rejoined`, `recovered`,
    /// `restart`, `shutdown`.
    pub repaired_by: Option<String>,
    /// One sentence for people.
    pub summary: String,
    /// How long it lasted (so far), in milliseconds.
    pub duration_ms: u64,
}

/// One day of the uptime bars.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UptimeDay {
    /// The day, `YYYY-MM-DD` (UTC).
    pub date: String,
    /// Share of the day (of the part the server has records for) spent
    /// healthy or saturated; `None` before the database existed.
    pub up: Option<f64>,
    /// Incidents that touched the day (saturation included).
    pub incidents: u32,
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A duration as people say it: "under 0.1 s", "0.5 s", "6 s", "3 min",
/// "2 h 5 min".
pub fn spoken(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0..=99 => "under 0.1 s".to_owned(),
        100..=9_949 => format!("{:.1} s", ms as f64 / 1000.0).replace(".0 s", " s"),
        9_950..=119_999 => format!("{} s", (ms + 500) / 1000),
        120_000..=7_199_999 => format!("{} min", (ms + 30_000) / 60_000),
        _ => {
            let min = (ms + 30_000) / 60_000;
            format!("{} h {} min", min / 60, min % 60)
        }
    }
}

/// What ended an incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// The watchdog reclaimed this many leases.
    Reclaimed(u64),
    /// This many stalls were re-driven (lost wake-ups).
    Redriven(u64),
    /// The in-use count's drift was corrected this many times.
    DriftCorrected(u64),
    /// An operator changed the capacity.
    CapacityChanged {
        /// Before.
        from: u32,
        /// After.
        to: u32,
    },
    /// Connections left of their own accord.
    LoadFell,
    /// The watchdog ticks again.
    WatchdogResumed,
    /// The store commits again.
    StoreRecovered,
    /// The node reaches the rest of the cluster again.
    Rejoined,
    /// It passed without a recorded repair.
    Recovered,
    /// The server restarted (it was open at a crash).
    Restart,
    /// The server shut down while it was open.
    Shutdown,
}

impl Repair {
    /// The `repaired_by` code.
    pub fn code(&self) -> &'static str {
        match self {
            Repair::Reclaimed(_) => "watchdog_reclaim",
            Repair::Redriven(_) => "stall_redrive",
            Repair::DriftCorrected(_) => "drift_correction",
            Repair::CapacityChanged { .. } => "capacity_change",
            Repair::LoadFell => "load_fell",
            Repair::WatchdogResumed => "watchdog_resumed",
            Repair::StoreRecovered => "store_recovered",
            Repair::Rejoined => "rejoined",
            Repair::Recovered => "recovered",
            Repair::Restart => "restart",
            Repair::Shutdown => "shutdown",
        }
    }

    /// How the sentence ends.
    fn clause(&self) -> String {
        match self {
            Repair::Reclaimed(n) => format!(
                "{n} connection{} had gone silent, and the safeguard reclaimed {}",
                if *n == 1 { "" } else { "s" },
                if *n == 1 { "it" } else { "them" }
            ),
            Repair::Redriven(_) => {
                "the safeguard had lost track of waiting connections and woke them again".into()
            }
            Repair::DriftCorrected(_) => {
                "the safeguard's count of connections had drifted, and it corrected it".into()
            }
            Repair::CapacityChanged { from, to } => {
                format!("an operator changed the capacity from {from} to {to}")
            }
            Repair::LoadFell => "connections left and room opened again".into(),
            Repair::WatchdogResumed => "the safeguard's monitor is running again".into(),
            Repair::StoreRecovered => "saving works again".into(),
            Repair::Rejoined => {
                "it rejoined the cluster, and members caught up on what they missed".into()
            }
            Repair::Recovered => "it passed on its own".into(),
            Repair::Restart => "it ended when the server restarted".into(),
            Repair::Shutdown => "the server was shut down".into(),
        }
    }
}

/// The incident's sentence: what people saw, for how long, and (once it is
/// over) why it ended. `detail` is the store's error, for store incidents.
pub fn summary(
    limiter: &str,
    cause: &str,
    lasted: Duration,
    repair: Option<&Repair>,
    detail: Option<&str>,
) -> String {
    let d = spoken(lasted);
    let who = if limiter == "status" {
        "Requests to the status page"
    } else {
        "New connections"
    };
    let (done, ongoing) = match cause {
        "leaking" => (
            format!("{who} were refused for {d}"),
            format!("{who} are being refused: connections have gone silent while holding their places, and the safeguard is reclaiming them"),
        ),
        "stalled" => (
            format!("{who} waited for {d} although places were free"),
            format!("{who} are waiting although places are free: the safeguard lost track of them and is waking them again"),
        ),
        "watchdog_silent" => (
            format!("The safeguard's monitor was silent for {d}"),
            "The safeguard's monitor has gone silent; nothing is repairing the connection limit until it is back".to_owned(),
        ),
        "saturated" => (
            format!("The server was full for {d}: new connections were turned away"),
            "The server is full: new connections are being turned away until others leave".to_owned(),
        ),
        "store" => (
            format!(
                "Messages could not be saved for {d}{}: sends were refused rather than lost",
                detail.map(|e| format!(" ({e})")).unwrap_or_default()
            ),
            format!(
                "Messages cannot be saved right now{}: sends are refused rather than lost",
                detail.map(|e| format!(" ({e})")).unwrap_or_default()
            ),
        ),
        "cluster" => (
            format!("This server was cut off from the rest of the cluster for {d}: it kept serving within its share of connections, and messages between servers arrived late"),
            "This server is cut off from the rest of the cluster: it keeps serving within its last share of connections, and messages between servers arrive late".to_owned(),
        ),
        other => (
            format!("The {limiter} limiter was {other} for {d}"),
            format!("The {limiter} limiter is {other}"),
        ),
    };
    match repair {
        None => format!("{ongoing}."),
        Some(r) => format!("{done}; {}.", r.clause()),
    }
}

/// The limiter counters a repair is read from.
#[derive(Debug, Clone, Copy)]
struct Counters {
    reclaimed: u64,
    redriven: u64,
    drift_corrected: u64,
    capacity: u32,
}

impl From<&Snapshot> for Counters {
    fn from(s: &Snapshot) -> Self {
        Counters {
            reclaimed: s.reclaimed_total,
            redriven: s.repairs.stalls,
            drift_corrected: s.repairs.drift,
            capacity: s.capacity,
        }
    }
}

/// What repaired an incident of `cause`, from the counters at its start
/// and at its end.
fn repair_between(cause: &str, before: Counters, after: Counters) -> Repair {
    let reclaimed = after.reclaimed.saturating_sub(before.reclaimed);
    let redriven = after.redriven.saturating_sub(before.redriven);
    let corrected = after.drift_corrected.saturating_sub(before.drift_corrected);
    match cause {
        _ if reclaimed > 0 => Repair::Reclaimed(reclaimed),
        // A silent watchdog's incident ends when it ticks again, whatever
        // its first ticks then repair.
        "watchdog_silent" => Repair::WatchdogResumed,
        _ if redriven > 0 => Repair::Redriven(redriven),
        _ if corrected > 0 => Repair::DriftCorrected(corrected),
        _ if before.capacity != after.capacity => Repair::CapacityChanged {
            from: before.capacity,
            to: after.capacity,
        },
        _ => Repair::Recovered,
    }
}

fn cause_name(c: Cause) -> &'static str {
    match c {
        Cause::Stalled => "stalled",
        Cause::Leaking => "leaking",
        Cause::WatchdogSilent => "watchdog_silent",
    }
}

/// How long an episode must last before it is an incident, and whether a
/// shorter one still is when it ended with leases reclaimed.
#[derive(Debug, Clone, Copy)]
pub struct Notice {
    /// The episode must last this long.
    pub after: Duration,
    /// A shorter one counts if the watchdog reclaimed leases.
    pub unless_reclaimed: bool,
}

impl Notice {
    const AT_ONCE: Notice = Notice {
        after: Duration::ZERO,
        unless_reclaimed: false,
    };
}

/// An incident the recorder has open (or, within its notice period, is
/// watching).
#[derive(Debug, Clone)]
struct Open {
    /// Its row, once written.
    id: Option<i64>,
    limiter: &'static str,
    cause: &'static str,
    started_ms: i64,
    started: Instant,
    at_start: Option<Counters>,
    detail: Option<String>,
    notice: Notice,
}

impl Open {
    fn new(limiter: &'static str, cause: &'static str, notice: Notice) -> Open {
        Open {
            id: None,
            limiter,
            cause,
            started_ms: unix_ms(),
            started: Instant::now(),
            at_start: None,
            detail: None,
            notice,
        }
    }

    /// Whether it has lasted its notice period.
    fn noticed(&self) -> bool {
        self.started.elapsed() >= self.notice.after
    }

    fn incident(&self, repair: Option<&Repair>, ended_ms: Option<i64>) -> Incident {
        let lasted = self.started.elapsed();
        Incident {
            id: self.id.unwrap_or(0),
            limiter: self.limiter.to_owned(),
            cause: self.cause.to_owned(),
            started: rfc3339(self.started_ms),
            ended: ended_ms.map(rfc3339),
            repaired_by: repair.map(|r| r.code().to_owned()),
            summary: summary(
                self.limiter,
                self.cause,
                lasted,
                repair,
                self.detail.as_deref(),
            ),
            duration_ms: lasted.as_millis() as u64,
        }
    }
}

/// The incident log: the database table, and the incidents open right now.
#[derive(Debug)]
pub struct Incidents {
    store: Arc<Store>,
    max_rows: i64,
    open: Mutex<HashMap<&'static str, Open>>,
}

impl Incidents {
    /// The log over `store`, keeping at most `max_rows` incidents.
    pub fn new(store: Arc<Store>, max_rows: i64) -> Incidents {
        Incidents {
            store,
            max_rows: max_rows.max(1),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn open_map(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes incidents left open by a server that stopped without closing
    /// them (a crash, `kill -9`): they ended with the restart.
    pub async fn close_left_open(&self) -> Result<i64, StoreError> {
        let now = unix_ms();
        let open = self.store.open_incidents().await?;
        for row in &open {
            let lasted = Duration::from_millis(now.saturating_sub(row.started_ms).max(0) as u64);
            let text = summary(
                &row.limiter,
                &row.cause,
                lasted,
                Some(&Repair::Restart),
                None,
            );
            self.store
                .end_incident(row.id, now, Repair::Restart.code().to_owned(), text)
                .await?;
        }
        Ok(open.len() as i64)
    }

    /// Writes a newly opened incident (and prunes the table).
    async fn write_open(&self, open: &Open) -> Result<i64, StoreError> {
        let inc = open.incident(None, None);
        let keep_from = unix_ms() - KEEP.as_millis() as i64;
        let row = IncidentRow {
            id: 0,
            limiter: inc.limiter,
            cause: inc.cause,
            started_ms: open.started_ms,
            ended_ms: None,
            repaired_by: None,
            summary: inc.summary,
        };
        self.store
            .insert_incident(row, keep_from, self.max_rows)
            .await
    }

    /// Writes a closed incident: an update of its row, or the whole row
    /// if it was never written (a store incident).
    async fn write_closed(&self, open: &Open, repair: &Repair) -> Result<i64, StoreError> {
        let ended_ms = unix_ms();
        let inc = open.incident(Some(repair), Some(ended_ms));
        let code = repair.code().to_owned();
        match open.id {
            Some(id) => {
                self.store
                    .end_incident(id, ended_ms, code, inc.summary)
                    .await?;
                Ok(id)
            }
            None => {
                let row = IncidentRow {
                    id: 0,
                    limiter: inc.limiter,
                    cause: inc.cause,
                    started_ms: open.started_ms,
                    ended_ms: Some(ended_ms),
                    repaired_by: Some(code),
                    summary: inc.summary,
                };
                let keep_from = ended_ms - KEEP.as_millis() as i64;
                self.store
                    .insert_incident(row, keep_from, self.max_rows)
                    .await
            }
        }
    }

    async fn open(&self, open: Open) {
        let limiter = open.limiter;
        if self.open_map().contains_key(limiter) {
            return;
        }
        self.open_map().insert(limiter, open);
        self.write_noticed().await;
    }

    /// Writes the open episodes whose notice period has passed and that
    /// are not written yet; returns when the next one will be due.
    async fn write_noticed(&self) -> Option<Instant> {
        let due: Vec<Open> = self
            .open_map()
            .values()
            .filter(|o| o.id.is_none() && o.noticed() && o.cause != "store")
            .cloned()
            .collect();
        for open in due {
            tracing::warn!(
                limiter = open.limiter,
                cause = open.cause,
                "incident opened"
            );
            match self.write_open(&open).await {
                Ok(id) => {
                    if let Some(o) = self.open_map().get_mut(open.limiter) {
                        o.id = Some(id);
                    }
                }
                Err(e) => tracing::warn!("cannot record the incident: {e}"),
            }
        }
        self.open_map()
            .values()
            .filter(|o| o.id.is_none() && !o.noticed())
            .map(|o| o.started + o.notice.after)
            .min()
    }

    /// Closes `limiter`'s open episode, if any: an incident if it lasted
    /// its notice period (or its notice lets a reclaim count), forgotten
    /// otherwise.
    async fn close(&self, limiter: &str, repair: impl FnOnce(&Open) -> Repair) {
        let Some(open) = self.open_map().remove(limiter) else {
            return;
        };
        let repair = repair(&open);
        let counts = open.noticed()
            || (open.notice.unless_reclaimed && matches!(repair, Repair::Reclaimed(_)));
        if !counts {
            return;
        }
        tracing::info!(
            limiter = open.limiter,
            cause = open.cause,
            repaired_by = repair.code(),
            lasted_ms = open.started.elapsed().as_millis() as u64,
            "incident closed"
        );
        if let Err(e) = self.write_closed(&open, &repair).await {
            tracing::warn!("cannot record the end of the incident: {e}");
        }
    }

    /// The cause of `limiter`'s open episode.
    fn open_cause(&self, limiter: &str) -> Option<&'static str> {
        self.open_map().get(limiter).map(|o| o.cause)
    }

    /// The newest `limit` incidents, newest first, with open ones not yet
    /// written (a failing store's own) in front.
    pub async fn recent(&self, limit: u32) -> Result<Vec<Incident>, StoreError> {
        let now = unix_ms();
        let mut list: Vec<Incident> = self
            .open_map()
            .values()
            .filter(|o| o.id.is_none() && o.noticed())
            .map(|o| o.incident(None, None))
            .collect();
        let rows = self.store.recent_incidents(limit).await?;
        list.extend(rows.into_iter().map(|r| from_row(r, now)));
        list.truncate(limit as usize);
        Ok(list)
    }

    /// The last `days` days, oldest first: the share of each day spent
    /// healthy or saturated, from the incidents that were not saturation.
    pub async fn uptime(&self, days: u32) -> Result<Vec<UptimeDay>, StoreError> {
        let now = unix_ms();
        let unsaved: Vec<(i64, Option<i64>, bool)> = self
            .open_map()
            .values()
            .filter(|o| o.id.is_none() && o.noticed())
            .map(|o| (o.started_ms, None, o.cause != "saturated"))
            .collect();
        let today = now.div_euclid(DAY_MS) * DAY_MS;
        let first = today - i64::from(days.max(1) - 1) * DAY_MS;
        let (created, rows) = self.store.incident_spans(first).await?;
        Ok(uptime_days(created, &rows, days, now, &unsaved))
    }
}

fn from_row(r: IncidentRow, now: i64) -> Incident {
    Incident {
        id: r.id,
        limiter: r.limiter,
        cause: r.cause,
        started: rfc3339(r.started_ms),
        ended: r.ended_ms.map(rfc3339),
        repaired_by: r.repaired_by,
        summary: r.summary,
        duration_ms: r
            .ended_ms
            .unwrap_or(now)
            .saturating_sub(r.started_ms)
            .max(0) as u64,
    }
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// Uptime per UTC day; `extra` are incidents not in the table yet
/// (start, end, whether they count as down).
fn uptime_days(
    created: Option<i64>,
    rows: &[IncidentRow],
    days: u32,
    now: i64,
    extra: &[(i64, Option<i64>, bool)],
) -> Vec<UptimeDay> {
    let created = created.unwrap_or(now);
    let today = now.div_euclid(DAY_MS) * DAY_MS;
    let first = today - i64::from(days.max(1) - 1) * DAY_MS;
    let mut spans: Vec<(i64, i64, bool)> = rows
        .iter()
        .map(|r| {
            (
                r.started_ms,
                r.ended_ms.unwrap_or(now),
                r.cause != "saturated",
            )
        })
        .collect();
    spans.extend(
        extra
            .iter()
            .map(|(s, e, down)| (*s, e.unwrap_or(now), *down)),
    );
    let mut out = Vec::with_capacity(days as usize);
    for d in 0..i64::from(days.max(1)) {
        let day_start = first + d * DAY_MS;
        let day_end = (day_start + DAY_MS).min(now);
        let from = day_start.max(created);
        let date = rfc3339(day_start).get(..10).unwrap_or_default().to_owned();
        let touching = spans
            .iter()
            .filter(|(s, e, _)| *s < day_end && *e >= day_start);
        let incidents = touching.clone().count() as u32;
        if from >= day_end {
            out.push(UptimeDay {
                date,
                up: None,
                incidents,
            });
            continue;
        }
        // Down time is the union of the day's "down" spans, clipped.
        let mut down: Vec<(i64, i64)> = touching
            .filter(|(_, _, is_down)| *is_down)
            .map(|(s, e, _)| ((*s).max(from), (*e).min(day_end)))
            .filter(|(s, e)| s < e)
            .collect();
        down.sort_unstable();
        let mut total = 0;
        let mut reach = from;
        for (s, e) in down {
            let s = s.max(reach);
            if e > s {
                total += e - s;
                reach = e;
            }
        }
        let span = (day_end - from) as f64;
        out.push(UptimeDay {
            date,
            up: Some(1.0 - total as f64 / span),
            incidents,
        });
    }
    out
}

/// The recorder: follows the limiters' transitions and the store's health
/// until the server stops, then closes what is open.
pub async fn run(app: Arc<App>, saturated_after: Duration) {
    let incidents = &app.incidents;
    match incidents.close_left_open().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            closed = n,
            "incidents open at the last stop were closed as ended by the restart"
        ),
        Err(e) => tracing::warn!("cannot close incidents left open: {e}"),
    }
    let notices = Notices { saturated_after };
    // Each limiter's counters as of its previous transition: the baseline a
    // repair is measured from. Read at the transition itself they could
    // already include the repair (the watchdog may re-drive a stall in the
    // same tick that shows it).
    let mut baseline: HashMap<&'static str, Counters> = HashMap::new();
    let mut chat = app.chat_limiter.health().changes();
    let mut status = app.status_limiter.health().changes();
    let mut store = app.chat.store.health().subscribe();
    let stopping = app.reached(Phase::Stopping);
    tokio::pin!(stopping);
    // Start from the present state: a change before the streams were made
    // is not in them.
    for (name, limiter) in [("chat", &app.chat_limiter), ("status", &app.status_limiter)] {
        let snap = limiter.health().snapshot();
        let now = Counters::from(&snap);
        on_state(incidents, notices, name, snap.state, now, now).await;
        baseline.insert(name, now);
    }
    if !*store.borrow_and_update() {
        on_store(incidents, &app, false).await;
    }
    // Being cut off from the cluster has no change stream of its own:
    // it is looked at every CLUSTER_POLL (only in cluster mode).
    let mut cluster_tick = tokio::time::interval(CLUSTER_POLL);
    cluster_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due = incidents.write_noticed().await;
    loop {
        tokio::select! {
            Some(t) = chat.next() => {
                let now = Counters::from(&app.chat_limiter.health().snapshot());
                let before = baseline.insert("chat", now).unwrap_or(now);
                on_state(incidents, notices, "chat", t.to, before, now).await;
            }
            Some(t) = status.next() => {
                let now = Counters::from(&app.status_limiter.health().snapshot());
                let before = baseline.insert("status", now).unwrap_or(now);
                on_state(incidents, notices, "status", t.to, before, now).await;
            }
            Ok(()) = store.changed() => {
                let ok = *store.borrow_and_update();
                on_store(incidents, &app, ok).await;
            }
            _ = cluster_tick.tick(), if app.cluster.is_some() => {
                if let Some(c) = &app.cluster {
                    on_cluster(incidents, notices, c.degraded()).await;
                }
            }
            () = sleep_until_opt(due) => {}
            () = &mut stopping => break,
        }
        due = incidents.write_noticed().await;
    }
    for name in ["chat", "status", "store", "cluster"] {
        incidents.close(name, |_| Repair::Shutdown).await;
    }
}

/// The notice periods by cause.
#[derive(Debug, Clone, Copy)]
struct Notices {
    saturated_after: Duration,
}

impl Notices {
    fn of(self, cause: &str) -> Notice {
        match cause {
            "leaking" => Notice {
                after: LEAK_NOTICE,
                unless_reclaimed: true,
            },
            "saturated" => Notice {
                after: self.saturated_after,
                unless_reclaimed: false,
            },
            "cluster" => Notice {
                after: CLUSTER_NOTICE,
                unless_reclaimed: false,
            },
            _ => Notice::AT_ONCE,
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Follows one transition of `limiter` to `state`; `before` are its
/// counters at its previous transition, `now` at this one.
async fn on_state(
    incidents: &Incidents,
    notices: Notices,
    limiter: &'static str,
    state: HealthState,
    before: Counters,
    now: Counters,
) {
    let cause = match state {
        HealthState::Degraded(cause) => cause_name(cause),
        // Only the chat limiter's saturation is worth telling people.
        HealthState::Saturated if limiter == "chat" => "saturated",
        HealthState::Healthy | HealthState::Saturated => {
            incidents
                .close(limiter, |o| match (o.cause, o.at_start) {
                    ("saturated", _) => Repair::LoadFell,
                    (_, Some(before)) => repair_between(o.cause, before, now),
                    _ => Repair::Recovered,
                })
                .await;
            return;
        }
        // Draining and closing are the server's own doing, not incidents.
        HealthState::Draining | HealthState::Closed => return,
    };
    match incidents.open_cause(limiter) {
        Some(open) if open == cause => return,
        // Another cause now: the old episode ends here.
        Some(_) => {
            incidents
                .close(limiter, |o| match (o.cause, o.at_start) {
                    ("saturated", _) => Repair::Recovered,
                    (_, Some(before)) => repair_between(o.cause, before, now),
                    _ => Repair::Recovered,
                })
                .await
        }
        None => {}
    }
    let mut open = Open::new(limiter, cause, notices.of(cause));
    open.at_start = Some(before);
    incidents.open(open).await;
}

/// Follows whether the node is cut off from the cluster.
async fn on_cluster(incidents: &Incidents, notices: Notices, cut_off: bool) {
    match (cut_off, incidents.open_cause("cluster").is_some()) {
        (true, false) => {
            let open = Open::new("cluster", "cluster", notices.of("cluster"));
            incidents.open(open).await;
        }
        (false, true) => incidents.close("cluster", |_| Repair::Rejoined).await,
        _ => {}
    }
}

async fn on_store(incidents: &Incidents, app: &App, ok: bool) {
    if ok {
        incidents.close("store", |_| Repair::StoreRecovered).await;
    } else {
        let mut open = Open::new("store", "store", Notice::AT_ONCE);
        open.detail = app.chat.store.health().last_error();
        incidents.open(open).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_people_say_them() {
        assert_eq!(spoken(Duration::from_millis(20)), "under 0.1 s");
        assert_eq!(spoken(Duration::from_millis(500)), "0.5 s");
        assert_eq!(spoken(Duration::from_millis(6000)), "6 s");
        assert_eq!(spoken(Duration::from_secs(95)), "95 s");
        assert_eq!(spoken(Duration::from_secs(180)), "3 min");
        assert_eq!(spoken(Duration::from_secs(2 * 3600 + 300)), "2 h 5 min");
    }

    #[test]
    fn sentences() {
        let s = summary(
            "chat",
            "leaking",
            Duration::from_secs(6),
            Some(&Repair::Reclaimed(20)),
            None,
        );
        assert_eq!(s, "New connections were refused for 6 s; 20 connections had gone silent, and the safeguard reclaimed them.");
        let s = summary(
            "chat",
            "stalled",
            Duration::from_millis(500),
            Some(&Repair::Redriven(1)),
            None,
        );
        assert!(
            s.starts_with("New connections waited for 0.5 s although places were free;"),
            "{s}"
        );
        let s = summary(
            "cluster",
            "cluster",
            Duration::from_secs(10),
            Some(&Repair::Rejoined),
            None,
        );
        assert!(
            s.starts_with("This server was cut off from the rest of the cluster for 10 s:"),
            "{s}"
        );
        let s = summary("chat", "leaking", Duration::ZERO, None, None);
        assert!(s.starts_with("New connections are being refused"), "{s}");
    }

    #[test]
    fn repairs_from_counters() {
        let at = |reclaimed, redriven, drift_corrected, capacity| Counters {
            reclaimed,
            redriven,
            drift_corrected,
            capacity,
        };
        assert_eq!(
            repair_between("leaking", at(1, 0, 0, 10), at(21, 0, 0, 10)),
            Repair::Reclaimed(20)
        );
        assert_eq!(
            repair_between("stalled", at(0, 2, 0, 10), at(0, 3, 0, 10)),
            Repair::Redriven(1)
        );
        assert_eq!(
            repair_between("leaking", at(0, 0, 2, 10), at(0, 0, 3, 10)),
            Repair::DriftCorrected(1)
        );
        // Each repair is named by the counter that moved, whatever the
        // incident's cause: a stall re-driven during a leak, a drift
        // corrected during a stall.
        assert_eq!(
            repair_between("leaking", at(0, 2, 0, 10), at(0, 3, 0, 10)),
            Repair::Redriven(1)
        );
        assert_eq!(
            repair_between("stalled", at(0, 0, 0, 10), at(0, 0, 4, 10)),
            Repair::DriftCorrected(4)
        );
        assert_eq!(
            repair_between("watchdog_silent", at(0, 2, 0, 10), at(0, 3, 0, 10)),
            Repair::WatchdogResumed
        );
        assert_eq!(
            repair_between("leaking", at(0, 0, 0, 10), at(0, 0, 0, 20)),
            Repair::CapacityChanged { from: 10, to: 20 }
        );
        assert_eq!(
            repair_between("leaking", at(0, 0, 0, 10), at(0, 0, 0, 10)),
            Repair::Recovered
        );
    }
}
