//! Compressed streams (feature `compression`, with `gzip`, `deflate`, `br`
//! or `zstd` for the encodings): the public settings, [`Compression`], and
//! how a stream picks its encoding from the request's `Accept-Encoding`.
//!
//! Each compressed stream has a compressor of its own, flushed at the end
//! of every frame (a sync flush), so the client decodes each frame whole as
//! soon as it arrives: no event waits for the next one, and heartbeats still
//! reach the client. The compressor's dictionary carries across frames,
//! which is where the ratio comes from: an event that repeats the keys of
//! the last one costs a few back-references. The compressor is in
//! `compression/encoder.rs`, the negotiation in `compression/negotiate.rs`,
//! and `body.rs` hands each frame through them.
//!
//! # Memory and CPU
//!
//! A compressor keeps its window and tables for the stream's whole life: at
//! 10,000 idle streams that is the cost, and the defaults keep it as small
//! as each library allows. Measured by
//! `cargo bench -p tower-sse-benches --features compression --bench compression`
//! (RSS per stream after one 200-byte JSON event, over an uncompressed
//! stream's 1.2 KB; bytes and CPU per such event, each its own flushed
//! frame; BENCHMARKS.md has every level):
//!
//! | default | memory per idle stream | 10,000 streams | wire bytes per event | CPU per event |
//! | --- | ---: | ---: | ---: | ---: |
//! | uncompressed | — | — | 210 (1×) | 0.23 µs (1.2× axum's `Sse`) |
//! | zstd 3, window 14 | 92 KB | 874 MiB | 25.5 (0.12×) | 1.7 µs (7.5×) |
//! | br 2, window 16 | 248 KB | 2.4 GiB | 34.5 (0.16×) | 4.5 µs (12×) |
//! | gzip 6 | 303 KB | 2.9 GiB | 37.8 (0.18×) | 13.6 µs (41×) |
//! | deflate 6 | 303 KB | 2.9 GiB | 37.8 (0.18×) | 13.6 µs (34×) |
//!
//! gzip and deflate cost the same at every level (the pure-Rust backend has
//! one window and fixed tables); zstd at level 3 and window 21 (its own
//! default) would take 4.2 MB a stream. The compressor is made at the
//! stream's first frame: a HEAD request's stream never makes one.

mod encoder;
mod negotiate;

use std::io;

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue,
    header::{CONTENT_ENCODING, VARY},
};

use crate::config::StreamConfig;
use encoder::Compressor;
use negotiate::{Encoding, negotiate};

/// A compressed stream's encoding and its compressor, made at the first
/// frame (a HEAD request's stream, which writes nothing, never makes one).
pub(crate) struct StreamCompressor {
    encoding: Encoding,
    settings: Compression,
    compressor: Option<Compressor>,
}

impl StreamCompressor {
    /// The compressor of a stream whose request sent `headers`, if the
    /// layer compresses and the request accepts one of its encodings.
    pub(crate) fn for_request(config: &StreamConfig, headers: &HeaderMap) -> Option<Box<Self>> {
        let settings = config.compression.as_ref()?;
        let encoding = negotiate(headers, settings)?;
        Some(Box::new(Self {
            encoding,
            settings: settings.clone(),
            compressor: None,
        }))
    }

    pub(crate) fn content_encoding(&self) -> &'static str {
        self.encoding.token()
    }

    /// `frame`, compressed and flushed.
    pub(crate) fn frame(&mut self, frame: &[u8]) -> io::Result<Bytes> {
        let compressor = match &mut self.compressor {
            Some(compressor) => compressor,
            None => self
                .compressor
                .insert(Compressor::new(self.encoding, &self.settings)?),
        };
        compressor.frame(frame)
    }

    /// The trailer of a stream that wrote anything (an error is logged: the
    /// events were all delivered, only the end marker is missing).
    pub(crate) fn finish(self) -> Option<Bytes> {
        match self.compressor?.finish() {
            Ok(trailer) => Some(trailer).filter(|t| !t.is_empty()),
            Err(err) => {
                tracing::warn!(%err, "compression trailer failed");
                None
            }
        }
    }
}

