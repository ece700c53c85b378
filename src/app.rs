//! Wiring: builds the store, the write side, the projection runner and the HTTP router from a
//! [`crate::config::ServeArgs`], and runs them together until shutdown.

use std::sync::Arc;

use crate::domain::DomainServices;
use crate::http::AppState;
use crate::principals::Principals;
use crate::projection::intent_view::IntentView;
use crate::projection::log::{LogView, MerkleLog};
use crate::projection::metrics::{MetricsProjection, MetricsView};
use crate::projection::{Runner, BATCH};
use crate::read::ReadModel;
use crate::store::{Store, StoreError};
use crate::telemetry::Telemetry;
use crate::write::Commands;

/// Connections kept for the health probes beyond `--max-connections`.
const PROBE_RESERVE: usize = 16;
/// File descriptors kept back from connections: the database pool (two per connection on
/// SQLite: the file and its WAL), the migrations, the log, the listener and the probe reserve.
const FD_RESERVE: usize = 64;

/// The most connections served at once: as asked, but never more than the open-file limit allows
/// after the reserve, so the database and the probes always get descriptors.
fn connection_limit(asked: Option<u64>, pool_size: u32) -> usize {
    let reserve = FD_RESERVE + PROBE_RESERVE + 2 * pool_size as usize;
    let available = open_file_limit().map(|limit| limit.saturating_sub(reserve).max(1));
    match (asked.map(|a| a as usize), available) {
        (Some(asked), Some(available)) if asked > available => {
            tracing::warn!(
                asked,
                available,
                "--max-connections is more than the open-file limit allows; serving {available}"
            );
            available
        }
        (Some(asked), _) => asked,
        (None, Some(available)) => available.min(10_000),
        (None, None) => 1_000,
    }
}

/// The process's soft limit on open files, from `/proc/self/limits` (Linux).
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The projection runner of `eucora serve`, with every read-side consumer of the stream
/// registered, the view of its metrics that the API serves, and the view of the Merkle log.
pub fn serve_runner(store: &Store, app_label_limit: usize) -> (Runner, MetricsView, LogView) {
    let log = LogView::default();
    let (runner, view) = runner_with(store, app_label_limit, Some(&log));
    (runner, view, log)
}

/// The projections `eucora serve` runs; without `log`, no Merkle log (what the load benchmark
/// compares the server with).
fn runner_with(
    store: &Store,
    app_label_limit: usize,
    log: Option<&LogView>,
) -> (Runner, MetricsView) {
    let mut runner = Runner::new(store.clone(), BATCH);
    let (metrics, view) = MetricsProjection::new(app_label_limit, runner.status());
    if let Some(log) = log {
        runner = runner.register(MerkleLog::extending(log.clone()));
    }
    let runner = runner.register(IntentView::persisted()).register(metrics);
    (runner, view)
}

/// The signing key, checkpoint directory and witness `args` name, or the defaults: on SQLite the
/// key `<database file>.key` (made on first start, 0600); on both backends the directory in the
/// server's state directory (`crate::checkpoints::place`).
fn checkpoint_plan(
    args: &crate::config::ServeArgs,
) -> Result<Option<crate::checkpoints::CheckpointPlan>, StartError> {
    use crate::checkpoints::{CheckpointPlan, SigningKey, DEFAULT_KEY_NAME};
    let beside_db = match crate::store::backend_of(&args.db.database_url) {
        crate::store::Backend::Sqlite => {
            crate::store::sqlite_file(&args.db.database_url).map(std::path::PathBuf::from)
        }
        crate::store::Backend::Postgres => None,
    };
    let with_suffix = |db: &std::path::Path, suffix: &str| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    let key = match (&args.signing_key_file, &beside_db) {
        (Some(path), _) => SigningKey::load(path)?,
        (None, Some(db)) => {
            let path = with_suffix(db, ".key");
            if path.exists() {
                SigningKey::load(&path)?
            } else {
                let key = SigningKey::create(&path, DEFAULT_KEY_NAME)?;
                tracing::info!(path = %path.display(), verifier_key = key.verifier_key(),
                    "made the log's signing key");
                key
            }
        }
        (None, None) => {
            tracing::warn!(
                "no --signing-key-file (EUCORA_SIGNING_KEY_FILE): the log's checkpoints are not \
                 signed and no evidence is exported; make a key with `eucora key generate` and \
                 give every replica the same file (docs/evidence.md)"
            );
            return Ok(None);
        }
    };
    let dir = checkpoint_dir(args)?;
    let witness = args
        .checkpoint_witness
        .as_deref()
        .map(crate::checkpoints::witness::Witness::new)
        .transpose()
        .map_err(StartError::Checkpoints)?;
    Ok(Some(CheckpointPlan {
        key: Arc::new(key),
        dir,
        witness,
        interval: args.checkpoint_interval,
        every_events: args.checkpoint_events,
    }))
}

