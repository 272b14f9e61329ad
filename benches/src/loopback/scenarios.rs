//! The implementations compared and the scenarios they run.

use std::time::Duration;

use crate::{
    Error,
    cli::{KeyValues, Named, key_values},
    stats::now_ns,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Imp {
    TowerSse,
    /// Idle only: a ready function that keeps its `StreamContext` (as an
    /// `async fn ready(events, _ctx)` does), so the stream keeps the copy of
    /// the request.
    TowerSseCtx,
    /// Idle only: the README's quick start, an `async fn ready(events, _ctx)`
    /// (which keeps its context), with a disconnect callback (which keeps it too).
    TowerSseQuickstart,
    /// tower-sse with `spawn_ready()`.
    TowerSseSpawned,
    /// tower-sse with a stall timeout.
    TowerSseStall,
    /// tower-sse with a named layer recording into a Prometheus recorder
    /// (feature `metrics`).
    TowerSseMetrics,
    AxumSse,
    RawHyper,
    /// The raw body, each event copied from the pre-encoded bytes on send.
    RawCopy,
    RawJoin,
    Bare,
}

impl Named for Imp {
    const ALL: &'static [Imp] = &[
        Imp::TowerSse,
        Imp::TowerSseCtx,
        Imp::TowerSseQuickstart,
        Imp::TowerSseSpawned,
        Imp::TowerSseStall,
        Imp::TowerSseMetrics,
        Imp::AxumSse,
        Imp::RawHyper,
        Imp::RawCopy,
        Imp::RawJoin,
        Imp::Bare,
    ];

    fn name(self) -> &'static str {
        match self {
            Imp::TowerSse => "tower-sse",
            Imp::TowerSseCtx => "tower-sse-ctx",
            Imp::TowerSseQuickstart => "tower-sse-quickstart",
            Imp::TowerSseSpawned => "tower-sse-spawned",
            Imp::TowerSseStall => "tower-sse-stall",
            Imp::TowerSseMetrics => "tower-sse-metrics",
            Imp::AxumSse => "axum-sse",
            Imp::RawHyper => "raw-hyper",
            Imp::RawCopy => "raw-copy",
            Imp::RawJoin => "raw-join",
            Imp::Bare => "bare",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Producers send `events` as fast as backpressure allows, then end.
    Throughput,
    /// Streams stay open and silent; only heartbeats flow.
    Idle,
    /// One event every `interval_us`, stamped with its send time.
    Latency,
}

impl Kind {
    const ALL: [(Kind, &'static str); 3] = [
        (Kind::Throughput, "throughput"),
        (Kind::Idle, "idle"),
        (Kind::Latency, "latency"),
    ];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(kind, _)| *kind == self)
            .map_or("", |k| k.1)
    }

    fn parse(name: &str) -> Result<Self, Error> {
        Self::ALL
            .iter()
            .find(|(_, known)| *known == name)
            .map(|(kind, _)| *kind)
            .ok_or_else(|| format!("unknown kind {name}").into())
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) imp: Imp,
    pub(crate) streams: usize,
    /// Events per stream.
    pub(crate) events: usize,
    /// Encoded size of one event in tower-sse's wire format (CRLF line ends);
    /// axum's LF encoding of the same data is 2 bytes shorter.
    pub(crate) size: usize,
    pub(crate) capacity: usize,
    pub(crate) heartbeat_ms: u64,
    pub(crate) interval_us: u64,
    pub(crate) settle_ms: u64,
    pub(crate) window_ms: u64,
    /// Producers hand the libraries a `&'static str` instead of a fresh
    /// `String` per event.
    pub(crate) static_data: bool,
    /// Producers hand the libraries a `&str` through `Event::new` / `data`.
    pub(crate) str_data: bool,
    pub(crate) port: u16,
    pub(crate) server_pid: u32,
}

impl Scenario {
    fn new(name: &str, kind: Kind) -> Self {
        Self {
            name: name.into(),
            kind,
            imp: Imp::TowerSse,
            streams: 1,
            events: 0,
            size: 64,
            capacity: 64,
            heartbeat_ms: 10_000,
            interval_us: 1_000,
            settle_ms: 0,
            window_ms: 0,
            static_data: false,
            str_data: false,
            port: 0,
            server_pid: 0,
        }
    }

