//! An event's data as it was handed over: borrowed for the whole program,
//! owned, shared, or (from a borrowed `&str`) already in its wire form.
//!
//! A borrowed `&str` has to be copied once; it is copied straight into the
//! frame it will be sent as (`data: ` line, blank line, and room in front
//! for the other fields), so that sending it copies nothing more.

use std::{borrow::Cow, fmt};

use bytes::{BufMut, Bytes, BytesMut};

use super::encode::{find_line_break, put_pieces};
use crate::pedestal::{CRLF, DATA_FIELD};

/// Room left in front of pre-encoded data for the fields written before it
/// (`event:`, `id:`, `retry:`, comments): `event: update\r\nid: 1234\r\n` is
/// 27 bytes. Fields that do not fit make the event encode by copying.
pub(super) const HEADROOM: usize = 64;

/// The data of an [`Event`](crate::Event), taken without copying where its
/// type allows: a `String`, `Box<str>` or [`Bytes`] is kept as it is and
/// copied once, when the event is encoded; a borrowed `&str` of one line is
/// copied once, straight into its wire form (with line breaks, it is kept
/// as a `String` and copied again when encoded). Anything that converts
/// into a `String` converts into it.
///
/// One line of 64 KiB or more handed over whole (a `String`, `Bytes`, a
/// `&'static str`) is not copied at all by
/// [`EventSender::send`](crate::EventSender::send): it is sent from its own
/// buffer, as a frame between the event's other fields and its end. That
/// buffer is then kept until the connection has written it, whole: a
/// `String`'s spare capacity, or the rest of a buffer a `Bytes` is a slice
/// of, with it (`EventSender::queued_bytes` counts the event only); and the
/// `Bytes`' owner is dropped where the body drops it, in the connection's
/// task (never under the crate's locks).
///
/// `Bytes` must hold UTF-8 (SSE is a UTF-8 stream): other bytes make the
/// event fail to encode, with [`EventError::DataNotUtf8`](crate::EventError::DataNotUtf8).
///
/// ```
/// use bytes::Bytes;
/// use tower_sse::Event;
///
/// let from_str = Event::new("{\"n\":1}");
/// let from_string = Event::new(String::from("{\"n\":1}"));
/// let from_bytes = Event::new(Bytes::from_static(b"{\"n\":1}"));
/// assert_eq!(from_str, from_string);
/// assert_eq!(from_string, from_bytes);
/// assert_eq!(&from_bytes.encode().unwrap()[..], b"data: {\"n\":1}\r\n\r\n");
/// ```
#[derive(Clone)]
pub struct EventData(pub(super) Data);

