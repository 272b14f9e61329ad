//! Events: the [`Event`] builder, its checks, and [`EventError`].
//!
//! The encoder follows Pedestal's `mk-data` (fields end with CRLF, an event
//! ends with a blank line) and fixes its gaps: data is split on CRLF, LF *and*
//! lone CR, and single-line fields are checked instead of corrupting the stream.
//! The wire format itself (sizing, line splitting, copying) is in `encode.rs`.

use std::{borrow::Cow, fmt, time::Duration};

use bytes::{Bytes, BytesMut};

use crate::{
    frame::{EVENT_END, Encoded, Split},
    pedestal::{self, DATA_FIELD},
};

mod data;
mod encode;

use data::Data;
pub use data::EventData;
pub(crate) use encode::comment_lines;
use encode::{Layout, has_line_break};

/// The heartbeat Pedestal writes: an empty comment line.
pub(crate) const HEARTBEAT: &[u8] = b": \r\n";

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
#[must_use = "an Event does nothing until it is sent or published"]
pub struct Event {
    pub(crate) name: Option<String>,
    /// As it was handed over (see `data.rs`): copied once, at most.
    data: Option<Data>,
    pub(crate) id: Option<String>,
    retry: Option<Duration>,
    comment: Option<String>,
}

impl Event {
    /// An event carrying `data` (any string, or UTF-8 [`Bytes`]; line breaks
    /// become several `data:` lines). See [`EventData`] for when the data
    /// is copied.
    pub fn new(data: impl Into<EventData>) -> Self {
        Self::default().data(data)
    }

    /// An event carrying `data` that lives for the whole program, not copied
    /// until it is encoded (like `Bytes::from_static`).
    ///
    /// ```
    /// use tower_sse::Event;
    ///
    /// static BANNER: &str = "welcome";
    /// let event = Event::from_static(BANNER).name("hello");
    /// assert_eq!(event, Event::new("welcome").name("hello"));
    /// assert_eq!(&event.encode().unwrap()[..], b"event: hello\r\ndata: welcome\r\n\r\n");
    /// ```
    pub fn from_static(data: &'static str) -> Self {
        Self {
            data: Some(Data::Static(data)),
            ..Self::default()
        }
    }

