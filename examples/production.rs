//! An SSE server set up for production: what `axum::serve` leaves out.
//!
//! - A header-read timeout: `axum::serve` sets none, so a connection that
//!   sends half a request stays open for good (docs/production.md measures
//!   it). hyper-util's server with a timer closes it after `header_timeout`;
//!   streams, whose headers were read long ago, are not affected.
//! - HTTP/1.1 and HTTP/2 (h2c) on one port.
//! - Graceful shutdown bounded by a timeout: the signal ends every stream
//!   cleanly (`SseLayer::shutdown_on`), then the server waits for the
//!   connections at most `grace`.
//!
//! ```text
//! cargo run --example production      # then: curl -N localhost:3000/ticks
//! ```
//!
//! `PORT` overrides the port; Ctrl-C shuts down.

use std::{io, time::Duration};

use axum::{Router, routing::get};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower_sse::{CancellationToken, Event, EventSender, SseLayer, StreamContext};

/// The application: `/ticks` streams a tick a second until shutdown.
pub fn app(shutdown: &CancellationToken) -> Router {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        for i in 0u64.. {
            if events
                .send(Event::new(i.to_string()).name("tick"))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let layer = SseLayer::new(ready)
        .heartbeat(Duration::from_secs(15))
        .stall_timeout(Duration::from_secs(30))
        .shutdown_on(shutdown.clone())
        // Tells browsers to come back in 5 s (to another instance, say).
        .shutdown_event(Event::default().retry(Duration::from_secs(5)));
    Router::new().route("/ticks", get(|| async {}).layer(layer))
}

/// Serves `app` until `shutdown` is cancelled, then waits at most `grace`
/// for the open connections. Returns whether they all closed in time.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    header_timeout: Duration,
    grace: Duration,
) -> io::Result<bool> {
    let mut server = auto::Builder::new(TokioExecutor::new());
    server
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    server.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = shutdown.cancelled() => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = server
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that goes away or times out is not the server's error.
            let _ = connection.await;
        });
    }
    drop(listener);
    Ok(tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_ok())
}

#[allow(dead_code)] // tests include this file for `app` and `serve` only
#[tokio::main]
async fn main() -> io::Result<()> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signal.cancel();
    });
    let app = app(&shutdown);
    let closed = serve(
        listener,
        app,
        shutdown,
        Duration::from_secs(10),
        Duration::from_secs(10),
    )
    .await?;
    println!(
        "shut down ({})",
        if closed {
            "every connection closed"
        } else {
            "gave up waiting"
        }
    );
    Ok(())
}
