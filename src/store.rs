//! Everything EUCORA keeps, on SQLite (the embedded default) or PostgreSQL: the event store behind
//! cqrs-es, principals, and idempotency records. All SQL lives in this module, in named functions.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use eucora_projections::event::{Actor, DeploymentEvent, Ring, Role, Status};
use eucora_projections::integrity::{Seal, StoredRow};
use eucora_projections::intent::IntentState;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlite_es::SqliteEventRepository;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use uuid::Uuid;

use crate::domain::DeploymentIntent;

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the event at position {position} cannot be read: {reason}")]
    Corrupt { position: i64, reason: String },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            StoreError::Unavailable(e)
        } else {
            StoreError::Database(e)
        }
    }
}

/// Errors that mean "the database did not answer", as opposed to "the database said no".
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
    ) || matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}

/// One event as stored, with its place in the global stream.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub position: i64,
    pub sequence: i64,
    pub event: DeploymentEvent,
}

/// One event in the global stream, in the order every reader sees it, with its row as stored.
#[derive(Debug, Clone)]
pub struct GlobalEvent {
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The payload exactly as stored.
    pub payload: String,
    /// The metadata exactly as stored.
    pub metadata: String,
}

/// One event of the global stream as a projection that folds payloads reads it.
#[derive(Debug, Clone)]
pub struct GlobalPayload {
    pub position: i64,
    /// The payload exactly as stored.
    pub payload: String,
}

/// A stored payload parsed, or why it cannot be.
fn parse_payload(payload: &str) -> Result<DeploymentEvent, String> {
    serde_json::from_str(payload).map_err(|e| e.to_string())
}

impl GlobalPayload {
    pub fn parse(&self) -> Result<DeploymentEvent, String> {
        parse_payload(&self.payload)
    }
}

impl GlobalEvent {
    /// The payload parsed, or why it cannot be. Readers that only hash or forward the stored
    /// bytes (the sealer, the audit endpoint) never pay for it.
    pub fn parse(&self) -> Result<DeploymentEvent, String> {
        parse_payload(&self.payload)
    }

    /// The stored row, as the integrity chain hashes it.
    pub fn row(&self) -> StoredRow<'_> {
        StoredRow {
            position: self.position,
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            sequence: self.sequence,
            event_type: &self.event_type,
            event_version: &self.event_version,
            payload: &self.payload,
            metadata: &self.metadata,
        }
    }
}

/// What [`Store::replace_intent_view`] changed: rows written because they were missing or
/// differed from the rebuilt model, and rows removed because no intent has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewRepair {
    pub rewritten: u64,
    pub removed: u64,
}

/// A read-model row's state as `intent_view.state` holds it.
fn state_json(row: &IntentRow) -> String {
    serde_json::to_string(&row.state).unwrap_or_default()
}

type GlobalRow = (i64, String, String, i64, String, String, String, String);

/// Filters of the intent list.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub ring: Option<Ring>,
    pub app_name: Option<String>,
}

/// One row of the intent read model.
#[derive(Debug, Clone)]
pub struct IntentRow {
    /// Ordinal of the intent's creation event in the global order: the list's sort key.
    pub seq: i64,
    pub state: IntentState,
}

/// Where a persisted projection has read up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub position: i64,
    pub ordinal: i64,
}

/// What an `Idempotency-Key` reservation found.
#[derive(Debug, PartialEq)]
pub enum Reservation {
    /// The key is new and now held by this request.
    Reserved,
    /// The key was answered before, for the same request: replay this response.
    Replay { status: u16, body: String },
    /// The key was used for a different request.
    Mismatch,
    /// The first request with this key has not been answered yet.
    InFlight,
}

fn read_state(seq: i64, state: &str) -> Result<IntentState, StoreError> {
    serde_json::from_str(state).map_err(|e| StoreError::Corrupt {
        position: seq,
        reason: format!("intent read model row {seq}: {e}"),
    })
}

fn seal((ordinal, position, leaf_hash, chain_hash): (i64, i64, String, String)) -> Seal {
    Seal {
        ordinal,
        position,
        leaf_hash,
        chain_hash,
    }
}

