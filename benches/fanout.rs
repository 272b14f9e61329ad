//! Fan-out benchmark over loopback TCP: one topic, many subscribers, events
//! published at a fixed rate.
//!
//! ```text
//! cargo bench --bench fanout                    # 10,000 subscribers at 5, 50, 200 events/s
//! cargo bench --bench fanout --features redis   # plus 1,000 subscribers on two Redis nodes
//! cargo bench --bench fanout -- --quick         # CI smoke run (500 subscribers, 1 s): 8-15 s
//! cargo bench --bench fanout -- --runs 1 --subscribers 2000 --rates 20 --secs 3 \
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
//! - `memory`: tower-sse's in-memory [`Hub`] (`hub.layer(..)`: streams read
//!   the topic's ring from the body; default heartbeat) against a hand-rolled fan-out: a
//!   `tokio::sync::broadcast` channel of `axum::response::sse::Event` (built
//!   once by the publisher, cloned by every receiver) and, per subscriber,
//!   `Sse::new(stream over the receiver).keep_alive(..)` that skips `Lagged`.
//!   The broadcast capacity equals the hub's history (1,000), so both have the
//!   same slack before a slow subscriber loses events. Diagnostic
//!   implementations (only with `--impls`): `hub-ready`, the same hub
//!   through its compatible ready function (`SseLayer::new(hub.ready(..))`,
//!   a buffer and a body-polled ready function per stream), and
//!   `layer-broadcast`, a tower-sse
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
//! `__server` (one per node) and `__client`. With two cores and `taskset`,
//! servers are pinned to core 0 and the client (and the Redis server this
//! bench starts) to core 1. The orchestrator talks to them over stdin/stdout:
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

mod support;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io::{BufRead, BufReader, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        mpsc as std_mpsc,
    },
    time::{Duration, Instant},
};
use support::{cpu_ns, fmt_num, median, now_ns, rss_kib};

use axum::{
    Router,
    response::sse::{Event as AxumEvent, KeepAlive, Sse},
    routing::get,
    serve::ListenerExt,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::{Semaphore, broadcast, mpsc, watch},
};
use tower_sse::{Event, SseLayer, hub::Hub};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The one topic every subscriber follows.
const TOPIC: &str = "fanout";
/// The hub's history and the broadcast channel's capacity.
const SLACK: usize = 1_000;
/// The heartbeat of both implementations (tower-sse's default).
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Connections being set up at once by the client.
const CONNECTING: usize = 256;
/// The servers' listen backlog (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 4096;
/// How long the client keeps reading after the publisher finished.
const DRAIN: Duration = Duration::from_secs(30);
/// Pause after every subscriber is counted, before RSS is read and publishing starts.
const SETTLE: Duration = Duration::from_millis(500);
/// Runs disturbed by other load are done again, up to this many attempts.
const MAX_ATTEMPTS: usize = 3;
/// The longest any single step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("__server") => server(&Args::parse(&args[1..])?),
        Some("__client") => client(&Args::parse(&args[1..])?),
        _ => orchestrate(&args),
    }
}

/// `key=value` arguments of the server and client roles.
struct Args(BTreeMap<String, String>);

impl Args {
    fn parse(args: &[String]) -> Result<Self, Error> {
        let mut map = BTreeMap::new();
        for arg in args {
            if arg == "--bench" {
                continue;
            }
            let (key, value) = arg.split_once('=').ok_or("expected key=value")?;
            map.insert(key.to_owned(), value.to_owned());
        }
        Ok(Self(map))
    }

    fn get(&self, key: &str) -> Result<&str, Error> {
        self.0
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("missing argument {key}").into())
    }

    fn num<T: std::str::FromStr>(&self, key: &str) -> Result<T, Error>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        Ok(self.get(key)?.parse()?)
    }
}

/// Lines from a reader, on a thread, into a channel.
fn line_reader<R: std::io::Read + Send + 'static>(reader: R) -> std_mpsc::Receiver<String> {
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Stdin lines, on a thread, into a tokio channel.
fn stdin_commands() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn say(line: &str) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Implementations

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

impl Imp {
    fn name(self) -> &'static str {
        match self {
            Imp::Hub => "hub",
            Imp::HubReady => "hub-ready",
            Imp::Broadcast => "broadcast",
            Imp::Redis => "redis-2-nodes",
            Imp::LayerBroadcast => "layer-broadcast",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Imp::Hub => "tower-sse Hub (in memory)",
            Imp::HubReady => "tower-sse Hub::ready (in memory)",
            Imp::Broadcast => "broadcast + axum Sse",
            Imp::Redis => "tower-sse Hub on Redis, 2 nodes",
            Imp::LayerBroadcast => "broadcast + tower-sse SseLayer",
        }
    }

    fn parse(name: &str) -> Result<Self, Error> {
        [
            Imp::Hub,
            Imp::HubReady,
            Imp::Broadcast,
            Imp::Redis,
            Imp::LayerBroadcast,
        ]
        .into_iter()
        .find(|imp| imp.name() == name)
        .ok_or_else(|| format!("unknown implementation {name:?}").into())
    }
}

// ---------------------------------------------------------------------------
// Server

enum Source {
    Hub(Hub),
    HubReady(Hub),
    Broadcast {
        tx: broadcast::Sender<AxumEvent>,
        lagged: Arc<AtomicU64>,
    },
    LayerBroadcast {
        tx: broadcast::Sender<(u64, Arc<str>)>,
        lagged: Arc<AtomicU64>,
    },
}

