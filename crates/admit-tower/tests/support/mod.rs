//! Test support: a mock service whose requests the test answers by hand,
//! and a task wrapper that polls a future with a waker it can inspect.
#![allow(dead_code)]

use admit_tower::BoxError;
use futures::future::BoxFuture;
use futures::task::{waker, ArcWake};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};
use tower::Service;

type Reply<Res> = oneshot::Sender<Result<Res, BoxError>>;

/// A service that forwards each request to its [`Handle`] in `call`, so the
/// test sees exactly which requests reached the inner service.
pub struct Mock<Req, Res> {
    tx: mpsc::UnboundedSender<(Req, Reply<Res>)>,
}

impl<Req, Res> Clone for Mock<Req, Res> {
    fn clone(&self) -> Self {
        Mock {
            tx: self.tx.clone(),
        }
    }
}

/// The test's end of a [`Mock`].
pub struct Handle<Req, Res> {
    rx: mpsc::UnboundedReceiver<(Req, Reply<Res>)>,
}

/// One request that reached the mock, waiting for the test's answer.
pub struct Pending<Req, Res> {
    pub request: Req,
    reply: Reply<Res>,
}

impl<Req, Res> Pending<Req, Res> {
    pub fn respond(self, res: Res) {
        let _ = self.reply.send(Ok(res));
    }

    pub fn fail(self, msg: &'static str) {
        let _ = self.reply.send(Err(msg.into()));
    }
}

pub fn mock<Req, Res>() -> (Mock<Req, Res>, Handle<Req, Res>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Mock { tx }, Handle { rx })
}

impl<Req, Res> Handle<Req, Res> {
    /// The next request that reached the service, if any did.
    pub fn try_next(&mut self) -> Option<Pending<Req, Res>> {
        self.rx
            .try_recv()
            .ok()
            .map(|(request, reply)| Pending { request, reply })
    }

    /// The next request; fails the test if none reached the service.
    pub fn next(&mut self) -> Pending<Req, Res> {
        self.try_next()
            .expect("a request should have reached the service")
    }
}

impl<Req, Res> Service<Req> for Mock<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    type Response = Res;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Res, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send((req, reply));
        Box::pin(async move { rx.await.map_err(|_| BoxError::from("mock dropped"))? })
    }
}

struct Flag(AtomicBool);

impl ArcWake for Flag {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.store(true, Ordering::SeqCst);
    }
}

/// A future polled by hand with its own waker, so a test can ask whether
/// it was woken.
pub struct Task<F> {
    future: Pin<Box<F>>,
    flag: Arc<Flag>,
}

impl<F: Future> Task<F> {
    pub fn new(future: F) -> Self {
        Task {
            future: Box::pin(future),
            flag: Arc::new(Flag(AtomicBool::new(false))),
        }
    }

    pub fn poll(&mut self) -> Poll<F::Output> {
        self.flag.0.store(false, Ordering::SeqCst);
        let waker = waker(self.flag.clone());
        self.future.as_mut().poll(&mut Context::from_waker(&waker))
    }

    pub fn is_woken(&self) -> bool {
        self.flag.0.load(Ordering::SeqCst)
    }
}

/// Polls `svc` for readiness once with a no-op waker.
pub fn poll_ready<S: Service<R>, R>(svc: &mut S) -> Poll<Result<(), S::Error>> {
    let waker = futures::task::noop_waker();
    svc.poll_ready(&mut Context::from_waker(&waker))
}
