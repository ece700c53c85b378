//! `eucora replay`: the projection runner from position 0 with the projections of `eucora serve`,
//! the Merkle log among them verifying every logged event (see [`crate::projection::log`] for
//! what that does and does not detect). The metrics are rebuilt in memory, the intent read model
//! is rebuilt and the stored one made equal to it, and the first position that disagrees with
//! the log is named.

use std::sync::atomic::Ordering;

use eucora_projections::merkle;
use sha2::{Digest, Sha256};

use crate::projection::intent_view::IntentView;
use crate::projection::log::{with_tiles, LogTree, MerkleLog};
use crate::projection::metrics::MetricsProjection;
use crate::projection::{ProjectionError, RunError, Runner, UNREACHABLE};
use crate::store::{Store, StoreError, ViewRepair};

/// Events read per batch by a replay.
const BATCH: i64 = 5000;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("integrity check failed at position {position}: {what}")]
    Integrity { position: i64, what: String },
    #[error("{0}")]
    Stalled(String),
    /// The stream contradicts what is kept beside it: a signed checkpoint, or the table of
    /// principals.
    #[error("integrity check failed: {0}")]
    Contradicted(String),
}

impl From<RunError> for ReplayError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Projection(ProjectionError::Store(e)) => ReplayError::Store(e),
            RunError::Projection(ProjectionError::Integrity { position, what }) => {
                ReplayError::Integrity { position, what }
            }
            // Replay checks every batch against the log before its payloads are trusted, so a
            // payload that does not decode in a batch that is as logged is not an edit.
            RunError::Projection(ProjectionError::Unreadable { position, reason }) => {
                ReplayError::Integrity {
                    position,
                    what: format!("the payload is not a readable event: {reason}"),
                }
            }
            stalled @ RunError::Stalled { .. } => ReplayError::Stalled(stalled.to_string()),
            RunError::Unreachable { position } => ReplayError::Integrity {
                position,
                what: format!("the event {UNREACHABLE}"),
            },
        }
    }
}

/// What a replay found.
#[derive(Debug)]
pub struct ReplayReport {
    pub events: u64,
    /// Events checked against the stored log.
    pub verified: u64,
    /// Events past the stored log's end, added to it by this replay.
    pub logged: u64,
    /// Signed checkpoints kept in the store, each a tree head the replayed stream makes.
    pub signed: u64,
    /// Intent read-model rows that were missing or differed from the rebuilt ones, and rows no
    /// intent has: both zero when the persisted read model was already right.
    pub view: ViewRepair,
    /// The rebuilt domain metrics' exposition text.
    pub metrics: String,
    /// SHA-256 of `metrics`.
    pub digest: String,
}

/// Replays the whole stream through the runner; `progress` is told how many events have been
/// read so far.
pub async fn replay(
    store: &Store,
    app_label_limit: usize,
    progress: impl Fn(u64) + Send + Sync,
) -> Result<ReplayReport, ReplayError> {
    let runner = Runner::new(store.clone(), BATCH);
    let (log, counts) = MerkleLog::verifying();
    let (metrics, view) = MetricsProjection::new(app_label_limit, runner.status());
    let (intents, repair) = IntentView::rebuild();
    // The log first: an edit is named as an edit before any projection calls it unreadable.
    let end = runner
        .register(log)
        .register(metrics)
        .register(intents)
        .replay(progress)
        .await?;
    let signed = check_signed(store, end.ordinal as u64).await?;
    // The table of principals is a projection of their events: every row must agree.
    if let Some(first) = crate::principals::disagreements(store).await?.first() {
        return Err(ReplayError::Contradicted(first.clone()));
    }
    let text = view.render_now();
    let repair = repair
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    Ok(ReplayReport {
        events: end.ordinal as u64,
        verified: counts.verified.load(Ordering::Acquire),
        logged: counts.logged.load(Ordering::Acquire),
        signed,
        view: repair,
        digest: hex::encode(Sha256::digest(text.as_bytes())),
        metrics: text,
    })
}

/// Checks every signed checkpoint kept in the store against the log the replay just verified
/// (and extended): each covers no more events than the stream holds, and its tree head is the
/// one the stream makes at its size. A consistent rewrite of events and log together passes the
/// replay itself; it does not pass this. Returns how many were checked.
async fn check_signed(store: &Store, events: u64) -> Result<u64, ReplayError> {
    let signed = store.checkpoints().await?;
    if signed.is_empty() {
        return Ok(0);
    }
    let tree = LogTree::from_parts(store.log_subtrees().await?, store.last_log_tile().await?)?;
    for checkpoint in &signed {
        let size = checkpoint.tree_size as u64;
        if size > events || size > tree.size() {
            return Err(ReplayError::Contradicted(format!(
                "a signed checkpoint covers {size} events, the stream holds {events}: events were \
                 deleted after it was signed"
            )));
        }
        let root = with_tiles(store, &tree, |r| {
            merkle::root(r, size).map_err(merkle::ProveError::Read)
        })
        .await
        .map_err(|e| ReplayError::Stalled(e.to_string()))?;
        if root != checkpoint.root {
            return Err(ReplayError::Contradicted(format!(
                "the stream does not make the tree head signed at tree size {size}: the history \
                 was rewritten after it was signed"
            )));
        }
    }
    Ok(signed.len() as u64)
}
