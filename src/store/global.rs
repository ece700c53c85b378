//! The global stream: every committed event once, in an order that never changes once read.

use std::collections::HashMap;
use std::sync::OnceLock;

use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};

use eucora_projections::decode::{decode_stream, DecodeError, StreamEvent};
use eucora_projections::integrity::StoredRow;
use uuid::Uuid;

use crate::domain::DeploymentIntent;

use super::{Checkpoint, Db, Store, StoreError};

/// The statement reading `columns` of the global stream, in its order, from the start or after
/// a position (`$1`/`?1` the limit, `$2`/`?2` the position); made once for the process, so that
/// a stream of rows borrows nothing but the pool.
///
/// "From the start" is its own statement: an `after = 0 OR …` condition would keep both
/// databases from using the index range scan, and every batch would sort the table. JSON
/// columns are read as their stored text.
fn global_sql(columns: Columns, postgres: bool, after: bool) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    const EVENTS: &str = "position, event_type, event_version, payload";
    // Four statements a column set, in the order the index below reads them.
    let all = SQL.get_or_init(|| {
        let mut all = Vec::new();
        for columns in [Columns::Events, Columns::Streams, Columns::Stored] {
            let list = match columns {
                Columns::Events => EVENTS.to_string(),
                Columns::Streams => format!("{EVENTS}, aggregate_type, aggregate_id, sequence"),
                Columns::Stored => {
                    format!("{EVENTS}, aggregate_id, sequence, aggregate_type, metadata")
                }
            };
            let text = list
                .replace("payload", "payload::text")
                .replace("metadata", "metadata::text");
            all.push(format!(
                "SELECT {list} FROM events ORDER BY position LIMIT ?1"
            ));
            all.push(format!(
                "SELECT {list} FROM events WHERE position > ?2 ORDER BY position LIMIT ?1"
            ));
            for since in [
                "",
                "AND (xact_id, position) > ((SELECT xact_id FROM events WHERE position = $2), $2)",
            ] {
                all.push(format!(
                    "SELECT {text} FROM events
                      WHERE xact_id < pg_snapshot_xmin(pg_current_snapshot()) {since}
                      ORDER BY xact_id, position
                      LIMIT $1"
                ));
            }
        }
        all
    });
    &all[columns as usize * 4 + usize::from(postgres) * 2 + usize::from(after)]
}

/// Which columns of the global stream a reader needs; each level reads those of the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Columns {
    /// Enough to decode each event: position, type, version and payload.
    Events,
    /// Also which intent's stream each event belongs to, and where in it.
    Streams,
    /// Every column exactly as stored, for hashing: also the aggregate type and the metadata.
    Stored,
}

/// The columns [`Columns::Streams`] adds.
#[derive(Debug, Clone)]
pub struct StreamColumns {
    /// The kind of stream: `deployment` (an intent) or `principal`.
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
}

/// The columns only [`Columns::Stored`] reads.
#[derive(Debug, Clone)]
pub struct StoredColumns {
    /// The metadata exactly as stored.
    pub metadata: String,
}

/// One event of the global stream, in the order every reader sees it.
#[derive(Debug, Clone)]
pub struct StreamRow {
    pub position: i64,
    pub event_type: String,
    pub event_version: String,
    /// The payload exactly as stored.
    pub payload: String,
    /// Present when read with [`Columns::Streams`] or more.
    pub stream: Option<StreamColumns>,
    /// Present when read with [`Columns::Stored`].
    pub stored: Option<StoredColumns>,
}

impl StreamRow {
    /// The event, through the one decode point (older versions upcast).
    pub fn decode(&self) -> Result<StreamEvent, DecodeError> {
        decode_stream(&self.event_type, &self.event_version, &self.payload)
    }

    /// Which stream the event belongs to; an error if it was read without those columns.
    pub fn stream(&self) -> Result<&StreamColumns, StoreError> {
        self.stream.as_ref().ok_or_else(|| StoreError::Corrupt {
            position: self.position,
            reason: "read without its stream columns".into(),
        })
    }

