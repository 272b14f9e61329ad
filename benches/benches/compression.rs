//! Compressed streams: memory per idle stream, wire bytes and CPU per
//! event, per encoding and level, against the same stream uncompressed and
//! axum's `Sse` in the same run.
//!
//! ```text
//! cargo bench -p tower-sse-benches --features compression --bench compression             # both tables
//! cargo bench -p tower-sse-benches --features compression --bench compression -- memory   # one
//! cargo bench -p tower-sse-benches --features compression --bench compression -- wire
//! ```
//!
//! Events are 200-byte JSON objects with the same keys and changing values;
//! each event is a frame of its own (compressed and flushed alone: the
//! trickle of a live feed, compression's worst case). CPU is the body
//! alone, in process, on one thread: the event's creation, the queue, the
//! encoding and the compression, not hyper's write. Memory is RSS growth
//! per stream, each stream having written one event, measured in a fresh
//! process per setting (this program re-executed).

use std::{
    convert::Infallible,
    hint::black_box,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::response::{
    IntoResponse,
    sse::{Event as AxumEvent, Sse},
};
use bytes::Bytes;
use http_body::Body;
use tower_sse::{Compression, CompressionLevel, Event, EventSender, EventStream, start_stream};

/// One setting: a label, its `Accept-Encoding`, and the compression.
struct Setting {
    label: &'static str,
    accept: &'static str,
    compression: Option<Compression>,
}

/// Labels to keep (`cargo bench ... -- memory br`); none keeps all.
static FILTERS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

fn settings() -> Vec<Setting> {
    let mut all = all_settings();
    if let Some(filters) = FILTERS.get() {
        all.retain(|s| {
            s.compression.is_none() || filters.iter().any(|f| s.label.contains(f.as_str()))
        });
    }
    all
}

fn all_settings() -> Vec<Setting> {
    let only = |accept: &'static str| {
        let all = Compression::default();
        match accept {
            "gzip" => all.no_deflate().no_br().no_zstd(),
            "deflate" => all.no_gzip().no_br().no_zstd(),
            "br" => all.no_gzip().no_deflate().no_zstd(),
            _ => all.no_gzip().no_deflate().no_br(),
        }
    };
    let level = |accept, level| Some(only(accept).level(level));
    let window = |accept, level, bits| Some(only(accept).level(level).window_bits(bits));
    use CompressionLevel::{Best, Default as Dflt, Fastest, Precise};
    vec![
        Setting {
            label: "identity",
            accept: "identity",
            compression: None,
        },
        Setting {
            label: "gzip 1",
            accept: "gzip",
            compression: level("gzip", Fastest),
        },
        Setting {
            label: "gzip 6 (default)",
            accept: "gzip",
            compression: level("gzip", Dflt),
        },
        Setting {
            label: "gzip 9",
            accept: "gzip",
            compression: level("gzip", Best),
        },
        Setting {
            label: "deflate 6 (default)",
            accept: "deflate",
            compression: level("deflate", Dflt),
        },
        Setting {
            label: "br 2, window 16 (default)",
            accept: "br",
            compression: level("br", Dflt),
        },
        Setting {
            label: "br 3, window 16",
            accept: "br",
            compression: level("br", Precise(3)),
        },
        Setting {
            label: "br 4, window 16",
            accept: "br",
            compression: level("br", Precise(4)),
        },
        Setting {
            label: "br 5, window 16",
            accept: "br",
            compression: level("br", Precise(5)),
        },
        Setting {
            label: "br 2, window 22",
            accept: "br",
            compression: window("br", Dflt, 22),
        },
        Setting {
            label: "br 11, window 16",
            accept: "br",
            compression: level("br", Best),
        },
        Setting {
            label: "zstd 1, window 14",
            accept: "zstd",
            compression: level("zstd", Fastest),
        },
        Setting {
            label: "zstd 3, window 14 (default)",
            accept: "zstd",
            compression: level("zstd", Dflt),
        },
        Setting {
            label: "zstd 3, window 16",
            accept: "zstd",
            compression: window("zstd", Dflt, 16),
        },
        Setting {
            label: "zstd 3, window 21",
            accept: "zstd",
            compression: window("zstd", Dflt, 21),
        },
        Setting {
            label: "zstd 9, window 14",
            accept: "zstd",
            compression: level("zstd", Precise(9)),
        },
        Setting {
            label: "zstd 19, window 14",
            accept: "zstd",
            compression: level("zstd", Best),
        },
    ]
}

