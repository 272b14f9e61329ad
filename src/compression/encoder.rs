//! A stream's compressor: each frame in, the compressed bytes that decode
//! to exactly that frame out (a sync flush), the dictionary kept across
//! frames; at a clean end, the encoding's trailer.

// With `compression` alone no encoder is compiled in (`negotiate` then
// chooses none, so no `Compressor` is made): only `Kind::Never` is left.
#![cfg_attr(
    not(any(
        feature = "gzip",
        feature = "deflate",
        feature = "br",
        feature = "zstd"
    )),
    allow(unreachable_code, unused_imports, unused_variables, dead_code)
)]

use std::io::{self, Write};

use bytes::Bytes;

use super::{Compression, CompressionLevel, negotiate::Encoding};

/// The default windows, as powers of two (`benches/benches/compression.rs`
/// measured them on 200-byte JSON events): zstd's 16 KiB reaches 80 such
/// events back and keeps an idle stream at ~90 KB; br's tables cost the same
/// at any window, and 64 KiB compresses better than 16 KiB.
#[cfg(feature = "br")]
const BR_WINDOW_BITS: u8 = 16;
#[cfg(feature = "zstd")]
const ZSTD_WINDOW_BITS: u8 = 14;

/// The compressor of one stream. Each writes into a `Vec` the frame takes
/// whole, so an idle stream holds no output.
pub(crate) struct Compressor {
    kind: Kind,
}

enum Kind {
    #[cfg(feature = "gzip")]
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    #[cfg(feature = "deflate")]
    Deflate(flate2::write::ZlibEncoder<Vec<u8>>),
    #[cfg(feature = "br")]
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    #[cfg(feature = "zstd")]
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    /// Keeps the enum inhabited-in-name when no encoder is compiled in
    /// (feature `compression` alone), so every match stays total.
    #[allow(dead_code)]
    Never(std::convert::Infallible),
}

/// The window of br or zstd, clamped to its range.
#[cfg(any(feature = "br", feature = "zstd"))]
fn window_bits(settings: &Compression, default: u8, min: u8, max: u8) -> u32 {
    u32::from(settings.window_bits.unwrap_or(default).clamp(min, max))
}

/// The level of each encoding, in its own range.
#[cfg(any(
    feature = "gzip",
    feature = "deflate",
    feature = "br",
    feature = "zstd"
))]
fn level(level: CompressionLevel, fastest: u32, default: u32, best: u32, min: u32) -> u32 {
    match level {
        CompressionLevel::Fastest => fastest,
        CompressionLevel::Default => default,
        CompressionLevel::Best => best,
        CompressionLevel::Precise(n) => n.clamp(min, best),
    }
}

