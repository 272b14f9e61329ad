//! Compressed streams over loopback TCP: for each encoding, the client
//! decodes chunk by chunk with the decoder crates' own streaming decoders
//! (flate2, brotli, zstd: not this crate's code) and parses with the
//! independent `eventsource-stream`. Every event is readable before the
//! next is sent, heartbeats arrive in silences, the trailer ends the
//! compressed stream, and the headers and the negotiation are checked,
//! over HTTP/1.1 and over HTTP/2 (h2c, prior knowledge), where several
//! streams of mixed encodings also share one connection.

mod common;

use std::{
    io::{Read, Write},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, routing::get, serve::ListenerExt};
use bytes::Bytes;
use common::*;
use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tower_sse::{Compression, EventSender, SseLayer, StreamContext, start_stream};

/// A 200-byte JSON object with the same keys each time, as a typical
/// application's events are.
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

/// The client's streaming decoder for one encoding: chunks in, what they
/// decode to out.
enum Decoder {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
    Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
    /// An uncompressed stream: chunks out as they came.
    Identity,
}

impl Decoder {
    fn new(encoding: &str) -> Self {
        match encoding {
            "gzip" => Self::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            "deflate" => Self::Deflate(flate2::write::ZlibDecoder::new(Vec::new())),
            "br" => Self::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
            "zstd" => Self::Zstd(zstd::stream::write::Decoder::new(Vec::new()).unwrap()),
            "identity" => Self::Identity,
            other => panic!("no decoder for {other}"),
        }
    }

    /// Decodes `chunk`: everything it completes, nothing held back.
    fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        fn run<W: Write>(writer: &mut W, chunk: &[u8]) {
            writer
                .write_all(chunk)
                .expect("the decoder rejected a chunk");
            writer.flush().expect("the decoder failed to flush");
        }
        let out = match self {
            Self::Gzip(d) => {
                run(d, chunk);
                d.get_mut()
            }
            Self::Deflate(d) => {
                run(d, chunk);
                d.get_mut()
            }
            Self::Br(d) => {
                run(d, chunk);
                d.get_mut()
            }
            Self::Zstd(d) => {
                run(d, chunk);
                d.get_mut()
            }
            Self::Identity => return chunk.to_vec(),
        };
        std::mem::take(out)
    }
}

/// Decodes a whole body with the encoding's reader, which fails on a
/// missing or corrupt trailer (gzip's CRC and length, zlib's Adler-32,
/// br's last block, an unfinished zstd frame); `identity` is the body as
/// it came.
fn decode_whole(encoding: &str, wire: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    match encoding {
        "identity" => {
            out.extend_from_slice(wire);
            wire.len()
        }
        "gzip" => flate2::read::GzDecoder::new(wire).read_to_end(&mut out)?,
        "deflate" => flate2::read::ZlibDecoder::new(wire).read_to_end(&mut out)?,
        "br" => brotli::Decompressor::new(wire, 4096).read_to_end(&mut out)?,
        "zstd" => zstd::stream::read::Decoder::new(wire)?.read_to_end(&mut out)?,
        other => panic!("no decoder for {other}"),
    };
    Ok(out)
}

/// What the client saw: the compressed bytes and what they decoded to.
#[derive(Default)]
struct Seen {
    wire: Vec<u8>,
    decoded: Vec<u8>,
}

/// The response's events, decoded chunk by chunk then parsed; `seen` logs
/// both sides.
fn decoded_events(
    response: reqwest::Response,
    encoding: &str,
    seen: Arc<Mutex<Seen>>,
) -> impl Stream<Item = Event> + Unpin {
    let mut decoder = Decoder::new(encoding);
    let decoded = response.bytes_stream().map(move |chunk| {
        let chunk = chunk?;
        let plain = decoder.push(&chunk);
        let mut seen = seen.lock().unwrap();
        seen.wire.extend_from_slice(&chunk);
        seen.decoded.extend_from_slice(&plain);
        Ok::<_, reqwest::Error>(Bytes::from(plain))
    });
    Box::pin(
        decoded
            .eventsource()
            .map(|event| event.expect("the independent parser rejected the stream")),
    )
}

