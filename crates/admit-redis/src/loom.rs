//! Atomics from loom under `--cfg admit_loom`, from std otherwise.

#[cfg(admit_loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(admit_loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
