//! Everything EUCORA keeps, on SQLite (the embedded default) or PostgreSQL. All SQL lives under
//! this module, in named functions, split by concern:
//!
//! - this file: the connection (one writer and a reader pool on SQLite), migrations, errors;
//! - [`events`]: the events table behind cqrs-es, and one intent's stream;
//! - [`global`]: the global stream, in the one order every reader sees;
//! - [`log`]: the Merkle log over the global stream (tiles) and its signed checkpoints;
//! - [`checkpoints`]: where each persisted projection has read up to;
//! - [`intent_view`]: the intent read model that lists are served from;
//! - [`outbox`]: the actions owed to connectors, queued and claimed under leases;
//! - [`principals`] and [`idempotency`]: bearer-token principals and `Idempotency-Key` records.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

/// How many rows a SQLite reader's connection thread may read ahead of the task taking them
/// (sqlx's default is 50): with the default, the thread and the task woke each other for nearly
/// every row of a long read (the global stream before it was read in folded chunks; its
/// row-by-row fallback and the other long reads still are).
pub const READER_ROW_BUFFER: usize = 1024;

pub use checkpoints::Checkpoint;
pub use events::{EventRepo, StoredEvent, StreamCache};
pub use global::{Columns, StoredColumns, StreamColumns, StreamRow};
pub use idempotency::{Lease, Reservation};
pub use intent_view::{IntentRow, ListFilter, RetroApproval, ViewRepair};
pub use log::{LogTile, StoredCheckpoint, TILE};
pub use metadata::{
    event_metadata, metadata_member, IDEMPOTENCY_METADATA, TRACEPARENT_METADATA, TRACE_METADATA,
};
pub use outbox::{Backlog, Claimed, OutboxEntry, OutboxRow, Settled};
pub use principals::{AccessChange, AccessRefused, PrincipalRecord, PrincipalState};

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
    /// The database URL asks for something this build refuses.
    #[error("{0}")]
    Config(String),
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

mod append;
mod checkpoints;
mod copied;
mod events;
mod global;
mod governance;
mod idempotency;
mod intent_view;
mod log;
mod metadata;
mod outbox;
mod principals;
mod sessions;

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

/// The database named by a URL: `postgres://…` or `postgresql://…` for PostgreSQL, anything else
/// (`sqlite://path`, `sqlite:path` or a plain path) for a SQLite file, created on first start.
pub fn backend_of(url: &str) -> Backend {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    }
}

/// The `synchronous` level a SQLite `url` asks for with `?synchronous=full|extra|normal`; FULL when
/// it does not. FULL syncs the write-ahead log at every commit, so a command acknowledged with 2xx
/// survives power loss; NORMAL syncs only at checkpoints (a power loss may lose the last commits,
/// a process crash loses nothing). OFF is refused: the store is a system of record.
pub fn sqlite_synchronous(url: &str) -> Result<SqliteSynchronous, String> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut level = SqliteSynchronous::Full;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let Some(value) = pair.strip_prefix("synchronous=") else {
            continue;
        };
        level = match value.to_ascii_lowercase().as_str() {
            "full" => SqliteSynchronous::Full,
            "extra" => SqliteSynchronous::Extra,
            "normal" => SqliteSynchronous::Normal,
            _ => {
                return Err(format!(
                    "synchronous={value:?} in the database URL: use full (the default), extra or \
                     normal"
                ))
            }
        };
    }
    Ok(level)
}

fn sqlite_path(url: &str) -> &str {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    path.split('?').next().unwrap_or(path)
}

/// The file a SQLite `url` names (`None` for an in-memory database).
pub fn sqlite_file(url: &str) -> Option<&str> {
    let path = sqlite_path(url);
    (!path.is_empty() && !path.starts_with(":memory:")).then_some(path)
}

/// The file a SQLite `url` names, when it does not exist: commands that read an existing store
/// refuse it rather than leave a new, empty database behind.
pub fn missing_sqlite_file(url: &str) -> Option<&str> {
    let path = sqlite_path(url);
    let in_memory = path.is_empty() || path.starts_with(":memory:");
    (backend_of(url) == Backend::Sqlite && !in_memory && !std::path::Path::new(path).exists())
        .then_some(path)
}

impl Store {
    /// Closes every connection of the store, once nothing uses it any more. On SQLite the
    /// write-ahead log is checkpointed into the database and the journal set back to a rollback
    /// one, which removes the `-wal` and `-shm` files at once: a clean stop leaves only the
    /// database file.
    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite { writer, reader } => {
                reader.close().await;
                // Back to a rollback journal: the log is checkpointed into the database and its
                // files are removed now, not when the last connection's thread gets round to
                // closing (which can be after the process ends). The next open turns WAL on.
                // A reader's connection goes away on its own thread, so the switch may find
                // the database still open there (locked, or answering that it stayed `wal`):
                // it is asked again for up to two seconds.
                let mut mode = String::new();
                for _ in 0..100 {
                    match sqlx::query_scalar::<_, String>("PRAGMA journal_mode = DELETE")
                        .fetch_one(writer)
                        .await
                    {
                        Ok(now) if now.eq_ignore_ascii_case("delete") => {
                            mode = now;
                            break;
                        }
                        Ok(now) => mode = now,
                        Err(e) => mode = e.to_string(),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if !mode.eq_ignore_ascii_case("delete") {
                    tracing::warn!(%mode, "the SQLite write-ahead log is still in use at shutdown; it is kept");
                }
                writer.close().await;
            }
            Db::Postgres(pool) => pool.close().await,
        }
    }

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
                let synchronous = sqlite_synchronous(url).map_err(StoreError::Config)?;
                let options = SqliteConnectOptions::from_str("sqlite:")
                    .map_err(StoreError::Database)?
                    .filename(sqlite_path(url))
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(synchronous)
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
                    .connect_with(options.read_only(true).row_buffer_size(READER_ROW_BUFFER))
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

    /// SQLite's `synchronous` level on the writer (`FULL`, `EXTRA` or `NORMAL`), which decides
    /// whether a commit survives power loss; `None` on PostgreSQL.
    pub async fn sqlite_synchronous(&self) -> Result<Option<&'static str>, StoreError> {
        let Db::Sqlite { writer, .. } = &self.db else {
            return Ok(None);
        };
        let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(writer)
            .await?;
        Ok(Some(match level {
            0 => "OFF",
            1 => "NORMAL",
            2 => "FULL",
            _ => "EXTRA",
        }))
    }

    /// Answers when the database does.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_reader!(&self.db, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ())?);
        Ok(())
    }
}
