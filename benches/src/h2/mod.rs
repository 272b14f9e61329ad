//! SSE over HTTP/2 (h2c, prior knowledge) on loopback TCP: the `loopback`
//! servers (`axum::serve`, whose hyper-util auto builder accepts h2c) read
//! by an `h2` client that carries many streams on each connection.
//!
//! ```text
//! cargo bench -p tower-sse-benches --all-features --no-run   # builds release/load
//! load=${CARGO_TARGET_DIR:-target}/release/load
//! $load h2                                   # one and many, 5 interleaved runs
//! $load h2 --quick                           # a few seconds: CI's smoke run
//! $load h2 --scenarios one --window 1048576 --conn-window 16777216
//! ```
//!
//! Scenarios: `one` (1 connection carrying 100 streams) and `many`
//! (100 connections carrying 100 streams each); every stream sends its
//! events as fast as flow control and backpressure allow.
//!
//! Options: `--runs N` (5; 1 with `--quick`), `--quick`, `--scenarios
//! one,many`, `--impls tower-sse,axum-sse,raw-hyper` (any of `loopback`'s),
//! `--conns N`, `--per-conn N`, `--events N`, `--size B` (override the
//! chosen scenarios'), `--capacity N` (64), `--no-pin`, and the client's
//! HTTP/2 settings: `--window B` (each stream's receive window, h2's
//! default 65535), `--conn-window B` (the connection's, 65535), `--frame B`
//! (the largest DATA frame the server may send, 16384), `--budget
//! unbounded|auto`: h2's budget for small DATA frames received and not yet
//! read; `unbounded` (the default) cannot run out, `auto` is h2's own
//! (half the connection window, at least 25,600 B), which closes the
//! connection with `ENHANCE_YOUR_CALM` ("too_many_data_frames") when
//! frames of one 64 B event each arrive faster than the streams read them
//! (BENCHMARKS.md, "HTTP/2").
//!
//! The client releases flow-control capacity as soon as it has counted a
//! DATA frame, and reports DATA frames and socket reads besides events, so
//! that the report can say how the server framed and wrote its events.

mod client;
mod report;

use std::time::{Duration, Instant};

use crate::{
    Error,
    cli::{Flags, KeyValues, Named, key_values},
    loopback::scenarios::{Imp, Scenario},
    process::{Pinning, Proc},
    stats::{self, Metrics, Results},
};

/// `load h2 …`: the orchestrator, or its client role (the server role is
/// `loopback __server`).
pub(crate) fn main(args: &[String]) -> Result<(), Error> {
    match args.first().map(String::as_str) {
        Some("__client") => {
            let scenario = Scenario::from_args(&args[1..])?;
            let shape = Shape::from_args(&args[1..])?;
            client::client(&scenario, &shape)
        }
        _ => orchestrate(&parse_options(args)?),
    }
}

/// How the streams are carried: connections, streams on each, and the
/// client's HTTP/2 settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub(crate) conns: usize,
    pub(crate) per_conn: usize,
    /// Each stream's receive window (`SETTINGS_INITIAL_WINDOW_SIZE`).
    pub(crate) window: u32,
    /// The connection's receive window.
    pub(crate) conn_window: u32,
    /// `SETTINGS_MAX_FRAME_SIZE`: the largest frame the server may send.
    pub(crate) frame: u32,
    /// h2's budget for small DATA frames received and not yet read (its
    /// `data_frame_budget`); `None`: h2's own (half the connection window,
    /// at least 25,600 B).
    pub(crate) budget: Option<usize>,
}

impl Shape {
    /// h2's defaults: the RFC's 65535-byte windows and 16 KiB frames.
    const H2_DEFAULT_WINDOW: u32 = 65_535;
    const H2_DEFAULT_FRAME: u32 = 16_384;

    /// A small-frame budget that cannot run out: the client releases
    /// capacity as it reads, so what is received and not yet read fits in
    /// the connection window, and each byte of it costs at most 255 B of
    /// h2's accounting (a 1-byte frame counts 256 - 1).
    fn unbounded_budget(conn_window: u32) -> usize {
        conn_window as usize * 255
    }

