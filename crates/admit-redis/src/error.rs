//! Errors.

/// Why a cluster limiter could not be built or a Redis call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot give the promised guarantees.
    #[error("invalid cluster limiter configuration: {0}")]
    Config(String),
    /// The local limiter could not be built.
    #[error("could not build the local limiter: {0}")]
    Build(#[from] admit::BuildError),
    /// Redis answered with an error, or the connection failed.
    #[error("redis call failed: {0}; the node keeps serving within its last confirmed share")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within the call deadline.
    #[error(
        "redis did not answer within {0:?}; the node keeps serving within its last confirmed share"
    )]
    Timeout(std::time::Duration),
    /// Redis answered something the protocol does not expect (another
    /// program writing to the same keys, or a version mismatch).
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
}
