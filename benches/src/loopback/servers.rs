//! The server role: one `axum::serve` on a current-thread runtime, the
//! route's body being the implementation measured, and its producers.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

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
    net::TcpListener,
    sync::{mpsc, watch},
};
use tower_sse::{Event, EventSender, SseLayer, StreamContext};

use super::{
    recorder,
    scenarios::{Imp, Kind, Scenario, payload, stamped},
};
use crate::{Error, process};

/// Largest frame `raw-join` assembles, as tower-sse's.
const MAX_FRAME: usize = 64 * 1024;

pub(crate) fn server(scenario: &Scenario) -> Result<(), Error> {
    if scenario.imp == Imp::TowerSseMetrics {
        recorder::install()?;
    }
    process::runtime("current")?.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let app = router(scenario);
        process::say(&format!("port {port}"))?;
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
            Imp::TowerSseMetrics => layer = layer.name("load"),
            _ => {}
        }
        Router::new().route("/sse", get(|| async {}).layer(layer))
    };
    match scenario.imp {
        // Idle streams get the smallest producer that keeps them open.
        Imp::TowerSse | Imp::TowerSseSpawned | Imp::TowerSseStall | Imp::TowerSseMetrics
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
        Imp::TowerSseQuickstart if scenario.kind == Kind::Idle => tower_sse(
            SseLayer::new(quickstart_ready)
                .on_client_disconnect(|ctx, reason| tracing::debug!(uri = %ctx.uri(), ?reason)),
        ),
        Imp::TowerSse
        | Imp::TowerSseCtx
        | Imp::TowerSseQuickstart
        | Imp::TowerSseSpawned
        | Imp::TowerSseStall
        | Imp::TowerSseMetrics => tower_sse(SseLayer::new(
            move |events: EventSender, _ctx: StreamContext| {
                produce_tower_sse(events, gate.clone(), sc.clone(), data)
            },
        )),
        Imp::AxumSse => Router::new().route(
            "/sse",
            get(move || {
                let (tx, mut rx) = mpsc::channel(sc.capacity);
                if sc.kind == Kind::Idle {
                    tokio::spawn(async move { tx.closed().await });
                } else {
                    let sink = AxumSink {
                        tx,
                        data,
                        static_data: sc.static_data,
                        str_data: sc.str_data,
                    };
                    tokio::spawn(produce(sink, gate.clone(), sc.clone()));
                }
                let stream = futures::stream::poll_fn(move |cx| {
                    rx.poll_recv(cx).map(|event| event.map(Ok::<_, Infallible>))
                });
                let keep_alive = KeepAlive::new().interval(sc.heartbeat());
                async move { Sse::new(stream).keep_alive(keep_alive) }
            }),
        ),
        Imp::RawHyper | Imp::RawCopy | Imp::RawJoin => {
            let join = scenario.imp == Imp::RawJoin;
            let copy = scenario.imp == Imp::RawCopy;
            let encoded = Bytes::from(format!("data: {data}\r\n\r\n"));
            Router::new().route(
                "/sse",
                get(move || {
                    let (tx, rx) = mpsc::channel(sc.capacity);
                    if sc.kind == Kind::Idle {
                        tokio::spawn(async move { tx.closed().await });
                    } else {
                        let encoded = encoded.clone();
                        tokio::spawn(produce(
                            RawSink { tx, encoded, copy },
                            gate.clone(),
                            sc.clone(),
                        ));
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

/// The README quick start's shape: an `async fn` keeps its arguments until it returns.
async fn quickstart_ready(events: EventSender, _ctx: StreamContext) {
    events.closed().await;
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

/// One implementation's end of a stream, as its producer sees it.
trait Sink {
    /// Sends the scenario's data (`None`) or a stamped event; false once
    /// the stream is gone.
    async fn send(&self, stamped: Option<String>) -> bool;
}

/// tower-sse: `Event::new` of a fresh `String` (what a serialiser hands an
/// application), or `Event::from_static`.
struct TowerSink {
    events: EventSender,
    data: &'static str,
    static_data: bool,
}

impl Sink for TowerSink {
    async fn send(&self, stamped: Option<String>) -> bool {
        let event = match stamped {
            Some(stamped) => Event::new(stamped),
            None if self.static_data => Event::from_static(self.data),
            None => Event::new(self.data.to_owned()),
        };
        self.events.send(event).await.is_ok()
    }
}

/// axum's `Sse`: an mpsc of axum's `Event`, built by the producer.
struct AxumSink {
    tx: mpsc::Sender<AxumEvent>,
    data: &'static str,
    static_data: bool,
    str_data: bool,
}

impl Sink for AxumSink {
    async fn send(&self, stamped: Option<String>) -> bool {
        // The fresh `String` is the application's work, as for tower-sse.
        #[allow(clippy::unnecessary_to_owned)]
        let event = match stamped {
            Some(stamped) => AxumEvent::default().data(stamped),
            None if self.static_data || self.str_data => AxumEvent::default().data(self.data),
            None => AxumEvent::default().data(self.data.to_owned()),
        };
        self.tx.send(event).await.is_ok()
    }
}

/// The raw bodies: an mpsc of pre-encoded events.
struct RawSink {
    tx: mpsc::Sender<Bytes>,
    encoded: Bytes,
    /// Copy the encoded event for every send (`raw-copy`): the least any
    /// library does with data it only borrows.
    copy: bool,
}

impl Sink for RawSink {
    async fn send(&self, stamped: Option<String>) -> bool {
        let event = match stamped {
            Some(stamped) => Bytes::from(format!("data: {stamped}\r\n\r\n")),
            None if self.copy => Bytes::copy_from_slice(&self.encoded),
            None => self.encoded.clone(),
        };
        self.tx.send(event).await.is_ok()
    }
}

/// tower-sse's producer. Its throughput loop is written out, not
/// `produce(TowerSink ..)`: through the generic path the 64 B scenario ran
/// about 7 % slower (4 interleaved pairs), so the loop stays as the
/// measurements in BENCHMARKS.md had it.
async fn produce_tower_sse(events: EventSender, gate: Gate, sc: Arc<Scenario>, data: &'static str) {
    if sc.kind == Kind::Latency {
        let static_data = sc.static_data;
        return produce(
            TowerSink {
                events,
                data,
                static_data,
            },
            gate,
            sc,
        )
        .await;
    }
    gate.wait().await;
    for _ in 0..sc.events {
        let event = if sc.static_data {
            Event::from_static(data)
        } else if sc.str_data {
            Event::new(data)
        } else {
            Event::new(data.to_owned())
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

/// A stream's producer, once every stream is open: `events` events as fast
/// as backpressure allows, or (latency) one stamped event every
/// `interval_us`. Idle streams get none: they wait for their end.
async fn produce(sink: impl Sink, gate: Gate, sc: Arc<Scenario>) {
    gate.wait().await;
    if sc.kind == Kind::Latency {
        let mut ticks = tokio::time::interval(Duration::from_micros(sc.interval_us));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for _ in 0..sc.events {
            ticks.tick().await;
            if !sink.send(Some(stamped(sc.size))).await {
                return;
            }
        }
    } else {
        for _ in 0..sc.events {
            if !sink.send(None).await {
                return;
            }
        }
    }
}
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
