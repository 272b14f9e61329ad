//! The Pedestal guide's SSE demo: `/counter` streams `counter` events 0 to 9,
//! one a second, then ends; `/` answers hello.
//!
//! ```text
//! cargo run --example counter
//! curl -N localhost:3000/counter
//! ```
//!
//! `PORT` overrides the port.

use std::time::Duration;

use axum::{Router, routing::get};
use tower_sse::{Event, EventSender, StreamContext, start_event_stream};

/// The demo's routes; `interval` is the pause between events.
pub fn app(interval: Duration) -> Router {
    let ready = move |events: EventSender, _ctx: StreamContext| async move {
        for i in 0..10 {
            let event = Event::new(i.to_string()).name("counter");
            if events.send(event).await.is_err() {
                return; // the client went away
            }
            tokio::time::sleep(interval).await;
        }
    };
    let stream = start_event_stream(ready, Duration::from_secs(10), 10).on_client_disconnect(
        |ctx, reason| tracing::info!(uri = %ctx.uri(), ?reason, "stream ended"),
    );
    Router::new()
        .route("/", get(|| async { "Hello World!\n" }))
        .route("/counter", get(|| async {}).layer(stream))
}

#[allow(dead_code)] // tests include this file for `app` only
#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_sse=debug".into()),
        )
        .init();
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(Duration::from_secs(1))).await
}
