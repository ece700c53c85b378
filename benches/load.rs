//! Command throughput over HTTP against a raw single-row INSERT into the same database.
//!
//! For each backend and 1, 16 and 64 clients: every client walks intents through
//! create → approve → deploy over HTTP for a fixed time, first on a server as `eucora serve`
//! runs it (the Merkle log projection and signed checkpoints at their defaults), then on one
//! without the log on a database of its own; then the same number of tasks run durable
//! single-row INSERTs into the same database for the same time. The ratios are commands/s with
//! the log ÷ without it, and ÷ INSERTs/s, all measured in this run on this machine. Checkpoint
//! lag: how long after an event is committed a signed checkpoint covers it. A third server
//! runs with the dispatcher publishing every approved intent to a connector simulator, and its
//! commands/s is compared with the server without it.
//!
//! Then SQLite's durability: the same server at `synchronous = FULL` (the default: a commit
//! survives power loss) and at `NORMAL`, and the ratio of their commands/s.
//!
//! Then traces: `eucora serve` processes exporting spans nowhere, to a collector that answers, to
//! a refused port and to a collector that never answers, and the ratio of each one's commands/s
//! to the first's: an unreachable collector must cost a request nothing.
//!
//! Then the outbox on its own: `EUCORA_BENCH_ACTIONS` (10,000) intents approved at creation,
//! each owing one publish, against a simulator failing 5 % of calls: none lost, none done twice,
//! and the time from an action's commit to its first call; with the creates held while the
//! dispatcher is behind (the default), and never held.
//!
//! `cargo bench --bench load` (PostgreSQL from `EUCORA_BENCH_DATABASE_URL`, else
//! `EUCORA_TEST_DATABASE_URL`; `EUCORA_BENCH_SECONDS` per cell, default 4;
//! `EUCORA_BENCH_ONLY=load`, `durability`, `traces` or `outbox` for one part alone; `EUCORA_BENCH_POOL` for each
//! server's database pool, default 24; `EUCORA_BENCH_BACKENDS=postgres` and `EUCORA_BENCH_CLIENTS=16`
//! narrow the load part to one backend and client count, say under a profiler).

mod harness;
mod scratch;

/// The allocator `eucora` itself runs with (src/main.rs), so the in-process server is its own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eucora::store::Store;
use serde_json::json;

use harness::{
    commands, connectors_file, create_body, drive, duration, env_or, median, scratch_dir,
    serve_process, simulator, start, start_with, take_turns, timed, Turn,
};

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

