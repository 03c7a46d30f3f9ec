//! The status listener: `/health` parsing and polling, admin requests.
//!
//! The monitor polls `/health` on one keep-alive connection at a fixed
//! period and keeps every answer, so a scenario can ask afterwards "what was
//! the highest `in_use`" or "when did the state first change", and wait for
//! a condition while it runs.

use super::http::{self, HttpConn};
use super::{ClientError, Connector, Target};
use crate::metrics::Timeline;
use admit::Snapshot;
use hyper::Method;
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Counters that move when the watchdog repairs something: revocations,
/// reclaims and repairs.
pub fn repairs(snap: &Snapshot) -> u64 {
    snap.revoked_total + snap.reclaimed_total + snap.repaired_total
}

/// Both limiters.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Limiters {
    /// The chat connection limiter, as the server's `admit` reports it.
    pub chat: Snapshot,
    /// The status listener's own limiter.
    pub status: Snapshot,
}

/// The `/health` body.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Health {
    /// `healthy`, `saturated`, `degraded` or `draining`.
    pub status: String,
    /// The limiters' snapshots.
    pub limiters: Limiters,
    /// Seconds since start.
    pub uptime_s: f64,
}

impl Health {
    /// Parses a `/health` body.
    pub fn parse(body: &[u8]) -> Result<Self, ClientError> {
        serde_json::from_slice(body)
            .map_err(|e| ClientError::Protocol(format!("bad /health body: {e}")))
    }

    /// Whether the server reports a problem it is (or should be) repairing.
    pub fn is_degraded(&self) -> bool {
        self.status == "degraded"
            || matches!(self.limiters.chat.state, admit::HealthState::Degraded(_))
    }
}

/// One poll of `/health`.
#[derive(Debug, Clone)]
pub struct HealthSample {
    /// When the answer arrived.
    pub at: Instant,
    /// HTTP status (200 or 503 by contract).
    pub http_status: u16,
    /// The parsed body.
    pub health: Health,
}

#[derive(Debug, Default)]
struct Log {
    samples: Vec<HealthSample>,
    errors: u64,
    cap_violations: u64,
    max_in_use: u64,
    capacity_at_max: u64,
}

/// Polls `/health` in the background and remembers every answer.
#[derive(Debug, Clone)]
pub struct HealthMonitor {
    log: Arc<Mutex<Log>>,
    latest: watch::Receiver<Option<HealthSample>>,
}

/// A summary of what the monitor saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HealthSummary {
    /// Polls answered.
    pub polls: u64,
    /// Polls that failed (no answer, bad body).
    pub poll_errors: u64,
    /// Highest chat `in_use` seen.
    pub max_in_use: u64,
    /// Chat capacity at the time of that highest `in_use`.
    pub capacity_at_max: u64,
    /// Polls where chat `in_use` exceeded chat `capacity`.
    pub cap_violations: u64,
    /// Each change of `status`, with its time in seconds since the start.
    pub transitions: Vec<(f64, String)>,
}

impl HealthMonitor {
    /// Starts polling `target.status` every `period` until `stop`.
    /// `gauge` is sampled into the time line alongside `in_use`.
    pub fn start(
        connector: Arc<Connector>,
        target: Target,
        period: Duration,
        timeline: Arc<Timeline>,
        stop: CancellationToken,
    ) -> Self {
        let (tx, rx) = watch::channel(None);
        let log = Arc::new(Mutex::new(Log::default()));
        let monitor = HealthMonitor {
            log: log.clone(),
            latest: rx,
        };
        tokio::spawn(async move {
            let mut conn: Option<HttpConn> = None;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let res = poll_once(
                    &connector,
                    &target,
                    &mut conn,
                    period.max(Duration::from_secs(2)),
                )
                .await;
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                match res {
                    Ok(sample) => {
                        let chat = &sample.health.limiters.chat;
                        if chat.in_use > chat.capacity && chat.capacity > 0 {
                            log.cap_violations += 1;
                        }
                        if u64::from(chat.in_use) >= log.max_in_use {
                            log.max_in_use = chat.in_use.into();
                            log.capacity_at_max = chat.capacity.into();
                        }
                        timeline.gauges(Some(chat.in_use.into()), connector.open_now());
                        log.samples.push(sample.clone());
                        drop(log);
                        let _ = tx.send(Some(sample));
                    }
                    Err(_) => {
                        log.errors += 1;
                        timeline.gauges(None, connector.open_now());
                    }
                }
            }
        });
        monitor
    }

    /// The latest answer, if any.
    pub fn latest(&self) -> Option<HealthSample> {
        self.latest.borrow().clone()
    }

    /// Waits until a sample satisfies `pred`, or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&HealthSample) -> bool,
    ) -> Option<HealthSample> {
        let mut rx = self.latest.clone();
        let fut = async {
            loop {
                if let Some(s) = rx.borrow_and_update().as_ref() {
                    if pred(s) {
                        return Some(s.clone());
                    }
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, fut).await.ok().flatten()
    }

    /// The first sample at or after `since` that satisfies `pred`.
    pub fn first_after(
        &self,
        since: Instant,
        mut pred: impl FnMut(&HealthSample) -> bool,
    ) -> Option<HealthSample> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.samples
            .iter()
            .find(|s| s.at >= since && pred(s))
            .cloned()
    }

    /// The last sample before `at`.
    pub fn last_before(&self, at: Instant) -> Option<HealthSample> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.samples.iter().rev().find(|s| s.at < at).cloned()
    }

    /// What the monitor saw, with times relative to `start`.
    pub fn summary(&self, start: Instant) -> HealthSummary {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let mut transitions: Vec<(f64, String)> = Vec::new();
        for s in &log.samples {
            if transitions.last().map(|(_, st)| st) != Some(&s.health.status) {
                transitions.push((
                    s.at.saturating_duration_since(start).as_secs_f64(),
                    s.health.status.clone(),
                ));
            }
        }
        HealthSummary {
            polls: log.samples.len() as u64,
            poll_errors: log.errors,
            max_in_use: log.max_in_use,
            capacity_at_max: log.capacity_at_max,
            cap_violations: log.cap_violations,
            transitions,
        }
    }
}