    /// The scenarios of the issue; `quick` shrinks them to a smoke run.
    pub(crate) fn all(quick: bool, capacity: usize) -> Vec<Scenario> {
        let q = |full: usize, small: usize| if quick { small } else { full };
        let mut small = Scenario::new("small", Kind::Throughput);
        small.events = q(2_000_000, 20_000);
        let mut large = Scenario::new("large", Kind::Throughput);
        large.size = 16 * 1024;
        large.events = q(100_000, 500);
        let mut fanout = Scenario::new("fanout", Kind::Throughput);
        fanout.streams = q(1_000, 50);
        fanout.events = q(1_000, 100);
        let mut idle = Scenario::new("idle", Kind::Idle);
        idle.streams = q(10_000, 200);
        idle.heartbeat_ms = q(1_000, 200) as u64;
        idle.settle_ms = q(3_000, 500) as u64;
        idle.window_ms = q(5_000, 500) as u64;
        let mut latency = Scenario::new("latency", Kind::Latency);
        latency.events = q(3_000, 100);
        let mut all = vec![small, large, fanout, idle, latency];
        for scenario in &mut all {
            scenario.capacity = capacity;
        }
        all
    }

    pub(crate) fn default_impls(&self) -> Vec<Imp> {
        match self.kind {
            Kind::Idle => vec![Imp::TowerSse, Imp::AxumSse, Imp::RawHyper, Imp::Bare],
            _ => vec![Imp::TowerSse, Imp::AxumSse, Imp::RawHyper],
        }
    }

    /// The `key=value` arguments of the server and client roles.
    pub(crate) fn to_args(&self) -> Vec<String> {
        key_values([
            ("name", self.name.clone()),
            ("kind", self.kind.name().into()),
            ("imp", self.imp.name().into()),
            ("streams", self.streams.to_string()),
            ("events", self.events.to_string()),
            ("size", self.size.to_string()),
            ("capacity", self.capacity.to_string()),
            ("heartbeat_ms", self.heartbeat_ms.to_string()),
            ("interval_us", self.interval_us.to_string()),
            ("settle_ms", self.settle_ms.to_string()),
            ("window_ms", self.window_ms.to_string()),
            ("static_data", self.static_data.to_string()),
            ("str_data", self.str_data.to_string()),
            ("port", self.port.to_string()),
            ("server_pid", self.server_pid.to_string()),
        ])
    }

    pub(crate) fn from_args(args: &[String]) -> Result<Self, Error> {
        let args = KeyValues::parse(args)?;
        Ok(Self {
            name: args.get("name")?.into(),
            kind: Kind::parse(args.get("kind")?)?,
            imp: Imp::parse(args.get("imp")?)?,
            streams: args.num("streams")?,
            events: args.num("events")?,
            size: args.num("size")?,
            capacity: args.num("capacity")?,
            heartbeat_ms: args.num("heartbeat_ms")?,
            interval_us: args.num("interval_us")?,
            settle_ms: args.num("settle_ms")?,
            window_ms: args.num("window_ms")?,
            static_data: args.num("static_data")?,
            str_data: args.num("str_data")?,
            port: args.num("port")?,
            server_pid: args.num("server_pid")?,
        })
    }

    pub(crate) fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub(crate) fn describe(&self) -> String {
        match self.kind {
            Kind::Throughput => format!(
                "{} stream(s) x {} events of {} B, buffer {}, data {}",
                self.streams,
                self.events,
                self.size,
                self.capacity,
                if self.static_data {
                    "&'static str"
                } else if self.str_data {
                    "a &str through Event::new / Event::data"
                } else {
                    "a fresh String per event"
                }
            ),
            Kind::Idle => format!(
                "{} idle streams, heartbeat {} ms, settle {} ms, window {} ms",
                self.streams, self.heartbeat_ms, self.settle_ms, self.window_ms
            ),
            Kind::Latency => format!(
                "1 stream, one {} B event every {} us, {} events",
                self.size, self.interval_us, self.events
            ),
        }
    }
}

/// The data of one event: `size` bytes once encoded by tower-sse
/// (`data: ` + data + CRLF CRLF).
pub(crate) fn payload(size: usize) -> String {
    let len = size.saturating_sub(10).max(1);
    (b'a'..=b'z').cycle().take(len).map(char::from).collect()
}

/// Data carrying its send time (nanoseconds since the epoch, 20 digits).
pub(crate) fn stamped(size: usize) -> String {
    let mut data = format!("{:020}", now_ns());
    let len = size.saturating_sub(10).max(20);
    data.extend(std::iter::repeat_n('x', len - 20));
    data
}
