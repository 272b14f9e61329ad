//! The client role: opens the scenario's streams with the raw client,
//! counts events and bytes, and prints one `RESULT` line.

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use tokio::sync::{Semaphore, watch};

use super::scenarios::{Kind, Scenario, payload};
use crate::{
    Error,
    chunked::Lines,
    client::Connection,
    process,
    stats::{self, CpuClock, Metrics, now_ns, rss_kib},
};

pub(crate) fn client(scenario: &Scenario) -> Result<(), Error> {
    let result = process::runtime("current")?.block_on(async {
        match scenario.kind {
            Kind::Throughput => client_throughput(scenario).await,
            Kind::Idle => client_idle(scenario).await,
            Kind::Latency => client_latency(scenario).await,
        }
    })?;
    let line = stats::result_line(result.iter().map(|(k, v)| (k.as_str(), v.to_string())));
    process::say(&line)
}

/// Counts dispatched events (a blank line after at least one field line) in
/// an SSE byte stream; comment-only blocks such as heartbeats do not count.
#[derive(Default)]
pub(crate) struct SseCounter {
    pub(crate) events: u64,
    pub(crate) bytes: u64,
    in_event: bool,
    lines: Lines<32>,
    /// Send-to-receive latencies in nanoseconds, when events carry stamps.
    latencies: Option<Vec<u64>>,
}

impl SseCounter {
    pub(crate) fn feed(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        let received_at = if self.latencies.is_some() {
            now_ns()
        } else {
            0
        };
        let Self {
            events,
            in_event,
            lines,
            latencies,
            ..
        } = self;
        lines.feed(data, |head, len| {
            let blank = len == 0 || (len == 1 && head[0] == b'\r');
            if blank {
                if *in_event {
                    *events += 1;
                    *in_event = false;
                }
                return;
            }
            if head[0] == b':' {
                return;
            }
            *in_event = true;
            if let Some(latencies) = latencies {
                if len >= 26 && head.starts_with(b"data: ") {
                    let stamp = std::str::from_utf8(&head[6..26])
                        .ok()
                        .and_then(|digits| digits.parse::<u64>().ok());
                    if let Some(stamp) = stamp {
                        latencies.push(received_at.saturating_sub(stamp));
                    }
                }
            }
        });
    }
}

/// Reads one response body to its end, counting events.
async fn read_body(
    mut connection: Connection,
    counter: &mut SseCounter,
    buffer_size: usize,
    first_data: &mut Option<Instant>,
    on_first_data: &(dyn Fn() + Sync),
) -> Result<(), Error> {
    let mut buf = vec![0u8; buffer_size];
    let mut done = false;
    let leftover = connection.take_leftover();
    if !leftover.is_empty() {
        on_first_data();
        *first_data = Some(Instant::now());
        done = connection.decode(&leftover, &mut |data| counter.feed(data));
    }
    while !done {
        let n = connection.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if first_data.is_none() {
            on_first_data();
            *first_data = Some(Instant::now());
        }
        done = connection.decode(&buf[..n], &mut |data| counter.feed(data));
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
            let connection = Connection::open(port, "/sse").await?;
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
            let mut connection = Connection::open(port, "/sse").await?;
            drop(permit);
            opened.fetch_add(1, Relaxed);
            let mut buf = [0u8; 512];
            loop {
                tokio::select! {
                    read = connection.read(&mut buf) => match read? {
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
    let connection = Connection::open(sc.port, "/sse").await?;
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
    let at = |q: f64| stats::quantile(&latencies, q) as f64 / 1e3;
    Ok(Metrics::from([
        ("p50_us".into(), at(0.50)),
        ("p99_us".into(), at(0.99)),
        ("max_us".into(), at(1.0)),
        ("server_cpu".into(), server_cpu),
        ("client_cpu".into(), client_cpu),
    ]))
}