/// A 200-byte JSON object with the same keys each time.
fn json(i: usize) -> String {
    let event = format!(
        r#"{{"id":{i},"symbol":"ACME","price":{}.{:02},"volume":{},"exchange":"XNAS","currency":"USD","timestamp":"2026-12-02T06:{:02}:{:02}Z","bid":{}.5,"ask":{}.75,"status":"open"}}"#,
        100 + i % 7,
        i % 100,
        1000 + 37 * i,
        i / 60 % 60,
        i % 60,
        99 + i % 5,
        101 + i % 3,
    );
    format!("{event:<200}")
}

/// A stream body for `setting` and the sender feeding it (taken from its
/// ready function at the first poll).
fn stream(setting: &Setting) -> (Pin<Box<EventStream>>, Arc<Mutex<Option<EventSender>>>) {
    let slot = Arc::new(Mutex::new(None));
    let ready_slot = slot.clone();
    let ready = move |events: EventSender, _ctx| {
        let slot = ready_slot.clone();
        async move {
            *slot.lock().unwrap() = Some(events.clone());
            events.closed().await;
        }
    };
    let request = http::Request::builder()
        .header("accept-encoding", setting.accept)
        .body(())
        .unwrap();
    let ctx = tower_sse::StreamContext::from_request(&request);
    let mut response = start_stream(ready, ctx, Duration::from_secs(3600), 10);
    if let Some(compression) = &setting.compression {
        response = response.compression(compression.clone());
    }
    (Box::pin(response.into_http().into_body()), slot)
}

fn next_frame<B: Body<Data = Bytes>>(body: Pin<&mut B>, cx: &mut Context<'_>) -> Option<Bytes> {
    match body.poll_frame(cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
        _ => None,
    }
}

/// Bytes on the wire and nanoseconds per event over `events` events, each
/// its own frame.
fn tower_run(setting: &Setting, events: &[String]) -> (f64, f64) {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let (mut body, slot) = stream(setting);
    // The first poll calls the ready function, which hands over its sender.
    assert!(next_frame(body.as_mut(), &mut cx).is_none());
    let sender = slot.lock().unwrap().take().expect("the ready function ran");
    let mut wire = 0;
    let start = Instant::now();
    for data in events {
        sender.try_send(Event::new(data.as_str())).unwrap();
        wire += next_frame(body.as_mut(), &mut cx).expect("a frame").len();
    }
    let elapsed = start.elapsed();
    black_box(wire);
    (
        wire as f64 / events.len() as f64,
        elapsed.as_nanos() as f64 / events.len() as f64,
    )
}

