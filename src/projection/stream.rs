//! Reading the global stream ahead of the projections: one task reads, up to QUERY_BATCHES
//! batches a query for the runner, and DECODING tasks decode, at most two batches ahead; and
//! [`StreamReader`], the same reading for a reader beside the runner.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use eucora_projections::integrity::leaf_hash;

use crate::store::{Checkpoint, Columns, Store, StreamRow};

use super::{Event, RunError};

/// How a lane reads: where it stops, and what it does with a projection's error.
#[derive(Clone, Copy)]
pub(super) struct Plan {
    /// Apply at most this many batches (the read-ahead itself reads on to the end of the stream,
    /// at most a few batches ahead).
    pub(super) max_batches: usize,
    /// Every event up to this ordinal must be read: an empty page before it is a wait (replay on
    /// PostgreSQL, where a transaction open elsewhere holds later commits back), not the end.
    pub(super) at_least: i64,
    /// Replay: the first error ends the run. Serve: the failing projection stays behind and
    /// retries later; the rest go on.
    pub(super) stop_on_error: bool,
    /// Read at most this many batches a query.
    pub(super) query_batches: usize,
}

impl Plan {
    /// Whether a lane stops reading: none of its projections is left, or one failed in a replay.
    pub(super) fn halts<F>(&self, live: &[usize], failures: &[F]) -> bool {
        live.is_empty() || (self.stop_on_error && !failures.is_empty())
    }
}

/// How many batches the read-ahead decodes at once.
const DECODING: usize = 2;
/// How many batches one query of the runner's read-ahead reads at most.
pub(super) const QUERY_BATCHES: usize = 50;
/// How long a replay waits for committed events that are not yet readable.
const STALL: Duration = Duration::from_secs(60);
/// Rows read from the stream, decoded once for every projection; `first` is the ordinal of the
/// first. With `leaves`, each row read with every column is hashed as the Merkle log's leaf.
pub(super) fn decode_rows(first: i64, rows: Vec<StreamRow>, leaves: bool) -> Vec<Event> {
    rows.into_iter()
        .zip(first..)
        .map(|(row, ordinal)| Event {
            ordinal,
            event: row.decode(),
            leaf: leaves
                .then(|| row.row().ok().map(|stored| leaf_hash(&stored)))
                .flatten(),
            row,
        })
        .collect()
}

/// The global stream from its start, read and decoded ahead as the runner reads it, for a reader
/// beside the runner (the evidence export): at least the first `at_least` events, then whatever
/// else is there. Dropping it stops the reading.
pub struct StreamReader(Ahead);

impl StreamReader {
    /// Reads `columns` of every event, decoded; not hashed (its reader, the export, hashes
    /// nothing but the lines it writes).
    pub fn from_start(store: Store, at_least: u64, batch: i64, columns: Columns) -> StreamReader {
        let plan = Plan {
            max_batches: usize::MAX,
            at_least: i64::try_from(at_least).unwrap_or(i64::MAX),
            stop_on_error: true,
            // One batch a query, each read whole: the export takes every core, and a query
            // streamed to it waited on the database for each few hundred rows (a period's export
            // of a million events on PostgreSQL took 8.7-10.0 s instead of 6.2-8.0 s).
            query_batches: 1,
        };
        let start = Checkpoint {
            position: 0,
            ordinal: 0,
        };
        StreamReader(read_ahead(store, start, plan, batch, columns, false))
    }

    /// The next batch, in global order; `None` at the end of what was there.
    pub async fn next(&mut self) -> Option<Result<Vec<Event>, RunError>> {
        self.0.recv().await
    }
}

/// What a read-ahead hands on: each batch, decoded, in global order; it ends at the end of what
/// was there.
pub(super) type Ahead = tokio::sync::mpsc::Receiver<Result<Vec<Event>, RunError>>;

/// A lane's read-ahead kept for its next step: the lane (whose projections decide the columns it
/// reads), and the point of the stream its next batch follows.
pub(super) struct Kept {
    pub(super) lane: Vec<usize>,
    pub(super) from: Checkpoint,
    pub(super) batches: Ahead,
}