#[derive(Clone)]
pub(super) enum Data {
    Static(&'static str),
    Owned(String),
    /// UTF-8 bytes, shared with the caller.
    Shared(Bytes),
    /// Bytes that are not UTF-8: encoding fails.
    NotUtf8(Bytes),
    /// One line of text in its wire form: [`HEADROOM`] bytes, then
    /// `data: {text}\r\n\r\n`. A `Bytes` so that a data-only event encodes
    /// to a slice of it, and an event that still owns it alone writes its
    /// other fields into the headroom.
    Framed(Bytes),
}

/// One-line data at least this long (a frame's worth), handed over whole,
/// is sent uncopied as a frame of its own (`Event::into_encoded`). Below it
/// the copy into one frame costs about what two more frames do (hyper's
/// chunk headers, a vectored write's entries): over loopback, 16 KiB
/// `&'static str` events ran at 0.95x axum's `Sse` split at 8 KiB, 0.94x
/// copied; 1 MiB ones at 1.64x split.
pub(crate) const SPLIT_MIN: usize = 64 * 1024;

/// Bytes of a framed event after its text: the data line's CRLF and the blank line.
const FRAMED_TAIL: usize = 2 * CRLF.len();

impl Data {
    /// The text as bytes (UTF-8 unless `NotUtf8`).
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Self::Static(text) => text.as_bytes(),
            Self::Owned(text) => text.as_bytes(),
            Self::Shared(bytes) | Self::NotUtf8(bytes) => bytes,
            Self::Framed(framed) => {
                &framed[HEADROOM + DATA_FIELD.len()..framed.len() - FRAMED_TAIL]
            }
        }
    }

    /// Known to be one line (copied from a `&str` into its wire form).
    pub(super) fn is_one_line(&self) -> bool {
        matches!(self, Self::Framed(_))
    }

    /// Whether the data was handed over whole (so it can be sent as it is).
    pub(super) fn is_given(&self) -> bool {
        matches!(self, Self::Static(_) | Self::Owned(_) | Self::Shared(_))
    }

    /// The data as `Bytes`, without a copy; given back when it was not
    /// handed over whole, or is not UTF-8.
    pub(super) fn into_bytes(self) -> Result<Bytes, Self> {
        match self {
            Self::Static(text) => Ok(Bytes::from_static(text.as_bytes())),
            Self::Owned(text) => Ok(Bytes::from(text)),
            Self::Shared(bytes) => Ok(bytes),
            kept @ (Self::NotUtf8(_) | Self::Framed(_)) => Err(kept),
        }
    }

    /// The text, unless it is not UTF-8.
    pub(super) fn text(&self) -> Option<&str> {
        match self {
            Self::Static(text) => Some(text),
            Self::Owned(text) => Some(text),
            Self::NotUtf8(_) => None,
            // Checked when taken (Shared) or copied from a `&str` (Framed).
            Self::Shared(_) | Self::Framed(_) => std::str::from_utf8(self.bytes()).ok(),
        }
    }

    /// A `&str` of one line, copied into its wire form; several lines are
    /// kept as a `String` (they are split when encoded).
    fn framed(text: &str) -> Self {
        if find_line_break(text.as_bytes()).is_some() {
            return Self::Owned(text.to_owned());
        }
        let len = HEADROOM + DATA_FIELD.len() + text.len() + FRAMED_TAIL;
        // Exactly sized: freezing keeps the one allocation.
        let mut buf = BytesMut::with_capacity(len);
        buf.put_bytes(0, HEADROOM);
        buf.put_slice(DATA_FIELD);
        put_pieces(&mut buf, text.as_bytes());
        buf.put_slice(CRLF);
        buf.put_slice(CRLF);
        debug_assert_eq!(buf.len(), len);
        Self::Framed(buf.freeze())
    }
}

#[cfg(feature = "json")]
impl Data {
    /// `value` as compact JSON, serialised into its wire form. Compact JSON
    /// has no raw line break (serde_json escapes them in strings), so it is
    /// one `data:` line; the check stays, as a guard.
    pub(super) fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, crate::EventError> {
        let mut buf = BytesMut::with_capacity(HEADROOM + 128);
        buf.put_bytes(0, HEADROOM);
        buf.put_slice(DATA_FIELD);
        let mut writer = buf.writer();
        serde_json::to_writer(&mut writer, value).map_err(crate::EventError::Json)?;
        let mut buf = writer.into_inner();
        let json = &buf[HEADROOM + DATA_FIELD.len()..];
        if find_line_break(json).is_some() {
            let text = String::from_utf8_lossy(json).into_owned();
            return Ok(Self::Owned(text));
        }
        buf.put_slice(CRLF);
        buf.put_slice(CRLF);
        // The buffer grew by doubling: a frame (and a hub's history) would
        // keep up to twice its size. Past an eighth to spare, copy it exactly.
        if buf.capacity() - buf.len() > buf.len() / 8 {
            buf = BytesMut::from(&buf[..]);
        }
        Ok(Self::Framed(buf.freeze()))
    }
}

impl From<&str> for EventData {
    fn from(text: &str) -> Self {
        Self(Data::framed(text))
    }
}

impl From<&mut str> for EventData {
    fn from(text: &mut str) -> Self {
        Self(Data::framed(text))
    }
}

impl From<&String> for EventData {
    fn from(text: &String) -> Self {
        Self(Data::framed(text))
    }
}

impl From<String> for EventData {
    fn from(text: String) -> Self {
        Self(Data::Owned(text))
    }
}

impl From<Box<str>> for EventData {
    fn from(text: Box<str>) -> Self {
        Self(Data::Owned(text.into()))
    }
}

impl From<Cow<'_, str>> for EventData {
    fn from(text: Cow<'_, str>) -> Self {
        match text {
            Cow::Borrowed(text) => text.into(),
            Cow::Owned(text) => text.into(),
        }
    }
}

