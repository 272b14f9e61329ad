//! An event-stream parser that follows the WHATWG rules ("parsing an event
//! stream", "interpreting an event stream", "dispatching the event"), as a
//! browser's `EventSource` reads a response.

use std::{mem, time::Duration};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// An event as an `EventSource` dispatches it: its type, data and the last
/// event id at the time it was dispatched (a `MessageEvent`'s `type`, `data`
/// and `lastEventId`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceivedEvent {
    /// The event type: the `event` field, or `message` when there is none.
    pub event: String,
    /// The data lines joined with LF, without the last line's LF.
    pub data: String,
    /// The last event id: set by an `id` field and kept by events without one.
    pub id: String,
}

/// What a reader of an event stream sees: a dispatched event or a comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// An event, dispatched at its blank line.
    Event(ReceivedEvent),
    /// A comment line (a heartbeat is one): the text after the `:`, with one
    /// leading space removed. Browsers ignore comments; tests look at them.
    Comment(String),
}

/// A WHATWG event-stream parser: feed it the body's bytes in any chunks.
///
/// Lines end with CRLF, LF or a lone CR (a CR at the end of one chunk and an
/// LF at the start of the next are one line end); one BOM at the very start
/// is skipped; invalid UTF-8 becomes U+FFFD; an `id` with NUL is ignored; a
/// `retry` that is not all ASCII digits is ignored; an event with no `data`
/// line dispatches nothing, and an event cut off by the end of the stream is
/// never dispatched.
///
/// ```
/// use tower_sse::testing::{Item, Parser};
///
/// let mut parser = Parser::new();
/// let mut items = parser.feed(b": \r\nevent: tick\r\nid: 7\r\ndata: a\r");
/// items.extend(parser.feed(b"\ndata: b\r\n\r\n"));
/// assert_eq!(items[0], Item::Comment(String::new()));
/// let Item::Event(event) = &items[1] else { panic!() };
/// assert_eq!((event.event.as_str(), event.data.as_str(), event.id.as_str()), ("tick", "a\nb", "7"));
/// ```
#[derive(Debug, Default)]
pub struct Parser {
    /// The bytes of the line being read (no line end yet).
    line: Vec<u8>,
    /// The last byte seen was a CR: an LF right after it ends nothing.
    after_cr: bool,
    /// Whether the first bytes (a possible BOM) were looked at.
    started: bool,
    data: String,
    event: String,
    /// The last event id buffer, and the id given to dispatched events.
    id_buffer: String,
    last_event_id: String,
    retry: Option<Duration>,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the next bytes of the stream; returns what they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Item> {
        let mut items = Vec::new();
        if self.started {
            self.scan(bytes, &mut items);
            return items;
        }
        // A BOM counts only whole, at the very start: wait for its 3 bytes.
        let mut head = mem::take(&mut self.line);
        head.extend_from_slice(bytes);
        if head.len() < BOM.len() && BOM.starts_with(&head) {
            self.line = head;
            return items;
        }
        self.started = true;
        let skip = if head.starts_with(BOM) { BOM.len() } else { 0 };
        self.scan(&head[skip..], &mut items);
        items
    }

    fn scan(&mut self, mut bytes: &[u8], items: &mut Vec<Item>) {
        while !bytes.is_empty() {
            if self.after_cr && bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
            self.after_cr = false;
            self.scan_once(&mut bytes, items);
        }
    }

    /// Takes bytes up to and including the next line end, if any.
    fn scan_once(&mut self, bytes: &mut &[u8], items: &mut Vec<Item>) {
        match bytes.iter().position(|&b| b == b'\r' || b == b'\n') {
            Some(end) => {
                self.line.extend_from_slice(&bytes[..end]);
                self.after_cr = bytes[end] == b'\r';
                *bytes = &bytes[end + 1..];
                let line = mem::take(&mut self.line);
                self.process(&String::from_utf8_lossy(&line), items);
            }
            None => {
                self.line.extend_from_slice(bytes);
                *bytes = &[];
            }
        }
    }

    /// The reconnection time the stream set with `retry`, if it did.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    /// The last event id an `EventSource` would send back on reconnecting
    /// (empty: none).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    fn process(&mut self, line: &str, items: &mut Vec<Item>) {
        if line.is_empty() {
            self.dispatch(items);
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            let comment = comment.strip_prefix(' ').unwrap_or(comment);
            items.push(Item::Comment(comment.to_owned()));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.id_buffer = value.to_owned(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    self.retry = Some(Duration::from_millis(ms));
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, items: &mut Vec<Item>) {
        self.last_event_id.clone_from(&self.id_buffer);
        let event = mem::take(&mut self.event);
        if self.data.is_empty() {
            return;
        }
        let mut data = mem::take(&mut self.data);
        data.pop(); // the LF after the last data line
        items.push(Item::Event(ReceivedEvent {
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
            id: self.last_event_id.clone(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<Item> {
        let mut parser = Parser::new();
        chunks.iter().flat_map(|chunk| parser.feed(chunk)).collect()
    }

    fn event(event: &str, data: &str, id: &str) -> Item {
        Item::Event(ReceivedEvent {
            event: event.into(),
            data: data.into(),
            id: id.into(),
        })
    }

    #[test]
    fn every_line_end_ends_a_line_and_crlf_counts_once() {
        let expected = vec![event("message", "a\nb\nc", "")];
        assert_eq!(events(&[b"data: a\r\ndata: b\ndata: c\r\r"]), expected);
        // A CRLF split across chunks is one line end.
        assert_eq!(
            events(&[b"data: a\r", b"\ndata: b\n", b"data: c\r", b"\r"]),
            expected
        );
    }

    #[test]
    fn ids_persist_reset_and_ignore_nul() {
        let items = events(&[b"id: 1\ndata: a\n\ndata: b\n\nid: x\0y\ndata: c\n\nid\ndata: d\n\n"]);
        assert_eq!(
            items,
            [
                event("message", "a", "1"),
                event("message", "b", "1"),
                event("message", "c", "1"),
                event("message", "d", ""),
            ]
        );
    }

    #[test]
    fn data_spaces_and_empty_lines_round_trip() {
        let items = events(&[b"data:  two\ndata\ndata:\n\ndata: x\ndata: \n\n"]);
        assert_eq!(
            items,
            [
                event("message", " two\n\n", ""),
                event("message", "x\n", "")
            ]
        );
    }

    #[test]
    fn no_data_dispatches_nothing_and_a_cut_event_is_dropped() {
        assert_eq!(events(&[b"event: x\nid: 3\n\ndata: cut"]), []);
        let mut parser = Parser::new();
        parser.feed(b"id: 3\n\n");
        assert_eq!(parser.last_event_id(), "3");
    }

    #[test]
    fn comments_retry_and_names() {
        let items =
            events(&[b": \n:ping\nretry: 1x\nretry: 250\nevent: tick\nEvent: no\ndata: 1\n\n"]);
        assert_eq!(
            items,
            [
                Item::Comment(String::new()),
                Item::Comment("ping".into()),
                event("tick", "1", ""),
            ]
        );
        let mut parser = Parser::new();
        parser.feed(b"retry: 1x\nretry: 250\n");
        assert_eq!(parser.retry(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn one_bom_at_the_start_only() {
        assert_eq!(
            events(&[b"\xEF", b"\xBB", b"\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n"]),
            [event("message", "a", "")]
        );
    }
}