/// A layer whose streams hand their sender to the test, which then decides
/// when each event goes out.
fn handing_layer(compression: Compression) -> (SseLayer, mpsc::UnboundedReceiver<EventSender>) {
    let (senders, received) = mpsc::unbounded_channel();
    let layer = SseLayer::new(move |events: EventSender, _ctx: StreamContext| {
        let senders = senders.clone();
        async move {
            let _ = senders.send(events.clone());
            events.closed().await;
        }
    })
    .heartbeat(Duration::from_millis(100))
    .retry(Duration::from_secs(5))
    .compression(compression);
    (layer, received)
}

/// A client that speaks `version`: HTTP/1.1, or HTTP/2 with prior
/// knowledge (h2c: no upgrade, no TLS), every request on one connection.
fn client(version: reqwest::Version) -> reqwest::Client {
    let builder = reqwest::Client::builder();
    let builder = match version {
        reqwest::Version::HTTP_2 => builder.http2_prior_knowledge(),
        reqwest::Version::HTTP_11 => builder.http1_only(),
        other => panic!("no client for {other:?}"),
    };
    builder.build().unwrap()
}

async fn request(addr: SocketAddr, accept_encoding: Option<&str>) -> reqwest::Response {
    request_on(&reqwest::Client::new(), addr, accept_encoding).await
}

/// A GET of `/events` through `client` (its connection, if it has one).
async fn request_on(
    client: &reqwest::Client,
    addr: SocketAddr,
    accept_encoding: Option<&str>,
) -> reqwest::Response {
    let mut request = client.get(format!("http://{addr}/events"));
    if let Some(accept) = accept_encoding {
        request = request.header("accept-encoding", accept);
    }
    tokio::time::timeout(PATIENCE, request.send())
        .await
        .expect("no response")
        .unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

/// A stream compressed with `encoding` over HTTP `version` (its headers
/// checked): its events as decoded and parsed, what the client saw, and its
/// sender.
async fn open_compressed(
    encoding: &'static str,
    version: reqwest::Version,
) -> (
    impl Stream<Item = Event> + Unpin,
    Arc<Mutex<Seen>>,
    EventSender,
) {
    let (layer, mut senders) = handing_layer(Compression::default());
    let addr = serve(route(layer)).await;
    let response = request_on(&client(version), addr, Some(encoding)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), version);
    assert_eq!(header(&response, "content-encoding"), Some(encoding));
    assert_eq!(header(&response, "vary"), Some("accept-encoding"));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let events = decoded_events(response, encoding, seen.clone());
    let sender = tokio::time::timeout(PATIENCE, senders.recv())
        .await
        .expect("the ready function was not called")
        .unwrap();
    (events, seen, sender)
}

/// The whole story for one encoding: headers, each event decoded and parsed
/// before the next is sent, heartbeats in a silence, a smaller wire than
/// the events, and a trailer that ends the compressed stream cleanly.
async fn streams_event_by_event(encoding: &'static str, version: reqwest::Version) {
    let (mut events, seen, sender) = open_compressed(encoding, version).await;

    const EVENTS: usize = 30;
    for i in 0..EVENTS {
        sender.send(json(i)).await.unwrap();
        // The next goes out only once this one is decoded and parsed: a
        // frame held back in the compressor would time out here.
        let event = next_event(&mut events).await.expect("the stream ended");
        assert_eq!(event.data, json(i), "{encoding}: event {i}");
        if i == 9 {
            // A silence: heartbeats, compressed too, still reach the client.
            let before = seen.lock().unwrap().decoded.len();
            // Reading on for 450 ms: no event, only heartbeats decoded.
            let silence = tokio::time::timeout(Duration::from_millis(450), events.next()).await;
            assert!(silence.is_err(), "{encoding}: an event in the silence");
            let during = seen.lock().unwrap().decoded[before..].to_vec();
            let during = String::from_utf8(during).unwrap();
            assert!(
                during.matches(": \r\n").count() >= 2 && during.replace(": \r\n", "").is_empty(),
                "{encoding}: only heartbeats in the silence, got {during:?}"
            );
        }
    }
    sender.close();
    drop(sender);
    assert!(
        tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("the stream did not end")
            .is_none()
    );

    let seen = seen.lock().unwrap();
    let decoded = String::from_utf8(seen.decoded.clone()).unwrap();
    assert!(decoded.starts_with("retry: 5000\r\n\r\n"), "{decoded:.40}");
    // The trailer came, and the whole body decodes to what the chunks did.
    let whole = decode_whole(encoding, &seen.wire).expect("the compressed stream did not end well");
    assert_eq!(whole, seen.decoded, "{encoding}");
    // Repeating keys compress even one flushed event at a time.
    assert!(
        seen.wire.len() * 2 < seen.decoded.len(),
        "{encoding}: {} bytes on the wire for {} decoded",
        seen.wire.len(),
        seen.decoded.len()
    );
}

