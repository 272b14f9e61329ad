//! Readings and statistics: clocks, `/proc`, medians and ratios, and the
//! `RESULT key=value …` lines a client role reports with.

use std::{
    collections::BTreeMap,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use crate::Error;

/// One run's figures, by name.
pub(crate) type Metrics = BTreeMap<String, f64>;

/// Wall clock, in nanoseconds since the epoch (the same in every process).
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

/// CPU time of every thread of a process, in nanoseconds.
pub(crate) fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
                total += stat
                    .split_whitespace()
                    .next()
                    .and_then(|ns| ns.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// Resident memory of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time spent by the whole machine outside idle, in nanoseconds
/// (`/proc/stat`, in USER_HZ = 100 ticks a second).
pub(crate) fn machine_busy_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    busy * 10_000_000
}

/// The CPU shares of a server and of this process over a wall-clock interval.
pub(crate) struct CpuClock {
    server_pid: u32,
    client_pid: u32,
    pub(crate) wall: Instant,
    server: u64,
    client: u64,
}

impl CpuClock {
    pub(crate) fn start(server_pid: u32) -> Self {
        let client_pid = std::process::id();
        Self {
            server_pid,
            client_pid,
            wall: Instant::now(),
            server: cpu_ns(server_pid),
            client: cpu_ns(client_pid),
        }
    }

    /// (server share, client share) of one core since `start`.
    pub(crate) fn shares(&self) -> (f64, f64) {
        let wall = self.wall.elapsed().as_nanos().max(1) as f64;
        let server = cpu_ns(self.server_pid).saturating_sub(self.server) as f64;
        let client = cpu_ns(self.client_pid).saturating_sub(self.client) as f64;
        (server / wall, client / wall)
    }
}

/// The value at quantile `q` (0 to 1) of sorted samples; 0 when empty.
pub(crate) fn quantile(sorted: &[u64], q: f64) -> u64 {
    let index = ((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1);
    sorted.get(index).copied().unwrap_or(0)
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

pub(crate) fn fmt_num(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// `median (min..max)` of scaled values; the value alone when there is one.
pub(crate) fn spread(values: &[f64], scale: f64) -> String {
    if values.len() == 1 {
        return fmt_num(values[0] * scale);
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min) * scale;
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max) * scale;
    format!(
        "{} ({}..{})",
        fmt_num(median(values) * scale),
        fmt_num(min),
        fmt_num(max)
    )
}

/// Every run's figures, by implementation.
pub(crate) struct Results<I>(pub(crate) BTreeMap<I, Vec<Metrics>>);

impl<I: Ord + Copy> Results<I> {
    pub(crate) fn new() -> Self {
        Self(BTreeMap::new())
    }

    pub(crate) fn push(&mut self, imp: I, metrics: Metrics) {
        self.0.entry(imp).or_default().push(metrics);
    }

    /// One figure of every run of `imp`, in run order.
    pub(crate) fn series(&self, imp: I, key: &str) -> Vec<f64> {
        self.0
            .get(&imp)
            .map(|runs| runs.iter().filter_map(|m| m.get(key).copied()).collect())
            .unwrap_or_default()
    }

    pub(crate) fn median(&self, imp: I, key: &str) -> f64 {
        median(&self.series(imp, key))
    }

    /// `  ratio b/a label: median (min..max) per run [r1 r2 …] (… is better)`:
    /// each run of `b` against the run of `a` next to it; `None` without runs.
    pub(crate) fn ratio_line(
        &self,
        (b, a): (I, I),
        names: (&str, &str),
        column: &Column,
    ) -> Option<String> {
        let ratios: Vec<f64> = self
            .series(b, column.key)
            .iter()
            .zip(self.series(a, column.key))
            .map(|(b, a)| b / a)
            .collect();
        if ratios.is_empty() {
            return None;
        }
        let per_run: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        Some(format!(
            "  ratio {}/{} {}: {} per run [{}] ({} is better)",
            names.0,
            names.1,
            column.label,
            spread(&ratios, 1.0),
            per_run.join(" "),
            if column.higher { "higher" } else { "lower" }
        ))
    }
}

/// A figure of a report: its key in [`Metrics`], label and scale.
#[derive(Clone, Copy)]
pub(crate) struct Column {
    pub(crate) key: &'static str,
    pub(crate) label: &'static str,
    pub(crate) scale: f64,
    pub(crate) higher: bool,
}

/// A column: (key, label, scale, higher is better).
pub(crate) const fn column(
    key: &'static str,
    label: &'static str,
    scale: f64,
    higher: bool,
) -> Column {
    Column {
        key,
        label,
        scale,
        higher,
    }
}

/// The line a client role prints its figures on.
pub(crate) fn result_line<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let mut line = String::from("RESULT");
    for (key, value) in pairs {
        line += &format!(" {key}={value}");
    }
    line
}

/// Parses the `key=value` pairs after `RESULT `.
pub(crate) fn parse_result(line: &str) -> Result<Metrics, Error> {
    let mut metrics = Metrics::new();
    for pair in line.split_whitespace() {
        let (key, value) = pair.split_once('=').ok_or("bad RESULT")?;
        metrics.insert(key.into(), value.parse()?);
    }
    Ok(metrics)
}

/// The order of run `run`: A B C, C B A, A B C, … so that each
/// implementation runs as often first as last.
pub(crate) fn interleaved<I: Copy>(impls: &[I], run: usize) -> Vec<I> {
    let mut order = impls.to_vec();
    if run % 2 == 1 {
        order.reverse();
    }
    order
}
