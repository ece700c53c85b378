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

/// SQLite's statement reading `columns` of the global stream row by row, in its order, from the
/// start or after a position (`?1` the limit, `?2` the position); made once for the process, so
/// that a stream of rows borrows nothing but the pool. (PostgreSQL's is a copy: `copied.rs`.)
///
/// "From the start" is its own statement: an `after = 0 OR …` condition would keep the database
/// from using the index range scan, and every batch would sort the table.
fn global_sql(columns: Columns, after: bool) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        let mut all = Vec::new();
        for columns in [Columns::Events, Columns::Streams, Columns::Stored] {
            let list = column_list(columns, false);
            all.push(format!(
                "SELECT {list} FROM events ORDER BY position LIMIT ?1"
            ));
            all.push(format!(
                "SELECT {list} FROM events WHERE position > ?2 ORDER BY position LIMIT ?1"
            ));
        }
        all
    });
    &all[columns as usize * 2 + usize::from(after)]
}

/// The columns of the global stream by name, in the order every reading reads them: each
/// column set reads a prefix.
const STREAM_COLUMNS: [&str; 8] = [
    "position",
    "event_type",
    "event_version",
    "payload",
    "aggregate_type",
    "aggregate_id",
    "sequence",
    "metadata",
];

/// How many of [`STREAM_COLUMNS`] `columns` reads.
pub(super) fn column_count(columns: Columns) -> usize {
    match columns {
        Columns::Events => 4,
        Columns::Streams => 7,
        Columns::Stored => 8,
    }
}

/// `columns` as a statement lists them; with `as_text`, PostgreSQL's JSON columns as their
/// stored text.
pub(super) fn column_list(columns: Columns, as_text: bool) -> String {
    let names = STREAM_COLUMNS[..column_count(columns)].iter();
    let listed: Vec<String> = names
        .map(|&name| match name {
            "payload" | "metadata" if as_text => format!("{name}::text"),
            _ => name.to_string(),
        })
        .collect();
    listed.join(", ")
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
    /// A row from its four event columns and whatever else was read.
    fn of(
        (position, event_type, event_version, payload): EventColumns,
        stream: Option<StreamColumns>,
        stored: Option<StoredColumns>,
    ) -> StreamRow {
        StreamRow {
            position,
            event_type,
            event_version,
            payload,
            stream,
            stored,
        }
    }

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

/// How many events one query of SQLite's folded reading reads.
const CHUNK: i64 = 1000;
/// What joins a column's values in a folded chunk: ASCII's record separator, which valid JSON
/// never holds raw (control characters are escaped in its strings).
const SEPARATOR: char = '\u{1e}';

/// SQLite's folded reading of `columns` (`?1` the chunk's size, `?2` the position after which it
/// starts): how many events, then each column's values joined, all in the one order SQLite
/// takes the rows in (an aggregate's own `ORDER BY` sorts its input again, for each column: that
/// was slower than row by row); made once for the process. The table is `STRICT` and its
/// columns `NOT NULL`, so every value joins as the text or integer it is stored as; a value
/// holding the separator shows as one too many pieces when the chunk is split.
fn chunk_sql(columns: Columns, after: bool) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        let mut all = Vec::new();
        for columns in [Columns::Events, Columns::Streams, Columns::Stored] {
            let names = &STREAM_COLUMNS[..column_count(columns)];
            let joined: Vec<String> = names
                .iter()
                .map(|name| format!("group_concat({name}, char(30))"))
                .collect();
            for since in ["", "WHERE position > ?2"] {
                all.push(format!(
                    "SELECT count(*), {} FROM (SELECT {} FROM events {since} ORDER BY position LIMIT ?1)",
                    joined.join(", "),
                    names.join(", "),
                ));
            }
        }
        all
    });
    &all[columns as usize * 2 + usize::from(after)]
}

