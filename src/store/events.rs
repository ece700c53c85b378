//! The events table: the cqrs-es repository over it (with a write-through stream cache) and one
//! intent's stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use eucora_projections::decode::{decode, upcast_payload};
use eucora_projections::event::DeploymentEvent;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlite_es::SqliteEventRepository;
use uuid::Uuid;

use super::append::GroupCommit;
use super::{Db, Store, StoreError};
use crate::domain::DeploymentIntent;

/// One event as stored, with its place in the global stream.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub position: i64,
    pub sequence: i64,
    pub event: DeploymentEvent,
    /// The trace id in the event's metadata (`super::TRACE_METADATA`), if it has one.
    pub trace_id: Option<String>,
}

/// The events table both cqrs-es repositories read and write, behind one type, with a
/// write-through cache of the streams this process has loaded or written.
pub struct EventRepo {
    inner: Repo,
    appender: GroupCommit,
    cache: Arc<StreamCache>,
}

enum Repo {
    Sqlite(SqliteEventRepository),
    Postgres(PostgresEventRepository),
}

/// Streams by aggregate id, as this process last loaded or wrote them.
///
/// It saves the load before each command. The database stays the arbiter: a stream written by
/// another process makes a command from a stale entry lose its optimistic-concurrency race,
/// which drops the entry, and `Commands` re-checks a refusal decided on a cached stream against
/// the database before answering with it.
#[derive(Default)]
pub struct StreamCache {
    streams: Mutex<HashMap<String, Vec<SerializedEvent>>>,
    /// The global position of the last event this process appended to each stream, by id, with
    /// its stream version: the index a command answers with, without asking the database.
    last_appended: Mutex<HashMap<String, (u64, i64)>>,
}

impl StreamCache {
    const MAX_STREAMS: usize = 10_000;

    fn get(&self, id: &str) -> Option<Vec<SerializedEvent>> {
        self.lock().get(id).cloned()
    }

    fn put(&self, id: &str, events: Vec<SerializedEvent>) {
        let mut streams = self.lock();
        if streams.len() >= Self::MAX_STREAMS {
            streams.clear();
        }
        streams.insert(id.to_string(), events);
    }

    /// Adds committed events (at these global positions), or forgets the stream if they do not
    /// follow what is cached.
    fn append(&self, events: &[SerializedEvent], positions: &[i64]) {
        let (Some(first), Some(last), Some(position)) =
            (events.first(), events.last(), positions.last())
        else {
            return;
        };
        {
            let mut appended = self.last_appended.lock().unwrap_or_else(|e| e.into_inner());
            if appended.len() >= Self::MAX_STREAMS {
                appended.clear();
            }
            appended.insert(
                first.aggregate_id.clone(),
                (last.sequence as u64, *position),
            );
        }
        let mut streams = self.lock();
        match streams.get_mut(&first.aggregate_id) {
            Some(cached) if cached.len() + 1 == first.sequence => cached.extend_from_slice(events),
            Some(_) => {
                streams.remove(&first.aggregate_id);
            }
            None => {}
        }
    }

    /// The global position of stream `id`'s event `sequence`, if it is the last this process
    /// appended there.
    pub fn appended_position(&self, id: &str, sequence: u64) -> Option<i64> {
        let appended = self.last_appended.lock().unwrap_or_else(|e| e.into_inner());
        match appended.get(id) {
            Some(&(last, position)) if last == sequence => Some(position),
            _ => None,
        }
    }

    /// Whether a load of this stream would be served from the cache.
    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Forgets a stream, so that the next load reads the database.
    pub fn invalidate(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<SerializedEvent>>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl EventRepo {
    /// The cache this repository reads through, for the command runner's re-checks.
    pub fn cache(&self) -> Arc<StreamCache> {
        self.cache.clone()
    }
}

/// The write side's load path through the one decode point's upcasters: each loaded event as its
/// type's current version, so the aggregate only ever folds current events.
fn upcast(events: Vec<SerializedEvent>) -> Result<Vec<SerializedEvent>, PersistenceError> {
    events
        .into_iter()
        .map(|mut e| {
            let (payload, version) = upcast_payload(&e.event_type, &e.event_version, e.payload)
                .map_err(|err| PersistenceError::DeserializationError(Box::new(err)))?;
            e.payload = payload;
            e.event_version = version.to_string();
            Ok(e)
        })
        .collect()
}

impl PersistedEventRepository for EventRepo {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        if let Some(events) = self.cache.get(aggregate_id) {
            return Ok(events);
        }
        let events = match &self.inner {
            Repo::Sqlite(r) => r.get_events::<A>(aggregate_id).await,
            Repo::Postgres(r) => r.get_events::<A>(aggregate_id).await,
        }?;
        let events = upcast(events)?;
        if !events.is_empty() {
            self.cache.put(aggregate_id, events.clone());
        }
        Ok(events)
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        upcast(match &self.inner {
            Repo::Sqlite(r) => r.get_last_events::<A>(aggregate_id, last_sequence).await,
            Repo::Postgres(r) => r.get_last_events::<A>(aggregate_id, last_sequence).await,
        }?)
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        match &self.inner {
            Repo::Sqlite(r) => r.get_snapshot::<A>(aggregate_id).await,
            Repo::Postgres(r) => r.get_snapshot::<A>(aggregate_id).await,
        }
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        if snapshot_update.is_some() {
            // Commands runs the event store as the source of truth: no snapshot is ever taken.
            return Err(PersistenceError::UnknownError(
                "aggregate snapshots are not kept".into(),
            ));
        }
        let Some(first) = events.first() else {
            return Ok(());
        };
        let result = self.appender.append(A::TYPE, events).await;
        match result {
            Ok(positions) => {
                self.cache.append(events, &positions);
                Ok(())
            }
            Err(e) => {
                self.cache.invalidate(&first.aggregate_id);
                Err(e)
            }
        }
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        match &self.inner {
            Repo::Sqlite(r) => r.stream_events::<A>(aggregate_id).await,
            Repo::Postgres(r) => r.stream_events::<A>(aggregate_id).await,
        }
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        match &self.inner {
            Repo::Sqlite(r) => r.stream_all_events::<A>().await,
            Repo::Postgres(r) => r.stream_all_events::<A>().await,
        }
    }
}

impl Store {
    /// A cqrs-es repository over the events table, with a stream cache of its own.
    pub fn event_repo(&self) -> EventRepo {
        let inner = match &self.db {
            Db::Sqlite { writer, .. } => Repo::Sqlite(SqliteEventRepository::new(writer.clone())),
            Db::Postgres(pool) => Repo::Postgres(PostgresEventRepository::new(pool.clone())),
        };
        EventRepo {
            inner,
            appender: GroupCommit::new(self.db.clone()),
            cache: Arc::default(),
        }
    }

