//! `eucora replay`: rebuild the projections from position 0 (the metrics in memory, the intent read
//! model in the store) and verify the stream's integrity against its seals, naming the first
//! position that disagrees.
//!
//! What the seals detect, for every event already sealed: an edited row (any column), a deleted
//! event, an event inserted among sealed ones, and events reordered or moved. What they do not
//! detect: an event appended after the last seal by someone with write access to the database,
//! a rewrite of events *and* seals together, or a seal row altered between two that are checked
//! (one per batch) while the events it covers stay intact. Signed checkpoints of (ordinal, chain
//! hash) kept outside the database close the second gap; events authenticated by the writer close
//! the first.

use std::collections::HashMap;

use eucora_projections::event::DeploymentEvent;
use eucora_projections::integrity::{leaf_hash, Chain, Seal};
use eucora_projections::intent::IntentState;
use eucora_projections::metrics::Metrics;
use sha2::{Digest, Sha256};

use crate::projector::{joined, INTENTS};
use crate::store::{Checkpoint, GlobalEvent, IntentRow, Store, StoreError, ViewRepair};

const BATCH: i64 = 5000;
/// How long replay waits for committed events that are not yet readable.
const STALL: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("integrity check failed at position {position}: {what}")]
    Integrity { position: i64, what: String },
    #[error(
        "{read} of {head} stored events became readable: a transaction left open on the database \
         server holds the rest back, or an event carries a transaction id from the future (tampering)"
    )]
    Stalled { read: u64, head: u64 },
}

/// What a replay found.
#[derive(Debug)]
pub struct ReplayReport {
    pub events: u64,
    /// Events checked against an existing seal.
    pub verified: u64,
    /// Events past the last seal, sealed by this replay.
    pub sealed: u64,
    /// Intent read-model rows that were missing or differed from the rebuilt ones, and rows no
    /// intent has: both zero when the persisted read model was already right.
    pub view: ViewRepair,
    /// The rebuilt domain metrics' exposition text.
    pub metrics: String,
    /// SHA-256 of `metrics`.
    pub digest: String,
}

/// Compares one event with the seal stored for its ordinal.
async fn check(
    store: &Store,
    e: &GlobalEvent,
    computed: &Seal,
    stored: &Seal,
) -> Result<(), ReplayError> {
    if stored.position != e.position {
        // Either the sealed event is gone, or another event stands in its place.
        return Err(if store.has_position(stored.position).await? {
            ReplayError::Integrity {
                position: e.position,
                what: format!(
                    "an event was inserted or moved here; seal #{} names position {}",
                    stored.ordinal, stored.position
                ),
            }
        } else {
            ReplayError::Integrity {
                position: stored.position,
                what: format!(
                    "the event sealed as #{} is missing (deleted)",
                    stored.ordinal
                ),
            }
        });
    }
    if stored.leaf_hash != computed.leaf_hash {
        return Err(ReplayError::Integrity {
            position: e.position,
            what: format!(
                "the stored event differs from the one sealed as #{} (edited)",
                stored.ordinal
            ),
        });
    }
    if stored.chain_hash != computed.chain_hash {
        return Err(ReplayError::Integrity {
            position: e.position,
            what: format!(
                "the chain differs at seal #{} (the seals were altered)",
                stored.ordinal
            ),
        });
    }
    Ok(())
}

/// One event read ahead: the row, its leaf hash and its payload parsed.
struct Ahead {
    row: GlobalEvent,
    leaf: [u8; 32],
    event: Result<DeploymentEvent, String>,
}

/// A batch of the global stream, shared by the stages that fold it, with the stored seal of its
/// last sealed event (`None` when the batch lies past the last seal, or that seal is gone).
struct Read {
    events: Vec<Ahead>,
    /// The ordinal of the batch's first event.
    first: i64,
    /// The ordinal the batch is checked at, and the seal stored for it.
    checked_at: Option<(i64, Option<Seal>)>,
}

type Batch = std::sync::Arc<Read>;

