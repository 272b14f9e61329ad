//! A live page: an `EventSource` in the browser, showing events as they come.
//!
//! ```text
//! cargo run --example live
//! # then open http://localhost:3000/
//! ```
//!
//! `/` serves one HTML page (embedded below: no build step, no CDN). Its
//! script opens an `EventSource` on `/events` and shows the connection state,
//! a clock `tick` and a `counter` in their own panels, the unnamed messages
//! (several lines, non-ASCII text), each event's id and the number of
//! reconnects.
//!
//! Every event has a numeric id. The server ends each stream after a few
//! events on purpose; the browser reconnects after the `retry` delay the
//! stream announced, sends `Last-Event-ID`, and the ready function resumes
//! with the next event.
//!
//! `/private/events` is the same stream behind a check in the handler: without
//! `?token=let-me-in` it answers 401, no stream starts and the `EventSource`
//! gives up (open `/?stream=/private/events` to see it).
//!
//! `PORT` overrides the port (3000).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    http::{StatusCode, Uri},
    response::Html,
    routing::get,
};
use tower_sse::{Event, EventSender, SseLayer, StreamContext};

/// How the stream behaves; the defaults suit a person watching, tests go faster.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Each stream ends after this many events, so the browser reconnects.
    pub events_per_stream: u64,
    /// The pause after each round of `tick`, `counter` and message.
    pub interval: Duration,
    /// A heartbeat comment goes out after this much silence.
    pub heartbeat: Duration,
    /// The reconnection delay announced to the browser (`retry:`).
    pub retry: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            events_per_stream: 10,
            interval: Duration::from_secs(1),
            heartbeat: Duration::from_millis(400),
            retry: Duration::from_millis(500),
        }
    }
}

/// What the server saw, for tests and curious readers. Clones share it.
#[derive(Clone, Debug, Default)]
pub struct Monitor {
    /// Calls of the ready function: streams started.
    pub ready_calls: Arc<AtomicUsize>,
    /// The `Last-Event-ID` each stream started with, in order.
    pub last_event_ids: Arc<Mutex<Vec<Option<String>>>>,
    /// Requests that `/private/events` refused with 401.
    pub refused: Arc<AtomicUsize>,
}

/// The unnamed messages, one per round, in turn: several lines, non-ASCII
/// text (2-, 3- and 4-byte UTF-8), an empty line.
pub const MESSAGES: [&str; 4] = [
    "Hello from tower-sse!\nThis message has two lines.",
    "Grüße aus Köln: naïve café, 5 € ☃\nΚαλημέρα κόσμε · Привет, мир",
    "مرحبا بالعالم 😀\nright-to-left text and an emoji",
    "An empty line follows:\n\nand a last line after it.",
];

/// The token `/private/events` wants in its query.
pub const TOKEN: &str = "let-me-in";

/// Event number `n` (ids start at 1). Events come in rounds of three: a
/// clock `tick` (UTC, `HH:MM:SS`), a `counter` (the round number) and an
/// unnamed message from [`MESSAGES`].
pub fn event(n: u64) -> Event {
    let round = n.div_ceil(3);
    let event = match n % 3 {
        1 => Event::new(clock()).name("tick"),
        2 => Event::new(round.to_string()).name("counter"),
        _ => Event::new(MESSAGES[(round - 1) as usize % MESSAGES.len()]),
    };
    event.id(n.to_string())
}

