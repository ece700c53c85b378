//! Decoding stored events into typed events, the largest share of a catch-up's and a verify's CPU:
//! `cargo bench --bench decode`. 200,000 events of the seeded mix (benches/seed.rs), each decoded
//! through the one decode point, against the same payloads only parsed (serde's `IgnoredAny`: the
//! JSON itself, nothing kept), the floor of any decoder of this text; then an event's time read
//! by hand against chrono's general parser. Three rounds, alternating; nanoseconds an event.

mod seed;

use std::hint::black_box;
use std::time::Instant;

use chrono::{DateTime, Utc};
use eucora_projections::decode::decode_stream;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut generator = seed::Generator::new(42);
    let mut rows = Vec::new();
    while rows.len() < 200_000 {
        for e in generator.intent() {
            let payload = serde_json::to_string(&e.payload).expect("a payload writes");
            rows.push((e.event_type, e.event_version, payload));
        }
    }
    let n = rows.len() as f64;
    let bytes: usize = rows.iter().map(|r| r.2.len()).sum();
    println!(
        "{} events of the seeded mix, {} bytes of payload each on average",
        rows.len(),
        bytes / rows.len()
    );
    let per_event = |started: Instant| started.elapsed().as_nanos() as f64 / n;
    let times: Vec<String> = (0..rows.len())
        .map(|i| {
            let at = DateTime::from_timestamp(1_767_225_600 + i as i64 * 617, 0).unwrap();
            serde_json::to_value(at)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    println!("| round | typed decode | JSON parsed only | ratio | time by hand | chrono | ratio |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for round in 1..=3 {
        let started = Instant::now();
        let decoded = rows
            .iter()
            .filter(|(t, v, p)| black_box(decode_stream(t, v, p)).is_ok())
            .count();
        let typed = per_event(started);
        assert_eq!(decoded, rows.len(), "every seeded event decodes");
        let started = Instant::now();
        for (_, _, p) in &rows {
            let parsed: serde::de::IgnoredAny = serde_json::from_str(p).expect("JSON");
            black_box(parsed);
        }
        let parsed = per_event(started);
        let started = Instant::now();
        for t in &times {
            black_box(eucora_projections::time::parse(black_box(t)).expect("a time"));
        }
        let by_hand = per_event(started);
        let started = Instant::now();
        for t in &times {
            let at: DateTime<Utc> = black_box(t).parse().expect("a time");
            black_box(at);
        }
        let chrono = per_event(started);
        println!(
            "| {round} | {typed:.0} ns | {parsed:.0} ns | {:.2}x | {by_hand:.0} ns | {chrono:.0} ns | {:.1}x faster |",
            typed / parsed,
            chrono / by_hand
        );
    }
}
