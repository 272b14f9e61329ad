//! Events and their wire encoding.
//!
//! The encoder follows Pedestal's `mk-data` (fields end with CRLF, an event
//! ends with a blank line) and fixes its gaps: data is split on CRLF, LF *and*
//! lone CR, and single-line fields are checked instead of corrupting the stream.

use std::{borrow::Cow, fmt, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};

/// Line terminator written after every field, as in Pedestal.
pub const CRLF: &[u8] = b"\r\n";
/// Prefix of the field naming the event type.
pub const EVENT_FIELD: &[u8] = b"event: ";
/// Prefix of each data line.
pub const DATA_FIELD: &[u8] = b"data: ";
/// Prefix of the event id field.
pub const ID_FIELD: &[u8] = b"id: ";
/// Prefix of a comment line (heartbeats are comments).
pub const COMMENT_FIELD: &[u8] = b": ";
/// Prefix of the reconnection-delay field (not in the seed; part of the SSE spec).
pub const RETRY_FIELD: &[u8] = b"retry: ";

/// The heartbeat Pedestal writes: an empty comment line.
pub(crate) const HEARTBEAT: &[u8] = b": \r\n";

/// Encodes a string as UTF-8 bytes, like Pedestal's `get-bytes`.
///
/// ```
/// assert_eq!(&tower_sse::get_bytes("hé")[..], "hé".as_bytes());
/// ```
pub fn get_bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Encodes one event from a name, data and id, like Pedestal's `mk-data`.
///
/// # Errors
///
/// [`EventError`] when the name or id cannot be written on one line (see
/// [`Event::encode`]).
///
/// ```
/// let bytes = tower_sse::mk_data(Some("count"), "1", Some("7")).unwrap();
/// assert_eq!(&bytes[..], b"event: count\r\nid: 7\r\ndata: 1\r\n\r\n");
/// assert!(tower_sse::mk_data(Some("bad\nname"), "1", None).is_err());
/// ```
pub fn mk_data(name: Option<&str>, data: &str, id: Option<&str>) -> Result<Bytes, EventError> {
    let mut event = Event::new(data);
    if let Some(name) = name {
        event = event.name(name);
    }
    if let Some(id) = id {
        event = event.id(id);
    }
    event.encode()
}

/// A Server-Sent Event: optional name, data, id, retry hint and comment.
///
/// Builders never fail; the checks run when the event is encoded (by
/// [`Event::encode`] or when it is sent), and bad input comes back as an
/// [`EventError`], never as a panic or a corrupted stream.
///
/// A plain string converts into a data-only event, which browsers dispatch as
/// `message` (Pedestal's non-map values).
///
/// ```
/// use std::time::Duration;
/// use tower_sse::Event;
///
/// let event = Event::new("line one\nline two").name("update").id("42");
/// assert_eq!(
///     &event.encode().unwrap()[..],
///     b"event: update\r\nid: 42\r\ndata: line one\r\ndata: line two\r\n\r\n"
/// );
///
/// let hint = Event::default().retry(Duration::from_millis(1500));
/// assert_eq!(&hint.encode().unwrap()[..], b"retry: 1500\r\n\r\n");
///
/// let plain: Event = "hello".into();
/// assert_eq!(&plain.encode().unwrap()[..], b"data: hello\r\n\r\n");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub(crate) name: Option<String>,
    pub(crate) data: Option<String>,
    pub(crate) id: Option<String>,
    retry: Option<Duration>,
    comment: Option<String>,
}

impl Event {
    /// An event carrying `data` (any string; line breaks become several `data:` lines).
    pub fn new(data: impl Into<String>) -> Self {
        Self::default().data(data)
    }

    /// Sets the data. An event without data is not dispatched by clients.
    pub fn data(mut self, data: impl Into<String>) -> Self {
        self.data = Some(data.into());
        self
    }

    /// Sets the event type (`event:`), which selects the client listener.
    /// It must not contain CR or LF.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the event id, which the client sends back as `Last-Event-ID`.
    ///
    /// An empty id (`id("")`) resets the client's last event id; leaving the
    /// id unset keeps the previous one. It must not contain CR, LF or NUL.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the client's reconnection delay, written in whole milliseconds.
    pub fn retry(mut self, retry: Duration) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Adds a comment, which clients ignore. Line breaks in it become several
    /// comment lines.
    pub fn comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// An event whose data is `value` serialised as JSON.
    ///
    /// # Errors
    ///
    /// [`EventError::Json`] when serde_json cannot serialise the value.
    ///
    /// ```
    /// let event = tower_sse::Event::json(&serde_json::json!({"n": 1})).unwrap();
    /// assert_eq!(&event.encode().unwrap()[..], b"data: {\"n\":1}\r\n\r\n");
    /// ```
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, EventError> {
        serde_json::to_string(value)
            .map(Self::new)
            .map_err(EventError::Json)
    }

    /// Checks the single-line fields without encoding.
    ///
    /// # Errors
    ///
    /// See [`Event::encode`].
    pub fn validate(&self) -> Result<(), EventError> {
        if let Some(name) = &self.name {
            if has_line_break(name) {
                return Err(EventError::LineBreakInName);
            }
        }
        if let Some(id) = &self.id {
            if has_line_break(id) {
                return Err(EventError::LineBreakInId);
            }
            if id.contains('\0') {
                return Err(EventError::NulInId);
            }
        }
        Ok(())
    }

