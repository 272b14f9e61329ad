//! The `redis` section (built with `--features redis`): the in-memory hub
//! on one node against the Redis hub on two, with the Redis server it
//! needs: `REDIS_URL`, or one started here.

#[cfg(feature = "redis")]
pub(super) use with_redis::section;

#[cfg(not(feature = "redis"))]
pub(super) fn section(
    _placement: &super::runs::Placement,
    _options: &super::Options,
) -> Result<(), crate::Error> {
    println!("\n== redis: skipped (build with --features redis)");
    Ok(())
}

#[cfg(feature = "redis")]
mod with_redis {
    use std::{
        io::{BufRead, BufReader, Write as _},
        path::PathBuf,
        process::{Child, Stdio},
        time::Duration,
    };

    use super::super::{
        Imp, Options, TOPIC,
        runs::{Placement, Section, run_section},
    };
    use crate::{Error, stats::now_ns};

    pub(crate) fn section(placement: &Placement, options: &Options) -> Result<(), Error> {
        let Some(redis) = Redis::start(placement)? else {
            return Ok(());
        };
        for &rate in &options.redis_rates {
            let section = Section {
                name: "redis",
                impls: vec![Imp::Hub, Imp::Redis],
                subscribers: options.redis_subscribers,
                rate,
                secs: options.secs,
                redis: Some((
                    redis.url.clone(),
                    format!("tower-sse-fanout-bench:{}:", now_ns()),
                )),
                redis_pid: redis.pid(),
            };
            let result = run_section(placement, &section, options.runs);
            redis.cleanup(&section);
            result?;
        }
        Ok(())
    }

    struct Redis {
        url: String,
        process: Option<Child>,
        dir: Option<PathBuf>,
    }

    impl Redis {
        /// `None` (with a message) when there is no Redis to use.
        fn start(placement: &Placement) -> Result<Option<Self>, Error> {
            if let Ok(url) = std::env::var("REDIS_URL") {
                println!("\nredis: using REDIS_URL={url}");
                return Ok(Some(Self {
                    url,
                    process: None,
                    dir: None,
                }));
            }
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let dir = std::env::temp_dir().join(format!(
                "tower-sse-fanout-redis-{}-{port}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir)?;
            let mut command = placement.pinning.program(1, "redis-server");
            command
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .arg("--dir")
                .arg(&dir)
                .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            let process = match command.spawn() {
                Ok(process) => process,
                Err(err) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    println!("\n== redis: skipped (set REDIS_URL or install redis-server: {err})");
                    return Ok(None);
                }
            };
            let redis = Self {
                url: format!("redis://127.0.0.1:{port}"),
                process: Some(process),
                dir: Some(dir),
            };
            for _ in 0..100 {
                if redis
                    .command("PING")
                    .is_ok_and(|reply| reply.starts_with("+PONG"))
                {
                    println!("\nredis: started redis-server on 127.0.0.1:{port}");
                    return Ok(Some(redis));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err("redis-server did not answer PING within 5 s".into())
        }

        fn pid(&self) -> Option<u32> {
            self.process.as_ref().map(Child::id)
        }

        /// One inline command; the first line of the reply.
        fn command(&self, command: &str) -> Result<String, Error> {
            let addr = self
                .url
                .strip_prefix("redis://")
                .and_then(|rest| rest.split('/').next())
                .filter(|addr| !addr.contains('@'))
                .ok_or("REDIS_URL is not redis://host:port")?;
            let mut socket = std::net::TcpStream::connect(addr)?;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            socket.write_all(format!("{command}\r\n").as_bytes())?;
            let mut line = String::new();
            BufReader::new(socket).read_line(&mut line)?;
            Ok(line)
        }

        /// Deletes the streams the section wrote (on a shared `REDIS_URL`).
        fn cleanup(&self, section: &Section) {
            if self.process.is_some() {
                return;
            }
            if let Some((_, prefix)) = &section.redis {
                for run in 0..64 {
                    let _ = self.command(&format!("DEL {prefix}{run}:{TOPIC}"));
                }
            }
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            if let Some(mut process) = self.process.take() {
                let _ = process.kill();
                let _ = process.wait();
            }
            if let Some(dir) = self.dir.take() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}
