//! The h2 client role: opens `conns` HTTP/2 connections (prior knowledge)
//! with `per_conn` streams each, counts events, DATA frames and socket
//! reads, and prints one `RESULT` line.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll, ready},
    time::Instant,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::Semaphore,
};

use super::Shape;
use crate::{
    Error,
    loopback::{
        client::SseCounter,
        scenarios::{Scenario, payload},
    },
    process,
    stats::{self, CpuClock, Metrics},
};

pub(crate) fn client(scenario: &Scenario, shape: &Shape) -> Result<(), Error> {
    let result = process::runtime("current")?.block_on(read_all(scenario, *shape))?;
    let line = stats::result_line(result.iter().map(|(k, v)| (k.as_str(), v.to_string())));
    process::say(&line)
}

/// Totals over every stream and connection of a run.
#[derive(Default)]
struct Totals {
    events: AtomicU64,
    /// Body bytes, and the DATA frames that carried them.
    bytes: AtomicU64,
    frames: AtomicU64,
    /// Socket reads that returned data, and their bytes (HTTP/2 framing
    /// included).
    reads: AtomicU64,
    read_bytes: AtomicU64,
    /// First data and last end over every stream.
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

/// A TCP stream counting the reads that return data.
struct CountedIo {
    io: TcpStream,
    totals: Arc<Totals>,
}

impl AsyncRead for CountedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let read = buf.filled().len() - before;
        if read > 0 {
            this.totals.reads.fetch_add(1, Relaxed);
            this.totals.read_bytes.fetch_add(read as u64, Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for CountedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

async fn read_all(sc: &Scenario, shape: Shape) -> Result<Metrics, Error> {
    // CPU shares are measured from the first data on, like the rates.
    let clock = Arc::new(OnceLock::new());
    let totals = Arc::new(Totals::default());
    let connecting = Arc::new(Semaphore::new(64));
    let mut connections = Vec::with_capacity(shape.conns);
    for _ in 0..shape.conns {
        let (connecting, totals, clock) = (connecting.clone(), totals.clone(), clock.clone());
        let (port, server_pid) = (sc.port, sc.server_pid);
        connections.push(tokio::spawn(async move {
            let permit = connecting.acquire_owned().await?;
            let sender = connect(port, shape, totals.clone()).await?;
            drop(permit);
            let mut streams = Vec::with_capacity(shape.per_conn);
            for _ in 0..shape.per_conn {
                let (sender, totals, clock) = (sender.clone(), totals.clone(), clock.clone());
                streams.push(tokio::spawn(async move {
                    let on_first_data = || {
                        clock.get_or_init(|| CpuClock::start(server_pid));
                    };
                    read_stream(sender, port, &totals, &on_first_data).await
                }));
            }
            for stream in streams {
                stream.await??;
            }
            Ok::<_, Error>(())
        }));
    }
    for connection in connections {
        connection.await??;
    }
    let (server_cpu, client_cpu) = clock.get().ok_or("no data")?.shares();
    let events = totals.events.load(Relaxed);
    let expected = (shape.conns * shape.per_conn * sc.events) as u64;
    if events != expected {
        return Err(format!("received {events} events, expected {expected}").into());
    }
    let first = totals.first.lock().unwrap_or_else(|e| e.into_inner());
    let last = totals.last.lock().unwrap_or_else(|e| e.into_inner());
    let secs = last
        .ok_or("no end")?
        .duration_since(first.ok_or("no data")?)
        .as_secs_f64()
        .max(1e-9);
    let payload = (payload(sc.size).len() as u64 * events) as f64;
    let bytes = totals.bytes.load(Relaxed) as f64;
    let frames = totals.frames.load(Relaxed).max(1) as f64;
    let reads = totals.reads.load(Relaxed).max(1) as f64;
    Ok(Metrics::from([
        ("events_per_s".into(), events as f64 / secs),
        ("payload_mb_per_s".into(), payload / secs / 1e6),
        ("wire_mb_per_s".into(), bytes / secs / 1e6),
        ("secs".into(), secs),
        ("server_cpu".into(), server_cpu),
        ("client_cpu".into(), client_cpu),
        // Per CPU-second: what each side costs, whatever share of a core
        // a busy machine left it.
        (
            "events_per_server_cpu_s".into(),
            events as f64 / secs / server_cpu.max(1e-9),
        ),
        (
            "events_per_client_cpu_s".into(),
            events as f64 / secs / client_cpu.max(1e-9),
        ),
        ("frames_per_s".into(), frames / secs),
        ("bytes_per_frame".into(), bytes / frames),
        ("events_per_frame".into(), events as f64 / frames),
        (
            "bytes_per_read".into(),
            totals.read_bytes.load(Relaxed) as f64 / reads,
        ),
    ]))
}

/// One HTTP/2 connection with the shape's settings, driven by a task of
/// its own; its error (a GOAWAY, a protocol error) is printed, and the
/// streams on it fail.
async fn connect(
    port: u16,
    shape: Shape,
    totals: Arc<Totals>,
) -> Result<h2::client::SendRequest<Bytes>, Error> {
    let io = TcpStream::connect(("127.0.0.1", port)).await?;
    io.set_nodelay(true)?;
    // Reset on close: no ephemeral ports left in TIME_WAIT.
    io.set_zero_linger()?;
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(shape.window)
        .initial_connection_window_size(shape.conn_window)
        .max_frame_size(shape.frame);
    if let Some(budget) = shape.budget {
        builder.data_frame_budget(budget);
    }
    let (sender, connection) = builder
        .handshake::<_, Bytes>(CountedIo { io, totals })
        .await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            eprintln!("h2 connection ended with an error: {err}");
        }
    });
    Ok(sender)
}

/// Opens one stream and reads its body to the end, counting events and
/// releasing each DATA frame's flow-control capacity once counted.
async fn read_stream(
    sender: h2::client::SendRequest<Bytes>,
    port: u16,
    totals: &Totals,
    on_first_data: &(dyn Fn() + Sync),
) -> Result<(), Error> {
    let request = http::Request::get(format!("http://127.0.0.1:{port}/sse"))
        .header("accept", "text/event-stream")
        .body(())?;
    let mut sender = sender.ready().await?;
    let (response, _) = sender.send_request(request, true)?;
    let response = response.await?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("unexpected status {}", response.status()).into());
    }
    let mut body = response.into_body();
    let mut counter = SseCounter::default();
    let mut frames = 0u64;
    let mut first_data = None;
    while let Some(data) = body.data().await {
        let data = data?;
        if first_data.is_none() {
            on_first_data();
            first_data = Some(Instant::now());
        }
        frames += 1;
        counter.feed(&data);
        body.flow_control().release_capacity(data.len())?;
    }
    let end = Instant::now();
    if let Some(at) = first_data {
        let mut first = totals.first.lock().unwrap_or_else(|e| e.into_inner());
        *first = Some(first.map_or(at, |f: Instant| f.min(at)));
    }
    let mut last = totals.last.lock().unwrap_or_else(|e| e.into_inner());
    *last = Some(last.map_or(end, |l: Instant| l.max(end)));
    totals.events.fetch_add(counter.events, Relaxed);
    totals.bytes.fetch_add(counter.bytes, Relaxed);
    totals.frames.fetch_add(frames, Relaxed);
    Ok(())
}
