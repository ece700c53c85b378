//! The global stream: every committed event once, in an order that never changes once read.

use std::collections::HashMap;

use eucora_projections::decode::{decode_stream, DecodeError, StreamEvent};
use eucora_projections::integrity::StoredRow;
use uuid::Uuid;

use crate::domain::DeploymentIntent;

use super::{Checkpoint, Db, Store, StoreError};

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
        const EVENTS: &str = "position, event_type, event_version, payload";
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
        Ok(match columns {
            Columns::Events => self
                .read_global_columns::<EventColumns>(EVENTS, after, limit)
                .await?
                .into_iter()
                .map(|events| row(events, None, None))
                .collect(),
            Columns::Streams => self
                .read_global_columns::<(i64, String, String, String, String, String, i64)>(
                    &format!("{EVENTS}, aggregate_type, aggregate_id, sequence"),
                    after,
                    limit,
                )
                .await?
                .into_iter()
                .map(
                    |(p, t, v, payload, aggregate_type, aggregate_id, sequence)| {
                        let stream = StreamColumns {
                            aggregate_type,
                            aggregate_id,
                            sequence,
                        };
                        row((p, t, v, payload), Some(stream), None)
                    },
                )
                .collect(),
            Columns::Stored => self
                .read_global_columns::<(i64, String, String, String, String, i64, String, String)>(
                    &format!("{EVENTS}, aggregate_id, sequence, aggregate_type, metadata"),
                    after,
                    limit,
                )
                .await?
                .into_iter()
                .map(
                    |(p, t, v, payload, aggregate_id, sequence, aggregate_type, metadata)| {
                        let stream = StreamColumns {
                            aggregate_type,
                            aggregate_id,
                            sequence,
                        };
                        let stored = StoredColumns { metadata };
                        row((p, t, v, payload), Some(stream), Some(stored))
                    },
                )
                .collect(),
        })
    }

    /// The global stream's order and paging (see [`Store::read_global`]) over some of the events
    /// table's columns, named in `columns`; JSON columns are read as their stored text.
    async fn read_global_columns<R>(
        &self,
        columns: &str,
        after: Option<i64>,
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
            (Db::Sqlite { reader, .. }, None) => {
                let sql = format!("SELECT {columns} FROM events ORDER BY position LIMIT ?1");
                sqlx::query_as(&sql).bind(limit).fetch_all(reader).await?
            }
            (Db::Sqlite { reader, .. }, Some(after)) => {
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
                let since = match after {
                    None => "",
                    Some(_) => {
                        "AND (xact_id, position) > ((SELECT xact_id FROM events WHERE position = $2), $2)"
                    }
                };
                let sql = format!(
                    "SELECT {columns} FROM events
                      WHERE xact_id < pg_snapshot_xmin(pg_current_snapshot()) {since}
                      ORDER BY xact_id, position
                      LIMIT $1"
                );
                let query = sqlx::query_as(&sql).bind(limit);
                let query = match after {
                    None => query,
                    Some(after) => query.bind(after),
                };
                query.fetch_all(pool).await?
            }
        })
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
