//! [`HttpResponseFuture`]: the response future of [`HttpAdmit`](super::HttpAdmit).

use super::{AdmitBody, ReleaseAt};
use crate::admission::Admission;
use pin_project::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tower_service::Service;

/// The response future of [`HttpAdmit`](super::HttpAdmit): resolves to the
/// inner response with its body wrapped in [`AdmitBody`] (which carries the
/// permit on), or to a `503` when the request was not admitted.
///
/// ```
/// use admit_tower::http::{HttpAdmit, HttpResponseFuture};
/// use tower::util::BoxCloneService;
/// use tower::Service;
///
/// type Inner = BoxCloneService<http::Request<String>, http::Response<String>, std::io::Error>;
///
/// // The future can be named, e.g. to store it in a struct.
/// fn start(
///     svc: &mut HttpAdmit<Inner>,
///     req: http::Request<String>,
/// ) -> HttpResponseFuture<Inner, http::Request<String>> {
///     svc.call(req)
/// }
/// # let _ = start;
/// ```
#[pin_project]
pub struct HttpResponseFuture<S, Req>
where
    S: Service<Req>,
{
    #[pin]
    admission: Admission<S, Req>,
    release_at: ReleaseAt,
}

impl<S, Req> HttpResponseFuture<S, Req>
where
    S: Service<Req>,
{
    pub(crate) fn new(admission: Admission<S, Req>, release_at: ReleaseAt) -> Self {
        HttpResponseFuture {
            admission,
            release_at,
        }
    }
}

impl<S, Req, B> Future for HttpResponseFuture<S, Req>
where
    S: Service<Req, Response = http::Response<B>>,
    B: http_body::Body,
{
    type Output = Result<http::Response<AdmitBody<B>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = ready!(this.admission.poll_outcome(cx));
        Poll::Ready(match outcome {
            Ok((Ok(res), permit)) => Ok(res.map(|body| match this.release_at {
                ReleaseAt::BodyEnd => AdmitBody::with_permit(body, permit),
                ReleaseAt::Headers => AdmitBody::new(body),
            })),
            // A failed request is over: its permit goes back now.
            Ok((Err(err), _permit)) => Err(err),
            Err(overloaded) => Ok(overloaded.http_response()),
        })
    }
}

impl<S, Req> std::fmt::Debug for HttpResponseFuture<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpResponseFuture")
            .field("admission", &self.admission)
            .field("release_at", &self.release_at)
            .finish()
    }
}