impl Source {
    fn subscribers(&self) -> usize {
        match self {
            Source::Hub(hub) | Source::HubReady(hub) => hub.subscribers(),
            Source::Broadcast { tx, .. } => tx.receiver_count(),
            Source::LayerBroadcast { tx, .. } => tx.receiver_count(),
        }
    }

    fn lagged(&self) -> u64 {
        match self {
            Source::Hub(hub) | Source::HubReady(hub) => hub.lagged_events(),
            Source::Broadcast { lagged, .. } | Source::LayerBroadcast { lagged, .. } => {
                lagged.load(Relaxed)
            }
        }
    }

    async fn publish(&self, seq: u64) -> bool {
        let data = format!("{seq} {}", now_ns());
        match self {
            Source::Hub(hub) | Source::HubReady(hub) => {
                hub.publish(TOPIC, Event::new(data)).await.is_ok()
            }
            Source::Broadcast { tx, .. } => {
                let event = AxumEvent::default().id(seq.to_string()).data(data);
                // No receiver is not an error here: the client may have gone.
                let _ = tx.send(event);
                true
            }
            Source::LayerBroadcast { tx, .. } => {
                let _ = tx.send((seq, data.into()));
                true
            }
        }
    }

    /// `buffer`: the tower-sse layers' buffer (`None`: the default, 10).
    fn router(&self, buffer: Option<usize>) -> Router {
        let sized = |layer: SseLayer| match buffer {
            Some(buffer) => layer.buffer(buffer),
            None => layer,
        };
        match self {
            Source::Hub(hub) => {
                let layer = hub
                    .layer(|_parts| Ok(vec![TOPIC.to_owned()]))
                    .heartbeat(HEARTBEAT);
                Router::new().route("/events", get(|| async {}).layer(layer))
            }
            Source::HubReady(hub) => {
                let layer = sized(
                    SseLayer::new(hub.ready(|_ctx| vec![TOPIC.to_owned()])).heartbeat(HEARTBEAT),
                );
                Router::new().route("/events", get(|| async {}).layer(layer))
            }
            Source::Broadcast { tx, lagged } => {
                let (tx, lagged) = (tx.clone(), lagged.clone());
                Router::new().route(
                    "/events",
                    get(move || {
                        let state = (tx.subscribe(), lagged.clone());
                        // What `tokio_stream::wrappers::BroadcastStream` does,
                        // skipping `Lagged` as a hand-rolled fan-out would.
                        let stream =
                            futures::stream::unfold(state, |(mut rx, lagged)| async move {
                                loop {
                                    match rx.recv().await {
                                        Ok(event) => {
                                            return Some((
                                                Ok::<_, Infallible>(event),
                                                (rx, lagged),
                                            ));
                                        }
                                        Err(broadcast::error::RecvError::Lagged(n)) => {
                                            lagged.fetch_add(n, Relaxed);
                                        }
                                        Err(broadcast::error::RecvError::Closed) => return None,
                                    }
                                }
                            });
                        let keep_alive = KeepAlive::new().interval(HEARTBEAT);
                        async move { Sse::new(stream).keep_alive(keep_alive) }
                    }),
                )
            }
            Source::LayerBroadcast { tx, lagged } => {
                let (tx, lagged) = (tx.clone(), lagged.clone());
                let layer = SseLayer::new(move |events: tower_sse::EventSender, _ctx| {
                    let (mut rx, lagged) = (tx.subscribe(), lagged.clone());
                    async move {
                        loop {
                            let received = tokio::select! {
                                received = rx.recv() => received,
                                _ = events.closed() => return,
                            };
                            let (seq, data) = match received {
                                Ok(event) => event,
                                Err(broadcast::error::RecvError::Lagged(n)) => {
                                    lagged.fetch_add(n, Relaxed);
                                    continue;
                                }
                                Err(broadcast::error::RecvError::Closed) => return,
                            };
                            let event = Event::new(&*data).id(seq.to_string());
                            if events.send(event).await.is_err() {
                                return;
                            }
                        }
                    }
                })
                .heartbeat(HEARTBEAT);
                let layer = sized(layer);
                Router::new().route("/events", get(|| async {}).layer(layer))
            }
        }
    }
}

