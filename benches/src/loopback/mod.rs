//! End-to-end load benchmark over loopback TCP: tower-sse against
//! `axum::response::sse::Sse` (with `KeepAlive`) and a raw hyper body that
//! yields pre-encoded bytes (the reference).
//!
//! ```text
//! cargo bench -p tower-sse-benches --all-features --no-run   # builds release/load
//! load=${CARGO_TARGET_DIR:-target}/release/load
//! $load loopback                       # every scenario, 5 interleaved runs
//! $load loopback --quick               # a few seconds: CI's smoke run
//! $load loopback --runs 7 --scenarios small,fanout \
//!     --impls tower-sse,axum-sse,raw-hyper,raw-join --capacity 64
//! $load loopback --scenarios small --size 1024 --events 500000
//! ```
//!
//! Options: `--runs N` (5; 1 with `--quick`), `--quick`, `--scenarios
//! small,large,fanout,idle,latency`, `--impls` (below), `--capacity N` (64),
//! `--size B`, `--events N` and `--streams N` (override the chosen
//! scenarios'), `--static-data`, `--str-data`, `--no-pin`.
//!
//! Data: by default each producer starts every event from a fresh `String`
//! (what a serialiser hands an application); tower-sse's `Event` takes it by
//! value, axum's `Event::data` copies it. `--static-data` hands both a
//! `&'static str` instead, each through its API for one: axum's
//! `Event::data` copies it once, tower-sse's `Event::from_static` keeps the
//! reference until it encodes (also one copy). `--str-data` hands both the
//! same `&str` through the quick start's API: `Event::new(&str)` (copied
//! once, into its wire form) and axum's `Event::data(&str)` (copied once).
//!
//! Every measurement is a fresh server process and a fresh client process
//! (this binary re-executed as `loopback __server` / `loopback __client`),
//! pinned with `taskset` to cores 0 and 1 when the machine has two.
//! Implementations are interleaved A B C, C B A, … and each scenario prints
//! medians with min..max, the server's and the client's CPU share, and the
//! ratio of each implementation to axum's `Sse` run by run.
//!
//! All servers are the same `axum::serve` on a current-thread tokio runtime
//! with `TCP_NODELAY`; only the route's body differs:
//!
//! - `tower-sse`: an `SseLayer` whose ready function sends `Event::new(data)`
//!   through `EventSender::send` (encoding happens in the producer task);
//! - `axum-sse`: `Sse::new(stream of axum Event from an mpsc)` with `KeepAlive`,
//!   the producer task building `Event::default().data(data)`;
//! - `raw-hyper`: an `http_body::Body` over an mpsc of pre-encoded `Bytes`,
//!   one frame per event;
//! - `raw-copy`: the same, each event a fresh copy of the pre-encoded bytes
//!   (one copy and no scan: the least any library can do with a `&str` it
//!   only borrows);
//! - `raw-join`: the same, joining every event already queued into one frame
//!   (up to 64 KiB);
//! - `bare`: a body that never yields, without task or channel (the floor for
//!   the memory of an idle stream);
//! - `tower-sse-ctx` (idle only, with `--impls`): tower-sse with a ready
//!   function that keeps its `StreamContext`, so the copy of the request stays;
//! - `tower-sse-quickstart` (idle only, with `--impls`): the README's quick
//!   start, an `async fn ready(events, _ctx)` (which keeps its context until
//!   it returns), with a disconnect callback that reads `ctx.uri()`;
//! - `tower-sse-spawned` (with `--impls`): tower-sse with `spawn_ready()`, the
//!   ready function a task of its own feeding the buffer;
//! - `tower-sse-stall` (with `--impls`): tower-sse with a 60 s
//!   `stall_timeout`, each frame tracked until written;
//! - `tower-sse-metrics` (with `--impls`, feature `metrics`): tower-sse with
//!   a named layer, its metrics recorded into a Prometheus recorder (the
//!   report adds its ratio to `tower-sse`, run by run).
//!
//! The channel capacity (`--capacity`) is the same for every implementation.

pub(crate) mod client;
mod recorder;
mod report;
pub(crate) mod scenarios;
mod servers;

use std::time::{Duration, Instant};

use scenarios::{Imp, Scenario};

