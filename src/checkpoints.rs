//! Signed checkpoints of the Merkle log, and the integrity status they feed.
//!
//! A checkpoint is the C2SP tlog-checkpoint body (origin, tree size, base64 tree head, one per
//! line, then the extension line `intent-heads <count> <base64 root>` committing to the index of
//! every intent's head at that size, `eucora_projections::heads`) signed as a C2SP signed note with Ed25519 (the `signed_note` crate). The origin is the
//! signing key's name. The server signs one every `--checkpoint-interval` or every
//! `--checkpoint-events` new leaves, whichever comes first, after checking that the log it is about
//! to sign extends the previous checkpoint (a consistency proof, verified). It keeps every one in the
//! database and the latest in a directory outside it (`checkpoint`, replaced atomically), and at
//! start-up it checks the log against that file: a database rewritten while the server was down no
//! longer matches it. Any failed check is an integrity failure: logged, counted
//! (`eucora_integrity_failures_total`), reported by `/health/ready` (503), and no further
//! checkpoint is signed.
//!
//! The private key lives only in its file (0600) and in this process's memory: it never enters the
//! database, a log line, or `Debug` output.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use eucora_projections::heads::{Heads, IndexRoot};
use eucora_projections::merkle::{self, Hash};
use signed_note::{Note, Signer, StandardSigner, StandardVerifier, VerifierList};

use crate::projection::log::{with_tiles, LogView};
use crate::projection::RunnerStatus;
use crate::store::{Columns, Store, StoreError, StoredCheckpoint};

/// The name a generated key (and so the log's origin) gets unless one is given.
pub const DEFAULT_KEY_NAME: &str = "eucora";

/// Why a key or a checkpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the signing key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write the signing key {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} does not hold a signing key (PRIVATE+KEY+<name>+<id>+<key>, as `eucora key generate` writes)")]
    Format { path: String },
    #[error("{0:?} is not a key name: use letters, digits and punctuation, without spaces or '+'")]
    Name(String),
    #[error("{0} is not a verifier key (<name>+<id>+<key>)")]
    Verifier(String),
}

/// The log's signing key: an Ed25519 key in the signed-note encoding.
pub struct SigningKey {
    signer: StandardSigner,
    verifier: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.verifier)
    }
}

impl SigningKey {
    /// Makes a new key named `name` and writes it to `path`, which must not exist yet, readable
    /// by its owner only (0600).
    pub fn create(path: &Path, name: &str) -> Result<SigningKey, KeyError> {
        if !signed_note::is_key_name_valid(name) {
            return Err(KeyError::Name(name.to_string()));
        }
        let (skey, vkey) = signed_note::generate_key(&mut rand::rngs::OsRng, name);
        let write = |source| KeyError::Write {
            path: path.display().to_string(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(write)?;
        std::io::Write::write_all(&mut file, format!("{skey}\n").as_bytes()).map_err(write)?;
        file.sync_all().map_err(write)?;
        let signer = StandardSigner::new(&skey).map_err(|_| KeyError::Format {
            path: path.display().to_string(),
        })?;
        Ok(SigningKey {
            signer,
            verifier: vkey,
        })
    }

    /// Reads a key file written by [`SigningKey::create`].
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let format = || KeyError::Format {
            path: path.display().to_string(),
        };
        let skey = text.trim();
        let signer = StandardSigner::new(skey).map_err(|_| format())?;
        // The verifier key is the public half: name, id, and 0x01 ‖ the Ed25519 public key.
        // PRIVATE+KEY+<name>+<id>+<key>: the key's base64 may itself hold '+'.
        let seed = skey
            .splitn(5, '+')
            .nth(4)
            .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
            .filter(|k| k.len() == 33 && k[0] == 1)
            .ok_or_else(format)?;
        let secret: [u8; 32] = seed[1..].try_into().map_err(|_| format())?;
        let public = ed25519_dalek::SigningKey::from_bytes(&secret).verifying_key();
        let verifier = signed_note::new_ed25519_verifier_key(signer.name(), &public);
        Ok(SigningKey { signer, verifier })
    }

    /// The key's name: the log's origin line.
    pub fn name(&self) -> &str {
        self.signer.name()
    }

    /// The verifier key, `<name>+<id>+<key>`: what auditors are given.
    pub fn verifier_key(&self) -> &str {
        &self.verifier
    }

    /// The signed checkpoint of a tree of `size` leaves with head `root`, whose intents' heads
    /// have the index `heads`.
    pub fn sign_checkpoint(
        &self,
        size: u64,
        root: &Hash,
        heads: &IndexRoot,
    ) -> Result<String, String> {
        let text = checkpoint_text(self.name(), size, root, Some(heads));
        let mut note = Note::new(text.as_bytes(), &[]).map_err(|e| e.to_string())?;
        note.add_sigs(&[&self.signer]).map_err(|e| e.to_string())?;
        String::from_utf8(note.to_bytes()).map_err(|e| e.to_string())
    }

    /// A plain Ed25519 signature of `message` (the evidence manifest's DSSE signature).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.signer.sign(message).map_err(|e| e.to_string())
    }
}