impl Kept {
    /// Whether `lane`, standing at `from`, goes on with it.
    pub(super) fn goes_on(&self, lane: &[usize], from: Checkpoint) -> bool {
        self.lane == lane && self.from.same_point(from)
    }
}

/// Reads the stream on one task and decodes it (and with `leaves` hashes it) on others, each at
/// most two batches ahead, so the database, the decoding and the projections all run at once;
/// follows `plan` to the end of what is there. Dropping the receiver stops it.
pub(super) fn read_ahead(
    store: Store,
    from: Checkpoint,
    plan: Plan,
    batch: i64,
    columns: Columns,
    leaves: bool,
) -> Ahead {
    let (raw_tx, mut raw_rx) = tokio::sync::mpsc::channel::<Result<Read, RunError>>(2);
    tokio::spawn(async move {
        // Position 0 (or below) is a position like any other once an event was read there.
        let mut after = (from.ordinal > 0).then_some(from.position);
        let mut ordinal = from.ordinal;
        let mut progressed = Instant::now();
        loop {
            // One query for up to `plan.query_batches` batches, each handed on as its last row
            // arrives: the database sends the next rows while this batch is decoded.
            let span = plan.query_batches.max(1);
            let mut stream = store.global_rows(after, batch * span as i64, columns);
            let capacity = usize::try_from(batch).unwrap_or(0);
            let mut rows = Vec::with_capacity(capacity);
            let mut read_any = false;
            loop {
                let next = stream.next().await;
                let ended = next.is_none();
                match next {
                    Some(Ok(row)) => rows.push(row),
                    Some(Err(e)) => {
                        let _ = raw_tx.send(Err(e.into())).await;
                        return;
                    }
                    None => {}
                }
                if let Some(last) = rows.last().filter(|_| ended || rows.len() as i64 == batch) {
                    read_any = true;
                    progressed = Instant::now();
                    after = Some(last.position);
                    let first = ordinal + 1;
                    ordinal += rows.len() as i64;
                    let full = std::mem::replace(&mut rows, Vec::with_capacity(capacity));
                    if raw_tx.send(Ok(Read(first, full))).await.is_err() {
                        return;
                    }
                }
                if ended {
                    break;
                }
            }
            if read_any {
                continue;
            }
            if ordinal >= plan.at_least {
                return;
            }
            // A row written by hand with a transaction id from the future is never
            // returned: name it rather than wait for it.
            match store.unreachable_events(1).await {
                Ok(found) if !found.is_empty() => {
                    let unreachable = RunError::Unreachable { position: found[0] };
                    let _ = raw_tx.send(Err(unreachable)).await;
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = raw_tx.send(Err(e.into())).await;
                    return;
                }
            }
            if progressed.elapsed() > STALL {
                let stalled = RunError::Stalled {
                    read: ordinal,
                    head: plan.at_least,
                };
                let _ = raw_tx.send(Err(stalled)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        // DECODING batches are decoded at once, each on a task of its own, and handed on in the
        // order they were read: decoding is the costliest stage, and one task at it would leave
        // the second core idle while the database is waited for.
        let mut decoding: VecDeque<tokio::task::JoinHandle<_>> = VecDeque::new();
        let mut reading = true;
        loop {
            let decoded = tokio::select! {
                biased;
                decoded = async { decoding.front_mut().expect("not empty").await },
                    if !decoding.is_empty() => decoded,
                read = raw_rx.recv(), if reading && decoding.len() < DECODING => {
                    match read {
                        Some(read) => decoding.push_back(tokio::spawn(async move {
                            read.map(|Read(first, rows)| decode_rows(first, rows, leaves))
                        })),
                        None => reading = false,
                    }
                    continue;
                }
                else => return,
            };
            decoding.pop_front();
            let ahead = match decoded {
                Ok(ahead) => ahead,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => return,
            };
            if tx.send(ahead).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// What the reading task hands the decoding task: rows with the ordinal of the first.
struct Read(i64, Vec<StreamRow>);
