//! This build against another version of `eucora`: the same create → approve → deploy load, on
//! each backend, on `eucora serve` processes taking turns.
//!
//! `EUCORA_BENCH_BEFORE` names the other version's binary (build it from a `git worktree` of
//! that version; see docs/benchmarks.md). Each server runs as `eucora serve` runs by default, on
//! a database of its own, migrated and given its tokens through its own command line. On SQLite
//! this build runs twice: at its default `synchronous = FULL`, and at `NORMAL`, the level older
//! versions committed at, so that the code's cost and durability's cost are told apart. The
//! servers take turns for `EUCORA_BENCH_ROUNDS` rounds (default 5) of `EUCORA_BENCH_SECONDS`
//! (default 4) at 16 and 64 clients; the table gives each one's median round, the spread of
//! its rounds, and its median ÷ the other version's, and where the CPU went per command: the
//! server process's, the rest of the machine's (the database) and the load generator's, from
//! `/proc` (2 busy cores make commands/s the inverse of the CPU a command takes).
//!
//! `EUCORA_BENCH_BEFORE=/tmp/eucora-before cargo bench --bench versions` (PostgreSQL from
//! `EUCORA_BENCH_DATABASE_URL`, else `EUCORA_TEST_DATABASE_URL`).

mod harness;
mod scratch;

use std::path::{Path, PathBuf};

use harness::{env_or, median, scratch_dir, serve_process, take_turns, Process, Turn};

/// Runs `servers` (name, process) in turns at 16 and 64 clients and prints a row for each; the
/// first is the reference.
async fn compare(backend: &str, servers: &[(String, Process)], seconds: f64, rounds: usize) {
    let processes: Vec<_> = servers.iter().map(|(_, p)| p).collect();
    for clients in [16usize, 64] {
        let turns = take_turns(&processes, clients, seconds, rounds).await;
        let rate = |t: &Vec<Turn>| median(t.iter().map(|t| t.rate).collect());
        let reference = rate(&turns[0]);
        for ((name, _), t) in servers.iter().zip(&turns) {
            let rates: Vec<f64> = t.iter().map(|t| t.rate).collect();
            let (low, high) = rates
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
            let errors: usize = t.iter().flat_map(|t| t.failures.values()).sum();
            let cpu = |f: fn(&Turn) -> f64| median(t.iter().map(f).collect());
            println!(
                "| {backend:<8} | {clients:>3} | {name} | {:>7.0} | {low:.0}–{high:.0} | {:>6.2} | {:>6.2} | {:>5.2}x | {:>4.0} | {:>4.0} | {:>4.0} | {errors} |",
                rate(t),
                cpu(|t| t.p50),
                cpu(|t| t.p99),
                rate(t) / reference,
                cpu(|t| t.cpu.server),
                cpu(|t| t.cpu.rest),
                cpu(|t| t.cpu.client),
            );
            for turn in t {
                for (message, n) in &turn.failures {
                    println!("  {name}: {n} × {message}");
                }
            }
        }
    }
}

/// What PostgreSQL counts for the database at `url`: transactions committed, and rows
/// inserted, updated, deleted and fetched (`pg_stat_database`).
async fn db_counts(admin: &mut sqlx::PgConnection, url: &str) -> [f64; 5] {
    let name = url.rsplit('/').next().unwrap_or_default();
    // A backend reports its counts at most once a second while busy: ask for a fresh snapshot.
    let _ = sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *admin)
        .await;
    let row: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, tup_fetched \
         FROM pg_stat_database WHERE datname = $1",
    )
    .bind(name)
    .fetch_one(&mut *admin)
    .await
    .expect("pg_stat_database");
    [row.0, row.1, row.2, row.3, row.4].map(|n| n as f64)
}

/// Per command, what each server asked of PostgreSQL: one cell of `seconds` at 16 clients per
/// server, its database's counts read before it and two seconds after it (so that the backends
/// have reported, and the server's projections have caught up with the cell's commands).
async fn db_account(servers: &[(String, Process, String)], seconds: f64) {
    use sqlx::Connection;
    let admin_url = scratch::admin_url().expect("PostgreSQL");
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect");
    println!();
    println!("PostgreSQL's work per command: one {seconds} s cell at 16 clients per server, `pg_stat_database` of its database before it and 2 s after it");
    println!("| server | commands | transactions | rows inserted | rows updated | rows deleted | rows fetched |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, process, url) in servers {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let before = db_counts(&mut admin, url).await;
        let cell = harness::commands(&process.target, 16, seconds, Default::default()).await;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let after = db_counts(&mut admin, url).await;
        let per = |i: usize| (after[i] - before[i]) / cell.ops.max(1) as f64;
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            cell.ops,
            per(0),
            per(1),
            per(2),
            per(3),
            per(4)
        );
    }
}

#[tokio::main]
async fn main() {
    let Some(before) = std::env::var_os("EUCORA_BENCH_BEFORE").map(PathBuf::from) else {
        println!("(skipped: set EUCORA_BENCH_BEFORE to the other version's eucora binary)");
        return;
    };
    let head = Path::new(env!("CARGO_BIN_EXE_eucora"));
    let seconds: f64 = env_or("EUCORA_BENCH_SECONDS", 4.0);
    let rounds: usize = env_or("EUCORA_BENCH_ROUNDS", 5);
    let dir = scratch_dir("eucora-versions");
    let sqlite = |file: &str| format!("sqlite://{}", dir.join(file).display());
    println!("create → approve → deploy over HTTP on `eucora serve` processes: {} (before) and this build, taking turns for {rounds} rounds of {seconds} s after a warm-up; the median round, the spread of the rounds, and median ÷ before", before.display());
    println!("CPU per command (µs, the median round): the server process's, the rest of the machine's (the database) and the load generator's");
    println!("| backend  | clients | server | commands/s | spread | p50 ms | p99 ms | ÷ before | server CPU | database CPU | client CPU | errors |");
    println!("|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let servers = vec![
        (
            "before".to_string(),
            serve_process(&before, &sqlite("before.db"), &[]),
        ),
        (
            "this build, synchronous = NORMAL".to_string(),
            serve_process(
                head,
                &format!("{}?synchronous=normal", sqlite("normal.db")),
                &[],
            ),
        ),
        (
            "this build".to_string(),
            serve_process(head, &sqlite("head.db"), &[]),
        ),
    ];
    compare("sqlite", &servers, seconds, rounds).await;
    drop(servers);
    match (
        scratch::Scratch::create().await,
        scratch::Scratch::create().await,
    ) {
        (Some(a), Some(b)) => {
            let servers = vec![
                ("before".to_string(), serve_process(&before, &a.url, &[])),
                ("this build".to_string(), serve_process(head, &b.url, &[])),
            ];
            compare("postgres", &servers, seconds, rounds).await;
            let servers: Vec<_> = servers
                .into_iter()
                .zip([&a.url, &b.url])
                .map(|((name, process), url)| (name, process, url.clone()))
                .collect();
            db_account(&servers, seconds).await;
            drop(servers);
            a.drop_database().await;
            b.drop_database().await;
        }
        _ => println!("(PostgreSQL skipped: set EUCORA_BENCH_DATABASE_URL)"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
