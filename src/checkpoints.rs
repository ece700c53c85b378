//! Signed checkpoints of the Merkle log, and the integrity status they feed.
//!
//! A checkpoint is the C2SP tlog-checkpoint body (origin, tree size, base64 tree head, one per
//! line, then the extension line `intent-heads <count> <base64 root>` committing to the index of
//! every intent's head at that size, `eucora_projections::heads`) signed as a C2SP signed note with Ed25519 (the `signed_note` crate). The origin is the
//! signing key's name. The server signs one every `--checkpoint-interval` or every
//! `--checkpoint-events` new leaves, whichever comes first, after checking that the log it is about
//! to sign extends the previous checkpoint (a consistency proof, verified). It keeps every one in the
//! database and the latest in a directory outside it (`checkpoint`, replaced atomically, 0600; by
//! default in the server's state directory, not the database's: [`place`]), and at start-up it
//! checks the log against that file: a database rewritten while the server was down no longer
//! matches it. With a witness ([`witness`]) each checkpoint is first offered to it, and one the
//! witness says does not extend what it accepted is never kept. Any failed check is an integrity failure: logged, counted
//! (`eucora_integrity_failures_total`), reported by `/health/ready` (503), and no further
//! checkpoint is signed.
//!
//! The private key lives only in its file (0600) and in this process's memory: it never enters the
//! database, a log line, or `Debug` output.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eucora_projections::heads::{HeadIndex, Heads};
use eucora_projections::merkle;

use crate::projection::log::{with_tiles, LogView};
use crate::projection::RunnerStatus;
use crate::store::{Columns, Store, StoreError, StoredCheckpoint};

/// The heads of every deployment intent over the log's first leaves, read from the global stream
/// and kept up to date as the log grows.
#[derive(Debug, Default)]
pub struct IntentHeads {
    heads: Heads,
    /// The position of the last event taken.
    after: Option<i64>,
}

impl IntentHeads {
    /// The index of the heads over the log's first `size` leaves.
    pub async fn of(store: &Store, size: u64) -> Result<Arc<HeadIndex>, StoreError> {
        IntentHeads::default().index(store, size).await
    }

    /// Takes the leaves up to `size` it has not taken yet, and makes their index.
    pub async fn index(&mut self, store: &Store, size: u64) -> Result<Arc<HeadIndex>, StoreError> {
        use cqrs_es::Aggregate;
        const BATCH: i64 = 5000;
        let intent = <crate::domain::intent::DeploymentIntent as Aggregate>::TYPE;
        while self.heads.leaves() < size {
            let want = (size - self.heads.leaves()).min(BATCH as u64) as i64;
            let rows = store
                .read_global(self.after, want, Columns::Streams)
                .await?;
            let Some(last) = rows.last() else {
                return Err(StoreError::Corrupt {
                    position: self.after.unwrap_or(0),
                    reason: format!("the stream ends before the log's {size} leaves"),
                });
            };
            self.after = Some(last.position);
            for row in &rows {
                let stream = row.stream()?;
                let id = if stream.aggregate_type == intent {
                    Some(uuid::Uuid::parse_str(&stream.aggregate_id).map_err(|_| {
                        StoreError::Corrupt {
                            position: row.position,
                            reason: format!("intent id {:?} is not a UUID", stream.aggregate_id),
                        }
                    })?)
                } else {
                    None
                };
                self.heads.push(id);
            }
        }
        Ok(self.heads.index())
    }
}

/// What the integrity checks found, for readiness and the process metrics.
#[derive(Debug, Default)]
pub struct IntegrityStatus {
    failure: Mutex<Option<String>>,
    failures: AtomicU64,
    /// The latest checkpoint's tree size.
    checkpoint_size: AtomicU64,
    /// Leaves re-verified against their events by the background check, up to this index.
    verified: AtomicU64,
}

impl IntegrityStatus {
    /// Records a failure: the first one is kept for readiness, every one is counted.
    pub fn fail(&self, what: String) {
        tracing::error!(integrity = %what, "integrity check failed");
        self.failures.fetch_add(1, Ordering::AcqRel);
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.get_or_insert(what);
    }

    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }

    pub fn checkpoint_size(&self) -> u64 {
        self.checkpoint_size.load(Ordering::Acquire)
    }

    pub fn verified(&self) -> u64 {
        self.verified.load(Ordering::Acquire)
    }

    pub fn set_verified(&self, index: u64) {
        self.verified.store(index, Ordering::Release);
    }
}

/// Leaves the background check re-verifies per tick (four ticks a second): a million events are
/// gone through in about eight minutes, at a cost of a few milliseconds a tick.
pub const REVERIFY_PER_TICK: u64 = 500;

pub mod note;
pub mod place;
pub mod witness;

