//! The adaptive layer over real sockets, and its bookkeeping with a mock.
//!
//! The socket test serves HTTP with hyper through `AdaptiveLayer` (a
//! queue-delay controller) in front of a handler that sleeps in proportion
//! to how many requests it is already serving, once past its knee: like a
//! service with `knee` workers, each request takes `base` alone and
//! `base × in_flight / knee` beyond that. Clients then offer three times
//! what it can serve. The limit must settle near the knee, and the latency
//! of the admitted requests must stay within twice the no-load latency.

mod support;

use admit::adaptive::{attach, Config, Kind, Outcome, QueueDelay};
use admit::Limiter;
use admit_tower::adaptive::{AdaptiveLayer, ByResult, ByStatus, Classify};
use admit_tower::{BoxError, Overloaded};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

const BASE: Duration = Duration::from_millis(25);
const KNEE: usize = 10;

/// Decrements the handler's in-flight count however the request ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handler(in_flight: Arc<AtomicUsize>) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    let _guard = InFlight(in_flight);
    let factor = (n as f64 / KNEE as f64).max(1.0);
    tokio::time::sleep(BASE.mul_f64(factor)).await;
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

type Body = Full<Bytes>;
type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Answers shed requests with the 503 their `Overloaded` error describes.
/// (The inner future is boxed where its type is known, which spares the
/// compiler a higher-ranked `Send` proof it cannot make inside `spawn`.)
#[derive(Clone)]
struct ShedAs503<S>(S);

impl<S> Service<Request<hyper::body::Incoming>> for ShedAs503<S>
where
    S: Service<Request<hyper::body::Incoming>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx).map(|r| {
            r.expect("the adaptive layer and service_fn are always ready");
            Ok(())
        })
    }

    fn call(&mut self, req: Request<hyper::body::Incoming>) -> Self::Future {
        let fut: BoxFuture<Result<Response<Body>, BoxError>> = Box::pin(self.0.call(req));
        Box::pin(async move {
            Ok(match fut.await {
                Ok(resp) => resp,
                Err(e) => match e.downcast_ref::<Overloaded>() {
                    Some(overloaded) => overloaded.http_response(),
                    None => panic!("handler failed: {e}"),
                },
            })
        })
    }
}

