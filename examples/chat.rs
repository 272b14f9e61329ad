//! A chat room on the fan-out hub: every browser tab sees messages posted
//! from any tab, and a tab that reconnects catches up from history.
//!
//! ```text
//! cargo run --example chat          # then open http://localhost:3000 in two tabs
//! ```
//!
//! `PORT` overrides the port. `POST /kick` ends every open stream, to watch
//! the tabs reconnect and catch up (the page has a button for it).
//!
//! With `--features redis` and `REDIS_URL` set, the hub lives on Redis: run
//! two instances on two ports and a message posted on one shows on the other.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    response::Html,
    routing::{get, post},
};
use tower_sse::{
    CancellationToken, Event, SseResponse, StreamContext,
    hub::{Hub, Refusal},
};

const TOPIC: &str = "chat";

#[derive(Clone)]
struct Chat {
    hub: Hub,
    /// Cancelled by `POST /kick` (and replaced): every open stream ends,
    /// every tab reconnects.
    kick: Arc<Mutex<CancellationToken>>,
}

/// The chat's routes over `hub`.
pub fn app(hub: Hub) -> Router {
    let chat = Chat {
        hub,
        kick: Arc::default(),
    };
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/events", get(events))
        .route("/messages", post(post_message))
        .route("/kick", post(kick))
        .with_state(chat)
}

/// The stream, served by the hub from the response body. A new tab starts
/// with live messages; a reconnecting one sends `Last-Event-ID` and
/// catches up from history.
async fn events(State(chat): State<Chat>, ctx: StreamContext) -> Result<SseResponse, Refusal> {
    let kicked = chat.kick.lock().unwrap().clone();
    Ok(chat
        .hub
        .stream(&[TOPIC], ctx)?
        .heartbeat(Duration::from_secs(15))
        .shutdown_on(kicked)
        // Sent as the stream ends: reconnect quickly.
        .shutdown_event(Event::default().retry(Duration::from_millis(300))))
}

async fn post_message(State(chat): State<Chat>, text: String) -> (StatusCode, String) {
    let text = text.trim();
    if text.is_empty() {
        return (StatusCode::BAD_REQUEST, "empty message\n".into());
    }
    match chat.hub.publish(TOPIC, Event::new(text).name("chat")).await {
        Ok(id) => (StatusCode::CREATED, id),
        Err(err) => (StatusCode::BAD_REQUEST, format!("{err}\n")),
    }
}

async fn kick(State(chat): State<Chat>) -> StatusCode {
    let kicked = std::mem::take(&mut *chat.kick.lock().unwrap());
    kicked.cancel();
    StatusCode::NO_CONTENT
}

const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tower-sse chat</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 40rem; color: #222; }
  #state { font-weight: bold; }
  .open { color: #1a7f37; } .connecting, .reconnecting { color: #9a6700; } .closed { color: #cf222e; }
  #log { border: 1px solid #ccc; border-radius: 6px; height: 18rem; overflow-y: auto; padding: .5rem; }
  #log div { padding: .15rem 0; } #log .id { color: #888; font-size: .8em; margin-right: .5em; }
  #log .note { color: #9a6700; font-style: italic; }
  form { display: flex; gap: .5rem; margin-top: .5rem; } #text { flex: 1; padding: .4rem; }
</style>
</head>
<body>
<h1>tower-sse chat</h1>
<p>Connection: <span id="state" class="connecting">connecting</span>
   · reconnects: <span id="reconnects">0</span>
   · <button id="kick" type="button">drop every connection</button></p>
<div id="log"></div>
<form id="send"><input id="text" autocomplete="off" placeholder="Say something"><button>Send</button></form>
<script>
window.chatState = { state: "connecting", reconnects: 0, messages: [], notes: [] };
const st = window.chatState;
const log = document.getElementById("log");
function setState(s) {
  st.state = s;
  const el = document.getElementById("state");
  el.textContent = s; el.className = s;
}
function line(cls, id, text) {
  const div = document.createElement("div");
  if (cls) div.className = cls;
  if (id) { const span = document.createElement("span"); span.className = "id"; span.textContent = "#" + id; div.append(span); }
  div.append(document.createTextNode(text));
  log.append(div); log.scrollTop = log.scrollHeight;
}
let opened = false;
const source = new EventSource("/events");
source.onopen = () => {
  if (opened) { st.reconnects++; document.getElementById("reconnects").textContent = st.reconnects; }
  opened = true; setState("open");
};
source.onerror = () => setState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
source.addEventListener("chat", (e) => {
  st.messages.push({ id: e.lastEventId, text: e.data });
  line("", e.lastEventId, e.data);
});
source.addEventListener("reset", (e) => { st.notes.push("reset"); line("note", "", "(older messages are no longer available)"); });
source.addEventListener("lagged", (e) => { st.notes.push("lagged " + e.data); line("note", "", "(" + e.data + " messages missed)"); });
document.getElementById("send").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = document.getElementById("text");
  const text = input.value; input.value = "";
  if (text.trim()) await fetch("/messages", { method: "POST", body: text });
});
document.getElementById("kick").addEventListener("click", () => fetch("/kick", { method: "POST" }));
</script>
</body>
</html>
"##;

#[allow(dead_code)] // tests include this file for `app` only
#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_sse=debug".into()),
        )
        .init();
    let builder = Hub::builder().history(500);
    #[cfg(feature = "redis")]
    let hub = match std::env::var("REDIS_URL") {
        Ok(url) => {
            tracing::info!(%url, "hub on Redis");
            builder
                .build_redis(&url)
                .await
                .map_err(std::io::Error::other)?
        }
        Err(_) => builder.build(),
    };
    #[cfg(not(feature = "redis"))]
    let hub = builder.build();
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    tracing::info!("chat on http://{}", listener.local_addr()?);
    axum::serve(listener, app(hub)).await
}