#[tokio::test]
async fn gzip_streams_event_by_event() {
    streams_event_by_event("gzip", reqwest::Version::HTTP_11).await;
}

#[tokio::test]
async fn deflate_streams_event_by_event() {
    streams_event_by_event("deflate", reqwest::Version::HTTP_11).await;
}

#[tokio::test]
async fn br_streams_event_by_event() {
    streams_event_by_event("br", reqwest::Version::HTTP_11).await;
}

#[tokio::test]
async fn zstd_streams_event_by_event() {
    streams_event_by_event("zstd", reqwest::Version::HTTP_11).await;
}

#[tokio::test]
async fn gzip_streams_event_by_event_over_http2() {
    streams_event_by_event("gzip", reqwest::Version::HTTP_2).await;
}

#[tokio::test]
async fn deflate_streams_event_by_event_over_http2() {
    streams_event_by_event("deflate", reqwest::Version::HTTP_2).await;
}

#[tokio::test]
async fn br_streams_event_by_event_over_http2() {
    streams_event_by_event("br", reqwest::Version::HTTP_2).await;
}

#[tokio::test]
async fn zstd_streams_event_by_event_over_http2() {
    streams_event_by_event("zstd", reqwest::Version::HTTP_2).await;
}

/// Streams of every encoding, twice gzip and zstd, and one uncompressed, on
/// ONE HTTP/2 connection: each round sends an event to every stream before
/// any is read (their DATA frames interleave on the connection), and each
/// stream decodes on its own, event by event, to exactly its own events,
/// then ends with its own trailer.
#[tokio::test]
async fn http2_streams_of_mixed_encodings_share_one_connection() {
    const ENCODINGS: [&str; 7] = ["gzip", "deflate", "br", "zstd", "identity", "gzip", "zstd"];
    const ROUNDS: usize = 20;
    let data = |stream: usize, round: usize| format!("{stream}:{}", json(round));

    let (layer, mut senders) = handing_layer(Compression::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let listener = listener.tap_io(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
    });
    tokio::spawn(async move { axum::serve(listener, route(layer)).await.unwrap() });

    let client = client(reqwest::Version::HTTP_2);
    let mut streams = Vec::new();
    for encoding in ENCODINGS {
        let response = request_on(&client, addr, Some(encoding)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        let expected = Some(encoding).filter(|e| *e != "identity");
        assert_eq!(header(&response, "content-encoding"), expected);
        assert_eq!(header(&response, "vary"), Some("accept-encoding"));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let events = decoded_events(response, encoding, seen.clone());
        // Requests go one at a time: this sender is this stream's.
        let sender = tokio::time::timeout(PATIENCE, senders.recv())
            .await
            .expect("the ready function was not called")
            .unwrap();
        streams.push((encoding, events, seen, sender));
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "the streams did not share one connection"
    );

    for round in 0..ROUNDS {
        for (k, (_, _, _, sender)) in streams.iter().enumerate() {
            sender.send(data(k, round)).await.unwrap();
        }
        for (k, (encoding, events, _, _)) in streams.iter_mut().enumerate() {
            let event = next_event(events).await.expect("the stream ended");
            assert_eq!(event.data, data(k, round), "stream {k} ({encoding})");
        }
    }
    for (_, _, _, sender) in &streams {
        sender.close();
    }
    for (k, (encoding, mut events, seen, sender)) in streams.into_iter().enumerate() {
        drop(sender);
        assert!(
            next_event(&mut events).await.is_none(),
            "stream {k} ({encoding}) did not end"
        );
        let seen = seen.lock().unwrap();
        // Its trailer came, and the whole body decodes to what the chunks did.
        let whole = decode_whole(encoding, &seen.wire)
            .unwrap_or_else(|err| panic!("stream {k} ({encoding}) did not end well: {err}"));
        assert_eq!(whole, seen.decoded, "stream {k} ({encoding})");
        // Its own events and nothing else, heartbeats aside.
        let decoded = String::from_utf8(whole).unwrap().replace(": \r\n", "");
        let expected: String = std::iter::once("retry: 5000\r\n\r\n".to_owned())
            .chain((0..ROUNDS).map(|round| format!("data: {}\r\n\r\n", data(k, round))))
            .collect();
        assert!(
            decoded == expected,
            "stream {k} ({encoding}): {decoded:.200}"
        );
        if encoding != "identity" {
            assert!(
                seen.wire.len() * 2 < seen.decoded.len(),
                "stream {k} ({encoding}): {} bytes on the wire for {} decoded",
                seen.wire.len(),
                seen.decoded.len()
            );
        }
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

/// Over HTTP/2, a ready function that returns ends each encoding's stream
/// with the compressor's trailer: the last DATA frame decodes to no more
/// events but completes the compressed stream, which the decoder crates'
/// readers accept whole and refuse without it; the stream ends
/// `Completed`, not reset.
#[tokio::test]
async fn http2_compressed_streams_end_with_their_trailer() {
    const EVENTS: usize = 5;
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        for i in 0..EVENTS {
            let _ = events.send(json(i)).await;
        }
    };
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let recorded = reasons.clone();
    let layer = SseLayer::new(ready)
        .compression(Compression::default())
        .on_client_disconnect(move |_ctx, reason| recorded.lock().unwrap().push(reason));
    let addr = serve(route_in_mode(layer)).await;
    let client = client(reqwest::Version::HTTP_2);
    let expected: Vec<u8> = (0..EVENTS)
        .map(|i| format!("data: {}\r\n\r\n", json(i)))
        .collect::<String>()
        .into_bytes();
    for encoding in ["gzip", "deflate", "br", "zstd"] {
        let response = request_on(&client, addr, Some(encoding)).await;
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(header(&response, "content-encoding"), Some(encoding));
        // Every DATA frame as it came; an error (a reset) fails here.
        let chunks: Vec<Bytes> = tokio::time::timeout(
            PATIENCE,
            response
                .bytes_stream()
                .map(|chunk| chunk.expect("the stream failed instead of ending"))
                .filter(|chunk| futures::future::ready(!chunk.is_empty()))
                .collect(),
        )
        .await
        .expect("the stream did not end");
        let (trailer, before) = chunks.split_last().expect("an empty body");
        let wire = chunks.concat();
        let whole = decode_whole(encoding, &wire)
            .unwrap_or_else(|err| panic!("{encoding}: the stream did not end well: {err}"));
        assert!(
            whole == expected,
            "{encoding}: {:.200}",
            String::from_utf8_lossy(&whole)
        );
        // Every event decodes from the frames before the last; the last adds
        // nothing but the end.
        let mut decoder = Decoder::new(encoding);
        let events: Vec<u8> = before
            .iter()
            .flat_map(|chunk| decoder.push(chunk))
            .collect();
        assert!(
            events == expected,
            "{encoding}: events missing before the trailer"
        );
        assert_eq!(decoder.push(trailer), b"", "{encoding}");
        assert!(
            decode_whole(encoding, &wire[..wire.len() - trailer.len()]).is_err(),
            "{encoding}: the stream was already complete without its last frame"
        );
    }
    eventually("four callbacks", || reasons.lock().unwrap().len() == 4).await;
    assert_eq!(
        *reasons.lock().unwrap(),
        [tower_sse::DisconnectReason::Completed; 4]
    );
}

/// The encoding a request gets, by its `Accept-Encoding`: the
/// `Content-Encoding` of the response, and a body that decodes (or is
/// plain) to the events.
async fn negotiated(compression: Compression, accept: Option<&str>) -> Option<String> {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        let _ = events.send(json(1)).await;
        let _ = events.send(json(2)).await;
    };
    let layer = SseLayer::new(ready).compression(compression);
    let addr = serve(route_in_mode(layer)).await;
    let response = request(addr, accept).await;
    assert_eq!(header(&response, "vary"), Some("accept-encoding"));
    let encoding = header(&response, "content-encoding").map(str::to_owned);
    let body = tokio::time::timeout(PATIENCE, response.bytes())
        .await
        .expect("the stream did not end")
        .unwrap();
    let plain = match &encoding {
        Some(encoding) => decode_whole(encoding, &body).unwrap(),
        None => body.to_vec(),
    };
    let expected = format!("data: {}\r\n\r\ndata: {}\r\n\r\n", json(1), json(2));
    assert_eq!(String::from_utf8(plain).unwrap(), expected, "{accept:?}");
    encoding
}

#[tokio::test]
async fn the_encoding_follows_accept_encoding() {
    let all = Compression::default;
    let cases: &[(Option<&str>, Option<&str>)] = &[
        // No header, identity, unknown encodings: uncompressed.
        (None, None),
        (Some("identity"), None),
        (Some("compress, sdch"), None),
        // What Chromium sends over plain http.
        (Some("gzip, deflate"), Some("gzip")),
        (Some("gzip, deflate, br, zstd"), Some("zstd")),
        (Some("gzip;q=0.5, br;q=0.9"), Some("br")),
        (Some("deflate;q=1, gzip;q=0.8"), Some("deflate")),
        // q=0 refuses; the wildcard covers the rest.
        (Some("gzip;q=0"), None),
        (Some("*;q=0.5, zstd;q=0, br;q=0"), Some("gzip")),
        // An unreadable header is no header, not an error.
        (Some("gzip;q=high"), None),
    ];
    for (accept, expected) in cases {
        let encoding = negotiated(all(), *accept).await;
        assert_eq!(
            encoding.as_deref(),
            *expected,
            "Accept-Encoding: {accept:?}"
        );
    }
    // Encodings the server turned off are never chosen.
    let gzip_only = all().no_zstd().no_br().no_deflate();
    assert_eq!(
        negotiated(gzip_only.clone(), Some("zstd, br, deflate")).await,
        None
    );
    assert_eq!(
        negotiated(gzip_only, Some("zstd, gzip;q=0.1"))
            .await
            .as_deref(),
        Some("gzip")
    );
}

/// Without `.compression(..)` nothing changes: no `Vary`, no encoding, even
/// for a client that asks.
#[tokio::test]
async fn without_the_builder_call_nothing_is_compressed() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        let _ = events.send("plain").await;
    };
    let addr = serve(route_in_mode(SseLayer::new(ready))).await;
    let response = request(addr, Some("gzip, br, zstd")).await;
    assert_eq!(header(&response, "content-encoding"), None);
    assert_eq!(header(&response, "vary"), None);
    let events = all_events(response).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data, "plain");
}

