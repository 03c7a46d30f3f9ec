//! Request admission inside [`Server`](crate::Server): every request of
//! every connection goes through one admit-tower [`HttpAdmit`], when the
//! server was given a [`HttpAdmitLayer`].

use admit_tower::http::HttpResponseFuture;
use admit_tower::{AdmitBody, HttpAdmit, HttpAdmitLayer};
use http::{Request, Response};
use hyper::body::Incoming;
use pin_project::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// The application's service, behind the server's request limiter if it
/// has one. Both arms answer with an [`AdmitBody`], so the response type
/// does not depend on the choice.
#[derive(Debug, Clone)]
pub(crate) enum Requests<S> {
    Open(S),
    Admitted(HttpAdmit<S>),
}

impl<S> Requests<S> {
    pub(crate) fn new(service: S, layer: Option<&HttpAdmitLayer>) -> Requests<S> {
        match layer {
            Some(layer) => Requests::Admitted(layer.layer(service)),
            None => Requests::Open(service),
        }
    }
}

impl<S, B> Service<Request<Incoming>> for Requests<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone,
    B: http_body::Body,
{
    type Response = Response<AdmitBody<B>>;
    type Error = S::Error;
    type Future = RequestsFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        match self {
            Requests::Open(service) => service.poll_ready(cx),
            Requests::Admitted(service) => service.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        match self {
            Requests::Open(service) => RequestsFuture::Open(service.call(req)),
            Requests::Admitted(service) => RequestsFuture::Admitted(service.call(req)),
        }
    }
}

/// The response future of [`Requests`].
// Only one of the two is ever built for a server, and the future lives in
// hyper's per-request state either way; boxing would add an allocation per
// request.
#[allow(clippy::large_enum_variant)]
#[pin_project(project = RequestsFutureProj)]
pub(crate) enum RequestsFuture<S>
where
    S: Service<Request<Incoming>>,
{
    Open(#[pin] S::Future),
    Admitted(#[pin] HttpResponseFuture<S, Request<Incoming>>),
}

impl<S, B> Future for RequestsFuture<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    B: http_body::Body,
{
    type Output = Result<Response<AdmitBody<B>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RequestsFutureProj::Open(future) => {
                let res = ready!(future.poll(cx));
                Poll::Ready(res.map(|res| res.map(AdmitBody::new)))
            }
            RequestsFutureProj::Admitted(future) => future.poll(cx),
        }
    }
}

/// A hyper service as a tower service, so [`Server::serve_hyper`] takes the
/// same path (request admission included) as tower services.
///
/// [`Server::serve_hyper`]: crate::Server::serve_hyper
#[derive(Debug, Clone)]
pub(crate) struct HyperService<H>(pub(crate) H);

impl<H, R> Service<R> for HyperService<H>
where
    H: hyper::service::Service<R>,
{
    type Response = H::Response;
    type Error = H::Error;
    type Future = H::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), H::Error>> {
        // hyper services are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> H::Future {
        self.0.call(req)
    }
}
