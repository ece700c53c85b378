//! `eucora replay`: rebuild the projections from position 0 (the metrics in memory, the intent read
//! model in the store) and verify the stream's integrity against its seals, naming the first
//! position that disagrees.
//!
//! What the seals detect, for every event already sealed: an edited row (any column), a deleted
//! event, an event inserted among sealed ones, and events reordered or moved. What they do not
//! detect: an event appended after the last seal by someone with write access to the database,
//! or a rewrite of events *and* seals together. Signed checkpoints of (ordinal, chain hash) kept
//! outside the database close the second gap; events authenticated by the writer close the first.

use eucora_projections::event::DeploymentEvent;
use eucora_projections::integrity::{leaf_hash, Chain, Seal};
use eucora_projections::metrics::Metrics;
use sha2::{Digest, Sha256};

use crate::projector::{Projector, INTENTS};
use crate::store::{GlobalEvent, Store, StoreError};

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

/// A batch of the global stream with the seals stored for its ordinals.
type Batch = (Vec<Ahead>, Vec<Seal>);

/// Reads the global stream ahead of the fold, two batches at most, hashing and parsing each event
/// (work that does not depend on order): the database and this task prepare the next batch while
/// the caller chains, checks and folds the current one. Every event committed before the
/// replay began is read; on PostgreSQL a transaction still open elsewhere on the server holds back
/// events committed after it began, so an empty page before that count is a wait, not the end.
fn prefetch(store: Store, head: u64) -> tokio::sync::mpsc::Receiver<Result<Batch, ReplayError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let (mut after, mut ordinal, mut read) = (0i64, 1i64, 0u64);
        let mut progressed = std::time::Instant::now();
        loop {
            let batch = match store.read_global(after, BATCH).await {
                Ok(batch) => batch,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            let Some(last) = batch.last() else {
                if read >= head {
                    return;
                }
                if progressed.elapsed() > STALL {
                    let _ = tx.send(Err(ReplayError::Stalled { read, head })).await;
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            };
            progressed = std::time::Instant::now();
            after = last.position;
            let seals = match store.seals_from(ordinal, batch.len() as i64).await {
                Ok(seals) => seals,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            ordinal += batch.len() as i64;
            read += batch.len() as u64;
            let ahead = batch
                .into_iter()
                .map(|row| Ahead {
                    leaf: leaf_hash(&row.row()),
                    event: row.parse(),
                    row,
                })
                .collect();
            if tx.send(Ok((ahead, seals))).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// The stream pass of a replay: every event read in global order, checked against its seal (or
/// sealed), and folded into the metrics. Writes nothing.
pub struct StreamPass {
    pub metrics: Metrics,
    pub events: u64,
    pub verified: u64,
    /// Seals for the events past the last stored seal, to be written.
    pub fresh: Vec<Seal>,
}

/// Reads, verifies and folds the whole stream; `progress` is told how many events were read.
pub async fn stream_pass(
    store: &Store,
    app_label_limit: usize,
    progress: impl Fn(u64),
) -> Result<StreamPass, ReplayError> {
    let mut metrics = Metrics::new(app_label_limit);
    let mut chain = Chain::default();
    let (mut events, mut verified) = (0u64, 0u64);
    let mut fresh: Vec<Seal> = Vec::new();
    let head = store.event_count().await?.max(0) as u64;
    let mut batches = prefetch(store.clone(), head);
    while let Some(next) = batches.recv().await {
        let (batch, stored) = next?;
        for (i, ahead) in batch.iter().enumerate() {
            let e = &ahead.row;
            let computed = chain.extend(e.position, ahead.leaf);
            match stored.get(i) {
                Some(seal) => {
                    check(store, e, &computed, seal).await?;
                    verified += 1;
                }
                None => fresh.push(computed),
            }
            let event = ahead
                .event
                .as_ref()
                .map_err(|reason| ReplayError::Integrity {
                    position: e.position,
                    what: format!("the payload is not a readable event: {reason}"),
                })?;
            metrics.apply(e.position, event);
            events += 1;
        }
        progress(events);
    }
    if let Some(missing) = store.seals_from(chain.ordinal() + 1, 1).await?.first() {
        return Err(ReplayError::Integrity {
            position: missing.position,
            what: format!(
                "the event sealed as #{} is missing (deleted)",
                missing.ordinal
            ),
        });
    }
    Ok(StreamPass {
        metrics,
        events,
        verified,
        fresh,
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
        events,
        verified,
        fresh,
    } = stream_pass(store, app_label_limit, progress).await?;
    for part in fresh.chunks(BATCH as usize) {
        store.insert_seals(part).await?;
    }
    // The persisted intent read model, rebuilt from position 0 by the runner's own step.
    store.reset_intent_view(INTENTS).await?;
    let runner = Projector::new(store.clone(), app_label_limit);
    while store.checkpoint(INTENTS).await?.ordinal < events as i64 {
        if runner.project_intents().await? == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let text = metrics.render();
    Ok(ReplayReport {
        events,
        verified,
        sealed: fresh.len() as u64,
        digest: hex::encode(Sha256::digest(text.as_bytes())),
        metrics: text,
    })
}