/// The time of day, UTC, as `HH:MM:SS`.
fn clock() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// The page and its streams.
pub fn app(settings: Settings, monitor: Monitor) -> Router {
    let ready = {
        let (settings, monitor) = (settings.clone(), monitor.clone());
        move |events: EventSender, ctx: StreamContext| {
            let (settings, monitor) = (settings.clone(), monitor.clone());
            async move {
                monitor.ready_calls.fetch_add(1, SeqCst);
                let last = ctx.last_event_id().map(str::to_owned);
                // A reconnecting browser sends the last id it saw: resume after it.
                let first = last
                    .as_deref()
                    .and_then(|id| id.parse::<u64>().ok()?.checked_add(1))
                    .unwrap_or(1);
                monitor.last_event_ids.lock().unwrap().push(last);

                // No data, so the browser dispatches nothing; it only learns the delay.
                if events
                    .send(Event::default().retry(settings.retry))
                    .await
                    .is_err()
                {
                    return;
                }
                for n in first..first.saturating_add(settings.events_per_stream) {
                    if events.send(event(n)).await.is_err() {
                        return; // the page went away
                    }
                    if n % 3 == 0 {
                        tokio::time::sleep(settings.interval).await;
                    }
                }
                // Returning ends the stream, on purpose: the browser reconnects.
            }
        }
    };
    let stream = SseLayer::new(ready)
        .heartbeat(settings.heartbeat)
        .on_client_disconnect(|ctx, reason| {
            tracing::info!(uri = %ctx.uri(), last_event_id = ?ctx.last_event_id(), ?reason, "stream ended")
        });

    // The handler runs before the stream: a 401 passes through, no stream starts.
    let private = move |uri: Uri| {
        let monitor = monitor.clone();
        async move {
            if uri.query() == Some(format!("token={TOKEN}").as_str()) {
                Ok(())
            } else {
                monitor.refused.fetch_add(1, SeqCst);
                Err((StatusCode::UNAUTHORIZED, "a token is needed\n"))
            }
        }
    };

    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/events", get(|| async {}).layer(stream.clone()))
        .route("/private/events", get(private).layer(stream))
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
    tracing::info!("open http://{}/", listener.local_addr()?);
    axum::serve(listener, app(Settings::default(), Monitor::default())).await
}

