//! Model checks of the queue (see `src/sync.rs`).
