//! The `live` example in a real browser: Debian's Chromium, headless, driven
//! over the DevTools protocol by `chromiumoxide`. Every check reads what the
//! page's own `EventSource` listeners recorded in `window.sseState`.
//!
//! Without Chromium these tests are skipped with a message; with
//! `TOWER_SSE_BROWSER_TESTS=1` a missing Chromium is a failure instead.
//! `CHROMIUM` names another executable than `/usr/bin/chromium`.
//! `TOWER_SSE_SCREENSHOT=1` rewrites `docs/live.png`.
//!
//! Each test runs its own server on `127.0.0.1:0` and its own Chromium
//! (fresh profile, in its own process group). A watchdog ends that group when
//! the test closes the browser, fails, times out or dies (even by SIGKILL),
//! and `timeout` ends Chromium after [`chromium::CHROMIUM_LIFETIME`] in any
//! case. The tests take turns. The harness (Chromium, the watchdog, the page
//! state) is in `browser/chromium.rs`.
#![cfg(all(unix, feature = "axum"))]

#[path = "../examples/live.rs"]
mod live;

#[path = "../examples/chat.rs"]
mod chat;

// A crate root resolves `mod` beside itself (tests/), hence the path.
#[path = "browser/chromium.rs"]
mod chromium;
mod common;

use std::{fs, path::Path, sync::atomic::Ordering::SeqCst, time::Duration, time::Instant};

use chromiumoxide::page::ScreenshotParams;
use futures::StreamExt as _;
use live::Settings;

use chromium::{
    Chromium, PageState, View, bounded, chromium, evaluate, read_state, start, wait_for,
    wait_for_chat, wait_within,
};
use common::PATIENCE;

// ---------------------------------------------------------------------------
// The tests

