//! A Redis for the tests of the hub's Redis backend.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

/// The Redis under test: `REDIS_URL`, or a `redis-server` of the test's own.
pub struct Redis {
    /// Where it listens.
    pub url: String,
    child: Option<Child>,
}

impl Redis {
    /// `REDIS_URL`, or a new `redis-server` on a free loopback port.
    pub async fn start() -> Self {
        if let Ok(url) = std::env::var("REDIS_URL") {
            return Self { url, child: None };
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child =
            Command::new(std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into()))
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server not found (set REDIS_URL or REDIS_SERVER)");
        let (url, child) = (format!("redis://127.0.0.1:{port}"), Some(child));
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Self { url, child };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server did not start");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