    /// How many events the store holds.
    pub async fn event_count(&self) -> Result<i64, StoreError> {
        let sql = "SELECT COUNT(*) FROM events";
        Ok(on_reader!(&self.db, pool => sqlx::query_scalar(sql).fetch_one(pool).await?))
    }

    /// The global position of an intent's event `sequence` (its stream version), if stored: the
    /// index a command's answer carries, which fresh reads wait for.
    pub async fn event_position(&self, id: Uuid, sequence: u64) -> Result<Option<i64>, StoreError> {
        let sql = "SELECT position FROM events
                    WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3";
        Ok(on_reader!(&self.db, pool => {
            sqlx::query_scalar(sql)
                .bind(DeploymentIntent::TYPE)
                .bind(id.to_string())
                .bind(sequence as i64)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// One intent's stream, in order, with global positions.
    pub async fn intent_events(&self, id: Uuid) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = "SELECT position, sequence, event_type, event_version, CAST(payload AS TEXT),
                          CAST(metadata AS TEXT)
                     FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence";
        type Row = (i64, i64, String, String, String, String);
        let rows: Vec<Row> = on_reader!(&self.db, pool => {
            sqlx::query_as(sql)
                .bind(DeploymentIntent::TYPE)
                .bind(id.to_string())
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(
                |(position, sequence, event_type, event_version, payload, metadata)| {
                    let event = decode(&event_type, &event_version, &payload).map_err(|e| {
                        StoreError::Corrupt {
                            position,
                            reason: e.to_string(),
                        }
                    })?;
                    Ok(StoredEvent {
                        position,
                        sequence,
                        event,
                        trace_id: super::metadata_member(&metadata, super::TRACE_METADATA),
                    })
                },
            )
            .collect()
    }

    /// The first event (`DeploymentCreated`) of each of these intents, by id, in one statement:
    /// what a page listing many intents needs of their creation (the risk factors).
    pub async fn creation_events(
        &self,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, DeploymentEvent>, StoreError> {
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        type Row = (i64, String, String, String, String);
        // One indexed lookup per id: PostgreSQL takes the ids as an array (a JSON list would be
        // joined by a scan), SQLite as a JSON list.
        let rows: Vec<Row> = match &self.db {
            super::Db::Sqlite { reader, .. } => {
                sqlx::query_as(
                    "SELECT position, aggregate_id, event_type, event_version, payload
                       FROM events WHERE aggregate_type = $1 AND sequence = 1
                        AND aggregate_id IN (SELECT value FROM json_each($2))",
                )
                .bind(DeploymentIntent::TYPE)
                .bind(serde_json::to_string(&ids).unwrap_or_default())
                .fetch_all(reader)
                .await?
            }
            super::Db::Postgres(pool) => sqlx::query_as(
                "SELECT position, aggregate_id, event_type, event_version, CAST(payload AS TEXT)
                       FROM events WHERE aggregate_type = $1 AND sequence = 1
                        AND aggregate_id = ANY($2)",
            )
            .bind(DeploymentIntent::TYPE)
            .bind(&ids)
            .fetch_all(pool)
            .await?,
        };
        rows.into_iter()
            .filter_map(|(position, id, event_type, event_version, payload)| {
                let id = Uuid::parse_str(&id).ok()?;
                Some(
                    decode(&event_type, &event_version, &payload)
                        .map(|event| (id, event))
                        .map_err(|e| StoreError::Corrupt {
                            position,
                            reason: e.to_string(),
                        }),
                )
            })
            .collect()
    }

    /// The stream version of the last event of intent `id` written under the idempotency key
    /// whose digest is `key_digest` (in the events' metadata), if any committed.
    pub async fn idempotent_write(
        &self,
        id: &str,
        key_digest: &str,
    ) -> Result<Option<i64>, StoreError> {
        let sql = match self.backend() {
            super::Backend::Sqlite => {
                "SELECT MAX(sequence) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2
                   AND metadata ->> '$.idempotency_key' = $3"
            }
            super::Backend::Postgres => {
                "SELECT MAX(sequence) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2
                   AND metadata ->> 'idempotency_key' = $3"
            }
        };
        Ok(on_reader!(&self.db, pool => {
            sqlx::query_scalar(sql)
                .bind(DeploymentIntent::TYPE)
                .bind(id)
                .bind(key_digest)
                .fetch_one(pool)
                .await?
        }))
    }
}
