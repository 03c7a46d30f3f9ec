//! [`AdmitLayer`]: wraps services in [`Admit`].

use crate::admission::Config;
pub use crate::admission::OnFull;
use crate::service::Admit;
use admit::Limiter;
use std::time::Duration;
use tower_layer::Layer;

/// Applies request admission to a service: every request takes a permit from
/// one shared [`Limiter`] when it is called, and gives it back when its
/// response future completes or is dropped.
///
/// Unlike tower's `ConcurrencyLimitLayer`, `poll_ready` never takes a permit
/// (a keep-alive connection waiting for its next request holds nothing), and
/// a request that finds the limiter full fails at once with
/// [`Overloaded`](crate::Overloaded) unless the layer is set to
/// [`queue`](Self::queue).
///
/// ```
/// use admit::Limiter;
/// use admit_tower::AdmitLayer;
/// use tower::ServiceBuilder;
///
/// let limiter = Limiter::builder().capacity(64).queue_limit(32).build().unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(AdmitLayer::new(limiter).queue())
///     .service_fn(|req: String| async move { Ok::<_, std::io::Error>(req.len()) });
/// # let _ = svc;
/// ```
#[derive(Debug, Clone)]
pub struct AdmitLayer {
    config: Config,
}

impl AdmitLayer {
    /// A layer that admits through `limiter` and sheds when it is full.
    pub fn new(limiter: Limiter) -> AdmitLayer {
        AdmitLayer {
            config: Config::new(limiter),
        }
    }

    /// Waits in the limiter's queue instead of shedding at once; requests
    /// are shed only when the queue is full (its size is the limiter's
    /// [`queue_limit`](admit::Builder::queue_limit); with a limit of 0 this
    /// behaves like shedding). The inner service must be `Clone` either way,
    /// so that a waiting request can carry a ready clone with it.
    pub fn queue(self) -> AdmitLayer {
        self.on_full(OnFull::Queue)
    }

    /// Sets what happens when the limiter is full.
    pub fn on_full(mut self, on_full: OnFull) -> AdmitLayer {
        self.config.on_full = on_full;
        self
    }

    /// The `Retry-After` advice carried by [`Overloaded`](crate::Overloaded)
    /// errors (default [`DEFAULT_RETRY_AFTER`](crate::DEFAULT_RETRY_AFTER)).
    pub fn retry_after(mut self, retry_after: Duration) -> AdmitLayer {
        self.config.retry_after = retry_after;
        self
    }

    /// How long a request may wait in the queue (with [`queue`](Self::queue))
    /// before it is shed with [`Overloaded`](crate::Overloaded) for
    /// [`Rejected::Timeout`](admit::Rejected::Timeout). The wait is the
    /// limiter's own [`acquire_until`](admit::Limiter::acquire_until), so
    /// the limiter's health counts it as a timeout and, with admit's
    /// `metrics` feature, the `admit_wait_seconds` histogram records it
    /// with outcome `timeout`. Without it a request waits as long as it
    /// takes. The timer is tokio's: the service must run in a tokio runtime.
    pub fn queue_timeout(mut self, timeout: Duration) -> AdmitLayer {
        self.config.queue_timeout = Some(timeout);
        self
    }

    /// The limiter this layer admits through.
    pub fn limiter(&self) -> &Limiter {
        &self.config.limiter
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }
}

impl<S> Layer<S> for AdmitLayer {
    type Service = Admit<S>;

    fn layer(&self, inner: S) -> Admit<S> {
        Admit::from_config(inner, self.config.clone())
    }
}