/// The name of the checkpoint extension line that carries the intent-heads index.
pub const HEADS_EXTENSION: &str = "intent-heads";

/// The C2SP tlog-checkpoint body: origin, size and base64 root, each on its own line, then (when
/// given) the intent-heads extension line.
pub fn checkpoint_text(origin: &str, size: u64, root: &Hash, heads: Option<&IndexRoot>) -> String {
    let b64 = |h: &Hash| base64::engine::general_purpose::STANDARD.encode(h);
    let mut text = format!("{origin}\n{size}\n{}\n", b64(root));
    if let Some(heads) = heads {
        text.push_str(&format!(
            "{HEADS_EXTENSION} {} {}\n",
            heads.count,
            b64(&heads.root)
        ));
    }
    text
}

/// A checkpoint whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// The intent-heads index it commits to; `None` for a checkpoint signed before there was one.
    pub heads: Option<IndexRoot>,
}

/// Verifies a signed checkpoint against a verifier key and reads its body.
pub fn open_checkpoint(note: &str, verifier_key: &str) -> Result<Checkpoint, String> {
    let verifier = StandardVerifier::new(verifier_key.trim())
        .map_err(|_| format!("{verifier_key:?} is not a verifier key"))?;
    let parsed =
        Note::from_bytes(note.as_bytes()).map_err(|e| format!("not a signed note: {e}"))?;
    parsed
        .verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| format!("the checkpoint's signature does not verify with this key: {e}"))?;
    let text = std::str::from_utf8(parsed.text()).map_err(|_| "the checkpoint is not UTF-8")?;
    let mut lines = text.split('\n');
    let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
        return Err("the checkpoint body is not origin, size and root lines".into());
    };
    let number = |what: &str, text: &str| {
        text.parse::<u64>()
            .map_err(|_| format!("the checkpoint's {what} {text:?} is not a number"))
    };
    let hash = |what: &str, text: &str| -> Result<Hash, String> {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| format!("the checkpoint's {what} is not a base64 SHA-256 hash"))
    };
    // Extension lines follow the root; ours names the intent-heads index, others are skipped.
    let mut heads = None;
    for line in lines.take_while(|l| !l.is_empty()) {
        let mut words = line.split(' ');
        if words.next() == Some(HEADS_EXTENSION) {
            let (Some(count), Some(root), None) = (words.next(), words.next(), words.next()) else {
                return Err(format!(
                    "the checkpoint's line {line:?} is not `{HEADS_EXTENSION} <count> <root>`"
                ));
            };
            heads = Some(IndexRoot {
                count: number("intent count", count)?,
                root: hash("intent-heads root", root)?,
            });
        }
    }
    Ok(Checkpoint {
        origin: origin.to_string(),
        size: number("size", size)?,
        root: hash("root", root)?,
        heads,
    })
}

/// The heads of every deployment intent over the log's first leaves, read from the global stream
/// and kept up to date as the log grows.
#[derive(Debug, Default)]
pub struct IntentHeads {
    heads: Heads,
    /// The position of the last event taken.
    after: Option<i64>,
}

impl IntentHeads {
    /// The heads over the log's first `size` leaves.
    pub async fn of(store: &Store, size: u64) -> Result<Heads, StoreError> {
        let mut heads = IntentHeads::default();
        heads.advance(store, size).await?;
        Ok(heads.heads)
    }