impl From<char> for EventData {
    fn from(c: char) -> Self {
        Self(Data::Owned(c.into()))
    }
}

impl From<Bytes> for EventData {
    fn from(bytes: Bytes) -> Self {
        if std::str::from_utf8(&bytes).is_ok() {
            Self(Data::Shared(bytes))
        } else {
            Self(Data::NotUtf8(bytes))
        }
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Data {}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.text() {
            Some(text) => fmt::Debug::fmt(text, f),
            None => f.debug_tuple("NotUtf8").field(&self.bytes()).finish(),
        }
    }
}

impl fmt::Debug for EventData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::{Data, HEADROOM};
    use crate::{Event, EventError};

    /// Where a framed event's allocation starts and ends.
    fn framed_span(event: &Event) -> (usize, usize) {
        match &event.data {
            Some(Data::Framed(framed)) => {
                let start = framed.as_ptr() as usize;
                (start, start + framed.len())
            }
            _ => panic!("not framed"),
        }
    }

    #[test]
    fn borrowed_text_is_sent_from_the_buffer_it_was_copied_into() {
        let text = "x".repeat(16 * 1024);
        // Data only: the frame is a slice of it.
        let event = Event::new(text.as_str());
        let (start, end) = framed_span(&event);
        let frame = event.into_frame().unwrap();
        assert_eq!(frame.as_ptr() as usize, start + HEADROOM);
        assert_eq!(frame.as_ptr() as usize + frame.len(), end);
        // With a name and an id: written into the room in front of it.
        let event = Event::new(text.as_str()).name("update").id("12345");
        let (start, end) = framed_span(&event);
        let frame = event.into_frame().unwrap();
        let head = b"event: update\r\nid: 12345\r\n";
        assert_eq!(frame.as_ptr() as usize, start + HEADROOM - head.len());
        assert_eq!(frame.as_ptr() as usize + frame.len(), end);
        assert_eq!(&frame[..head.len()], head);
        assert_eq!(&frame[head.len()..head.len() + 6], b"data: ");
        assert_eq!(frame.len(), head.len() + 6 + text.len() + 4);
    }

    #[test]
    fn every_path_encodes_the_same_bytes() {
        let long_name = "n".repeat(HEADROOM);
        for text in ["", "one line", "two\nlines", "cr\rlf\r\n", "\u{e9}t\u{e9}"] {
            let kinds = [
                Event::new(text),
                Event::new(text.to_owned()),
                Event::new(Bytes::copy_from_slice(text.as_bytes())),
                Event::from_static(Box::leak(text.to_owned().into_boxed_str())),
            ];
            for event in kinds {
                for dressed in [
                    event.clone(),
                    event.clone().name("n").id("1"),
                    event
                        .clone()
                        .comment("c\nd")
                        .retry(Duration::from_millis(5)),
                    // Does not fit in front of the data: copied.
                    event.clone().name(long_name.as_str()),
                ] {
                    let expected = dressed.encode().unwrap();
                    // A clone shares the buffer: it is copied, not written to.
                    let clone = dressed.clone();
                    assert_eq!(dressed.into_frame().unwrap(), expected, "{text:?}");
                    assert_eq!(clone.clone().into_frame().unwrap(), expected);
                    assert_eq!(clone.encode().unwrap(), expected);
                }
            }
        }
    }

    #[test]
    fn data_compares_as_text_whatever_its_type() {
        let text = "same";
        assert_eq!(Event::new(text), Event::new(text.to_owned()));
        assert_eq!(Event::new(text), Event::new(Bytes::from_static(b"same")));
        assert_eq!(Event::new(text), Event::from_static("same"));
        assert_ne!(Event::new(text), Event::new("other"));
        assert_eq!(Event::new(text).data_ref(), Some("same"));
        assert_eq!(
            format!("{:?}", Event::new(text)),
            format!("{:?}", Event::new(text.to_owned()))
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_an_error() {
        let event = Event::new(Bytes::from_static(b"ok \xff"));
        assert_eq!(event.data_ref(), None);
        assert!(matches!(event.encode(), Err(EventError::DataNotUtf8)));
        assert!(matches!(
            event.clone().into_frame(),
            Err(EventError::DataNotUtf8)
        ));
        assert!(format!("{event:?}").contains("NotUtf8"));
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_is_serialised_into_its_wire_form() {
        let value = serde_json::json!({"text": "two\nlines\r", "n": [1, 2]});
        let event = Event::json(&value).unwrap().name("update");
        let expected = Event::new(serde_json::to_string(&value).unwrap()).name("update");
        assert_eq!(event, expected);
        let (start, end) = framed_span(&event);
        let frame = event.into_frame().unwrap();
        assert_eq!(frame, expected.encode().unwrap());
        assert!(frame.as_ptr() as usize > start);
        assert_eq!(frame.as_ptr() as usize + frame.len(), end);
    }

    // Review (defect): `Data::json` serialises into a `BytesMut` of
    // `HEADROOM + 128` bytes that grows by doubling, and freezes it with its
    // spare capacity; the frame `into_frame` hands the queue (and a hub's
    // ring) is a slice of that allocation, so a queued JSON event can hold
    // up to twice its size (`queued_bytes` and `SseStats` count only its
    // length). `framed` (from a `&str`) is exactly sized.
    #[cfg(feature = "json")]
    #[test]
    fn json_frames_hold_no_more_than_they_send() {
        let value = "x".repeat(300 * 1024);
        let event = Event::json(&value).unwrap();
        let Some(Data::Framed(framed)) = event.data else {
            panic!("not framed");
        };
        let len = framed.len();
        let capacity = framed.try_into_mut().map_err(|_| ()).unwrap().capacity();
        assert!(
            capacity <= len + len / 8,
            "{len} bytes framed in an allocation of {capacity}"
        );
    }

    /// What `into_encoded` sends, joined: the wire bytes of the event.
    fn wire(encoded: crate::frame::Encoded) -> Bytes {
        encoded.into_whole()
    }

    #[test]
    fn large_data_handed_over_is_sent_from_its_own_buffer() {
        let text = "y".repeat(super::SPLIT_MIN);
        let at = text.as_ptr() as usize;
        let bytes = Bytes::from("z".repeat(super::SPLIT_MIN + 3));
        let bytes_at = bytes.as_ptr() as usize;
        let leaked: &'static str = Box::leak("s".repeat(super::SPLIT_MIN + 1).into_boxed_str());
        let cases = [
            (Event::new(text).name("big").id("7"), at),
            (Event::new(bytes), bytes_at),
            (
                Event::from_static(leaked).name("static"),
                leaked.as_ptr() as usize,
            ),
        ];
        for (event, expected_at) in cases {
            let expected = event.encode().unwrap();
            let encoded = event.into_encoded().unwrap();
            if let crate::frame::Encoded::Split(split) = &encoded {
                assert_eq!(split.data.as_ptr() as usize, expected_at, "copied");
                assert!(split.head.ends_with(b"data: "));
            } else {
                panic!("{} bytes not split", expected.len());
            }
            assert_eq!(wire(encoded), expected);
        }
    }

    #[test]
    fn what_is_not_split_is_encoded_whole_and_alike() {
        let two_lines = format!("{}\n{}", "a".repeat(40_000), "b".repeat(40_000));
        let cases = [
            Event::new(two_lines),
            Event::new("c".repeat(super::SPLIT_MIN - 1)),
            // A `&str` is copied into its wire form when the event is built.
            Event::new("d".repeat(super::SPLIT_MIN).as_str()),
            Event::new("e".repeat(super::SPLIT_MIN))
                .comment("note\nmore")
                .retry(Duration::from_secs(3)),
        ];
        for (i, event) in cases.into_iter().enumerate() {
            let expected = event.encode().unwrap();
            let encoded = event.into_encoded().unwrap();
            let split = matches!(encoded, crate::frame::Encoded::Split(_));
            assert_eq!(split, i == 3, "case {i}");
            assert_eq!(wire(encoded), expected, "case {i}");
        }
        // An invalid event is refused as before.
        let invalid = Event::new("f".repeat(super::SPLIT_MIN)).name("a\nb");
        assert!(invalid.into_encoded().is_err());
    }
}
