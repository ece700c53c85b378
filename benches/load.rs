//! Command throughput over HTTP against a raw single-row INSERT into the same database.
//!
//! For each backend and 1, 16 and 64 clients: every client walks intents through
//! create → approve → deploy over HTTP for a fixed time, first on a server as `eucora serve`
//! runs it (the Merkle log projection and signed checkpoints at their defaults), then on one
//! without the log on a database of its own; then the same number of tasks run durable
//! single-row INSERTs into the same database for the same time. The ratios are commands/s with
//! the log ÷ without it, and ÷ INSERTs/s, all measured in this run on this machine. Checkpoint
//! lag: how long after an event is committed a signed checkpoint covers it.
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

/// A server of the bench on its own database, and its bearer tokens.
struct Server {
    base: String,
    store: Store,
    tokens: Arc<(String, String, String)>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The signing key and the checkpoint directory, removed at the end.
    key_dir: std::path::PathBuf,
}

async fn start(url: &str, merkle_log: bool) -> Server {
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
    let tokens = Arc::new((
        token("req", Role::Requester).await,
        token("cab", Role::CabApprover).await,
        token("ops", Role::Deployer).await,
    ));
    let key_dir =
        std::env::temp_dir().join(format!("eucora-load-key-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&key_dir).unwrap();
    let args = ServeArgs {
        db: DbArgs {
            database_url: url.to_string(),
            // Two servers run at once on PostgreSQL's 100 connections.
            db_pool_size: 40,
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
        // Signed checkpoints on both backends, kept in a directory too, at the defaults.
        signing_key_file: merkle_log.then(|| {
            let path = key_dir.join("key");
            eucora::checkpoints::SigningKey::create(&path, "bench").unwrap();
            path
        }),
        checkpoint_dir: merkle_log.then(|| key_dir.join("checkpoints")),
        checkpoint_interval: eucora::domain::policy::duration(
            eucora::config::DEFAULT_CHECKPOINT_INTERVAL,
        )
        .and_then(|d| d.to_std().ok())
        .unwrap(),
        checkpoint_events: 1000,
        connectors: None,
        merkle_log,
    };
    let app = Application::build(&args, Arc::new(SystemClock))
        .await
        .expect("build");
    let base = format!("http://{}", app.local_addr().unwrap());
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async {
        let _ = stop_rx.await;
    }));
    Server {
        base,
        store,
        tokens,
        stop,
        task,
        key_dir,
    }
}

/// Every 20 ms, the size of the latest signed checkpoint (one indexed row: cheap beside the load).
fn sample_signed(
    store: Store,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Instant, i64)>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let signed = store
                .latest_checkpoint()
                .await
                .ok()
                .flatten()
                .map_or(0, |c| c.tree_size);
            samples.push((Instant::now(), signed));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        samples
    })
}