fn server(args: &Args) -> Result<(), Error> {
    let imp = Imp::parse(args.get("imp")?)?;
    // `multi`: tokio's multi-thread scheduler with one worker (what
    // `#[tokio::main]` gives, on the one core the server has); its LIFO slot
    // runs a task woken by the running task next.
    let runtime = match args.get("runtime").unwrap_or("current") {
        "current" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        "multi" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?,
        other => return Err(format!("unknown runtime {other}").into()),
    };
    runtime.block_on(async {
        let source = match imp {
            Imp::Hub => Source::Hub(Hub::builder().history(SLACK).build()),
            Imp::HubReady => Source::HubReady(Hub::builder().history(SLACK).build()),
            Imp::Broadcast => Source::Broadcast {
                tx: broadcast::channel(SLACK).0,
                lagged: Arc::new(AtomicU64::new(0)),
            },
            Imp::Redis => redis_source(args).await?,
            Imp::LayerBroadcast => Source::LayerBroadcast {
                tx: broadcast::channel(SLACK).0,
                lagged: Arc::new(AtomicU64::new(0)),
            },
        };
        // `TcpListener::bind` listens with a backlog of 128: thousands of
        // connects overflow it and the dropped SYNs come back 1 s later.
        let socket = TcpSocket::new_v4()?;
        socket.bind(([127, 0, 0, 1], 0).into())?;
        let listener = socket.listen(BACKLOG)?;
        let port = listener.local_addr()?.port();
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let buffer = match args.get("buffer") {
            Ok(buffer) => Some(buffer.parse()?),
            Err(_) => None,
        };
        let app = source.router(buffer);
        tokio::spawn(async move { axum::serve(listener, app).await });
        say(&format!("port {port}"))?;
        let mut commands = stdin_commands();
        while let Some(command) = commands.recv().await {
            let words: Vec<&str> = command.split_whitespace().collect();
            match words.as_slice() {
                ["wait", n] => {
                    let n: usize = n.parse()?;
                    let deadline = Instant::now() + STEP_TIMEOUT;
                    while source.subscribers() < n && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    say(&format!("subscribed {}", source.subscribers()))?;
                }
                ["publish", events, interval_us] => {
                    let events: u64 = events.parse()?;
                    let mut ticks =
                        tokio::time::interval(Duration::from_micros(interval_us.parse()?));
                    // Keep the schedule: a late tick is followed by quick ones.
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    ticks.tick().await;
                    let start = now_ns();
                    let mut failed = 0u64;
                    for seq in 0..events {
                        if seq > 0 {
                            ticks.tick().await;
                        }
                        if !source.publish(seq).await {
                            failed += 1;
                        }
                    }
                    say(&format!("published {start} {} {failed}", now_ns()))?;
                }
                ["stats"] => say(&format!(
                    "stats {} {}",
                    source.subscribers(),
                    source.lagged()
                ))?,
                ["quit"] => break,
                _ => return Err(format!("unknown command {command:?}").into()),
            }
        }
        Ok(())
    })
}

#[cfg(feature = "redis")]
async fn redis_source(args: &Args) -> Result<Source, Error> {
    let hub = Hub::builder()
        .history(SLACK)
        .key_prefix(args.get("prefix")?)
        .build_redis(args.get("redis")?)
        .await?;
    Ok(Source::Hub(hub))
}

#[cfg(not(feature = "redis"))]
async fn redis_source(_args: &Args) -> Result<Source, Error> {
    Err("the redis implementation needs --features redis".into())
}

// ---------------------------------------------------------------------------
// Client

/// One connection's view of the stream.
struct Tally {
    /// Data events carrying a sequence number.
    events: u64,
    next_seq: u64,
    /// Sequence numbers skipped.
    missing: u64,
    /// Sequence numbers seen twice or out of order.
    disorder: u64,
    /// `lagged` notices, and the events they say were skipped.
    lag_notices: u64,
    lag_reported: u64,
    latencies_ns: Vec<u64>,
    last_read_ns: u64,
    /// The last event was seen.
    done: bool,
}

/// A minimal SSE reader: lines, `event: lagged`, and `data: <seq> <stamp>`.
struct Reader {
    last_seq: u64,
    line: Vec<u8>,
    lagged: bool,
    tally: Tally,
}

impl Reader {
    fn new(events: u64) -> Self {
        Self {
            last_seq: events.saturating_sub(1),
            line: Vec::with_capacity(64),
            lagged: false,
            tally: Tally {
                events: 0,
                next_seq: 0,
                missing: 0,
                disorder: 0,
                lag_notices: 0,
                lag_reported: 0,
                latencies_ns: Vec::with_capacity(events as usize),
                last_read_ns: 0,
                done: false,
            },
        }
    }

    fn feed(&mut self, data: &[u8], now: u64) {
        let mut rest = data;
        while let Some(newline) = memchr::memchr(b'\n', rest) {
            if self.line.is_empty() {
                self.handle_line(&rest[..newline], now);
            } else {
                self.line.extend_from_slice(&rest[..newline]);
                let line = std::mem::take(&mut self.line);
                self.handle_line(&line, now);
                self.line = line;
                self.line.clear();
            }
            rest = &rest[newline + 1..];
        }
        self.line.extend_from_slice(rest);
    }

    fn handle_line(&mut self, line: &[u8], now: u64) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.lagged = false;
        } else if line == b"event: lagged" {
            self.lagged = true;
        } else if let Some(data) = line.strip_prefix(b"data: ") {
            let text = std::str::from_utf8(data).unwrap_or("");
            let tally = &mut self.tally;
            if self.lagged {
                tally.lag_notices += 1;
                tally.lag_reported += text.parse::<u64>().unwrap_or(0);
                return;
            }
            let mut parts = text.split(' ').map(str::parse::<u64>);
            let (Some(Ok(seq)), Some(Ok(stamp))) = (parts.next(), parts.next()) else {
                tally.disorder += 1;
                return;
            };
            tally.events += 1;
            tally.latencies_ns.push(now.saturating_sub(stamp));
            if seq < tally.next_seq {
                tally.disorder += 1;
            } else {
                tally.missing += seq - tally.next_seq;
                tally.next_seq = seq + 1;
            }
            if seq >= self.last_seq {
                tally.done = true;
            }
        }
    }
}

