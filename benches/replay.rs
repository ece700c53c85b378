//! The read side at scale, each number next to a reference measured in the same run.
//!
//! For each backend, a seeded generator writes `EUCORA_BENCH_EVENTS` events (default 1,000,000)
//! through the real aggregate into a fresh database, then:
//! - a raw ordered scan of the events table (one query, every column) is the reference;
//! - the replay's stream pass (read in global order, verify every leaf against the log, fold the metrics);
//! - the whole `eucora replay` (the stream pass, then the intent read model rebuilt);
//! - the projection runner's catch-up as `eucora serve` does it (read, fold the metrics);
//! - PostgreSQL only: the same events through cqrs-es's own `QueryReplay` over postgres-es,
//!   folding into the same metrics, against our runner;
//! - the resident memory of `eucora serve` once it has caught up on them.
//!
//! First the metrics scrape with 1,000 apps × 5 rings: render time and size against copying the
//! same text, and the series each family renders against its budget (`EUCORA_BENCH_ONLY=scrape`
//! for this part alone). `EUCORA_BENCH_ONLY=catchup` measures the runner's catch-up alone,
//! alternating with the raw scan and a scan of only the columns the catch-up reads (on
//! PostgreSQL also with cqrs-es `QueryReplay`), three rounds. `EUCORA_BENCH_ONLY=evidence`
//! seeds and logs the events, then measures only the evidence: a period's export and its
//! verification (against the same bundle as evidence/v4 wrote it, alternating), and one
//! deployment's export against reading its events;
//! `EUCORA_BENCH_KEEP_BUNDLE=PATH` keeps the period's bundle there (and its verifier key beside
//! it, `PATH.verifier`, and its signing key, `PATH.key`) and the SQLite database, for profiling
//! `eucora evidence verify` and `eucora evidence export`. `EUCORA_BENCH_ONLY=scale` (PostgreSQL
//! only) measures what grows with the log: a late period's export, one deployment's export, and
//! `eucora serve` on it with the same signing key (ready, then signed past the log: its memory
//! then, and its scrape).
//!
//! `cargo bench --bench replay` (PostgreSQL from `EUCORA_BENCH_DATABASE_URL`, else
//! `EUCORA_TEST_DATABASE_URL`); `EUCORA_BENCH_BACKEND=sqlite` or `postgres` measures that backend
//! alone.

/// The allocator `eucora` itself runs with (src/main.rs), so the in-process numbers are its own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod harness;
mod scratch;
mod seed;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use cqrs_es::persist::QueryReplay;
use cqrs_es::{EventEnvelope, Query};
use eucora::domain::intent::IntentEvent;
use eucora::domain::DeploymentIntent;
use eucora::projection::log::{LogTree, LogView};
use eucora::store::Store;
use eucora_projections::event::*;
use eucora_projections::metrics::Metrics;
use harness::ticks;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use seed::{seed, Generator, APPS};
use uuid::Uuid;

/// The metrics fold as a cqrs-es query, for `QueryReplay`.
struct MetricsQuery(Mutex<Metrics>);

#[async_trait]
impl Query<DeploymentIntent> for MetricsQuery {
    async fn dispatch(&self, _id: &str, events: &[EventEnvelope<DeploymentIntent>]) {
        let mut metrics = self.0.lock().unwrap();
        for e in events {
            metrics.apply(e.sequence as i64, &e.payload.0);
        }
    }
}

/// CPU time spent, in seconds: by this process, and by the PostgreSQL server's processes.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    ours: f64,
    database: f64,
}

/// How long `f` took, and the CPU time this process and the PostgreSQL server spent meanwhile.
/// The machine has two cores: a step whose CPU time is near twice its wall time kept both busy.
async fn timed_cpu<T>(f: impl std::future::Future<Output = T>) -> (T, Duration, Cpu) {
    let before = (ticks("self"), postgres_ticks());
    let start = Instant::now();
    let out = f.await;
    let took = start.elapsed();
    let cpu = Cpu {
        ours: ticks("self").saturating_sub(before.0) as f64 / 100.0,
        database: postgres_ticks().saturating_sub(before.1) as f64 / 100.0,
    };
    (out, took, cpu)
}