/// The same events through axum's `Sse` (uncompressed: it has no compression).
fn axum_run(events: &'static [String]) -> (f64, f64) {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut next = 0;
    let source = futures::stream::poll_fn(move |_| {
        let event = events
            .get(next)
            .map(|data| Ok::<_, Infallible>(AxumEvent::default().data(data)));
        next += 1;
        Poll::Ready(event)
    });
    let mut body = std::pin::pin!(Sse::new(source).into_response().into_body());
    let mut wire = 0;
    let start = Instant::now();
    while let Some(frame) = next_frame(body.as_mut(), &mut cx) {
        wire += frame.len();
    }
    let elapsed = start.elapsed();
    (
        wire as f64 / events.len() as f64,
        elapsed.as_nanos() as f64 / events.len() as f64,
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Wire bytes and CPU per event: runs interleaved with axum's, medians of
/// `RUNS`, each ratio run by run against the axum run just before.
fn wire_table() {
    const EVENTS: usize = 5_000;
    const RUNS: usize = 5;
    let events: &'static [String] = Vec::leak((0..EVENTS).map(json).collect());
    let _runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = _runtime.enter();
    println!(
        "\n### Wire bytes and CPU per 200-byte JSON event, one event per frame ({EVENTS} events, median of {RUNS} runs)\n"
    );
    println!("| setting | bytes/event | vs identity | ns/event | vs axum `Sse` |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut identity_bytes = 0.0;
    let axum: Vec<(f64, f64)> = (0..RUNS).map(|_| axum_run(events)).collect();
    let (axum_bytes, axum_ns) = (axum[0].0, median(axum.iter().map(|r| r.1).collect()));
    println!("| axum `Sse` | {axum_bytes:.1} | | {axum_ns:.0} | 1.00× |");
    for setting in settings() {
        let mut ns = Vec::new();
        let mut ratios = Vec::new();
        let mut bytes = 0.0;
        for _ in 0..RUNS {
            let (_, axum_ns) = axum_run(events);
            let (b, n) = tower_run(&setting, events);
            bytes = b;
            ns.push(n);
            ratios.push(n / axum_ns);
        }
        if setting.compression.is_none() {
            identity_bytes = bytes;
        }
        println!(
            "| {} | {bytes:.1} | {:.3}× | {:.0} | {:.2}× |",
            setting.label,
            bytes / identity_bytes,
            median(ns),
            median(ratios),
        );
    }
}

/// RSS of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// In a child: opens `STREAMS` streams of one setting, each writing one
/// event, and prints the RSS growth per stream.
fn memory_child(index: usize) {
    const STREAMS: usize = 500;
    let setting = &all_settings()[index];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let event = json(1);
    // Warm the allocator with a few streams first.
    let mut bodies = Vec::with_capacity(STREAMS + 16);
    let mut open = |bodies: &mut Vec<_>| {
        let (mut body, slot) = stream(setting);
        assert!(next_frame(body.as_mut(), &mut cx).is_none());
        let sender = slot.lock().unwrap().take().unwrap();
        sender.try_send(Event::new(event.as_str())).unwrap();
        assert!(next_frame(body.as_mut(), &mut cx).is_some());
        bodies.push((body, sender));
    };
    for _ in 0..16 {
        open(&mut bodies);
    }
    let before = rss();
    for _ in 0..STREAMS {
        open(&mut bodies);
    }
    let after = rss();
    println!("{}", (after - before) as f64 / STREAMS as f64);
    black_box(bodies);
}

fn memory_table() {
    println!(
        "\n### RSS per idle stream after one event (500 streams, a fresh process per setting)\n"
    );
    println!("| setting | bytes per stream | over identity | 10,000 streams |");
    println!("| --- | ---: | ---: | ---: |");
    let exe = std::env::current_exe().unwrap();
    let mut identity = 0.0;
    for (index, setting) in all_settings().iter().enumerate() {
        if !settings().iter().any(|s| s.label == setting.label) {
            continue;
        }
        let output = std::process::Command::new(&exe)
            .env("TOWER_SSE_MEMORY_CHILD", index.to_string())
            .output()
            .unwrap();
        let per_stream: f64 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{}: {output:?}", setting.label));
        if setting.compression.is_none() {
            identity = per_stream;
        }
        let over = per_stream - identity;
        println!(
            "| {} | {per_stream:.0} | {over:.0} | {:.0} MiB |",
            setting.label,
            over * 10_000.0 / (1024.0 * 1024.0)
        );
    }
}

fn main() {
    if let Ok(index) = std::env::var("TOWER_SSE_MEMORY_CHILD") {
        memory_child(index.parse().unwrap());
        return;
    }
    // `cargo bench` passes `--bench`; a word selects one table.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let tables = ["memory", "wire"];
    let wants = |table: &str| {
        args.iter().any(|a| a == table) || !args.iter().any(|a| tables.contains(&a.as_str()))
    };
    // Any other word keeps only the settings whose label contains it (and identity).
    let filters: Vec<String> = args
        .iter()
        .filter(|a| !tables.contains(&a.as_str()))
        .cloned()
        .collect();
    if !filters.is_empty() {
        FILTERS.set(filters).unwrap();
    }
    if wants("memory") {
        memory_table();
    }
    if wants("wire") {
        wire_table();
    }
}
