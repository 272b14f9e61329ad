//! Live metrics through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`): what the body and the hub record as they run.
//!
//! Names and units follow the Prometheus conventions. Every stream series
//! carries a `layer` label: the layer's [`name`](crate::SseLayer::name), or
//! `""`.
//!
//! | name | kind | what |
//! |---|---|---|
//! | `sse_active_streams` | gauge | streams open now |
//! | `sse_streams_opened_total` | counter | streams opened |
//! | `sse_streams_closed_total` | counter | streams ended, by `reason` (`completed`, `client_disconnected`, `panicked`, `shutdown`, `stalled`, `lagged`) |
//! | `sse_events_sent_total` | counter | events handed to the connection |
//! | `sse_sent_bytes_total` | counter | bytes handed to the connection (events and heartbeats) |
//! | `sse_events_dropped_total` | counter | events a dropping or sliding buffer dropped, or a conflating one replaced |
//! | `sse_event_payload_bytes` | histogram | the size of each event sent or published, encoded (Pedestal's payload-size histogram) |
//! | `sse_hub_published_total` | counter | events published to a hub |
//! | `sse_hub_lagged_events_total` | counter | events hub streams missed because they fell behind (under `LagPolicy::Conflate`, also those replaced by a newer event of their key) |
//! | `sse_hub_resets_total` | counter | `reset` events sent (a `Last-Event-ID` that could not be resumed) |
//! | `sse_hub_delivery_seconds` | histogram | from a hub event's publish to its hand-over to a stream's connection |
//!
//! Without the feature, every hook here is empty and the handles hold nothing.

use crate::DisconnectReason;

#[cfg(feature = "metrics")]
mod on {
    use std::{sync::Once, time::Duration};

    use metrics::{Counter, Gauge, Unit};

    use super::*;

    fn describe() {
        static DESCRIBED: Once = Once::new();
        DESCRIBED.call_once(|| {
            use metrics::{describe_counter, describe_gauge, describe_histogram};
            describe_gauge!("sse_active_streams", "SSE streams open now");
            describe_counter!("sse_streams_opened_total", "SSE streams opened");
            describe_counter!("sse_streams_closed_total", "SSE streams ended, by reason");
            describe_counter!(
                "sse_events_sent_total",
                "SSE events handed to the connection"
            );
            describe_counter!(
                "sse_sent_bytes_total",
                Unit::Bytes,
                "Bytes of SSE streams handed to the connection"
            );
            describe_counter!(
                "sse_events_dropped_total",
                "SSE events dropped by buffer policies"
            );
            describe_histogram!(
                "sse_event_payload_bytes",
                Unit::Bytes,
                "Size of each SSE event, encoded"
            );
            describe_counter!("sse_hub_published_total", "Events published to a hub");
            describe_counter!(
                "sse_hub_lagged_events_total",
                "Events hub streams missed by falling behind"
            );
            describe_counter!("sse_hub_resets_total", "Reset events sent by hubs");
            describe_histogram!(
                "sse_hub_delivery_seconds",
                Unit::Seconds,
                "From a hub event's publish to its hand-over to a connection"
            );
        });
    }

    /// One stream's handles, registered once when it opens (none for a
    /// HEAD request, which opens no stream).
    pub(crate) struct StreamMetrics(Option<Handles>);

    struct Handles {
        layer: String,
        active: Gauge,
        events: Counter,
        bytes: Counter,
        dropped: Counter,
    }

    impl StreamMetrics {
        pub(crate) fn none() -> Self {
            Self(None)
        }

        pub(crate) fn opened(layer: Option<&str>) -> Self {
            describe();
            let layer = layer.unwrap_or_default().to_owned();
            metrics::counter!("sse_streams_opened_total", "layer" => layer.clone()).increment(1);
            let active = metrics::gauge!("sse_active_streams", "layer" => layer.clone());
            active.increment(1.0);
            Self(Some(Handles {
                active,
                events: metrics::counter!("sse_events_sent_total", "layer" => layer.clone()),
                bytes: metrics::counter!("sse_sent_bytes_total", "layer" => layer.clone()),
                dropped: metrics::counter!("sse_events_dropped_total", "layer" => layer.clone()),
                layer,
            }))
        }

