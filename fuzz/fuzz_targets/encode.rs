//! The encoder against the independent `eventsource-stream` parser: any
//! (name, data, id, comment) is refused with an `EventError` or arrives
//! exactly, and nothing leaks into the event after it.
#![no_main]

use eventsource_stream::Eventsource;
use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use tower_sse::{Event, EventError};

fuzz_target!(|input: (Option<String>, String, Option<String>, Option<String>, u8)| {
    let (name, data, id, comment, cut) = input;
    let mut event = Event::new(data.clone());
    if let Some(name) = &name {
        event = event.name(name.clone());
    }
    if let Some(id) = &id {
        event = event.id(id.clone());
    }
    if let Some(comment) = &comment {
        event = event.comment(comment.clone());
    }
    let wire = match event.encode() {
        Ok(wire) => wire,
        Err(EventError::LineBreakInName) => {
            assert!(name.unwrap().contains(['\r', '\n']));
            return;
        }
        Err(EventError::LineBreakInId) => {
            assert!(id.unwrap().contains(['\r', '\n']));
            return;
        }
        Err(EventError::NulInId) => {
            assert!(id.unwrap().contains('\0'));
            return;
        }
        Err(other) => panic!("unexpected error: {other}"),
    };
    assert!(name.as_deref().is_none_or(|n| !n.contains(['\r', '\n'])));
    assert!(id.as_deref().is_none_or(|i| !i.contains(['\r', '\n', '\0'])));

    let mut stream = wire.to_vec();
    stream.extend_from_slice(b"data: sentinel\r\n\r\n");
    let cut = usize::from(cut) % (stream.len() + 1);
    let chunks = vec![
        Ok::<_, std::convert::Infallible>(stream[..cut].to_vec()),
        Ok(stream[cut..].to_vec()),
    ];
    let events: Vec<_> = futures::executor::block_on(
        futures::stream::iter(chunks)
            .eventsource()
            .map(|e| e.expect("parser rejected the encoder's bytes"))
            .collect(),
    );
    assert_eq!(events.len(), 2, "{stream:?}");
    assert_eq!(events[0].data, data.replace("\r\n", "\n").replace('\r', "\n"));
    let expected_type = match name.as_deref() {
        None | Some("") => "message",
        Some(name) => name,
    };
    assert_eq!(events[0].event, expected_type);
    assert_eq!(events[0].id, id.unwrap_or_default());
    assert_eq!(events[1].data, "sentinel");
});
