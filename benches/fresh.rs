//! Commit to visible: how soon a read reflects a command, on each backend, at 16 clients.
//!
//! Each client creates an intent, then reads the intent list, the global stream or the metrics
//! with `?min_index=` the create's `EUCORA-Index`: the read answers once its projection has
//! applied the create, so its latency, counted from the create's answer, bounds commit-to-visible
//! from above. The reference is the same loop reading without `min_index` (the read's own cost),
//! measured in the same run, alternating with it, twice. A 503 (not visible within 1 s) or any
//! other error is counted.
//!
//! `cargo bench --bench fresh` (PostgreSQL from `EUCORA_BENCH_DATABASE_URL`, else
//! `EUCORA_TEST_DATABASE_URL`; `EUCORA_BENCH_SECONDS` per cell, default 3).

mod harness;
mod scratch;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Instant;

use eucora_projections::event::Role;
use harness::{create_body, drive, env_or, scratch_dir, start, token, Cell};

const CLIENTS: usize = 16;

/// The reads, by name, and their path (a query string follows).
const READS: [(&str, &str); 3] = [
    ("intent list", "/api/v1/deployments?limit=1"),
    ("global stream", "/api/v1/events?limit=1"),
    ("metrics", "/api/v1/metrics?"),
];

/// One cell: every client creates, then reads `path`, with `min_index` or without; the
/// latency is the read's. Errors say what they were.
async fn cell(
    base: &str,
    tokens: Arc<(String, String)>,
    path: &'static str,
    fresh: bool,
    seconds: f64,
) -> Cell {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .unwrap();
    let base = base.to_string();
    drive(CLIENTS, seconds, move |_| {
        let (client, base, tokens) = (client.clone(), base.clone(), tokens.clone());
        async move {
            let created = client
                .post(format!("{base}/api/v1/deployments"))
                .bearer_auth(&tokens.0)
                .json(&create_body())
                .send()
                .await
                .map_err(|e| format!("create: {e}"))?;
            if created.status() != 201 {
                return Err(format!("create: {}", created.status()));
            }
            let index = created
                .headers()
                .get("eucora-index")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .ok_or("create: no EUCORA-Index")?;
            let _ = created.bytes().await;
            let from = Instant::now();
            let sep = if path.ends_with('?') { "" } else { "&" };
            let url = if fresh {
                format!("{base}{path}{sep}min_index={index}")
            } else {
                format!("{base}{path}")
            };
            let read = client
                .get(url)
                .bearer_auth(&tokens.1)
                .send()
                .await
                .map_err(|e| format!("read: {e}"))?;
            let status = read.status();
            let _ = read.bytes().await;
            if status != 200 {
                return Err(format!("read: {status}"));
            }
            Ok(vec![from.elapsed()])
        }
    })
    .await
}

async fn bench(name: &str, url: &str, seconds: f64) {
    let server = start(url, true, None).await;
    let tokens = Arc::new((
        token(&server.store, "req", Role::Requester).await,
        token(&server.store, "aud", Role::Auditor).await,
    ));
    let base = server.target.base.clone();
    for (read, path) in READS {
        let (mut fresh, mut plain) = (Vec::new(), Vec::new());
        let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
        for _ in 0..2 {
            let mut f = cell(&base, tokens.clone(), path, true, seconds).await;
            let mut p = cell(&base, tokens.clone(), path, false, seconds).await;
            fresh.push((f.pct(0.5), f.pct(0.99), f.rate()));
            plain.push((p.pct(0.5), p.pct(0.99)));
            for (what, n) in f.failures.into_iter().chain(p.failures) {
                *kinds.entry(what).or_default() += n;
            }
        }
        let spread = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
            format!("{lo:.1}–{hi:.1}")
        };
        let f50: Vec<f64> = fresh.iter().map(|c| c.0).collect();
        let f99: Vec<f64> = fresh.iter().map(|c| c.1).collect();
        let p50: Vec<f64> = plain.iter().map(|c| c.0).collect();
        let p99: Vec<f64> = plain.iter().map(|c| c.1).collect();
        let ratio = f99.iter().cloned().fold(f64::MIN, f64::max)
            / p99.iter().cloned().fold(f64::MIN, f64::max);
        println!(
            "| {name} | {read} | {} | {} | {} | {} | {ratio:.2}x | {:.0} | {} |",
            spread(&f50),
            spread(&f99),
            spread(&p50),
            spread(&p99),
            fresh.iter().map(|c| c.2).sum::<f64>() / fresh.len() as f64,
            if kinds.is_empty() {
                "0".to_string()
            } else {
                kinds
                    .iter()
                    .map(|(k, n)| format!("{n} × {k}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        );
    }
    server.shut().await;
}

#[tokio::main]
async fn main() {
    let seconds: f64 = env_or("EUCORA_BENCH_SECONDS", 3.0);
    let dir = scratch_dir("eucora-fresh");
    println!("create, then read with ?min_index= its EUCORA-Index (visible) or without (plain read); {CLIENTS} clients, {seconds} s per cell, two rounds alternating; ms, the spread of the two rounds");
    println!("| backend | read | visible p50 | visible p99 | plain p50 | plain p99 | visible ÷ plain p99 | loops/s | errors |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    bench(
        "sqlite",
        &format!("sqlite://{}", dir.join("fresh.db").display()),
        seconds,
    )
    .await;
    match scratch::Scratch::create().await {
        Some(db) => {
            bench("postgres", &db.url, seconds).await;
            db.drop_database().await;
        }
        None => println!("(PostgreSQL skipped: set EUCORA_BENCH_DATABASE_URL)"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