    /// The stored row as the integrity seals hash it; an error if it was read without every
    /// column.
    pub fn row(&self) -> Result<StoredRow<'_>, StoreError> {
        let (Some(stream), Some(stored)) = (&self.stream, &self.stored) else {
            return Err(StoreError::Corrupt {
                position: self.position,
                reason: "read without its stored columns".into(),
            });
        };
        Ok(StoredRow {
            position: self.position,
            aggregate_type: &stream.aggregate_type,
            aggregate_id: &stream.aggregate_id,
            sequence: stream.sequence,
            event_type: &self.event_type,
            event_version: &self.event_version,
            payload: &self.payload,
            metadata: &stored.metadata,
        })
    }
}

type EventColumns = (i64, String, String, String);

impl Store {
    /// The global stream after the event at position `after` (`None`: from the very start,
    /// whatever positions the rows carry, zero or negative included), at most `limit` events,
    /// with the columns asked for.
    ///
    /// Every committed event comes exactly once, in an order that never changes once read.
    /// SQLite: position order, which is commit order (one writer). PostgreSQL: positions are taken
    /// at insert, not commit, so only events of transactions older than every transaction still
    /// running (`pg_snapshot_xmin`) are read, ordered by (writing transaction, position). A later
    /// commit therefore always sorts after everything already read. Writers take no lock.
    pub async fn read_global(
        &self,
        after: Option<i64>,
        limit: i64,
        columns: Columns,
    ) -> Result<Vec<StreamRow>, StoreError> {
        self.global_rows(after, limit, columns).try_collect().await
    }

