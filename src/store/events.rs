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
use sqlx::PgPool;
use uuid::Uuid;

use super::{is_unavailable, Db, Store, StoreError};
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
    cache: Arc<StreamCache>,
}

enum Repo {
    Sqlite(SqliteEventRepository),
    /// postgres-es loads streams; appends are [`append_postgres`].
    Postgres(PostgresEventRepository, PgPool),
}

/// Appends a command's events to PostgreSQL in one multi-row INSERT: atomic on its own, so one
/// round trip instead of postgres-es's BEGIN, an INSERT per event, and COMMIT. The primary key
/// (aggregate_type, aggregate_id, sequence) still decides a race: the loser gets 23505.
async fn append_postgres<A: Aggregate>(
    pool: &PgPool,
    events: &[SerializedEvent],
) -> Result<(), PersistenceError> {
    let column = |f: fn(&SerializedEvent) -> String| events.iter().map(f).collect::<Vec<_>>();
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence as i64).collect();
    sqlx::query(
        "INSERT INTO events
             (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT $1, id, seq, type, version, payload::json, metadata::json
           FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[])
             AS e(id, seq, type, version, payload, metadata)",
    )
    .bind(A::TYPE)
    .bind(column(|e| e.aggregate_id.clone()))
    .bind(sequences)
    .bind(column(|e| e.event_type.clone()))
    .bind(column(|e| e.event_version.clone()))
    .bind(column(|e| e.payload.to_string()))
    .bind(column(|e| e.metadata.to_string()))
    .execute(pool)
    .await
    .map_err(|e| {
        let conflict =
            matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"));
        if conflict {
            PersistenceError::OptimisticLockError
        } else if is_unavailable(&e) {
            PersistenceError::ConnectionError(Box::new(e))
        } else {
            PersistenceError::UnknownError(Box::new(e))
        }
    })?;
    Ok(())
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

    /// Adds committed events, or forgets the stream if they do not follow what is cached.
    fn append(&self, events: &[SerializedEvent]) {
        let Some(first) = events.first() else { return };
        let mut streams = self.lock();
        match streams.get_mut(&first.aggregate_id) {
            Some(cached) if cached.len() + 1 == first.sequence => cached.extend_from_slice(events),
            Some(_) => {
                streams.remove(&first.aggregate_id);
            }
            None => {}
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

/// SQLite reports a lost optimistic-concurrency race through the trigger that refuses an insert
/// over an existing stream version (migration 0004), or, without it, on our UNIQUE constraint as
/// 2067 (SQLITE_CONSTRAINT_UNIQUE); sqlite-es only knows the primary-key code.
fn map_sqlite_conflict(e: PersistenceError) -> PersistenceError {
    if let PersistenceError::UnknownError(inner) = &e {
        if let Some(sqlx::Error::Database(d)) = inner.downcast_ref::<sqlx::Error>() {
            if d.code().as_deref() == Some("2067")
                || d.message()
                    .contains("an event of this stream version exists")
            {
                return PersistenceError::OptimisticLockError;
            }
        }
    }
    e
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
            Repo::Postgres(r, _) => r.get_events::<A>(aggregate_id).await,
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
            Repo::Postgres(r, _) => r.get_last_events::<A>(aggregate_id, last_sequence).await,
        }?)
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        match &self.inner {
            Repo::Sqlite(r) => r.get_snapshot::<A>(aggregate_id).await,
            Repo::Postgres(r, _) => r.get_snapshot::<A>(aggregate_id).await,
        }
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let result = match &self.inner {
            Repo::Sqlite(r) => r
                .persist::<A>(events, snapshot_update)
                .await
                .map_err(map_sqlite_conflict),
            Repo::Postgres(_, pool) if snapshot_update.is_none() => {
                append_postgres::<A>(pool, events).await
            }
            Repo::Postgres(r, _) => r.persist::<A>(events, snapshot_update).await,
        };
        match &result {
            Ok(()) => self.cache.append(events),
            Err(_) => {
                if let Some(first) = events.first() {
                    self.cache.invalidate(&first.aggregate_id);
                }
            }
        }
        result
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        match &self.inner {
            Repo::Sqlite(r) => r.stream_events::<A>(aggregate_id).await,
            Repo::Postgres(r, _) => r.stream_events::<A>(aggregate_id).await,
        }
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        match &self.inner {
            Repo::Sqlite(r) => r.stream_all_events::<A>().await,
            Repo::Postgres(r, _) => r.stream_all_events::<A>().await,
        }
    }
}

impl Store {
    /// A cqrs-es repository over the events table, with a stream cache of its own.
    pub fn event_repo(&self) -> EventRepo {
        let inner = match &self.db {
            Db::Sqlite { writer, .. } => Repo::Sqlite(SqliteEventRepository::new(writer.clone())),
            Db::Postgres(pool) => {
                Repo::Postgres(PostgresEventRepository::new(pool.clone()), pool.clone())
            }
        };
        EventRepo {
            inner,
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