    /// Sets the data. An event without data is not dispatched by clients.
    pub fn data(mut self, data: impl Into<EventData>) -> Self {
        self.data = Some(data.into().0);
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

    /// The event type set with [`Event::name`], if any.
    ///
    /// ```
    /// let event = tower_sse::Event::new("1.25").name("price").id("7");
    /// assert_eq!(event.name_ref(), Some("price"));
    /// assert_eq!(event.id_ref(), Some("7"));
    /// assert_eq!(event.data_ref(), Some("1.25"));
    /// ```
    pub fn name_ref(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The id set with [`Event::id`], if any.
    pub fn id_ref(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The data, if any, as it was given (before line breaks are split);
    /// `None` also for [`Bytes`] that are not UTF-8.
    pub fn data_ref(&self) -> Option<&str> {
        self.data.as_ref().and_then(Data::text)
    }

    /// An event whose data is `value` serialised as JSON, written straight
    /// into its wire form (compact JSON is one line: no copy at sending).
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
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, EventError> {
        Data::json(value).map(|data| Self {
            data: Some(data),
            ..Self::default()
        })
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
        if let Some(Data::NotUtf8(_)) = &self.data {
            return Err(EventError::DataNotUtf8);
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
    /// - [`EventError::DataNotUtf8`]: the data are [`Bytes`] that are not UTF-8.
    ///
    /// ```
    /// use tower_sse::{Event, EventError};
    /// assert!(matches!(Event::new("x").id("a\rb").encode(), Err(EventError::LineBreakInId)));
    /// ```
    pub fn encode(&self) -> Result<Bytes, EventError> {
        self.validate()?;
        if let (Some(Data::Framed(framed)), true) = (&self.data, self.is_data_only()) {
            return Ok(framed.slice(data::HEADROOM..));
        }
        self.copy_encode()
    }

    /// Encodes an event that is given away (to be sent): like
    /// [`Event::encode`], but data copied from a `&str` is not copied again,
    /// the other fields are written in front of it.
    pub(crate) fn into_frame(mut self) -> Result<Bytes, EventError> {
        self.take_frame()
    }

    /// [`Event::into_frame`] for a caller that holds a lock: what is left of
    /// the event (data the caller handed over, which may run its own code
    /// when dropped, as `Bytes::from_owner` does) stays in it, to be dropped
    /// after the lock.
    pub(crate) fn take_frame(&mut self) -> Result<Bytes, EventError> {
        self.validate()?;
        let Some(Data::Framed(framed)) = self.data.take_if(|data| data.is_one_line()) else {
            return self.copy_encode();
        };
        // The fields but the data: what goes in front of it.
        let layout = Layout::of(self);
        let head = layout.len - pedestal::CRLF.len();
        if head == 0 {
            return Ok(framed.slice(data::HEADROOM..));
        }
        match framed.try_into_mut() {
            Ok(mut buf) if head <= data::HEADROOM => {
                let start = data::HEADROOM - head;
                let mut slot = &mut buf[start..data::HEADROOM];
                self.write_head(&layout, &mut slot);
                debug_assert!(slot.is_empty());
                bytes::Buf::advance(&mut buf, start);
                Ok(buf.freeze())
            }
            // Shared with a clone of the event, or too many fields: copy.
            Ok(buf) => {
                self.data = Some(Data::Framed(buf.freeze()));
                self.copy_encode()
            }
            Err(framed) => {
                self.data = Some(Data::Framed(framed));
                self.copy_encode()
            }
        }
    }

    /// Whether the event has data and nothing else.
    fn is_data_only(&self) -> bool {
        self.name.is_none() && self.id.is_none() && self.retry.is_none() && self.comment.is_none()
    }

    /// Encodes an event that is given away (to be sent): as
    /// [`Event::into_frame`], except that one-line data of at least
    /// [`SPLIT_MIN`](data::SPLIT_MIN) bytes handed over whole (a `String`,
    /// `Bytes`, a `&'static str`) is not copied: it goes out as a frame of its
    /// own, after one holding the other fields.
    pub(crate) fn into_encoded(mut self) -> Result<Encoded, EventError> {
        let whole = match &self.data {
            Some(data) => !data.is_given() || data.bytes().len() < data::SPLIT_MIN,
            None => true,
        };
        if whole {
            return self.take_frame().map(Encoded::Whole);
        }
        self.validate()?;
        let layout = Layout::of(&self);
        if !layout.data_is_one_line() {
            return Ok(Encoded::Whole(self.encode_with(&layout)));
        }
        let data = match self.data.take().map(Data::into_bytes) {
            Some(Ok(data)) => data,
            // Not handed over whole (ruled out above): encoded as usual.
            kept => {
                self.data = kept.and_then(Result::err);
                return Ok(Encoded::Whole(self.encode_with(&layout)));
            }
        };
        let head_len = layout.len - data.len() - EVENT_END.len();
        let mut head = BytesMut::with_capacity(head_len);
        self.write_head(&layout, &mut head);
        head.extend_from_slice(DATA_FIELD);
        debug_assert_eq!(head.len(), head_len);
        Ok(Encoded::Split(Box::new(Split {
            head: head.freeze(),
            data,
        })))
    }

    /// Encodes into a new buffer (checked already).
    fn copy_encode(&self) -> Result<Bytes, EventError> {
        Ok(self.encode_with(&Layout::of(self)))
    }

    /// Encodes into a new buffer, laid out already.
    fn encode_with(&self, layout: &Layout) -> Bytes {
        // Exactly sized, so that freezing keeps the single allocation.
        let mut buf = BytesMut::with_capacity(layout.len);
        self.write_fields(layout, &mut buf);
        debug_assert_eq!(buf.len(), layout.len);
        buf.freeze()
    }
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

impl From<Bytes> for Event {
    fn from(data: Bytes) -> Self {
        Self::new(data)
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
    /// The data are bytes that are not UTF-8 (an event stream is UTF-8).
    DataNotUtf8,
    /// The data could not be serialised as JSON.
    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    Json(serde_json::Error),
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LineBreakInName => f.write_str("event name contains a line break"),
            Self::LineBreakInId => f.write_str("event id contains a line break"),
            Self::NulInId => f.write_str("event id contains a NUL character"),
            Self::DataNotUtf8 => f.write_str("event data is not UTF-8"),
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
