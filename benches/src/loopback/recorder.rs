//! `tower-sse-metrics`: the server records tower-sse's metrics into a real
//! Prometheus recorder, as a deployment that scrapes them does.

use crate::Error;

/// Installs the global Prometheus recorder (no HTTP listener) and a thread
/// that runs its upkeep every 5 s (the exporter's default), as its listener
/// would; without upkeep, histogram samples pile up until a scrape.
#[cfg(feature = "metrics")]
pub(crate) fn install() -> Result<(), Error> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            handle.run_upkeep();
        }
    });
    Ok(())
}

/// Without the `metrics` feature there is nothing to record into.
#[cfg(not(feature = "metrics"))]
pub(crate) fn install() -> Result<(), Error> {
    Err("tower-sse-metrics needs the harness built with its metrics feature".into())
}
