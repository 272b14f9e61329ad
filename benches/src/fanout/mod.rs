//! Fan-out benchmark over loopback TCP: one topic, many subscribers, events
//! published at a fixed rate.
//!
//! ```text
//! cargo bench -p tower-sse-benches --all-features --no-run   # builds release/load
//! load=${CARGO_TARGET_DIR:-target}/release/load
//! $load fanout --sections memory     # 10,000 subscribers at 5, 50, 200 events/s
//! $load fanout                       # plus 1,000 subscribers on two Redis nodes
//! $load fanout --quick               # CI smoke run (500 subscribers, 1 s): 8-15 s
//! $load fanout --runs 1 --subscribers 2000 --rates 20 --secs 3 \
//!     --impls hub,broadcast,layer-broadcast --sections memory
//! ```
//!
//! Options: `--quick` (or `FANOUT_QUICK=1`), `--runs N` (A B / B A pairs,
//! default 2: A B B A A B B A), `--subscribers N` (10,000), `--rates R,..`
//! (events/s; default 5, 50 and 200: one write per event per subscriber
//! with CPU to spare, several events per write with the server core busy,
//! and more than one core delivers), `--secs S` (publishing time, 5),
//! `--impls hub,broadcast[,layer-broadcast]`, `--redis-subscribers N`
//! (1,000), `--redis-rates R,..` (50 and 100), `--sections memory,redis`,
//! `--no-pin`, `--noise-limit PCT` (20), `--buffer N` (the tower-sse layers'
//! buffer; default tower-sse's, 10), `--runtimes current,multi` (the servers'
//! tokio scheduler: current-thread and/or multi-thread with one worker; the
//! full run does both, `--quick` current-thread only).
//!
//! The machine may be shared: before each run the bench waits (up to 120 s)
//! until other processes use less than `--noise-limit` percent of a core, and
//! a run during which they used more is done again (3 attempts at most; the
//! last one counts). `--quick` does neither.
//!
//! Sections:
//!
//! - `memory`: tower-sse's in-memory `Hub` (`hub.layer(..)`: streams read
//!   the topic's ring from the body; default heartbeat) against a hand-rolled
//!   fan-out: a `tokio::sync::broadcast` channel of
//!   `axum::response::sse::Event` (built once by the publisher, cloned by
//!   every receiver) and, per subscriber, `Sse::new(stream over the
//!   receiver).keep_alive(..)` that skips `Lagged`. The broadcast capacity
//!   equals the hub's history (1,000), so both have the same slack before a
//!   slow subscriber loses events. Diagnostic implementations (only with
//!   `--impls`): `hub-ready`, the same hub through its compatible ready
//!   function (`SseLayer::new(hub.ready(..))`, a buffer and a body-polled
//!   ready function per stream), and `layer-broadcast`, a tower-sse
//!   `SseLayer` whose ready function forwards a broadcast receiver with
//!   `EventSender::send`: the layer's task and channel without the hub.
//! - `redis` (built with `--features redis`): the in-memory hub on one node
//!   against the Redis hub on two nodes (two server processes, each with its
//!   own `build_redis` hub and half of the subscribers; the publisher
//!   publishes on the first). Uses `REDIS_URL`, or starts `redis-server` on a
//!   free loopback port with its own `--dir` and `--save ""`, stopped at the
//!   end; skipped (with a message) when neither is available.
//!
//! Every measurement uses fresh processes: this binary re-executed as
//! `fanout __server` (one per node) and `fanout __client`. With two cores and
//! `taskset`, servers are pinned to core 0 and the client (and the Redis
//! server this bench starts) to core 1. The orchestrator talks to them over
//! stdin/stdout:
//!
//! 1. the servers start and print their port; their idle RSS is read;
//! 2. the client opens every connection (raw HTTP/1.1 `GET /events`, at most
//!    256 connecting at a time) and says so once every response head arrived;
//! 3. each server waits until it counts its subscribers (`Hub::subscribers`,
//!    `broadcast::Sender::receiver_count`), then 0.5 s more; RSS is read again:
//!    (RSS - idle RSS) / subscribers is the memory per subscriber;
//! 4. the publisher, a task inside the first server process, publishes
//!    `rate x secs` events at a fixed rate (a tokio interval), each carrying
//!    its sequence number and the wall clock (`SystemTime`, ns) at the publish
//!    call; the client stamps every read with the same clock, so latency is
//!    publish call to bytes read by the client (same machine, same clock);
//! 5. the client reads until every connection has the last event (or a drain
//!    timeout after the publisher finished), checks every connection's
//!    sequence numbers (missing, duplicate or out of order), counts `lagged`
//!    notices, and reports latency percentiles over every (subscriber, event).
//!
//! Delivered events/s is events received over all subscribers divided by
//! the time from the first publish to the last event read. CPU shares are
//! CPU time (all threads, `/proc/<pid>/task/*/schedstat`) from the first
//! publish to the client's last read, over that wall time; "others' CPU" is
//! the machine's busy time (`/proc/stat`) minus these processes': other load
//! that disturbed the run. Implementations are interleaved A B, B A, … and
//! ratios are taken run by run (each B against the A next to it).

