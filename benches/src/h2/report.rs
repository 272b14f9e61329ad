//! What an h2 scenario prints: delivered events/s and MB/s with the CPU
//! shares, how the events were framed, and each implementation's ratio to
//! axum's `Sse`, run by run.

use crate::{
    cli::Named,
    loopback::scenarios::Imp,
    stats::{Results, column, fmt_num, spread},
};

pub(crate) fn report(impls: &[Imp], results: &Results<Imp>) {
    let columns = [
        column("events_per_s", "M events/s", 1e-6, true),
        column("payload_mb_per_s", "payload MB/s", 1.0, true),
    ];
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
    for &imp in impls {
        println!(
            "  {}: {} M events per server CPU-second, {} M per client CPU-second",
            imp.name(),
            fmt_num(results.median(imp, "events_per_server_cpu_s") / 1e6),
            fmt_num(results.median(imp, "events_per_client_cpu_s") / 1e6),
        );
        println!(
            "  {}: {} k DATA frames/s, {} B and {} events per frame, {} B per socket read",
            imp.name(),
            fmt_num(results.median(imp, "frames_per_s") / 1e3),
            fmt_num(results.median(imp, "bytes_per_frame")),
            fmt_num(results.median(imp, "events_per_frame")),
            fmt_num(results.median(imp, "bytes_per_read")),
        );
    }
    if !impls.contains(&Imp::AxumSse) {
        return;
    }
    let per_cpu = column(
        "events_per_server_cpu_s",
        "events per server CPU-s",
        1.0,
        true,
    );
    for &imp in impls.iter().filter(|&&imp| imp != Imp::AxumSse) {
        for column in columns.iter().chain([&per_cpu]) {
            if let Some(line) =
                results.ratio_line((imp, Imp::AxumSse), (imp.name(), "axum-sse"), column)
            {
                println!("{line}");
            }
        }
    }
}