/// The checkpoint directory `args` name, else the default one (with a warning when there is
/// none: no state directory), made owner-only; a checkpoint an earlier version kept beside the
/// SQLite database is carried over into it.
fn checkpoint_dir(
    args: &crate::config::ServeArgs,
) -> Result<Option<std::path::PathBuf>, StartError> {
    use crate::checkpoints::place;
    let url = &args.db.database_url;
    let (dir, identity) = match &args.checkpoint_dir {
        Some(dir) => (dir.clone(), None),
        None => match place::default_dir(url, &|name| std::env::var(name).ok()) {
            Some((dir, identity)) => (dir, Some(identity)),
            None => {
                tracing::warn!(
                    "no --checkpoint-dir and no state directory (HOME and XDG_STATE_HOME are \
                     unset): checkpoints are kept in the database only, so a rewrite of the \
                     database is not caught at start-up"
                );
                return Ok(None);
            }
        },
    };
    let fix = |e: String| {
        StartError::Checkpoints(format!(
            "{e}; name a directory this server may write, and the database's writer may not, \
             with --checkpoint-dir (EUCORA_CHECKPOINT_DIR)"
        ))
    };
    place::prepare(&dir, identity.as_deref()).map_err(fix)?;
    if let Some(old) = place::carry_over(url, &dir).map_err(fix)? {
        tracing::info!(from = %old.display(), to = %dir.display(),
            "carried the kept checkpoint over to the checkpoint directory");
    }
    Ok(Some(dir))
}