/// The events of a folded chunk; `None` when it must be read row by row (a value holding the
/// separator).
fn unfold_chunk(
    folded: &sqlx::sqlite::SqliteRow,
    columns: Columns,
) -> Result<Option<Vec<StreamRow>>, StoreError> {
    use sqlx::Row;
    let count: i64 = folded.try_get(0)?;
    if count == 0 {
        return Ok(Some(Vec::new()));
    }
    let count = usize::try_from(count).unwrap_or(0);
    let mut values = Vec::with_capacity(column_count(columns));
    for i in 0..column_count(columns) {
        let joined: Option<String> = folded.try_get(i + 1)?;
        let Some(joined) = joined else {
            return Ok(None);
        };
        values.push(joined);
    }
    let mut split: Vec<std::str::Split<'_, char>> =
        values.iter().map(|v| v.split(SEPARATOR)).collect();
    let mut rows = Vec::with_capacity(count);
    for _ in 0..count {
        let mut next = split.iter_mut().map(|s| s.next());
        let mut text = || next.next().flatten().map(str::to_string);
        let (Some(position), Some(event_type), Some(event_version), Some(payload)) =
            (text(), text(), text(), text())
        else {
            return Ok(None);
        };
        let Ok(position) = position.parse::<i64>() else {
            return Ok(None);
        };
        let (stream, stored) = match columns {
            Columns::Events => (None, None),
            Columns::Streams | Columns::Stored => {
                let (Some(aggregate_type), Some(aggregate_id), Some(sequence)) =
                    (text(), text(), text())
                else {
                    return Ok(None);
                };
                let Ok(sequence) = sequence.parse::<i64>() else {
                    return Ok(None);
                };
                let stream = StreamColumns {
                    aggregate_type,
                    aggregate_id,
                    sequence,
                };
                let stored = match columns {
                    Columns::Stored => match text() {
                        Some(metadata) => Some(StoredColumns { metadata }),
                        None => return Ok(None),
                    },
                    _ => None,
                };
                (Some(stream), stored)
            }
        };
        rows.push(StreamRow::of(
            (position, event_type, event_version, payload),
            stream,
            stored,
        ));
    }
    // Every value was taken: a column with more would have held the separator.
    if split.iter_mut().any(|s| s.next().is_some()) {
        return Ok(None);
    }
    // The aggregates take the rows in one pass, so the columns agree; in the subquery's order,
    // which SQLite does not promise: the positions say.
    if !rows.windows(2).all(|w| w[0].position < w[1].position) {
        rows.sort_by_key(|r| r.position);
    }
    Ok(Some(rows))
}

/// One row's columns by index, as the global stream's statements list them
/// ([`STREAM_COLUMNS`]): a row sqlx read, or a row of PostgreSQL's binary copy.
pub(super) trait Cells {
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn number(&self, i: usize) -> Result<i64, StoreError>;
}

/// A row sqlx read, every JSON column as its text. Decoded unchecked: the statement and the
/// table fix each column's type (the tables are typed, SQLite's `STRICT`, every column `NOT
/// NULL`; a NULL would still be an error), and sqlx's check of a column's type against the Rust
/// one cost a twentieth of `eucora serve`'s catch-up on PostgreSQL.
struct SqlxRow<'a, R>(&'a R);

impl<R> Cells for SqlxRow<'_, R>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database>,
{
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.0.try_get_unchecked::<String, _>(i)?)
    }

    fn number(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.0.try_get_unchecked::<i64, _>(i)?)
    }
}

