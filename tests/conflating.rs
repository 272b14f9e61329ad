//! A conflating buffer over loopback TCP: a client that stops reading while
//! a price feed runs gets, when it reads again, the latest price of every
//! symbol (not the backlog), verified with the independent parser.

mod common;

use std::{collections::BTreeMap, sync::Arc};

use common::*;
use tokio::sync::Notify;
use tower_sse::{Buffer, Event, EventSender, SseLayer, StreamContext};

const SYMBOLS: [&str; 4] = ["ACME", "INIT", "GLOBEX", "HOOLI"];

/// Large enough that the socket's buffers fill within a few hundred events.
const PADDING: usize = 32 * 1024;

/// Rounds at most before the feed must have seen its buffer conflate.
const MAX_ROUNDS: u64 = 2_000;

fn price(symbol: &str, round: u64) -> Event {
    Event::new(format!("{round} {}", "~".repeat(PADDING))).name(symbol)
}

/// The round an event carries.
fn round_of(event: &eventsource_stream::Event) -> u64 {
    let first = event.data.split(' ').next().unwrap_or_default();
    first.parse().expect("a round number")
}

#[tokio::test]
async fn a_slow_client_gets_the_latest_price_of_every_symbol() {
    // What the feed did, for the client to check: rounds sent and news
    // items (unnamed: never conflated), told once the feed is done.
    let done = Arc::new(Notify::new());
    let sent = Arc::new(std::sync::Mutex::new((0u64, 0u64, 0u64)));
    let (feed_done, feed_sent) = (done.clone(), sent.clone());
    let ready = move |events: EventSender, _ctx: StreamContext| {
        let (done, sent) = (feed_done.clone(), feed_sent.clone());
        async move {
            let mut rounds = 0;
            let mut news = 0;
            // Until the client's socket is full and the buffer conflates,
            // then a few rounds more, bounded.
            while rounds < MAX_ROUNDS && (events.dropped() == 0 || rounds % 50 != 49) {
                for symbol in SYMBOLS {
                    events.send(price(symbol, rounds)).await.unwrap();
                }
                if rounds % 10 == 0 {
                    events.send(format!("news {news}")).await.unwrap();
                    news += 1;
                }
                rounds += 1;
            }
            *sent.lock().unwrap() = (rounds, news, events.dropped());
            events.close();
            done.notify_one();
        }
    };
    let layer = SseLayer::new(ready).buffer(Buffer::conflating(8, |event: &Event| {
        event.name_ref().map(str::to_owned)
    }));
    let stats = layer.stats();
    let addr = serve(route(layer)).await;
    let response = fetch(addr, "/events").await;
    // The slow client: reads nothing until the feed is done.
    tokio::time::timeout(PATIENCE, done.notified())
        .await
        .expect("the feed did not finish");
    let (rounds, news, dropped) = *sent.lock().unwrap();
    assert!(rounds < MAX_ROUNDS, "the buffer never conflated");
    let received = all_events(response).await;
    println!(
        "conflating: {rounds} rounds of {} prices and {news} news items sent, {} events \
         received, {dropped} prices replaced",
        SYMBOLS.len(),
        received.len()
    );

    // The latest price of every symbol arrived, and no price went back in time.
    let mut latest: BTreeMap<&str, u64> = BTreeMap::new();
    for event in received.iter().filter(|e| e.event != "message") {
        let round = round_of(event);
        let symbol = SYMBOLS
            .into_iter()
            .find(|s| *s == event.event)
            .expect("a known symbol");
        if let Some(&before) = latest.get(symbol) {
            assert!(round > before, "{symbol}: {round} after {before}");
        }
        latest.insert(symbol, round);
    }
    for symbol in SYMBOLS {
        assert_eq!(latest.get(symbol), Some(&(rounds - 1)), "{symbol}");
    }
    // Every news item arrived, in order.
    let items: Vec<String> = received
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| e.data.clone())
        .collect();
    let expected: Vec<String> = (0..news).map(|n| format!("news {n}")).collect();
    assert_eq!(items, expected);
    // Each replaced price was counted as dropped, by the sender and the stats.
    let prices = received.len() as u64 - news;
    assert_eq!(dropped, rounds * SYMBOLS.len() as u64 - prices);
    eventually("the stream's end", || stats.streams_closed() == 1).await;
    assert_eq!(stats.events_dropped(), dropped);
    assert_eq!(stats.events_sent(), received.len() as u64);
}

/// The order of first appearance over the wire: with the client's socket
/// full, symbols queued in the order A, B, C and then updated twenty times
/// each in the order C, B, A come out as A, B, C with their latest prices.
#[tokio::test]
async fn conflated_events_keep_the_place_of_the_first() {
    let done = Arc::new(Notify::new());
    let feed_done = done.clone();
    let ready = move |events: EventSender, _ctx: StreamContext| {
        let done = feed_done.clone();
        async move {
            // Unnamed filler until the body stops taking it (the socket is
            // full): the queue holds some for a few checks in a row.
            let mut still = 0;
            for _ in 0..10_000 {
                events.send(Event::new("~".repeat(PADDING))).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                still = if events.queued_events() >= 2 {
                    still + 1
                } else {
                    0
                };
                if still == 5 {
                    break;
                }
            }
            assert_eq!(still, 5, "the client's socket never filled");
            for symbol in ["A", "B", "C"] {
                events.try_send(price(symbol, 0)).unwrap();
            }
            for round in 1..=20 {
                for symbol in ["C", "B", "A"] {
                    events.try_send(price(symbol, round)).unwrap();
                }
            }
            events.close();
            done.notify_one();
        }
    };
    let layer = SseLayer::new(ready).buffer(Buffer::conflating(64, |event: &Event| {
        event.name_ref().map(str::to_owned)
    }));
    let addr = serve(route(layer)).await;
    let response = fetch(addr, "/events").await;
    tokio::time::timeout(PATIENCE, done.notified())
        .await
        .expect("the feed did not finish");
    let named: Vec<(String, u64)> = all_events(response)
        .await
        .iter()
        .filter(|e| e.event != "message")
        .map(|e| (e.event.clone(), round_of(e)))
        .collect();
    let expected: Vec<(String, u64)> = ["A", "B", "C"].map(|s| (s.to_owned(), 20)).to_vec();
    assert_eq!(named, expected);
}