/// Serves `layer` over hyper on a loopback port; shed requests get a 503.
async fn serve(layer: AdaptiveLayer) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let svc = ShedAs503(
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(move |_req: Request<hyper::body::Incoming>| handler(in_flight.clone())),
    );
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// One GET: its status and latency.
async fn get(client: &Client, uri: &hyper::Uri) -> (StatusCode, Duration) {
    let started = Instant::now();
    let resp = client
        .request(
            Request::get(uri.clone())
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .expect("loopback request");
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    (status, started.elapsed())
}

fn p(latencies: &mut [Duration], q: f64) -> Duration {
    latencies.sort();
    latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_settles_near_the_knee_and_latency_stays_within_twice_no_load() {
    let limiter = Limiter::builder()
        .capacity(1)
        .max_capacity(200)
        .name("adaptive-socket")
        .build()
        .unwrap();
    let layer =
        AdaptiveLayer::spawn(limiter.clone(), QueueDelay::default(), Config::default()).unwrap();
    let addr = serve(layer).await;
    let uri: hyper::Uri = format!("http://{addr}/").parse().unwrap();
    let client: Client =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();

    // No-load latency: one request at a time.
    let mut alone = Vec::new();
    for _ in 0..20 {
        let (status, latency) = get(&client, &uri).await;
        assert_eq!(status, StatusCode::OK);
        alone.push(latency);
    }
    let noload = p(&mut alone, 0.5);

    // Three times capacity or more: 4 × knee clients, each sending again
    // at once after an answer and one base latency after a 503.
    let capacity = KNEE as f64 / BASE.as_secs_f64();
    let clients = 4 * KNEE;
    let start = Instant::now();
    let run_for = Duration::from_secs(4);
    let measure_from = Duration::from_secs(2);
    let attempts = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, uri, attempts) = (client.clone(), uri.clone(), attempts.clone());
        tasks.push(tokio::spawn(async move {
            let mut served = Vec::new();
            while start.elapsed() < run_for {
                let sent_at = start.elapsed();
                let (status, latency) = get(&client, &uri).await;
                if sent_at >= measure_from {
                    attempts.fetch_add(1, Ordering::Relaxed);
                }
                match status {
                    StatusCode::OK if sent_at >= measure_from => served.push(latency),
                    StatusCode::OK => {}
                    StatusCode::SERVICE_UNAVAILABLE => tokio::time::sleep(BASE).await,
                    other => panic!("unexpected status {other}"),
                }
            }
            served
        }));
    }
    // Watch the limit while the load runs.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (limiter, stop) = (limiter.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if start.elapsed() >= measure_from {
                    seen.push(limiter.capacity());
                }
            }
            seen
        })
    };
    let mut served = Vec::new();
    for t in tasks {
        served.extend(t.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let limits = watcher.await.unwrap();

    let window = (run_for - measure_from).as_secs_f64();
    let offered = attempts.load(Ordering::Relaxed) as f64 / window;
    let goodput = served.len() as f64 / window;
    let p99 = p(&mut served, 0.99);
    let (lo, hi) = (*limits.iter().min().unwrap(), *limits.iter().max().unwrap());
    println!(
        "no-load {noload:?}, p99 {p99:?} ({:.2}x), limit {lo}..={hi} (knee {KNEE}), \
         offered {offered:.0}/s ({:.1}x capacity {capacity:.0}/s), goodput {goodput:.0}/s",
        p99.as_secs_f64() / noload.as_secs_f64(),
        offered / capacity,
    );
    assert!(offered >= 3.0 * capacity, "offered only {offered:.0}/s");
    assert!(
        lo as usize >= KNEE / 2 && hi as usize <= KNEE * 2,
        "limit ranged {lo}..={hi} against a knee of {KNEE}"
    );
    assert!(p99 <= noload * 2, "p99 {p99:?} against no-load {noload:?}");
    assert!(goodput >= 0.7 * capacity, "goodput {goodput:.0}/s");
    let view = limiter.health().snapshot().adaptive.unwrap();
    assert_eq!(view.algorithm, Kind::QueueDelay);
    assert!(view.decisions > 10);
}

#[tokio::test]
async fn observing_reports_outcomes_without_admitting() {
    let limiter = Limiter::builder()
        .capacity(1)
        .max_capacity(10)
        .build()
        .unwrap();
    // The limiter is full, yet observed requests still run: admission is
    // someone else's job.
    let _held = limiter.try_acquire().unwrap();
    let attached = attach(limiter.clone(), QueueDelay::default(), Config::default()).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let svc = {
        let calls = calls.clone();
        tower::service_fn(move |fail: bool| {
            calls.fetch_add(1, Ordering::Relaxed);
            async move {
                if fail {
                    Err::<(), BoxError>("boom".into())
                } else {
                    Ok(())
                }
            }
        })
    };
    let mut svc = AdaptiveLayer::observe(attached.sampler())
        .classify(ByResult)
        .layer(svc);
    svc.ready().await.unwrap().call(false).await.unwrap();
    svc.ready().await.unwrap().call(true).await.unwrap_err();
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    assert_eq!(limiter.in_use(), 1);
}

#[tokio::test]
async fn admitting_sheds_over_the_limit_and_classifies_by_status() {
    let limiter = Limiter::builder()
        .capacity(1)
        .max_capacity(10)
        .build()
        .unwrap();
    let attached = attach(limiter.clone(), QueueDelay::default(), Config::default()).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let classify = {
        let seen = seen.clone();
        move |r: Result<&Response<()>, &BoxError>| {
            let outcome = Classify::classify(&ByStatus, r);
            seen.lock().unwrap().push(outcome);
            outcome
        }
    };
    let inner = tower::service_fn(|code: u16| async move {
        let mut resp = Response::new(());
        *resp.status_mut() = StatusCode::from_u16(code).unwrap();
        Ok::<_, Infallible>(resp)
    });
    let mut svc = AdaptiveLayer::new(attached.sampler())
        .classify(classify)
        .layer(inner);
    for code in [200, 500, 504] {
        svc.ready().await.unwrap().call(code).await.unwrap();
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [Outcome::Ok, Outcome::Dropped, Outcome::Timeout]
    );
    // Full: shed with Overloaded, never reaching the inner service.
    let held = limiter.try_acquire().unwrap();
    let err = svc.ready().await.unwrap().call(200).await.unwrap_err();
    assert!(err.is::<Overloaded>());
    assert_eq!(seen.lock().unwrap().len(), 3);
    drop(held);
    assert_eq!(limiter.in_use(), 0);
}

/// The hook for listeners: a controller attached to an admit-tcp listener's
/// limiter, fed by `AdaptiveLayer::observe` around the requests served on
/// its connections. Every answer is a 500, so the connection limit must
/// fall from 8 to the floor, with no change to the listener's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listeners_limit_follows_the_requests_served_on_its_connections() {
    let limiter = Limiter::builder()
        .capacity(8)
        .max_capacity(64)
        .name("listener")
        .build()
        .unwrap();
    let attached = attach(
        limiter.clone(),
        QueueDelay::default(),
        Config::default().initial(8),
    )
    .unwrap();
    assert_eq!(limiter.capacity(), 8);
    let mut listener = admit_tcp::AdmitListener::bind("127.0.0.1:0", limiter.clone())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let layer = AdaptiveLayer::observe(attached.sampler());
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let svc = layer.clone().layer(tower::service_fn(
                |_req: Request<hyper::body::Incoming>| async {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"down")));
                    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    Ok::<_, Infallible>(resp)
                },
            ));
            let svc = ShedAs503(svc);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        TokioIo::new(conn),
                        hyper_util::service::TowerToHyperService::new(svc),
                    )
                    .await;
            });
        }
    });
    let uri: hyper::Uri = format!("http://{addr}/").parse().unwrap();
    let client: Client =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Four keep-alive connections, busy until the limit reaches the floor.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (client, uri, limiter) = (client.clone(), uri.clone(), limiter.clone());
            tokio::spawn(async move {
                while limiter.capacity() > 1 && Instant::now() < deadline {
                    let (status, _) = get(&client, &uri).await;
                    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(limiter.capacity(), 1, "the limit never reached the floor");
    let view = limiter.health().snapshot().adaptive.unwrap();
    assert_eq!(view.last_decision, admit::adaptive::Reason::Loss);
    drop(attached);
    assert_eq!(limiter.health().snapshot().adaptive, None);
}