    fn to_args(self) -> Vec<String> {
        key_values([
            ("conns", self.conns.to_string()),
            ("per_conn", self.per_conn.to_string()),
            ("window", self.window.to_string()),
            ("conn_window", self.conn_window.to_string()),
            ("frame", self.frame.to_string()),
            (
                "budget",
                self.budget.map_or("auto".into(), |b| b.to_string()),
            ),
        ])
    }

    fn from_args(args: &[String]) -> Result<Self, Error> {
        let args = KeyValues::parse(args)?;
        Ok(Self {
            conns: args.num("conns")?,
            per_conn: args.num("per_conn")?,
            window: args.num("window")?,
            conn_window: args.num("conn_window")?,
            frame: args.num("frame")?,
            budget: match args.get("budget")? {
                "auto" => None,
                budget => Some(budget.parse()?),
            },
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} connection(s) x {} streams, client windows: stream {} B, connection {} B, max frame {} B, small-frame budget {}",
            self.conns,
            self.per_conn,
            self.window,
            self.conn_window,
            self.frame,
            self.budget
                .map_or("h2's (auto)".into(), |b| format!("{b} B"))
        )
    }
}

struct Options {
    runs: usize,
    quick: bool,
    pin: bool,
    capacity: usize,
    size: Option<usize>,
    events: Option<usize>,
    conns: Option<usize>,
    per_conn: Option<usize>,
    window: u32,
    conn_window: u32,
    frame: u32,
    /// `--budget auto`: h2's small-frame budget rather than one that
    /// cannot run out.
    h2_budget: bool,
    scenarios: Option<Vec<String>>,
    impls: Vec<Imp>,
}

fn parse_options(args: &[String]) -> Result<Options, Error> {
    let mut options = Options {
        runs: 0,
        quick: false,
        pin: true,
        capacity: 64,
        size: None,
        events: None,
        conns: None,
        per_conn: None,
        window: Shape::H2_DEFAULT_WINDOW,
        conn_window: Shape::H2_DEFAULT_WINDOW,
        frame: Shape::H2_DEFAULT_FRAME,
        h2_budget: false,
        scenarios: None,
        impls: vec![Imp::TowerSse, Imp::AxumSse, Imp::RawHyper],
    };
    let mut runs = None;
    let mut flags = Flags::new(args);
    while let Some(flag) = flags.next_flag() {
        match flag {
            "--quick" => options.quick = true,
            "--no-pin" => options.pin = false,
            "--runs" => runs = Some(flags.value()?),
            "--capacity" => options.capacity = flags.value()?,
            "--size" => options.size = Some(flags.value()?),
            "--events" => options.events = Some(flags.value()?),
            "--conns" => options.conns = Some(flags.value()?),
            "--per-conn" => options.per_conn = Some(flags.value()?),
            "--window" => options.window = flags.value()?,
            "--conn-window" => options.conn_window = flags.value()?,
            "--frame" => options.frame = flags.value()?,
            "--budget" => match flags.value::<String>()?.as_str() {
                "auto" => options.h2_budget = true,
                "unbounded" => options.h2_budget = false,
                other => return Err(format!("--budget {other:?}: auto or unbounded").into()),
            },
            "--scenarios" => options.scenarios = Some(flags.list()?),
            "--impls" => options.impls = flags.names()?,
            _ => return Err(flags.unknown()),
        }
    }
    options.runs = runs.unwrap_or(if options.quick { 1 } else { 5 });
    // HTTP/2's limits (RFC 9113 §6.5.2, §6.9.1): a setting out of them
    // would be a protocol error at the handshake, not a measurement.
    if !(16_384..=16_777_215).contains(&options.frame) {
        return Err("--frame must be 16384..=16777215".into());
    }
    if options.window > i32::MAX as u32 || options.conn_window > i32::MAX as u32 {
        return Err("--window and --conn-window must be at most 2^31-1".into());
    }
    Ok(options)
}