use crate::{
    Error,
    cli::{Flags, Named},
    process::{Pinning, Proc},
    stats::{self, Metrics, Results},
};

/// `load loopback …`: the orchestrator, or one of its roles.
pub(crate) fn main(args: &[String]) -> Result<(), Error> {
    match args.first().map(String::as_str) {
        Some("__server") => servers::server(&Scenario::from_args(&args[1..])?),
        Some("__client") => client::client(&Scenario::from_args(&args[1..])?),
        _ => orchestrate(&parse_options(args)?),
    }
}

struct Options {
    runs: usize,
    quick: bool,
    pin: bool,
    capacity: usize,
    size: Option<usize>,
    events: Option<usize>,
    streams: Option<usize>,
    static_data: bool,
    str_data: bool,
    scenarios: Option<Vec<String>>,
    impls: Option<Vec<Imp>>,
}

fn parse_options(args: &[String]) -> Result<Options, Error> {
    let mut options = Options {
        runs: 0,
        quick: false,
        pin: true,
        capacity: 64,
        size: None,
        events: None,
        streams: None,
        static_data: false,
        str_data: false,
        scenarios: None,
        impls: None,
    };
    let mut runs = None;
    let mut flags = Flags::new(args);
    while let Some(flag) = flags.next_flag() {
        match flag {
            "--quick" => options.quick = true,
            "--no-pin" => options.pin = false,
            "--static-data" => options.static_data = true,
            "--str-data" => options.str_data = true,
            "--runs" => runs = Some(flags.value()?),
            "--capacity" => options.capacity = flags.value()?,
            "--size" => options.size = Some(flags.value()?),
            "--events" => options.events = Some(flags.value()?),
            "--streams" => options.streams = Some(flags.value()?),
            "--scenarios" => options.scenarios = Some(flags.list()?),
            "--impls" => options.impls = Some(flags.names()?),
            _ => return Err(flags.unknown()),
        }
    }
    options.runs = runs.unwrap_or(if options.quick { 1 } else { 5 });
    Ok(options)
}

fn orchestrate(options: &Options) -> Result<(), Error> {
    let pinning = Pinning::detect(options.pin)?;
    println!(
        "loopback SSE benchmark: {} run(s) per implementation, {}",
        options.runs,
        pinning.describe("server pinned to core 0, client to core 1")
    );
    let started = Instant::now();
    for mut scenario in Scenario::all(options.quick, options.capacity) {
        if let Some(names) = &options.scenarios {
            if !names.contains(&scenario.name) {
                continue;
            }
        }
        scenario.size = options.size.unwrap_or(scenario.size);
        scenario.events = options.events.unwrap_or(scenario.events);
        scenario.streams = options.streams.unwrap_or(scenario.streams);
        scenario.static_data = options.static_data;
        scenario.str_data = options.str_data;
        let impls = options
            .impls
            .clone()
            .unwrap_or_else(|| scenario.default_impls());
        println!("\n== {}: {}", scenario.name, scenario.describe());
        let mut results = Results::new();
        for run in 0..options.runs {
            for imp in stats::interleaved(&impls, run) {
                scenario.imp = imp;
                results.push(imp, run_once(&pinning, &scenario)?);
            }
        }
        report::report(&scenario, &impls, &results);
    }
    println!("\ntotal time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// One measurement: a fresh server, a fresh client, the client's figures.
fn run_once(pinning: &Pinning, scenario: &Scenario) -> Result<Metrics, Error> {
    // No single step of a run takes this long.
    const NO_LIMIT: Duration = Duration::from_secs(24 * 3600);
    let mut command = pinning.role(0, "loopback", "__server");
    command.args(scenario.to_args());
    let server = Proc::spawn(&format!("{} server", scenario.imp.name()), command)?;
    let mut scenario = scenario.clone();
    scenario.port = server.expect("port ", Duration::from_secs(30))?.parse()?;
    scenario.server_pid = server.pid();
    let mut command = pinning.role(1, "loopback", "__client");
    command.args(scenario.to_args());
    let client = Proc::spawn(&format!("{} client", scenario.imp.name()), command)?;
    stats::parse_result(&client.expect("RESULT ", NO_LIMIT)?)
}