        pub(crate) fn written(&self, events: u64, bytes: u64, dropped: u64) {
            let Some(handles) = &self.0 else { return };
            handles.events.increment(events);
            handles.bytes.increment(bytes);
            if dropped > 0 {
                handles.dropped.increment(dropped);
            }
        }

        pub(crate) fn closed(&self, reason: DisconnectReason) {
            let Some(handles) = &self.0 else { return };
            handles.active.decrement(1.0);
            metrics::counter!(
                "sse_streams_closed_total",
                "layer" => handles.layer.clone(),
                "reason" => reason_label(reason)
            )
            .increment(1);
        }
    }

    /// A histogram's handle, registered once per stream: looking a
    /// histogram up in the recorder at every event halved the throughput
    /// of 64 B events (`load loopback --impls tower-sse-metrics`).
    #[derive(Clone)]
    pub(crate) struct Histogram(metrics::Histogram);

    impl Histogram {
        /// `sse_event_payload_bytes`, for one stream's senders.
        pub(crate) fn payload() -> Self {
            describe();
            Self(metrics::histogram!("sse_event_payload_bytes"))
        }

        /// `sse_hub_delivery_seconds`, for one hub stream.
        pub(crate) fn delivery() -> Self {
            describe();
            Self(metrics::histogram!("sse_hub_delivery_seconds"))
        }

        pub(crate) fn bytes(&self, bytes: usize) {
            self.0.record(bytes as f64);
        }

        pub(crate) fn seconds(&self, latency: Duration) {
            self.0.record(latency.as_secs_f64());
        }
    }

    pub(crate) fn hub_published(bytes: usize) {
        describe();
        metrics::counter!("sse_hub_published_total").increment(1);
        metrics::histogram!("sse_event_payload_bytes").record(bytes as f64);
    }

    pub(crate) fn hub_lagged(missed: u64) {
        metrics::counter!("sse_hub_lagged_events_total").increment(missed);
    }

    pub(crate) fn hub_reset() {
        metrics::counter!("sse_hub_resets_total").increment(1);
    }
}

#[cfg(not(feature = "metrics"))]
mod on {
    use super::*;

    /// Nothing to hold without the feature.
    pub(crate) struct StreamMetrics;

    impl StreamMetrics {
        #[inline(always)]
        pub(crate) fn none() -> Self {
            Self
        }

        #[inline(always)]
        pub(crate) fn opened(_layer: Option<&str>) -> Self {
            Self
        }

        #[inline(always)]
        pub(crate) fn written(&self, _events: u64, _bytes: u64, _dropped: u64) {}

        #[inline(always)]
        pub(crate) fn closed(&self, _reason: DisconnectReason) {}
    }

    /// Nothing to hold without the feature.
    #[derive(Clone)]
    pub(crate) struct Histogram;

    impl Histogram {
        #[inline(always)]
        pub(crate) fn payload() -> Self {
            Self
        }

        #[inline(always)]
        pub(crate) fn bytes(&self, _bytes: usize) {}
    }

    #[inline(always)]
    pub(crate) fn hub_published(_bytes: usize) {}

    #[inline(always)]
    pub(crate) fn hub_lagged(_missed: u64) {}

    #[inline(always)]
    pub(crate) fn hub_reset() {}
}

pub(crate) use on::*;

/// The `reason` label of a closed stream.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn reason_label(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::Completed => "completed",
        DisconnectReason::ClientDisconnected => "client_disconnected",
        DisconnectReason::Panicked => "panicked",
        DisconnectReason::Shutdown => "shutdown",
        DisconnectReason::Stalled => "stalled",
        DisconnectReason::Lagged => "lagged",
        #[cfg(feature = "compression")]
        DisconnectReason::CompressionFailed => "compression_failed",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}