/// A minimal decoder of HTTP/1.1 chunked transfer coding.
#[derive(Default, Clone, Copy)]
enum Chunked {
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
    /// Decodes `input`, passing data to `out`; true once the last chunk came.
    fn feed(&mut self, mut input: &[u8], out: &mut impl FnMut(&[u8])) -> bool {
        let after_size = |size| {
            if size == 0 {
                Chunked::Done
            } else {
                Chunked::Data(size)
            }
        };
        while !input.is_empty() {
            match *self {
                Chunked::Size => *self = Chunked::SizeDigits(0),
                Chunked::SizeDigits(size) => {
                    let byte = input[0];
                    input = &input[1..];
                    *self = match (byte as char).to_digit(16) {
                        Some(digit) => Chunked::SizeDigits(size * 16 + digit as usize),
                        None if byte == b'\n' => after_size(size),
                        None => Chunked::SizeLine(size),
                    };
                }
                Chunked::SizeLine(size) => {
                    let byte = input[0];
                    input = &input[1..];
                    if byte == b'\n' {
                        *self = after_size(size);
                    }
                }
                Chunked::Data(left) => {
                    let take = left.min(input.len());
                    out(&input[..take]);
                    input = &input[take..];
                    *self = if take == left {
                        Chunked::DataCr
                    } else {
                        Chunked::Data(left - take)
                    };
                }
                Chunked::DataCr => {
                    input = &input[1..];
                    *self = Chunked::DataLf;
                }
                Chunked::DataLf => {
                    input = &input[1..];
                    *self = Chunked::Size;
                }
                Chunked::Done => return true,
            }
        }
        matches!(self, Chunked::Done)
    }
}

/// Opens `GET /events` and reads the response head; returns the socket, the
/// body bytes that came with the head, and whether the body is chunked.
async fn open(port: u16) -> Result<(TcpStream, Vec<u8>, bool), Error> {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await?;
    socket.set_nodelay(true)?;
    // Reset on close: tens of thousands of connections per run must not
    // leave ephemeral ports in TIME_WAIT.
    socket.set_zero_linger()?;
    socket
        .write_all(b"GET /events HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n")
        .await?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 2048];
    for _ in 0..64 {
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
            return Ok((socket, head[end + 4..].to_vec(), chunked));
        }
    }
    Err("response head too long".into())
}

