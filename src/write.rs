//! The write side: commands through cqrs-es's event store and the `DeploymentIntent` aggregate,
//! committed under optimistic concurrency; after a commit it wakes the projection runner.

use std::sync::Arc;
use std::time::Instant;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventStore};
use eucora_projections::intent::IntentState;
use uuid::Uuid;

use crate::domain::{Command, DeploymentIntent, DomainError, DomainServices};
use crate::projection::RunnerStatus;
use crate::store::{event_metadata, is_unavailable, EventRepo, Store, StoreError, StreamCache};
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
    store: Store,
    events: PersistedEventStore<EventRepo, DeploymentIntent>,
    cache: Arc<StreamCache>,
    services: DomainServices,
    backend: crate::store::Backend,
    telemetry: Option<Arc<Telemetry>>,
    /// Woken after every commit, so the projections see it at once.
    runner: Option<Arc<RunnerStatus>>,
}

impl Commands {
    pub fn new(store: &Store, services: DomainServices) -> Self {
        let repo = store.event_repo();
        Commands {
            store: store.clone(),
            cache: repo.cache(),
            events: PersistedEventStore::new_event_store(repo),
            services,
            backend: store.backend(),
            telemetry: None,
            runner: None,
        }
    }

    /// Records append durations in these process metrics.
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Wakes this projection runner after each commit.
    pub fn waking(mut self, runner: Arc<RunnerStatus>) -> Self {
        self.runner = Some(runner);
        self
    }

    /// The index of the intent as a command left it: the global position of its last event,
    /// as the append reported it (or, for a state this process did not write, as stored). A
    /// store that does not answer leaves the answer without one rather than failing a committed
    /// command.
    pub async fn index_of(&self, intent: &IntentState) -> Option<i64> {
        let id = intent.id.to_string();
        if let Some(position) = self.cache.appended_position(&id, intent.stream_version) {
            return Some(position);
        }
        match self
            .store
            .event_position(intent.id, intent.stream_version)
            .await
        {
            Ok(index) => index,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a command's index");
                None
            }
        }
    }

    /// Applies `command` to intent `id` and returns the intent as the command left it. A
    /// command that loses a race is decided again against the new state, up to a bound; each
    /// attempt appends all its events or none.
    pub async fn execute(&self, id: Uuid, command: Command) -> Result<IntentState, CommandError> {
        self.execute_keyed(id, command, None).await
    }

    /// [`Commands::execute`], recording in each event's metadata the digest of the
    /// `Idempotency-Key` it was written under, so that a server taking over the key of one that
    /// died can tell whether this write committed.
    #[tracing::instrument(name = "command", skip_all, fields(
        otel.name = %format_args!("command {}", command.action.name()),
        command = command.action.name(),
        deployment_id = %id,
        otel.status_code = tracing::field::Empty,
    ))]
    pub async fn execute_keyed(
        &self,
        id: Uuid,
        command: Command,
        key_digest: Option<&str>,
    ) -> Result<IntentState, CommandError> {
        let outcome = self.attempts(id, command, key_digest).await;
        if let Err(CommandError::Store(_) | CommandError::Internal(_)) = &outcome {
            tracing::Span::current().record("otel.status_code", "ERROR");
        }
        outcome
    }

    async fn attempts(
        &self,
        id: Uuid,
        command: Command,
        key_digest: Option<&str>,
    ) -> Result<IntentState, CommandError> {
        let metadata = event_metadata(key_digest);
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
            let events = sink.collect().await;
            if events.is_empty() {
                // A command with nothing new to say (a report repeated exactly) appends nothing.
                return state.ok_or_else(|| {
                    CommandError::Internal("a command left no intent state".into())
                });
            }
            let span = tracing::info_span!(
                "store.append",
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                // OpenTelemetry's names for the two databases.
                db.system.name = match self.backend {
                    crate::store::Backend::Sqlite => "sqlite",
                    crate::store::Backend::Postgres => "postgresql",
                },
                db.operation.name = "append",
                events = events.len(),
                outcome = tracing::field::Empty,
            );
            let started = Instant::now();
            let committed = tracing::Instrument::instrument(
                self.events.commit(events, context, metadata.clone()),
                span.clone(),
            )
            .await;
            let outcome = match &committed {
                Ok(_) => "ok",
                Err(AggregateError::AggregateConflict) => "conflict",
                Err(_) => "error",
            };
            span.record("outcome", outcome);
            if outcome == "error" {
                span.record("otel.status_code", "ERROR");
            }
            if let Some(t) = &self.telemetry {
                t.record_append(outcome, started.elapsed());
            }
            match committed {
                Ok(_) => {
                    if let Some(runner) = &self.runner {
                        runner.wake();
                    }
                    return state.ok_or_else(|| {
                        CommandError::Internal("a command left no intent state".into())
                    });
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
