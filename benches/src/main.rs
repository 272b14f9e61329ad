//! tower-sse's load harness: end-to-end benchmarks over loopback TCP, each
//! measurement in fresh server and client processes (this binary
//! re-executed in a role).
//!
//! ```text
//! cargo bench -p tower-sse-benches --all-features --no-run   # builds release/load
//! target/release/load loopback [options]
//! target/release/load fanout [options]
//! target/release/load h2 [options]
//! ```
//!
//! (`cargo run --release -p tower-sse-benches --features redis --bin load --
//! …` works too, but builds without the dev-dependencies' features, so its
//! binary is not quite the one `cargo bench` and CI build.)
//!
//! - `loopback`: one producer per stream; tower-sse against
//!   `axum::response::sse::Sse` and a raw hyper body (`loopback/mod.rs`
//!   lists its options);
//! - `fanout`: one topic, many subscribers; tower-sse's `Hub` against
//!   `tokio::sync::broadcast` + axum's `Sse`, and on Redis
//!   (`fanout/mod.rs` lists its options);
//! - `h2`: the `loopback` servers over HTTP/2 (h2c), many streams on each
//!   connection (`h2/mod.rs` lists its options).
//!
//! BENCHMARKS.md has the figures and how to read them.

mod chunked;
mod cli;
mod client;
mod fanout;
mod h2;
mod loopback;
mod process;
mod stats;

/// Every error of the harness.
type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("loopback") => loopback::main(&args[1..]),
        Some("fanout") => fanout::main(&args[1..]),
        Some("h2") => h2::main(&args[1..]),
        _ => Err("usage: load loopback|fanout|h2 [options] (see BENCHMARKS.md)".into()),
    }
}
