//! [`HttpAdmit`]: request admission for `http` services.

use super::{AdmitBody, HttpAdmitLayer, HttpResponseFuture};
use admit::Limiter;
use std::task::{Context, Poll};
use tower_service::Service;

/// An `http` service that admits each request through a shared
/// [`Limiter`] and answers `503` itself when full; see [`HttpAdmitLayer`].
///
/// ```
/// use admit::Limiter;
/// use admit_tower::HttpAdmit;
/// use tower::{service_fn, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let inner = service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
/// });
/// let limiter = Limiter::new(0); // admits no one
/// let mut svc = HttpAdmit::new(inner, limiter);
/// let res = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
/// assert_eq!(res.status(), http::StatusCode::SERVICE_UNAVAILABLE);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HttpAdmit<S> {
    inner: S,
    layer: HttpAdmitLayer,
}

impl<S> HttpAdmit<S> {
    /// Wraps `inner` with the defaults of [`HttpAdmitLayer::new`].
    pub fn new(inner: S, limiter: Limiter) -> HttpAdmit<S> {
        HttpAdmit::from_layer(inner, HttpAdmitLayer::new(limiter))
    }

    pub(crate) fn from_layer(inner: S, layer: HttpAdmitLayer) -> HttpAdmit<S> {
        HttpAdmit { inner, layer }
    }

    /// The limiter requests are admitted through.
    pub fn limiter(&self) -> &Limiter {
        self.layer.limiter()
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for HttpAdmit<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone,
    ResBody: http_body::Body,
{
    type Response = http::Response<AdmitBody<ResBody>>;
    type Error = S::Error;
    type Future = HttpResponseFuture<S, http::Request<ReqBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // No permit here, as in `Admit`.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let admission = self.layer.config.call(&mut self.inner, req);
        HttpResponseFuture::new(admission, self.layer.release_at, self.layer.refusal.clone())
    }
}
