//! [`AdaptiveLayer`]: wraps services in [`Adaptive`].

use super::service::Adaptive;
use super::ByStatus;
use admit::adaptive::{attach, Algorithm, Attached, Config, Sampler};
use admit::Limiter;
use std::sync::Arc;
use std::time::Duration;
use tower_layer::Layer;

/// Times every request for an adaptive controller and, unless built with
/// [`observe`](Self::observe), admits it through the controller's limiter;
/// see the [module docs](super).
///
/// Clones (and the services they make) share one sampler and limiter.
#[derive(Debug, Clone)]
pub struct AdaptiveLayer<C = ByStatus> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) classify: C,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) sampler: Sampler,
    pub(crate) admit: bool,
    pub(crate) retry_after: Duration,
    /// Keeps a controller started by [`AdaptiveLayer::spawn`] running for
    /// as long as any clone of the layer or its services lives.
    _attached: Option<Attached>,
}

impl AdaptiveLayer<ByStatus> {
    /// Admits through the sampler's limiter, shedding over the limit, and
    /// reports every admitted request to the sampler's controller.
    pub fn new(sampler: Sampler) -> Self {
        AdaptiveLayer::build(sampler, true, None)
    }

    /// Only reports requests; admission is left to whoever else uses the
    /// limiter (a listener admitting connections, say).
    pub fn observe(sampler: Sampler) -> Self {
        AdaptiveLayer::build(sampler, false, None)
    }

    /// Attaches `algorithm` to `limiter` (see [`admit::adaptive::attach`])
    /// and admits through it; the controller's thread stops when the last
    /// clone of the layer and of its services is dropped.
    pub fn spawn<A>(limiter: Limiter, algorithm: A, config: Config) -> std::io::Result<Self>
    where
        A: Algorithm + Send + 'static,
    {
        let attached = attach(limiter, algorithm, config)?;
        Ok(AdaptiveLayer::build(
            attached.sampler(),
            true,
            Some(attached),
        ))
    }

    fn build(sampler: Sampler, admit: bool, attached: Option<Attached>) -> Self {
        AdaptiveLayer {
            shared: Arc::new(Shared {
                sampler,
                admit,
                retry_after: crate::DEFAULT_RETRY_AFTER,
                _attached: attached,
            }),
            classify: ByStatus,
        }
    }
}

impl<C> AdaptiveLayer<C> {
    /// Reads outcomes with `classify` instead (a closure
    /// `Fn(Result<&Res, &BoxError>) -> Outcome` works, or [`ByResult`](super::ByResult)
    /// for non-HTTP services).
    pub fn classify<C2>(self, classify: C2) -> AdaptiveLayer<C2> {
        AdaptiveLayer {
            shared: self.shared,
            classify,
        }
    }

    /// The `Retry-After` advice of shed requests' [`Overloaded`](crate::Overloaded)
    /// errors (default [`DEFAULT_RETRY_AFTER`](crate::DEFAULT_RETRY_AFTER)). Call it before cloning the layer.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.retry_after = retry_after;
        }
        self
    }

    /// The sampler requests are reported to.
    pub fn sampler(&self) -> &Sampler {
        &self.shared.sampler
    }
}

impl<S, C: Clone> Layer<S> for AdaptiveLayer<C> {
    type Service = Adaptive<S, C>;

    fn layer(&self, inner: S) -> Adaptive<S, C> {
        Adaptive {
            inner,
            shared: self.shared.clone(),
            classify: self.classify.clone(),
        }
    }
}
