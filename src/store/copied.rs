//! The global stream on PostgreSQL, read with `COPY (SELECT …) TO STDOUT (FORMAT binary)`:
//! each row arrives as its columns' lengths and bytes, read here without sqlx's work for a
//! `SELECT`'s row (a row object with its column descriptions for each event, each value looked
//! up by index). On a million events that work was a sixth of the catch-up's reading.
//!
//! A `COPY` binds no parameters: the limit and the position are written into the statement as
//! the integers they are. A `COPY` left unread on a connection would leave the connection out
//! of step with the server (sqlx's check on return to the pool reads to the first
//! `ReadyForQuery` and leaves the second), so a copy that does not reach its end, for an error
//! or because its reader stopped, closes its connection instead of returning it.

use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

use super::global::{stream_row, Cells, Columns};
use super::{StoreError, StreamRow};

/// How many rows the copying task hands on at a time.
const HANDED: usize = 256;

/// The statement copying `columns` of the global stream after `after` (from its start with
/// `None`), at most `limit` events, in the stream's order (see `Store::read_global`).
fn copy_sql(columns: Columns, after: Option<i64>, limit: i64) -> String {
    let since = match after {
        None => String::new(),
        Some(p) => format!(
            "AND (xact_id, position) > ((SELECT xact_id FROM events WHERE position = {p}), {p})"
        ),
    };
    format!(
        "COPY (SELECT {} FROM events
                WHERE xact_id < pg_snapshot_xmin(pg_current_snapshot()) {since}
                ORDER BY xact_id, position LIMIT {}) TO STDOUT (FORMAT binary)",
        super::global::column_list(columns, true),
        limit.max(0),
    )
}

/// The rows of the global stream as `Store::global_rows` hands them out, copied on a task of
/// its own that hands them on [`HANDED`] at a time (the reader decodes while the next arrive).
pub(super) fn copy_rows(
    pool: PgPool,
    after: Option<i64>,
    limit: i64,
    columns: Columns,
) -> BoxStream<'static, Result<StreamRow, StoreError>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<StreamRow>, StoreError>>(2);
    tokio::spawn(async move {
        let sql = copy_sql(columns, after, limit);
        if let Err(e) = copy(&pool, &sql, columns, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        let handed = rx.recv().await?;
        Some((handed, rx))
    })
    .map_ok(|rows| futures_util::stream::iter(rows.into_iter().map(Ok)))
    .try_flatten()
    .boxed()
}

/// A connection holding a copy: closed when dropped before the copy's end.
struct Copying {
    conn: PoolConnection<Postgres>,
    finished: bool,
}

impl Drop for Copying {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.close_on_drop();
        }
    }
}

/// Runs the copy, handing its rows to `tx`; stops (closing the connection) when nobody takes
/// them any more.
async fn copy(
    pool: &PgPool,
    sql: &str,
    columns: Columns,
    tx: &tokio::sync::mpsc::Sender<Result<Vec<StreamRow>, StoreError>>,
) -> Result<(), StoreError> {
    let mut copying = Copying {
        conn: pool.acquire().await?,
        finished: false,
    };
    let mut chunks = copying.conn.copy_out_raw(sql).await?;
    let mut reader = CopyReader::new(columns);
    let mut rows = Vec::with_capacity(HANDED);
    while let Some(chunk) = chunks.try_next().await? {
        reader.take(&chunk, &mut rows)?;
        if rows.len() >= HANDED {
            let full = std::mem::replace(&mut rows, Vec::with_capacity(HANDED));
            if tx.send(Ok(full)).await.is_err() {
                return Ok(());
            }
        }
    }
    drop(chunks);
    reader.finish()?;
    copying.finished = true;
    if !rows.is_empty() {
        let _ = tx.send(Ok(rows)).await;
    }
    Ok(())
}

