//! The status listener: health, metrics, the status page, a live feed and
//! the admin endpoints.
//!
//! It runs on its own port with its own small limiter, so it keeps
//! answering when the chat listeners are full — exactly when an operator
//! needs it most.
//!
//! * `GET /health` — 200 while chat admits (healthy or saturated), 503
//!   otherwise; the body is [`HealthReport`].
//! * `GET /metrics` — Prometheus text, rendered from fresh snapshots.
//! * `GET /status` — the human status page.
//! * `GET /events` — server-sent events: one `health` event carrying the
//!   `/health` JSON every 500 ms, for the status page's live view; at most
//!   [`MAX_EVENT_STREAMS`] at once (503 beyond), each holding a permit of
//!   its own `events` limiter for as long as it streams.
//! * `POST /admin/*` — with `Authorization: Bearer <admin token>`; 404 when
//!   the server has no admin token, 401 when the token is wrong.

use crate::api::{asset, bearer, harden, ApiError, JsonBody};
use crate::protocol::http::{decode_capacity, decode_fault, decode_revoke, Fault};
use crate::protocol::ProtoError;
use crate::{App, Phase};
use admit::{Cause, HealthState, Snapshot};
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const STATUS_HTML: &str = include_str!("../assets/status.html");
const STATUS_JS: &str = include_str!("../assets/status.js");
const STATUS_CSS: &str = include_str!("../assets/status.css");

/// Live `/events` streams at once.
pub const MAX_EVENT_STREAMS: u32 = 32;

/// How often `/events` pushes the health JSON.
pub const EVENTS_EVERY: Duration = Duration::from_millis(500);

/// The `/health` body.
#[derive(Debug, Serialize)]
pub struct HealthReport {
    /// `healthy`, `saturated`, `degraded` or `draining`.
    pub status: &'static str,
    /// Why it is degraded, if it is: the chat limiter's cause (`stalled`,
    /// `leaking`, `watchdog_silent`) or `store`.
    pub cause: Option<&'static str>,
    /// This node and the cluster it belongs to (`mode: single` without
    /// one).
    pub cluster: crate::cluster::ClusterReport,
    /// The database's health.
    pub store: StoreReport,
    /// Snapshots of the `chat` and `status` limiters.
    pub limiters: Limiters,
    /// The chat limiter's watchdog.
    pub watchdog: WatchdogReport,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Chat figures beyond the limiter's.
    pub chat: ChatReport,
}

/// The database's health: whether writes can be trusted to it now.
#[derive(Debug, Serialize)]
pub struct StoreReport {
    /// Whether the last batch committed and the file is the one opened.
    pub ok: bool,
    /// The last failure seen, if any.
    pub last_error: Option<String>,
}

/// The name `/health` gives a limiter's cause.
fn cause_name(cause: Cause) -> &'static str {
    match cause {
        Cause::Stalled => "stalled",
        Cause::Leaking => "leaking",
        Cause::WatchdogSilent => "watchdog_silent",
    }
}

/// The limiters' snapshots.
#[derive(Debug, Serialize)]
pub struct Limiters {
    /// The shared HTTP/WS + TCP chat limiter.
    pub chat: Snapshot,
    /// The status listener's own limiter.
    pub status: Snapshot,
    /// Password hashing (register, login).
    pub hashing: Snapshot,
    /// Live `/events` streams.
    pub events: Snapshot,
}

/// The watchdog's heartbeat.
#[derive(Debug, Serialize)]
pub struct WatchdogReport {
    /// Whether it ticked recently.
    pub alive: bool,
    /// Milliseconds since its last tick.
    pub last_tick_ms: u64,
}

/// Chat figures.
#[derive(Debug, Serialize)]
pub struct ChatReport {
    /// Messages committed since start.
    pub messages_total: u64,
    /// Room subscriptions held by connections.
    pub subscriptions: usize,
    /// Connections closed because their outbound queue overflowed.
    pub lagged_total: u64,
}

