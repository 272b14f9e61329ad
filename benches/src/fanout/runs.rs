//! The orchestrator's runs: where the processes go, waiting for a quiet
//! machine, one section's interleaved runs and one run's steps.

use std::time::{Duration, Instant};

use super::{Imp, STEP_TIMEOUT, report};
use crate::{
    Error,
    cli::Named,
    process::{Pinning, Proc},
    stats::{self, Metrics, Results, cpu_ns, machine_busy_ns, rss_kib},
};

/// How long the client keeps reading after the publisher finished.
const DRAIN: Duration = Duration::from_secs(30);
/// Pause after every subscriber is counted, before RSS is read and publishing starts.
const SETTLE: Duration = Duration::from_millis(500);
/// Runs disturbed by other load are done again, up to this many attempts.
const MAX_ATTEMPTS: usize = 3;

/// How the processes of one run are placed, and how much other load a run tolerates.
pub(super) struct Placement {
    pub(super) pinning: Pinning,
    /// Other processes' CPU (in cores) above which a run is done again.
    pub(super) noise_limit: f64,
    /// How long to wait for a quiet machine before each run.
    pub(super) quiet_wait: Duration,
    /// The buffer of tower-sse's layers, when not the default.
    pub(super) buffer: Option<usize>,
    /// The servers' tokio scheduler: `current` or `multi` (one worker).
    pub(super) runtime: String,
}

impl Placement {
    /// Waits (at most `quiet_wait`) until other processes use less than
    /// `noise_limit` of a core over half a second.
    fn wait_quiet(&self) {
        let deadline = Instant::now() + self.quiet_wait;
        let mut busy = 0.0;
        while Instant::now() < deadline {
            let (start, wall) = (machine_busy_ns(), Instant::now());
            std::thread::sleep(Duration::from_millis(500));
            busy = machine_busy_ns().saturating_sub(start) as f64
                / wall.elapsed().as_nanos().max(1) as f64;
            if busy < self.noise_limit {
                return;
            }
        }
        if !self.quiet_wait.is_zero() {
            println!(
                "  (machine still busy after {:?}: {:.0}% of a core in use by others)",
                self.quiet_wait,
                busy * 100.0
            );
        }
    }
}

/// One section: implementations compared at the same load.
pub(super) struct Section {
    pub(super) name: &'static str,
    pub(super) impls: Vec<Imp>,
    pub(super) subscribers: usize,
    pub(super) rate: u64,
    pub(super) secs: f64,
    /// `redis://…` and a key prefix stem, for [`Imp::Redis`].
    pub(super) redis: Option<(String, String)>,
    /// The Redis server's pid when this bench started it.
    pub(super) redis_pid: Option<u32>,
}

impl Section {
    pub(super) fn events(&self) -> u64 {
        ((self.rate as f64 * self.secs).round() as u64).max(1)
    }
}

pub(super) fn run_section(
    placement: &Placement,
    section: &Section,
    runs: usize,
) -> Result<(), Error> {
    println!(
        "\n== {} ({}-thread runtime): {} subscribers on one topic, {} events/s for {} s ({} events), {}",
        section.name,
        placement.runtime,
        section.subscribers,
        section.rate,
        section.secs,
        section.events(),
        section
            .impls
            .iter()
            .map(|imp| imp.label())
            .collect::<Vec<_>>()
            .join(" vs ")
    );
    let mut results = Results::new();
    for run in 0..runs * 2 {
        // A B, B A: each pair of runs is one A B B A block.
        for imp in stats::interleaved(&section.impls, run) {
            let mut attempt = 0;
            let metrics = loop {
                attempt += 1;
                placement.wait_quiet();
                let started = Instant::now();
                let metrics = run_once(placement, section, imp, run)?;
                let noisy = metrics["other_cpu"] > placement.noise_limit;
                println!(
                    "  run {} {:<15} {:>7.0} delivered/s  p50 {:>7.2} ms  p99 {:>7.2} ms  {:>6.0} B/sub  server CPU {:>3.0}%  others' CPU {:>3.0}%  publish {:.2} s  missing {}  ({:.1} s){}",
                    run / 2 + 1,
                    imp.name(),
                    metrics["delivered_per_s"],
                    metrics["p50_ms"],
                    metrics["p99_ms"],
                    metrics["rss_per_sub"],
                    metrics["server_cpu"] * 100.0,
                    metrics["other_cpu"] * 100.0,
                    metrics["publish_secs"],
                    metrics["missing"],
                    started.elapsed().as_secs_f64(),
                    if noisy && attempt < MAX_ATTEMPTS {
                        " noisy: again"
                    } else {
                        ""
                    }
                );
                if !noisy || attempt >= MAX_ATTEMPTS {
                    break metrics;
                }
            };
            results.push(imp, metrics);
        }
    }
    report::report(section, &results);
    Ok(())
}