/// Runs one expression on whichever pool reads this store (SQLite's readers, or PostgreSQL's
/// pool). Shared statements use `$1`, `$2`, … in order of first use, which both bind alike.
macro_rules! on_reader {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite { reader: $pool, .. } => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

/// Like `on_reader!`, on the pool that writes (SQLite's single writer).
macro_rules! on_writer {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite { writer: $pool, .. } => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

/// A stored idempotency record: request hash, response status and body (once answered).
type IdempotencyRow = (String, Option<i32>, Option<String>);

#[derive(Clone)]
enum Db {
    /// SQLite has one writer at a time: writes go through a one-connection pool, so they queue
    /// in-process instead of spinning on SQLITE_BUSY; reads use their own pool under WAL.
    Sqlite {
        writer: SqlitePool,
        reader: SqlitePool,
    },
    Postgres(PgPool),
}

#[derive(Clone)]
pub struct Store {
    db: Db,
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

/// SQLite reports a lost optimistic-concurrency race on our UNIQUE constraint as 2067
/// (SQLITE_CONSTRAINT_UNIQUE); sqlite-es only knows the primary-key code.
fn map_sqlite_conflict(e: PersistenceError) -> PersistenceError {
    if let PersistenceError::UnknownError(inner) = &e {
        if let Some(sqlx::Error::Database(d)) = inner.downcast_ref::<sqlx::Error>() {
            if d.code().as_deref() == Some("2067") {
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
        match &self.inner {
            Repo::Sqlite(r) => r.get_last_events::<A>(aggregate_id, last_sequence).await,
            Repo::Postgres(r, _) => r.get_last_events::<A>(aggregate_id, last_sequence).await,
        }
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

/// The database named by a URL: `postgres://…` or `postgresql://…` for PostgreSQL, anything else
/// (`sqlite://path`, `sqlite:path` or a plain path) for a SQLite file, created on first start.
pub fn backend_of(url: &str) -> Backend {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    }
}

fn sqlite_path(url: &str) -> &str {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    path.split('?').next().unwrap_or(path)
}

impl Store {
    /// Opens the database named by `url` (see [`backend_of`]).
    pub async fn connect(url: &str, pool_size: u32) -> Result<Store, StoreError> {
        let db = match backend_of(url) {
            Backend::Postgres => {
                let pool = PgPoolOptions::new()
                    .max_connections(pool_size.max(1))
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(url)
                    .await?;
                Db::Postgres(pool)
            }
            Backend::Sqlite => {
                let options = SqliteConnectOptions::from_str("sqlite:")
                    .map_err(StoreError::Database)?
                    .filename(sqlite_path(url))
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true);
                let writer = SqlitePoolOptions::new()
                    .max_connections(1)
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options.clone())
                    .await?;
                let reader = SqlitePoolOptions::new()
                    .max_connections(pool_size.clamp(1, 8))
                    .test_before_acquire(false)
                    .connect_with(options.read_only(true))
                    .await?;
                Db::Sqlite { writer, reader }
            }
        };
        Ok(Store { db })
    }

    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Sqlite { .. } => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Applies this build's migrations (`migrations/<backend>`); safe to run again.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.db {
            Db::Sqlite { writer, .. } => sqlx::migrate!("./migrations/sqlite").run(writer).await?,
            Db::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

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

    /// Answers when the database does.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_reader!(&self.db, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// How many events the store holds.
    pub async fn event_count(&self) -> Result<i64, StoreError> {
        let sql = "SELECT COUNT(*) FROM events";
        Ok(on_reader!(&self.db, pool => sqlx::query_scalar(sql).fetch_one(pool).await?))
    }

    /// One intent's stream, in order, with global positions.
    pub async fn intent_events(&self, id: Uuid) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = "SELECT position, sequence, CAST(payload AS TEXT) FROM events
                    WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence";
        let rows: Vec<(i64, i64, String)> = on_reader!(&self.db, pool => {
            sqlx::query_as(sql)
                .bind(DeploymentIntent::TYPE)
                .bind(id.to_string())
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(position, sequence, payload)| {
                let event = serde_json::from_str(&payload).map_err(|e| StoreError::Corrupt {
                    position,
                    reason: e.to_string(),
                })?;
                Ok(StoredEvent {
                    position,
                    sequence,
                    event,
                })
            })
            .collect()
    }

    /// The global stream after the event at `after` (0: from the very start, whatever positions
    /// the rows carry), at most `limit` events, each with its row as stored.
    ///
    /// Every committed event comes exactly once, in an order that never changes once read.
    /// SQLite: position order, which is commit order (one writer). PostgreSQL: positions are taken
    /// at insert, not commit, so only events of transactions older than every transaction still
    /// running (`pg_snapshot_xmin`) are read, ordered by (writing transaction, position). A later
    /// commit therefore always sorts after everything already read. Writers take no lock.
    pub async fn read_global(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<GlobalEvent>, StoreError> {
        let rows: Vec<GlobalRow> = self
            .read_global_columns(
                "position, aggregate_type, aggregate_id, sequence, event_type, event_version, \
                 payload, metadata",
                after,
                limit,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    position,
                    aggregate_type,
                    aggregate_id,
                    sequence,
                    event_type,
                    event_version,
                    payload,
                    metadata,
                )| {
                    GlobalEvent {
                        position,
                        aggregate_type,
                        aggregate_id,
                        sequence,
                        event_type,
                        event_version,
                        payload,
                        metadata,
                    }
                },
            )
            .collect())
    }

    /// The same stream as [`Store::read_global`], only each event's position and payload: all a
    /// projection that folds payloads needs, for about two thirds of the reading cost on both ends
    /// of the connection.
    pub async fn read_global_payloads(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<GlobalPayload>, StoreError> {
        let rows: Vec<(i64, String)> = self
            .read_global_columns("position, payload", after, limit)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(position, payload)| GlobalPayload { position, payload })
            .collect())
    }

    /// The global stream's order and paging (see [`Store::read_global`]) over some of the events
    /// table's columns, named in `columns`; JSON columns are read as their stored text.
    async fn read_global_columns<R>(
        &self,
        columns: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<R>, StoreError>
    where
        R: Send
            + Unpin
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        // "From the start" is its own statement: an `after = 0 OR …` condition would keep both
        // databases from using the index range scan, and every batch would sort the table.
        Ok(match (&self.db, after) {
            (Db::Sqlite { reader, .. }, 0) => {
                let sql = format!("SELECT {columns} FROM events ORDER BY position LIMIT ?1");
                sqlx::query_as(&sql).bind(limit).fetch_all(reader).await?
            }
            (Db::Sqlite { reader, .. }, _) => {
                let sql = format!(
                    "SELECT {columns} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
                );
                sqlx::query_as(&sql)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(reader)
                    .await?
            }
            (Db::Postgres(pool), after) => {
                let columns = columns
                    .replace("payload", "payload::text")
                    .replace("metadata", "metadata::text");
                let since = if after == 0 {
                    ""
                } else {
                    "AND (xact_id, position) > ((SELECT xact_id FROM events WHERE position = $2), $2)"
                };
                let sql = format!(
                    "SELECT {columns} FROM events
                      WHERE xact_id < pg_snapshot_xmin(pg_current_snapshot()) {since}
                      ORDER BY xact_id, position
                      LIMIT $1"
                );
                let query = sqlx::query_as(&sql).bind(limit);
                let query = if after == 0 { query } else { query.bind(after) };
                query.fetch_all(pool).await?
            }
        })
    }

    /// The last seal written, if any.
    pub async fn last_seal(&self) -> Result<Option<Seal>, StoreError> {
        let sql = "SELECT ordinal, position, leaf_hash, chain_hash FROM event_seals
                    ORDER BY ordinal DESC LIMIT 1";
        let row: Option<(i64, i64, String, String)> =
            on_reader!(&self.db, pool => sqlx::query_as(sql).fetch_optional(pool).await?);
        Ok(row.map(seal))
    }

    /// Seals from `ordinal` on, in order, at most `limit`.
    pub async fn seals_from(&self, ordinal: i64, limit: i64) -> Result<Vec<Seal>, StoreError> {
        let sql = "SELECT ordinal, position, leaf_hash, chain_hash FROM event_seals
                    WHERE ordinal >= $1 ORDER BY ordinal LIMIT $2";
        let rows: Vec<(i64, i64, String, String)> = on_reader!(&self.db, pool => {
            sqlx::query_as(sql).bind(ordinal).bind(limit).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(seal).collect())
    }

    /// Stores seals; an ordinal already sealed (by another process) is left as it is.
    pub async fn insert_seals(&self, seals: &[Seal]) -> Result<(), StoreError> {
        if seals.is_empty() {
            return Ok(());
        }
        match &self.db {
            // One statement over a JSON array of rows: a statement per row would cost a round
            // trip to sqlx's SQLite worker thread each.
            Db::Sqlite { writer, .. } => {
                let rows: Vec<_> = seals
                    .iter()
                    .map(|s| (s.ordinal, s.position, &s.leaf_hash, &s.chain_hash))
                    .collect();
                sqlx::query(
                    "INSERT INTO event_seals (ordinal, position, leaf_hash, chain_hash)
                     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3
                       FROM json_each(?1) WHERE true
                     ON CONFLICT DO NOTHING",
                )
                .bind(serde_json::to_string(&rows).unwrap_or_default())
                .execute(writer)
                .await?;
            }
            Db::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO event_seals (ordinal, position, leaf_hash, chain_hash)
                     SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[])
                     ON CONFLICT DO NOTHING",
                )
                .bind(seals.iter().map(|s| s.ordinal).collect::<Vec<_>>())
                .bind(seals.iter().map(|s| s.position).collect::<Vec<_>>())
                .bind(
                    seals
                        .iter()
                        .map(|s| s.leaf_hash.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    seals
                        .iter()
                        .map(|s| s.chain_hash.as_str())
                        .collect::<Vec<_>>(),
                )
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// Whether an event with this global position exists.
    pub async fn has_position(&self, position: i64) -> Result<bool, StoreError> {
        let sql = "SELECT EXISTS (SELECT 1 FROM events WHERE position = $1)";
        Ok(
            on_reader!(&self.db, pool => sqlx::query_scalar(sql).bind(position).fetch_one(pool).await?),
        )
    }

    /// The checkpoint of a persisted projection (zero before its first batch).
    pub async fn checkpoint(&self, projection: &str) -> Result<Checkpoint, StoreError> {
        let sql = "SELECT position, ordinal FROM projection_checkpoints WHERE projection = $1";
        let row: Option<(i64, i64)> = on_reader!(&self.db, pool => {
            sqlx::query_as(sql).bind(projection).fetch_optional(pool).await?
        });
        Ok(
            row.map_or_else(Checkpoint::default, |(position, ordinal)| Checkpoint {
                position,
                ordinal,
            }),
        )
    }

    /// Empties the intent read model and its checkpoint, for a rebuild from position 0.
    pub async fn reset_intent_view(&self, projection: &str) -> Result<(), StoreError> {
        on_writer!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM intent_view").execute(&mut *tx).await?;
            sqlx::query("DELETE FROM projection_checkpoints WHERE projection = $1")
                .bind(projection)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?
        });
        Ok(())
    }

    /// Makes the intent read model exactly `rows`, with `checkpoint`, writing only the rows that
    /// differ from what is stored: an unchanged read model costs a read, not a rewrite, and what
    /// did differ is reported. Rows that differ or should not be there are deleted first, then the
    /// right ones written, then the checkpoint set. A runner that works meanwhile only moves rows
    /// forward from the checkpoint, so it cannot leave the model wrong.
    pub async fn replace_intent_view(
        &self,
        projection: &str,
        rows: &[IntentRow],
        checkpoint: Checkpoint,
    ) -> Result<ViewRepair, StoreError> {
        const PAGE: usize = 5000;
        let index: HashMap<String, usize> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| (row.state.id.to_string(), i))
            .collect();
        let mut current = vec![false; rows.len()];
        let mut unwanted: Vec<String> = Vec::new();
        let mut after = String::new();
        loop {
            let sql = "SELECT id, seq, state FROM intent_view WHERE id > $1 ORDER BY id LIMIT $2";
            let page: Vec<(String, i64, String)> = on_reader!(&self.db, pool => {
                sqlx::query_as(sql).bind(&after).bind(PAGE as i64).fetch_all(pool).await?
            });
            let Some((last, _, _)) = page.last() else {
                break;
            };
            after = last.clone();
            for (id, seq, state) in page {
                match index.get(&id) {
                    Some(&i) if rows[i].seq == seq && state == state_json(&rows[i]) => {
                        current[i] = true
                    }
                    _ => unwanted.push(id),
                }
            }
        }
        let stale: Vec<&IntentRow> = rows
            .iter()
            .zip(&current)
            .filter(|(_, current)| !**current)
            .map(|(row, _)| row)
            .collect();
        let removed = unwanted
            .iter()
            .filter(|id| !index.contains_key(id.as_str()))
            .count() as u64;
        for part in unwanted.chunks(PAGE) {
            on_writer!(&self.db, pool => {
                let list = serde_json::to_string(part).unwrap_or_default();
                let sql = match self.backend() {
                    Backend::Sqlite => {
                        "DELETE FROM intent_view WHERE id IN (SELECT value FROM json_each($1))"
                    }
                    Backend::Postgres => {
                        "DELETE FROM intent_view WHERE id IN (SELECT json_array_elements_text($1::json))"
                    }
                };
                sqlx::query(sql).bind(list).execute(pool).await?;
            });
        }
        for part in stale.chunks(PAGE) {
            let part: Vec<IntentRow> = part.iter().map(|&row| row.clone()).collect();
            self.save_intents(projection, &part, Checkpoint::default())
                .await?;
        }
        // Exactly here, even back: rows a runner had moved past the rebuilt ones were replaced,
        // and it must apply those events again.
        self.set_checkpoint(projection, checkpoint).await?;
        Ok(ViewRepair {
            rewritten: stale.len() as u64,
            removed,
        })
    }

    /// Sets a projection's checkpoint, forward or back.
    async fn set_checkpoint(
        &self,
        projection: &str,
        checkpoint: Checkpoint,
    ) -> Result<(), StoreError> {
        on_writer!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM projection_checkpoints WHERE projection = $1")
                .bind(projection)
                .execute(&mut *tx)
                .await?;
            advance_checkpoint(&mut tx, projection, checkpoint).await?;
            tx.commit().await?
        });
        Ok(())
    }

    /// Read-model rows of these intents, by id.
    pub async fn intent_rows(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, IntentRow>, StoreError> {
        let mut rows = HashMap::new();
        if ids.is_empty() {
            return Ok(rows);
        }
        let found: Vec<(String, i64, String)> = match &self.db {
            Db::Sqlite { reader, .. } => {
                let list = serde_json::to_string(ids).unwrap_or_default();
                sqlx::query_as(
                    "SELECT id, seq, state FROM intent_view WHERE id IN (SELECT value FROM json_each(?1))",
                )
                .bind(list)
                .fetch_all(reader)
                .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_as("SELECT id, seq, state FROM intent_view WHERE id = ANY($1)")
                    .bind(ids)
                    .fetch_all(pool)
                    .await?
            }
        };
        for (id, seq, state) in found {
            rows.insert(
                id,
                IntentRow {
                    seq,
                    state: read_state(seq, &state)?,
                },
            );
        }
        Ok(rows)
    }

    /// Stores changed read-model rows and the projection's checkpoint in one transaction. A row
    /// only moves forward (to a higher stream version) and so does the checkpoint, so runners in
    /// several processes may apply the same batch.
    pub async fn save_intents(
        &self,
        projection: &str,
        rows: &[IntentRow],
        checkpoint: Checkpoint,
    ) -> Result<(), StoreError> {
        let upsert = "INSERT INTO intent_view (id, seq, status, current_ring, app_name, stream_version, state)
                      VALUES ($1, $2, $3, $4, $5, $6, $7)
                      ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                          current_ring = excluded.current_ring, stream_version = excluded.stream_version,
                          state = excluded.state
                      WHERE excluded.stream_version > intent_view.stream_version";
        let state = state_json;
        match &self.db {
            // Every row in one statement, over a JSON array of rows.
            Db::Sqlite { writer, .. } => {
                let mut tx = writer.begin().await?;
                if !rows.is_empty() {
                    let bulk = upsert.replace(
                        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        "SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,
                                value ->> 5, value ->> 6
                           FROM json_each($1) WHERE true",
                    );
                    let json: Vec<_> = rows
                        .iter()
                        .map(|r| {
                            (
                                r.state.id.to_string(),
                                r.seq,
                                r.state.status.as_str(),
                                r.state.current_ring.as_str(),
                                &r.state.app_name,
                                r.state.stream_version as i64,
                                state(r),
                            )
                        })
                        .collect();
                    sqlx::query(&bulk)
                        .bind(serde_json::to_string(&json).unwrap_or_default())
                        .execute(&mut *tx)
                        .await?;
                }
                advance_checkpoint(&mut tx, projection, checkpoint).await?;
                tx.commit().await?;
            }
            // Every row in one statement, as arrays.
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                if !rows.is_empty() {
                    let bulk = upsert.replace(
                        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        "SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[],
                                             $5::text[], $6::bigint[], $7::text[])",
                    );
                    let column =
                        |f: fn(&IntentRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
                    sqlx::query(&bulk)
                        .bind(column(|r| r.state.id.to_string()))
                        .bind(rows.iter().map(|r| r.seq).collect::<Vec<_>>())
                        .bind(column(|r| r.state.status.as_str().to_string()))
                        .bind(column(|r| r.state.current_ring.as_str().to_string()))
                        .bind(column(|r| r.state.app_name.clone()))
                        .bind(
                            rows.iter()
                                .map(|r| r.state.stream_version as i64)
                                .collect::<Vec<_>>(),
                        )
                        .bind(rows.iter().map(state).collect::<Vec<_>>())
                        .execute(&mut *tx)
                        .await?;
                }
                advance_checkpoint(&mut tx, projection, checkpoint).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Intents in creation order after `after` (a `seq`), filtered, at most `limit`.
    pub async fn list_intents(
        &self,
        filter: &ListFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<IntentRow>, StoreError> {
        let sql = "SELECT seq, state FROM intent_view
                    WHERE seq > $1
                      AND (CAST($2 AS TEXT) IS NULL OR status = $2)
                      AND (CAST($3 AS TEXT) IS NULL OR current_ring = $3)
                      AND (CAST($4 AS TEXT) IS NULL OR app_name = $4)
                    ORDER BY seq LIMIT $5";
        let rows: Vec<(i64, String)> = on_reader!(&self.db, pool => {
            sqlx::query_as(sql)
                .bind(after)
                .bind(filter.status.map(Status::as_str))
                .bind(filter.ring.map(Ring::as_str))
                .bind(filter.app_name.as_deref())
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(seq, state)| {
                Ok(IntentRow {
                    seq,
                    state: read_state(seq, &state)?,
                })
            })
            .collect()
    }

    /// Records a principal known by the SHA-256 of its token.
    pub async fn create_principal(
        &self,
        subject: &str,
        role: Role,
        token_hash: &str,
    ) -> Result<Uuid, StoreError> {
        let id = Uuid::now_v7();
        match &self.db {
            Db::Sqlite { writer, .. } => {
                sqlx::query(
                    "INSERT INTO principals (id, subject, role, token_hash, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .bind(id.to_string())
                .bind(subject)
                .bind(role.as_str())
                .bind(token_hash)
                .bind(Utc::now().to_rfc3339())
                .execute(writer)
                .await?;
            }
            Db::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO principals (id, subject, role, token_hash, created_at)
                     VALUES ($1, $2, $3, $4, now())",
                )
                .bind(id)
                .bind(subject)
                .bind(role.as_str())
                .bind(token_hash)
                .execute(pool)
                .await?;
            }
        }
        Ok(id)
    }

    /// The principal whose token hashes to `token_hash`.
    pub async fn principal_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<Actor>, StoreError> {
        let sql = "SELECT subject, role FROM principals WHERE token_hash = $1";
        let row: Option<(String, String)> = on_reader!(&self.db, pool => {
            sqlx::query_as(sql).bind(token_hash).fetch_optional(pool).await?
        });
        Ok(row.and_then(|(subject, role)| Role::parse(&role).map(|role| Actor { subject, role })))
    }

    /// Holds `key` for this subject's request, or says what an earlier request with it found.
    pub async fn reserve_idempotency_key(
        &self,
        subject: &str,
        key: &str,
        request_hash: &str,
    ) -> Result<Reservation, StoreError> {
        let reserve = "INSERT INTO idempotency_keys (subject, key, request_hash, created_at)
                       VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
        let look = "SELECT request_hash, status, response FROM idempotency_keys
                     WHERE subject = $1 AND key = $2";
        let now = Utc::now();
        let (inserted, existing): (u64, Option<IdempotencyRow>) = on_writer!(&self.db, pool => {
            let done = sqlx::query(reserve)
                .bind(subject)
                .bind(key)
                .bind(request_hash)
                .bind(now)
                .execute(pool)
                .await?;
            let existing = sqlx::query_as(look).bind(subject).bind(key).fetch_optional(pool).await?;
            (done.rows_affected(), existing)
        });
        if inserted == 1 {
            return Ok(Reservation::Reserved);
        }
        Ok(match existing {
            None => Reservation::InFlight,
            Some((hash, _, _)) if hash != request_hash => Reservation::Mismatch,
            Some((_, Some(status), Some(body))) => Reservation::Replay {
                status: status as u16,
                body,
            },
            Some(_) => Reservation::InFlight,
        })
    }

    /// Stores the answer to a reserved key, for replay.
    pub async fn complete_idempotency_key(
        &self,
        subject: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        let sql = "UPDATE idempotency_keys SET status = $1, response = $2
                    WHERE subject = $3 AND key = $4";
        on_writer!(&self.db, pool => {
            sqlx::query(sql)
                .bind(status as i32)
                .bind(body)
                .bind(subject)
                .bind(key)
                .execute(pool)
                .await
                .map(|_| ())?
        });
        Ok(())
    }

    /// Frees a reserved key whose request failed without appending, so a retry can run.
    pub async fn release_idempotency_key(
        &self,
        subject: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        let sql = "DELETE FROM idempotency_keys WHERE subject = $1 AND key = $2 AND status IS NULL";
        on_writer!(&self.db, pool => {
            sqlx::query(sql).bind(subject).bind(key).execute(pool).await.map(|_| ())?
        });
        Ok(())
    }

    /// Benchmark reference: one plain ordered scan of every event row, in the global stream's
    /// order, as a single query; returns (rows, bytes of payload and metadata).
    pub async fn bench_scan_events(&self) -> Result<(u64, u64), StoreError> {
        use futures_util::TryStreamExt;
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut count = |r: (i64, String, String, i64, String, String, String, String)| {
            rows += 1;
            bytes += (r.6.len() + r.7.len()) as u64;
        };
        match &self.db {
            Db::Sqlite { reader, .. } => {
                let mut stream = sqlx::query_as(
                    "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version,
                            payload, metadata FROM events ORDER BY position",
                )
                .fetch(reader);
                while let Some(row) = stream.try_next().await? {
                    count(row);
                }
            }
            Db::Postgres(pool) => {
                let mut stream = sqlx::query_as(
                    "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version,
                            payload::text, metadata::text FROM events ORDER BY xact_id, position",
                )
                .fetch(pool);
                while let Some(row) = stream.try_next().await? {
                    count(row);
                }
            }
        }
        Ok((rows, bytes))
    }

    /// Benchmark reference: creates an empty table for raw single-row inserts.
    pub async fn bench_reset_raw_table(&self) -> Result<(), StoreError> {
        let (drop, create) = match self.backend() {
            Backend::Sqlite => (
                "DROP TABLE IF EXISTS bench_raw",
                "CREATE TABLE bench_raw (id INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT NOT NULL)",
            ),
            Backend::Postgres => (
                "DROP TABLE IF EXISTS bench_raw",
                "CREATE TABLE bench_raw (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload json NOT NULL)",
            ),
        };
        match &self.db {
            Db::Sqlite { writer, .. } => {
                sqlx::query(drop).execute(writer).await?;
                sqlx::query(create).execute(writer).await?;
            }
            Db::Postgres(pool) => {
                sqlx::query(drop).execute(pool).await?;
                sqlx::query(create).execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Benchmark reference: one durable single-row INSERT, in its own transaction.
    pub async fn bench_insert_raw(&self, payload: &str) -> Result<(), StoreError> {
        match &self.db {
            Db::Sqlite { writer, .. } => {
                sqlx::query("INSERT INTO bench_raw (payload) VALUES (?1)")
                    .bind(payload)
                    .execute(writer)
                    .await?;
            }
            Db::Postgres(pool) => {
                sqlx::query("INSERT INTO bench_raw (payload) VALUES ($1::json)")
                    .bind(payload)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Moves a persisted projection's checkpoint forward (never back), inside the caller's
/// transaction. One statement for both backends.
async fn advance_checkpoint<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    projection: &str,
    checkpoint: Checkpoint,
) -> Result<(), StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query(
        "INSERT INTO projection_checkpoints (projection, position, ordinal) VALUES ($1, $2, $3)
         ON CONFLICT (projection) DO UPDATE SET position = excluded.position, ordinal = excluded.ordinal
         WHERE excluded.ordinal > projection_checkpoints.ordinal",
    )
    .bind(projection)
    .bind(checkpoint.position)
    .bind(checkpoint.ordinal)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