/// `COPY`'s binary format, read as it arrives: its header, then each row (how many columns, then
/// each column's length and bytes), then a row of "-1 columns" that ends it. A row may span the
/// server's messages; what is left of one waits in `pending`.
struct CopyReader {
    columns: Columns,
    header: bool,
    ended: bool,
    pending: Vec<u8>,
}

/// The signature every binary copy starts with.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// An error in the copy's bytes: the server sent what this reader does not understand.
fn malformed(what: &str) -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(format!(
        "the global stream's copy from the database is malformed: {what}"
    )))
}

impl CopyReader {
    fn new(columns: Columns) -> CopyReader {
        CopyReader {
            columns,
            header: false,
            ended: false,
            pending: Vec::new(),
        }
    }

    /// Reads the rows `chunk` completes into `rows`.
    fn take(&mut self, chunk: &[u8], rows: &mut Vec<StreamRow>) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            let used = self.read(chunk, rows)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            self.pending.extend_from_slice(chunk);
            let pending = std::mem::take(&mut self.pending);
            let used = self.read(&pending, rows)?;
            self.pending = pending;
            self.pending.drain(..used);
        }
        Ok(())
    }

    /// Whether the copy ended where it should: its end row read, nothing after it.
    fn finish(&self) -> Result<(), StoreError> {
        match (self.ended, self.pending.is_empty()) {
            (true, true) => Ok(()),
            (true, false) => Err(malformed("bytes after its end")),
            (false, _) => Err(malformed("it stops inside a row")),
        }
    }

    /// Reads every whole row at the start of `data`; how many bytes they took.
    fn read(&mut self, data: &[u8], rows: &mut Vec<StreamRow>) -> Result<usize, StoreError> {
        let mut at = 0;
        if !self.header {
            let Some(fixed) = data.get(..SIGNATURE.len() + 8) else {
                return Ok(0);
            };
            if &fixed[..SIGNATURE.len()] != SIGNATURE {
                return Err(malformed(
                    "it does not start with the binary format's signature",
                ));
            }
            let extension = u32::from_be_bytes(fixed[15..19].try_into().expect("four bytes"));
            at = 19 + extension as usize;
            if data.len() < at {
                return Ok(0);
            }
            self.header = true;
        }
        let width = super::global::column_count(self.columns);
        let mut cells: [&[u8]; 8] = [&[]; 8];
        while let Some(count) = data.get(at..at + 2) {
            if self.ended {
                return Err(malformed("bytes after its end"));
            }
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                self.ended = true;
                at += 2;
                continue;
            }
            if count as usize != width {
                return Err(malformed(&format!("a row of {count} columns, not {width}")));
            }
            let mut next = at + 2;
            for cell in &mut cells[..width] {
                let Some(length) = data.get(next..next + 4) else {
                    return Ok(at);
                };
                let length = i32::from_be_bytes(length.try_into().expect("four bytes"));
                let Ok(length) = usize::try_from(length) else {
                    return Err(malformed("a NULL in a column that holds none"));
                };
                next += 4;
                let Some(value) = data.get(next..next + length) else {
                    return Ok(at);
                };
                *cell = value;
                next += length;
            }
            rows.push(stream_row(&CopiedRow(&cells[..width]), self.columns)?);
            at = next;
        }
        Ok(at)
    }
}