    /// Takes the leaves up to `size` it has not taken yet.
    pub async fn advance(&mut self, store: &Store, size: u64) -> Result<&Heads, StoreError> {
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
        Ok(&self.heads)
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

/// The file in the checkpoint directory that holds the latest checkpoint.
pub const LATEST: &str = "checkpoint";

/// How the checkpointer is set up.
pub struct CheckpointPlan {
    pub key: Arc<SigningKey>,
    /// Where the latest checkpoint is also written, outside the database.
    pub dir: Option<PathBuf>,
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
            claims.push((
                kept.size,
                format!(
                    "the {} of the checkpoint kept outside the database",
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
        let index = heads
            .advance(&self.store, size)
            .await
            .map_err(transient)?
            .root();
        let note = plan
            .key
            .sign_checkpoint(size, &root, &index)
            .map_err(Failure::Transient)?;
        // Outside the database first: a checkpoint is served (from the database) only once the
        // copy an insider cannot rewrite holds it. The other order left a window in which a
        // server stopped after serving a checkpoint but before keeping it outside, and a history
        // rewritten under that checkpoint went unnoticed at the next start. A checkpoint kept
        // outside and not in the database is harmless: the log it was signed over holds it.
        if let Some(dir) = &plan.dir {
            write_latest(dir, &note).map_err(Failure::Transient)?;
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
        Ok(true)
    }
}

/// Replaces the directory's latest checkpoint atomically (a temporary file, then a rename).
fn write_latest(dir: &Path, note: &str) -> Result<(), String> {
    let write = |e: std::io::Error| {
        format!(
            "cannot write to the checkpoint directory {}: {e}",
            dir.display()
        )
    };
    std::fs::create_dir_all(dir).map_err(write)?;
    let temporary = dir.join(format!("{LATEST}.tmp"));
    let mut file = std::fs::File::create(&temporary).map_err(write)?;
    std::io::Write::write_all(&mut file, note.as_bytes()).map_err(write)?;
    file.sync_all().map_err(write)?;
    std::fs::rename(&temporary, dir.join(LATEST)).map_err(write)?;
    Ok(())
}

enum Failure {
    /// The history is not what was signed: stop signing, report not ready.
    Integrity(String),
    /// The database or a file did not answer: try again.
    Transient(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// C2SP signed-note's own example key, from the specification (and Go's sumdb/note).
    const SPEC_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const SPEC_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const SPEC_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
                             then you don't know what your problem is.\n\
                             \n\
                             — PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    fn spec_key() -> (tempdir::Dir, SigningKey) {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("key");
        std::fs::write(&path, SPEC_SKEY).unwrap();
        let key = SigningKey::load(&path).unwrap();
        (dir, key)
    }

    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!("eucora-key-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn the_specifications_example_key_signs_its_example_note() {
        let (_dir, key) = spec_key();
        assert_eq!(key.verifier_key(), SPEC_VKEY);
        let text = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
        let mut note = Note::new(text.as_bytes(), &[]).unwrap();
        note.add_sigs(&[&key.signer]).unwrap();
        assert_eq!(String::from_utf8(note.to_bytes()).unwrap(), SPEC_NOTE);
    }

    #[test]
    fn a_checkpoint_is_the_c2sp_body_signed_and_opens_only_with_its_key() {
        let (_dir, key) = spec_key();
        let root = merkle::leaf_hash(b"x");
        let heads = IndexRoot {
            count: 7,
            root: merkle::leaf_hash(b"y"),
        };
        let note = key.sign_checkpoint(42, &root, &heads).unwrap();
        let body = checkpoint_text("PeterNeumann", 42, &root, Some(&heads));
        assert_eq!(
            body.lines().nth(3),
            Some(
                format!(
                    "intent-heads 7 {}",
                    base64::engine::general_purpose::STANDARD.encode(heads.root)
                )
                .as_str()
            )
        );
        assert!(
            note.starts_with(&format!("{body}\n— PeterNeumann ")),
            "{note}"
        );
        let opened = open_checkpoint(&note, SPEC_VKEY).unwrap();
        assert_eq!(
            (
                opened.origin.as_str(),
                opened.size,
                opened.root,
                opened.heads
            ),
            ("PeterNeumann", 42, root, Some(heads))
        );
        // Another key, or an edited body, does not open.
        let dir = tempdir::Dir::new();
        let other = SigningKey::create(&dir.path().join("k"), "PeterNeumann").unwrap();
        assert!(open_checkpoint(&note, other.verifier_key()).is_err());
        let edited = note.replacen("\n42\n", "\n43\n", 1);
        assert!(open_checkpoint(&edited, SPEC_VKEY).is_err());
    }

    #[test]
    fn a_new_key_file_is_private_and_never_overwritten() {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("log.key");
        let key = SigningKey::create(&path, "eucora").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(key.verifier_key().starts_with("eucora+"));
        assert_eq!(
            SigningKey::load(&path).unwrap().verifier_key(),
            key.verifier_key()
        );
        assert!(matches!(
            SigningKey::create(&path, "eucora"),
            Err(KeyError::Write { .. })
        ));
        assert!(!format!("{key:?}").contains("PRIVATE"));
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            SigningKey::load(&path),
            Err(KeyError::Format { .. })
        ));
        assert!(matches!(
            SigningKey::create(&dir.path().join("x"), "has space"),
            Err(KeyError::Name(_))
        ));
    }
}
