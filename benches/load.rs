//! Command throughput over HTTP against a raw single-row INSERT into the same database.
//!
//! For each backend and 1, 16 and 64 clients: every client walks intents through
//! create → approve → deploy over HTTP for a fixed time; then the same number of tasks run
//! durable single-row INSERTs into the same database for the same time. The last column is
//! commands/s ÷ INSERTs/s, both measured in this run on this machine.
//!
//! `cargo bench --bench load` (PostgreSQL from `EUCORA_BENCH_DATABASE_URL`, else
//! `EUCORA_TEST_DATABASE_URL`; `EUCORA_BENCH_SECONDS` per cell, default 4).

mod scratch;

/// The allocator `eucora` itself runs with (src/main.rs), so the in-process server is its own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eucora::app::Application;
use eucora::config::{DbArgs, LogFormat, ServeArgs};
use eucora::domain::SystemClock;
use eucora::principals::sha256_hex;
use eucora::store::Store;
use eucora_projections::event::Role;
use serde_json::json;

struct Cell {
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: usize,
}

impl Cell {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&mut self, p: f64) -> f64 {
        self.latencies.sort();
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i =
            ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len()) - 1;
        self.latencies[i].as_secs_f64() * 1000.0
    }
}

/// Runs `clients` loops of `step` until `seconds` pass; each step reports its latencies.
async fn drive<F, Fut>(clients: usize, seconds: f64, step: F) -> Cell
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Vec<Duration>, String>> + Send,
{
    let step = Arc::new(step);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (step, stop) = (step.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0usize);
                while !stop.load(Ordering::Relaxed) {
                    match step(c).await {
                        Ok(l) => lat.extend(l),
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut cell = Cell {
        ops: 0,
        elapsed: Duration::ZERO,
        latencies: vec![],
        errors: 0,
    };
    for t in tasks {
        let (lat, errors) = t.await.unwrap();
        cell.latencies.extend(lat);
        cell.errors += errors;
    }
    cell.elapsed = start.elapsed();
    cell.ops = cell.latencies.len();
    cell
}

async fn timed(
    client: &reqwest::Client,
    url: String,
    token: &str,
    body: serde_json::Value,
    expect: u16,
) -> Result<(Duration, serde_json::Value), String> {
    let t = Instant::now();
    let resp = client
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let value: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
    if status != expect {
        return Err(format!("{status}: {value}"));
    }
    Ok((t.elapsed(), value))
}

async fn bench_backend(name: &str, url: &str, seconds: f64) {
    let store = Store::connect(url, 8).await.expect("connect");
    store.migrate().await.expect("migrate");
    let token = |subject: &str, role: Role| {
        let store = store.clone();
        let subject = subject.to_string();
        async move {
            let t = format!("bench-{subject}-{}", uuid::Uuid::new_v4());
            store
                .create_principal(&subject, role, &sha256_hex(t.as_bytes()))
                .await
                .unwrap();
            t
        }
    };
    let requester = Arc::new(token("req", Role::Requester).await);
    let approver = Arc::new(token("cab", Role::CabApprover).await);
    let deployer = Arc::new(token("ops", Role::Deployer).await);
    let args = ServeArgs {
        db: DbArgs {
            database_url: url.to_string(),
            db_pool_size: 64,
        },
        listen: "127.0.0.1:0".into(),
        policy: None,
        body_limit: 64 * 1024,
        request_timeout: 30,
        header_read_timeout: 10,
        max_connections: None,
        shutdown_timeout: 1,
        metrics_app_label_limit: 200,
        log_format: LogFormat::Text,
        // The embedded default on SQLite (a key beside the file); none on PostgreSQL.
        signing_key_file: None,
        checkpoint_dir: None,
        checkpoint_interval: std::time::Duration::from_secs(1),
        checkpoint_events: 1000,
    };
    let app = Application::build(&args, Arc::new(SystemClock))
        .await
        .expect("build");
    let base = format!("http://{}", app.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .unwrap();
    let create_body = json!({
        "app_name": "bench-app", "version": "1.0", "connector_type": "sccm", "rollback_validated": true,
        "risk_factors": { "privilege_impact": 0.8, "supply_chain_trust": 0.8, "exploitability": 0.8,
            "data_access": 0.8, "sbom_vulnerability": 0.8, "operational_complexity": 0.8, "history": 0.8 }
    });
    let raw_payload = json!({ "DeploymentCreated": create_body }).to_string();

    for clients in [1usize, 16, 64] {
        let (client2, base2, body) = (client.clone(), base.clone(), create_body.clone());
        let (r, a, d) = (requester.clone(), approver.clone(), deployer.clone());
        let mut cmd = drive(clients, seconds, move |_| {
            let (client, base, body) = (client2.clone(), base2.clone(), body.clone());
            let (r, a, d) = (r.clone(), a.clone(), d.clone());
            async move {
                let (t1, created) =
                    timed(&client, format!("{base}/api/v1/deployments"), &r, body, 201).await?;
                let id = created["id"].as_str().ok_or("no id")?.to_string();
                let (t2, _) = timed(
                    &client,
                    format!("{base}/api/v1/deployments/{id}/approve"),
                    &a,
                    json!({}),
                    200,
                )
                .await?;
                let report =
                    json!({ "ring": "LAB", "target_devices": 10, "succeeded": 10, "failed": 0 });
                let (t3, _) = timed(
                    &client,
                    format!("{base}/api/v1/deployments/{id}/deploy"),
                    &d,
                    report,
                    200,
                )
                .await?;
                Ok(vec![t1, t2, t3])
            }
        })
        .await;
        // The raw-INSERT reference: eight connections to the same database (as the pool it used
        // before it moved out of the service), open only while it runs.
        let reference = Arc::new(scratch::Reference::open(url, 8).await);
        reference.reset_raw_table().await;
        let (reference2, payload) = (reference.clone(), raw_payload.clone());
        let mut raw = drive(clients, seconds, move |_| {
            let (reference, payload) = (reference2.clone(), payload.clone());
            async move {
                let t = Instant::now();
                reference
                    .insert_raw(&payload)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(vec![t.elapsed()])
            }
        })
        .await;
        reference.close().await;
        println!(
            "| {name:<8} | {clients:>3} | {:>9.0} | {:>7.2} | {:>7.2} | {:>9.0} | {:>7.2} | {:>7.2} | {:>5} | {:>5.2}x |",
            cmd.rate(),
            cmd.pct(0.50),
            cmd.pct(0.99),
            raw.rate(),
            raw.pct(0.50),
            raw.pct(0.99),
            cmd.errors + raw.errors,
            cmd.rate() / raw.rate(),
        );
    }
    let _ = stop_tx.send(());
    let _ = server.await;
}

#[tokio::main]
async fn main() {
    let seconds: f64 = std::env::var("EUCORA_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let dir = std::env::temp_dir().join(format!("eucora-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("create → approve → deploy over HTTP vs raw single-row INSERT, {seconds} s per cell");
    println!("| backend  | clients | commands/s | p50 ms | p99 ms | INSERTs/s | p50 ms | p99 ms | errors | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    bench_backend(
        "sqlite",
        &format!("sqlite://{}", dir.join("bench.db").display()),
        seconds,
    )
    .await;
    match scratch::Scratch::create().await {
        Some(db) => {
            bench_backend("postgres", &db.url, seconds).await;
            db.drop_database().await;
        }
        None => println!("(PostgreSQL skipped: set EUCORA_BENCH_DATABASE_URL)"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