impl Compressor {
    /// A compressor for `encoding` with `settings`; an error only if the
    /// encoder library refuses them (zstd's context allocation).
    pub(crate) fn new(encoding: Encoding, settings: &Compression) -> io::Result<Self> {
        let kind = match encoding {
            #[cfg(feature = "gzip")]
            Encoding::Gzip => Kind::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level(settings.level, 1, 6, 9, 0)),
            )),
            #[cfg(feature = "deflate")]
            Encoding::Deflate => Kind::Deflate(flate2::write::ZlibEncoder::new(
                Vec::new(),
                flate2::Compression::new(level(settings.level, 1, 6, 9, 0)),
            )),
            #[cfg(feature = "br")]
            Encoding::Br => Kind::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                // Its own staging buffer: frames are written through it.
                4096,
                // Not 0 or 1: those compress each flushed frame alone (no
                // dictionary across frames), 0.87x where 2 gives 0.16x.
                level(settings.level, 2, 2, 11, 2),
                window_bits(settings, BR_WINDOW_BITS, 10, 24),
            ))),
            #[cfg(feature = "zstd")]
            Encoding::Zstd => {
                use zstd::zstd_safe::CParameter;
                let level = level(settings.level, 1, 3, 19, 1);
                let window = window_bits(settings, ZSTD_WINDOW_BITS, 10, 27);
                let mut encoder = zstd::stream::raw::Encoder::new(level as i32)?;
                encoder.set_parameter(CParameter::WindowLog(window))?;
                // A level's tables are sized for its own window (up to 2^24
                // entries at 19), not ours: a quarter of the window each
                // keeps an idle stream small at every level (4 MB at level 3
                // and window 21 without this).
                encoder.set_parameter(CParameter::HashLog(window - 2))?;
                encoder.set_parameter(CParameter::ChainLog(window - 2))?;
                Kind::Zstd(zstd::stream::write::Encoder::with_encoder(
                    Vec::new(),
                    encoder,
                ))
            }
            #[allow(unreachable_patterns)]
            _ => {
                return Err(io::Error::other(format!(
                    "{} is not compiled in",
                    encoding.token()
                )));
            }
        };
        Ok(Self { kind })
    }

    /// Compresses `frame` and flushes: the bytes returned decode to all of
    /// it, whatever follows.
    pub(crate) fn frame(&mut self, frame: &[u8]) -> io::Result<Bytes> {
        fn flushed<W: Write>(writer: &mut W, frame: &[u8]) -> io::Result<()> {
            writer.write_all(frame)?;
            writer.flush()
        }
        let out: &mut Vec<u8> = match &mut self.kind {
            #[cfg(feature = "gzip")]
            Kind::Gzip(encoder) => {
                flushed(encoder, frame)?;
                encoder.get_mut()
            }
            #[cfg(feature = "deflate")]
            Kind::Deflate(encoder) => {
                flushed(encoder, frame)?;
                encoder.get_mut()
            }
            #[cfg(feature = "br")]
            Kind::Br(encoder) => {
                flushed(encoder, frame)?;
                encoder.get_mut()
            }
            #[cfg(feature = "zstd")]
            Kind::Zstd(encoder) => {
                flushed(encoder, frame)?;
                encoder.get_mut()
            }
            Kind::Never(never) => match *never {},
        };
        Ok(Bytes::from(std::mem::take(out)))
    }

    /// Ends the compressed stream: what is left and the trailer (gzip's CRC
    /// and length, zlib's Adler-32, br's last block, zstd's epilogue).
    pub(crate) fn finish(self) -> io::Result<Bytes> {
        let out: Vec<u8> = match self.kind {
            #[cfg(feature = "gzip")]
            Kind::Gzip(encoder) => encoder.finish()?,
            #[cfg(feature = "deflate")]
            Kind::Deflate(encoder) => encoder.finish()?,
            #[cfg(feature = "br")]
            Kind::Br(encoder) => encoder.into_inner(),
            #[cfg(feature = "zstd")]
            Kind::Zstd(encoder) => encoder.finish()?,
            Kind::Never(never) => match never {},
        };
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    const EVENTS: [&[u8]; 3] = [
        b"retry: 5000\r\n\r\n",
        b"data: {\"symbol\":\"ACME\",\"price\":101.5}\r\n\r\n",
        b"data: {\"symbol\":\"ACME\",\"price\":101.75}\r\n\r\n",
    ];

    /// Every frame of every compiled-in encoding decodes, through the
    /// decoder crates' own readers, to what went in; the later repeat is
    /// smaller than the first (the dictionary carried over).
    fn round_trip(encoding: Encoding, decode: fn(&[u8]) -> Vec<u8>) {
        let mut compressor = Compressor::new(encoding, &Compression::default()).unwrap();
        let mut wire = Vec::new();
        let mut sizes = Vec::new();
        for event in EVENTS {
            let frame = compressor.frame(event).unwrap();
            sizes.push(frame.len());
            wire.extend_from_slice(&frame);
            // Each prefix decodes to every frame so far: nothing held back.
            let so_far: Vec<u8> = EVENTS[..sizes.len()].concat();
            assert!(decode(&wire).starts_with(&so_far), "{encoding:?}");
        }
        wire.extend_from_slice(&compressor.finish().unwrap());
        assert_eq!(decode(&wire), EVENTS.concat(), "{encoding:?}");
        assert!(sizes[2] < sizes[1], "{encoding:?}: {sizes:?}");
    }

    /// Reads what a decoder yields before the input runs out (a prefix
    /// without the trailer ends in an error after the data).
    fn read_available(mut reader: impl Read) -> Vec<u8> {
        let mut out = Vec::new();
        let mut chunk = [0; 256];
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
        out
    }

    #[cfg(feature = "gzip")]
    #[test]
    fn gzip_frames_decode_one_by_one() {
        round_trip(Encoding::Gzip, |wire| {
            read_available(flate2::read::GzDecoder::new(wire))
        });
    }

    #[cfg(feature = "deflate")]
    #[test]
    fn deflate_frames_decode_one_by_one() {
        round_trip(Encoding::Deflate, |wire| {
            read_available(flate2::read::ZlibDecoder::new(wire))
        });
    }

    #[cfg(feature = "br")]
    #[test]
    fn br_frames_decode_one_by_one() {
        round_trip(Encoding::Br, |wire| {
            read_available(brotli::Decompressor::new(wire, 4096))
        });
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_frames_decode_one_by_one() {
        round_trip(Encoding::Zstd, |wire| {
            read_available(zstd::stream::read::Decoder::new(wire).unwrap())
        });
    }
}
