//! The HTTP helper: 503 + Retry-After when full, permits that live as long
//! as the response body streams, and an axum `Router` behind the layer.

use admit::{Limiter, Rejected};
use admit_tower::{HttpAdmitLayer, OnFull, ReleaseAt};
use axum::{body::Body, routing::get, Router};
use bytes::Bytes;
use futures::channel::mpsc;
use futures::SinkExt;
use http::{Request, Response, StatusCode};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::oneshot;
use tower::{service_fn, Layer, Service, ServiceExt};

type Chunk = Result<Frame<Bytes>, Infallible>;
type Chunks = StreamBody<mpsc::Receiver<Chunk>>;
type Feeds = std::sync::mpsc::Receiver<mpsc::Sender<Chunk>>;

/// A service whose every response body streams from a channel the test
/// feeds; each call hands the test the sending end.
fn streaming_service() -> (
    impl Service<Request<()>, Response = Response<Chunks>, Error = Infallible, Future: Send> + Clone,
    Feeds,
) {
    let (senders_tx, senders_rx) = std::sync::mpsc::channel();
    let svc = service_fn(move |_req: Request<()>| {
        let (tx, rx) = mpsc::channel(4);
        senders_tx.send(tx).unwrap();
        async move { Ok::<_, Infallible>(Response::new(StreamBody::new(rx))) }
    });
    (svc, senders_rx)
}

fn full_body(text: &'static str) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(text.as_bytes())))
}

#[tokio::test]
async fn a_full_limiter_answers_503_with_retry_after() {
    let limiter = Limiter::new(1);
    let held = limiter.try_acquire().unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let inner = {
        let calls = calls.clone();
        service_fn(move |_req: Request<()>| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, Infallible>(full_body("hello")) }
        })
    };
    let svc = HttpAdmitLayer::new(limiter.clone())
        .retry_after(Duration::from_secs(7))
        .layer(inner);

    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "7");
    assert_eq!(res.headers()["content-length"], "0");
    assert!(res
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(limiter.health().snapshot().rejected_total["full"], 1);

    drop(held);
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "hello");
    assert_eq!(limiter.in_use(), 0);
}

#[tokio::test]
async fn the_permit_is_held_until_the_body_has_finished_streaming() {
    let limiter = Limiter::new(1);
    let (inner, senders) = streaming_service();
    let svc = HttpAdmitLayer::new(limiter.clone()).layer(inner);

    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    let mut tx = senders.recv().unwrap();
    let mut body = res.into_body();
    assert!(body.holds_permit());
    assert_eq!(limiter.in_use(), 1, "headers are out but the body is not");

    // While it streams, others are turned away.
    let busy = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);

    tx.send(Ok(Frame::data(Bytes::from_static(b"part 1"))))
        .await
        .unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "part 1");
    assert_eq!(limiter.in_use(), 1);

    drop(tx);
    assert!(body.frame().await.is_none());
    assert!(!body.holds_permit());
    assert_eq!(limiter.in_use(), 0);
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn release_at_headers_frees_the_permit_before_the_body_is_read() {
    let limiter = Limiter::new(1);
    let (inner, senders) = streaming_service();
    let svc = HttpAdmitLayer::new(limiter.clone())
        .release_at(ReleaseAt::Headers)
        .layer(inner);

    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    let _tx = senders.recv().unwrap();
    assert!(!res.body().holds_permit());
    assert_eq!(limiter.in_use(), 0);
    let second = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    drop(res);
}

#[tokio::test]
async fn dropping_an_unfinished_body_releases_the_permit() {
    let limiter = Limiter::new(1);
    let (inner, senders) = streaming_service();
    let svc = HttpAdmitLayer::new(limiter.clone()).layer(inner);
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let _tx = senders.recv().unwrap();
    assert_eq!(limiter.in_use(), 1);
    drop(res);
    assert_eq!(limiter.in_use(), 0);
}

#[tokio::test]
async fn a_body_error_releases_the_permit() {
    let limiter = Limiter::new(1);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    let rx = std::sync::Arc::new(std::sync::Mutex::new(Some(rx)));
    let inner = service_fn(move |_req: Request<()>| {
        let rx = rx.lock().unwrap().take().unwrap();
        async move { Ok::<_, Infallible>(Response::new(StreamBody::new(rx))) }
    });
    let svc = HttpAdmitLayer::new(limiter.clone()).layer(inner);
    let mut body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    let mut tx = tx;
    tx.send(Err(std::io::Error::other("stream broke")))
        .await
        .unwrap();
    assert!(body.frame().await.unwrap().is_err());
    assert_eq!(limiter.in_use(), 0);
}

#[tokio::test]
async fn an_empty_body_releases_at_once() {
    let limiter = Limiter::new(1);
    let inner = service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
    });
    let svc = HttpAdmitLayer::new(limiter.clone()).layer(inner);
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert!(res.body().is_end_stream());
    assert_eq!(limiter.in_use(), 0);
}

#[tokio::test]
async fn an_inner_error_passes_through_and_releases_the_permit() {
    let limiter = Limiter::new(1);
    let inner = service_fn(|_req: Request<()>| async {
        Err::<Response<Full<Bytes>>, _>(std::io::Error::other("handler failed"))
    });
    let svc = HttpAdmitLayer::new(limiter.clone()).layer(inner);
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    assert_eq!(err.to_string(), "handler failed");
    assert_eq!(limiter.in_use(), 0);
}