/// Checkpoint lag per event: from its command's acknowledgement (each command appends one event;
/// the k-th acknowledged is taken as the k-th committed after `base`) to the first sample whose
/// signed checkpoint covers it (±20 ms). p50 and p99 in ms, and how many were never seen signed.
fn lag(base: i64, acks: &[Instant], samples: &[(Instant, i64)]) -> (f64, f64, usize) {
    let mut lags: Vec<Duration> = Vec::new();
    let mut j = 0;
    for (k, acked) in acks.iter().enumerate() {
        while j < samples.len() && samples[j].1 < base + k as i64 + 1 {
            j += 1;
        }
        if let Some((at, _)) = samples.get(j) {
            lags.push(at.saturating_duration_since(*acked));
        }
    }
    let unsigned = acks.len() - lags.len();
    lags.sort();
    let pct = |p: f64| {
        lags.get(((lags.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    (pct(0.5), pct(0.99), unsigned)
}

fn create_body() -> serde_json::Value {
    json!({
        "app_name": "bench-app", "version": "1.0", "connector_type": "sccm", "rollback_validated": true,
        "risk_factors": { "privilege_impact": 0.8, "supply_chain_trust": 0.8, "exploitability": 0.8,
            "data_access": 0.8, "sbom_vulnerability": 0.8, "operational_complexity": 0.8, "history": 0.8 }
    })
}

/// The commands of one cell; `acks` gets the time each was acknowledged.
async fn commands(
    server: &Server,
    clients: usize,
    seconds: f64,
    acks: Arc<std::sync::Mutex<Vec<Instant>>>,
) -> Cell {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .unwrap();
    let create_body = create_body();
    let (base, tokens) = (server.base.clone(), server.tokens.clone());
    drive(clients, seconds, move |_| {
        let (client, base, body, tokens, acks) = (
            client.clone(),
            base.clone(),
            create_body.clone(),
            tokens.clone(),
            acks.clone(),
        );
        async move {
            let (r, a, d) = (&tokens.0, &tokens.1, &tokens.2);
            let acked = || acks.lock().unwrap().push(Instant::now());
            let (t1, created) =
                timed(&client, format!("{base}/api/v1/deployments"), r, body, 201).await?;
            acked();
            let id = created["id"].as_str().ok_or("no id")?.to_string();
            let (t2, _) = timed(
                &client,
                format!("{base}/api/v1/deployments/{id}/approve"),
                a,
                json!({}),
                200,
            )
            .await?;
            acked();
            let report =
                json!({ "ring": "LAB", "target_devices": 10, "succeeded": 10, "failed": 0 });
            let (t3, _) = timed(
                &client,
                format!("{base}/api/v1/deployments/{id}/deploy"),
                d,
                report,
                200,
            )
            .await?;
            acked();
            Ok(vec![t1, t2, t3])
        }
    })
    .await
}

/// `url_without` is a second, empty database of the same backend, for the server without the log.
async fn bench_backend(name: &str, url: &str, url_without: &str, seconds: f64) {
    let with = start(url, true).await;
    let without = start(url_without, false).await;
    let raw_payload = json!({ "DeploymentCreated": create_body() }).to_string();
    for clients in [1usize, 16, 64] {
        // The server with the log, sampled for checkpoint lag; then the one without, sampled
        // the same way (so both carry the sampler's queries); then raw INSERTs.
        let base = with.store.event_count().await.unwrap();
        let (stop, acks) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let sampler = sample_signed(with.store.clone(), stop.clone());
        let mut cmd = commands(&with, clients, seconds, Arc::clone(&acks)).await;
        // Wait out the last checkpoint, so every event of the cell is seen signed.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let samples = sampler.await.unwrap();
        let mut acks = std::mem::take(&mut *acks.lock().unwrap());
        acks.sort();
        assert_eq!(
            with.store.event_count().await.unwrap() - base,
            acks.len() as i64,
            "one event per acknowledged command"
        );
        let (lag50, lag99, unsigned) = lag(base, &acks, &samples);
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = sample_signed(without.store.clone(), stop.clone());
        let mut bare = commands(&without, clients, seconds, Arc::default()).await;
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.await;
        // The raw-INSERT reference: eight connections to the same database (as the pool it used
        // before it moved out of the service), open only while it runs.
        let reference = Arc::new(scratch::Reference::open(url, 8).await);
        reference.reset_raw_table().await;
        let (reference2, payload) = (reference.clone(), raw_payload.clone());
        let raw = drive(clients, seconds, move |_| {
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
            "| {name:<8} | {clients:>3} | {:>9.0} | {:>7.2} | {:>7.2} | {:>9.0} | {:>7.2} | {:>5.2}x | {:>9.0} | {:>5.2}x | {:>5} | {:>6.0} | {:>6.0} | {unsigned} |",
            cmd.rate(),
            cmd.pct(0.50),
            cmd.pct(0.99),
            bare.rate(),
            bare.pct(0.99),
            cmd.rate() / bare.rate(),
            raw.rate(),
            cmd.rate() / raw.rate(),
            cmd.errors + bare.errors + raw.errors,
            lag50,
            lag99,
        );
    }
    for server in [with, without] {
        let _ = server.stop.send(());
        let _ = server.task.await;
        let _ = std::fs::remove_dir_all(&server.key_dir);
    }
}

#[tokio::main]
async fn main() {
    let seconds: f64 = std::env::var("EUCORA_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let dir = std::env::temp_dir().join(format!("eucora-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("create → approve → deploy over HTTP, with the Merkle log and signed checkpoints (the default) and without, vs raw single-row INSERT; {seconds} s per cell");
    println!("| backend  | clients | commands/s | p50 ms | p99 ms | without log: commands/s | p99 ms | with ÷ without | INSERTs/s | with ÷ raw | errors | checkpoint lag p50 ms | p99 ms | never signed |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    bench_backend(
        "sqlite",
        &format!("sqlite://{}", dir.join("bench.db").display()),
        &format!("sqlite://{}", dir.join("bare.db").display()),
        seconds,
    )
    .await;
    match (
        scratch::Scratch::create().await,
        scratch::Scratch::create().await,
    ) {
        (Some(db), Some(bare)) => {
            bench_backend("postgres", &db.url, &bare.url, seconds).await;
            db.drop_database().await;
            bare.drop_database().await;
        }
        _ => println!("(PostgreSQL skipped: set EUCORA_BENCH_DATABASE_URL)"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
