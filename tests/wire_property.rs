//! Property: any (name, data, id) either is refused with an `EventError` or
//! arrives exactly (CR and CRLF in data as LF) through the independent
//! `eventsource-stream` parser, however the bytes are split into chunks.

mod common;

use std::time::Duration;

use axum::{Router, routing::get};
use common::*;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use proptest::prelude::*;
use tower_sse::{Event, EventError, EventSender, SseLayer, StreamContext};

/// Text biased towards the characters that matter on the wire.
fn tricky_text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z \r\n\0:é\u{feff}]{0,12}", any::<String>(),]
}

fn expected_data(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

fn parse(wire: &[u8], cuts: &[usize]) -> Vec<eventsource_stream::Event> {
    let mut chunks = Vec::new();
    let mut start = 0;
    for &cut in cuts {
        let cut = cut % (wire.len() + 1);
        if cut > start {
            chunks.push(Ok::<_, std::convert::Infallible>(wire[start..cut].to_vec()));
            start = cut;
        }
    }
    chunks.push(Ok(wire[start..].to_vec()));
    futures::executor::block_on(
        futures::stream::iter(chunks)
            .eventsource()
            .map(|event| event.expect("the parser rejected our bytes"))
            .collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_event_is_refused_or_arrives_exactly(
        name in proptest::option::of(tricky_text()),
        data in tricky_text(),
        id in proptest::option::of(tricky_text()),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut event = Event::new(data.clone());
        if let Some(name) = &name { event = event.name(name.clone()); }
        if let Some(id) = &id { event = event.id(id.clone()); }
        match event.encode() {
            Err(EventError::LineBreakInName) => {
                prop_assert!(name.unwrap().contains(['\r', '\n']));
            }
            Err(EventError::LineBreakInId) => {
                prop_assert!(id.unwrap().contains(['\r', '\n']));
            }
            Err(EventError::NulInId) => {
                prop_assert!(id.unwrap().contains('\0'));
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
            Ok(wire) => {
                prop_assert!(name.as_deref().is_none_or(|n| !n.contains(['\r', '\n'])));
                // A following event proves nothing leaked out of the first.
                let mut stream = wire.to_vec();
                stream.extend_from_slice(b"data: sentinel\r\n\r\n");
                let events = parse(&stream, &cuts);
                prop_assert_eq!(events.len(), 2);
                let got = &events[0];
                prop_assert_eq!(&got.data, &expected_data(&data));
                let expected_type = match name.as_deref() {
                    None | Some("") => "message",
                    Some(name) => name,
                };
                prop_assert_eq!(got.event.as_str(), expected_type);
                prop_assert_eq!(got.id.as_str(), id.as_deref().unwrap_or(""));
                prop_assert_eq!(events[1].data.as_str(), "sentinel");
            }
        }
    }
}

/// The spec's edge cases (`shared/SPEC-NOTES.md`), over real TCP.
#[tokio::test]
async fn spec_edge_cases_arrive_exactly_over_tcp() {
    let cases: Vec<String> = [
        "",
        "x\n",
        "\n",
        "\r\n",
        "\r",
        "\n\n",
        " leading space",
        "trailing space ",
        "a\rb",
        "a\r\nb",
        "a\nb",
        "x\r",
        "ü€😀",
        "\u{feff}bom",
        "nul\0inside",
        ": not a comment",
        "data: not a field",
        "id: 5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sent = cases.clone();
    let ready = move |events: EventSender, _ctx: StreamContext| {
        let sent = sent.clone();
        async move {
            for (i, data) in sent.into_iter().enumerate() {
                events
                    .send(Event::new(data).name("case").id(i.to_string()))
                    .await
                    .unwrap();
            }
            // No id keeps the last one; an empty id resets it.
            events.send(Event::new("kept")).await.unwrap();
            events.send(Event::new("reset").id("")).await.unwrap();
            events
                .send(Event::new("r").retry(Duration::from_millis(1234)))
                .await
                .unwrap();
            // No data: dispatches nothing.
            events
                .send(Event::default().name("silent").comment("just a comment"))
                .await
                .unwrap();
        }
    };
    let app = Router::new().route(
        "/cases",
        get(|| async {}).layer(common::in_mode(SseLayer::new(ready))),
    );
    let addr = serve(app).await;
    let events = all_events(fetch(addr, "/cases").await).await;
    assert_eq!(events.len(), cases.len() + 3);
    for (i, (case, got)) in cases.iter().zip(&events).enumerate() {
        assert_eq!(got.data, expected_data(case), "case {i}");
        assert_eq!(got.event, "case");
        assert_eq!(got.id, i.to_string());
    }
    let tail = &events[cases.len()..];
    let last_case_id = (cases.len() - 1).to_string();
    assert_eq!(
        (tail[0].data.as_str(), tail[0].id.as_str()),
        ("kept", last_case_id.as_str())
    );
    assert_eq!((tail[1].data.as_str(), tail[1].id.as_str()), ("reset", ""));
    assert_eq!(tail[2].retry, Some(Duration::from_millis(1234)));
}
