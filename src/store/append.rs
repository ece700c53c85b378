//! Group commit: the appends of concurrent commands coalesce into one transaction.
//!
//! Each command hands its events to a committer task and waits for its own outcome. The task
//! takes every append waiting at that moment (up to [`MAX_BATCH`]) and writes them in one
//! transaction, so one durable commit (one WAL flush on PostgreSQL, one fsync on SQLite) serves
//! them all. Each command keeps its optimistic-concurrency check and gets its own outcome: the
//! table's key (aggregate_type, aggregate_id, sequence) decides each row, and a command whose
//! stream version exists (a lost race) fails alone while the rest of its batch commits. On
//! PostgreSQL the batch is one `INSERT … ON CONFLICT DO NOTHING RETURNING`, and a command none of
//! whose rows went in lost; on SQLite each command runs under a savepoint of its own.
//!
//! A lone command waits for nothing: the task takes it at once, as a batch of one. Commands
//! arriving while a batch commits form the next batch; on PostgreSQL up to [`PG_IN_FLIGHT`]
//! batches commit at once, on SQLite one (it has one writer).

use std::sync::{Arc, OnceLock};

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{is_unavailable, Db};

/// The most commands one transaction takes.
pub const MAX_BATCH: usize = 256;
/// How many batches commit at once on PostgreSQL: while one waits for its WAL flush, the next
/// one's rows are sent.
pub const PG_IN_FLIGHT: usize = 4;

/// One command's append, and where its outcome goes: the global position of each event.
struct Pending {
    aggregate_type: &'static str,
    events: Vec<SerializedEvent>,
    done: oneshot::Sender<Result<Vec<i64>, PersistenceError>>,
}

/// How a transaction failed, for every command in it.
#[derive(Clone)]
enum Failure {
    /// A stream version that exists already: a lost optimistic-concurrency race.
    Conflict,
    Unavailable(String),
    Other(String),
}

impl Failure {
    fn of(e: &sqlx::Error) -> Failure {
        let conflict = matches!(e, sqlx::Error::Database(d)
            if matches!(d.code().as_deref(), Some("23505") | Some("2067"))
                || d.message().contains("an event of this stream version exists"));
        if conflict {
            Failure::Conflict
        } else if is_unavailable(e) {
            Failure::Unavailable(e.to_string())
        } else {
            Failure::Other(e.to_string())
        }
    }

    fn error(&self) -> PersistenceError {
        match self {
            Failure::Conflict => PersistenceError::OptimisticLockError,
            Failure::Unavailable(m) => {
                PersistenceError::ConnectionError(Box::new(std::io::Error::other(m.clone())))
            }
            Failure::Other(m) => {
                PersistenceError::UnknownError(Box::new(std::io::Error::other(m.clone())))
            }
        }
    }
}

/// The events table's appender: one committer task per store handle, started by the first append.
pub struct GroupCommit {
    db: Db,
    queue: OnceLock<mpsc::UnboundedSender<Pending>>,
}

impl GroupCommit {
    pub(super) fn new(db: Db) -> Self {
        GroupCommit {
            db,
            queue: OnceLock::new(),
        }
    }

    /// Appends one command's events (all or none) and answers with each one's global position.
    pub async fn append(
        &self,
        aggregate_type: &'static str,
        events: &[SerializedEvent],
    ) -> Result<Vec<i64>, PersistenceError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(commit_loop(self.db.clone(), rx));
            tx
        });
        let (done, outcome) = oneshot::channel();
        let pending = Pending {
            aggregate_type,
            events: events.to_vec(),
            done,
        };
        if queue.send(pending).is_err() {
            return Err(Failure::Other("the committer has stopped".into()).error());
        }
        outcome.await.unwrap_or_else(|_| {
            Err(Failure::Other("the committer dropped an append".into()).error())
        })
    }
}

/// Takes what is waiting, commits it as one batch, and repeats until every handle is gone.
async fn commit_loop(db: Db, mut queue: mpsc::UnboundedReceiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(match db {
        Db::Sqlite { .. } => 1,
        Db::Postgres(_) => PG_IN_FLIGHT,
    }));
    loop {
        // A permit first, so that what arrives while every slot commits joins the next batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let db = db.clone();
        tokio::spawn(async move {
            commit(&db, batch).await;
            drop(permit);
        });
    }
}

/// What became of each command of a batch: its events' positions, or how it failed.
type Outcomes = Vec<Result<Vec<i64>, Failure>>;

/// Commits a batch in one transaction and answers each command.
async fn commit(db: &Db, batch: Vec<Pending>) {
    let outcomes = match db {
        Db::Sqlite { writer, .. } => sqlite(writer, &batch).await,
        Db::Postgres(pool) => postgres(pool, &batch).await,
    };
    match outcomes {
        Ok(outcomes) => {
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                let _ = pending.done.send(outcome.map_err(|f| f.error()));
            }
        }
        Err(e) => {
            let failure = Failure::of(&e);
            for pending in batch {
                let _ = pending.done.send(Err(failure.error()));
            }
        }
    }
}

/// The (type, id, sequence) of each event: what the table's key decides on.
type Key<'a> = (&'a str, &'a str, i64);

/// Marks as lost every command that appends a stream version an earlier command of the batch
/// appends too: whichever way the earlier one ends, that version is taken.
fn taken_twice(batch: &[Pending]) -> Vec<bool> {
    let mut seen: std::collections::HashSet<Key> = Default::default();
    batch
        .iter()
        .map(|p| {
            let keys: Vec<Key> = p
                .events
                .iter()
                .map(|e| (p.aggregate_type, e.aggregate_id.as_str(), e.sequence as i64))
                .collect();
            let lost = keys.iter().any(|k| seen.contains(k));
            if !lost {
                seen.extend(keys);
            }
            lost
        })
        .collect()
}

