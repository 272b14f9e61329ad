//! The harness of the browser tests: Chromium launched headless in a process
//! group of its own under a watchdog, driven over the DevTools protocol, and
//! the helpers that read what a page recorded (`window.sseState` of the live
//! example, `window.chatState` of the chat example). No tests here.

use std::{
    fmt::Debug,
    fs,
    future::Future,
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Once,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use chromiumoxide::{
    Browser, Page,
    handler::{HandlerConfig, viewport::Viewport},
};
use futures::StreamExt as _;
use serde::{Deserialize, de::DeserializeOwned};

use crate::{
    common::PATIENCE,
    live::{self, Monitor, Settings},
};

/// The flags the browser runs with (plus a fresh `--user-data-dir` and
/// `--remote-debugging-port=0`).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
];

/// Chromium is killed after this long whatever happens to the test process.
pub const CHROMIUM_LIFETIME: Duration = Duration::from_secs(120);

/// The most one test may take, browser start and stop included.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// The page's size (and the screenshot's).
const VIEWPORT: (u32, u32) = (1040, 730);

/// One browser at a time: two cores, and timing checks.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// What the page records

/// `window.sseState`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageState {
    pub url: String,
    pub state: String,
    pub ready_state: u8,
    pub opens: usize,
    pub reconnects: usize,
    pub events: Vec<PageEvent>,
    pub timeline: Vec<Moment>,
}

/// One event as a listener received it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageEvent {
    pub listener: String,
    pub r#type: String,
    pub data: String,
    pub last_event_id: String,
}

impl PageEvent {
    pub fn id(&self) -> u64 {
        self.last_event_id.parse().expect("a numeric id")
    }
}

/// An `open` or `error` of the `EventSource`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Moment {
    pub what: String,
    pub ready_state: u8,
    pub at: f64,
}

/// The state and what the page displays, read at the same instant.
#[derive(Debug, Deserialize)]
pub struct View {
    pub state: PageState,
    pub text: std::collections::HashMap<String, String>,
    pub rows: usize,
}

/// `window.chatState` of the chat page.
#[derive(Debug, Deserialize)]
pub struct ChatState {
    pub state: String,
    pub reconnects: usize,
    pub messages: Vec<ChatMessage>,
    pub notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub id: String,
    pub text: String,
}

pub async fn evaluate<T: DeserializeOwned>(page: &Page, expression: &str) -> T {
    tokio::time::timeout(PATIENCE, page.evaluate(expression))
        .await
        .expect("the page did not answer")
        .expect("evaluation failed")
        .into_value()
        .expect("unexpected value")
}

pub async fn read_state(page: &Page) -> PageState {
    evaluate(page, "window.sseState").await
}

/// Reads the page's state until `done` holds, for at most [`PATIENCE`].
pub async fn wait_for(page: &Page, what: &str, done: impl Fn(&PageState) -> bool) -> PageState {
    wait_within(page, what, PATIENCE, done).await
}

/// Reads the page's state until `done` holds, for at most `patience`.
pub async fn wait_within(
    page: &Page,
    what: &str,
    patience: Duration,
    done: impl Fn(&PageState) -> bool,
) -> PageState {
    wait_until(page, "window.sseState", what, patience, done).await
}

/// Reads the chat page's state until `done` holds, for at most [`PATIENCE`].
pub async fn wait_for_chat(
    page: &Page,
    what: &str,
    done: impl Fn(&ChatState) -> bool,
) -> ChatState {
    wait_until(page, "window.chatState", what, PATIENCE, done).await
}

