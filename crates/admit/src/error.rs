//! Why a permit was not granted, and other errors.

/// Why the limiter did not grant a permit.
///
/// Every rejection is counted by reason in [`Snapshot::rejected`](crate::Snapshot).
/// Adapters that refuse a caller for a reason of their own (a per-address cap,
/// a wait that timed out) report it with [`Limiter::record_rejection`](crate::Limiter::record_rejection)
/// so the health snapshot tells the whole story.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Rejected {
    /// Every permit is in use (or only reserved headroom is left).
    #[error("at capacity: every permit is in use; retry later or raise the capacity")]
    Full,
    /// The wait queue already holds as many waiters as it may.
    #[error("wait queue full: too many callers are already waiting; retry later")]
    QueueFull,
    /// The limiter was closed and admits no one any more.
    #[error("limiter closed: it admits no new callers; stop or use another limiter")]
    Closed,
    /// A bounded wait for a permit ran out (reported by adapters).
    #[error("timed out waiting for a permit; retry later")]
    Timeout,
    /// The caller's address already holds its share of permits (reported by adapters).
    #[error("per-address limit reached: this peer already holds its share of connections")]
    PerIp,
}

impl Rejected {
    /// Every reason, in the order snapshots list them.
    pub const ALL: [Rejected; 5] = [
        Rejected::Full,
        Rejected::QueueFull,
        Rejected::Closed,
        Rejected::Timeout,
        Rejected::PerIp,
    ];

    /// A short, stable label for metrics and JSON (`"full"`, `"queue_full"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Full => "full",
            Rejected::QueueFull => "queue_full",
            Rejected::Closed => "closed",
            Rejected::Timeout => "timeout",
            Rejected::PerIp => "per_ip",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Rejected::Full => 0,
            Rejected::QueueFull => 1,
            Rejected::Closed => 2,
            Rejected::Timeout => 3,
            Rejected::PerIp => 4,
        }
    }
}

/// A capacity change the limiter cannot make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("capacity {requested} is above this limiter's max_capacity {max}; build it with a larger max_capacity")]
pub struct CapacityError {
    /// The capacity that was asked for.
    pub requested: u32,
    /// The most this limiter can hold, fixed when it was built.
    pub max: u32,
}

/// A limiter configuration that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// `capacity` is larger than `max_capacity`.
    #[error(
        "capacity {capacity} exceeds max_capacity {max}; raise max_capacity or lower capacity"
    )]
    CapacityAboveMax {
        /// Requested capacity.
        capacity: u32,
        /// Requested maximum.
        max: u32,
    },
    /// `max_capacity` is larger than the limiter can represent.
    #[error("max_capacity {0} is too large; the most a limiter supports is 1048575")]
    MaxTooLarge(u32),
    /// `queue_limit` is larger than the wait queue supports.
    #[error("queue_limit {0} is too large; the most a limiter supports is 1024")]
    QueueTooLarge(u32),
}

/// So that `build()?` works in a function returning `std::io::Result`, as a
/// server's `main` often does.
///
/// ```
/// fn main() -> std::io::Result<()> {
///     let limiter = admit::Limiter::builder().capacity(10).build()?;
///     assert_eq!(limiter.capacity(), 10);
///     Ok(())
/// }
/// ```
impl From<BuildError> for std::io::Error {
    fn from(e: BuildError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}
