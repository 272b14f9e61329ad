//! The wire encoder: an event's exact size, found before it allocates, and
//! its fields written as `prefix: value` lines, multi-line texts split on
//! CRLF, LF and lone CR.

use bytes::{BufMut, Bytes, BytesMut};

use super::Event;
use crate::pedestal::{COMMENT_FIELD, CRLF, DATA_FIELD, EVENT_FIELD, ID_FIELD, RETRY_FIELD};

impl Event {
    /// The encoded size (exact; the name is kept from when it was a bound).
    #[cfg(test)]
    fn encoded_len_bound(&self) -> usize {
        Layout::of(self).len
    }

    pub(super) fn write_fields(&self, layout: &Layout, buf: &mut BytesMut) {
        self.write_head(layout, buf);
        if let Some(data) = &self.data {
            put_text(buf, DATA_FIELD, data.bytes(), layout.data_break);
        }
        buf.put_slice(CRLF);
    }

    /// Writes the fields that come before the data.
    pub(super) fn write_head(&self, layout: &Layout, buf: &mut impl BufMut) {
        if let Some(comment) = &self.comment {
            put_text(buf, COMMENT_FIELD, comment.as_bytes(), layout.comment_break);
        }
        if let Some(name) = &self.name {
            put_field(buf, EVENT_FIELD, name.as_bytes());
        }
        if let Some(id) = &self.id {
            put_field(buf, ID_FIELD, id.as_bytes());
        }
        if let Some(retry) = &layout.retry {
            put_field(buf, RETRY_FIELD, retry.digits());
        }
    }
}

/// What encoding needs to know before it allocates: the exact size, and
/// where the multi-line texts first break (so a one-line text, the common
/// case, is scanned once).
pub(super) struct Layout {
    pub(super) len: usize,
    comment_break: Option<usize>,
    data_break: Option<usize>,
    retry: Option<Digits>,
}

impl Layout {
    pub(super) fn of(event: &Event) -> Self {
        let single_line = |text: &str, prefix: &[u8]| prefix.len() + text.len() + CRLF.len();
        let mut len = CRLF.len();
        let mut comment_break = None;
        if let Some(comment) = &event.comment {
            comment_break = find_line_break(comment.as_bytes());
            len += multi_line_len(comment.as_bytes(), COMMENT_FIELD, comment_break);
        }
        if let Some(name) = &event.name {
            len += single_line(name, EVENT_FIELD);
        }
        if let Some(id) = &event.id {
            len += single_line(id, ID_FIELD);
        }
        let retry = event.retry.map(|retry| Digits::new(retry.as_millis()));
        if let Some(retry) = &retry {
            len += RETRY_FIELD.len() + retry.digits().len() + CRLF.len();
        }
        let mut data_break = None;
        if let Some(data) = &event.data {
            // Data copied from a `&str` is one line, found when it was copied.
            if !data.is_one_line() {
                data_break = find_line_break(data.bytes());
            }
            len += multi_line_len(data.bytes(), DATA_FIELD, data_break);
        }
        Self {
            len,
            comment_break,
            data_break,
            retry,
        }
    }
}

impl Layout {
    /// Whether the data is one line (written as one `data:` field).
    pub(super) fn data_is_one_line(&self) -> bool {
        self.data_break.is_none()
    }
}

/// The decimal digits of a number, without allocating.
struct Digits {
    buf: [u8; 39],
    start: usize,
}