/// A stream started in a handler (`start_stream`) compresses the same way.
#[tokio::test]
async fn start_stream_compresses_too() {
    async fn ready(events: EventSender, _ctx: StreamContext) {
        for i in 0..5 {
            let _ = events.send(json(i)).await;
        }
    }
    let app = Router::new().route(
        "/events",
        get(|ctx: StreamContext| async move {
            common::response_in_mode(start_stream(ready, ctx, Duration::from_secs(10), 10))
                .compression(Compression::default())
        }),
    );
    let addr = serve(app).await;
    let response = request(addr, Some("gzip")).await;
    assert_eq!(header(&response, "content-encoding"), Some("gzip"));
    assert_eq!(header(&response, "vary"), Some("accept-encoding"));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let events: Vec<Event> = tokio::time::timeout(
        PATIENCE,
        decoded_events(response, "gzip", seen.clone()).collect(),
    )
    .await
    .expect("the stream did not end");
    let data: Vec<String> = events.into_iter().map(|e| e.data).collect();
    assert_eq!(data, (0..5).map(json).collect::<Vec<_>>());
    let seen = seen.lock().unwrap();
    assert_eq!(decode_whole("gzip", &seen.wire).unwrap(), seen.decoded);
}

/// A hub's frames take the same road: each published event is decodable
/// before the next is published.
#[tokio::test]
async fn hub_streams_compress_event_by_event() {
    let hub = tower_sse::hub::Hub::new();
    let layer = hub_layer(&hub, tower_sse::Buffer::fixed(10), |_| vec!["main".into()])
        .compression(Compression::default());
    let addr = serve(route(layer)).await;
    let response = request(addr, Some("zstd")).await;
    assert_eq!(header(&response, "content-encoding"), Some("zstd"));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut events = decoded_events(response, "zstd", seen.clone());
    subscribed(&hub, 1).await;
    for i in 0..10 {
        hub.publish("main", json(i)).await.unwrap();
        let event = next_event(&mut events).await.expect("the stream ended");
        assert_eq!(event.data, json(i), "event {i}");
    }
}

