//! The synchronisation the per-stream queue is built on: std's, or loom's
//! when the crate is built for model checking
//! (`RUSTFLAGS="--cfg tower_sse_loom" CARGO_TARGET_DIR=target/loom cargo test --lib --release loom`,
//! a target directory of its own, since the flag rebuilds every dependency).

#[cfg(tower_sse_loom)]
pub(crate) use loom::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicBool, Ordering},
};
#[cfg(not(tower_sse_loom))]
pub(crate) use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicBool, Ordering},
};
/// Tokio's cooperative budget: outside a runtime (and so under loom) it
/// never runs out.
pub(crate) use tokio::task::coop::poll_proceed;
