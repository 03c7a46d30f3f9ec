//! An axum app whose requests are admitted by admit-tower's
//! `HttpAdmitLayer`, with a `/health` route that reports the limiter.
//!
//! `/` answers at once; `/ticks` streams a line every 100 ms for as long as
//! the client reads, holding its permit throughout (the layer keeps it until
//! the body ends). `/health` is added after the layer, so it answers even
//! when every permit is taken.
//!
//! ```text
//! adopt-axum-layer [--addr 127.0.0.1:8080] [--capacity 512]
//! ```

use admit_tower::admit::Limiter;
use admit_tower::HttpAdmitLayer;
use axum::body::Body;
use axum::extract::State;
use axum::{routing::get, Json, Router};
use bytes::Bytes;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let capacity = adopt::setting("capacity", "ADOPT_CAPACITY", 512);
    let limiter = Limiter::builder()
        .capacity(capacity)
        .name("requests")
        .build()?;

    let app: Router = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route("/ticks", get(ticks))
        .layer(HttpAdmitLayer::new(limiter.clone()).retry_after(Duration::from_secs(2)))
        // Outside the layer: health must answer when the limiter is full.
        .route("/health", get(health).with_state(limiter));

    let listener = tokio::net::TcpListener::bind(adopt::listen_addr()).await?;
    adopt::announce(listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn health(State(limiter): State<Limiter>) -> Json<admit::Snapshot> {
    Json(limiter.health().snapshot())
}

async fn ticks() -> Body {
    let interval = tokio::time::interval(Duration::from_millis(100));
    let stream = futures_util::stream::unfold((interval, 0u64), |(mut interval, n)| async move {
        interval.tick().await;
        let line = Bytes::from(format!("tick {n}\n"));
        Some((Ok::<_, std::io::Error>(line), (interval, n + 1)))
    });
    Body::from_stream(stream)
}
