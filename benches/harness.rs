//! What the HTTP benchmarks share: a server of the bench on its own database with its tokens,
//! clients driving it for a fixed time, and the latencies they saw.
// Each bench uses part of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eucora::app::Application;
use eucora::config::{DbArgs, LogFormat, ServeArgs};
use eucora::domain::SystemClock;
use eucora::store::Store;
use eucora_projections::event::Role;
use serde_json::json;

/// The number in environment variable `name`, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A new, empty folder of this run's own under the system's temporary one.
pub fn scratch_dir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Cell {
    pub ops: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
    pub errors: usize,
    /// What each error was, by its message (the first 160 characters), and how often.
    pub failures: std::collections::BTreeMap<String, usize>,
}

impl Cell {
    /// Prints what each error of this cell was, under `what`.
    pub fn explain(&self, what: &str) {
        for (message, n) in &self.failures {
            println!("  {what}: {n} × {message}");
        }
    }

    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    pub fn pct(&mut self, p: f64) -> f64 {
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
pub async fn drive<F, Fut>(clients: usize, seconds: f64, step: F) -> Cell
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
                let (mut lat, mut errors) = (Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match step(c).await {
                        Ok(l) => lat.extend(l),
                        Err(e) => errors.push(e),
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
        failures: Default::default(),
    };
    for t in tasks {
        let (lat, errors) = t.await.unwrap();
        cell.latencies.extend(lat);
        cell.errors += errors.len();
        for e in errors {
            let e: String = e.chars().take(160).collect();
            *cell.failures.entry(e).or_default() += 1;
        }
    }
    cell.elapsed = start.elapsed();
    cell.ops = cell.latencies.len();
    cell
}

pub async fn timed(
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
/// Where commands go: a server's address and the requester's, approver's and deployer's tokens.
pub struct Target {
    pub base: String,
    pub tokens: Arc<(String, String, String)>,
}

pub struct Server {
    pub target: Target,
    pub store: Store,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The signing key and the checkpoint directory, removed at the end.
    pub key_dir: std::path::PathBuf,
}

impl Server {
    /// Stops the server and removes its key and checkpoints.
    pub async fn shut(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        let _ = std::fs::remove_dir_all(&self.key_dir);
    }
}

/// A connector simulator on loopback, with `faults`; returns its base URL.
pub async fn simulator(faults: eucora::connector::sim::Faults) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let config = eucora::connector::sim::SimConfig {
        faults,
        ..Default::default()
    };
    tokio::spawn(
        async move { axum::serve(listener, eucora::connector::sim::router(config)).await },
    );
    base
}

/// A connectors file sending `kind` to the simulator at `base`, without write limits (the
/// benchmark measures the outbox, not a tenant's quota), at the default backoff, with `more`.
pub fn connectors_file(
    dir: &std::path::Path,
    kind: &str,
    base: &str,
    more: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!("connectors-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(
        &path,
        format!(
            "[{kind}]\nbase_url = \"{base}\"\nwrites_per_app = \"unlimited\"\n\
             writes_per_tenant = \"unlimited\"\n{more}"
        ),
    )
    .unwrap();
    path
}

/// A bearer token for `subject` in `role`, issued on `store`.
pub async fn token(store: &Store, subject: &str, role: Role) -> String {
    let change = eucora::principals::operator_change(Some("load-benchmark")).unwrap();
    let expires_at =
        eucora::principals::expiry(change.at, eucora::principals::DEFAULT_TOKEN_LIFETIME).unwrap();
    eucora::principals::issue_token(store, subject, role, expires_at, &change, None)
        .await
        .unwrap()
        .1
}

/// The requester's, approver's and deployer's tokens, issued on `store`.
pub async fn tokens(store: &Store) -> Arc<(String, String, String)> {
    Arc::new((
        token(store, "req", Role::Requester).await,
        token(store, "cab", Role::CabApprover).await,
        token(store, "ops", Role::Deployer).await,
    ))
}

pub async fn start(url: &str, merkle_log: bool, connectors: Option<std::path::PathBuf>) -> Server {
    let max_lag = duration(eucora::config::DEFAULT_DISPATCH_MAX_LAG);
    start_with(url, merkle_log, connectors, max_lag).await
}

/// [`start`] with commands held while the dispatcher is more than `dispatch_max_lag` behind.
pub async fn start_with(
    url: &str,
    merkle_log: bool,
    connectors: Option<std::path::PathBuf>,
    dispatch_max_lag: Duration,
) -> Server {
    let store = Store::connect(url, 8).await.expect("connect");
    store.migrate().await.expect("migrate");
    let tokens = tokens(&store).await;
    let key_dir =
        std::env::temp_dir().join(format!("eucora-load-key-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&key_dir).unwrap();
    let args = ServeArgs {
        db: DbArgs {
            database_url: url.to_string(),
            // Three servers run at once on PostgreSQL's 100 connections, beside the reference's 8
            // and the benchmark's own (3 × 28 + 8 reached the limit).
            db_pool_size: env_or("EUCORA_BENCH_POOL", 24),
        },
        listen: "127.0.0.1:0".into(),
        policy: None,
        body_limit: 64 * 1024,
        request_timeout: 30,
        header_read_timeout: 10,
        max_connections: None,
        rate_limit: None,
        auth_failure_limit: 0,
        session_idle: std::time::Duration::from_secs(1800),
        public_url: None,
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
        checkpoint_witness: None,
        checkpoint_interval: duration(eucora::config::DEFAULT_CHECKPOINT_INTERVAL),
        checkpoint_events: 1000,
        connectors,
        dispatch_max_lag,
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
        target: Target { base, tokens },
        store,
        stop,
        task,
        key_dir,
    }
}

/// A duration written as the server's options are (`500ms`).
pub fn duration(text: &str) -> Duration {
    eucora::domain::policy::duration(text)
        .and_then(|d| d.to_std().ok())
        .expect("a duration")
}

pub fn create_body() -> serde_json::Value {
    json!({
        "app_name": "bench-app", "version": "1.0", "connector_type": "sccm", "rollback_validated": true,
        "risk_factors": { "privilege_impact": 0.8, "supply_chain_trust": 0.8, "exploitability": 0.8,
            "data_access": 0.8, "sbom_vulnerability": 0.8, "operational_complexity": 0.8, "history": 0.8 }
    })
}

/// The commands of one cell; `acks` gets the time each was acknowledged.
pub async fn commands(
    server: &Target,
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

/// `eucora serve` as a process of its own: the binary `bin` (this build's, or another
/// version's), on `url`, with `env`. The database is migrated and the three tokens created
/// through that binary's own `migrate` and `token create`, so an older version runs on its own
/// schema. Killed when dropped.
pub struct Process {
    pub target: Target,
    child: std::process::Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `bin` with `args` on the database at `url`; its standard output, trimmed.
fn run_cli(bin: &std::path::Path, url: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(bin)
        .args(args)
        .env("EUCORA_DATABASE_URL", url)
        // Who makes the access change, as `token create` records it.
        .env("USER", "load-benchmark")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Starts `bin serve` on `url` with `env`, once `bin` has migrated it and created the tokens.
pub fn serve_process(bin: &std::path::Path, url: &str, env: &[(&str, &str)]) -> Process {
    run_cli(bin, url, &["migrate"]);
    let token = |subject, role| {
        run_cli(
            bin,
            url,
            &["token", "create", "--subject", subject, "--role", role],
        )
    };
    let tokens = Arc::new((
        token("req", "requester"),
        token("cab", "cab_approver"),
        token("ops", "deployer"),
    ));
    let mut command = std::process::Command::new(bin);
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("EUCORA_DATABASE_URL", url)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .envs(env.iter().copied());
    let (child, base) = crate::scratch::listening(command);
    Process {
        target: Target { base, tokens },
        child,
    }
}

/// One cell of [`take_turns`]: commands/s, p50 and p99 in ms, what its errors were, and the
/// CPU it took per command, in microseconds: the server process's, the load generator's (this
/// process) and the rest of the machine's (the database, on PostgreSQL).
pub struct Turn {
    pub rate: f64,
    pub p50: f64,
    pub p99: f64,
    pub failures: std::collections::BTreeMap<String, usize>,
    pub cpu: Cpu,
}

/// CPU time per command, in microseconds, by where it was spent.
#[derive(Clone, Copy, Default)]
pub struct Cpu {
    pub server: f64,
    pub client: f64,
    pub rest: f64,
}

/// CPU clock ticks (user and system) the process `pid` (`self` for this one) used so far; Linux's
/// `/proc`, 0 elsewhere. A tick is 1/100 s: Linux's USER_HZ on every architecture it exports.
pub fn ticks(pid: &str) -> u64 {
    stat_ticks(pid, 11)
}

/// CPU clock ticks (user and system) this process's children used, those waited for so far.
pub fn children_ticks() -> u64 {
    stat_ticks("self", 13)
}

/// The sum of the user and system ticks at `field` and the one after it in `/proc/{pid}/stat`.
fn stat_ticks(pid: &str, field: usize) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').map_or(0, |i| i + 2)..]
        .split(' ')
        .collect();
    let value = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    value(field).unwrap_or(0) + value(field + 1).unwrap_or(0)
}

/// CPU seconds used so far: by the process `pid` (`self` for this one), and by the whole
/// machine (every core's busy time, from `/proc/stat`).
fn cpu_seconds(pid: &str) -> (f64, f64) {
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let ticks: Vec<f64> = stat
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .filter_map(|t| t.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
            Some(ticks.iter().take(8).sum::<f64>() - ticks.get(3)? - ticks.get(4)?)
        })
        .unwrap_or(0.0);
    (ticks(pid) as f64 / 100.0, machine / 100.0)
}

/// The servers take turns for `rounds` rounds, each running create → approve → deploy at
/// `clients` for `seconds`, after a one-second warm-up each; every server's turns, in order.
/// Alternating spreads the machine's drift over all of them alike.
pub async fn take_turns(
    servers: &[&Process],
    clients: usize,
    seconds: f64,
    rounds: usize,
) -> Vec<Vec<Turn>> {
    for server in servers {
        commands(&server.target, clients, 1.0, Arc::default()).await;
    }
    let mut turns: Vec<Vec<Turn>> = servers.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (server, turns) in servers.iter().zip(turns.iter_mut()) {
            let pid = server.child.id().to_string();
            let ((server0, machine0), (client0, _)) = (cpu_seconds(&pid), cpu_seconds("self"));
            let mut cell = commands(&server.target, clients, seconds, Arc::default()).await;
            let ((server1, machine1), (client1, _)) = (cpu_seconds(&pid), cpu_seconds("self"));
            let ops = cell.ops.max(1) as f64;
            let per_command = |s: f64| s * 1e6 / ops;
            let (server, client) = (server1 - server0, client1 - client0);
            turns.push(Turn {
                rate: cell.rate(),
                p50: cell.pct(0.5),
                p99: cell.pct(0.99),
                failures: std::mem::take(&mut cell.failures),
                cpu: Cpu {
                    server: per_command(server),
                    client: per_command(client),
                    rest: per_command((machine1 - machine0 - server - client).max(0.0)),
                },
            });
        }
    }
    turns
}

/// The median of `xs` (the upper one of an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}