/// One multi-row INSERT that skips rows whose stream version exists (in a transaction when a
/// command appends more than one event): a command none of whose rows went in lost its race, one
/// all of whose rows went in committed.
/// One with some rows in and some not cannot happen (a command appends a contiguous run of
/// versions from its stream's end, and any writer that took one of them took the first), but if
/// it did the batch is rolled back and each command appended in a transaction of its own.
async fn postgres(pool: &PgPool, batch: &[Pending]) -> Result<Outcomes, sqlx::Error> {
    let lost = taken_twice(batch);
    let sent = || {
        batch
            .iter()
            .zip(&lost)
            .filter(|(_, l)| !**l)
            .map(|(p, _)| p)
    };
    let rows = || sent().flat_map(|p| p.events.iter().map(move |e| (p, e)));
    let column = |f: fn(&Pending, &SerializedEvent) -> String| {
        rows().map(|(p, e)| f(p, e)).collect::<Vec<_>>()
    };
    let sequences: Vec<i64> = rows().map(|(_, e)| e.sequence as i64).collect();
    let insert = sqlx::query_as(
        "INSERT INTO events
             (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT type, id, seq, event_type, version, payload::json, metadata::json
           FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                       $7::text[])
             AS e(type, id, seq, event_type, version, payload, metadata)
         ON CONFLICT DO NOTHING
         RETURNING aggregate_type, aggregate_id, sequence, position",
    )
    .bind(column(|p, _| p.aggregate_type.to_string()))
    .bind(column(|_, e| e.aggregate_id.clone()))
    .bind(sequences)
    .bind(column(|_, e| e.event_type.clone()))
    .bind(column(|_, e| e.event_version.clone()))
    .bind(column(|_, e| e.payload.to_string()))
    .bind(column(|_, e| e.metadata.to_string()));
    // A command of one event goes in whole or not at all, so a batch of such commands needs no
    // transaction around its one statement (one round trip, not three).
    let (inserted, tx): (Vec<(String, String, i64, i64)>, _) =
        if sent().all(|p| p.events.len() == 1) {
            (insert.fetch_all(pool).await?, None)
        } else {
            let mut tx = pool.begin().await?;
            (insert.fetch_all(&mut *tx).await?, Some(tx))
        };
    let position: std::collections::HashMap<Key, i64> = inserted
        .iter()
        .map(|(t, id, sequence, position)| ((t.as_str(), id.as_str(), *sequence), *position))
        .collect();
    let mut partial = false;
    let outcomes: Outcomes = batch
        .iter()
        .zip(&lost)
        .map(|(p, lost)| {
            if *lost {
                return Err(Failure::Conflict);
            }
            let found: Vec<i64> = p
                .events
                .iter()
                .filter_map(|e| {
                    let key = (p.aggregate_type, e.aggregate_id.as_str(), e.sequence as i64);
                    position.get(&key).copied()
                })
                .collect();
            match found.len() {
                0 => Err(Failure::Conflict),
                n if n == p.events.len() => Ok(found),
                _ => {
                    partial = true;
                    Err(Failure::Conflict)
                }
            }
        })
        .collect();
    let Some(tx) = tx else {
        return Ok(outcomes);
    };
    if !partial {
        tx.commit().await?;
        return Ok(outcomes);
    }
    tx.rollback().await?;
    if batch.len() == 1 {
        return Ok(vec![Err(Failure::Conflict)]);
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for pending in batch {
        let one = Box::pin(postgres(pool, std::slice::from_ref(pending))).await;
        outcomes.push(match one {
            Ok(mut o) => o.pop().unwrap_or(Err(Failure::Conflict)),
            Err(e) => Err(Failure::of(&e)),
        });
    }
    Ok(outcomes)
}

/// One transaction on the single writer, each command under a savepoint of its own: a command
/// whose stream version exists is rolled back to its savepoint alone. An INSERT per event (no
/// round trip: SQLite is in process), one commit.
async fn sqlite(writer: &SqlitePool, batch: &[Pending]) -> Result<Outcomes, sqlx::Error> {
    let lost = taken_twice(batch);
    let mut tx = writer.begin().await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for (p, lost) in batch.iter().zip(lost) {
        if lost {
            outcomes.push(Err(Failure::Conflict));
            continue;
        }
        sqlx::query("SAVEPOINT command").execute(&mut *tx).await?;
        let mut mine = Vec::with_capacity(p.events.len());
        let mut failed = None;
        for e in &p.events {
            let inserted = sqlx::query_scalar(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING position",
            )
            .bind(p.aggregate_type)
            .bind(&e.aggregate_id)
            .bind(e.sequence as i64)
            .bind(&e.event_type)
            .bind(&e.event_version)
            .bind(e.payload.to_string())
            .bind(e.metadata.to_string())
            .fetch_one(&mut *tx)
            .await;
            match inserted {
                Ok(position) => mine.push(position),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None => {
                sqlx::query("RELEASE command").execute(&mut *tx).await?;
                outcomes.push(Ok(mine));
            }
            Some(e) if matches!(Failure::of(&e), Failure::Conflict) => {
                sqlx::query("ROLLBACK TO command").execute(&mut *tx).await?;
                sqlx::query("RELEASE command").execute(&mut *tx).await?;
                outcomes.push(Err(Failure::Conflict));
            }
            // Anything else (a full disk, a broken file) fails the whole batch.
            Some(e) => return Err(e),
        }
    }
    tx.commit().await?;
    Ok(outcomes)
}