/// A graceful shutdown: the queued event and the shutdown event go out
/// compressed, then the trailer, so the whole body decodes.
#[tokio::test]
async fn shutdown_ends_the_compressed_stream_cleanly() {
    let shutdown = tower_sse::CancellationToken::new();
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        let _ = events.send(json(1)).await;
        events.closed().await;
    };
    let layer = SseLayer::new(ready)
        .shutdown_on(shutdown.clone())
        .shutdown_event(tower_sse::Event::new("bye").name("shutdown"))
        .compression(Compression::default());
    let addr = serve(route_in_mode(layer)).await;
    let response = request(addr, Some("gzip")).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut events = decoded_events(response, "gzip", seen.clone());
    assert_eq!(next_event(&mut events).await.unwrap().data, json(1));
    shutdown.cancel();
    let last = next_event(&mut events).await.expect("no shutdown event");
    assert_eq!(
        (last.event.as_str(), last.data.as_str()),
        ("shutdown", "bye")
    );
    assert!(
        next_event(&mut events).await.is_none(),
        "the stream did not end"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(decode_whole("gzip", &seen.wire).unwrap(), seen.decoded);
}

/// Data of 64 KiB or more handed over whole goes out uncopied in frames of
/// its own on a plain stream; on a compressed one the parts are joined
/// and compressed as one event, which arrives whole and decodes exactly.
#[tokio::test]
async fn large_events_handed_over_whole_compress_whole() {
    for encoding in ["gzip", "zstd"] {
        let (mut events, seen, sender) = open_compressed(encoding, reqwest::Version::HTTP_11).await;
        for i in 0..4 {
            let data: String = (0..70_000 + i * 1_000)
                .map(|j| char::from(b'a' + (j % 26) as u8))
                .collect();
            let event = match i % 2 {
                0 => tower_sse::Event::new(data.clone()),
                _ => tower_sse::Event::new(Bytes::from(data.clone())),
            };
            sender
                .send(event.name("big").id(i.to_string()))
                .await
                .unwrap();
            let got = next_event(&mut events).await.expect("the stream ended");
            assert_eq!(
                (got.event.as_str(), got.id.as_str()),
                ("big", i.to_string().as_str())
            );
            assert!(got.data == data, "{encoding}: event {i} differs");
        }
        sender.close();
        drop(sender);
        assert!(
            tokio::time::timeout(PATIENCE, events.next())
                .await
                .expect("no end")
                .is_none()
        );
        let seen = seen.lock().unwrap();
        let whole =
            decode_whole(encoding, &seen.wire).expect("the compressed stream did not end well");
        assert_eq!(whole, seen.decoded, "{encoding}");
    }
}