#[tokio::test]
async fn queued_http_requests_wait_then_get_served() {
    let limiter = Limiter::builder()
        .capacity(1)
        .queue_limit(1)
        .build()
        .unwrap();
    let (inner, senders) = streaming_service();
    let svc = HttpAdmitLayer::new(limiter.clone())
        .on_full(OnFull::Queue)
        .layer(inner);

    let first = svc.clone().oneshot(Request::new(())).await.unwrap();
    let tx1 = senders.recv().unwrap();
    let waiting = tokio::spawn(svc.clone().oneshot(Request::new(())));
    // Let the waiter take its place in the queue.
    while limiter.waiting() == 0 {
        tokio::task::yield_now().await;
    }
    // A third finds the queue full: 503.
    let shed = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        limiter.health().snapshot().rejected_total[Rejected::QueueFull.as_str()],
        1
    );

    drop(tx1);
    drop(first);
    let second = waiting.await.unwrap().unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(limiter.in_use(), 1);
    drop(second);
    assert_eq!(limiter.in_use(), 0);
}

#[tokio::test]
async fn an_axum_router_takes_the_layer_and_sheds_with_503() {
    let limiter = Limiter::new(1);
    let (gate_tx, gate_rx) = oneshot::channel::<()>();
    let gate = std::sync::Arc::new(std::sync::Mutex::new(Some(gate_rx)));
    let (entered_tx, entered_rx) = oneshot::channel::<()>();
    let entered = std::sync::Arc::new(std::sync::Mutex::new(Some(entered_tx)));
    let app = Router::new()
        .route(
            "/slow",
            get(move || {
                let gate = gate.lock().unwrap().take();
                let entered = entered.lock().unwrap().take();
                async move {
                    if let Some(entered) = entered {
                        let _ = entered.send(());
                    }
                    if let Some(gate) = gate {
                        let _ = gate.await;
                    }
                    "slow done"
                }
            }),
        )
        .route("/fast", get(|| async { "fast" }))
        .layer(HttpAdmitLayer::new(limiter.clone()).retry_after(Duration::from_secs(3)));

    let slow = tokio::spawn(
        app.clone()
            .oneshot(Request::get("/slow").body(Body::empty()).unwrap()),
    );
    entered_rx.await.unwrap();
    assert_eq!(limiter.in_use(), 1);

    let res = app
        .clone()
        .oneshot(Request::get("/fast").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "3");

    gate_tx.send(()).unwrap();
    let res = slow.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // The body of the slow response still holds the permit until read.
    assert_eq!(limiter.in_use(), 1);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "slow done");
    assert_eq!(limiter.in_use(), 0);

    let res = app
        .oneshot(Request::get("/fast").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "fast");
    assert_eq!(limiter.in_use(), 0);
}

#[tokio::test]
async fn the_refusal_status_and_body_are_the_layers_to_choose() {
    let limiter = Limiter::new(0);
    let svc = HttpAdmitLayer::new(limiter.clone())
        .status(StatusCode::TOO_MANY_REQUESTS)
        .busy_body("application/json", &br#"{"error":"busy"}"#[..])
        .layer(service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(full_body("hello"))
        }));

    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["content-length"], "16");
    assert_eq!(
        res.headers()["retry-after"],
        admit_tower::DEFAULT_RETRY_AFTER.as_secs().to_string()
    );
    let body = res.into_body();
    assert_eq!(body.size_hint().exact(), Some(16));
    let bytes = body.collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], br#"{"error":"busy"}"#);
}

#[tokio::test]
async fn the_default_refusal_is_an_empty_503_with_the_shared_retry_after() {
    assert_eq!(admit_tower::DEFAULT_RETRY_AFTER, Duration::from_secs(5));
    let svc = HttpAdmitLayer::new(Limiter::new(0)).layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(full_body("hello"))
    }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "5");
    assert!(res.headers().get("content-type").is_none());
    assert!(res.into_body().is_end_stream());
}

#[tokio::test(start_paused = true)]
async fn a_queued_request_is_refused_when_its_queue_timeout_runs_out() {
    let limiter = Limiter::builder()
        .capacity(1)
        .queue_limit(4)
        .build()
        .unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let inner = {
        let calls = calls.clone();
        service_fn(move |_req: Request<()>| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, Infallible>(full_body("hello")) }
        })
    };
    let svc = HttpAdmitLayer::new(limiter.clone())
        .queue()
        .queue_timeout(Duration::from_millis(250))
        .status(StatusCode::TOO_MANY_REQUESTS)
        .layer(inner);

    let held = limiter.try_acquire().unwrap();
    let started = tokio::time::Instant::now();
    // Bounded, so a missing timeout fails instead of waiting for ever.
    let res = tokio::time::timeout(
        Duration::from_secs(60),
        svc.clone().oneshot(Request::new(())),
    )
    .await
    .expect("refused when the queue timeout ran out")
    .unwrap();
    // The paused clock moved only as far as the timeout.
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(limiter.waiting(), 0, "the timed-out request left the queue");
    assert_eq!(
        limiter.health().snapshot().rejected_total[Rejected::Timeout.as_str()],
        1
    );

    // Within its timeout, a request that gets a permit is served.
    let waiting = tokio::spawn(svc.clone().oneshot(Request::new(())));
    while limiter.waiting() == 0 {
        tokio::task::yield_now().await;
    }
    drop(held);
    let res = waiting.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}