/// One row of a binary copy: each column's bytes.
struct CopiedRow<'a>(&'a [&'a [u8]]);

impl Cells for CopiedRow<'_> {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        let value = self.0[i];
        match std::str::from_utf8(value) {
            Ok(text) => Ok(text.to_owned()),
            Err(_) => Err(malformed("a text column that is not UTF-8")),
        }
    }

    fn number(&self, i: usize) -> Result<i64, StoreError> {
        match <[u8; 8]>::try_from(self.0[i]) {
            Ok(bytes) => Ok(i64::from_be_bytes(bytes)),
            Err(_) => Err(malformed("a bigint column that is not eight bytes")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary copy as the server writes it, of rows of `(position, type, version, payload)`.
    fn copied(rows: &[(i64, &str, &str, &[u8])]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&3u32.to_be_bytes());
        out.extend_from_slice(b"ext");
        for (position, kind, version, payload) in rows {
            out.extend_from_slice(&4i16.to_be_bytes());
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&position.to_be_bytes());
            for text in [kind.as_bytes(), version.as_bytes(), payload] {
                out.extend_from_slice(&(text.len() as i32).to_be_bytes());
                out.extend_from_slice(text);
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    /// Reads `bytes` handed over in pieces of `piece` bytes.
    fn read(bytes: &[u8], piece: usize) -> Result<Vec<(i64, String, String, String)>, String> {
        let mut reader = CopyReader::new(Columns::Events);
        let mut rows = Vec::new();
        for chunk in bytes.chunks(piece) {
            reader.take(chunk, &mut rows).map_err(|e| e.to_string())?;
        }
        reader.finish().map_err(|e| e.to_string())?;
        Ok(rows
            .into_iter()
            .map(|r| (r.position, r.event_type, r.event_version, r.payload))
            .collect())
    }

    #[test]
    fn rows_read_the_same_however_the_bytes_are_cut() {
        let big = format!("{{\"big\": \"{}\"}}", "é".repeat(5000));
        let rows: Vec<(i64, &str, &str, &[u8])> = vec![
            (1, "DeploymentCreated", "1", b"{}"),
            (-7, "Deployed", "2", "{\"tab\": \"\\t é 🚀\"}".as_bytes()),
            (i64::MAX, "", "", b""),
            (42, "RingPromoted", "1", big.as_bytes()),
        ];
        let bytes = copied(&rows);
        let expected: Vec<_> = rows
            .iter()
            .map(|(p, k, v, t)| {
                (
                    *p,
                    k.to_string(),
                    v.to_string(),
                    String::from_utf8(t.to_vec()).unwrap(),
                )
            })
            .collect();
        for piece in [1, 2, 3, 7, 19, 20, 64, 1000, bytes.len()] {
            assert_eq!(read(&bytes, piece).unwrap(), expected, "pieces of {piece}");
        }
        assert_eq!(read(&copied(&[]), 1).unwrap(), vec![]);
    }

    #[test]
    fn malformed_copies_are_refused_in_our_words() {
        let good = copied(&[(1, "DeploymentCreated", "1", b"{}")]);
        let refused = |bytes: &[u8], what: &str| {
            for piece in [1, 5, bytes.len().max(1)] {
                let error = read(bytes, piece).unwrap_err();
                assert!(
                    error.contains("copy from the database is malformed") && error.contains(what),
                    "{error}"
                );
            }
        };
        let mut signature = good.clone();
        signature[0] = b'X';
        refused(&signature, "signature");
        refused(&good[..good.len() - 2], "stops inside a row");
        refused(&good[..good.len() - 5], "stops inside a row");
        let mut after = good.clone();
        after.extend_from_slice(&[0, 4]);
        refused(&after, "after its end");
        let at = SIGNATURE.len() + 11;
        let mut columns = good.clone();
        columns[at..at + 2].copy_from_slice(&3i16.to_be_bytes());
        refused(&columns, "a row of 3 columns, not 4");
        let mut null = good.clone();
        null[at + 2..at + 6].copy_from_slice(&(-1i32).to_be_bytes());
        refused(&null, "NULL");
        let mut short = good[..at].to_vec();
        short.extend_from_slice(&4i16.to_be_bytes());
        for cell in [&[0u8, 0, 0, 1][..], b"DeploymentCreated", b"1", b"{}"] {
            short.extend_from_slice(&(cell.len() as i32).to_be_bytes());
            short.extend_from_slice(cell);
        }
        short.extend_from_slice(&(-1i16).to_be_bytes());
        refused(&short, "eight bytes");
        let invalid = copied(&[(1, "DeploymentCreated", "1", b"{\"\xff\"}")]);
        refused(&invalid, "not UTF-8");
    }
}