/// Reads the global stream ahead of the folds in two pipelined stages, each holding at most two
/// batches: a reader task pages through the stream, and a parser task hashes and parses each
/// event (work that does not depend on order), so the database, the parser and the caller's
/// folds all run at once. Every event committed before the replay began is read; on PostgreSQL a
/// transaction still open elsewhere on the server holds back events committed after it began, so
/// an empty page before that count is a wait, not the end.
///
/// Of the seals up to `sealed`, only one per batch is read: the chain value commits to every
/// event before it, so if the last seal of a batch matches, so does every seal in it.
fn prefetch(
    store: Store,
    head: u64,
    sealed: i64,
) -> tokio::sync::mpsc::Receiver<Result<Batch, ReplayError>> {
    let (raw_tx, mut raw_rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let (mut after, mut ordinal, mut read) = (0i64, 1i64, 0u64);
        let mut progressed = std::time::Instant::now();
        loop {
            let batch = match store.read_global(after, BATCH).await {
                Ok(batch) => batch,
                Err(e) => {
                    let _ = raw_tx.send(Err(e.into())).await;
                    return;
                }
            };
            let Some(last) = batch.last() else {
                if read >= head {
                    return;
                }
                if progressed.elapsed() > STALL {
                    let _ = raw_tx.send(Err(ReplayError::Stalled { read, head })).await;
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            };
            progressed = std::time::Instant::now();
            after = last.position;
            let first = ordinal;
            ordinal += batch.len() as i64;
            read += batch.len() as u64;
            let checked_at = if first <= sealed {
                let at = (ordinal - 1).min(sealed);
                match store.seals_from(at, 1).await {
                    Ok(seals) => Some((at, seals.into_iter().find(|s| s.ordinal == at))),
                    Err(e) => {
                        let _ = raw_tx.send(Err(e.into())).await;
                        return;
                    }
                }
            } else {
                None
            };
            if raw_tx.send(Ok((batch, first, checked_at))).await.is_err() {
                return;
            }
        }
    });
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        while let Some(next) = raw_rx.recv().await {
            let parsed = next.map(|(batch, first, checked_at): (Vec<GlobalEvent>, _, _)| {
                let events = batch
                    .into_iter()
                    .map(|row| Ahead {
                        leaf: leaf_hash(&row.row()),
                        event: row.parse(),
                        row,
                    })
                    .collect();
                std::sync::Arc::new(Read {
                    events,
                    first,
                    checked_at,
                })
            });
            if tx.send(parsed).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Finds and names the first event of a batch that disagrees with its seal, once the batch's
/// chain did not match the seal at ordinal `at`: `chain` is the chain as it stood before the batch.
async fn first_disagreement(store: &Store, mut chain: Chain, batch: &Read, at: i64) -> ReplayError {
    let stored = match store.seals_from(batch.first, at - batch.first + 1).await {
        Ok(stored) => stored,
        Err(e) => return e.into(),
    };
    for (ahead, expected) in batch.events.iter().zip(batch.first..=at) {
        let computed = chain.extend(ahead.row.position, ahead.leaf);
        let Some(seal) = stored.iter().find(|s| s.ordinal == expected) else {
            return ReplayError::Integrity {
                position: ahead.row.position,
                what: format!("seal #{expected} is missing (the seals were altered)"),
            };
        };
        if let Err(e) = check(store, &ahead.row, &computed, seal).await {
            return e;
        }
    }
    ReplayError::Integrity {
        position: batch
            .events
            .get((at - batch.first) as usize)
            .map_or(0, |a| a.row.position),
        what: format!("the chain differs at seal #{at} (the seals were altered)"),
    }
}

/// The stream pass of a replay: every event read in global order, checked against its seal (or
/// sealed), and folded into the metrics and, on a task of its own, the intent read model.
/// Writes nothing.
pub struct StreamPass {
    pub metrics: Metrics,
    /// The intent read model as the whole stream leaves it, in no particular order.
    pub intents: Vec<IntentRow>,
    pub events: u64,
    pub verified: u64,
    /// Seals for the events past the last stored seal, to be written.
    pub fresh: Vec<Seal>,
    /// The position of the last event read.
    pub last_position: i64,
}

/// Folds every batch into the intent read model: each intent's state after its last event, with
/// the ordinal of its creation event as the list's sort key. Unreadable events stop the stream
/// pass itself, so they are skipped here.
fn fold_intents(
    mut batches: tokio::sync::mpsc::Receiver<Batch>,
) -> tokio::task::JoinHandle<Result<Vec<IntentRow>, StoreError>> {
    tokio::spawn(async move {
        let mut rows: HashMap<String, IntentRow> = HashMap::new();
        let mut ordinal = 0i64;
        while let Some(batch) = batches.recv().await {
            for ahead in &batch.events {
                ordinal += 1;
                let Ok(event) = &ahead.event else { continue };
                let (id, current) = match rows.remove_entry(&ahead.row.aggregate_id) {
                    Some((id, row)) => (id, Some(row)),
                    None => (ahead.row.aggregate_id.clone(), None),
                };
                let seq = current.as_ref().map_or(ordinal, |r| r.seq);
                if let Some(state) = IntentState::fold(current.map(|r| r.state), event) {
                    rows.insert(id, IntentRow { seq, state });
                }
            }
        }
        Ok(rows.into_values().collect())
    })
}

/// Reads, verifies and folds the whole stream; `progress` is told how many events were read.
pub async fn stream_pass(
    store: &Store,
    app_label_limit: usize,
    progress: impl Fn(u64),
) -> Result<StreamPass, ReplayError> {
    let mut metrics = Metrics::new(app_label_limit);
    let mut chain = Chain::default();
    let (mut events, mut verified, mut last_position) = (0u64, 0u64, 0i64);
    let mut fresh: Vec<Seal> = Vec::new();
    let head = store.event_count().await?.max(0) as u64;
    let sealed = store.last_seal().await?.map_or(0, |s| s.ordinal);
    let mut batches = prefetch(store.clone(), head, sealed);
    let (intents_tx, intents_rx) = tokio::sync::mpsc::channel(2);
    let intents = fold_intents(intents_rx);
    while let Some(next) = batches.recv().await {
        let shared = next?;
        let _ = intents_tx.send(shared.clone()).await;
        let batch = &*shared;
        let before = chain.clone();
        for ahead in &batch.events {
            if chain.ordinal() < sealed {
                chain.push(ahead.leaf);
                verified += 1;
            } else {
                fresh.push(chain.extend(ahead.row.position, ahead.leaf));
            }
            if let Some((at, stored)) = &batch.checked_at {
                if chain.ordinal() == *at && !stored.as_ref().is_some_and(|s| chain.matches(s)) {
                    return Err(first_disagreement(store, before, batch, *at).await);
                }
            }
        }
        // The batch is as sealed, so a payload that does not parse is not an edit: it is named
        // as unreadable.
        for ahead in &batch.events {
            let e = &ahead.row;
            let event = ahead
                .event
                .as_ref()
                .map_err(|reason| ReplayError::Integrity {
                    position: e.position,
                    what: format!("the payload is not a readable event: {reason}"),
                })?;
            metrics.apply(e.position, event);
            events += 1;
            last_position = e.position;
        }
        progress(events);
    }
    drop(intents_tx);
    if let Some(missing) = store.seals_from(chain.ordinal() + 1, 1).await?.first() {
        return Err(ReplayError::Integrity {
            position: missing.position,
            what: format!(
                "the event sealed as #{} is missing (deleted)",
                missing.ordinal
            ),
        });
    }
    let intents = joined(intents).await?;
    Ok(StreamPass {
        metrics,
        intents,
        events,
        verified,
        fresh,
        last_position,
    })
}

/// Replays the whole stream: the stream pass, then the new seals and the intent read model
/// rebuilt from position 0. `progress` is told how many events have been read so far.
pub async fn replay(
    store: &Store,
    app_label_limit: usize,
    progress: impl Fn(u64),
) -> Result<ReplayReport, ReplayError> {
    let StreamPass {
        metrics,
        intents,
        events,
        verified,
        fresh,
        last_position,
    } = stream_pass(store, app_label_limit, progress).await?;
    for part in fresh.chunks(BATCH as usize) {
        store.insert_seals(part).await?;
    }
    // The persisted intent read model becomes the one the pass folded, its checkpoint the end of
    // the pass.
    let view = store
        .replace_intent_view(
            INTENTS,
            &intents,
            Checkpoint {
                position: last_position,
                ordinal: events as i64,
            },
        )
        .await?;
    let text = metrics.render();
    Ok(ReplayReport {
        events,
        verified,
        sealed: fresh.len() as u64,
        view,
        digest: hex::encode(Sha256::digest(text.as_bytes())),
        metrics: text,
    })
}