/// Builds the health report and its HTTP status.
pub fn health_report(app: &App) -> (StatusCode, HealthReport) {
    let chat = app.chat_limiter.health().snapshot();
    let status = app.status_limiter.health().snapshot();
    let draining = app.draining();
    let store = app.chat.store.health();
    let store = StoreReport {
        ok: store.ok(),
        last_error: store.last_error(),
    };
    let cluster = match &app.cluster {
        Some(c) => c.report(),
        None => crate::cluster::single_report(&app.node, chat.in_use, chat.capacity),
    };
    let cut_off = cluster.mode == "degraded";
    let (label, code) = match chat.state {
        _ if draining => ("draining", StatusCode::SERVICE_UNAVAILABLE),
        // A server that cannot store is not serving, whatever its limiter.
        _ if !store.ok => ("degraded", StatusCode::SERVICE_UNAVAILABLE),
        // Cut off from the cluster, a node still serves (within its last
        // fair share): degraded, but still worth sending clients to.
        _ if cut_off => ("degraded", StatusCode::OK),
        HealthState::Healthy => ("healthy", StatusCode::OK),
        HealthState::Saturated => ("saturated", StatusCode::OK),
        HealthState::Degraded(_) => ("degraded", StatusCode::SERVICE_UNAVAILABLE),
        HealthState::Draining | HealthState::Closed => {
            ("draining", StatusCode::SERVICE_UNAVAILABLE)
        }
    };
    let cause = match chat.state.cause() {
        _ if draining => None,
        Some(cause) => Some(cause_name(cause)),
        None if !store.ok => Some("store"),
        None if cut_off => Some("cluster"),
        None => None,
    };
    let report = HealthReport {
        status: label,
        cause,
        cluster,
        store,
        watchdog: WatchdogReport {
            alive: chat.watchdog.alive,
            last_tick_ms: chat.watchdog.last_tick_ms,
        },
        uptime_s: app.started.elapsed().as_secs(),
        chat: ChatReport {
            messages_total: app.chat.messages_total.load(Ordering::Relaxed),
            subscriptions: app.chat.hub.subscriptions(),
            lagged_total: app.chat.hub.lagged_total(),
        },
        limiters: Limiters {
            chat,
            status,
            hashing: app.chat.hashing.health().snapshot(),
            events: app.events_limiter.health().snapshot(),
        },
    };
    (code, report)
}

