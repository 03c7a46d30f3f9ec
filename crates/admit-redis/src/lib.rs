//! # admit-redis
//!
//! One connection budget for a whole cluster.
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]

mod clock;
mod core;
mod error;
mod node;
mod script;
mod status;

pub use error::Error;
pub use node::{Builder, ClusterLimiter};
pub use status::{BudgetKeys, Cause, ClusterSnapshot, Mode, NodeHealth, NodeStatus, NodeView};
