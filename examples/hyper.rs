//! A stream served by hyper alone, without axum: the layer wraps a plain
//! tower service, and hyper-util's `TowerToHyperService` hands it to hyper.
//! It builds without the crate's default `axum` feature.
//!
//! ```text
//! cargo run --no-default-features --example hyper
//! curl -N localhost:3000/
//! ```
//!
//! `PORT` overrides the port.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tokio::net::TcpListener;
use tower::{Layer, service_fn};
use tower_sse::{Event, EventSender, SseLayer, StreamContext};

/// Sends `tick` events 0 to 4, `interval` apart, then ends the stream.
async fn ready(events: EventSender, ctx: StreamContext, interval: Duration) {
    for i in 0..5 {
        let event = Event::new(format!("{i} for {}", ctx.uri())).name("tick");
        if events.send(event).await.is_err() {
            return; // the client went away
        }
        tokio::time::sleep(interval).await;
    }
}

/// Serves every connection `listener` accepts: each request's response is
/// the event stream.
pub async fn serve(listener: TcpListener, interval: Duration) -> std::io::Result<()> {
    // The handler: any tower service. Its 2xx response becomes the stream.
    let handler = service_fn(|_request: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    });
    let layer = SseLayer::new(move |events, ctx| ready(events, ctx, interval))
        .heartbeat(Duration::from_secs(10))
        .buffer(10);
    let service = layer.layer(handler);
    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = connection.await {
                eprintln!("connection error: {err}");
            }
        });
    }
}

#[allow(dead_code)] // tests include this file for `serve` only
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    serve(listener, Duration::from_secs(1)).await
}
