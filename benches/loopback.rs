//! End-to-end load benchmark over loopback TCP: tower-sse against
//! `axum::response::sse::Sse` (with `KeepAlive`) and a raw hyper body that
//! yields pre-encoded bytes (the reference).
//!
//! ```text
//! cargo bench --bench loopback                       # every scenario, 5 interleaved runs
//! cargo bench --bench loopback -- --quick            # a few seconds: CI's smoke run
//! cargo bench --bench loopback -- --runs 7 --scenarios small,fanout \
//!     --impls tower-sse,axum-sse,raw-hyper,raw-join --capacity 64
//! cargo bench --bench loopback -- --scenarios small --size 1024 --events 500000
//! ```
//!
//! `--size`, `--events` and `--streams` override the chosen scenarios'.
//!
//! Data: by default each producer starts every event from a fresh `String`
//! (what a serialiser hands an application); tower-sse's `Event` takes it by
//! value, axum's `Event::data` copies it. `--static-data` hands both a
//! `&'static str` instead, each through its API for one: axum's
//! `Event::data` copies it once, tower-sse's `Event::from_static` keeps the
//! reference until it encodes (also one copy).
//!
//! Every measurement is a fresh server process and a fresh client process
//! (this binary re-executed as `__server` / `__client`), pinned with
//! `taskset` to cores 0 and 1 when the machine has two. Implementations are
//! interleaved A B C, C B A, … and each scenario prints medians with
//! min..max, the server's and the client's CPU share, and the ratio of each
//! implementation to axum's `Sse` run by run.
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
//! - `raw-join`: the same, joining every event already queued into one frame
//!   (up to 64 KiB);
//! - `bare`: a body that never yields, without task or channel (the floor for
//!   the memory of an idle stream);
//! - `tower-sse-ctx` (idle only, with `--impls`): tower-sse with a ready
//!   function that keeps its `StreamContext`, so the copy of the request stays;
//! - `tower-sse-spawned` (with `--impls`): tower-sse with `spawn_ready()`, the
//!   ready function a task of its own feeding the buffer;
//! - `tower-sse-stall` (with `--impls`): tower-sse with a 60 s
//!   `stall_timeout`, each frame tracked until written.
//!
//! The channel capacity (`--capacity`) is the same for every implementation.

mod support;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io::{BufRead, BufReader, Write as _},
    pin::Pin,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};
use support::{cpu_ns, fmt_num, median, now_ns, rss_kib};

use axum::{
    Router,
    response::{
        IntoResponse, Response,
        sse::{Event as AxumEvent, KeepAlive, Sse},
    },
    routing::get,
    serve::ListenerExt,
};
use bytes::{Bytes, BytesMut};
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http_body::Frame;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, watch},
};
use tower_sse::{Event, EventSender, SseLayer, StreamContext};

/// Largest frame `raw-join` assembles, as tower-sse's.
const MAX_FRAME: usize = 64 * 1024;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("__server") => server(&Scenario::from_args(&args[1..])?),
        Some("__client") => client(&Scenario::from_args(&args[1..])?),
        _ => orchestrate(&args),
    }
}

// ---------------------------------------------------------------------------
// Implementations and scenarios

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Imp {
    TowerSse,
    /// Idle only: a ready function that keeps its `StreamContext` (as an
    /// `async fn ready(events, _ctx)` does), so the stream keeps the copy of
    /// the request.
    TowerSseCtx,
    /// tower-sse with `spawn_ready()`.
    TowerSseSpawned,
    /// tower-sse with a stall timeout.
    TowerSseStall,
    AxumSse,
    RawHyper,
    RawJoin,
    Bare,
}

impl Imp {
    const ALL: [Imp; 8] = [
        Imp::TowerSse,
        Imp::TowerSseCtx,
        Imp::TowerSseSpawned,
        Imp::TowerSseStall,
        Imp::AxumSse,
        Imp::RawHyper,
        Imp::RawJoin,
        Imp::Bare,
    ];

    fn name(self) -> &'static str {
        match self {
            Imp::TowerSse => "tower-sse",
            Imp::TowerSseCtx => "tower-sse-ctx",
            Imp::TowerSseSpawned => "tower-sse-spawned",
            Imp::TowerSseStall => "tower-sse-stall",
            Imp::AxumSse => "axum-sse",
            Imp::RawHyper => "raw-hyper",
            Imp::RawJoin => "raw-join",
            Imp::Bare => "bare",
        }
    }

    fn parse(name: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|imp| imp.name() == name)
            .ok_or_else(|| format!("unknown implementation {name:?}").into())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Producers send `events` as fast as backpressure allows, then end.
    Throughput,
    /// Streams stay open and silent; only heartbeats flow.
    Idle,
    /// One event every `interval_us`, stamped with its send time.
    Latency,
}

