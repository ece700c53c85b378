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
    let runner = Runner::new(store.clone(), BATCH);
    let (metrics, view) = MetricsProjection::new(app_label_limit, runner.status());
    let log = LogView::default();
    let runner = runner
        .register(MerkleLog::extending(log.clone()))
        .register(IntentView::persisted())
        .register(metrics);
    (runner, view, log)
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
        let store = Store::connect(&args.db.database_url, args.db.db_pool_size).await?;
        store.migrate().await?;
        let (runner, metrics_view, log) = serve_runner(&store, args.metrics_app_label_limit);
        let telemetry = Arc::new(
            Telemetry::new(store.backend(), runner.status()).map_err(StartError::Telemetry)?,
        );
        let commands = Commands::new(&store, DomainServices::new(clock.clone(), policy))
            .with_telemetry(telemetry.clone())
            .waking(runner.status());
        let commands = Arc::new(commands);
        let deadlines = (store.clone(), commands.clone(), clock);
        let state = AppState {
            commands,
            reads: Arc::new(ReadModel::new(store.clone())),
            principals: Arc::new(Principals::new(store.clone())),
            metrics: metrics_view,
            log,
            runner: runner.status(),
            telemetry,
            instance: Arc::from(uuid::Uuid::new_v4().to_string()),
            store,
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
            router: crate::http::router(state, limits),
            runner,
            deadlines,
            shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout),
        })
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
        let deadlines = tokio::spawn(crate::deadlines::watch(
            store,
            commands,
            clock,
            until_stopped(stopped.clone()),
        ));
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
        served
    }
}
