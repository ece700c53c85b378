//! Wiring and the service's two faces: [`Commands`] (the write side, through cqrs-es) and
//! [`IntentReader`] (what reads are served from).

use std::sync::Arc;

use async_trait::async_trait;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventStore};
use eucora_projections::event::{Actor, Role};
use eucora_projections::intent::IntentState;
use uuid::Uuid;

use crate::domain::{Command, DeploymentIntent, DomainError, DomainServices};
use crate::http::extract::sha256_hex;
pub use crate::store::ListFilter;
use crate::store::{is_unavailable, EventRepo, Store, StoreError, StreamCache};
use crate::telemetry::Telemetry;

/// How often a command that lost an optimistic-concurrency race is checked again.
const MAX_ATTEMPTS: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("the intent kept changing under this command; it was not applied")]
    Contention,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unexpected event store failure: {0}")]
    Internal(String),
}

impl From<AggregateError<DomainError>> for CommandError {
    fn from(e: AggregateError<DomainError>) -> Self {
        match e {
            AggregateError::UserError(e) => e.into(),
            AggregateError::AggregateConflict => CommandError::Contention,
            AggregateError::DatabaseConnectionError(e) => CommandError::Store(unavailable(e)),
            AggregateError::UnexpectedError(e) => match e.downcast_ref::<sqlx::Error>() {
                Some(sqlx) if is_unavailable(sqlx) => CommandError::Store(unavailable(e)),
                _ => CommandError::Internal(e.to_string()),
            },
            AggregateError::DeserializationError(e) => CommandError::Internal(e.to_string()),
        }
    }
}

/// The write side: cqrs-es's event store loads the aggregate, the aggregate handles the
/// command, and the store commits its events under optimistic concurrency.
///
/// This is `CqrsFramework::execute` without its in-process query dispatch (the projection
/// runner reads the global stream instead), and it keeps the aggregate it just advanced, so
/// a write answers with exactly the state it produced without reading the stream again.
pub struct Commands {
    events: PersistedEventStore<EventRepo, DeploymentIntent>,
    cache: Arc<StreamCache>,
    services: DomainServices,
    telemetry: Option<Arc<Telemetry>>,
}

impl Commands {
    pub fn new(store: &Store, services: DomainServices) -> Self {
        let repo = store.event_repo();
        Commands {
            cache: repo.cache(),
            events: PersistedEventStore::new_event_store(repo),
            services,
            telemetry: None,
        }
    }

    /// Records append durations in these process metrics.
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Applies `command` to intent `id` and returns the intent as the command left it. A
    /// command that loses a race is decided again against the new state, up to a bound; each
    /// attempt appends all its events or none.
    pub async fn execute(&self, id: Uuid, command: Command) -> Result<IntentState, CommandError> {
        let key = id.to_string();
        for _ in 0..MAX_ATTEMPTS {
            let from_cache = self.cache.contains(&key);
            let mut context = self.events.load_aggregate(&key).await?;
            let sink = EventSink::default();
            let decided = context
                .aggregate()
                .handle((id, command.clone()), &self.services, &sink)
                .await;
            if let Err(refusal) = decided {
                // A refusal decided on a cached stream is checked again on the stored one.
                if from_cache {
                    self.cache.invalidate(&key);
                    continue;
                }
                return Err(refusal.into());
            }
            let state = context.aggregate().state().cloned();
            let started = Instant::now();
            let committed = self
                .events
                .commit(sink.collect().await, context, HashMap::new())
                .await;
            if let Some(t) = &self.telemetry {
                let outcome = match &committed {
                    Ok(_) => "ok",
                    Err(AggregateError::AggregateConflict) => "conflict",
                    Err(_) => "error",
                };
                t.record_append(outcome, started.elapsed());
            }
            match committed {
                Ok(_) => {
                    return state.ok_or_else(|| {
                        CommandError::Internal("a command left no intent state".into())
                    })
                }
                Err(AggregateError::AggregateConflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommandError::Contention)
    }
}

fn unavailable(e: Box<dyn std::error::Error + Send + Sync>) -> StoreError {
    StoreError::Unavailable(sqlx::Error::Io(std::io::Error::other(e.to_string())))
}

/// One page of intents, in creation order, and where the next page starts.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<IntentState>,
    pub next_cursor: Option<i64>,
}

/// Where reads are served from.
#[async_trait]
pub trait IntentReader: Send + Sync {
    async fn get(&self, id: Uuid) -> Result<Option<IntentState>, StoreError>;
    async fn list(&self, filter: &ListFilter, after: i64, limit: usize)
        -> Result<Page, StoreError>;
}

/// One intent is folded from its own stream on request: one indexed read, always current, so a
/// client reads its own writes. Lists come from the persisted read model, which the projection
/// runner keeps within a second of the store.
pub struct ReadModel {
    store: Store,
}

impl ReadModel {
    pub fn new(store: Store) -> Self {
        ReadModel { store }
    }
}

#[async_trait]
impl IntentReader for ReadModel {
    async fn get(&self, id: Uuid) -> Result<Option<IntentState>, StoreError> {
        let events = self.store.intent_events(id).await?;
        Ok(IntentState::replay(events.iter().map(|e| &e.event)))
    }