#[derive(Clone, Debug)]
struct Scenario {
    name: String,
    kind: Kind,
    imp: Imp,
    streams: usize,
    /// Events per stream.
    events: usize,
    /// Encoded size of one event in tower-sse's wire format (CRLF line ends);
    /// axum's LF encoding of the same data is 2 bytes shorter.
    size: usize,
    capacity: usize,
    heartbeat_ms: u64,
    interval_us: u64,
    settle_ms: u64,
    window_ms: u64,
    /// Producers hand the libraries a `&'static str` instead of a fresh
    /// `String` per event.
    static_data: bool,
    port: u16,
    server_pid: u32,
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
            port: 0,
            server_pid: 0,
        }
    }

    /// The scenarios of the issue; `quick` shrinks them to a smoke run.
    fn all(quick: bool, capacity: usize) -> Vec<Scenario> {
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

    fn default_impls(&self) -> Vec<Imp> {
        match self.kind {
            Kind::Idle => vec![Imp::TowerSse, Imp::AxumSse, Imp::RawHyper, Imp::Bare],
            _ => vec![Imp::TowerSse, Imp::AxumSse, Imp::RawHyper],
        }
    }

    fn to_args(&self) -> Vec<String> {
        let kind = match self.kind {
            Kind::Throughput => "throughput",
            Kind::Idle => "idle",
            Kind::Latency => "latency",
        };
        [
            ("name", self.name.clone()),
            ("kind", kind.into()),
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
            ("port", self.port.to_string()),
            ("server_pid", self.server_pid.to_string()),
        ]
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect()
    }

    fn from_args(args: &[String]) -> Result<Self, Error> {
        let mut scenario = Scenario::new("", Kind::Throughput);
        for arg in args {
            let (key, value) = arg.split_once('=').ok_or("expected key=value")?;
            match key {
                "name" => scenario.name = value.into(),
                "kind" => {
                    scenario.kind = match value {
                        "throughput" => Kind::Throughput,
                        "idle" => Kind::Idle,
                        "latency" => Kind::Latency,
                        _ => return Err(format!("unknown kind {value}").into()),
                    }
                }
                "imp" => scenario.imp = Imp::parse(value)?,
                "streams" => scenario.streams = value.parse()?,
                "events" => scenario.events = value.parse()?,
                "size" => scenario.size = value.parse()?,
                "capacity" => scenario.capacity = value.parse()?,
                "heartbeat_ms" => scenario.heartbeat_ms = value.parse()?,
                "interval_us" => scenario.interval_us = value.parse()?,
                "settle_ms" => scenario.settle_ms = value.parse()?,
                "window_ms" => scenario.window_ms = value.parse()?,
                "static_data" => scenario.static_data = value.parse()?,
                "port" => scenario.port = value.parse()?,
                "server_pid" => scenario.server_pid = value.parse()?,
                "--bench" => {}
                _ => return Err(format!("unknown argument {key}").into()),
            }
        }
        Ok(scenario)
    }

    fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    fn describe(&self) -> String {
        match self.kind {
            Kind::Throughput => format!(
                "{} stream(s) x {} events of {} B, buffer {}, data {}",
                self.streams,
                self.events,
                self.size,
                self.capacity,
                if self.static_data {
                    "&'static str"
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
fn payload(size: usize) -> String {
    let len = size.saturating_sub(10).max(1);
    (b'a'..=b'z').cycle().take(len).map(char::from).collect()
}

/// Data carrying its send time (nanoseconds since the epoch, 20 digits).
fn stamped(size: usize) -> String {
    let mut data = format!("{:020}", now_ns());
    let len = size.saturating_sub(10).max(20);
    data.extend(std::iter::repeat_n('x', len - 20));
    data
}

// ---------------------------------------------------------------------------
// Server

fn server(scenario: &Scenario) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let app = router(scenario);
        let mut stdout = std::io::stdout();
        writeln!(stdout, "port {port}")?;
        stdout.flush()?;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await?;
        Ok(())
    })
}

/// Holds every producer until all the scenario's streams are open, so that
/// connection setup stays out of the measured interval.
#[derive(Clone)]
struct Gate {
    expected: usize,
    arrived: Arc<AtomicUsize>,
    open: Arc<watch::Sender<bool>>,
}

impl Gate {
    fn new(expected: usize) -> Self {
        Self {
            expected,
            arrived: Arc::new(AtomicUsize::new(0)),
            open: Arc::new(watch::Sender::new(false)),
        }
    }

    async fn wait(&self) {
        let mut open = self.open.subscribe();
        if self.arrived.fetch_add(1, Relaxed) + 1 >= self.expected {
            self.open.send_replace(true);
        }
        let _ = open.wait_for(|open| *open).await;
    }
}

fn router(scenario: &Scenario) -> Router {
    let gate = Gate::new(scenario.streams);
    let data: &'static str = Box::leak(payload(scenario.size).into_boxed_str());
    let sc = Arc::new(scenario.clone());
    // Every tower-sse variant: the same route, heartbeat and buffer.
    let tower_sse = |layer: SseLayer| {
        let mut layer = layer
            .heartbeat(scenario.heartbeat())
            .buffer(scenario.capacity);
        match scenario.imp {
            Imp::TowerSseSpawned => layer = layer.spawn_ready(),
            Imp::TowerSseStall => layer = layer.stall_timeout(Duration::from_secs(60)),
            _ => {}
        }
        Router::new().route("/sse", get(|| async {}).layer(layer))
    };
    match scenario.imp {
        // Idle streams get the smallest producer that keeps them open.
        Imp::TowerSse | Imp::TowerSseSpawned | Imp::TowerSseStall
            if scenario.kind == Kind::Idle =>
        {
            tower_sse(SseLayer::new(
                |events: EventSender, _ctx: StreamContext| async move {
                    events.closed().await;
                },
            ))
        }
        Imp::TowerSseCtx if scenario.kind == Kind::Idle => tower_sse(SseLayer::new(
            |events: EventSender, ctx: StreamContext| async move {
                let _kept = ctx;
                events.closed().await;
            },
        )),
        Imp::TowerSse | Imp::TowerSseCtx | Imp::TowerSseSpawned | Imp::TowerSseStall => tower_sse(
            SseLayer::new(move |events: EventSender, _ctx: StreamContext| {
                produce_tower_sse(events, gate.clone(), sc.clone(), data)
            }),
        ),
        Imp::AxumSse => Router::new().route(
            "/sse",
            get(move || {
                let (tx, mut rx) = mpsc::channel(sc.capacity);
                if sc.kind == Kind::Idle {
                    tokio::spawn(async move { tx.closed().await });
                } else {
                    tokio::spawn(produce_axum(tx, gate.clone(), sc.clone(), data));
                }
                let stream = futures::stream::poll_fn(move |cx| {
                    rx.poll_recv(cx).map(|event| event.map(Ok::<_, Infallible>))
                });
                let keep_alive = KeepAlive::new().interval(sc.heartbeat());
                async move { Sse::new(stream).keep_alive(keep_alive) }
            }),
        ),
        Imp::RawHyper | Imp::RawJoin => {
            let join = scenario.imp == Imp::RawJoin;
            let encoded = Bytes::from(format!("data: {data}\r\n\r\n"));
            Router::new().route(
                "/sse",
                get(move || {
                    let (tx, rx) = mpsc::channel(sc.capacity);
                    if sc.kind == Kind::Idle {
                        tokio::spawn(async move { tx.closed().await });
                    } else {
                        tokio::spawn(produce_raw(tx, gate.clone(), sc.clone(), encoded.clone()));
                    }
                    let body = RawBody {
                        rx,
                        join,
                        pending: None,
                    };
                    async move { event_stream_response(axum::body::Body::new(body)) }
                }),
            )
        }
        Imp::Bare => Router::new().route(
            "/sse",
            get(|| async { event_stream_response(axum::body::Body::new(BareBody)) }),
        ),
    }
}

fn event_stream_response(body: axum::body::Body) -> Response {
    (
        [
            (CONTENT_TYPE, "text/event-stream"),
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn produce_tower_sse(events: EventSender, gate: Gate, sc: Arc<Scenario>, data: &'static str) {
    match sc.kind {
        Kind::Throughput => {
            gate.wait().await;
            for _ in 0..sc.events {
                let event = if sc.static_data {
                    Event::from_static(data)
                } else {
                    Event::new(data.to_owned())
                };
                if events.send(event).await.is_err() {
                    return;
                }
            }
        }
        Kind::Idle => events.closed().await,
        Kind::Latency => {
            gate.wait().await;
            let mut ticks = ticker(&sc);
            for _ in 0..sc.events {
                ticks.tick().await;
                if events.send(Event::new(stamped(sc.size))).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn produce_axum(
    tx: mpsc::Sender<AxumEvent>,
    gate: Gate,
    sc: Arc<Scenario>,
    data: &'static str,
) {
    match sc.kind {
        Kind::Throughput => {
            gate.wait().await;
            for _ in 0..sc.events {
                // The fresh `String` is the application's work, as for tower-sse.
                #[allow(clippy::unnecessary_to_owned)]
                let event = if sc.static_data {
                    AxumEvent::default().data(data)
                } else {
                    AxumEvent::default().data(data.to_owned())
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
        Kind::Idle => tx.closed().await,
        Kind::Latency => {
            gate.wait().await;
            let mut ticks = ticker(&sc);
            for _ in 0..sc.events {
                ticks.tick().await;
                let event = AxumEvent::default().data(stamped(sc.size));
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn produce_raw(tx: mpsc::Sender<Bytes>, gate: Gate, sc: Arc<Scenario>, encoded: Bytes) {
    match sc.kind {
        Kind::Throughput => {
            gate.wait().await;
            for _ in 0..sc.events {
                if tx.send(encoded.clone()).await.is_err() {
                    return;
                }
            }
        }
        Kind::Idle => tx.closed().await,
        Kind::Latency => {
            gate.wait().await;
            let mut ticks = ticker(&sc);
            for _ in 0..sc.events {
                ticks.tick().await;
                let event = Bytes::from(format!("data: {}\r\n\r\n", stamped(sc.size)));
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn ticker(sc: &Scenario) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(Duration::from_micros(sc.interval_us));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// The reference: a body over a channel of pre-encoded events.
struct RawBody {
    rx: mpsc::Receiver<Bytes>,
    /// Join every event already queued into one frame.
    join: bool,
    /// An event taken while joining that did not fit in the frame.
    pending: Option<Bytes>,
}

impl http_body::Body for RawBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let first = match this.pending.take() {
            Some(first) => first,
            None => match ready!(this.rx.poll_recv(cx)) {
                Some(first) => first,
                None => return Poll::Ready(None),
            },
        };
        if !this.join {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let mut frame: Option<BytesMut> = None;
        while let Ok(next) = this.rx.try_recv() {
            let len = frame.as_ref().map_or(first.len(), BytesMut::len);
            if len + next.len() > MAX_FRAME {
                this.pending = Some(next);
                break;
            }
            let frame = frame.get_or_insert_with(|| {
                let mut frame = BytesMut::with_capacity(MAX_FRAME.min(first.len() * 64));
                frame.extend_from_slice(&first);
                frame
            });
            frame.extend_from_slice(&next);
        }
        let bytes = frame.map_or(first, BytesMut::freeze);
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

/// A streaming body that never yields: no task, no channel, no timer.
struct BareBody;

impl http_body::Body for BareBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
}

// ---------------------------------------------------------------------------
// Client

fn client(scenario: &Scenario) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        match scenario.kind {
            Kind::Throughput => client_throughput(scenario).await,
            Kind::Idle => client_idle(scenario).await,
            Kind::Latency => client_latency(scenario).await,
        }
    })?;
    let line: Vec<String> = result.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("RESULT {}", line.join(" "));
    Ok(())
}

type Metrics = BTreeMap<String, f64>;

struct CpuClock {
    server_pid: u32,
    client_pid: u32,
    wall: Instant,
    server: u64,
    client: u64,
}

impl CpuClock {
    fn start(server_pid: u32) -> Self {
        let client_pid = std::process::id();
        Self {
            server_pid,
            client_pid,
            wall: Instant::now(),
            server: cpu_ns(server_pid),
            client: cpu_ns(client_pid),
        }
    }

    /// (server share, client share) of one core since `start`.
    fn shares(&self) -> (f64, f64) {
        let wall = self.wall.elapsed().as_nanos().max(1) as f64;
        let server = cpu_ns(self.server_pid).saturating_sub(self.server) as f64;
        let client = cpu_ns(self.client_pid).saturating_sub(self.client) as f64;
        (server / wall, client / wall)
    }
}

/// An HTTP/1.1 response body being read: headers done, chunked or not.
struct Connection {
    socket: TcpStream,
    chunked: Option<Chunked>,
    /// Body bytes that arrived with the headers.
    leftover: Vec<u8>,
}

async fn connect(port: u16) -> Result<Connection, Error> {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await?;
    socket.set_nodelay(true)?;
    // Reset on close: thousands of connections per run must not exhaust
    // ephemeral ports in TIME_WAIT.
    socket.set_zero_linger()?;
    socket
        .write_all(b"GET /sse HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n")
        .await?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Err("connection closed before the response head".into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = memchr::memmem::find(&head, b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            if !text.starts_with("http/1.1 200") {
                return Err(format!("unexpected response: {text}").into());
            }
            let chunked = text.contains("transfer-encoding: chunked");
            return Ok(Connection {
                socket,
                chunked: chunked.then(Chunked::default),
                leftover: head[end + 4..].to_vec(),
            });
        }
    }
}

/// A minimal decoder of HTTP/1.1 chunked transfer coding.
#[derive(Default)]
struct Chunked {
    state: ChunkState,
}

#[derive(Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    SizeDigits(usize),
    /// Skipping a chunk extension or the CR before the LF of the size line.
    SizeLine(usize),
    Data(usize),
    DataCr,
    DataLf,
    Done,
}

impl Chunked {
    /// Feeds raw bytes, passing decoded data to `out`; true once the last
    /// chunk has been seen.
    fn feed(&mut self, mut input: &[u8], out: &mut impl FnMut(&[u8])) -> bool {
        while !input.is_empty() {
            match self.state {
                ChunkState::Size => self.state = ChunkState::SizeDigits(0),
                ChunkState::SizeDigits(size) => {
                    let byte = input[0];
                    input = &input[1..];
                    self.state = match (byte as char).to_digit(16) {
                        Some(digit) => ChunkState::SizeDigits(size * 16 + digit as usize),
                        None if byte == b'\n' => Self::after_size(size),
                        None => ChunkState::SizeLine(size),
                    };
                }
                ChunkState::SizeLine(size) => {
                    let byte = input[0];
                    input = &input[1..];
                    if byte == b'\n' {
                        self.state = Self::after_size(size);
                    }
                }
                ChunkState::Data(left) => {
                    let take = left.min(input.len());
                    out(&input[..take]);
                    input = &input[take..];
                    self.state = if take == left {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::DataCr => {
                    input = &input[1..];
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    input = &input[1..];
                    self.state = ChunkState::Size;
                }
                ChunkState::Done => return true,
            }
        }
        matches!(self.state, ChunkState::Done)
    }

    fn after_size(size: usize) -> ChunkState {
        if size == 0 {
            ChunkState::Done
        } else {
            ChunkState::Data(size)
        }
    }
}

/// Counts dispatched events (a blank line after at least one field line) in
/// an SSE byte stream; comment-only blocks such as heartbeats do not count.
#[derive(Default)]
struct SseCounter {
    events: u64,
    bytes: u64,
    in_event: bool,
    /// Length and first bytes of the line read so far.
    line_len: usize,
    head: [u8; 32],
    /// Send-to-receive latencies in nanoseconds, when events carry stamps.
    latencies: Option<Vec<u64>>,
    received_at: u64,
}

impl SseCounter {
    fn feed(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        if self.latencies.is_some() {
            self.received_at = now_ns();
        }
        let mut start = 0;
        for newline in memchr::memchr_iter(b'\n', data) {
            self.take_line_part(&data[start..newline]);
            self.end_line();
            start = newline + 1;
        }
        self.take_line_part(&data[start..]);
    }

    fn take_line_part(&mut self, part: &[u8]) {
        if self.line_len < self.head.len() {
            let room = self.head.len() - self.line_len;
            let copy = room.min(part.len());
            self.head[self.line_len..self.line_len + copy].copy_from_slice(&part[..copy]);
        }
        self.line_len += part.len();
    }

    fn end_line(&mut self) {
        let len = self.line_len;
        self.line_len = 0;
        let blank = len == 0 || (len == 1 && self.head[0] == b'\r');
        if blank {
            if self.in_event {
                self.events += 1;
                self.in_event = false;
            }
            return;
        }
        if self.head[0] == b':' {
            return;
        }
        self.in_event = true;
        if let Some(latencies) = &mut self.latencies {
            if len >= 26 && self.head.starts_with(b"data: ") {
                let stamp = std::str::from_utf8(&self.head[6..26])
                    .ok()
                    .and_then(|digits| digits.parse::<u64>().ok());
                if let Some(stamp) = stamp {
                    latencies.push(self.received_at.saturating_sub(stamp));
                }
            }
        }
    }
}

/// Reads one response body to its end (or to `stop`), counting events.
async fn read_body(
    mut connection: Connection,
    counter: &mut SseCounter,
    buffer_size: usize,
    first_data: &mut Option<Instant>,
    on_first_data: &(dyn Fn() + Sync),
) -> Result<(), Error> {
    let mut buf = vec![0u8; buffer_size];
    let mut done = false;
    let mut feed = |bytes: &[u8], counter: &mut SseCounter| match &mut connection.chunked {
        Some(chunked) => chunked.feed(bytes, &mut |data| counter.feed(data)),
        None => {
            counter.feed(bytes);
            false
        }
    };
    if !connection.leftover.is_empty() {
        on_first_data();
        *first_data = Some(Instant::now());
        let leftover = std::mem::take(&mut connection.leftover);
        done = feed(&leftover, counter);
    }
    while !done {
        let n = connection.socket.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if first_data.is_none() {
            on_first_data();
            *first_data = Some(Instant::now());
        }
        done = feed(&buf[..n], counter);
    }
    Ok(())
}

async fn client_throughput(sc: &Scenario) -> Result<Metrics, Error> {
    // CPU shares are measured from the first data on, like the rates.
    let clock = Arc::new(OnceLock::new());
    let connecting = Arc::new(Semaphore::new(256));
    let first = Arc::new(Mutex::new(None::<Instant>));
    let last = Arc::new(Mutex::new(None::<Instant>));
    let events = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(sc.streams);
    let buffer_size = if sc.streams > 1 {
        16 * 1024
    } else {
        256 * 1024
    };
    for _ in 0..sc.streams {
        let (connecting, first, last) = (connecting.clone(), first.clone(), last.clone());
        let (events, bytes, port) = (events.clone(), bytes.clone(), sc.port);
        let (clock, server_pid) = (clock.clone(), sc.server_pid);
        tasks.push(tokio::spawn(async move {
            let permit = connecting.acquire_owned().await?;
            let connection = connect(port).await?;
            drop(permit);
            let mut counter = SseCounter::default();
            let mut first_data = None;
            let on_first_data = || {
                clock.get_or_init(|| CpuClock::start(server_pid));
            };
            read_body(
                connection,
                &mut counter,
                buffer_size,
                &mut first_data,
                &on_first_data,
            )
            .await?;
            let end = Instant::now();
            if let Some(at) = first_data {
                let mut first = first.lock().unwrap_or_else(|e| e.into_inner());
                *first = Some(first.map_or(at, |f: Instant| f.min(at)));
            }
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            *last = Some(last.map_or(end, |l: Instant| l.max(end)));
            events.fetch_add(counter.events, Relaxed);
            bytes.fetch_add(counter.bytes, Relaxed);
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let (server_cpu, client_cpu) = clock.get().ok_or("no data")?.shares();
    let events = events.load(Relaxed);
    let expected = (sc.streams * sc.events) as u64;
    if events != expected {
        return Err(format!("received {events} events, expected {expected}").into());
    }
    let first = first
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .ok_or("no data")?;
    let last = last
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .ok_or("no end")?;
    let secs = last.duration_since(first).as_secs_f64().max(1e-9);
    let payload = (payload(sc.size).len() as u64 * events) as f64;
    Ok(Metrics::from([
        ("events_per_s".into(), events as f64 / secs),
        ("payload_mb_per_s".into(), payload / secs / 1e6),
        (
            "wire_mb_per_s".into(),
            bytes.load(Relaxed) as f64 / secs / 1e6,
        ),
        ("secs".into(), secs),
        ("server_cpu".into(), server_cpu),
        ("client_cpu".into(), client_cpu),
    ]))
}

async fn client_idle(sc: &Scenario) -> Result<Metrics, Error> {
    let base_rss = rss_kib(sc.server_pid);
    let connecting = Arc::new(Semaphore::new(128));
    let opened = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(sc.streams);
    for _ in 0..sc.streams {
        let (connecting, opened, bytes) = (connecting.clone(), opened.clone(), bytes.clone());
        let (port, mut stop) = (sc.port, stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let permit = connecting.acquire_owned().await?;
            let mut connection = connect(port).await?;
            drop(permit);
            opened.fetch_add(1, Relaxed);
            let mut buf = [0u8; 512];
            loop {
                tokio::select! {
                    read = connection.socket.read(&mut buf) => match read? {
                        0 => return Err::<(), Error>("server closed an idle stream".into()),
                        n => { bytes.fetch_add(n as u64, Relaxed); }
                    },
                    _ = stop.wait_for(|stop| *stop) => return Ok(()),
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while opened.load(Relaxed) < sc.streams {
        if Instant::now() > deadline {
            return Err("idle streams did not all open in 120 s".into());
        }
        if let Some(task) = tasks.iter().find(|task| task.is_finished()) {
            return Err(format!("a stream failed while opening: {task:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(sc.settle_ms)).await;
    let rss_before = rss_kib(sc.server_pid);
    let clock = CpuClock::start(sc.server_pid);
    let bytes_before = bytes.load(Relaxed);
    tokio::time::sleep(Duration::from_millis(sc.window_ms)).await;
    let (server_cpu, client_cpu) = clock.shares();
    let window = clock.wall.elapsed().as_secs_f64();
    let heartbeat_bytes = bytes.load(Relaxed) - bytes_before;
    let rss = rss_kib(sc.server_pid).max(rss_before);
    stop_tx.send_replace(true);
    for task in tasks {
        task.await??;
    }
    let per_stream = (rss.saturating_sub(base_rss) as f64 * 1024.0) / sc.streams as f64;
    Ok(Metrics::from([
        ("bytes_per_stream".into(), per_stream),
        ("server_rss_mib".into(), rss as f64 / 1024.0),
        ("base_rss_mib".into(), base_rss as f64 / 1024.0),
        ("server_cpu".into(), server_cpu),
        ("client_cpu".into(), client_cpu),
        (
            "heartbeat_bytes_per_s".into(),
            heartbeat_bytes as f64 / window,
        ),
    ]))
}

async fn client_latency(sc: &Scenario) -> Result<Metrics, Error> {
    let clock = CpuClock::start(sc.server_pid);
    let connection = connect(sc.port).await?;
    let mut counter = SseCounter {
        latencies: Some(Vec::with_capacity(sc.events)),
        ..SseCounter::default()
    };
    let mut first_data = None;
    read_body(connection, &mut counter, 64 * 1024, &mut first_data, &|| {}).await?;
    let (server_cpu, client_cpu) = clock.shares();
    if counter.events != sc.events as u64 {
        return Err(format!("received {} events, expected {}", counter.events, sc.events).into());
    }
    let mut latencies = counter.latencies.unwrap_or_default();
    // The first events include the runtime's warm-up.
    let skip = (latencies.len() / 20).min(50);
    latencies.drain(..skip);
    latencies.sort_unstable();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1);
        latencies.get(index).copied().unwrap_or(0) as f64 / 1e3
    };
    Ok(Metrics::from([
        ("p50_us".into(), at(0.50)),
        ("p99_us".into(), at(0.99)),
        ("max_us".into(), at(1.0)),
        ("server_cpu".into(), server_cpu),
        ("client_cpu".into(), client_cpu),
    ]))
}

// ---------------------------------------------------------------------------
// Orchestrator

struct Options {
    runs: usize,
    quick: bool,
    pin: bool,
    capacity: usize,
    size: Option<usize>,
    events: Option<usize>,
    streams: Option<usize>,
    static_data: bool,
    scenarios: Option<Vec<String>>,
    impls: Option<Vec<Imp>>,
}

fn parse_options(args: &[String]) -> Result<Options, Error> {
    let mut options = Options {
        runs: 5,
        quick: false,
        pin: true,
        capacity: 64,
        size: None,
        events: None,
        streams: None,
        static_data: false,
        scenarios: None,
        impls: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {}
            "--quick" => options.quick = true,
            "--no-pin" => options.pin = false,
            "--static-data" => options.static_data = true,
            "--runs" => options.runs = value()?.parse()?,
            "--capacity" => options.capacity = value()?.parse()?,
            "--size" => options.size = Some(value()?.parse()?),
            "--events" => options.events = Some(value()?.parse()?),
            "--streams" => options.streams = Some(value()?.parse()?),
            "--scenarios" => {
                options.scenarios = Some(value()?.split(',').map(String::from).collect());
            }
            "--impls" => {
                options.impls = Some(
                    value()?
                        .split(',')
                        .map(Imp::parse)
                        .collect::<Result<_, _>>()?,
                );
            }
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if options.quick && options.runs == 5 {
        options.runs = 1;
    }
    Ok(options)
}

fn orchestrate(args: &[String]) -> Result<(), Error> {
    let options = parse_options(args)?;
    let exe = std::env::current_exe()?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let taskset = Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    let pin = options.pin && cores >= 2 && taskset;
    println!(
        "loopback SSE benchmark: {} run(s) per implementation, {}",
        options.runs,
        if pin {
            "server pinned to core 0, client to core 1".to_string()
        } else {
            format!("not pinned ({cores} core(s), taskset: {taskset})")
        }
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
        let impls = options
            .impls
            .clone()
            .unwrap_or_else(|| scenario.default_impls());
        println!("\n== {}: {}", scenario.name, scenario.describe());
        let mut results: BTreeMap<Imp, Vec<Metrics>> = BTreeMap::new();
        for run in 0..options.runs {
            let mut order = impls.clone();
            if run % 2 == 1 {
                order.reverse();
            }
            for imp in order {
                scenario.imp = imp;
                let metrics = run_once(&exe, &scenario, pin)?;
                results.entry(imp).or_default().push(metrics);
            }
        }
        report(&scenario, &impls, &results);
    }
    println!("\ntotal time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn spawn_pinned(exe: &std::path::Path, core: usize, pin: bool) -> Command {
    if pin {
        let mut command = Command::new("taskset");
        command.arg("-c").arg(core.to_string()).arg(exe);
        command
    } else {
        Command::new(exe)
    }
}

fn run_once(exe: &std::path::Path, scenario: &Scenario, pin: bool) -> Result<Metrics, Error> {
    let mut server = spawn_pinned(exe, 0, pin)
        .arg("__server")
        .args(scenario.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let result = (|| {
        let stdout = server.stdout.take().ok_or("no server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port: u16 = line
            .trim()
            .strip_prefix("port ")
            .ok_or_else(|| format!("server said {line:?}"))?
            .parse()?;
        let mut scenario = scenario.clone();
        scenario.port = port;
        scenario.server_pid = server.id();
        let output = spawn_pinned(exe, 1, pin)
            .arg("__client")
            .args(scenario.to_args())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "{} client failed ({}): {stdout}",
                scenario.imp.name(),
                output.status
            )
            .into());
        }
        let line = stdout
            .lines()
            .find_map(|line| line.strip_prefix("RESULT "))
            .ok_or("client printed no RESULT")?;
        let mut metrics = Metrics::new();
        for pair in line.split_whitespace() {
            let (key, value) = pair.split_once('=').ok_or("bad RESULT")?;
            metrics.insert(key.into(), value.parse()?);
        }
        Ok::<_, Error>(metrics)
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// The metrics printed per scenario: (key, label, scale, higher is better).
fn columns(kind: Kind) -> Vec<(&'static str, &'static str, f64, bool)> {
    match kind {
        Kind::Throughput => vec![
            ("events_per_s", "M events/s", 1e-6, true),
            ("payload_mb_per_s", "payload MB/s", 1.0, true),
        ],
        Kind::Idle => vec![
            ("bytes_per_stream", "bytes/stream", 1.0, false),
            ("server_cpu", "idle server CPU %", 100.0, false),
        ],
        Kind::Latency => vec![
            ("p99_us", "p99 us", 1.0, false),
            ("p50_us", "p50 us", 1.0, false),
        ],
    }
}

fn spread(values: &[f64], scale: f64) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min) * scale;
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max) * scale;
    format!(
        "{} ({}..{})",
        fmt_num(median(values) * scale),
        fmt_num(min),
        fmt_num(max)
    )
}

fn report(scenario: &Scenario, impls: &[Imp], results: &BTreeMap<Imp, Vec<Metrics>>) {
    let series = |imp: Imp, key: &str| -> Vec<f64> {
        results
            .get(&imp)
            .map(|runs| runs.iter().filter_map(|m| m.get(key).copied()).collect())
            .unwrap_or_default()
    };
    let columns = columns(scenario.kind);
    let mut header = format!("{:<10}", "impl");
    for (_, label, _, _) in &columns {
        header += &format!(" | {label:<24}");
    }
    header += " | server CPU % | client CPU %";
    println!("{header}");
    for &imp in impls {
        let mut line = format!("{:<10}", imp.name());
        for (key, _, scale, _) in &columns {
            line += &format!(" | {:<24}", spread(&series(imp, key), *scale));
        }
        line += &format!(
            " | {:<12} | {}",
            fmt_num(median(&series(imp, "server_cpu")) * 100.0),
            fmt_num(median(&series(imp, "client_cpu")) * 100.0)
        );
        println!("{line}");
    }
    if scenario.kind == Kind::Idle {
        for &imp in impls {
            let rate = median(&series(imp, "heartbeat_bytes_per_s"));
            println!(
                "  {}: heartbeat bytes/s received {}, server RSS {} MiB (base {} MiB)",
                imp.name(),
                fmt_num(rate),
                fmt_num(median(&series(imp, "server_rss_mib"))),
                fmt_num(median(&series(imp, "base_rss_mib")))
            );
        }
    }
    if scenario.kind == Kind::Idle && impls.contains(&Imp::Bare) {
        let bare = median(&series(Imp::Bare, "bytes_per_stream"));
        for &imp in impls.iter().filter(|&&imp| imp != Imp::Bare) {
            println!(
                "  {} over bare body: {} bytes/stream",
                imp.name(),
                fmt_num(median(&series(imp, "bytes_per_stream")) - bare)
            );
        }
    }
    if !impls.contains(&Imp::AxumSse) {
        return;
    }
    for &imp in impls.iter().filter(|&&imp| imp != Imp::AxumSse) {
        for (key, label, _, higher) in &columns {
            let ours = series(imp, key);
            let axum = series(Imp::AxumSse, key);
            let ratios: Vec<f64> = ours
                .iter()
                .zip(&axum)
                .map(|(ours, axum)| ours / axum)
                .collect();
            if ratios.is_empty() {
                continue;
            }
            let per_run: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            println!(
                "  ratio {}/axum-sse {label}: {} per run [{}] ({} is better)",
                imp.name(),
                spread(&ratios, 1.0),
                per_run.join(" "),
                if *higher { "higher" } else { "lower" }
            );
        }
    }
}
