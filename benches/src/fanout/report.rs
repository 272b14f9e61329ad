//! What a section prints: a markdown table of medians (min..max), per
//! implementation details, and ratios run by run.

use super::{Imp, runs::Section};
use crate::{
    cli::Named,
    stats::{Column, Results, column, fmt_num, spread},
};

/// The columns of the report.
const COLUMNS: [Column; 9] = [
    column("delivered_per_s", "delivered events/s", 1.0, true),
    column("p50_ms", "p50 ms", 1.0, false),
    column("p99_ms", "p99 ms", 1.0, false),
    column("max_ms", "max ms", 1.0, false),
    column("rss_per_sub", "RSS B/subscriber", 1.0, false),
    column("rss_per_sub_after", "RSS B/sub after", 1.0, false),
    column("server_cpu", "server CPU %", 100.0, false),
    column("client_cpu", "client CPU %", 100.0, false),
    column("missing", "missing", 1.0, false),
];

pub(super) fn report(section: &Section, results: &Results<Imp>) {
    let mut columns: Vec<_> = COLUMNS.to_vec();
    if section.redis_pid.is_some() {
        columns.push(column("redis_cpu", "redis CPU %", 100.0, false));
    }
    columns.push(column("other_cpu", "others' CPU %", 100.0, false));
    println!(
        "\n  offered {} events/s ({} subscribers x {} events/s); median (min..max) of {} runs",
        section.rate as usize * section.subscribers,
        section.subscribers,
        section.rate,
        results.0.values().next().map_or(0, Vec::len)
    );
    let labels: Vec<&str> = columns.iter().map(|c| c.label).collect();
    println!("  | implementation | {} |", labels.join(" | "));
    println!("  |---|{}", "---|".repeat(columns.len()));
    for &imp in &section.impls {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| spread(&results.series(imp, c.key), c.scale))
            .collect();
        println!("  | {} | {} |", imp.label(), cells.join(" | "));
    }
    for &imp in &section.impls {
        println!(
            "  {}: connect {} s, base RSS {} MiB, RSS after {} MiB, lagged notices {}, server-counted lagged {}",
            imp.name(),
            fmt_num(results.median(imp, "connect_secs")),
            fmt_num(results.median(imp, "base_rss_mib")),
            fmt_num(results.median(imp, "server_rss_mib")),
            fmt_num(results.median(imp, "lag_notices")),
            fmt_num(results.median(imp, "server_lagged")),
        );
    }
    let a = section.impls[0];
    for &b in &section.impls[1..] {
        for column in &columns {
            if matches!(column.key, "missing" | "redis_cpu" | "other_cpu") {
                continue;
            }
            if let Some(line) = results.ratio_line((b, a), (b.name(), a.name()), column) {
                println!("{line}");
            }
        }
    }
}
