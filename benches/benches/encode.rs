//! The encoder alone, against axum's `Event`, and the in-process pipeline
//! (send, queue, body) without a socket.
//!
//! ```text
//! cargo bench --bench encode                 # everything (at the root, or -p tower-sse-benches)
//! cargo bench --bench encode -- encode/64B   # one group
//! ```
//!
//! axum's `Event::finalize` (the trailing blank line and `freeze`) is private:
//! `axum build` is `Event::default().data(..)` alone (a lower bound of
//! axum's work, so the ratio is conservative), `axum frame` takes the same
//! event out of an `Sse` body, finalize included.

use std::{
    convert::Infallible,
    hint::black_box,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::response::{
    IntoResponse,
    sse::{Event as AxumEvent, KeepAlive, Sse},
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tower_sse::{Event, EventSender, start_stream};

/// Data of `len` bytes without line breaks.
fn data(len: usize) -> &'static str {
    let text: String = (b'a'..=b'z').cycle().take(len).map(char::from).collect();
    Box::leak(text.into_boxed_str())
}

/// An `Sse` body whose every frame is a fresh `Event::default().data(data)`.
fn axum_frames(data: &'static str) -> axum::body::Body {
    let events = futures::stream::repeat_with(move || {
        Ok::<_, Infallible>(AxumEvent::default().data(black_box(data)))
    });
    Sse::new(events).into_response().into_body()
}

fn next_frame(body: &mut axum::body::Body, cx: &mut Context<'_>) -> bytes::Bytes {
    match Pin::new(body).poll_frame(cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => unreachable!("an endless stream of ready events"),
    }
}

fn encode(c: &mut Criterion) {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    // 54 bytes of data: 64 bytes on tower-sse's wire (`data: ` .. CRLF CRLF).
    for (label, len) in [("64B", 54), ("1KiB", 1014), ("16KiB", 16 * 1024 - 10)] {
        let data = data(len);
        let mut group = c.benchmark_group(format!("encode/{label}"));
        group.throughput(Throughput::Elements(1));
        group.bench_function("tower-sse", |b| {
            b.iter(|| Event::new(black_box(data)).encode().unwrap())
        });
        // No `String` first: the data is copied once, into the encoding.
        group.bench_function("tower-sse static", |b| {
            b.iter(|| Event::from_static(black_box(data)).encode().unwrap())
        });
        group.bench_function("axum build", |b| {
            b.iter(|| AxumEvent::default().data(black_box(data)))
        });
        let mut frames = axum_frames(data);
        group.bench_function("axum frame", |b| {
            b.iter(|| next_frame(&mut frames, &mut cx))
        });
        group.finish();
    }

    let data = data(40);
    let mut group = c.benchmark_group("encode/named");
    group.throughput(Throughput::Elements(1));
    group.bench_function("tower-sse", |b| {
        b.iter(|| {
            Event::new(black_box(data))
                .name(black_box("update"))
                .id(black_box("1234567"))
                .encode()
                .unwrap()
        })
    });
    group.bench_function("axum build", |b| {
        b.iter(|| {
            AxumEvent::default()
                .event(black_box("update"))
                .id(black_box("1234567"))
                .data(black_box(data))
        })
    });
    group.finish();

    let lines: &'static str = Box::leak([data; 8].join("\n").into_boxed_str());
    let mut group = c.benchmark_group("encode/8-lines");
    group.throughput(Throughput::Elements(1));
    group.bench_function("tower-sse", |b| {
        b.iter(|| Event::new(black_box(lines)).encode().unwrap())
    });
    group.bench_function("axum build", |b| {
        b.iter(|| AxumEvent::default().data(black_box(lines)))
    });
    group.finish();
}

/// Sends `events` events through tower-sse and reads its body to the end,
/// on a current-thread runtime; the time from the first poll to the end.
fn tower_pipeline(
    runtime: &tokio::runtime::Runtime,
    events: u64,
    data: &'static str,
    capacity: usize,
) -> Duration {
    runtime.block_on(async move {
        let ready = move |sender: EventSender, _ctx| async move {
            for _ in 0..events {
                if sender.send(Event::new(data)).await.is_err() {
                    return;
                }
            }
        };
        let ctx = tower_sse::StreamContext::from_request(&http::Request::new(()));
        let body = start_stream(ready, ctx, Duration::from_secs(10), capacity)
            .into_http()
            .into_body();
        read_to_end(body).await
    })
}

/// Reads a body to its end; the time it took.
async fn read_to_end<B: http_body::Body<Data = bytes::Bytes>>(body: B) -> Duration {
    let mut body = std::pin::pin!(body);
    let start = Instant::now();
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        bytes += frame.map_or(0, |f| f.into_data().map_or(0, |d| d.len()));
    }
    black_box(bytes);
    start.elapsed()
}

/// The same through axum's `Sse` over an mpsc channel, with `KeepAlive`.
fn axum_pipeline(
    runtime: &tokio::runtime::Runtime,
    events: u64,
    data: &'static str,
    capacity: usize,
) -> Duration {
    runtime.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel(capacity);
        tokio::spawn(async move {
            for _ in 0..events {
                if tx.send(AxumEvent::default().data(data)).await.is_err() {
                    return;
                }
            }
        });
        let stream = futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx).map(|event| event.map(Ok::<_, Infallible>))
        });
        let body = Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
            .into_response()
            .into_body();
        read_to_end(body).await
    })
}

fn pipeline(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    for (label, len) in [("64B", 54), ("16KiB", 16 * 1024 - 10)] {
        let data = data(len);
        let mut group = c.benchmark_group(format!("pipeline/{label}"));
        group.throughput(Throughput::Elements(1));
        for capacity in [10, 64] {
            group.bench_function(format!("tower-sse buffer {capacity}"), |b| {
                b.iter_custom(|iters| tower_pipeline(&runtime, iters, data, capacity))
            });
            group.bench_function(format!("axum buffer {capacity}"), |b| {
                b.iter_custom(|iters| axum_pipeline(&runtime, iters, data, capacity))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, encode, pipeline);
criterion_main!(benches);