/// The client counts of the load cells: `EUCORA_BENCH_CLIENTS` (say `16` or `1,16`), else 1, 16
/// and 64.
fn client_counts() -> Vec<usize> {
    std::env::var("EUCORA_BENCH_CLIENTS")
        .ok()
        .map(|s| s.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .filter(|c: &Vec<usize>| !c.is_empty())
        .unwrap_or(vec![1, 16, 64])
}

/// `url_without` and `url_dispatching` are more empty databases of the same backend, for the
/// server without the log and the one dispatching to a connector simulator.
async fn bench_backend(
    name: &str,
    [url, url_without, url_dispatching]: [&str; 3],
    dir: &std::path::Path,
    seconds: f64,
) {
    let with = start(url, true, None).await;
    let without = start(url_without, false, None).await;
    let sim = simulator(Default::default()).await;
    let dispatching = start(
        url_dispatching,
        true,
        Some(connectors_file(dir, "sccm", &sim, "")),
    )
    .await;
    let reference = Arc::new(scratch::Reference::open(url, 8).await);
    let raw_payload = json!({ "DeploymentCreated": create_body() }).to_string();
    for clients in client_counts() {
        // The server with the log, sampled for checkpoint lag; then the one without, sampled
        // the same way (so both carry the sampler's queries); then raw INSERTs.
        let base = with.store.event_count().await.unwrap();
        let (stop, acks) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let sampler = sample_signed(with.store.clone(), stop.clone());
        let mut cmd = commands(&with.target, clients, seconds, Arc::clone(&acks)).await;
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
        let mut bare = commands(&without.target, clients, seconds, Arc::default()).await;
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.await;
        // With the dispatcher publishing every approved intent to the simulator meanwhile.
        let dispatched = commands(&dispatching.target, clients, seconds, Arc::default()).await;
        // The raw-INSERT reference: eight connections to the same database (as the pool it used
        // before it moved out of the service), opened before the servers' pools grow, so that
        // PostgreSQL's connection limit never refuses it.
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
        println!(
            "| {name:<8} | {clients:>3} | {:>9.0} | {:>7.2} | {:>7.2} | {:>9.0} | {:>7.2} | {:>5.2}x | {:>9.0} | {:>5.2}x | {:>9.0} | {:>5.2}x | {:>5} | {:>6.0} | {:>6.0} | {unsigned} |",
            cmd.rate(),
            cmd.pct(0.50),
            cmd.pct(0.99),
            bare.rate(),
            bare.pct(0.99),
            cmd.rate() / bare.rate(),
            raw.rate(),
            cmd.rate() / raw.rate(),
            dispatched.rate(),
            dispatched.rate() / cmd.rate(),
            cmd.errors + bare.errors + raw.errors + dispatched.errors,
            lag50,
            lag99,
        );
        cmd.explain("with the log");
        bare.explain("without the log");
        dispatched.explain("dispatching");
        raw.explain("raw INSERT");
    }
    reference.close().await;
    for server in [with, without, dispatching] {
        server.shut().await;
    }
}

#[tokio::main]
async fn main() {
    let seconds: f64 = env_or("EUCORA_BENCH_SECONDS", 4.0);
    let dir = scratch_dir("eucora-bench");
    println!("create → approve → deploy over HTTP, with the Merkle log and signed checkpoints (the default) and without, vs raw single-row INSERT; {seconds} s per cell");
    println!("| backend  | clients | commands/s | p50 ms | p99 ms | without log: commands/s | p99 ms | with ÷ without | INSERTs/s | with ÷ raw | dispatching: commands/s | dispatching ÷ with | errors | checkpoint lag p50 ms | p99 ms | never signed |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let sqlite = |file: &str| format!("sqlite://{}", dir.join(file).display());
    let only = std::env::var("EUCORA_BENCH_ONLY").unwrap_or_default();
    let backends = std::env::var("EUCORA_BENCH_BACKENDS").unwrap_or("sqlite,postgres".into());
    if (only.is_empty() || only == "load") && backends.contains("sqlite") {
        let (db, bare, disp) = (sqlite("bench.db"), sqlite("bare.db"), sqlite("dispatch.db"));
        bench_backend("sqlite", [&db, &bare, &disp], &dir, seconds).await;
    }
    if (only.is_empty() || only == "load") && backends.contains("postgres") {
        let scratches = [
            scratch::Scratch::create().await,
            scratch::Scratch::create().await,
            scratch::Scratch::create().await,
        ];
        match scratches {
            [Some(db), Some(bare), Some(disp)] => {
                bench_backend("postgres", [&db.url, &bare.url, &disp.url], &dir, seconds).await;
                for scratch in [db, bare, disp] {
                    scratch.drop_database().await;
                }
            }
            _ => println!("(PostgreSQL skipped: set EUCORA_BENCH_DATABASE_URL)"),
        }
    }
    if only.is_empty() || only == "durability" {
        durability(&sqlite("full.db"), &sqlite("normal.db"), seconds).await;
    }
    if only.is_empty() || only == "traces" {
        traces(&dir, seconds).await;
    }
    if only == "load" || only == "durability" || only == "traces" {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let actions: usize = env_or("EUCORA_BENCH_ACTIONS", 10_000);
    println!();
    println!("{actions} actions through the outbox to a simulator failing 5 % of calls (503), at the default backoff (2 s to 60 s)");
    println!("Each backend twice, alternating: commands held while the dispatcher is more than the default");
    println!("--dispatch-max-lag behind, and never held (a lag of an hour allowed).");
    println!("| backend | held past | actions | settled | lost | duplicated effects | calls | retried actions | commit → first call p50 ms | p99 ms | created in s | drained in s |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let default = eucora::config::DEFAULT_DISPATCH_MAX_LAG;
    let lags = [
        (default, duration(default)),
        ("never", Duration::from_secs(3600)),
    ];
    for (label, lag) in lags {
        let url = sqlite(&format!("outbox-{label}.db"));
        outbox_backend(("sqlite", label), &url, &dir, actions, lag).await;
    }
    for (label, lag) in lags {
        if let Some(db) = scratch::Scratch::create().await {
            outbox_backend(("postgres", label), &db.url, &dir, actions, lag).await;
            db.drop_database().await;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cost of SQLite's default durability: the same server (with the log, as `eucora serve`
/// runs) at `synchronous = FULL`, which syncs the log at every commit, and at `NORMAL` (the URL's
/// `?synchronous=normal`), which syncs only at checkpoints; FULL ÷ NORMAL commands/s.
async fn durability(full_url: &str, normal_url: &str, seconds: f64) {
    let full = start(full_url, true, None).await;
    let normal = start(&format!("{normal_url}?synchronous=normal"), true, None).await;
    assert_eq!(full.store.sqlite_synchronous().await.unwrap(), Some("FULL"));
    println!();
    println!("SQLite durability: create → approve → deploy at synchronous = FULL (the default) and NORMAL; {seconds} s per cell");
    println!("| clients | FULL commands/s | p50 ms | p99 ms | NORMAL commands/s | p50 ms | p99 ms | FULL ÷ NORMAL | errors |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for clients in [1usize, 16, 64] {
        let mut f = commands(&full.target, clients, seconds, Arc::default()).await;
        let mut n = commands(&normal.target, clients, seconds, Arc::default()).await;
        println!(
            "| {clients:>3} | {:>9.0} | {:>6.2} | {:>6.2} | {:>9.0} | {:>6.2} | {:>6.2} | {:>5.2}x | {} |",
            f.rate(),
            f.pct(0.5),
            f.pct(0.99),
            n.rate(),
            n.pct(0.5),
            n.pct(0.99),
            f.rate() / n.rate(),
            f.errors + n.errors,
        );
    }
    for server in [full, normal] {
        server.shut().await;
    }
}

/// What an unreachable or slow collector costs a request: the same server (as a process of its
/// own) exporting nowhere (`OTEL_EXPORTER_OTLP_ENDPOINT` unset), to a collector that answers, to
/// a port nothing listens on (refused), and to one that accepts connections and never answers
/// (each export waits out its 10 s timeout); commands/s and p99 against the first.
async fn traces(dir: &std::path::Path, seconds: f64) {
    // A collector that takes every export.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let answering = format!("http://{}", listener.local_addr().unwrap());
    let sink = axum::Router::new().route("/v1/traces", axum::routing::post(|| async { "" }));
    tokio::spawn(async move { axum::serve(listener, sink).await });
    // A port nothing listens on.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    // A collector that accepts connections and never reads or answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    // NORMAL: the question is what exporting costs, and a sync per commit would add the disk's
    // noise to every cell.
    let url = |name: &str| format!("sqlite://{}?synchronous=normal", dir.join(name).display());
    let cases = [
        ("no exporter", None),
        ("collector answering", Some(answering.as_str())),
        ("collector refusing", Some(refused.as_str())),
        ("collector silent", Some(silent.as_str())),
    ];
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_eucora"));
    let servers: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(n, (_, endpoint))| {
            let mut env = vec![("OTEL_BSP_SCHEDULE_DELAY", "200")];
            env.extend(endpoint.map(|e| ("OTEL_EXPORTER_OTLP_ENDPOINT", e)));
            serve_process(bin, &url(&format!("traces-{n}.db")), &env)
        })
        .collect();
    println!();
    const ROUNDS: usize = 3;
    println!("Traces: create → approve → deploy on `eucora serve` processes (SQLite at synchronous = NORMAL) exporting spans nowhere, to a collector that answers, to a refused port, and to a collector that never answers; {seconds} s per cell, the servers taking turns for {ROUNDS} rounds after a warm-up; the median round");
    println!("| clients | exporter | commands/s | p50 ms | p99 ms | ÷ no exporter | errors |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let servers: Vec<_> = servers.iter().collect();
    for clients in [16usize, 64] {
        let rounds = take_turns(&servers, clients, seconds, ROUNDS).await;
        let rate = |turns: &Vec<Turn>| median(turns.iter().map(|t| t.rate).collect());
        let reference = rate(&rounds[0]);
        for ((name, _), turns) in cases.iter().zip(&rounds) {
            println!(
                "| {clients:>3} | {name} | {:>9.0} | {:>6.2} | {:>6.2} | {:>5.2}x | {} |",
                rate(turns),
                median(turns.iter().map(|t| t.p50).collect()),
                median(turns.iter().map(|t| t.p99).collect()),
                rate(turns) / reference,
                turns
                    .iter()
                    .flat_map(|t| t.failures.values())
                    .sum::<usize>(),
            );
        }
    }
}

/// `actions` intents approved by policy at creation, each owing one publish: every action must
/// be settled, have one side effect on the simulator and one `ConnectorDispatched` event.
async fn outbox_backend(
    (name, held): (&str, &str),
    url: &str,
    dir: &std::path::Path,
    actions: usize,
    dispatch_max_lag: Duration,
) {
    let sim = simulator(eucora::connector::sim::Faults {
        failure_rate: 0.05,
        ..Default::default()
    })
    .await;
    // Polling and reconciliation off (hourly): this measures the outbox itself.
    let mut quiet = "poll_interval = \"1h\"\nreconcile_interval = \"1h\"\n".to_string();
    // The connector's calls at once (default 16): EUCORA_BENCH_IN_FLIGHT.
    if let Ok(n) = std::env::var("EUCORA_BENCH_IN_FLIGHT") {
        quiet.push_str(&format!("max_in_flight = {n}\n"));
    }
    let connectors = Some(connectors_file(dir, "intune", &sim, &quiet));
    let server = start_with(url, true, connectors, dispatch_max_lag).await;
    let started = Instant::now();
    let client = reqwest::Client::new();
    let body = json!({
        "app_name": "outbox-bench", "version": "1.0", "connector_type": "intune",
        "target_ring": "CANARY", "rollback_validated": true,
        "risk_factors": { "privilege_impact": 0.1, "supply_chain_trust": 0.1, "exploitability": 0.1,
            "data_access": 0.1, "sbom_vulnerability": 0.0, "operational_complexity": 0.1, "history": 0.1 }
    });
    let clients = 16;
    let mut creators = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (client, base, token, body) = (
            client.clone(),
            server.target.base.clone(),
            server.target.tokens.0.clone(),
            body.clone(),
        );
        let n = actions / clients + usize::from(c < actions % clients);
        creators.spawn(async move {
            for _ in 0..n {
                timed(
                    &client,
                    format!("{base}/api/v1/deployments"),
                    &token,
                    body.clone(),
                    201,
                )
                .await
                .expect("create");
            }
        });
    }
    while creators.join_next().await.is_some() {}
    let created = started.elapsed();
    // Until every action is settled.
    let mut short_since: Option<Instant> = None;
    loop {
        let backlog = server.store.outbox_backlog().await.unwrap();
        let rows = server.store.outbox_rows().await.unwrap();
        if backlog.pending == 0 && rows.len() >= actions {
            break;
        }
        // Nothing pending yet actions missing: lost, unless the projection is still queueing.
        if backlog.pending == 0 {
            let since = *short_since.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < Duration::from_secs(30),
                "{} of {actions} actions were ever queued",
                rows.len()
            );
        } else {
            short_since = None;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "the outbox did not drain: {backlog:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drained = started.elapsed();
    let rows = server.store.outbox_rows().await.unwrap();
    let settled = rows.iter().filter(|r| r.state == "done").count();
    let retried = rows.iter().filter(|r| r.attempts > 1).count();
    let mut waits: Vec<i64> = rows
        .iter()
        .filter_map(|r| r.first_call_ms.map(|first| first - r.committed_ms))
        .collect();
    waits.sort();
    let pct = |p: f64| {
        waits
            .get(((waits.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(-1)
    };
    let counts: serde_json::Value = client
        .get(format!("{sim}/sim/side-effects"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = counts["keys"].as_object().unwrap();
    let calls: u64 = keys.values().map(|k| k["calls"].as_u64().unwrap()).sum();
    let duplicated = keys
        .values()
        .map(|k| k["effects"].as_u64().unwrap().saturating_sub(1))
        .sum::<u64>();
    let lost = actions
        - keys
            .values()
            .filter(|k| k["effects"] == 1)
            .count()
            .min(actions);
    // One outcome event per action, as the domain metrics count them.
    let metrics = client
        .get(format!("{}/api/v1/metrics", server.target.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = metrics
        .lines()
        .find(|l| l.starts_with("eucora_events_total{event_type=\"ConnectorDispatched\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    assert_eq!(events, actions, "one ConnectorDispatched per action");
    println!(
        "| {name} | {held} | {actions} | {settled} | {lost} | {duplicated} | {calls} | {retried} | {} | {} | {:.1} | {:.1} |",
        pct(0.5),
        pct(0.99),
        created.as_secs_f64(),
        drained.as_secs_f64()
    );
    server.shut().await;
}