fn run_once(
    placement: &Placement,
    section: &Section,
    imp: Imp,
    run: usize,
) -> Result<Metrics, Error> {
    let mut servers = Vec::new();
    let nodes = if imp == Imp::Redis { 2 } else { 1 };
    for node in 0..nodes {
        let mut command = placement.pinning.role(0, "fanout", "__server");
        command.arg(format!("imp={}", imp.name()));
        if let Some(buffer) = placement.buffer {
            command.arg(format!("buffer={buffer}"));
        }
        command.arg(format!("runtime={}", placement.runtime));
        if let Some((url, prefix)) = &section.redis {
            command
                .arg(format!("redis={url}"))
                .arg(format!("prefix={prefix}{run}:"));
        }
        servers.push(Proc::spawn(
            &format!("{} node {node}", imp.name()),
            command,
        )?);
    }
    let mut ports = Vec::new();
    for server in &servers {
        ports.push(server.expect("port ", Duration::from_secs(30))?);
    }
    std::thread::sleep(Duration::from_millis(300));
    let base_rss: u64 = servers.iter().map(|s| rss_kib(s.pid())).sum();
    let events = section.events();
    let mut command = placement.pinning.role(1, "fanout", "__client");
    command
        .arg(format!("ports={}", ports.join(",")))
        .arg(format!("subscribers={}", section.subscribers))
        .arg(format!("events={events}"));
    let connect_started = Instant::now();
    let mut client = Proc::spawn("client", command)?;
    client.expect("connected", STEP_TIMEOUT)?;
    for (i, server) in servers.iter_mut().enumerate() {
        let share = (section.subscribers + nodes - 1 - i) / nodes;
        server.send(&format!("wait {share}"))?;
        let counted: usize = server.expect("subscribed ", STEP_TIMEOUT)?.parse()?;
        if counted < share {
            return Err(format!("{}: {counted} of {share} subscribed", server.name).into());
        }
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    std::thread::sleep(SETTLE);
    let connected_rss: u64 = servers.iter().map(|s| rss_kib(s.pid())).sum();
    let server_cpu_start: u64 = servers.iter().map(|s| cpu_ns(s.pid())).sum();
    let redis_cpu_start = section.redis_pid.map_or(0, cpu_ns);
    let client_cpu_start = cpu_ns(client.pid());
    let machine_start = machine_busy_ns();
    let wall_start = Instant::now();
    client.send("start")?;
    let interval_us = (1e6 / section.rate as f64).round() as u64;
    servers[0].send(&format!("publish {events} {interval_us}"))?;
    let published = servers[0].expect(
        "published ",
        Duration::from_secs_f64(section.secs) + STEP_TIMEOUT,
    )?;
    let published: Vec<u64> = published
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [publish_start, publish_end, publish_failed] = published[..] else {
        return Err("bad published line".into());
    };
    client.send(&format!("drain {}", DRAIN.as_millis()))?;
    let result = client.expect("RESULT ", STEP_TIMEOUT)?;
    let wall = wall_start.elapsed().as_nanos().max(1) as f64;
    let server_cpu = servers
        .iter()
        .map(|s| cpu_ns(s.pid()))
        .sum::<u64>()
        .saturating_sub(server_cpu_start);
    let redis_cpu = section
        .redis_pid
        .map_or(0, cpu_ns)
        .saturating_sub(redis_cpu_start);
    // The client has printed its result but not exited yet (it is reaped
    // on drop): its CPU time is still readable.
    let client_cpu = cpu_ns(client.pid()).saturating_sub(client_cpu_start);
    let machine = machine_busy_ns().saturating_sub(machine_start);
    let others = machine.saturating_sub(server_cpu + redis_cpu + client_cpu);
    let after_rss: u64 = servers.iter().map(|s| rss_kib(s.pid())).sum();
    let mut lagged = 0.0;
    for server in &mut servers {
        server.send("stats")?;
        let stats = server.expect("stats ", Duration::from_secs(10))?;
        lagged += stats
            .split_whitespace()
            .nth(1)
            .ok_or("bad stats line")?
            .parse::<f64>()?;
    }
    let mut metrics = stats::parse_result(&result)?;
    let n = section.subscribers as f64;
    let last_read = metrics["last_read_ns"] as u64;
    let window = last_read.saturating_sub(publish_start).max(1) as f64 / 1e9;
    let extra = [
        ("expected", n * events as f64),
        ("delivered_per_s", metrics["delivered"] / window),
        ("offered_per_s", section.rate as f64 * n),
        (
            "publish_secs",
            publish_end.saturating_sub(publish_start) as f64 / 1e9,
        ),
        ("publish_failed", publish_failed as f64),
        ("window_secs", window),
        ("connect_secs", connect_secs),
        (
            "rss_per_sub",
            connected_rss.saturating_sub(base_rss) as f64 * 1024.0 / n,
        ),
        (
            "rss_per_sub_after",
            after_rss.saturating_sub(base_rss) as f64 * 1024.0 / n,
        ),
        ("base_rss_mib", base_rss as f64 / 1024.0),
        ("server_rss_mib", after_rss as f64 / 1024.0),
        ("server_cpu", server_cpu as f64 / wall),
        ("redis_cpu", redis_cpu as f64 / wall),
        ("other_cpu", others as f64 / wall),
        ("server_lagged", lagged),
    ];
    for (key, value) in extra {
        metrics.insert(key.into(), value);
    }
    let delivered = metrics["delivered"];
    let problems = metrics["missing"] + metrics["disorder"] + metrics["incomplete"];
    if problems > 0.0 || delivered < n * events as f64 {
        eprintln!(
            "  warning: {} delivered {delivered} of {} (missing {}, out of order {}, incomplete streams {}, lagged notices {} for {} events; server lagged {lagged}; publish failures {publish_failed})",
            imp.name(),
            n * events as f64,
            metrics["missing"],
            metrics["disorder"],
            metrics["incomplete"],
            metrics["lag_notices"],
            metrics["lag_reported"],
        );
    }
    Ok(metrics)
}