/// One event of the global stream from a row of `columns`.
pub(super) fn stream_row(row: &impl Cells, columns: Columns) -> Result<StreamRow, StoreError> {
    let events = (row.number(0)?, row.text(1)?, row.text(2)?, row.text(3)?);
    let stream = match columns {
        Columns::Events => None,
        Columns::Streams | Columns::Stored => Some(StreamColumns {
            aggregate_type: row.text(4)?,
            aggregate_id: row.text(5)?,
            sequence: row.number(6)?,
        }),
    };
    let stored = match columns {
        Columns::Stored => Some(StoredColumns {
            metadata: row.text(7)?,
        }),
        _ => None,
    };
    Ok(StreamRow::of(events, stream, stored))
}

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
        match &self.db {
            Db::Sqlite { reader, .. } => self.sqlite_chunks(reader, after, limit, columns),
            Db::Postgres(pool) => super::copied::copy_rows(pool.clone(), after, limit, columns),
        }
    }

    /// SQLite's global stream, one row of the database's for each event.
    fn row_by_row<'a>(
        reader: &'a sqlx::SqlitePool,
        after: Option<i64>,
        limit: i64,
        columns: Columns,
    ) -> BoxStream<'a, Result<StreamRow, StoreError>> {
        let query = sqlx::query(global_sql(columns, after.is_some())).bind(limit);
        match after {
            None => query,
            Some(after) => query.bind(after),
        }
        .fetch(reader)
        .map(move |row| stream_row(&SqlxRow(&row?), columns))
        .boxed()
    }

    /// [`Store::global_rows`] on SQLite, [`CHUNK`] events a query folded into one row: each column
    /// of the chunk's events joined with a separator no stored text holds (JSON and EUCORA's own
    /// names never carry a raw control character), in one pass, then split and put in position
    /// order. Taking a row through sqlx's SQLite driver cost more than everything SQLite does to
    /// find it: `eucora serve` caught up on a million events in 3.4-3.6 s instead of 4.2-5.0 s
    /// (docs/benchmarks.md, session 22). A chunk holding a value with the separator in it (a row
    /// written by hand) is read row by row, as it always was, errors included.
    fn sqlite_chunks<'a>(
        &'a self,
        reader: &'a sqlx::SqlitePool,
        after: Option<i64>,
        limit: i64,
        columns: Columns,
    ) -> BoxStream<'a, Result<StreamRow, StoreError>> {
        let start = (after, limit.max(0));
        futures_util::stream::try_unfold(start, move |(after, left)| async move {
            if left == 0 {
                return Ok::<_, StoreError>(None);
            }
            let chunk = left.min(CHUNK);
            let sql = chunk_sql(columns, after.is_some());
            let query = sqlx::query(sql).bind(chunk);
            let folded = match after {
                None => query,
                Some(after) => query.bind(after),
            }
            .fetch_one(reader)
            .await?;
            let rows = match unfold_chunk(&folded, columns)? {
                Some(rows) => rows,
                None => {
                    Self::row_by_row(reader, after, chunk, columns)
                        .try_collect()
                        .await?
                }
            };
            let Some(last) = rows.last().map(|r| r.position) else {
                return Ok(None);
            };
            let read = rows.len() as i64;
            // A short chunk is the end of the stream.
            let left = if read < chunk { 0 } else { left - read };
            Ok(Some((
                futures_util::stream::iter(rows.into_iter().map(Ok)),
                (Some(last), left),
            )))
        })
        .try_flatten()
        .boxed()
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
                          aggregate_type, aggregate_id, sequence, CAST(metadata AS TEXT)
                     FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence";
        // The columns in the order the global stream reads every column (`Columns::Stored`).
        let rows = on_reader!(&self.db, pool => {
            sqlx::query(sql)
                .bind(<DeploymentIntent as cqrs_es::Aggregate>::TYPE)
                .bind(id.to_string())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| stream_row(&SqlxRow(row), Columns::Stored))
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Whether an event with this global position exists.
    pub async fn has_position(&self, position: i64) -> Result<bool, StoreError> {
        let sql = "SELECT EXISTS (SELECT 1 FROM events WHERE position = $1)";
        Ok(
            on_reader!(&self.db, pool => sqlx::query_scalar(sql).bind(position).fetch_one(pool).await?),
        )
    }
}