async fn subscribe(
    port: u16,
    events: u64,
    connecting: Arc<Semaphore>,
    connected: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> Result<Tally, Error> {
    let permit = connecting.acquire_owned().await?;
    let (mut socket, leftover, chunked) = open(port).await?;
    drop(permit);
    connected.fetch_add(1, Relaxed);
    let mut reader = Reader::new(events);
    let mut chunks = chunked.then(Chunked::default);
    let mut feed = |bytes: &[u8], reader: &mut Reader| {
        let now = now_ns();
        reader.tally.last_read_ns = now;
        match &mut chunks {
            Some(chunks) => chunks.feed(bytes, &mut |data| reader.feed(data, now)),
            None => {
                reader.feed(bytes, now);
                false
            }
        }
    };
    let mut ended = feed(&leftover, &mut reader);
    let mut buf = vec![0u8; 4096];
    while !ended && !reader.tally.done {
        tokio::select! {
            read = socket.read(&mut buf) => match read? {
                0 => ended = true,
                n => ended = feed(&buf[..n], &mut reader),
            },
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    Ok(reader.tally)
}

fn client(args: &Args) -> Result<(), Error> {
    let ports: Vec<u16> = args
        .get("ports")?
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let subscribers: usize = args.num("subscribers")?;
    let events: u64 = args.num("events")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut commands = stdin_commands();
        let connecting = Arc::new(Semaphore::new(CONNECTING));
        let connected = Arc::new(AtomicUsize::new(0));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::with_capacity(subscribers);
        for i in 0..subscribers {
            tasks.push(tokio::spawn(subscribe(
                ports[i % ports.len()],
                events,
                connecting.clone(),
                connected.clone(),
                stop_rx.clone(),
            )));
        }
        let deadline = Instant::now() + STEP_TIMEOUT;
        while connected.load(Relaxed) < subscribers {
            if Instant::now() > deadline {
                return Err("the subscribers did not all connect in time".into());
            }
            if let Some(task) = tasks.iter_mut().find(|task| task.is_finished()) {
                task.await??;
                return Err("a subscriber ended while connecting".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        say("connected")?;
        match commands.recv().await.as_deref() {
            Some("start") => {}
            other => return Err(format!("expected start, got {other:?}").into()),
        }
        let cpu_start = cpu_ns(std::process::id());
        let wall_start = Instant::now();
        let mut joined = Box::pin(futures::future::join_all(tasks));
        let mut drain: Option<tokio::time::Instant> = None;
        let hard_deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        let results = loop {
            let stop_at = drain.unwrap_or(hard_deadline).min(hard_deadline);
            tokio::select! {
                results = &mut joined => break results,
                command = commands.recv(), if drain.is_none() => match command.as_deref() {
                    Some(command) if command.starts_with("drain ") => {
                        let ms: u64 = command["drain ".len()..].parse()?;
                        drain = Some(tokio::time::Instant::now() + Duration::from_millis(ms));
                    }
                    _ => drain = Some(tokio::time::Instant::now()),
                },
                _ = tokio::time::sleep_until(stop_at), if !*stop_tx.borrow() => {
                    stop_tx.send_replace(true);
                }
            }
        };
        let client_cpu = cpu_ns(std::process::id()).saturating_sub(cpu_start);
        let wall = wall_start.elapsed();
        let mut totals = BTreeMap::<&str, u64>::new();
        let mut latencies = Vec::new();
        let mut last_read = 0;
        let mut incomplete = 0;
        for result in results {
            let mut tally = result??;
            *totals.entry("delivered").or_default() += tally.events;
            *totals.entry("missing").or_default() +=
                tally.missing + events.saturating_sub(tally.next_seq);
            *totals.entry("disorder").or_default() += tally.disorder;
            *totals.entry("lag_notices").or_default() += tally.lag_notices;
            *totals.entry("lag_reported").or_default() += tally.lag_reported;
            incomplete += u64::from(!tally.done);
            last_read = last_read.max(tally.last_read_ns);
            latencies.append(&mut tally.latencies_ns);
        }
        latencies.sort_unstable();
        let at = |q: f64| {
            let index = ((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1);
            latencies.get(index).copied().unwrap_or(0) as f64 / 1e6
        };
        let mut line = String::from("RESULT");
        for (key, value) in &totals {
            line += &format!(" {key}={value}");
        }
        line += &format!(
            " incomplete={incomplete} last_read_ns={last_read} p50_ms={} p99_ms={} max_ms={} client_cpu={}",
            at(0.50),
            at(0.99),
            at(1.0),
            client_cpu as f64 / wall.as_nanos().max(1) as f64
        );
        say(&line)?;
        // Stay until told (or stdin closes), so that the orchestrator can
        // still read this process's CPU time.
        let _ = tokio::time::timeout(STEP_TIMEOUT, commands.recv()).await;
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Process measurements

/// CPU time spent by the whole machine outside idle, in nanoseconds
/// (`/proc/stat`, in USER_HZ = 100 ticks a second).
fn machine_busy_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    busy * 10_000_000
}

// ---------------------------------------------------------------------------
// Orchestrator

/// A child process spoken to through stdin and stdout lines; killed on drop.
struct Proc {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: std_mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(name: &str, mut command: Command) -> Result<Self, Error> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let lines = line_reader(child.stdout.take().ok_or("no stdout")?);
        Ok(Self {
            name: name.to_owned(),
            child,
            stdin,
            lines,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(&mut self, line: &str) -> Result<(), Error> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// The rest of the next line starting with `prefix`.
    fn expect(&self, prefix: &str, timeout: Duration) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => match line.strip_prefix(prefix) {
                    Some(rest) => return Ok(rest.trim().to_owned()),
                    None => eprintln!("{}: {line}", self.name),
                },
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("{}: no {prefix:?} within {timeout:?}", self.name).into());
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("{}: exited before {prefix:?}", self.name).into());
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" | "--quick" => {}
            "--no-pin" => options.pin = false,
            "--buffer" => options.buffer = Some(value()?.parse()?),
            "--runtimes" | "--runtime" => {
                options.runtimes = value()?.split(',').map(String::from).collect();
            }
            "--noise-limit" => options.noise_limit = value()?.parse::<f64>()? / 100.0,
            "--runs" => options.runs = value()?.parse()?,
            "--subscribers" => options.subscribers = value()?.parse()?,
            "--rates" | "--rate" => {
                options.rates = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--impls" => {
                options.impls = value()?
                    .split(',')
                    .map(Imp::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--secs" => options.secs = value()?.parse()?,
            "--redis-subscribers" => options.redis_subscribers = value()?.parse()?,
            "--redis-rates" | "--redis-rate" => {
                options.redis_rates = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--sections" => options.sections = value()?.split(',').map(String::from).collect(),
            other => return Err(format!("unknown option {other}").into()),
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

/// How the processes of one run are placed, and how much other load a run tolerates.
struct Placement {
    exe: PathBuf,
    pin: bool,
    /// Other processes' CPU (in cores) above which a run is done again.
    noise_limit: f64,
    /// How long to wait for a quiet machine before each run.
    quiet_wait: Duration,
    /// The buffer of tower-sse's layers, when not the default.
    buffer: Option<usize>,
    /// The servers' tokio scheduler: `current` or `multi` (one worker).
    runtime: String,
}

impl Placement {
    /// Waits (at most `quiet_wait`) until other processes use less than
    /// `noise_limit` of a core over half a second.
    fn wait_quiet(&self) {
        let deadline = Instant::now() + self.quiet_wait;
        let mut busy = 0.0;
        while Instant::now() < deadline {
            let (start, wall) = (machine_busy_ns(), Instant::now());
            std::thread::sleep(Duration::from_millis(500));
            busy = machine_busy_ns().saturating_sub(start) as f64
                / wall.elapsed().as_nanos().max(1) as f64;
            if busy < self.noise_limit {
                return;
            }
        }
        if !self.quiet_wait.is_zero() {
            println!(
                "  (machine still busy after {:?}: {:.0}% of a core in use by others)",
                self.quiet_wait,
                busy * 100.0
            );
        }
    }

    fn command(&self, core: usize) -> Command {
        if self.pin {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(core.to_string()).arg(&self.exe);
            command
        } else {
            Command::new(&self.exe)
        }
    }
}

/// One section: implementations compared at the same load.
struct Section {
    name: &'static str,
    impls: Vec<Imp>,
    subscribers: usize,
    rate: u64,
    secs: f64,
    /// `redis://…` and a key prefix stem, for [`Imp::Redis`].
    redis: Option<(String, String)>,
    /// The Redis server's pid when this bench started it.
    redis_pid: Option<u32>,
}

impl Section {
    fn events(&self) -> u64 {
        ((self.rate as f64 * self.secs).round() as u64).max(1)
    }
}

type Metrics = BTreeMap<String, f64>;

fn orchestrate(args: &[String]) -> Result<(), Error> {
    let options = parse_options(args)?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let taskset = Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    let pin = options.pin && cores >= 2 && taskset;
    println!(
        "fan-out benchmark{}: {} run(s) per implementation, interleaved; {}",
        if options.quick { " (quick)" } else { "" },
        options.runs * 2,
        if pin {
            "servers pinned to core 0, client (and redis-server) to core 1".to_owned()
        } else {
            format!("not pinned ({cores} core(s), taskset: {taskset})")
        }
    );
    let started = Instant::now();
    for runtime in &options.runtimes {
        let placement = Placement {
            exe: std::env::current_exe()?,
            pin,
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
                let section = Section {
                    name: "memory",
                    impls: options.impls.clone(),
                    subscribers: options.subscribers,
                    rate,
                    secs: options.secs,
                    redis: None,
                    redis_pid: None,
                };
                run_section(&placement, &section, options.runs)?;
            }
        }
        if options.sections.iter().any(|s| s == "redis") {
            redis_section(&placement, &options)?;
        }
    }
    println!("\ntotal time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(feature = "redis")]
fn redis_section(placement: &Placement, options: &Options) -> Result<(), Error> {
    let Some(redis) = redis::Redis::start(placement)? else {
        return Ok(());
    };
    for &rate in &options.redis_rates {
        let section = Section {
            name: "redis",
            impls: vec![Imp::Hub, Imp::Redis],
            subscribers: options.redis_subscribers,
            rate,
            secs: options.secs,
            redis: Some((
                redis.url.clone(),
                format!("tower-sse-fanout-bench:{}:", now_ns()),
            )),
            redis_pid: redis.pid(),
        };
        let result = run_section(placement, &section, options.runs);
        redis.cleanup(&section);
        result?;
    }
    Ok(())
}

#[cfg(not(feature = "redis"))]
fn redis_section(_placement: &Placement, _options: &Options) -> Result<(), Error> {
    println!("\n== redis: skipped (build with --features redis)");
    Ok(())
}

fn run_section(placement: &Placement, section: &Section, runs: usize) -> Result<(), Error> {
    println!(
        "\n== {} ({}-thread runtime): {} subscribers on one topic, {} events/s for {} s ({} events), {}",
        section.name,
        placement.runtime,
        section.subscribers,
        section.rate,
        section.secs,
        section.events(),
        section
            .impls
            .iter()
            .map(|imp| imp.label())
            .collect::<Vec<_>>()
            .join(" vs ")
    );
    let mut results: BTreeMap<Imp, Vec<Metrics>> = BTreeMap::new();
    for run in 0..runs * 2 {
        let mut order = section.impls.clone();
        if run % 2 == 1 {
            order.reverse();
        }
        // A B, B A: each pair of runs is one A B B A block.
        for imp in order {
            let mut attempt = 0;
            let metrics = loop {
                attempt += 1;
                placement.wait_quiet();
                let started = Instant::now();
                let metrics = run_once(placement, section, imp, run)?;
                let noisy = metrics["other_cpu"] > placement.noise_limit;
                println!(
                    "  run {} {:<15} {:>7.0} delivered/s  p50 {:>7.2} ms  p99 {:>7.2} ms  {:>6.0} B/sub  server CPU {:>3.0}%  others' CPU {:>3.0}%  publish {:.2} s  missing {}  ({:.1} s){}",
                    run / 2 + 1,
                    imp.name(),
                    metrics["delivered_per_s"],
                    metrics["p50_ms"],
                    metrics["p99_ms"],
                    metrics["rss_per_sub"],
                    metrics["server_cpu"] * 100.0,
                    metrics["other_cpu"] * 100.0,
                    metrics["publish_secs"],
                    metrics["missing"],
                    started.elapsed().as_secs_f64(),
                    if noisy && attempt < MAX_ATTEMPTS {
                        " noisy: again"
                    } else {
                        ""
                    }
                );
                if !noisy || attempt >= MAX_ATTEMPTS {
                    break metrics;
                }
            };
            results.entry(imp).or_default().push(metrics);
        }
    }
    report(section, &results);
    Ok(())
}

fn run_once(
    placement: &Placement,
    section: &Section,
    imp: Imp,
    run: usize,
) -> Result<Metrics, Error> {
    let mut servers = Vec::new();
    let nodes = if imp == Imp::Redis { 2 } else { 1 };
    for node in 0..nodes {
        let mut command = placement.command(0);
        command.arg("__server").arg(format!("imp={}", imp.name()));
        if let Some(buffer) = placement.buffer {
            command.arg(format!("buffer={buffer}"));
        }
        command.arg(format!("runtime={}", placement.runtime));
        if let Some((url, prefix)) = &section.redis {
            command
                .arg(format!("redis={url}"))
                .arg(format!("prefix={prefix}{run}:"));
        }
        servers.push(Proc::spawn(
            &format!("{} node {node}", imp.name()),
            command,
        )?);
    }
    let mut ports = Vec::new();
    for server in &servers {
        ports.push(server.expect("port ", Duration::from_secs(30))?);
    }
    std::thread::sleep(Duration::from_millis(300));
    let base_rss: u64 = servers.iter().map(|s| rss_kib(s.pid())).sum();
    let events = section.events();
    let mut command = placement.command(1);
    command
        .arg("__client")
        .arg(format!("ports={}", ports.join(",")))
        .arg(format!("subscribers={}", section.subscribers))
        .arg(format!("events={events}"));
    let connect_started = Instant::now();
    let mut client = Proc::spawn("client", command)?;
    client.expect("connected", STEP_TIMEOUT)?;
    for (i, server) in servers.iter_mut().enumerate() {
        let share = (section.subscribers + nodes - 1 - i) / nodes;
        server.send(&format!("wait {share}"))?;
        let counted: usize = server.expect("subscribed ", STEP_TIMEOUT)?.parse()?;
        if counted < share {
            return Err(format!("{}: {counted} of {share} subscribed", server.name).into());
        }
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    std::thread::sleep(SETTLE);
    let connected_rss: u64 = servers.iter().map(|s| rss_kib(s.pid())).sum();
    let server_cpu_start: u64 = servers.iter().map(|s| cpu_ns(s.pid())).sum();
    let redis_cpu_start = section.redis_pid.map_or(0, cpu_ns);
    let client_cpu_start = cpu_ns(client.pid());
    let machine_start = machine_busy_ns();
    let wall_start = Instant::now();
    client.send("start")?;
    let interval_us = (1e6 / section.rate as f64).round() as u64;
    servers[0].send(&format!("publish {events} {interval_us}"))?;
    let published = servers[0].expect(
        "published ",
        Duration::from_secs_f64(section.secs) + STEP_TIMEOUT,
    )?;
    let published: Vec<u64> = published
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [publish_start, publish_end, publish_failed] = published[..] else {
        return Err("bad published line".into());
    };
    client.send(&format!("drain {}", DRAIN.as_millis()))?;
    let result = client.expect("RESULT ", STEP_TIMEOUT)?;
    let wall = wall_start.elapsed().as_nanos().max(1) as f64;
    let server_cpu = servers
        .iter()
        .map(|s| cpu_ns(s.pid()))
        .sum::<u64>()
        .saturating_sub(server_cpu_start);
    let redis_cpu = section
        .redis_pid
        .map_or(0, cpu_ns)
        .saturating_sub(redis_cpu_start);
    // The client has printed its result but not exited yet (it is reaped
    // on drop): its CPU time is still readable.
    let client_cpu = cpu_ns(client.pid()).saturating_sub(client_cpu_start);
    let machine = machine_busy_ns().saturating_sub(machine_start);
    let others = machine.saturating_sub(server_cpu + redis_cpu + client_cpu);
    let after_rss: u64 = servers.iter().map(|s| rss_kib(s.pid())).sum();
    let mut lagged = 0.0;
    for server in &mut servers {
        server.send("stats")?;
        let stats = server.expect("stats ", Duration::from_secs(10))?;
        lagged += stats
            .split_whitespace()
            .nth(1)
            .ok_or("bad stats line")?
            .parse::<f64>()?;
    }
    let mut metrics = Metrics::new();
    for pair in result.split_whitespace() {
        let (key, value) = pair.split_once('=').ok_or("bad RESULT")?;
        metrics.insert(key.into(), value.parse()?);
    }
    let n = section.subscribers as f64;
    let last_read = metrics["last_read_ns"] as u64;
    let window = last_read.saturating_sub(publish_start).max(1) as f64 / 1e9;
    let extra = [
        ("expected", n * events as f64),
        ("delivered_per_s", metrics["delivered"] / window),
        ("offered_per_s", section.rate as f64 * n),
        (
            "publish_secs",
            publish_end.saturating_sub(publish_start) as f64 / 1e9,
        ),
        ("publish_failed", publish_failed as f64),
        ("window_secs", window),
        ("connect_secs", connect_secs),
        (
            "rss_per_sub",
            connected_rss.saturating_sub(base_rss) as f64 * 1024.0 / n,
        ),
        (
            "rss_per_sub_after",
            after_rss.saturating_sub(base_rss) as f64 * 1024.0 / n,
        ),
        ("base_rss_mib", base_rss as f64 / 1024.0),
        ("server_rss_mib", after_rss as f64 / 1024.0),
        ("server_cpu", server_cpu as f64 / wall),
        ("redis_cpu", redis_cpu as f64 / wall),
        ("other_cpu", others as f64 / wall),
        ("server_lagged", lagged),
    ];
    for (key, value) in extra {
        metrics.insert(key.into(), value);
    }
    let delivered = metrics["delivered"];
    let problems = metrics["missing"] + metrics["disorder"] + metrics["incomplete"];
    if problems > 0.0 || delivered < n * events as f64 {
        eprintln!(
            "  warning: {} delivered {delivered} of {} (missing {}, out of order {}, incomplete streams {}, lagged notices {} for {} events; server lagged {lagged}; publish failures {publish_failed})",
            imp.name(),
            n * events as f64,
            metrics["missing"],
            metrics["disorder"],
            metrics["incomplete"],
            metrics["lag_notices"],
            metrics["lag_reported"],
        );
    }
    Ok(metrics)
}

fn spread(values: &[f64], scale: f64) -> String {
    if values.len() == 1 {
        return fmt_num(values[0] * scale);
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min) * scale;
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max) * scale;
    format!(
        "{} ({}..{})",
        fmt_num(median(values) * scale),
        fmt_num(min),
        fmt_num(max)
    )
}

/// The columns of the report: (key, label, scale, higher is better).
const COLUMNS: [(&str, &str, f64, bool); 9] = [
    ("delivered_per_s", "delivered events/s", 1.0, true),
    ("p50_ms", "p50 ms", 1.0, false),
    ("p99_ms", "p99 ms", 1.0, false),
    ("max_ms", "max ms", 1.0, false),
    ("rss_per_sub", "RSS B/subscriber", 1.0, false),
    ("rss_per_sub_after", "RSS B/sub after", 1.0, false),
    ("server_cpu", "server CPU %", 100.0, false),
    ("client_cpu", "client CPU %", 100.0, false),
    ("missing", "missing", 1.0, false),
];

fn report(section: &Section, results: &BTreeMap<Imp, Vec<Metrics>>) {
    let series = |imp: Imp, key: &str| -> Vec<f64> {
        results
            .get(&imp)
            .map(|runs| runs.iter().filter_map(|m| m.get(key).copied()).collect())
            .unwrap_or_default()
    };
    let mut columns: Vec<_> = COLUMNS.to_vec();
    if section.redis_pid.is_some() {
        columns.push(("redis_cpu", "redis CPU %", 100.0, false));
    }
    columns.push(("other_cpu", "others' CPU %", 100.0, false));
    println!(
        "\n  offered {} events/s ({} subscribers x {} events/s); median (min..max) of {} runs",
        section.rate as usize * section.subscribers,
        section.subscribers,
        section.rate,
        results.values().next().map_or(0, Vec::len)
    );
    println!("  | implementation | {} |", {
        let labels: Vec<&str> = columns.iter().map(|c| c.1).collect();
        labels.join(" | ")
    });
    println!("  |---|{}", "---|".repeat(columns.len()));
    for &imp in &section.impls {
        let cells: Vec<String> = columns
            .iter()
            .map(|(key, _, scale, _)| spread(&series(imp, key), *scale))
            .collect();
        println!("  | {} | {} |", imp.label(), cells.join(" | "));
    }
    for &imp in &section.impls {
        println!(
            "  {}: connect {} s, base RSS {} MiB, RSS after {} MiB, lagged notices {}, server-counted lagged {}",
            imp.name(),
            fmt_num(median(&series(imp, "connect_secs"))),
            fmt_num(median(&series(imp, "base_rss_mib"))),
            fmt_num(median(&series(imp, "server_rss_mib"))),
            fmt_num(median(&series(imp, "lag_notices"))),
            fmt_num(median(&series(imp, "server_lagged"))),
        );
    }
    let a = section.impls[0];
    for (b, (key, label, _, higher)) in section.impls[1..]
        .iter()
        .flat_map(|b| columns.iter().map(move |column| (*b, column)))
    {
        if matches!(*key, "missing" | "redis_cpu" | "other_cpu") {
            continue;
        }
        let ratios: Vec<f64> = series(b, key)
            .iter()
            .zip(series(a, key))
            .map(|(b, a)| b / a)
            .collect();
        let per_run: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "  ratio {}/{} {label}: {} [{}] ({} is better)",
            b.name(),
            a.name(),
            spread(&ratios, 1.0),
            per_run.join(" "),
            if *higher { "higher" } else { "lower" }
        );
    }
}

#[cfg(feature = "redis")]
mod redis {
    //! The Redis server of the `redis` section: `REDIS_URL`, or one started here.

    use super::*;

    pub(super) struct Redis {
        pub(super) url: String,
        process: Option<Child>,
        dir: Option<PathBuf>,
    }

    impl Redis {
        /// `None` (with a message) when there is no Redis to use.
        pub(super) fn start(placement: &Placement) -> Result<Option<Self>, Error> {
            if let Ok(url) = std::env::var("REDIS_URL") {
                println!("\nredis: using REDIS_URL={url}");
                return Ok(Some(Self {
                    url,
                    process: None,
                    dir: None,
                }));
            }
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let dir = std::env::temp_dir().join(format!(
                "tower-sse-fanout-redis-{}-{port}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir)?;
            let mut command = if placement.pin {
                let mut command = Command::new("taskset");
                command.arg("-c").arg("1").arg("redis-server");
                command
            } else {
                Command::new("redis-server")
            };
            command
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .arg("--dir")
                .arg(&dir)
                .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            let process = match command.spawn() {
                Ok(process) => process,
                Err(err) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    println!("\n== redis: skipped (set REDIS_URL or install redis-server: {err})");
                    return Ok(None);
                }
            };
            let redis = Self {
                url: format!("redis://127.0.0.1:{port}"),
                process: Some(process),
                dir: Some(dir),
            };
            for _ in 0..100 {
                if redis
                    .command("PING")
                    .is_ok_and(|reply| reply.starts_with("+PONG"))
                {
                    println!("\nredis: started redis-server on 127.0.0.1:{port}");
                    return Ok(Some(redis));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err("redis-server did not answer PING within 5 s".into())
        }

        pub(super) fn pid(&self) -> Option<u32> {
            self.process.as_ref().map(Child::id)
        }

        /// One inline command; the first line of the reply.
        fn command(&self, command: &str) -> Result<String, Error> {
            let addr = self
                .url
                .strip_prefix("redis://")
                .and_then(|rest| rest.split('/').next())
                .filter(|addr| !addr.contains('@'))
                .ok_or("REDIS_URL is not redis://host:port")?;
            let mut socket = std::net::TcpStream::connect(addr)?;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            socket.write_all(format!("{command}\r\n").as_bytes())?;
            let mut line = String::new();
            BufReader::new(socket).read_line(&mut line)?;
            Ok(line)
        }

        /// Deletes the streams the section wrote (on a shared `REDIS_URL`).
        pub(super) fn cleanup(&self, section: &Section) {
            if self.process.is_some() {
                return;
            }
            if let Some((_, prefix)) = &section.redis {
                for run in 0..64 {
                    let _ = self.command(&format!("DEL {prefix}{run}:{TOPIC}"));
                }
            }
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            if let Some(mut process) = self.process.take() {
                let _ = process.kill();
                let _ = process.wait();
            }
            if let Some(dir) = self.dir.take() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}