/// The scenarios: (name, connections, streams per connection, events per
/// stream); `quick` shrinks them to a smoke run.
fn scenarios(quick: bool) -> [(&'static str, usize, usize, usize); 2] {
    if quick {
        [("one", 1, 100, 200), ("many", 10, 100, 20)]
    } else {
        [("one", 1, 100, 10_000), ("many", 100, 100, 100)]
    }
}

fn orchestrate(options: &Options) -> Result<(), Error> {
    let pinning = Pinning::detect(options.pin)?;
    println!(
        "HTTP/2 (h2c) SSE benchmark: {} run(s) per implementation, {}",
        options.runs,
        pinning.describe("server pinned to core 0, client to core 1")
    );
    let started = Instant::now();
    // `small` is the loopback scenario whose servers these streams reach.
    let base = Scenario::all(options.quick, options.capacity)
        .into_iter()
        .find(|scenario| scenario.name == "small")
        .ok_or("no small scenario")?;
    for (name, conns, per_conn, events) in scenarios(options.quick) {
        if let Some(names) = &options.scenarios {
            if !names.iter().any(|n| n == name) {
                continue;
            }
        }
        let shape = Shape {
            conns: options.conns.unwrap_or(conns),
            per_conn: options.per_conn.unwrap_or(per_conn),
            window: options.window,
            conn_window: options.conn_window,
            frame: options.frame,
            budget: (!options.h2_budget).then(|| Shape::unbounded_budget(options.conn_window)),
        };
        let mut scenario = base.clone();
        scenario.name = name.into();
        scenario.streams = shape.conns * shape.per_conn;
        scenario.events = options.events.unwrap_or(events);
        scenario.size = options.size.unwrap_or(scenario.size);
        println!(
            "\n== h2 {name}: {}; {}",
            shape.describe(),
            scenario.describe()
        );
        let mut results = Results::new();
        for run in 0..options.runs {
            for imp in stats::interleaved(&options.impls, run) {
                scenario.imp = imp;
                results.push(imp, run_once(&pinning, &scenario, shape)?);
            }
        }
        report::report(&options.impls, &results);
    }
    println!("\ntotal time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// One measurement: a fresh `loopback` server, a fresh h2 client, the
/// client's figures.
fn run_once(pinning: &Pinning, scenario: &Scenario, shape: Shape) -> Result<Metrics, Error> {
    // No single step of a run takes this long.
    const NO_LIMIT: Duration = Duration::from_secs(24 * 3600);
    let mut command = pinning.role(0, "loopback", "__server");
    command.args(scenario.to_args());
    let server = Proc::spawn(&format!("{} server", scenario.imp.name()), command)?;
    let mut scenario = scenario.clone();
    scenario.port = server.expect("port ", Duration::from_secs(30))?.parse()?;
    scenario.server_pid = server.pid();
    let mut command = pinning.role(1, "h2", "__client");
    command.args(scenario.to_args()).args(shape.to_args());
    let client = Proc::spawn(&format!("{} h2 client", scenario.imp.name()), command)?;
    stats::parse_result(&client.expect("RESULT ", NO_LIMIT)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn a_shape_reaches_the_client_as_it_left() {
        for budget in [None, Some(Shape::unbounded_budget(65_535))] {
            let shape = Shape {
                conns: 3,
                per_conn: 7,
                window: 1 << 20,
                conn_window: 1 << 24,
                frame: 1 << 18,
                budget,
            };
            let back = Shape::from_args(&shape.to_args()).unwrap();
            assert_eq!(format!("{back:?}"), format!("{shape:?}"));
        }
    }

    #[test]
    fn settings_outside_http2_limits_are_refused() {
        assert!(parse_options(&args("--frame 16383")).is_err());
        assert!(parse_options(&args("--frame 16777216")).is_err());
        assert!(parse_options(&args("--window 2147483648")).is_err());
        assert!(parse_options(&args("--budget lots")).is_err());
        let options = parse_options(&args("--frame 16777215 --budget auto")).unwrap();
        assert!(options.h2_budget);
        assert_eq!(options.runs, 5);
    }
}