mod client;
mod redis;
mod report;
mod runs;
mod servers;

use std::time::{Duration, Instant};

use crate::{
    Error,
    cli::{Flags, KeyValues, Named},
    process::Pinning,
};

/// The one topic every subscriber follows.
const TOPIC: &str = "fanout";
/// The hub's history and the broadcast channel's capacity.
const SLACK: usize = 1_000;
/// The heartbeat of both implementations (tower-sse's default).
const HEARTBEAT: Duration = Duration::from_secs(10);
/// The longest any single step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

/// `load fanout …`: the orchestrator, or one of its roles.
pub(crate) fn main(args: &[String]) -> Result<(), Error> {
    match args.first().map(String::as_str) {
        Some("__server") => servers::server(&KeyValues::parse(&args[1..])?),
        Some("__client") => client::client(&KeyValues::parse(&args[1..])?),
        _ => orchestrate(&parse_options(args)?),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Imp {
    /// tower-sse's in-memory hub, served from the body (`Hub::layer`).
    Hub,
    /// Diagnostic: the in-memory hub through its compatible ready function
    /// (`SseLayer::new(hub.ready(..))`: a buffer and a body-polled ready
    /// function per stream).
    HubReady,
    /// `tokio::sync::broadcast` + `axum::response::sse::Sse`.
    Broadcast,
    /// tower-sse's hub on Redis Streams, two nodes.
    Redis,
    /// Diagnostic: a tower-sse `SseLayer` whose ready function forwards a
    /// `tokio::sync::broadcast` receiver with `EventSender::send` (the
    /// layer's task and channel without the hub).
    LayerBroadcast,
}

impl Named for Imp {
    const ALL: &'static [Imp] = &[
        Imp::Hub,
        Imp::HubReady,
        Imp::Broadcast,
        Imp::Redis,
        Imp::LayerBroadcast,
    ];

    fn name(self) -> &'static str {
        match self {
            Imp::Hub => "hub",
            Imp::HubReady => "hub-ready",
            Imp::Broadcast => "broadcast",
            Imp::Redis => "redis-2-nodes",
            Imp::LayerBroadcast => "layer-broadcast",
        }
    }
}

impl Imp {
    fn label(self) -> &'static str {
        match self {
            Imp::Hub => "tower-sse Hub (in memory)",
            Imp::HubReady => "tower-sse Hub::ready (in memory)",
            Imp::Broadcast => "broadcast + axum Sse",
            Imp::Redis => "tower-sse Hub on Redis, 2 nodes",
            Imp::LayerBroadcast => "broadcast + tower-sse SseLayer",
        }
    }
}

#[derive(Clone)]
struct Options {
    quick: bool,
    runs: usize,
    pin: bool,
    subscribers: usize,
    rates: Vec<u64>,
    secs: f64,
    impls: Vec<Imp>,
    redis_subscribers: usize,
    redis_rates: Vec<u64>,
    noise_limit: f64,
    buffer: Option<usize>,
    runtimes: Vec<String>,
    sections: Vec<String>,
}

