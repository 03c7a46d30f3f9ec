//! Admission for `http` services: `503 Service Unavailable` with
//! `Retry-After` when full, and a permit held until the response body has
//! finished streaming.
//!
//! ```
//! use admit::Limiter;
//! use admit_tower::http::{HttpAdmitLayer, ReleaseAt};
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let limiter = Limiter::new(1);
//! let mut svc = HttpAdmitLayer::new(limiter.clone()).layer(service_fn(
//!     |_req: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("hi"))))
//!     },
//! ));
//!
//! let res = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
//! // The body still holds the permit: a second request is turned away.
//! let busy = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
//! assert_eq!(busy.status(), 503);
//! assert_eq!(busy.headers()["retry-after"], "5");
//! drop(res);
//! assert_eq!(limiter.in_use(), 0);
//! # }
//! ```

mod body;
mod future;
mod layer;
mod service;

pub use body::AdmitBody;
pub use future::HttpResponseFuture;
pub use layer::{HttpAdmitLayer, ReleaseAt};
pub use service::HttpAdmit;