    /// Encodes the event into its wire bytes, in one allocation.
    ///
    /// Fields are written in this order: comment lines, `event`, `id`,
    /// `retry`, `data` lines, then the blank line that dispatches the event.
    ///
    /// # Errors
    ///
    /// - [`EventError::LineBreakInName`]: the name contains CR or LF.
    /// - [`EventError::LineBreakInId`]: the id contains CR or LF.
    /// - [`EventError::NulInId`]: the id contains NUL, which clients ignore.
    ///
    /// ```
    /// use tower_sse::{Event, EventError};
    /// assert!(matches!(Event::new("x").id("a\rb").encode(), Err(EventError::LineBreakInId)));
    /// ```
    pub fn encode(&self) -> Result<Bytes, EventError> {
        self.validate()?;
        let mut buf = BytesMut::with_capacity(self.encoded_len_bound());
        self.write_fields(&mut buf);
        Ok(buf.freeze())
    }

    /// An upper bound of the encoded size, exact when no text has line breaks.
    fn encoded_len_bound(&self) -> usize {
        let multi_line = |text: &str, prefix: &[u8]| {
            let lines = 1 + text.bytes().filter(|b| matches!(b, b'\r' | b'\n')).count();
            text.len() + lines * (prefix.len() + CRLF.len())
        };
        let single_line = |text: &str, prefix: &[u8]| text.len() + prefix.len() + CRLF.len();
        let mut len = CRLF.len();
        if let Some(comment) = &self.comment {
            len += multi_line(comment, COMMENT_FIELD);
        }
        if let Some(name) = &self.name {
            len += single_line(name, EVENT_FIELD);
        }
        if let Some(id) = &self.id {
            len += single_line(id, ID_FIELD);
        }
        if self.retry.is_some() {
            // u128 milliseconds have at most 39 digits.
            len += RETRY_FIELD.len() + 39 + CRLF.len();
        }
        if let Some(data) = &self.data {
            len += multi_line(data, DATA_FIELD);
        }
        len
    }

    fn write_fields(&self, buf: &mut BytesMut) {
        if let Some(comment) = &self.comment {
            for line in Lines::new(comment) {
                put_field(buf, COMMENT_FIELD, line.as_bytes());
            }
        }
        if let Some(name) = &self.name {
            put_field(buf, EVENT_FIELD, name.as_bytes());
        }
        if let Some(id) = &self.id {
            put_field(buf, ID_FIELD, id.as_bytes());
        }
        if let Some(retry) = self.retry {
            put_field(buf, RETRY_FIELD, retry.as_millis().to_string().as_bytes());
        }
        if let Some(data) = &self.data {
            for line in Lines::new(data) {
                put_field(buf, DATA_FIELD, line.as_bytes());
            }
        }
        buf.put_slice(CRLF);
    }
}

fn put_field(buf: &mut BytesMut, prefix: &[u8], value: &[u8]) {
    buf.put_slice(prefix);
    buf.put_slice(value);
    buf.put_slice(CRLF);
}

fn has_line_break(text: &str) -> bool {
    text.bytes().any(|b| matches!(b, b'\r' | b'\n'))
}

impl From<String> for Event {
    fn from(data: String) -> Self {
        Self::new(data)
    }
}

impl From<&str> for Event {
    fn from(data: &str) -> Self {
        Self::new(data)
    }
}

impl From<&String> for Event {
    fn from(data: &String) -> Self {
        Self::new(data.as_str())
    }
}

impl From<Cow<'_, str>> for Event {
    fn from(data: Cow<'_, str>) -> Self {
        Self::new(data)
    }
}

/// Splits text on CRLF, LF and lone CR, keeping a trailing empty line so that
/// `"x\n"` round-trips through a client (which drops one final LF).
struct Lines<'a> {
    rest: Option<&'a str>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Self { rest: Some(text) }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        let bytes = rest.as_bytes();
        match bytes.iter().position(|b| matches!(b, b'\r' | b'\n')) {
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

/// Why an event cannot be encoded.
#[derive(Debug)]
#[non_exhaustive]
pub enum EventError {
    /// The event name contains CR or LF, which would end the field early.
    LineBreakInName,
    /// The id contains CR or LF, which would end the field early.
    LineBreakInId,
    /// The id contains NUL, which makes clients ignore it.
    NulInId,
    /// The data could not be serialised as JSON.
    #[cfg(feature = "json")]
    Json(serde_json::Error),
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LineBreakInName => f.write_str("event name contains a line break"),
            Self::LineBreakInId => f.write_str("event id contains a line break"),
            Self::NulInId => f.write_str("event id contains a NUL character"),
            #[cfg(feature = "json")]
            Self::Json(err) => write!(f, "event data is not serialisable as JSON: {err}"),
        }
    }
}

impl std::error::Error for EventError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            #[cfg(feature = "json")]
            Self::Json(err) => Some(err),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
