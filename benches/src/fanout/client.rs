//! The client role: every subscriber a raw HTTP/1.1 connection, each
//! checking its sequence numbers and recording latencies; one `RESULT`
//! line for the run.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use tokio::sync::{Semaphore, watch};

use super::STEP_TIMEOUT;
use crate::{
    Error,
    chunked::Lines,
    cli::KeyValues,
    client::Connection,
    process::{self, say},
    stats::{self, cpu_ns, now_ns},
};

/// Connections being set up at once by the client.
const CONNECTING: usize = 256;

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
    lines: Lines<64>,
    lagged: bool,
    tally: Tally,
}

impl Reader {
    fn new(events: u64) -> Self {
        Self {
            last_seq: events.saturating_sub(1),
            lines: Lines::default(),
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
        let Self {
            last_seq,
            lines,
            lagged,
            tally,
        } = self;
        // The lines this reads are short: a longer one is cut at 64 bytes.
        lines.feed(data, |line, _len| {
            Self::handle_line(*last_seq, lagged, tally, line, now);
        });
    }

    fn handle_line(last_seq: u64, lagged: &mut bool, tally: &mut Tally, line: &[u8], now: u64) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            *lagged = false;
        } else if line == b"event: lagged" {
            *lagged = true;
        } else if let Some(data) = line.strip_prefix(b"data: ") {
            let text = std::str::from_utf8(data).unwrap_or("");
            if *lagged {
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
            if seq >= last_seq {
                tally.done = true;
            }
        }
    }
}

async fn subscribe(
    port: u16,
    events: u64,
    connecting: Arc<Semaphore>,
    connected: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> Result<Tally, Error> {
    let permit = connecting.acquire_owned().await?;
    let mut connection = Connection::open(port, "/events").await?;
    drop(permit);
    connected.fetch_add(1, Relaxed);
    let mut reader = Reader::new(events);
    let feed = |bytes: &[u8], connection: &mut Connection, reader: &mut Reader| {
        let now = now_ns();
        reader.tally.last_read_ns = now;
        connection.decode(bytes, &mut |data| reader.feed(data, now))
    };
    let leftover = connection.take_leftover();
    let mut ended = feed(&leftover, &mut connection, &mut reader);
    let mut buf = vec![0u8; 4096];
    while !ended && !reader.tally.done {
        tokio::select! {
            read = connection.read(&mut buf) => match read? {
                0 => ended = true,
                n => ended = feed(&buf[..n], &mut connection, &mut reader),
            },
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    Ok(reader.tally)
}

pub(crate) fn client(args: &KeyValues) -> Result<(), Error> {
    let ports: Vec<u16> = args
        .get("ports")?
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let subscribers: usize = args.num("subscribers")?;
    let events: u64 = args.num("events")?;
    process::runtime("current")?.block_on(async {
        let mut commands = process::stdin_commands();
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
        let at = |q: f64| (stats::quantile(&latencies, q) as f64 / 1e6).to_string();
        let mut pairs: Vec<(&str, String)> = totals
            .iter()
            .map(|(key, value)| (*key, value.to_string()))
            .collect();
        pairs.extend([
            ("incomplete", incomplete.to_string()),
            ("last_read_ns", last_read.to_string()),
            ("p50_ms", at(0.50)),
            ("p99_ms", at(0.99)),
            ("max_ms", at(1.0)),
            (
                "client_cpu",
                (client_cpu as f64 / wall.as_nanos().max(1) as f64).to_string(),
            ),
        ]);
        let line = stats::result_line(pairs);
        say(&line)?;
        // Stay until told (or stdin closes), so that the orchestrator can
        // still read this process's CPU time.
        let _ = tokio::time::timeout(STEP_TIMEOUT, commands.recv()).await;
        Ok(())
    })
}
