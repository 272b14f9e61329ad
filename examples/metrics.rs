//! Live metrics in Prometheus: `/ticks` streams a tick every 100 ms,
//! `/news` is a hub stream (a `POST /news` publishes), and `/metrics`
//! serves the Prometheus text of every `sse_*` series while they run.
//!
//! ```text
//! cargo run --example metrics --features metrics
//! curl -N localhost:3000/ticks &
//! curl -s localhost:3000/metrics | grep '^sse_'
//! ```
//!
//! `PORT` overrides the port.

use std::time::Duration;

use axum::{Router, routing::get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower_sse::{Event, EventSender, SseLayer, StreamContext, hub::Hub};

/// The routes; `handle` renders what the installed recorder holds.
pub fn app(handle: PrometheusHandle, hub: Hub) -> Router {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        for i in 0u64.. {
            if events
                .send(Event::new(i.to_string()).name("tick"))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // The name is the `layer` label of this layer's series.
    let ticks = SseLayer::new(ready).name("ticks");
    let news = hub.layer(|_parts| Ok(vec!["news".to_owned()])).name("news");
    let publish = move |body: String| {
        let hub = hub.clone();
        async move {
            match hub.publish("news", Event::new(body)).await {
                Ok(_) => "published\n".to_owned(),
                Err(err) => format!("not published: {err}\n"),
            }
        }
    };
    Router::new()
        .route("/ticks", get(|| async {}).layer(ticks))
        .route("/news", get(|| async {}).layer(news).post(publish))
        .route("/metrics", get(move || std::future::ready(handle.render())))
}

/// Installs the Prometheus recorder for the whole process (once), and keeps
/// its histograms trimmed.
pub fn install() -> PrometheusHandle {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("a metrics recorder was already installed");
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    handle
}

#[allow(dead_code)] // tests include this file for `app` and `install` only
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let handle = install();
    let hub = Hub::builder().history(100).build();
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(handle, hub)).await
}
