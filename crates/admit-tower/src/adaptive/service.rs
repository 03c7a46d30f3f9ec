//! [`Adaptive`]: the service that times (and admits) requests.

use super::future::ResponseFuture;
use super::layer::Shared;
use super::Classify;
use crate::{BoxError, Overloaded};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// Times every request for an adaptive controller and, unless observing
/// only, admits it through the controller's limiter; see
/// [`AdaptiveLayer`](super::AdaptiveLayer).
///
/// Like [`Admit`](crate::Admit), `poll_ready` takes no permit: the permit
/// is taken in `call` and released when the response future completes or
/// is dropped. A request whose future is dropped before it completes
/// (its caller went away) is not reported: it says nothing about the
/// service.
#[derive(Debug, Clone)]
pub struct Adaptive<S, C> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
    pub(crate) classify: C,
}

impl<S, C> Adaptive<S, C> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, Req> Service<Req> for Adaptive<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.shared;
        let permit = if shared.admit {
            match shared.sampler.limiter().try_acquire() {
                Ok(permit) => Some(permit),
                Err(reason) => {
                    return ResponseFuture::shed(Overloaded::new(reason, shared.retry_after))
                }
            }
        } else {
            None
        };
        let timer = shared.sampler.start();
        ResponseFuture::running(
            self.inner.call(req),
            permit,
            timer,
            shared.clone(),
            self.classify.clone(),
        )
    }
}