    /// The rows [`Store::read_global`] returns, handed out as the database sends them, so that a
    /// reader works on the first while the database still produces the rest. Holds one
    /// connection until it ends or is dropped.
    pub fn global_rows(
        &self,
        after: Option<i64>,
        limit: i64,
        columns: Columns,
    ) -> BoxStream<'_, Result<StreamRow, StoreError>> {
        let row = |(position, event_type, event_version, payload): EventColumns, stream, stored| {
            StreamRow {
                position,
                event_type,
                event_version,
                payload,
                stream,
                stored,
            }
        };
        // Tuples, not a derived row type: columns are read by index, not looked up by name, on
        // a path that reads millions of rows; and only the columns asked for, as decoding each
        // costs both ends of the connection.
        match columns {
            Columns::Events => self
                .global_columns::<EventColumns>(columns, after, limit)
                .map_ok(move |events| row(events, None, None))
                .boxed(),
            Columns::Streams => self
                .global_columns::<(i64, String, String, String, String, String, i64)>(
                    columns, after, limit,
                )
                .map_ok(
                    move |(p, t, v, payload, aggregate_type, aggregate_id, sequence)| {
                        let stream = StreamColumns {
                            aggregate_type,
                            aggregate_id,
                            sequence,
                        };
                        row((p, t, v, payload), Some(stream), None)
                    },
                )
                .boxed(),
            Columns::Stored => self
                .global_columns::<(i64, String, String, String, String, i64, String, String)>(
                    columns, after, limit,
                )
                .map_ok(
                    move |(p, t, v, payload, aggregate_id, sequence, aggregate_type, metadata)| {
                        let stream = StreamColumns {
                            aggregate_type,
                            aggregate_id,
                            sequence,
                        };
                        let stored = StoredColumns { metadata };
                        row((p, t, v, payload), Some(stream), Some(stored))
                    },
                )
                .boxed(),
        }
    }

    /// The global stream's order and paging (see [`Store::read_global`]) over the events
    /// table's `columns`, as tuples in the order [`global_sql`] selects them.
    fn global_columns<R>(
        &self,
        columns: Columns,
        after: Option<i64>,
        limit: i64,
    ) -> BoxStream<'_, Result<R, StoreError>>
    where
        R: Send
            + Unpin
            + 'static
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        let sql = global_sql(columns, matches!(self.db, Db::Postgres(_)), after.is_some());
        let rows = match &self.db {
            Db::Sqlite { reader, .. } => {
                let query = sqlx::query_as(sql).bind(limit);
                match after {
                    None => query,
                    Some(after) => query.bind(after),
                }
                .fetch(reader)
            }
            Db::Postgres(pool) => {
                let query = sqlx::query_as(sql).bind(limit);
                match after {
                    None => query,
                    Some(after) => query.bind(after),
                }
                .fetch(pool)
            }
        };
        rows.map_err(StoreError::from).boxed()
    }

    /// Whether a reader standing at `checkpoint` has passed the event at `position` in the
    /// global stream's order: SQLite's is position order; PostgreSQL's is (writing transaction,
    /// position), so the two events' transactions are compared there. False before the first
    /// event, and for a position no event holds yet.
    pub async fn read_past(
        &self,
        checkpoint: Checkpoint,
        position: i64,
    ) -> Result<bool, StoreError> {
        if checkpoint.ordinal == 0 {
            return Ok(false);
        }
        Ok(match &self.db {
            Db::Sqlite { .. } => checkpoint.position >= position,
            Db::Postgres(pool) => sqlx::query_scalar::<_, bool>(
                "SELECT (c.xact_id, c.position) >= (n.xact_id, n.position)
                   FROM events c, events n WHERE c.position = $1 AND n.position = $2",
            )
            .bind(checkpoint.position)
            .bind(position)
            .fetch_optional(pool)
            .await?
            .unwrap_or(false),
        })
    }

    /// Events that the global stream will never return, named by position: on PostgreSQL, rows
    /// whose transaction id lies in the future of every snapshot (written by hand, not by a
    /// transaction), at most `limit`. SQLite has none.
    pub async fn unreachable_events(&self, limit: i64) -> Result<Vec<i64>, StoreError> {
        Ok(match &self.db {
            Db::Sqlite { .. } => Vec::new(),
            Db::Postgres(pool) => {
                // In the global order's index, and the bound as a subquery: written as a plain
                // function call ordered by position, the planner could not tell how few rows it
                // matches and walked the position index past every event (6.6 s at ten million
                // events, every five seconds); this reads none.
                sqlx::query_scalar(
                    "SELECT position FROM events
                      WHERE xact_id >= (SELECT pg_snapshot_xmax(pg_current_snapshot()))
                      ORDER BY xact_id, position LIMIT $1",
                )
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
        })
    }

    /// Each event's place in the global stream's order (see [`Store::read_global`]), as a key
    /// that sorts as the stream does: SQLite's is its position; PostgreSQL's its writing
    /// transaction, then its position. Positions no event holds are left out.
    pub async fn order_keys(
        &self,
        positions: &[i64],
    ) -> Result<HashMap<i64, (i64, i64)>, StoreError> {
        Ok(match &self.db {
            Db::Sqlite { .. } => positions.iter().map(|&p| (p, (0, p))).collect(),
            Db::Postgres(pool) => sqlx::query_as::<_, (i64, i64)>(
                "SELECT position, xact_id::text::bigint FROM events WHERE position = ANY($1)",
            )
            .bind(positions)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|(position, xact)| (position, (xact, position)))
            .collect(),
        })
    }

    /// One intent's events as stored (every column), in order.
    pub async fn intent_stored(&self, id: Uuid) -> Result<Vec<StreamRow>, StoreError> {
        let sql = "SELECT position, event_type, event_version, CAST(payload AS TEXT), \
                          aggregate_id, sequence, aggregate_type, CAST(metadata AS TEXT)
                     FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence";
        type Row = (i64, String, String, String, String, i64, String, String);
        let rows: Vec<Row> = on_reader!(&self.db, pool => {
            sqlx::query_as(sql)
                .bind(<DeploymentIntent as cqrs_es::Aggregate>::TYPE)
                .bind(id.to_string())
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(
                    position,
                    event_type,
                    event_version,
                    payload,
                    aggregate_id,
                    sequence,
                    aggregate_type,
                    metadata,
                )| {
                    StreamRow {
                        position,
                        event_type,
                        event_version,
                        payload,
                        stream: Some(StreamColumns {
                            aggregate_type,
                            aggregate_id,
                            sequence,
                        }),
                        stored: Some(StoredColumns { metadata }),
                    }
                },
            )
            .collect())
    }

    /// Whether an event with this global position exists.
    pub async fn has_position(&self, position: i64) -> Result<bool, StoreError> {
        let sql = "SELECT EXISTS (SELECT 1 FROM events WHERE position = $1)";
        Ok(
            on_reader!(&self.db, pool => sqlx::query_scalar(sql).bind(position).fetch_one(pool).await?),
        )
    }
}