/// The status router.
pub fn router(app: Arc<App>) -> Router {
    harden(
        Router::new()
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .route("/status", get(|| async { Html(STATUS_HTML) }))
            .route(
                "/status.js",
                get(|| async { asset("text/javascript; charset=utf-8", STATUS_JS) }),
            )
            .route(
                "/status.css",
                get(|| async { asset("text/css; charset=utf-8", STATUS_CSS) }),
            )
            .route("/events", get(events))
            .route("/incidents", get(incidents))
            .route("/uptime", get(uptime))
            .route("/admin/capacity", post(set_capacity))
            .route("/admin/drain", post(drain))
            .route("/admin/revoke", post(revoke))
            .route("/admin/faults", post(faults)),
    )
    .with_state(app)
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let (code, report) = health_report(&app);
    (code, Json(report)).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let limiters = [
        app.chat_limiter.health(),
        app.status_limiter.health(),
        app.chat.hashing.health(),
        app.events_limiter.health(),
    ];
    let snapshots = limiters.each_ref().map(|h| h.snapshot());
    let store_ok = app.chat.store.health().ok();
    // The recorder is this server's own, not the process-wide one, so
    // several servers in one process (as in the tests) don't mix figures.
    metrics::with_local_recorder(&app.recorder, || {
        for (h, snap) in limiters.iter().zip(&snapshots) {
            h.publish_metrics(snap);
        }
        metrics::gauge!("chat_store_ok").set(if store_ok { 1.0 } else { 0.0 });
        metrics::counter!("chat_messages_total")
            .absolute(app.chat.messages_total.load(Ordering::Relaxed));
        metrics::counter!("chat_lagged_total").absolute(app.chat.hub.lagged_total());
        metrics::gauge!("chat_subscriptions").set(app.chat.hub.subscriptions() as f64);
        metrics::gauge!("chat_uptime_seconds").set(app.started.elapsed().as_secs_f64());
        if let Some(c) = &app.cluster {
            // The share, budget, live nodes and Redis's state, as this
            // node knows them; then each node's connections as Redis holds
            // them.
            c.limiter().publish_metrics();
            let report = c.report();
            metrics::gauge!("chat_cluster_degraded").set(if report.mode == "degraded" {
                1.0
            } else {
                0.0
            });
            for n in &report.nodes {
                metrics::gauge!("chat_cluster_node_in_use", "node" => n.node.clone())
                    .set(f64::from(n.in_use));
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.recorder.handle().render(),
    )
        .into_response()
}

async fn events(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    // The stream holds its permit for as long as it lives.
    let permit = app.events_limiter.try_acquire().map_err(|_| {
        ProtoError::new(
            "unavailable",
            format!("at most {MAX_EVENT_STREAMS} live streams at once; poll /health instead"),
        )
        .retry_after(Duration::from_secs(crate::RETRY_AFTER_SECS.into()))
    })?;
    let stopping = app.phase.subscribe();
    let stream = futures::stream::unfold(
        (app, stopping, permit, true),
        |(app, mut stopping, permit, first)| async move {
            if !first {
                tokio::select! {
                    _ = tokio::time::sleep(EVENTS_EVERY) => {}
                    // End the stream on shutdown so the connection can close.
                    _ = stopping.wait_for(|p| *p == Phase::Stopping) => return None,
                }
            }
            if *stopping.borrow() == Phase::Stopping {
                return None;
            }
            permit.touch();
            let (_, report) = health_report(&app);
            let data = serde_json::to_string(&report).unwrap_or_default();
            let ev = Event::default().event("health").data(data);
            Some((
                Ok::<_, std::convert::Infallible>(ev),
                (app, stopping, permit, false),
            ))
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// `?limit=N` on `/incidents` (1..=200, default 20) and `?days=N` on
/// `/uptime` (1..=90, default 90).
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Incidents to list.
    pub limit: Option<u32>,
    /// Days to cover.
    pub days: Option<u32>,
}

fn list_query(
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<ListQuery, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError(ProtoError::bad_request(e.body_text())))
}

async fn incidents(
    State(app): State<Arc<App>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let limit = list_query(q)?.limit.unwrap_or(20);
    if !(1..=200).contains(&limit) {
        return Err(ApiError(ProtoError::bad_request("limit must be 1 to 200")));
    }
    let list = app
        .incidents
        .recent(limit)
        .await
        .map_err(store_unavailable)?;
    Ok(Json(serde_json::json!({ "incidents": list })).into_response())
}

async fn uptime(
    State(app): State<Arc<App>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let days = list_query(q)?.days.unwrap_or(crate::incidents::UPTIME_DAYS);
    if !(1..=crate::incidents::UPTIME_DAYS).contains(&days) {
        return Err(ApiError(ProtoError::bad_request("days must be 1 to 90")));
    }
    let days = app
        .incidents
        .uptime(days)
        .await
        .map_err(store_unavailable)?;
    Ok(Json(serde_json::json!({ "days": days })).into_response())
}

fn store_unavailable(e: crate::store::StoreError) -> ApiError {
    tracing::warn!("incidents: {e}");
    ApiError(ProtoError::new(
        "unavailable",
        "the incident history cannot be read right now",
    ))
}

/// Extractor guarding the admin endpoints.
#[derive(Debug)]
pub struct Admin;

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let Some(expected) = app.admin_token.as_deref() else {
            return Err(ApiError(ProtoError::new(
                "not_found",
                "admin endpoints are disabled",
            )));
        };
        match bearer(parts) {
            // Compared without an early exit, so response time says
            // nothing about how much of the token matched.
            Some(t)
                if bool::from(subtle::ConstantTimeEq::ct_eq(
                    t.as_bytes(),
                    expected.as_bytes(),
                )) =>
            {
                Ok(Admin)
            }
            _ => Err(ApiError(ProtoError::new(
                "unauthorized",
                "admin token required",
            ))),
        }
    }
}

async fn set_capacity(
    State(app): State<Arc<App>>,
    _: Admin,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let c = decode_capacity(&body)?;
    app.chat_limiter
        .set_capacity(c.capacity)
        .map_err(|e| ProtoError::bad_request(e.to_string()))?;
    tracing::warn!(capacity = c.capacity, "chat capacity changed by admin");
    Ok(Json(app.chat_limiter.health().snapshot()).into_response())
}

async fn drain(State(app): State<Arc<App>>, _: Admin) -> StatusCode {
    tracing::warn!("drain requested by admin");
    app.begin_drain();
    StatusCode::ACCEPTED
}

async fn revoke(
    State(app): State<Arc<App>>,
    _: Admin,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let r = decode_revoke(&body)?;
    let n = app
        .chat_limiter
        .revoke_idle(Duration::from_millis(r.idle_ms));
    tracing::warn!(
        revoked = n,
        idle_ms = r.idle_ms,
        "idle connections revoked by admin"
    );
    Ok(Json(serde_json::json!({ "revoked": n })).into_response())
}

async fn faults(
    State(app): State<Arc<App>>,
    admin: Result<Admin, ApiError>,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    // Without --fault-injection the endpoint does not exist at all.
    if !app.fault_injection {
        return Err(ApiError(ProtoError::new(
            "not_found",
            "fault injection is disabled",
        )));
    }
    admin?;
    let JsonBody(body) = body?;
    let f = decode_fault(&body)?;
    let faults = app.chat_limiter.faults();
    let body = match f {
        Fault::Leak { permits } => {
            let n = faults.leak(permits as usize);
            tracing::warn!(leaked = n, "fault injected: permits leaked");
            serde_json::json!({ "kind": "leak", "leaked": n })
        }
        Fault::Stall { wakeups } => {
            faults.stall(wakeups);
            tracing::warn!(wakeups, "fault injected: wake-ups will be lost");
            serde_json::json!({ "kind": "stall", "wakeups": wakeups })
        }
    };
    Ok(Json(body).into_response())
}
