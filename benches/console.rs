//! The web console with 10,000 intents in the store: each page's time and its weight on the wire,
//! next to the API's own list of 50 intents (JSON) measured in the same run.
//!
//! For each backend a seeded generator writes `EUCORA_BENCH_INTENTS` intents (default 10,000; one
//! in four of those the CAB must decide is left awaiting it) through the real aggregate; then
//! `eucora serve` starts on them, catches up, and each page is fetched 300 times in a row (after
//! 20 to warm up) with a signed-in admin's session and `Accept-Encoding: gzip`. Times are taken
//! by the client on the loopback: the server's time plus a round trip of a few tens of
//! microseconds.
//!
//! `cargo bench --bench console` (PostgreSQL from `EUCORA_BENCH_DATABASE_URL`, else
//! `EUCORA_TEST_DATABASE_URL`).

mod scratch;
mod seed;

use std::time::{Duration, Instant};

use eucora::store::Store;
use seed::{seed_intents, Generator};

const WARM: usize = 20;
const TIMED: usize = 300;

fn eucora(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eucora"))
        .args(args)
        .output()
        .expect("run eucora");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Measured {
    p50: Duration,
    p99: Duration,
    bytes: usize,
}

async fn measure(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Measured {
    let get = || {
        let mut req = client.get(url).header("accept-encoding", "gzip");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req
    };
    let mut bytes = 0;
    for _ in 0..WARM {
        let reply = get().send().await.unwrap();
        assert!(reply.status().is_success(), "{url}: {}", reply.status());
        bytes = reply.bytes().await.unwrap().len();
    }
    let mut times = Vec::with_capacity(TIMED);
    for _ in 0..TIMED {
        let started = Instant::now();
        let reply = get().send().await.unwrap();
        let _ = reply.bytes().await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    Measured {
        p50: times[TIMED / 2],
        p99: times[TIMED * 99 / 100],
        bytes,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn bench(name: &str, url: &str, intents: u64, state: &std::path::Path) {
    let store = Store::connect(url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    let mut generator = Generator::new(11);
    generator.awaiting_one_in = 4;
    let started = Instant::now();
    let events = seed_intents(&store, intents, generator).await;
    eprintln!(
        "{name}: {intents} intents, {events} events seeded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let token = eucora(&[
        "token",
        "create",
        "--database-url",
        url,
        "--subject",
        "bench-admin",
        "--role",
        "admin",
        "--by",
        "bench",
    ]);
    let (mut child, base, caught_up) = scratch::serve_ready(url, state, &[]).await;
    eprintln!(
        "{name}: serve caught up in {:.1} s",
        caught_up.as_secs_f64()
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = http
        .post(format!("{base}/ui/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let bearer = format!("Bearer {token}");
    let list: serde_json::Value = http
        .get(format!("{base}/api/v1/deployments?limit=1"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let one = list["items"][0]["id"].as_str().unwrap().to_string();
    let reference = measure(
        &http,
        &format!("{base}/api/v1/deployments?limit=50"),
        &[("authorization", &bearer)],
    )
    .await;
    println!("\n### {name}, {intents} intents ({events} events)\n");
    println!("| page | p50 ms | p99 ms | p99 / the API's list | KB on the wire |");
    println!("|---|---|---|---|---|");
    println!(
        "| reference: `GET /api/v1/deployments?limit=50` (JSON) | {:.2} | {:.2} | 1.00 | {:.1} |",
        ms(reference.p50),
        ms(reference.p99),
        reference.bytes as f64 / 1024.0
    );
    let pages = [
        ("Overview", "/ui/overview".to_string()),
        ("Changes", "/ui/changes".to_string()),
        (
            "Changes, filtered (deployed, risk above 40, a year)",
            "/ui/changes?status=deployed&risk_above=40&from=2026-01-01&to=2026-12-31".to_string(),
        ),
        ("CAB queue", "/ui/cab".to_string()),
        ("Emergency reviews", "/ui/emergency".to_string()),
        ("A change", format!("/ui/changes/{one}")),
        ("Audit", "/ui/audit".to_string()),
        ("Access", "/ui/access".to_string()),
    ];
    for (page, path) in pages {
        let m = measure(&http, &format!("{base}{path}"), &[("cookie", &cookie)]).await;
        println!(
            "| {page} | {:.2} | {:.2} | {:.2} | {:.1} |",
            ms(m.p50),
            ms(m.p99),
            m.p99.as_secs_f64() / reference.p99.as_secs_f64(),
            m.bytes as f64 / 1024.0
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::main]
async fn main() {
    let intents: u64 = std::env::var("EUCORA_BENCH_INTENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("eucora-console-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("eucora.db").display());
    bench("SQLite", &url, intents, &dir).await;
    if let Some(db) = scratch::Scratch::create().await {
        bench("PostgreSQL", &db.url.clone(), intents, &dir).await;
        db.drop_database().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
