//! Response futures of [`Admit`](crate::Admit).

use crate::admission::Admission;
use crate::BoxError;
use pin_project::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tower_service::Service;

/// The response future of [`Admit`](crate::Admit).
///
/// It holds the request's permit while the inner future runs (or waits for
/// one in the limiter's queue) and releases it on completion or drop.
///
/// ```
/// use admit_tower::{future::ResponseFuture, Admit};
/// use std::convert::Infallible;
/// use std::future::{ready, Ready};
/// use std::task::{Context, Poll};
/// use tower::Service;
///
/// #[derive(Clone)]
/// struct Echo;
///
/// impl Service<String> for Echo {
///     type Response = String;
///     type Error = Infallible;
///     type Future = Ready<Result<String, Infallible>>;
///     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
///         Poll::Ready(Ok(()))
///     }
///     fn call(&mut self, req: String) -> Self::Future {
///         ready(Ok(req))
///     }
/// }
///
/// // The future can be named, e.g. to store it in a struct.
/// fn start(svc: &mut Admit<Echo>, req: String) -> ResponseFuture<Echo, String> {
///     svc.call(req)
/// }
/// # let _ = start;
/// ```
#[pin_project]
pub struct ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    #[pin]
    admission: Admission<S, Req>,
}

impl<S, Req> ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    pub(crate) fn new(admission: Admission<S, Req>) -> Self {
        ResponseFuture { admission }
    }
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match ready!(self.project().admission.poll_outcome(cx)) {
            // The permit is dropped here: the request is over.
            Ok((result, _permit)) => Poll::Ready(result.map_err(Into::into)),
            Err(overloaded) => Poll::Ready(Err(Box::new(overloaded))),
        }
    }
}

impl<S, Req> std::fmt::Debug for ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("admission", &self.admission)
            .finish()
    }
}
