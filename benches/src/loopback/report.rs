//! What a scenario prints: medians with min..max, CPU shares, and each
//! implementation's ratio to axum's `Sse`, run by run.

use super::scenarios::{Imp, Kind, Scenario};
use crate::{
    cli::Named,
    stats::{Column, Results, column, fmt_num, spread},
};

/// The metrics printed per scenario.
fn columns(kind: Kind) -> [Column; 2] {
    match kind {
        Kind::Throughput => [
            column("events_per_s", "M events/s", 1e-6, true),
            column("payload_mb_per_s", "payload MB/s", 1.0, true),
        ],
        Kind::Idle => [
            column("bytes_per_stream", "bytes/stream", 1.0, false),
            column("server_cpu", "idle server CPU %", 100.0, false),
        ],
        Kind::Latency => [
            column("p99_us", "p99 us", 1.0, false),
            column("p50_us", "p50 us", 1.0, false),
        ],
    }
}

pub(crate) fn report(scenario: &Scenario, impls: &[Imp], results: &Results<Imp>) {
    let columns = columns(scenario.kind);
    let mut header = format!("{:<10}", "impl");
    for column in &columns {
        header += &format!(" | {:<24}", column.label);
    }
    header += " | server CPU % | client CPU %";
    println!("{header}");
    for &imp in impls {
        let mut line = format!("{:<10}", imp.name());
        for column in &columns {
            let series = results.series(imp, column.key);
            line += &format!(" | {:<24}", spread(&series, column.scale));
        }
        line += &format!(
            " | {:<12} | {}",
            fmt_num(results.median(imp, "server_cpu") * 100.0),
            fmt_num(results.median(imp, "client_cpu") * 100.0)
        );
        println!("{line}");
    }
    if scenario.kind == Kind::Idle {
        for &imp in impls {
            println!(
                "  {}: heartbeat bytes/s received {}, server RSS {} MiB (base {} MiB)",
                imp.name(),
                fmt_num(results.median(imp, "heartbeat_bytes_per_s")),
                fmt_num(results.median(imp, "server_rss_mib")),
                fmt_num(results.median(imp, "base_rss_mib"))
            );
        }
    }
    if scenario.kind == Kind::Idle && impls.contains(&Imp::Bare) {
        let bare = results.median(Imp::Bare, "bytes_per_stream");
        for &imp in impls.iter().filter(|&&imp| imp != Imp::Bare) {
            println!(
                "  {} over bare body: {} bytes/stream",
                imp.name(),
                fmt_num(results.median(imp, "bytes_per_stream") - bare)
            );
        }
    }
    // Metrics on ÷ off, run by run.
    if impls.contains(&Imp::TowerSse) {
        for column in &columns {
            let pair = (Imp::TowerSseMetrics, Imp::TowerSse);
            if let Some(line) = results.ratio_line(pair, ("tower-sse-metrics", "tower-sse"), column)
            {
                println!("{line}");
            }
        }
    }
    if !impls.contains(&Imp::AxumSse) {
        return;
    }
    for &imp in impls.iter().filter(|&&imp| imp != Imp::AxumSse) {
        for column in &columns {
            let pair = (imp, Imp::AxumSse);
            if let Some(line) = results.ratio_line(pair, (imp.name(), "axum-sse"), column) {
                println!("{line}");
            }
        }
    }
}