/// Events arrive in order, with their data (several lines, non-ASCII), their
/// type and their id as `lastEventId`.
#[tokio::test]
async fn events_arrive_in_order_with_data_type_and_id() {
    let Some(chromium) = chromium() else { return };
    bounded(async {
        let settings = Settings {
            events_per_stream: 1000,
            interval: Duration::from_millis(100),
            ..Settings::default()
        };
        let (browser, page, _monitor) = start(&chromium, settings, "/").await;
        let state = wait_for(&page, "12 events", |s| s.events.len() >= 12).await;

        for (i, event) in state.events.iter().take(12).enumerate() {
            let n = i as u64 + 1;
            let round = n.div_ceil(3);
            assert_eq!(event.last_event_id, n.to_string(), "event {n}: {event:?}");
            match n % 3 {
                1 => {
                    assert_eq!(event.r#type, "tick", "event {n}");
                    assert!(is_clock(&event.data), "event {n}: {:?}", event.data);
                }
                2 => {
                    assert_eq!(event.r#type, "counter", "event {n}");
                    assert_eq!(event.data, round.to_string(), "event {n}");
                }
                _ => {
                    assert_eq!(event.r#type, "message", "event {n}");
                    assert_eq!(event.data, MESSAGES[(round - 1) as usize], "event {n}");
                }
            }
        }
        assert_eq!(state.state, "open");
        assert_eq!(
            state.opens, 1,
            "no reconnect expected: {:?}",
            state.timeline
        );
        assert_eq!(state.url, "/events");
        browser.close().await;
    })
    .await;
}

/// `tick` and `counter` events reach only the listeners for their name; the
/// events without a name arrive as `message`.
#[tokio::test]
async fn named_events_reach_only_their_listeners() {
    // On the wire, the third event of each round has no `event:` field.
    let unnamed = live::event(3).encode().unwrap();
    assert!(!unnamed.windows(6).any(|w| w == b"event:"), "{unnamed:?}");
    assert!(
        live::event(1)
            .encode()
            .unwrap()
            .starts_with(b"event: tick\r\n")
    );
    let Some(chromium) = chromium() else { return };

    bounded(async {
        let settings = Settings {
            events_per_stream: 1000,
            interval: Duration::from_millis(100),
            ..Settings::default()
        };
        let (browser, page, _monitor) = start(&chromium, settings, "/").await;
        let state = wait_for(&page, "9 events", |s| s.events.len() >= 9).await;

        for (i, event) in state.events.iter().enumerate() {
            let n = event.id();
            assert_eq!(n, i as u64 + 1, "{:?}", state.events);
            let expected = ["message", "tick", "counter"][(n % 3) as usize];
            assert_eq!(
                event.listener, expected,
                "event {n} went to the wrong listener"
            );
            assert_eq!(event.r#type, expected, "event {n}");
        }
        let count = |listener: &str| {
            let events = state.events.iter().filter(|e| e.listener == listener);
            events.count()
        };
        let total = state.events.len();
        assert_eq!(count("tick"), total.div_ceil(3));
        assert_eq!(count("counter"), (total + 1) / 3);
        assert_eq!(count("message"), total / 3);
        browser.close().await;
    })
    .await;
}

/// The server ends each stream after 5 events; the browser waits the `retry`
/// delay, reconnects with `Last-Event-ID`, and the stream resumes with the
/// next event: no gap, no duplicate.
#[tokio::test]
async fn reconnects_resume_after_the_last_event_id() {
    let Some(chromium) = chromium() else { return };
    bounded(async {
        let retry = Duration::from_millis(400);
        let settings = Settings {
            events_per_stream: 5,
            interval: Duration::from_millis(50),
            retry,
            ..Settings::default()
        };
        let (browser, page, monitor) = start(&chromium, settings, "/").await;
        let state = wait_for(&page, "16 events (three reconnects)", |s| {
            s.events.len() >= 16
        })
        .await;

        // Every id once, in order, across four streams.
        let ids: Vec<u64> = state.events.iter().map(|e| e.id()).collect();
        let expected: Vec<u64> = (1..=ids.len() as u64).collect();
        assert_eq!(ids, expected, "gap or duplicate");
        for event in &state.events {
            let n = event.id();
            assert_eq!(
                event.r#type,
                ["message", "tick", "counter"][(n % 3) as usize]
            );
            if n % 3 == 2 {
                assert_eq!(event.data, n.div_ceil(3).to_string(), "event {n}");
            }
        }

        // What the browser sent, as the ready function saw it.
        let sent = monitor.last_event_ids.lock().unwrap().clone();
        let resumed: Vec<Option<&str>> = sent.iter().take(4).map(Option::as_deref).collect();
        assert_eq!(resumed, [None, Some("5"), Some("10"), Some("15")]);
        assert!(state.reconnects >= 3, "{state:?}");

        // Each reconnect waited the announced `retry`, not the browser's 3 s default.
        let delays = reconnect_delays(&state);
        assert!(delays.len() >= 3, "{:?}", state.timeline);
        for delay in delays {
            assert!(
                delay >= retry.as_millis() as f64 - 50.0 && delay < 2500.0,
                "reconnected after {delay} ms, retry is {retry:?}"
            );
        }
        browser.close().await;
    })
    .await;
}

/// A 401 from the wrapped handler: the `EventSource` gives up (readyState 2)
/// and the ready function never runs. With the token the same route streams.
#[tokio::test]
async fn a_refused_stream_makes_the_browser_give_up() {
    let Some(chromium) = chromium() else { return };
    bounded(async {
        let (browser, page, monitor) =
            start(&chromium, Settings::default(), "/?stream=/private/events").await;
        let state = wait_for(&page, "the EventSource to give up", |s| s.ready_state == 2).await;
        assert_eq!(state.state, "closed");
        assert_eq!(state.url, "/private/events");

        // readyState 2 means no retry will come; check that none does for a while.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let state = read_state(&page).await;
        assert_eq!(state.ready_state, 2);
        assert_eq!(state.opens, 0);
        assert!(state.events.is_empty(), "{state:?}");
        assert_eq!(monitor.refused.load(SeqCst), 1, "the browser asked again");
        assert_eq!(
            monitor.ready_calls.load(SeqCst),
            0,
            "the ready function ran"
        );

        // The control: with the token, the handler answers 200 and the stream starts.
        let authorised = format!("/?stream=%2Fprivate%2Fevents%3Ftoken%3D{}", live::TOKEN);
        let page = browser.open(&authorised).await;
        let state = wait_for(&page, "an event", |s| !s.events.is_empty()).await;
        assert_eq!(state.ready_state, 1);
        assert_eq!(state.events[0].r#type, "tick");
        assert_eq!(monitor.ready_calls.load(SeqCst), 1);
        assert_eq!(monitor.refused.load(SeqCst), 1);
        browser.close().await;
    })
    .await;
}

/// Heartbeats go out in every silence, and the page sees no event for them.
#[tokio::test]
async fn heartbeats_produce_no_events() {
    let Some(chromium) = chromium() else { return };
    bounded(async {
        let settings = Settings {
            events_per_stream: 1000,
            interval: Duration::from_millis(500),
            heartbeat: Duration::from_millis(40),
            ..Settings::default()
        };
        let (browser, page, _monitor) = start(&chromium, settings, "/").await;
        let state = wait_for(&page, "7 events (two silences)", |s| s.events.len() >= 7).await;
        let ids: Vec<u64> = state.events.iter().map(|e| e.id()).collect();
        assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
        for event in &state.events {
            assert_eq!(
                event.r#type,
                ["message", "tick", "counter"][(event.id() % 3) as usize]
            );
            assert!(!event.data.is_empty(), "{event:?}");
        }
        assert_eq!(state.opens, 1);
        assert!(
            state.timeline.iter().all(|m| m.what == "open"),
            "{:?}",
            state.timeline
        );

        // The same stream read raw: heartbeat comments fill the silences.
        let response = reqwest::get(format!("{}/events", browser.server))
            .await
            .unwrap();
        let mut body = response.bytes_stream();
        let mut wire = Vec::new();
        while !String::from_utf8_lossy(&wire).contains("id: 4\r\n") {
            let chunk = tokio::time::timeout(PATIENCE, body.next())
                .await
                .expect("no bytes came")
                .expect("the stream ended")
                .unwrap();
            wire.extend_from_slice(&chunk);
        }
        let wire = String::from_utf8(wire).unwrap();
        let heartbeats = wire
            .split("\r\n")
            .filter(|line| line.starts_with(':'))
            .count();
        assert!(heartbeats >= 5, "{heartbeats} heartbeats in {wire:?}");
        browser.close().await;
    })
    .await;
}

/// The page shows what its listeners received (state, panels, reconnects);
/// the screenshot goes to the test's target directory, and to
/// `docs/live.png` with `TOWER_SSE_SCREENSHOT=1`.
#[tokio::test]
async fn the_page_shows_the_stream() {
    let Some(chromium) = chromium() else { return };
    bounded(async {
        // For the picture, the example's own pace (slower); otherwise a fast one.
        let picture = std::env::var("TOWER_SSE_SCREENSHOT").as_deref() == Ok("1");
        let (settings, patience) = if picture {
            (Settings::default(), Duration::from_secs(40))
        } else {
            let settings = Settings {
                events_per_stream: 10,
                interval: Duration::from_millis(300),
                heartbeat: Duration::from_millis(200),
                retry: Duration::from_millis(300),
            };
            (settings, PATIENCE)
        };
        let (browser, page, _monitor) = start(&chromium, settings, "/").await;
        // Two reconnects, and the non-ASCII message on show.
        wait_within(&page, "two reconnects", patience, |s| {
            s.reconnects >= 2
                && s.state == "open"
                && s.events.last().is_some_and(|e| e.data == MESSAGES[1])
        })
        .await;

        let view: View = evaluate(
            &page,
            "({ state: window.sseState, text: Object.fromEntries(
                ['state', 'reconnects', 'count', 'last-id', 'tick-data', 'counter-data',
                 'counter-id', 'message-data', 'message-id', 'ready-state']
                .map((id) => [id, document.getElementById(id).textContent])),
                rows: document.getElementById('log').rows.length })",
        )
        .await;
        let (state, text) = (&view.state, &view.text);
        let last = |listener: &str| {
            let mut events = state.events.iter().filter(|e| e.listener == listener);
            events.next_back().unwrap()
        };
        assert_eq!(text["state"], state.state);
        assert_eq!(text["reconnects"], state.reconnects.to_string());
        assert_eq!(text["count"], state.events.len().to_string());
        assert_eq!(text["last-id"], state.events.last().unwrap().last_event_id);
        assert_eq!(text["ready-state"], "1");
        assert_eq!(text["tick-data"], last("tick").data);
        assert_eq!(text["counter-data"], last("counter").data);
        assert_eq!(text["counter-id"], last("counter").last_event_id);
        assert_eq!(text["message-data"], last("message").data);
        assert_eq!(text["message-id"], last("message").last_event_id);
        assert_eq!(view.rows, 8.min(state.events.len()));

        let png = tokio::time::timeout(PATIENCE, page.screenshot(ScreenshotParams::default()))
            .await
            .expect("no screenshot came")
            .unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("live.png");
        fs::write(&scratch, &png).unwrap();
        if picture {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
            fs::create_dir_all(&docs).unwrap();
            fs::write(docs.join("live.png"), &png).unwrap();
        }
        browser.close().await;
    })
    .await;
}

/// The chat example in two tabs: a message posted in one shows in the other,
/// and after every stream is dropped both tabs reconnect and catch up from
/// history with no gap and no duplicate.
#[tokio::test]
async fn chat_messages_cross_tabs_and_reconnects_catch_up() {
    let Some(chromium) = chromium() else { return };
    bounded(async {
        let hub = tower_sse::hub::Hub::new();
        let addr = common::serve(chat::app(hub.clone())).await;
        let browser = Chromium::launch(&chromium, format!("http://{addr}")).await;
        let tabs = [browser.open("/").await, browser.open("/").await];
        for tab in &tabs {
            wait_for_chat(tab, "the stream to open", |s| s.state == "open").await;
        }
        eventually_subscribed(&hub, 2).await;

        // Typed and sent from the first tab's own form.
        let _: bool = evaluate(
            &tabs[0],
            "document.getElementById('text').value = 'hello from tab one ☃'; \
             document.getElementById('send').requestSubmit(); true",
        )
        .await;
        let seen = wait_for_chat(&tabs[1], "the message in the other tab", |s| {
            !s.messages.is_empty()
        })
        .await;
        assert_eq!(seen.messages[0].text, "hello from tab one ☃");
        assert_eq!(seen.messages[0].id, "1");

        // Drop every stream (the page's button), and publish while the tabs
        // are away (they come back after the 300 ms retry).
        let _: bool = evaluate(&tabs[1], "document.getElementById('kick').click(); true").await;
        eventually_subscribed(&hub, 0).await;
        for i in 2..=6 {
            hub.publish(
                "chat",
                tower_sse::Event::new(format!("while away {i}")).name("chat"),
            )
            .await
            .unwrap();
        }
        for tab in &tabs {
            let state = wait_for_chat(tab, "the catch-up", |s| s.messages.len() >= 6).await;
            let ids: Vec<&str> = state.messages.iter().map(|m| m.id.as_str()).collect();
            assert_eq!(ids, ["1", "2", "3", "4", "5", "6"], "gap or duplicate");
            assert_eq!(state.messages[5].text, "while away 6");
            assert!(state.reconnects >= 1);
            assert!(
                state.notes.is_empty(),
                "no reset or lag expected: {state:?}"
            );
        }
        browser.close().await;
    })
    .await;
}

async fn eventually_subscribed(hub: &tower_sse::hub::Hub, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    while hub.subscribers() != n {
        assert!(
            Instant::now() < deadline,
            "{} subscribers, expected {n}",
            hub.subscribers()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Compressed streams in the browser (feature `compression`): Chromium
/// offers `gzip, deflate, br, zstd` (to 127.0.0.1, a secure origin), and
/// its `EventSource` receives each event before the server sends the next,
/// on a route per encoding (each allowing only its own). Nothing is held
/// back in the compressor: each event is flushed with its frame.
#[cfg(all(
    feature = "gzip",
    feature = "deflate",
    feature = "br",
    feature = "zstd"
))]
#[tokio::test]
async fn compressed_streams_arrive_event_by_event() {
    use axum::{Router, response::Html, routing::get};
    use tower_sse::{Compression, EventSender, SseLayer, StreamContext};

    const PAGE: &str = r#"<!doctype html><title>compressed</title><script>
const state = window.sseState = { events: [], errors: 0 };
const source = new EventSource("/" + location.search.slice(1) + "/events");
source.onmessage = (e) => state.events.push(e.data);
source.onerror = () => state.errors++;
</script>"#;

    let Some(chromium) = chromium() else { return };
    bounded(async {
        let (senders, mut streams) = tokio::sync::mpsc::unbounded_channel();
        let ready = move |events: EventSender, ctx: StreamContext| {
            let senders = senders.clone();
            async move {
                let accept = ctx.headers().get("accept-encoding").cloned();
                let _ = senders.send((events.clone(), accept));
                events.closed().await;
            }
        };
        let layer = |compression| {
            SseLayer::new(ready.clone())
                .compression(compression)
                .heartbeat(Duration::from_secs(5))
        };
        let all = Compression::default;
        let encodings = [
            ("gzip", all().no_deflate().no_br().no_zstd()),
            ("deflate", all().no_gzip().no_br().no_zstd()),
            ("br", all().no_gzip().no_deflate().no_zstd()),
            ("zstd", all().no_gzip().no_deflate().no_br()),
        ];
        let mut app = Router::new().route("/", get(|| async { Html(PAGE) }));
        let mut routes = Vec::new();
        for (encoding, compression) in encodings {
            let layer = layer(compression);
            routes.push((encoding, layer.stats()));
            app = app.route(&format!("/{encoding}/events"), get(|| async {}).layer(layer));
        }
        let addr = common::serve(app).await;
        let browser = Chromium::launch(&chromium, format!("http://{addr}")).await;

        // Each stream stays open to the end (a closed one would reconnect).
        let mut open = Vec::new();
        for (encoding, stats) in &routes {
            let path = format!("/?{encoding}");
            let page = browser.open(&path).await;
            let (sender, accept) = tokio::time::timeout(PATIENCE, streams.recv())
                .await
                .expect("the page opened no stream")
                .unwrap();
            let accept = accept.expect("Chromium sent no Accept-Encoding");
            eprintln!("Chromium's Accept-Encoding over http: {accept:?}");
            assert!(
                accept.to_str().unwrap().contains(encoding),
                "Chromium sent {accept:?}"
            );
            let mut sent = 0;
            for i in 0..8 {
                // 200 bytes of JSON with the same keys each time.
                let data = format!(
                    r#"{{"id":{i},"symbol":"ACME","price":{}.25,"exchange":"XNAS","currency":"USD"}}"#,
                    100 + i
                );
                let data = format!("{data:<200}");
                sent += data.len();
                sender.send(data.clone()).await.unwrap();
                // The next event goes out only once the page has this one.
                let deadline = Instant::now() + PATIENCE;
                loop {
                    let events: Vec<String> = evaluate(&page, "window.sseState.events").await;
                    if events.len() == i + 1 {
                        assert_eq!(events[i], data, "{path}");
                        break;
                    }
                    assert!(events.len() <= i, "{path}: {events:?}");
                    assert!(Instant::now() < deadline, "{path}: event {i} did not arrive");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let errors: u32 = evaluate(&page, "window.sseState.errors").await;
            assert_eq!(errors, 0, "{path}: the EventSource saw an error");
            // What went to the connection was compressed: fewer bytes than the data.
            assert!(
                stats.bytes_sent() < sent as u64,
                "{path}: {} bytes written for {sent} bytes of data",
                stats.bytes_sent()
            );
            open.push(sender);
        }
        browser.close().await;
        drop(open);
    })
    .await;
}

// ---------------------------------------------------------------------------
// What the checks expect

/// The unnamed messages, as the browser must receive them.
const MESSAGES: [&str; 4] = [
    "Hello from tower-sse!\nThis message has two lines.",
    "Grüße aus Köln: naïve café, 5 € ☃\nΚαλημέρα κόσμε · Привет, мир",
    "مرحبا بالعالم 😀\nright-to-left text and an emoji",
    "An empty line follows:\n\nand a last line after it.",
];

/// Milliseconds from each `error` that left the source reconnecting to the next `open`.
fn reconnect_delays(state: &PageState) -> Vec<f64> {
    let mut delays = Vec::new();
    let mut since = None;
    for moment in &state.timeline {
        match (moment.what.as_str(), since) {
            ("error", _) if moment.ready_state == 0 => since = Some(moment.at),
            ("open", Some(at)) => {
                delays.push(moment.at - at);
                since = None;
            }
            _ => {}
        }
    }
    delays
}

/// `HH:MM:SS`, a time of day.
fn is_clock(data: &str) -> bool {
    let parts: Vec<&str> = data.split(':').collect();
    parts.len() == 3
        && parts.iter().all(|p| p.len() == 2)
        && [24, 60, 60]
            .iter()
            .zip(&parts)
            .all(|(limit, p)| p.parse::<u32>().is_ok_and(|v| v < *limit))
}
