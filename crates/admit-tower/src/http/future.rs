//! [`HttpResponseFuture`]: the response future of [`HttpAdmit`](super::HttpAdmit).

use super::layer::Refusal;
use super::{AdmitBody, ReleaseAt};
use crate::admission::Admission;
use pin_project::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tower_service::Service;

/// The response future of [`HttpAdmit`](super::HttpAdmit): resolves to the
/// inner response with its body wrapped in [`AdmitBody`] (which carries the
/// permit on), or to the layer's refusal (a `503` unless set otherwise) when
/// the request was not admitted.
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
    refusal: Refusal,
}

impl<S, Req> HttpResponseFuture<S, Req>
where
    S: Service<Req>,
{
    pub(crate) fn new(
        admission: Admission<S, Req>,
        release_at: ReleaseAt,
        refusal: Refusal,
    ) -> Self {
        HttpResponseFuture {
            admission,
            release_at,
            refusal,
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
            Err(overloaded) => {
                let mut res = overloaded.http_response::<AdmitBody<B>>();
                *res.status_mut() = this.refusal.status;
                if let Some((content_type, body)) = &this.refusal.body {
                    let headers = res.headers_mut();
                    headers.insert(http::header::CONTENT_TYPE, content_type.clone());
                    headers.insert(http::header::CONTENT_LENGTH, body.len().into());
                    *res.body_mut() = AdmitBody::refusal(body.clone());
                }
                Ok(res)
            }
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
