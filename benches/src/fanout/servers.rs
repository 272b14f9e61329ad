//! The server role: one node's fan-out behind `axum::serve`, and the
//! publisher task the orchestrator drives over stdin.
//!
//! The only file of the harness that names the hub's types.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    response::sse::{Event as AxumEvent, KeepAlive, Sse},
    routing::get,
    serve::ListenerExt,
};
use tokio::{net::TcpSocket, sync::broadcast};
use tower_sse::{Event, SseLayer, hub::Hub};

use super::{HEARTBEAT, Imp, SLACK, STEP_TIMEOUT, TOPIC};
use crate::{
    Error,
    cli::{KeyValues, Named},
    process::{self, say},
    stats::now_ns,
};

/// The servers' listen backlog (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 4096;

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

pub(crate) fn server(args: &KeyValues) -> Result<(), Error> {
    let imp = Imp::parse(args.get("imp")?)?;
    let runtime = process::runtime(args.get("runtime").unwrap_or("current"))?;
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
        let app = source.router(args.opt("buffer")?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        say(&format!("port {port}"))?;
        let mut commands = process::stdin_commands();
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
async fn redis_source(args: &KeyValues) -> Result<Source, Error> {
    let hub = Hub::builder()
        .history(SLACK)
        .key_prefix(args.get("prefix")?)
        .build_redis(args.get("redis")?)
        .await?;
    Ok(Source::Hub(hub))
}

#[cfg(not(feature = "redis"))]
async fn redis_source(_args: &KeyValues) -> Result<Source, Error> {
    Err("the redis implementation needs --features redis".into())
}