pub use note::{
    checkpoint_text, open_checkpoint, Checkpoint, KeyError, SigningKey, DEFAULT_KEY_NAME,
    HEADS_EXTENSION,
};
pub use place::LATEST;

/// How the checkpointer is set up.
pub struct CheckpointPlan {
    pub key: Arc<SigningKey>,
    /// Where the latest checkpoint is also written, outside the database.
    pub dir: Option<PathBuf>,
    /// Where each checkpoint is offered before it is kept.
    pub witness: Option<witness::Witness>,
    pub interval: Duration,
    pub every_events: u64,
}

/// Re-verifies stored events against the log in the background and, with a key, signs
/// checkpoints as the log grows; see the module documentation.
pub struct Checkpointer {
    pub store: Store,
    pub log: LogView,
    pub runner: Arc<RunnerStatus>,
    pub status: Arc<IntegrityStatus>,
    /// Without a key nothing is signed; the background check still runs.
    pub plan: Option<CheckpointPlan>,
}

impl Checkpointer {
    /// Runs until `shutdown` resolves: the start-up check once the log has caught up, then a
    /// checkpoint whenever one is due.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let tick = self
            .plan
            .as_ref()
            .map_or(Duration::MAX, |p| p.interval / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(250));
        let mut checked = false;
        let mut whole = false;
        let mut last_signed = Instant::now();
        let mut next_check = 0u64;
        let mut heads = IntentHeads::default();
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(tick) => {}
            }
            if self.status.failure().is_some() {
                continue;
            }
            // Before anything waits for the projections: a store shorter than what was already
            // read or signed would keep them "catching up" for ever.
            if !whole {
                match self.check_at_start().await {
                    Ok(()) => whole = true,
                    Err(Failure::Integrity(what)) => {
                        self.status.fail(what);
                        continue;
                    }
                    Err(Failure::Transient(e)) => {
                        tracing::warn!(error = %e, "cannot compare the store with what was read and signed yet");
                        continue;
                    }
                }
            }
            if !self.runner.caught_up() {
                continue;
            }
            // Rolling re-verification of stored events against the log, from leaf 0 again once
            // it reached the end.
            match crate::projection::log::reverify(&self.store, next_check, REVERIFY_PER_TICK).await
            {
                Ok(upto) => {
                    self.status.set_verified(upto);
                    next_check = if upto >= next_check + REVERIFY_PER_TICK {
                        upto
                    } else {
                        0
                    };
                }
                Err(crate::projection::ProjectionError::Integrity { position, what }) => {
                    self.status.fail(format!("at position {position}: {what}"));
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "cannot re-verify stored events now"),
            }
            if !checked {
                match self.check_directory().await {
                    Ok(()) => checked = true,
                    Err(Failure::Integrity(what)) => {
                        self.status.fail(what);
                        continue;
                    }
                    Err(Failure::Transient(e)) => {
                        tracing::warn!(error = %e, "cannot check the log against the kept checkpoint yet");
                        continue;
                    }
                }
            }
            match self.maybe_sign(last_signed, &mut heads).await {
                Ok(true) => last_signed = Instant::now(),
                Ok(false) => {}
                Err(Failure::Integrity(what)) => self.status.fail(what),
                Err(Failure::Transient(e)) => {
                    tracing::warn!(error = %e, "cannot sign a checkpoint now; retrying")
                }
            }
        }
    }

    /// The latest checkpoint the directory keeps, verified with our key.
    fn kept(&self) -> Result<Option<Checkpoint>, Failure> {
        let Some((dir, key)) = self
            .plan
            .as_ref()
            .and_then(|p| Some((p.dir.as_ref()?, &p.key)))
        else {
            return Ok(None);
        };
        let path = dir.join(LATEST);
        match std::fs::read_to_string(&path) {
            Ok(note) => open_checkpoint(&note, key.verifier_key())
                .map(Some)
                .map_err(|e| Failure::Integrity(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Failure::Transient(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// The store must hold at least every event its projections read, its log holds, and any
    /// checkpoint signed (in the database or kept outside it) covers, and the last event each
    /// projection read must still be there: else events were deleted, and the projections would
    /// wait for them for ever. And every principal must be what its access events say.
    async fn check_at_start(&self) -> Result<(), Failure> {
        let transient = |e: crate::store::StoreError| Failure::Transient(e.to_string());
        // Each claim on the store's length is read first and the store's count last: the count
        // only grows, so on a whole store it is never below a claim read before it, however
        // busy the store is meanwhile.
        let mut claims: Vec<(u64, String)> = Vec::new();
        for (name, at) in self
            .store
            .checkpoints_by_projection()
            .await
            .map_err(transient)?
        {
            if at.ordinal > 0
                && !self
                    .store
                    .has_position(at.position)
                    .await
                    .map_err(transient)?
            {
                return Err(Failure::Integrity(format!(
                    "the event at position {} that projection {name} read last is gone: events \
                     were deleted",
                    at.position
                )));
            }
            claims.push((
                at.ordinal.max(0) as u64,
                format!("the {} projection {name} had read", at.ordinal),
            ));
        }
        let logged = self.store.log_size().await.map_err(transient)?;
        claims.push((logged, format!("the {logged} its Merkle log holds")));
        if let Some(latest) = self.store.latest_checkpoint().await.map_err(transient)? {
            claims.push((
                latest.tree_size as u64,
                format!("the {} of the latest signed checkpoint", latest.tree_size),
            ));
        }
        if let Some(kept) = self.kept()? {
            let file = self
                .plan
                .as_ref()
                .and_then(|p| p.dir.as_ref())
                .map(|d| d.join(LATEST).display().to_string())
                .unwrap_or_default();
            claims.push((
                kept.size,
                format!(
                    "the {} of the checkpoint kept outside the database in {file} (if this \
                     database was replaced on purpose, move that file away)",
                    kept.size
                ),
            ));
        }
        let held = self.store.event_count().await.map_err(transient)?.max(0) as u64;
        if let Some((_, what)) = claims.iter().find(|(n, _)| *n > held) {
            return Err(Failure::Integrity(format!(
                "the store holds {held} events, fewer than {what}: events were deleted"
            )));
        }
        // The table of principals is a projection of their access events.
        let forged = crate::principals::disagreements(&self.store)
            .await
            .map_err(transient)?;
        if let Some(first) = forged.first() {
            return Err(Failure::Integrity(if forged.len() > 1 {
                format!("{first} (and {} more principals)", forged.len() - 1)
            } else {
                first.clone()
            }));
        }
        Ok(())
    }

    /// The log as the database holds it must extend the checkpoint kept outside it.
    async fn check_directory(&self) -> Result<(), Failure> {
        let Some(kept) = self.kept()? else {
            return Ok(());
        };
        self.check_extends(&kept, "the checkpoint kept outside the database")
            .await?;
        self.status
            .checkpoint_size
            .fetch_max(kept.size, Ordering::AcqRel);
        tracing::info!(
            size = kept.size,
            "the log extends the checkpoint kept outside the database"
        );
        Ok(())
    }

    /// Checks that the log held now has `earlier`'s head at its size: a consistency proof from
    /// it to the current size, made from the log and verified.
    async fn check_extends(&self, earlier: &Checkpoint, what: &str) -> Result<(), Failure> {
        let tree = self.log.tree();
        let size = tree.size();
        if size < earlier.size {
            return Err(Failure::Integrity(format!(
                "the log holds {size} events, fewer than the {} of {what}: events were deleted",
                earlier.size
            )));
        }
        if earlier.size == 0 {
            return Ok(());
        }
        let root = tree.root();
        let proof = with_tiles(&self.store, &tree, |r| {
            merkle::consistency_proof(r, earlier.size, size)
        })
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?;
        merkle::verify_consistency(earlier.size, size, &earlier.root, &root, &proof).map_err(|e| {
            Failure::Integrity(format!(
                "the log does not extend {what} (tree size {}): {e}; the stored history \
                     was rewritten",
                earlier.size
            ))
        })
    }

    /// Offers the checkpoint `note` of `tree` to the witness, from the size it last accepted
    /// (else the latest stored checkpoint's, `stored`), following its 409s to the size it holds.
    /// A witness holding a larger tree, or refusing the proof, is an integrity failure: the log
    /// was rolled back or rewritten. A witness that cannot be used is warned of; the checkpoint
    /// is kept all the same, and the next one is offered again.
    async fn offer(
        &self,
        witness: &witness::Witness,
        tree: &crate::projection::log::LogTree,
        stored: u64,
        note: &str,
    ) -> Result<(), Failure> {
        let size = tree.size();
        let mut old = witness.accepted().unwrap_or(stored);
        for _ in 0..3 {
            if old > size {
                return Err(Failure::Integrity(format!(
                    "the checkpoint witness {} accepted a tree of {old} events; this log holds \
                     {size}: events were deleted or the history rewritten",
                    witness.host()
                )));
            }
            let proof = if old == 0 || old == size {
                Vec::new()
            } else {
                with_tiles(&self.store, tree, |r| {
                    merkle::consistency_proof(r, old, size)
                })
                .await
                .map_err(|e| Failure::Transient(e.to_string()))?
            };
            match witness.add(old, &proof, note).await {
                witness::Answer::Accepted(answer) => {
                    witness.accept(size);
                    if let Some(dir) = self.plan.as_ref().and_then(|p| p.dir.as_ref()) {
                        let kept = format!("{note}{}", answer.trim_start_matches('\n'));
                        place::write_private(dir, place::WITNESSED, &kept)
                            .map_err(Failure::Transient)?;
                    }
                    tracing::info!(
                        witness = witness.host(),
                        size,
                        "the witness accepted the checkpoint"
                    );
                    return Ok(());
                }
                witness::Answer::AtSize(held) if held != old => old = held,
                witness::Answer::AtSize(_) => break,
                witness::Answer::Inconsistent(detail) => {
                    return Err(Failure::Integrity(format!(
                        "the checkpoint witness {} refuses the checkpoint of {size} events: the \
                         log does not extend the tree of {old} it accepted ({detail}); the \
                         history was rewritten",
                        witness.host()
                    )))
                }
                witness::Answer::Unusable(why) => {
                    tracing::warn!(witness = witness.host(), size, reason = %why,
                        "the checkpoint witness could not be used; the checkpoint is kept, and the next one is offered");
                    return Ok(());
                }
            }
        }
        tracing::warn!(
            witness = witness.host(),
            size,
            "the checkpoint witness keeps answering 409; the next checkpoint is offered again"
        );
        Ok(())
    }

    /// Signs a checkpoint of the current tree if one is due; `Ok(true)` when it did.
    async fn maybe_sign(
        &self,
        last_signed: Instant,
        heads: &mut IntentHeads,
    ) -> Result<bool, Failure> {
        let Some(plan) = &self.plan else {
            return Ok(false);
        };
        let tree = self.log.tree();
        let size = tree.size();
        let transient = |e: crate::store::StoreError| Failure::Transient(e.to_string());
        let latest = self.store.latest_checkpoint().await.map_err(transient)?;
        let latest_size = latest.as_ref().map_or(0, |c| c.tree_size as u64);
        if size <= latest_size {
            if let Some(latest) = &latest {
                self.status
                    .checkpoint_size
                    .fetch_max(latest.tree_size as u64, Ordering::AcqRel);
            }
            return Ok(false);
        }
        // The previous checkpoint, as signed (by this key: another key's is an integrity
        // failure), must be a prefix of what is signed now; so must the one kept outside.
        let previous = latest
            .as_ref()
            .map(|latest| open_checkpoint(&latest.note, plan.key.verifier_key()))
            .transpose()
            .map_err(|e| Failure::Integrity(format!("the latest stored checkpoint: {e}")))?;
        // One signed before the intent-heads index proves no deployment complete: replaced as
        // soon as the log grows.
        let due = size - latest_size >= plan.every_events
            || last_signed.elapsed() >= plan.interval
            || previous.as_ref().is_some_and(|p| p.heads.is_none());
        if !due {
            return Ok(false);
        }
        if let Some(previous) = &previous {
            self.check_extends(previous, "the latest signed checkpoint")
                .await?;
        }
        // The one kept outside is usually that same checkpoint: checked once, then.
        if let Some(kept) = self.kept()?.filter(|kept| Some(kept) != previous.as_ref()) {
            self.check_extends(&kept, "the checkpoint kept outside the database")
                .await?;
        }
        let root = tree.root();
        let index = heads.index(&self.store, size).await.map_err(transient)?;
        let note = plan
            .key
            .sign_checkpoint(size, &root, &index.root())
            .map_err(Failure::Transient)?;
        // Outside the database first: a checkpoint is served (from the database) only once the
        // copy an insider cannot rewrite holds it. The other order left a window in which a
        // server stopped after serving a checkpoint but before keeping it outside, and a history
        // rewritten under that checkpoint went unnoticed at the next start. A checkpoint kept
        // outside and not in the database is harmless: the log it was signed over holds it.
        if let Some(witness) = &plan.witness {
            self.offer(witness, &tree, latest_size, &note).await?;
        }
        if let Some(dir) = &plan.dir {
            place::write_private(dir, LATEST, &note).map_err(Failure::Transient)?;
        }
        let stored = self
            .store
            .keep_checkpoint(&StoredCheckpoint {
                tree_size: size as i64,
                root,
                note: note.clone(),
            })
            .await
            .map_err(|e| match e {
                crate::store::StoreError::Database(ref d)
                    if d.to_string().contains("append-only") =>
                {
                    Failure::Integrity(format!(
                        "a different checkpoint of tree size {size} is stored: two signers \
                         disagree about the log"
                    ))
                }
                other => Failure::Transient(other.to_string()),
            })?;
        if stored.note != note {
            return Err(Failure::Integrity(format!(
                "a different checkpoint of tree size {size} is stored: two signers disagree \
                 about the log"
            )));
        }
        self.status
            .checkpoint_size
            .fetch_max(size, Ordering::AcqRel);
        // Its evidence reads the heads from here rather than from the whole stream again.
        self.log.keep_signed_heads(index);
        Ok(true)
    }
}

enum Failure {
    /// The history is not what was signed: stop signing, report not ready.
    Integrity(String),
    /// The database or a file did not answer: try again.
    Transient(String),
}