/// The page. Its script keeps everything it saw in `window.sseState`
/// (plain data, which the browser tests read):
///
/// - `url`, `state` (`connecting`, `open`, `reconnecting`, `closed`),
///   `readyState`, `opens`, `reconnects` (opens after the first);
/// - `events`: `{listener, type, data, lastEventId, at}` for each event, as the
///   listener registered for `listener` received it (`at` from `performance.now()`);
/// - `timeline`: `{what, readyState, at}` for each `open` and `error`.
///
/// `?stream=PATH` opens another stream than `/events`.
const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tower-sse live</title>
<link rel="icon" href="data:,">
<style>
  :root { --ink: #1d2330; --muted: #667085; --line: #e4e7ec; --card: #fff; --bg: #f4f6f9; }
  * { box-sizing: border-box; }
  body { margin: 0; padding: 24px 28px; font: 15px/1.45 system-ui, sans-serif; color: var(--ink); background: var(--bg); }
  header { display: flex; align-items: center; gap: 16px; }
  h1 { font-size: 22px; margin: 0; }
  h1 span { color: var(--muted); font-weight: normal; }
  h2 { font-size: 13px; margin: 0 0 6px; color: var(--muted); text-transform: uppercase; letter-spacing: .06em; }
  code { font: 13px ui-monospace, monospace; background: #e9edf3; padding: 1px 5px; border-radius: 4px; }
  .lead { color: var(--muted); margin: 8px 0 18px; max-width: 760px; }
  .status { display: inline-flex; align-items: center; gap: 8px; padding: 4px 12px; border-radius: 999px; font-weight: 600; font-size: 14px; }
  .status .dot { width: 10px; height: 10px; border-radius: 50%; background: currentColor; }
  .connecting, .reconnecting { color: #b54708; background: #fef0c7; }
  .open { color: #067647; background: #dcfae6; }
  .closed { color: #b42318; background: #fee4e2; }
  .grid { display: grid; grid-template-columns: repeat(4, 1fr); gap: 14px; margin-bottom: 14px; }
  .card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; }
  .wide { grid-column: span 2; }
  .value { font-size: 34px; font-weight: 700; font-variant-numeric: tabular-nums; }
  .stat .value { font-size: 26px; }
  .id { color: var(--muted); font-size: 13px; }
  pre { margin: 0; font: 15px/1.4 system-ui, sans-serif; white-space: pre-wrap; min-height: 4.2em; }
  table { width: 100%; border-collapse: collapse; font-size: 14px; }
  th, td { text-align: left; padding: 4px 8px; border-top: 1px solid var(--line); white-space: nowrap; }
  th { color: var(--muted); font-weight: 600; border-top: 0; }
  td.data { white-space: normal; width: 100%; }
  .type-tick { color: #175cd3; } .type-counter { color: #6941c6; } .type-message { color: #c11574; }
  .note { color: var(--muted); font-size: 13px; }
</style>
</head>
<body>
<header>
  <h1>tower-sse <span>live</span></h1>
  <div id="status" class="status connecting"><span class="dot"></span><span id="state">connecting</span></div>
</header>
<p class="lead">An <code>EventSource</code> on <code id="url"></code>. The server ends the stream
every few events on purpose; the browser reconnects after the <code>retry</code> delay and the
server resumes after <code>Last-Event-ID</code>.</p>

<section class="grid">
  <div class="card"><h2><span class="type-tick">tick</span> &middot; clock, UTC</h2>
    <div class="value" id="tick-data">&ndash;</div><div class="id">id <span id="tick-id">&ndash;</span></div></div>
  <div class="card"><h2><span class="type-counter">counter</span></h2>
    <div class="value" id="counter-data">&ndash;</div><div class="id">id <span id="counter-id">&ndash;</span></div></div>
  <div class="card wide"><h2><span class="type-message">message</span> &middot; unnamed events</h2>
    <pre id="message-data">&ndash;</pre><div class="id">id <span id="message-id">&ndash;</span></div></div>
  <div class="card stat"><h2>reconnects</h2><div class="value" id="reconnects">0</div></div>
  <div class="card stat"><h2>events</h2><div class="value" id="count">0</div></div>
  <div class="card stat"><h2>last event id</h2><div class="value" id="last-id">&ndash;</div></div>
  <div class="card stat"><h2>readyState</h2><div class="value" id="ready-state">0</div></div>
</section>

<section class="card">
  <h2>recent events</h2>
  <table>
    <thead><tr><th>id</th><th>type</th><th>data</th></tr></thead>
    <tbody id="log"></tbody>
  </table>
  <p class="note" id="note"></p>
</section>

<script>
"use strict";
const url = new URLSearchParams(location.search).get("stream") || "/events";
const state = window.sseState = {
  url, state: "connecting", readyState: 0, opens: 0, reconnects: 0, events: [], timeline: [],
};
const $ = (id) => document.getElementById(id);
const LIMIT = 1000;

function show() {
  $("state").textContent = state.state;
  $("status").className = "status " + state.state;
  $("reconnects").textContent = state.reconnects;
  $("ready-state").textContent = state.readyState;
}

function moment(what) {
  state.readyState = source.readyState;
  state.timeline.push({ what, readyState: source.readyState, at: performance.now() });
  if (state.timeline.length > LIMIT) state.timeline.shift();
}

function receive(listener, e) {
  state.events.push({ listener, type: e.type, data: e.data, lastEventId: e.lastEventId, at: performance.now() });
  if (state.events.length > LIMIT) state.events.shift();
  $(listener + "-data").textContent = e.data;
  $(listener + "-id").textContent = e.lastEventId;
  $("count").textContent = Number($("count").textContent) + 1;
  $("last-id").textContent = e.lastEventId;

  const row = document.createElement("tr");
  for (const [text, cls] of [[e.lastEventId, ""], [e.type, "type-" + e.type], [e.data.replace(/\n/g, " \u23ce "), "data"]]) {
    const cell = document.createElement("td");
    cell.textContent = text;
    cell.className = cls;
    row.appendChild(cell);
  }
  $("log").prepend(row);
  while ($("log").rows.length > 8) $("log").lastElementChild.remove();
}

$("url").textContent = url;
const source = new EventSource(url);

source.addEventListener("open", () => {
  state.opens += 1;
  state.reconnects = state.opens - 1;
  state.state = "open";
  moment("open");
  show();
});
source.addEventListener("error", () => {
  // CONNECTING: the browser will retry; CLOSED: it gave up (e.g. a 401).
  state.state = source.readyState === EventSource.CLOSED ? "closed" : "reconnecting";
  moment("error");
  if (state.state === "closed") $("note").textContent = "The server refused the stream; the browser gave up.";
  show();
});
for (const name of ["tick", "counter", "message"]) {
  source.addEventListener(name, (e) => receive(name, e));
}
show();
</script>
</body>
</html>
"##;