/// Evaluates `expression` until `done` holds of its value, for at most `patience`.
async fn wait_until<T: DeserializeOwned + Debug>(
    page: &Page,
    expression: &str,
    what: &str,
    patience: Duration,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        let state: T = evaluate(page, expression).await;
        if done(&state) {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the page saw {state:#?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------
// Chromium

/// The Chromium to use, or `None` (after saying how to run these tests) when
/// it is missing and `TOWER_SSE_BROWSER_TESTS=1` is not set.
pub fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.is_file() {
        return Some(path);
    }
    let how = "install it with `apt-get install -y chromium` (or set CHROMIUM=/path/to/chromium) \
               and run `cargo test --test browser`";
    assert!(
        std::env::var("TOWER_SSE_BROWSER_TESTS").as_deref() != Ok("1"),
        "TOWER_SSE_BROWSER_TESTS=1 but there is no Chromium at {}: {how}",
        path.display()
    );
    static SAID: Once = Once::new();
    SAID.call_once(|| {
        // Straight to stderr: the test harness captures `eprintln!`.
        let _ = writeln!(
            std::io::stderr(),
            "\nbrowser tests skipped: no Chromium at {}; to run them, {how}.",
            path.display()
        );
    });
    None
}

/// Runs one browser test: one at a time, within [`TEST_LIMIT`]. When time
/// runs out the test's future is dropped, which kills its Chromium.
pub async fn bounded(test: impl Future<Output = ()>) {
    let _turn = ONE_AT_A_TIME.lock().await;
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the browser test took too long");
}

/// Serves the example on loopback, starts Chromium and opens `path` there.
pub async fn start(chromium: &Path, settings: Settings, path: &str) -> (Chromium, Page, Monitor) {
    let monitor = Monitor::default();
    let addr = crate::common::serve(live::app(settings, monitor.clone())).await;
    let browser = Chromium::launch(chromium, format!("http://{addr}")).await;
    let page = browser.open(path).await;
    (browser, page, monitor)
}

/// Runs its arguments (`timeout … chromium …`) in the background, then waits
/// for its standard input to close: when the test closes the browser or drops
/// it, or when the test process dies, however it dies. Then it ends its whole
/// process group (Chromium and its helpers), politely and then for good, and
/// removes `$BROWSER_DIR` (the profile and the log).
const WATCHDOG: &str = r#""$@" </dev/null & trap '' TERM; read _; kill -TERM 0; sleep 0.5;
    rm -rf "$BROWSER_DIR"; kill -KILL 0"#;

/// A headless Chromium with a fresh profile, in its own process group under
/// [`WATCHDOG`]. Dropping it ends the whole group and removes the profile.
pub struct Chromium {
    /// The watchdog: the leader of the process group; its stdin is our end.
    process: Child,
    /// Profile and log.
    dir: PathBuf,
    browser: Option<Browser>,
    handler: Option<tokio::task::JoinHandle<()>>,
    /// The example's address, `http://127.0.0.1:PORT`.
    pub server: String,
    /// Chromium exited after `close`.
    exited: bool,
}

impl Chromium {
    pub async fn launch(executable: &Path, server: String) -> Chromium {
        static LAUNCHES: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tower-sse-browser-{}-{}",
            std::process::id(),
            LAUNCHES.fetch_add(1, SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        let profile = dir.join("profile");
        fs::create_dir_all(&profile).unwrap();
        let log = fs::File::create(dir.join("chromium.log")).unwrap();

        let mut command = Command::new("sh");
        command
            .args(["-c", WATCHDOG, "sh"])
            .args(["timeout", "--foreground", "--kill-after=5"])
            .arg(CHROMIUM_LIFETIME.as_secs().to_string())
            .arg(executable)
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--remote-debugging-port=0")
            .arg(format!("--window-size={},{}", VIEWPORT.0, VIEWPORT.1))
            .arg("about:blank")
            .env("BROWSER_DIR", &dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        let process = command.spawn().expect("cannot start sh");
        let mut chromium = Chromium {
            process,
            dir,
            browser: None,
            handler: None,
            server,
            exited: false,
        };

        // With port 0, Chromium writes the port it chose and the browser's
        // DevTools path into the profile.
        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = loop {
            if let Ok(text) = fs::read_to_string(&port_file) {
                if let [port, path] = text.lines().collect::<Vec<_>>()[..] {
                    if path.starts_with("/devtools/browser/") {
                        break format!("ws://127.0.0.1:{port}{path}");
                    }
                }
            }
            if let Some(status) = chromium.process.try_wait().unwrap() {
                panic!("Chromium exited ({status}):\n{}", chromium.log());
            }
            assert!(
                Instant::now() < deadline,
                "Chromium did not start:\n{}",
                chromium.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        let config = HandlerConfig {
            viewport: Some(Viewport {
                width: VIEWPORT.0,
                height: VIEWPORT.1,
                device_scale_factor: Some(1.0),
                ..Viewport::default()
            }),
            request_timeout: PATIENCE,
            ..HandlerConfig::default()
        };
        let (browser, mut handler) =
            tokio::time::timeout(PATIENCE, Browser::connect_with_config(url, config))
                .await
                .expect("no DevTools connection")
                .expect("DevTools connection failed");
        chromium.handler = Some(tokio::spawn(async move {
            // Drives every command; stops when the connection closes.
            while handler.next().await.is_some() {}
        }));
        chromium.browser = Some(browser);
        chromium
    }

    /// A new tab on `path` of the example, once its script has run.
    pub async fn open(&self, path: &str) -> Page {
        let browser = self.browser.as_ref().unwrap();
        let url = format!("{}{path}", self.server);
        let page = tokio::time::timeout(PATIENCE, browser.new_page(url.as_str()))
            .await
            .expect("no new tab")
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            // The live page keeps `sseState`, the chat page `chatState`.
            let ready = tokio::time::timeout(
                PATIENCE,
                page.evaluate("typeof (window.sseState || window.chatState)"),
            )
            .await
            .expect("the page did not answer")
            .ok()
            .and_then(|result| result.into_value::<String>().ok());
            if ready.as_deref() == Some("object") {
                return page;
            }
            assert!(Instant::now() < deadline, "{url} did not load");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Closes the browser and waits for it (bounded); `Drop` does the rest.
    pub async fn close(mut self) {
        if let Some(mut browser) = self.browser.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), browser.close()).await;
        }
        // The watchdog ends what is left of the group, then itself.
        drop(self.process.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            match self.process.try_wait() {
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Ok(Some(_)) => {
                    self.exited = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if let Some(handler) = self.handler.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), handler).await;
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Some(handler) = self.handler.take() {
            handler.abort();
        }
        drop(self.browser.take());
        if !self.exited {
            // A failed or timed-out test: the watchdog ends the group when its
            // input closes; if it has not within 3 s, end the group from here.
            drop(self.process.stdin.take());
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(self.process.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = self.process.try_wait() {
                let group = format!("kill -KILL -{}", self.process.id());
                let _ = Command::new("sh").args(["-c", &group]).status();
                let _ = self.process.kill();
                let _ = self.process.wait();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