    async fn list(
        &self,
        filter: &ListFilter,
        after: i64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        // One extra row tells whether another page follows.
        let mut rows = self
            .store
            .list_intents(filter, after, limit as i64 + 1)
            .await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok(Page {
            next_cursor: more.then(|| rows.last().map(|r| r.seq)).flatten(),
            items: rows.into_iter().map(|r| r.state).collect(),
        })
    }
}

/// Principals by token hash. A hit is kept for [`Principals::TTL`], so most requests skip a
/// database round trip; misses are not kept, so a new token works at once.
pub struct Principals {
    store: Store,
    cache: std::sync::Mutex<HashMap<String, (Actor, Instant)>>,
}

impl Principals {
    pub const TTL: Duration = Duration::from_secs(30);
    const MAX_CACHED: usize = 10_000;

    pub fn new(store: Store) -> Self {
        Principals {
            store,
            cache: Default::default(),
        }
    }

    pub async fn by_token_hash(&self, hash: &str) -> Result<Option<Actor>, StoreError> {
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((actor, at)) = cache.get(hash) {
                if at.elapsed() < Self::TTL {
                    return Ok(Some(actor.clone()));
                }
            }
        }
        let found = self.store.principal_by_token_hash(hash).await?;
        if let Some(actor) = &found {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= Self::MAX_CACHED {
                cache.retain(|_, (_, at)| at.elapsed() < Self::TTL);
            }
            if cache.len() < Self::MAX_CACHED {
                cache.insert(hash.to_string(), (actor.clone(), Instant::now()));
            }
        }
        Ok(found)
    }
}

/// Creates a principal with a new random bearer token and returns the token. Only its SHA-256 is
/// stored, so this is the one moment the token can be read.
pub async fn issue_token(store: &Store, subject: &str, role: Role) -> Result<String, StoreError> {
    use rand::RngCore;
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let token = format!("eucora_{}", hex::encode(secret));
    store
        .create_principal(subject, role, &sha256_hex(token.as_bytes()))
        .await?;
    Ok(token)
}

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub commands: Arc<Commands>,
    pub reads: Arc<dyn IntentReader>,
    pub principals: Arc<Principals>,
    pub metrics: Arc<crate::projector::Projector>,
    pub telemetry: Arc<Telemetry>,
}

/// A bound, ready-to-run server: `main` and the tests build it the same way, and port 0 works.
pub struct Application {
    listener: tokio::net::TcpListener,
    router: axum::Router,
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
        addr: std::net::SocketAddr,
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
        let store = Store::connect(&args.db.database_url, args.db.db_pool_size).await?;
        store.migrate().await?;
        let metrics = crate::projector::Projector::new(store.clone(), args.metrics_app_label_limit);
        let telemetry = Arc::new(
            Telemetry::new(store.backend(), metrics.clone()).map_err(StartError::Telemetry)?,
        );
        let commands = Commands::new(&store, DomainServices::new(clock, policy))
            .with_telemetry(telemetry.clone());
        let state = AppState {
            commands: Arc::new(commands),
            reads: Arc::new(ReadModel::new(store.clone())),
            principals: Arc::new(Principals::new(store.clone())),
            metrics,
            telemetry,
            store,
        };
        let limits = crate::http::Limits {
            body_bytes: args.body_limit,
            request_timeout: std::time::Duration::from_secs(args.request_timeout),
        };
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: args.listen,
                source,
            })?;
        tokio::spawn(state.metrics.clone().run());
        Ok(Application {
            listener,
            router: crate::http::router(state, limits),
            shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout),
        })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then lets requests in flight finish within the timeout.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let grace = self.shutdown_timeout;
        let server = axum::serve(self.listener, self.router).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = tx.send(());
        });
        let drain_deadline = async move {
            if rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = server => result,
            _ = drain_deadline => {
                tracing::warn!("requests still in flight after the shutdown timeout; stopping");
                Ok(())
            }
        }
    }
}
