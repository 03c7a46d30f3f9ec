//! [`Admit`]: the service that admits requests.

use crate::admission::Config;
use crate::future::ResponseFuture;
use crate::layer::AdmitLayer;
use crate::BoxError;
use admit::Limiter;
use std::task::{Context, Poll};
use tower_service::Service;

/// A service that admits each request through a shared [`Limiter`]; see
/// [`AdmitLayer`].
///
/// Clones share the limiter. `poll_ready` only asks the inner service; the
/// permit is taken in `call`.
///
/// ```
/// use admit::Limiter;
/// use admit_tower::Admit;
/// use tower::{service_fn, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = service_fn(|n: u64| async move { Ok::<_, std::convert::Infallible>(n + 1) });
/// let mut svc = Admit::new(svc, Limiter::new(8));
/// assert_eq!(svc.ready().await.unwrap().call(41).await.unwrap(), 42);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Admit<S> {
    inner: S,
    config: Config,
}

impl<S> Admit<S> {
    /// Wraps `inner`, shedding when `limiter` is full. For other settings use
    /// [`AdmitLayer`].
    pub fn new(inner: S, limiter: Limiter) -> Admit<S> {
        Admit::from_config(inner, AdmitLayer::new(limiter).config().clone())
    }

    pub(crate) fn from_config(inner: S, config: Config) -> Admit<S> {
        Admit { inner, config }
    }

    /// The limiter requests are admitted through.
    pub fn limiter(&self) -> &Limiter {
        &self.config.limiter
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for Admit<S>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // No permit here: readiness says nothing about whether a request
        // will ever come (an idle keep-alive connection polls it too).
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture::new(self.config.call(&mut self.inner, req))
    }
}