/// A bound, ready-to-run server: `main` and the tests build it the same way, and port 0 works.
pub struct Application {
    listener: tokio::net::TcpListener,
    router: axum::Router,
    connections: crate::http::serve::ConnectionLimits,
    /// Started by `run`, and stopped by the same shutdown as the server.
    runner: Runner,
    /// The retrospective-approval deadline watcher's needs, started by `run` as the runner is.
    deadlines: (Store, Arc<Commands>, Arc<dyn crate::domain::Clock>),
    /// Sends the outbox to the connectors (with a connector configured); started by `run` as the
    /// runner is.
    dispatcher: Option<Arc<crate::connector::dispatch::Dispatcher>>,
    /// Re-verifies the log and signs its checkpoints (with a key); started by `run` as the runner
    /// is.
    checkpointer: crate::checkpoints::Checkpointer,
    shutdown_timeout: std::time::Duration,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Policy(#[from] crate::domain::policy::PolicyError),
    #[error("{0}")]
    Telemetry(String),
    #[error(transparent)]
    Key(#[from] crate::checkpoints::KeyError),
    #[error("{0}")]
    Connectors(String),
    #[error("{0}")]
    Checkpoints(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

impl Application {
    /// Opens and migrates the store, loads the policy and binds the listener.
    pub async fn build(
        args: &crate::config::ServeArgs,
        clock: Arc<dyn crate::domain::Clock>,
    ) -> Result<Application, StartError> {
        let policy = match &args.policy {
            Some(path) => crate::domain::Policy::load(&path.to_string_lossy())?,
            None => crate::domain::Policy::default(),
        };
        // Bound first: an address in use is said in one line, before anything else starts.
        // A host name is resolved, and its addresses tried in turn.
        let listener = tokio::net::TcpListener::bind(args.listen.as_str())
            .await
            .map_err(|source| StartError::Bind {
                addr: args.listen.clone(),
                source,
            })?;
        let connectors = match &args.connectors {
            Some(path) => crate::connector::client::load(path).map_err(StartError::Connectors)?,
            None => Default::default(),
        };
        let created =
            crate::store::missing_sqlite_file(&args.db.database_url).map(crate::domain::absolute);
        let store = Store::connect(&args.db.database_url, args.db.db_pool_size).await?;
        store.migrate().await?;
        if let Some(path) = created {
            tracing::info!(%path, "created a new database");
        }
        // The rules in force, on the record: appended when they differ from the last recorded.
        let source = args.policy.as_ref().map_or_else(
            || crate::governance::BUILT_IN.to_string(),
            |p| p.display().to_string(),
        );
        if let Some(activated) = crate::governance::record_policy(&store, &policy, &source).await? {
            tracing::info!(
                digest = %activated.digest,
                source = %activated.source,
                previous = activated.previous_digest.as_deref().unwrap_or("none"),
                "policy activated"
            );
        }
        if let Some(level) = store.sqlite_synchronous().await? {
            tracing::info!(
                synchronous = level,
                "SQLite store: an acknowledged command {} power loss (docs/operations.md)",
                if level == "NORMAL" {
                    "may not survive"
                } else {
                    "survives"
                }
            );
        }
        let (plan, (mut runner, metrics_view, log)) = if args.merkle_log {
            (
                checkpoint_plan(args)?,
                serve_runner(&store, args.metrics_app_label_limit),
            )
        } else {
            let (runner, view) = runner_with(&store, args.metrics_app_label_limit, None);
            (None, (runner, view, LogView::default()))
        };
        // The outbox and its dispatcher run only with a connector configured.
        let outbox = if connectors.is_empty() {
            None
        } else {
            Some(crate::connector::dispatch::Outbox::open(&store).await?)
        };
        let wake = outbox.as_ref().map(|o| o.waker());
        if let Some(outbox) = outbox {
            runner = runner.register(outbox);
        }
        let integrity = Arc::new(crate::checkpoints::IntegrityStatus::default());
        let telemetry = Arc::new(
            Telemetry::new(store.backend(), runner.status()).map_err(StartError::Telemetry)?,
        );
        telemetry.observe_integrity(integrity.clone());
        telemetry.observe_signing(plan.is_some());
        telemetry.observe_policy(policy.digest());
        let checkpointer = crate::checkpoints::Checkpointer {
            store: store.clone(),
            log: log.clone(),
            runner: runner.status(),
            status: integrity.clone(),
            plan,
        };
        let commands = Commands::new(&store, DomainServices::new(clock.clone(), policy))
            .with_telemetry(telemetry.clone())
            .waking(runner.status());
        let commands = Arc::new(commands);
        let instance: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
        // With connectors: the dispatcher, and the admission it tells how far behind it is.
        let (dispatcher, admission) = match wake {
            Some(wake) => {
                let admission = Arc::new(crate::connector::admission::Admission::new(
                    args.dispatch_max_lag,
                ));
                let dispatcher = crate::connector::dispatch::Dispatcher::new(
                    store.clone(),
                    commands.clone(),
                    connectors,
                    Some(telemetry.connector_metrics()),
                    instance.to_string(),
                    wake,
                    admission.clone(),
                )
                .map_err(StartError::Connectors)?;
                telemetry.observe_dispatch(dispatcher.status());
                (Some(Arc::new(dispatcher)), Some(admission))
            }
            None => (None, None),
        };
        let deadlines = (store.clone(), commands.clone(), clock);
        let state = AppState {
            commands,
            reads: Arc::new(ReadModel::new(store.clone())),
            principals: Arc::new(Principals::new(
                store.clone(),
                args.rate_limit.and_then(std::num::NonZeroU32::new),
                std::num::NonZeroU32::new(args.auth_failure_limit),
            )),
            metrics: metrics_view,
            log,
            integrity,
            signing_key: checkpointer.plan.as_ref().map(|p| p.key.clone()),
            runner: runner.status(),
            telemetry,
            instance,
            store,
            dispatch: dispatcher
                .as_ref()
                .map(|d| d.status() as Arc<dyn crate::telemetry::DispatchGauges>),
            admission,
            console: Arc::new(crate::http::ConsoleSettings {
                session_idle: chrono::Duration::from_std(args.session_idle)
                    .unwrap_or(chrono::Duration::minutes(30)),
                secure_cookie: args
                    .public_url
                    .as_deref()
                    .is_some_and(|u| u.to_ascii_lowercase().starts_with("https://")),
            }),
        };
        let limits = crate::http::Limits {
            body_bytes: args.body_limit,
            request_timeout: std::time::Duration::from_secs(args.request_timeout),
        };
        let connections = crate::http::serve::ConnectionLimits {
            max_connections: connection_limit(args.max_connections, args.db.db_pool_size),
            reserve: PROBE_RESERVE,
            header_read_timeout: std::time::Duration::from_secs(args.header_read_timeout),
        };
        Ok(Application {
            listener,
            connections,
            router: crate::http::router(state, limits, crate::ui::router()),
            runner,
            deadlines,
            dispatcher,
            checkpointer,
            shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout),
        })
    }

    /// The verifier key of the log's signing key, if checkpoints are signed.
    pub fn verifier_key(&self) -> Option<&str> {
        self.checkpointer
            .plan
            .as_ref()
            .map(|p| p.key.verifier_key())
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then lets requests in flight finish within the timeout.
    /// The projection runner runs alongside and stops with the server: nothing it started
    /// outlives this call.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let grace = self.shutdown_timeout;
        let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let (store, commands, clock) = self.deadlines;
        let closing = store.clone();
        let deadlines = tokio::spawn(crate::deadlines::watch(
            store,
            commands,
            clock,
            until_stopped(stopped.clone()),
        ));
        let checkpointer = tokio::spawn(self.checkpointer.run(until_stopped(stopped.clone())));
        let dispatcher = self
            .dispatcher
            .map(|d| tokio::spawn(d.run(until_stopped(stopped.clone()))));
        let runner = tokio::spawn(self.runner.run(until_stopped(stopped)));
        let mut draining = stop.subscribe();
        let server =
            crate::http::serve::serve(self.listener, self.router, self.connections, async move {
                shutdown.await;
                let _ = stop.send(true);
            });
        let drain_deadline = async move {
            if draining.wait_for(|stop| *stop).await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let served = tokio::select! {
            () = server => Ok(()),
            _ = drain_deadline => {
                tracing::warn!("requests still in flight after the shutdown timeout; stopping");
                Ok(())
            }
        };
        // However the server ended, the shutdown sender is gone or has sent, so the runner stops.
        let _ = runner.await;
        let _ = deadlines.await;
        let _ = checkpointer.await;
        if let Some(dispatcher) = dispatcher {
            let _ = dispatcher.await;
        }
        // Nothing writes any more: a clean stop leaves the store whole (on SQLite, only the
        // database file).
        let close = std::time::Duration::from_secs(5);
        if tokio::time::timeout(close, closing.close()).await.is_err() {
            tracing::warn!("the store's connections did not close within 5 s; stopping anyway");
        }
        served
    }
}