async fn poll_once(
    connector: &Connector,
    target: &Target,
    conn: &mut Option<HttpConn>,
    timeout: Duration,
) -> Result<HealthSample, ClientError> {
    if !conn.as_ref().is_some_and(HttpConn::is_open) {
        *conn = Some(HttpConn::open(connector, target.status, timeout).await?);
    }
    let Some(c) = conn.as_mut() else {
        return Err(ClientError::Closed(None));
    };
    let res = c.send(Method::GET, "/health", None, None, false).await;
    let resp = match res {
        Ok(r) => r,
        Err(e) => {
            *conn = None;
            return Err(e);
        }
    };
    Ok(HealthSample {
        at: Instant::now(),
        http_status: resp.status,
        health: Health::parse(&resp.body)?,
    })
}

/// Fetches `/health` once.
pub async fn health_once(
    connector: &Connector,
    target: &Target,
    timeout: Duration,
) -> Result<Health, ClientError> {
    let resp = http::request(
        connector,
        target.status,
        Method::GET,
        "/health",
        None,
        None,
        timeout,
    )
    .await?;
    Health::parse(&resp.body)
}

/// Posts a JSON body to an admin endpoint; errors unless 2xx.
pub async fn admin_post(
    connector: &Connector,
    target: &Target,
    path: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    let token = target.admin_token.as_deref().ok_or_else(|| {
        ClientError::Protocol("this scenario needs --admin-token (or a spawned server)".into())
    })?;
    let resp = http::request(
        connector,
        target.status,
        Method::POST,
        path,
        Some(token),
        Some(body),
        timeout,
    )
    .await?;
    if !(200..300).contains(&resp.status) {
        return Err(ClientError::Status {
            status: resp.status,
            body: String::from_utf8_lossy(&resp.body).into_owned(),
        });
    }
    Ok(resp.json().unwrap_or(serde_json::Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_contract_health_body() {
        let body = br#"{"status":"saturated","limiters":{
            "chat":{"capacity":50,"in_use":50,"waiting":0,"admitted_total":90,
                    "rejected_total":{"full":7,"per_ip":1},"revoked_total":0,
                    "reclaimed_total":2,"repaired_total":1,"oldest_lease_ms":30,
                    "state":"saturated","extra":true},
            "status":{"capacity":16,"in_use":1}},
            "watchdog":{"alive":true,"last_tick_ms":5},"uptime_s":12}"#;
        let h = Health::parse(body).unwrap();
        assert_eq!(h.status, "saturated");
        assert_eq!(h.limiters.chat.capacity, 50);
        assert_eq!(h.limiters.chat.rejected_sum(), 8);
        assert_eq!(repairs(&h.limiters.chat), 3);
        assert_eq!(h.limiters.chat.state, admit::HealthState::Saturated);
        assert_eq!(h.limiters.status.in_use, 1);
        assert!(!h.is_degraded());
        let d = Health::parse(br#"{"status":"degraded"}"#).unwrap();
        assert!(d.is_degraded());
        assert!(Health::parse(b"<html>").is_err());
    }
}