/// CPU ticks of every running PostgreSQL server process (a backend that exits meanwhile takes
/// its ticks with it, so this can undercount, never overcount).
fn postgres_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.starts_with("postgres"))
        })
        .map(|pid| ticks(&pid))
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Starts the release `eucora serve` on the database and waits until ready; with a signing key,
/// also until it has signed a checkpoint over more than the `signed` leaves (holding the intent
/// heads, as a server with a key does). Its RSS after five scrapes a second apart, how long it
/// took to be ready, and the median scrape over HTTP.
async fn serve_rss(url: &str, key: Option<(&std::path::Path, u64)>) -> (u64, Duration, Duration) {
    let state = std::env::temp_dir().join(format!("eucora-replay-state-{}", Uuid::new_v4()));
    let env: Vec<_> = key
        .iter()
        .map(|(path, _)| ("EUCORA_SIGNING_KEY_FILE", *path))
        .collect();
    let (mut child, base, caught_up) = scratch::serve_ready(url, &state, &env).await;
    let client = reqwest::Client::new();
    let scrape = || async {
        match client.get(format!("{base}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    if let Some((_, signed)) = key {
        let signed_past = |text: &str| {
            text.lines().any(|l| {
                l.starts_with("eucora_checkpoint_tree_size")
                    && l.split_whitespace()
                        .last()
                        .and_then(|n| n.parse::<u64>().ok())
                        .is_some_and(|n| n > signed)
            })
        };
        while !signed_past(&scrape().await) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let signed_rss = rss_kib(child.id());
    // Then as it runs: a scrape a second for five seconds.
    let mut scrapes: Vec<Duration> = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        scrape().await;
        scrapes.push(started.elapsed());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    scrapes.sort();
    let rss = rss_kib(child.id());
    println!(
        "(RSS once it signed: {:.0} MB; five seconds and five scrapes later: {:.0} MB)",
        signed_rss as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&state);
    (rss, caught_up, scrapes[2])
}

/// The projection runner as `eucora serve` runs it at start-up: the persisted projections (log,
/// intent read model) are at the head, the metrics catch up from position 0 and must render what
/// the first replay rendered.
async fn catch_up(store: &Store, written: u64, metrics_then: &str) -> (Duration, Cpu) {
    let (mut runner, metrics, _log) = eucora::app::serve_runner(store, 200);
    let status = runner.status();
    let (_, ours, cpu) = timed_cpu(async {
        while !status.caught_up() {
            let step = runner.step().await;
            assert!(step.failures.is_empty(), "{:?}", step.failures);
        }
    })
    .await;
    assert_eq!(
        status.rows_read(),
        written,
        "only the metrics read the stream, once"
    );
    assert_eq!(metrics.render().as_deref(), Some(metrics_then));
    (ours, cpu)
}

/// The same metrics fold through cqrs-es's own `QueryReplay` over postgres-es, every event.
async fn query_replay(url: &str) -> (Duration, Cpu) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let query = MetricsQuery(Mutex::new(Metrics::new(200)));
    let replay = QueryReplay::new(postgres_es::PostgresEventRepository::new(pool), query);
    let (result, took, cpu) = timed_cpu(replay.replay_all()).await;
    result.expect("QueryReplay");
    (took, cpu)
}

/// On PostgreSQL, `VACUUM (ANALYZE)` of `table` (or of every table, for ""), as a server's
/// autovacuum does to an insert-only table soon after a bulk load
/// (`autovacuum_vacuum_insert_threshold`, PostgreSQL 13 on). The machines these benchmarks run on keep autovacuum off, and there a table
/// never vacuumed is read whole by every `COUNT(*)` (254 ms at a million events, against 98 ms
/// for the index-only scan a vacuumed one gets) and has its hint bits set by whichever reading
/// comes first: not the steady state a server's readers meet.
async fn vacuumed(name: &str, url: &str, table: &str) {
    if name != "postgres" {
        return;
    }
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let started = std::time::Instant::now();
    sqlx::query(&format!("VACUUM (ANALYZE) {table}"))
        .execute(&pool)
        .await
        .expect("vacuum");
    println!(
        "{name}: VACUUM (ANALYZE) {} in {:.1} s",
        if table.is_empty() {
            "of every table"
        } else {
            table
        },
        started.elapsed().as_secs_f64()
    );
    pool.close().await;
}

/// Whether this backend is measured: both, unless `EUCORA_BENCH_BACKEND` names one.
fn backend(name: &str) -> bool {
    std::env::var("EUCORA_BENCH_BACKEND").map_or(true, |only| only == name)
}

/// Whether `EUCORA_BENCH_ONLY` asks for this part alone.
fn only(part: &str) -> bool {
    std::env::var("EUCORA_BENCH_ONLY").as_deref() == Ok(part)
}

async fn bench_backend(name: &str, url: &str, n: u64) {
    let store = Store::connect(url, 8).await.expect("connect");
    store.migrate().await.expect("migrate");
    let (written, took, _) = timed_cpu(seed(&store, n)).await;
    println!(
        "{name}: seeded {written} events in {:.1} s",
        took.as_secs_f64()
    );

    vacuumed(name, url, "events").await;
    let reference_scan = scratch::Reference::open(url, 1).await;
    let mut scan = (Duration::MAX, Cpu::default());
    for _ in 0..2 {
        let (scanned, took, cpu) = timed_cpu(reference_scan.scan_events()).await;
        let (rows, _) = scanned;
        assert_eq!(rows, written);
        if took < scan.0 {
            scan = (took, cpu);
        }
    }
    let reference = scan.0;
    // The database's CPU is in this process on SQLite.
    let row = |what: &str, (took, cpu): (Duration, Cpu)| {
        let database = if name == "postgres" {
            format!("{:.2}", cpu.database)
        } else {
            "in ours".into()
        };
        println!(
            "| {name:<8} | {what:<44} | {:>7.2} | {:>9.0} | {:>5.2}x | {:>5.2} | {database:>7} |",
            took.as_secs_f64(),
            written as f64 / took.as_secs_f64(),
            reference.as_secs_f64() / took.as_secs_f64(),
            cpu.ours,
        );
    };
    row("raw ordered scan (reference)", scan);
    let (first, took, cpu) = timed_cpu(eucora::replay::replay(&store, 200, |_| {})).await;
    let first = first.expect("first replay");
    println!("| {name:<8} | metrics exposition sha256 {} |", first.digest);
    row(
        "eucora replay, first (logs, rebuilds read model)",
        (took, cpu),
    );
    vacuumed(name, url, "").await;
    if only("catchup") {
        // The catch-up alone, alternating with the raw scan, three rounds: each round's ratio.
        // Between them, a scan of only the columns the catch-up reads, decoding nothing: the
        // most any catch-up through this driver could reach.
        // On PostgreSQL each round ends with cqrs-es's `QueryReplay` of the same fold.
        let (mut ratios, mut faster) = (Vec::new(), Vec::new());
        for round in 1..=3 {
            let (_, scan, scan_cpu) = timed_cpu(reference_scan.scan_events()).await;
            let (read, columns, columns_cpu) =
                timed_cpu(reference_scan.scan_catch_up_columns()).await;
            assert_eq!(read, written);
            let (ours, cpu) = catch_up(&store, written, &first.metrics).await;
            ratios.push(scan.as_secs_f64() / ours.as_secs_f64());
            println!(
                "| {name:<8} | round {round}: raw scan {:.2} s ({:.2} s CPU ours, {:.2} s the database's); the catch-up's columns only {:.2} s ({:.2}x; {:.2} s, {:.2} s); runner catch-up {:.2} s ({:.2} s, {:.2} s): {:.2}x |",
                scan.as_secs_f64(),
                scan_cpu.ours,
                scan_cpu.database,
                columns.as_secs_f64(),
                scan.as_secs_f64() / columns.as_secs_f64(),
                columns_cpu.ours,
                columns_cpu.database,
                ours.as_secs_f64(),
                cpu.ours,
                cpu.database,
                ratios[ratios.len() - 1]
            );
            if url.starts_with("postgres") {
                let (theirs, cpu) = query_replay(url).await;
                faster.push(theirs.as_secs_f64() / ours.as_secs_f64());
                println!(
                    "| {name:<8} | round {round}: cqrs-es QueryReplay {:.2} s ({:.2} s, {:.2} s): the runner's catch-up is {:.2}x faster |",
                    theirs.as_secs_f64(),
                    cpu.ours,
                    cpu.database,
                    faster[faster.len() - 1]
                );
            }
        }
        ratios.sort_by(f64::total_cmp);
        if let [low, median, high] = ratios[..] {
            let target = if name == "postgres" { "0.75x" } else { "1.5x" };
            println!(
                "| {name:<8} | runner catch-up vs raw scan: {low:.2}x–{high:.2}x, median {median:.2}x (target ≥ {target}) |"
            );
        }
        faster.sort_by(f64::total_cmp);
        if let [low, median, high] = faster[..] {
            println!(
                "| {name:<8} | runner catch-up vs cqrs-es QueryReplay: {low:.2}x–{high:.2}x faster, median {median:.2}x (target ≥ 3x) |"
            );
        }
        return;
    }
    if only("evidence") {
        bench_evidence(name, url, &store, written, reference, &row).await;
        return;
    }
    if only("scale") {
        bench_scale(name, url, &store, written).await;
        return;
    }
    let (second, took, cpu) = timed_cpu(eucora::replay::replay(&store, 200, |_| {})).await;
    let second = second.expect("second replay");
    assert_eq!((second.events, second.verified), (written, written));
    assert_eq!(
        second.metrics, first.metrics,
        "the same stream gives the same metrics"
    );
    assert_eq!(
        second.view,
        eucora::store::ViewRepair::default(),
        "the first replay left the read model right"
    );
    row("eucora replay, again (verifies, rebuilds)", (took, cpu));

    let (ours, cpu) = catch_up(&store, written, &first.metrics).await;
    row("projection runner catch-up (as eucora serve)", (ours, cpu));
    if url.starts_with("postgres") {
        let (took, cpu) = query_replay(url).await;
        row("cqrs-es QueryReplay over postgres-es", (took, cpu));
        println!(
            "| {name:<8} | our runner vs QueryReplay on the same events: {:.2}x faster (target ≥ 3x) |",
            took.as_secs_f64() / ours.as_secs_f64()
        );
    }
    bench_evidence(name, url, &store, written, reference, &row).await;
    let (rss, caught_up, _) = serve_rss(url, None).await;
    println!(
        "| {name:<8} | eucora serve caught up in {:.1} s; RSS {:.0} MB (target < 300 MB) |",
        caught_up.as_secs_f64(),
        rss as f64 / 1024.0
    );
}

/// The Merkle log at this size: its storage per event, an inclusion proof's latency, a whole
/// period's evidence export against the raw scan, and its offline verification against
/// `sha256sum` over the same files.
async fn bench_evidence(
    name: &str,
    url: &str,
    store: &Store,
    written: u64,
    reference: Duration,
    row: &impl Fn(&str, (Duration, Cpu)),
) {
    use eucora::projection::log::with_tiles;
    use eucora_projections::merkle;
    let tree = LogTree::from_parts(
        store.log_subtrees().await.unwrap(),
        store.last_log_tile().await.unwrap(),
    )
    .unwrap();
    assert_eq!(tree.size(), written);
    // Storage: what the tiles hold per event (PostgreSQL: the table on disk, indexes and row
    // overhead included).
    let bytes: i64 = if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let events: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('events')")
            .fetch_one(&pool)
            .await
            .unwrap();
        println!(
            "| {name:<8} | events table on disk, indexes included: {:.0} bytes per event |",
            events as f64 / written as f64
        );
        sqlx::query_scalar("SELECT pg_total_relation_size('log_tiles')")
            .fetch_one(&pool)
            .await
            .unwrap()
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query_scalar(
            "SELECT SUM(length(leaves) + length(positions) + coalesce(length(subtree), 0) + 16) \
             FROM log_tiles",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    println!(
        "| {name:<8} | log storage: {:.1} bytes per event ({}; target ≤ 64) |",
        bytes as f64 / written as f64,
        if url.starts_with("postgres") {
            "table on disk, indexes included"
        } else {
            "tile bytes + 16 per row"
        }
    );
    // Inclusion proofs at this size: 2,000 random leaves, tiles read from the store.
    let mut rng = StdRng::seed_from_u64(9);
    let mut took: Vec<Duration> = Vec::new();
    for _ in 0..2000 {
        let index = rng.gen_range(0..written);
        let started = Instant::now();
        with_tiles(store, &tree, |r| merkle::inclusion_proof(r, index, written))
            .await
            .unwrap();
        took.push(started.elapsed());
    }
    took.sort();
    println!(
        "| {name:<8} | inclusion proof at tree size {written}: p50 {:.2} ms, p99 {:.2} ms (target p99 < 5 ms) |",
        took[took.len() / 2].as_secs_f64() * 1000.0,
        took[took.len() * 99 / 100].as_secs_f64() * 1000.0
    );
    // A checkpoint over everything, then the whole stream as one period's bundle.
    let dir =
        std::env::temp_dir().join(format!("eucora-evidence-bench-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // The key `eucora serve` will use on this store (SQLite: beside the file), so the server
    // started next finds a checkpoint signed by its own key; another key's would be an integrity
    // failure, and it would rightly never be ready.
    let key_path = match eucora::store::sqlite_file(url) {
        Some(db) if !url.starts_with("postgres") => std::path::PathBuf::from(format!("{db}.key")),
        _ => dir.join("key"),
    };
    let (key, log) = sign_all(store, tree, &key_path, written).await;
    let bundle = dir.join("bundle.tar.gz");
    let scope = eucora::evidence::Scope::Period {
        from: Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap(),
        // The generator's clock runs days per intent: past any calendar year.
        to: chrono::DateTime::<Utc>::MAX_UTC,
    };
    let (summary, took, cpu) = timed_cpu(async {
        let file = std::io::BufWriter::new(std::fs::File::create(&bundle).unwrap());
        eucora::evidence::export(store, &log, &key, &scope, None, file).await
    })
    .await;
    assert_eq!(summary.unwrap().events, written);
    row("evidence export, the whole stream as a period", (took, cpu));
    println!(
        "| {name:<8} | evidence export vs raw scan: {:.2}x (target ≥ 0.5x); bundle {:.0} MB |",
        reference.as_secs_f64() / took.as_secs_f64(),
        std::fs::metadata(&bundle).unwrap().len() as f64 / 1e6
    );
    // One deployment's bundle, from the middle of the stream, against reading that intent's
    // events alone (best of three each).
    let id = middle_intent(url, written).await;
    let mut own = Duration::MAX;
    let mut its_events = 0;
    for _ in 0..3 {
        let started = Instant::now();
        its_events = store.intent_events(id).await.unwrap().len();
        own = own.min(started.elapsed());
    }
    let (alone, exported) = deployment_export(store, &log, &key, id).await;
    assert_eq!(exported as usize, its_events);
    println!(
        "| {name:<8} | one deployment's evidence export ({its_events} events) at {written} events: {:.2} ms; reading its events alone {:.2} ms: {:.1}x it |",
        alone.as_secs_f64() * 1000.0,
        own.as_secs_f64() * 1000.0,
        alone.as_secs_f64() / own.as_secs_f64()
    );
    // Offline verification, against sha256sum over the same files, and against the same bundle
    // as the release before wrote it (evidence/v4: every change's trail in REPORT.html,
    // controls.json pretty-printed), alternating, two rounds.
    let v4 = dir.join("bundle-v4.tar.gz");
    let v4_bytes = as_v4(&bundle, &v4, &key);
    let verify_file = |path: &std::path::Path| {
        let started = Instant::now();
        let verified = eucora::evidence::verify(
            std::io::BufReader::new(std::fs::File::open(path).unwrap()),
            key.verifier_key(),
            None,
        )
        .unwrap();
        assert_eq!(verified.events, written);
        started.elapsed()
    };
    let (mut v5_took, mut v4_took) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        v4_took.push(verify_file(&v4));
        v5_took.push(verify_file(&bundle));
    }
    let rate = |took: &[Duration]| {
        let mut r: Vec<f64> = took
            .iter()
            .map(|t| written as f64 / t.as_secs_f64())
            .collect();
        r.sort_by(f64::total_cmp);
        format!("{:.0}–{:.0}", r[0], r[r.len() - 1])
    };
    let sizes = |path: &std::path::Path| {
        let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(
            std::fs::File::open(path).unwrap(),
        ));
        let mut sizes = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            sizes.insert(name, entry.header().size().unwrap() as f64 / 1e6);
        }
        sizes
    };
    let (now, before) = (sizes(&bundle), sizes(&v4));
    println!(
        "| {name:<8} | evidence verify, events/s: v5 {} (target ≥ 300,000), the same bundle as v4 {}; REPORT.html v5 {:.1} MB, v4 {:.0} MB; controls.json v5 {:.0} MB, v4 {:.0} MB; bundle v5 {:.0} MB, v4 {:.0} MB |",
        rate(&v5_took),
        rate(&v4_took),
        now["REPORT.html"],
        before["REPORT.html"],
        now["controls.json"],
        before["controls.json"],
        std::fs::metadata(&bundle).unwrap().len() as f64 / 1e6,
        v4_bytes as f64 / 1e6,
    );
    let verifying = *v5_took.iter().min().unwrap();
    // The same on the command line an auditor runs (its own process and allocator), alternating.
    let verifier = dir.join("verifier");
    std::fs::write(&verifier, key.verifier_key()).unwrap();
    // Its CPU too (user and system): on 2 cores, verify cannot take less wall time than half.
    let v5_cpu = std::cell::Cell::new(Vec::new());
    let cli = |path: &std::path::Path| {
        let (started, cpu) = (Instant::now(), harness::children_ticks());
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_eucora"))
            .args(["evidence", "verify", path.to_str().unwrap(), "--key"])
            .arg(&verifier)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        if path == bundle.as_path() {
            let mut cpus = v5_cpu.take();
            cpus.push((harness::children_ticks() - cpu) as f64 / 100.0);
            v5_cpu.set(cpus);
        }
        started.elapsed()
    };
    let (mut v5_cli, mut v4_cli) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        v4_cli.push(cli(&v4));
        v5_cli.push(cli(&bundle));
    }
    let v5_cpu: Vec<String> = v5_cpu.take().iter().map(|c| format!("{c:.2}")).collect();
    println!(
        "| {name:<8} | eucora evidence verify, events/s: v5 {} (target ≥ 300,000; CPU s {}), the same bundle as v4 {} |",
        rate(&v5_cli),
        v5_cpu.join(", "),
        rate(&v4_cli),
    );
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let untar = std::process::Command::new("tar")
        .args([
            "xzf",
            bundle.to_str().unwrap(),
            "-C",
            files.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(untar.success());
    let started = Instant::now();
    let summed = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("sha256sum {}/* > /dev/null", files.display()))
        .status()
        .unwrap();
    let summing = started.elapsed();
    assert!(summed.success());
    println!(
        "| {name:<8} | evidence verify: {:.2} s, {:.0} events/s (target ≥ 300,000); sha256sum of the files {:.2} s: verify is {:.1}x it (target ≤ 4x) |",
        verifying.as_secs_f64(),
        written as f64 / verifying.as_secs_f64(),
        summing.as_secs_f64(),
        verifying.as_secs_f64() / summing.as_secs_f64()
    );
    if let Ok(keep) = std::env::var("EUCORA_BENCH_KEEP_BUNDLE") {
        std::fs::copy(&bundle, &keep).unwrap();
        std::fs::write(format!("{keep}.verifier"), key.verifier_key()).unwrap();
        // This throwaway database's signing key, for `eucora evidence export` on a kept
        // PostgreSQL database (SQLite's is beside its file).
        std::fs::copy(&key_path, format!("{keep}.key")).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The deployment intent of the event halfway along the stream.
async fn middle_intent(url: &str, written: u64) -> Uuid {
    let sql = "SELECT aggregate_id FROM events WHERE aggregate_type = 'deployment' \
               ORDER BY position LIMIT 1 OFFSET $1";
    let middle: String = if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query_scalar(sql)
            .bind(written as i64 / 2)
            .fetch_one(&pool)
            .await
            .unwrap()
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query_scalar(sql)
            .bind(written as i64 / 2)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    Uuid::parse_str(&middle).unwrap()
}

/// One deployment's evidence export, best of three, and how many events it held.
async fn deployment_export(
    store: &Store,
    log: &LogView,
    key: &eucora::checkpoints::SigningKey,
    id: Uuid,
) -> (Duration, u64) {
    let (mut best, mut events) = (Duration::MAX, 0);
    for _ in 0..3 {
        let started = Instant::now();
        events = eucora::evidence::export(
            store,
            log,
            key,
            &eucora::evidence::Scope::Deployment(id),
            None,
            std::io::sink(),
        )
        .await
        .unwrap()
        .events;
        best = best.min(started.elapsed());
    }
    (best, events)
}

/// Signs a checkpoint over the whole log (`tree`, of `written` leaves) with a new key at
/// `key_path`, as the server would, and returns the key and the log's view with the intent heads
/// it signed kept in it (as the server keeps them for a deployment's export).
async fn sign_all(
    store: &Store,
    tree: LogTree,
    key_path: &std::path::Path,
    written: u64,
) -> (eucora::checkpoints::SigningKey, LogView) {
    let key = eucora::checkpoints::SigningKey::create(key_path, "bench").unwrap();
    let heads = eucora::checkpoints::IntentHeads::of(store, written)
        .await
        .unwrap();
    let root = tree.root();
    store
        .keep_checkpoint(&eucora::store::StoredCheckpoint {
            tree_size: written as i64,
            root,
            note: key.sign_checkpoint(written, &root, &heads.root()).unwrap(),
        })
        .await
        .unwrap();
    let log = LogView::default();
    log.replace(tree);
    log.keep_signed_heads(heads);
    (key, log)
}

/// What a large store costs where it grows with the log: a late period's export (the stream read
/// from its start to find the period, then the period), against a raw scan of every event; one
/// deployment's export, and `eucora serve` ready on it
/// with its memory (`EUCORA_BENCH_ONLY=scale`, PostgreSQL only; the scrape's cost is the estate's,
/// measured apart).
async fn bench_scale(name: &str, url: &str, store: &Store, written: u64) {
    let tree = LogTree::from_parts(
        store.log_subtrees().await.unwrap(),
        store.last_log_tile().await.unwrap(),
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("eucora-scale-bench-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, log) = sign_all(store, tree, &dir.join("key"), written).await;
    // The period from the event nine tenths of the way along the stream to its end: a late period
    // holding a tenth of the events (the generator's clock runs days per intent, so a calendar
    // quarter of it holds a handful).
    let late = store
        .read_global(None, 1, eucora::store::Columns::Events)
        .await
        .unwrap();
    let mut after = late.last().map(|r| r.position);
    let mut from = None;
    while from.is_none() {
        let rows = store
            .read_global(after, 100_000, eucora::store::Columns::Events)
            .await
            .unwrap();
        after = rows.last().map(|r| r.position);
        if let Some(row) = rows.iter().find(|r| r.position as u64 >= written * 9 / 10) {
            from = Some(row.decode().unwrap().occurred_at());
        }
    }
    let from = from.unwrap();
    let to = chrono::DateTime::<Utc>::MAX_UTC;
    // The reference: one ordered scan of every event, every column.
    let started = Instant::now();
    let (rows, _) = scratch::Reference::open(url, 1).await.scan_events().await;
    assert_eq!(rows, written);
    let scan = started.elapsed();
    let started = Instant::now();
    let summary = eucora::evidence::export(
        store,
        &log,
        &key,
        &eucora::evidence::Scope::Period { from, to },
        None,
        std::io::BufWriter::new(std::fs::File::create(dir.join("quarter.tar.gz")).unwrap()),
    )
    .await
    .unwrap();
    let late = started.elapsed();
    println!(
        "| {name:<8} | a late period's export at {written} events (from {from}, to the end): {} events of {} intents in {:.1} s; the raw ordered scan of every event {:.1} s: {:.2}x |",
        summary.events,
        summary.intents,
        late.as_secs_f64(),
        scan.as_secs_f64(),
        scan.as_secs_f64() / late.as_secs_f64()
    );
    let id = middle_intent(url, written).await;
    let (alone, _) = deployment_export(store, &log, &key, id).await;
    println!(
        "| {name:<8} | one deployment's export at {written} events: {:.2} ms |",
        alone.as_secs_f64() * 1000.0
    );
    // The server last, as one with a signing key runs: it records the policy in force (the log
    // grows past the checkpoint signed above) and signs, so it holds every intent's head and
    // the index of its checkpoint.
    let (rss, caught_up, scrape) = serve_rss(url, Some((&dir.join("key"), written))).await;
    println!(
        "| {name:<8} | eucora serve ready in {:.1} s; signed, then scraped five times, RSS {:.0} MB (target < 300 MB); GET /metrics median of 5: {:.1} ms |",
        caught_up.as_secs_f64(),
        rss as f64 / 1024.0,
        scrape.as_secs_f64() * 1000.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes `bundle` again as the release before wrote it (evidence/v4: every change's trail in
/// `REPORT.html`, `controls.json` pretty-printed), re-signed with `key`; its size.
fn as_v4(
    bundle: &std::path::Path,
    out: &std::path::Path,
    key: &eucora::checkpoints::SigningKey,
) -> u64 {
    use base64::Engine;
    use eucora::evidence::Format;
    use std::io::{Read, Write};
    let b64 = base64::engine::general_purpose::STANDARD;
    let read = eucora::evidence::read_bundle(std::fs::File::open(bundle).unwrap()).unwrap();
    let claims = read.claims().unwrap();
    let mut derived = eucora::evidence::derive(
        Format::V4,
        &claims.scope,
        claims.as_of.unwrap(),
        claims.tree_size,
        read.population(),
    )
    .unwrap();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(
        std::fs::File::open(bundle).unwrap(),
    ));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        match name.as_str() {
            "REPORT.html" => data = std::mem::take(&mut derived.report_html),
            "controls.json" => data = std::mem::take(&mut derived.controls_json),
            _ => {}
        }
        files.push((name, data));
    }
    drop(read);
    let digest = |data: &[u8]| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(data))
    };
    let (_, manifest) = files
        .iter()
        .find(|(n, _)| n == eucora::evidence::MANIFEST)
        .unwrap();
    let envelope: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    let mut statement: serde_json::Value =
        serde_json::from_slice(&b64.decode(envelope["payload"].as_str().unwrap()).unwrap())
            .unwrap();
    statement["predicateType"] = "https://eucora.dev/evidence/v4".into();
    statement["subject"] = files
        .iter()
        .filter(|(n, _)| n != eucora::evidence::MANIFEST)
        .map(|(n, d)| serde_json::json!({"name": n, "digest": {"sha256": digest(d)}}))
        .collect();
    let payload = serde_json::to_vec(&statement).unwrap();
    let sig = key
        .sign(&eucora::evidence::pae(
            "application/vnd.in-toto+json",
            &payload,
        ))
        .unwrap();
    let envelope = serde_json::json!({
        "payloadType": "application/vnd.in-toto+json",
        "payload": b64.encode(&payload),
        "signatures": [{"keyid": key.verifier_key(), "sig": b64.encode(sig)}],
    });
    for (name, data) in &mut files {
        if name == eucora::evidence::MANIFEST {
            *data = serde_json::to_vec(&envelope).unwrap();
        }
    }
    let file = std::fs::File::create(out).unwrap();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::fast(),
    ));
    for (name, data) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, &data[..]).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
    std::fs::metadata(out).unwrap().len()
}

/// 1,000 apps, each with an intent in every ring, rendered as a scrape would.
fn bench_scrape() {
    let mut generator = Generator::new(7);
    let mut metrics = Metrics::new(APPS);
    let mut position = 0;
    for app in 0..APPS {
        for _ in 0..2 {
            let stream = generator.intent();
            for e in stream {
                position += 1;
                let IntentEvent(event) = serde_json::from_value(e.payload).unwrap();
                let renamed = match event {
                    DeploymentEvent::DeploymentCreated(mut c) => {
                        c.app_name = format!("app-{app:04}");
                        c.target_ring = Ring::Global;
                        DeploymentEvent::DeploymentCreated(c)
                    }
                    other => other,
                };
                metrics.apply(position, &renamed);
            }
        }
    }
    let text = metrics.render();
    let mut best = Duration::MAX;
    for _ in 0..20 {
        let (_, took) = {
            let start = Instant::now();
            let t = metrics.render();
            (t, start.elapsed())
        };
        best = best.min(took);
    }
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    // The reference: the same bytes copied once, the least a scrape of this size can cost.
    let mut copy = Duration::MAX;
    for _ in 0..20 {
        let start = Instant::now();
        let copied = std::hint::black_box(text.clone());
        copy = copy.min(start.elapsed());
        drop(copied);
    }
    println!(
        "| scrape   | {APPS} apps × 5 rings: {series} series, {:.1} KiB, rendered in {:.2} ms (target < 20 ms); copying the text takes {:.3} ms: render is {:.0}x a copy |",
        text.len() as f64 / 1024.0,
        best.as_secs_f64() * 1000.0,
        copy.as_secs_f64() * 1000.0,
        best.as_secs_f64() / copy.as_secs_f64()
    );
    // Series per family, against the most each may have at this scale: a family that multiplies
    // (a new label, a label with more values) fails the benchmark loudly, before it reaches a
    // scrape.
    let mut families: BTreeMap<&str, usize> = Default::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        *families.entry(family).or_default() += 1;
    }
    let mut over = Vec::new();
    for (family, n) in &families {
        let budget = SCRAPE_BUDGET
            .iter()
            .find(|(f, _)| f == family)
            .map_or(0, |(_, b)| *b);
        println!("|          | {family}: {n} series (budget {budget}) |");
        if *n > budget {
            over.push(format!("{family}: {n} series, over its budget of {budget}"));
        }
    }
    assert!(
        over.is_empty(),
        "metric families grew past their budget at {APPS} apps × 5 rings: {}; \
         drop or aggregate what no dashboard, rule or runbook reads, or raise the budget in \
         benches/replay.rs with the reason",
        over.join("; ")
    );
}

/// The most series each family may render at 1,000 apps × 5 rings: what it rendered on
/// 2026-12-06, with a tenth more room where it has more than 20; the families with nothing to
/// show in this history (drift, rejected status answers, rework) have the room their labels allow
/// (5 rings × 8 connector types; an app in some rings). A family not listed may render none.
const SCRAPE_BUDGET: &[(&str, usize)] = &[
    ("cab_approval_wait_seconds", 16),
    ("connector_status_rejected_total", 44),
    ("deployment_app_lead_time_seconds", 7852),
    ("deployment_change_failures_total", 605),
    ("deployment_cost_per_intent", 13),
    ("deployment_cost_total", 5438),
    ("deployment_drift_total", 44),
    ("deployment_duration_seconds", 176),
    ("deployment_lead_time_seconds", 88),
    ("deployment_recovery_time_seconds", 88),
    ("deployment_rework_total", 660),
    ("deployment_rollbacks_total", 5),
    ("deployment_rollouts_forecast_to_miss", 5),
    ("deployment_time_to_compliance_seconds", 88),
    ("deployment_total", 11685),
    ("deployments_in_state", 33),
    ("emergency_changes_awaiting_retro_approval", 2),
    ("eucora_events_total", 18),
    ("eucora_projection_position", 1),
    ("promotion_gate_evaluations_total", 24),
    ("promotion_gate_success_rate", 4),
    ("ring_promotion_total", 4),
    ("risk_score_distribution", 18),
];

#[tokio::main]
async fn main() {
    let n: u64 = std::env::var("EUCORA_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    println!("| backend  | what | seconds | events/s | vs raw scan | CPU s, this process | CPU s, PostgreSQL |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    if !only("evidence") && !only("scale") {
        bench_scrape();
    }
    if only("scrape") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("eucora-replay-bench-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    if !only("scale") && backend("sqlite") {
        bench_backend(
            "sqlite",
            &format!("sqlite://{}", dir.join("bench.db").display()),
            n,
        )
        .await;
    }
    match std::env::var("EUCORA_BENCH_KEEP_BUNDLE") {
        // Kept for profiling `eucora evidence export` against it.
        Ok(_) => println!("(the SQLite database is kept in {})", dir.display()),
        Err(_) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    if !backend("postgres") {
        return;
    }
    match scratch::Scratch::create().await {
        Some(db) => {
            bench_backend("postgres", &db.url, n).await;
            db.drop_database().await;
        }
        None => println!("(PostgreSQL skipped: set EUCORA_BENCH_DATABASE_URL)"),
    }
}