impl Digits {
    fn new(mut value: u128) -> Self {
        // u128::MAX has 39 digits.
        let mut buf = [0; 39];
        let mut start = buf.len();
        loop {
            start -= 1;
            buf[start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        Self { buf, start }
    }

    fn digits(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// The encoded size of `text` written as `prefix` lines; `first_break` is
/// where it first breaks, if anywhere.
fn multi_line_len(text: &[u8], prefix: &[u8], first_break: Option<usize>) -> usize {
    let per_line = prefix.len() + CRLF.len();
    if first_break.is_none() {
        return text.len() + per_line;
    }
    let mut len = 0;
    for line in Lines::starting(text, first_break) {
        len += line.len() + per_line;
    }
    len
}

/// Writes `text` as `prefix` lines, splitting on CRLF, LF and lone CR.
fn put_text(buf: &mut impl BufMut, prefix: &[u8], text: &[u8], first_break: Option<usize>) {
    if first_break.is_none() {
        put_field(buf, prefix, text);
        return;
    }
    for line in Lines::starting(text, first_break) {
        put_field(buf, prefix, line);
    }
}

fn put_field(buf: &mut impl BufMut, prefix: &[u8], value: &[u8]) {
    buf.put_slice(prefix);
    put_pieces(buf, value);
    buf.put_slice(CRLF);
}

/// Largest piece copied at once (see [`put_pieces`]).
const PIECE: usize = 2 * 1024;

/// Copies `bytes` in pieces of at most [`PIECE`] bytes.
///
/// glibc's `memcpy` switches to `rep movsb` from 4 KiB up (2.36, AVX2), and
/// on some AMD EPYC machines that runs at 2-3 GB/s instead of the 50 GB/s of
/// its vector loop (measured on the benchmark machine, see BENCHMARKS.md).
/// Pieces keep every copy on the vector loop, at no cost elsewhere.
#[inline]
pub(super) fn put_pieces(buf: &mut impl BufMut, bytes: &[u8]) {
    if bytes.len() <= PIECE {
        buf.put_slice(bytes);
    } else {
        for piece in bytes.chunks(PIECE) {
            buf.put_slice(piece);
        }
    }
}

/// `text` as comment lines (`: line`), split as every multi-line field is:
/// a heartbeat with text of its own.
pub(crate) fn comment_lines(text: &str) -> Bytes {
    let text = text.as_bytes();
    let first_break = find_line_break(text);
    let mut buf = BytesMut::with_capacity(multi_line_len(text, COMMENT_FIELD, first_break));
    put_text(&mut buf, COMMENT_FIELD, text, first_break);
    buf.freeze()
}

pub(super) fn has_line_break(text: &str) -> bool {
    find_line_break(text.as_bytes()).is_some()
}

/// The index of the first CR or LF in `bytes` (memchr's vectorised search:
/// a byte-at-a-time scan was most of the server's CPU with 16 KiB events).
#[inline]
pub(super) fn find_line_break(bytes: &[u8]) -> Option<usize> {
    memchr::memchr2(b'\r', b'\n', bytes)
}

/// Splits text on CRLF, LF and lone CR, keeping a trailing empty line so that
/// `"x\n"` round-trips through a client (which drops one final LF).
struct Lines<'a> {
    rest: Option<&'a [u8]>,
    /// Where `rest` first breaks, when already known.
    next_break: Option<Option<usize>>,
}

impl<'a> Lines<'a> {
    /// Lines of `text`, whose first break is already known to be at `first_break`.
    fn starting(text: &'a [u8], first_break: Option<usize>) -> Self {
        Self {
            rest: Some(text),
            next_break: Some(first_break),
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        let bytes = rest;
        let found = self
            .next_break
            .take()
            .unwrap_or_else(|| find_line_break(bytes));
        match found {
            None => {
                self.rest = None;
                Some(rest)
            }
            Some(at) => {
                let crlf = bytes[at] == b'\r' && bytes.get(at + 1) == Some(&b'\n');
                self.rest = Some(&rest[at + if crlf { 2 } else { 1 }..]);
                Some(&rest[..at])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{EventError, event::EventData};

    fn wire(event: Event) -> String {
        String::from_utf8(event.encode().unwrap().to_vec()).unwrap()
    }

    #[test]
    fn data_splits_on_every_line_ending() {
        assert_eq!(
            wire(Event::new("a\r\nb\nc\rd")),
            "data: a\r\ndata: b\r\ndata: c\r\ndata: d\r\n\r\n"
        );
    }

    #[test]
    fn static_data_encodes_as_owned_data_does() {
        for text in ["", "plain", "a\r\nb\nc\rd", "x\n", &"y".repeat(5000)] {
            let text: &'static str = Box::leak(text.to_owned().into_boxed_str());
            let event = Event::from_static(text).name("n").id("1");
            assert_eq!(
                wire(event.clone()),
                wire(Event::new(text).name("n").id("1"))
            );
            // Setting data later replaces it, as for any event.
            assert_eq!(
                wire(event.data("z")),
                "event: n\r\nid: 1\r\ndata: z\r\n\r\n"
            );
        }
    }

    #[test]
    fn trailing_and_empty_lines_are_kept() {
        assert_eq!(wire(Event::new("x\n")), "data: x\r\ndata: \r\n\r\n");
        assert_eq!(wire(Event::new("")), "data: \r\n\r\n");
        assert_eq!(wire(Event::new("\r\n")), "data: \r\ndata: \r\n\r\n");
        assert_eq!(
            wire(Event::new("\r\r")),
            "data: \r\ndata: \r\ndata: \r\n\r\n"
        );
    }

    #[test]
    fn leading_space_survives_the_colon_space() {
        assert_eq!(wire(Event::new(" x")), "data:  x\r\n\r\n");
    }

    #[test]
    fn empty_id_is_written_to_reset_the_client() {
        assert_eq!(wire(Event::new("x").id("")), "id: \r\ndata: x\r\n\r\n");
    }

    #[test]
    fn no_data_means_no_data_line() {
        assert_eq!(wire(Event::default().name("n")), "event: n\r\n\r\n");
    }

    #[test]
    fn comments_split_into_comment_lines() {
        assert_eq!(
            wire(Event::new("d").comment("a\nb")),
            ": a\r\n: b\r\ndata: d\r\n\r\n"
        );
    }

    #[test]
    fn retry_is_whole_milliseconds() {
        assert_eq!(
            wire(Event::default().retry(Duration::from_micros(2_500_900))),
            "retry: 2500\r\n\r\n"
        );
    }

    #[test]
    fn bad_single_line_fields_are_errors() {
        for name in ["a\nb", "a\rb", "\r\n"] {
            assert!(matches!(
                Event::new("x").name(name).encode(),
                Err(EventError::LineBreakInName)
            ));
        }
        for id in ["a\nb", "a\r"] {
            assert!(matches!(
                Event::new("x").id(id).encode(),
                Err(EventError::LineBreakInId)
            ));
        }
        assert!(matches!(
            Event::new("x").id("a\0b").encode(),
            Err(EventError::NulInId)
        ));
    }

    #[test]
    fn capacity_bound_holds() {
        let event = Event::new("a\r\nb\rc\n")
            .name("n")
            .id("i")
            .comment("c\r\nd")
            .retry(Duration::from_secs(u64::MAX));
        let bound = event.encoded_len_bound();
        assert!(event.encode().unwrap().len() <= bound);
        let plain = Event::new("abc").name("n").id("i");
        assert_eq!(plain.encode().unwrap().len(), plain.encoded_len_bound());
    }

    /// The encoder as first written (split on every break, a field at a
    /// time), to check the fast one against.
    fn reference(event: &Event) -> Vec<u8> {
        fn split(text: &str) -> Vec<&str> {
            let mut lines = Vec::new();
            let mut rest = text;
            while let Some(at) = rest.find(['\r', '\n']) {
                lines.push(&rest[..at]);
                let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[at + skip..];
            }
            lines.push(rest);
            lines
        }
        let mut out = Vec::new();
        let mut field = |prefix: &[u8], value: &str| {
            out.extend_from_slice(prefix);
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(CRLF);
        };
        for line in event.comment.as_deref().map(split).unwrap_or_default() {
            field(COMMENT_FIELD, line);
        }
        if let Some(name) = &event.name {
            field(EVENT_FIELD, name);
        }
        if let Some(id) = &event.id {
            field(ID_FIELD, id);
        }
        if let Some(retry) = event.retry {
            field(RETRY_FIELD, &retry.as_millis().to_string());
        }
        for line in event.data_ref().map(split).unwrap_or_default() {
            field(DATA_FIELD, line);
        }
        out.extend_from_slice(CRLF);
        out
    }

    #[test]
    fn line_breaks_are_found_in_every_block_position() {
        for len in [0, 1, 31, 32, 33, 63, 64, 65, 100, 1000] {
            let plain = "a".repeat(len);
            assert_eq!(find_line_break(plain.as_bytes()), None, "{len}");
            for at in 0..len {
                for brk in [b'\r', b'\n'] {
                    let mut bytes = plain.clone().into_bytes();
                    bytes[at] = brk;
                    if at + 1 < len {
                        bytes[len - 1] = b'\n';
                    }
                    assert_eq!(find_line_break(&bytes), Some(at), "{len} {at}");
                }
            }
        }
    }

    #[test]
    fn long_multi_line_text_matches_the_reference() {
        let line = "x".repeat(40);
        let data = [line.as_str(); 30].join("\r\n") + "\r" + &line + "\n\n";
        let event = Event::new(data)
            .comment("c\rd")
            .retry(Duration::from_millis(7));
        assert_eq!(&event.encode().unwrap()[..], &reference(&event)[..]);
        assert_eq!(event.encoded_len_bound(), reference(&event).len());
    }

    proptest::proptest! {
        #[test]
        fn encoding_matches_the_reference(
            data in proptest::option::of("[a\r\n\u{e9}]{0,80}"),
            comment in proptest::option::of("[b\r\n ]{0,40}"),
            name in proptest::option::of("[a-z]{0,8}"),
            id in proptest::option::of("[0-9]{0,8}"),
            retry in proptest::option::of(0u64..u64::MAX),
            borrowed in proptest::bool::ANY,
        ) {
            let event = Event {
                name,
                data: data.map(|text| {
                    if borrowed { EventData::from(text.as_str()).0 } else { EventData::from(text).0 }
                }),
                id,
                retry: retry.map(Duration::from_millis),
                comment,
            };
            let wire = event.encode().unwrap();
            proptest::prop_assert_eq!(&wire[..], &reference(&event)[..]);
            proptest::prop_assert_eq!(wire.len(), event.encoded_len_bound());
        }
    }
}