fn parse_options(args: &[String]) -> Result<Options, Error> {
    let quick = args.iter().any(|arg| arg == "--quick")
        || std::env::var_os("FANOUT_QUICK").is_some_and(|v| !v.is_empty() && v != "0");
    let mut options = Options {
        quick,
        runs: if quick { 1 } else { 2 },
        pin: true,
        subscribers: if quick { 500 } else { 10_000 },
        rates: if quick { vec![20] } else { vec![5, 50, 200] },
        secs: if quick { 1.0 } else { 5.0 },
        impls: vec![Imp::Hub, Imp::Broadcast],
        redis_subscribers: if quick { 200 } else { 1_000 },
        redis_rates: if quick { vec![50] } else { vec![50, 100] },
        noise_limit: if quick { f64::INFINITY } else { 0.2 },
        buffer: None,
        runtimes: if quick {
            vec!["current".into()]
        } else {
            vec!["current".into(), "multi".into()]
        },
        sections: vec!["memory".into(), "redis".into()],
    };
    let mut flags = Flags::new(args);
    while let Some(flag) = flags.next_flag() {
        match flag {
            "--quick" => {}
            "--no-pin" => options.pin = false,
            "--buffer" => options.buffer = Some(flags.value()?),
            "--runtimes" | "--runtime" => options.runtimes = flags.list()?,
            "--noise-limit" => options.noise_limit = flags.value::<f64>()? / 100.0,
            "--runs" => options.runs = flags.value()?,
            "--subscribers" => options.subscribers = flags.value()?,
            "--rates" | "--rate" => options.rates = flags.list()?,
            "--impls" => options.impls = flags.names()?,
            "--secs" => options.secs = flags.value()?,
            "--redis-subscribers" => options.redis_subscribers = flags.value()?,
            "--redis-rates" | "--redis-rate" => options.redis_rates = flags.list()?,
            "--sections" => options.sections = flags.list()?,
            _ => return Err(flags.unknown()),
        }
    }
    let rates_ok = !options.rates.is_empty()
        && !options.rates.contains(&0)
        && !options.redis_rates.contains(&0);
    if options.runs == 0 || options.subscribers == 0 || !rates_ok || options.secs <= 0.0 {
        return Err("--runs, --subscribers, --rates and --secs must be positive".into());
    }
    if options
        .runtimes
        .iter()
        .any(|runtime| runtime != "current" && runtime != "multi")
    {
        return Err("--runtimes takes current, multi or both".into());
    }
    if options.impls.len() < 2 || options.impls.contains(&Imp::Redis) {
        return Err("--impls takes two or more of hub, broadcast, layer-broadcast".into());
    }
    Ok(options)
}

fn orchestrate(options: &Options) -> Result<(), Error> {
    let pinning = Pinning::detect(options.pin)?;
    println!(
        "fan-out benchmark{}: {} run(s) per implementation, interleaved; {}",
        if options.quick { " (quick)" } else { "" },
        options.runs * 2,
        pinning.describe("servers pinned to core 0, client (and redis-server) to core 1")
    );
    let started = Instant::now();
    for runtime in &options.runtimes {
        let placement = runs::Placement {
            pinning: pinning.clone(),
            noise_limit: options.noise_limit,
            quiet_wait: if options.quick {
                Duration::ZERO
            } else {
                Duration::from_secs(120)
            },
            buffer: options.buffer,
            runtime: runtime.clone(),
        };
        println!(
            "\n#### servers on tokio's {} runtime{}",
            if runtime == "multi" {
                "multi-thread (1 worker)"
            } else {
                "current-thread"
            },
            match placement.buffer {
                Some(buffer) => format!("; tower-sse layers' buffer {buffer} (default 10)"),
                None => String::new(),
            }
        );
        if options.sections.iter().any(|s| s == "memory") {
            for &rate in &options.rates {
                let section = runs::Section {
                    name: "memory",
                    impls: options.impls.clone(),
                    subscribers: options.subscribers,
                    rate,
                    secs: options.secs,
                    redis: None,
                    redis_pid: None,
                };
                runs::run_section(&placement, &section, options.runs)?;
            }
        }
        if options.sections.iter().any(|s| s == "redis") {
            redis::section(&placement, options)?;
        }
    }
    println!("\ntotal time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