/// `Vary: Accept-Encoding` on every response of a compressing layer, and
/// the `Content-Encoding` of a compressed one.
pub(crate) fn set_headers(
    headers: &mut HeaderMap,
    config: &StreamConfig,
    content_encoding: Option<&'static str>,
) {
    if config.compression.is_none() {
        return;
    }
    headers.append(VARY, HeaderValue::from_static("accept-encoding"));
    match content_encoding {
        Some(encoding) => {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        // The handler's own encoding would describe a body that is gone.
        None => {
            headers.remove(CONTENT_ENCODING);
        }
    }
}

/// How a layer's (or a response's) streams are compressed: which encodings
/// may be chosen, at which level, with which window.
///
/// The encoding is chosen per request from `Accept-Encoding`: the one with
/// the client's highest `q` among those enabled here (and compiled in: each
/// is a feature), ties going to the server's order: `zstd`, `br`, `gzip`,
/// `deflate`. `q=0` refuses an encoding, `*` stands for any not named, and a
/// request without the header, with none of them, or with a header that
/// cannot be read, gets an uncompressed stream. Every response of a layer
/// with compression says `Vary: Accept-Encoding`; a compressed one says
/// `Content-Encoding`.
///
/// ```
/// use tower_sse::{Compression, CompressionLevel, SseLayer};
///
/// let layer = SseLayer::new(|events: tower_sse::EventSender, _ctx| async move {
///     let _ = events.send(r#"{"price":101.5}"#).await;
/// })
/// .compression(Compression::default().level(CompressionLevel::Fastest));
/// # let _ = layer;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Compression {
    pub(crate) gzip: bool,
    pub(crate) deflate: bool,
    pub(crate) br: bool,
    pub(crate) zstd: bool,
    pub(crate) level: CompressionLevel,
    pub(crate) window_bits: Option<u8>,
}

/// How hard a compressor works: the level of each encoding it maps to is
/// in [`Compression::level`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompressionLevel {
    /// The cheapest in CPU: gzip and deflate 1, br 2, zstd 1. (br 0 and 1
    /// compress each flushed frame alone, with no dictionary across frames:
    /// useless for events.)
    Fastest,
    /// This crate's choice for event streams (small frames, each flushed):
    /// gzip and deflate 6, br 2, zstd 3.
    #[default]
    Default,
    /// The best ratio: gzip and deflate 9, br 11, zstd 19: much more CPU
    /// per event (br 11: 1.4 ms) and, for br, memory.
    Best,
    /// The encoding's own level, clamped to its range: gzip and deflate
    /// 0–9, br 2–11, zstd 1–19.
    Precise(u32),
}

impl Default for Compression {
    /// Every encoding compiled in, at [`CompressionLevel::Default`], with
    /// the default windows.
    fn default() -> Self {
        Self {
            gzip: true,
            deflate: true,
            br: true,
            zstd: true,
            level: CompressionLevel::Default,
            window_bits: None,
        }
    }
}

impl Compression {
    /// The same as [`Compression::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Never chooses gzip.
    pub fn no_gzip(mut self) -> Self {
        self.gzip = false;
        self
    }

    /// Never chooses deflate.
    pub fn no_deflate(mut self) -> Self {
        self.deflate = false;
        self
    }

    /// Never chooses br.
    pub fn no_br(mut self) -> Self {
        self.br = false;
        self
    }

    /// Never chooses zstd.
    pub fn no_zstd(mut self) -> Self {
        self.zstd = false;
        self
    }

    /// How hard every encoding works (see [`CompressionLevel`]).
    pub fn level(mut self, level: CompressionLevel) -> Self {
        self.level = level;
        self
    }

    /// The compressor window of br and zstd, as a power of two (clamped:
    /// br 10–24, zstd 10–27): how far back an event may find a repeat, and,
    /// for zstd, most of what an idle stream costs. The defaults are br 16
    /// (64 KiB) and zstd 14 (16 KiB). gzip and deflate always use 15
    /// (32 KiB, the pure-Rust backend's only window).
    pub fn window_bits(mut self, bits: u8) -> Self {
        self.window_bits = Some(bits);
        self
    }
}
