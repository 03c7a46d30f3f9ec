//! What a controller tells the limiter's health handle.
//!
//! # Implementation notes
//!
//! One controller writes; any number of health snapshots read. The
//! algorithm, the reason and the limit share one word, so a reader never
//! sees a limit with another decision's reason; the bounds and the count
//! of decisions sit in words of their own and may be one decision apart
//! from it. `Release` on the writes pairs with `Acquire` on the reads so a
//! reader that sees a decision also sees the bounds written before it.

use super::controller::{Bounds, Kind, Reason};
use crate::Limiter;
use std::sync::atomic::{AtomicU64, Ordering};

const ATTACHED: u64 = 1 << 63;

/// The adaptive controller as the limiter's health snapshot sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AdaptiveView {
    /// The algorithm.
    pub algorithm: super::Kind,
    /// The limit it last set.
    pub limit: u32,
    /// Its floor.
    pub min: u32,
    /// Its ceiling.
    pub max: u32,
    /// Why it last moved (or kept) the limit.
    pub last_decision: super::Reason,
    /// Windows judged so far.
    pub decisions: u64,
}

pub(crate) struct Published {
    pub(crate) kind: Kind,
    pub(crate) limit: u32,
    pub(crate) bounds: Bounds,
    pub(crate) reason: Reason,
    pub(crate) decisions: u64,
}

/// Lives in the limiter's shared health state.
pub(crate) struct AdaptiveShared {
    /// `ATTACHED | kind << 56 | reason << 48 | limit`.
    word: AtomicU64,
    /// `min << 32 | max`.
    bounds: AtomicU64,
    decisions: AtomicU64,
}

impl AdaptiveShared {
    pub(crate) fn new() -> AdaptiveShared {
        AdaptiveShared {
            word: AtomicU64::new(0),
            bounds: AtomicU64::new(0),
            decisions: AtomicU64::new(0),
        }
    }

    pub(crate) fn publish(&self, p: Published) {
        let b = (u64::from(p.bounds.min) << 32) | u64::from(p.bounds.max);
        self.bounds.store(b, Ordering::Release);
        self.decisions.store(p.decisions, Ordering::Release);
        let word = ATTACHED | (p.kind.code() << 56) | (p.reason.code() << 48) | u64::from(p.limit);
        self.word.store(word, Ordering::Release);
    }

    pub(crate) fn detach(&self) {
        self.word.store(0, Ordering::Release);
    }

    pub(crate) fn view(&self) -> Option<AdaptiveView> {
        let word = self.word.load(Ordering::Acquire);
        if word & ATTACHED == 0 {
            return None;
        }
        let b = self.bounds.load(Ordering::Acquire);
        Some(AdaptiveView {
            algorithm: Kind::from_code((word >> 56) & 0x7f),
            limit: (word & 0xffff_ffff) as u32,
            min: (b >> 32) as u32,
            max: b as u32,
            last_decision: Reason::from_code((word >> 48) & 0xff),
            decisions: self.decisions.load(Ordering::Acquire),
        })
    }
}

pub(crate) fn shared(limiter: &Limiter) -> &AdaptiveShared {
    &limiter.inner.health.adaptive
}
