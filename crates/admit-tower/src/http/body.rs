//! [`AdmitBody`]: a response body that carries the request's permit.

use admit::Permit;
use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// The response body of [`HttpAdmit`](super::HttpAdmit): the inner service's
/// body, holding the request's permit until the last frame has been read
/// (or the body fails or is dropped). A refusal's body is empty unless the
/// layer was given one ([`busy_body`](super::HttpAdmitLayer::busy_body)),
/// which is why the inner body's data must be convertible from [`Bytes`]
/// (as it is for axum's and hyper's bodies).
///
/// Each frame read marks the permit active, so a watchdog's idle limit
/// applies to stalled streams, not slow but moving ones.
///
/// ```
/// use admit_tower::AdmitBody;
/// use http_body::Body;
///
/// let empty: AdmitBody<String> = AdmitBody::default();
/// assert!(empty.is_end_stream());
/// assert!(!empty.holds_permit());
/// ```
#[pin_project]
pub struct AdmitBody<B> {
    #[pin]
    kind: Kind<B>,
    permit: Option<Permit>,
}

#[pin_project(project = KindProj)]
enum Kind<B> {
    Inner(#[pin] B),
    Empty,
    /// A refusal's body: one frame, taken when read.
    Refusal(Option<Bytes>),
}

impl<B> AdmitBody<B> {
    /// Wraps `body`, holding no permit.
    pub fn new(body: B) -> AdmitBody<B> {
        AdmitBody {
            kind: Kind::Inner(body),
            permit: None,
        }
    }

    /// An empty body.
    pub fn empty() -> AdmitBody<B> {
        AdmitBody {
            kind: Kind::Empty,
            permit: None,
        }
    }

    /// Wraps `body` and holds `permit` until the body ends. A body that is
    /// already at its end (by [`Body::is_end_stream`]) releases it at once.
    pub fn with_permit(body: B, permit: Permit) -> AdmitBody<B>
    where
        B: Body,
    {
        let done = body.is_end_stream();
        AdmitBody {
            kind: Kind::Inner(body),
            permit: (!done).then_some(permit),
        }
    }

    /// A refusal's body: `bytes` in one frame.
    pub(crate) fn refusal(bytes: Bytes) -> AdmitBody<B> {
        AdmitBody {
            kind: Kind::Refusal(Some(bytes)),
            permit: None,
        }
    }

    /// Whether this body still holds a permit.
    pub fn holds_permit(&self) -> bool {
        self.permit.is_some()
    }
}

impl<B> Default for AdmitBody<B> {
    fn default() -> Self {
        AdmitBody::empty()
    }
}

impl<B> std::fmt::Debug for AdmitBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmitBody")
            .field(
                "empty",
                &matches!(self.kind, Kind::Empty | Kind::Refusal(None)),
            )
            .field("permit", &self.permit)
            .finish()
    }
}

impl<B> Body for AdmitBody<B>
where
    B: Body,
    B::Data: Buf + From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let mut body = match this.kind.project() {
            KindProj::Inner(body) => body,
            KindProj::Empty => return Poll::Ready(None),
            KindProj::Refusal(bytes) => {
                return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b.into()))));
            }
        };
        let frame = ready!(body.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(_)) if !body.is_end_stream() => {
                if let Some(permit) = this.permit.as_ref() {
                    permit.touch();
                }
            }
            // The end, an error, or a last frame: the request is over.
            _ => drop(this.permit.take()),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner(body) => body.is_end_stream(),
            Kind::Empty => true,
            Kind::Refusal(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner(body) => body.size_hint(),
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Refusal(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
