//! An intent's head under a signed checkpoint, with its proof, or the proof that there is none:
//! what lets a deployment's bundle show it holds every event of its intent, and what answers
//! "no such change" verifiably (`GET /api/v1/evidence/heads/{id}`, `eucora evidence head`).

use std::sync::Arc;

use eucora_projections::heads::{verify_absent, verify_placed, Head, HeadIndex, Lookup, Placed};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::format::{b64, unb64_hash, EvidenceError};
use super::read::{refuse, Refused};
use crate::checkpoints::{open_checkpoint, Checkpoint, IntentHeads, SigningKey};
use crate::projection::log::LogView;
use crate::store::Store;

/// A head and its inclusion proof in the checkpoint's intent-heads index, as bundles and
/// lookups write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadProof {
    pub intent_id: Uuid,
    /// How many of the checkpoint's leaves are the intent's events.
    pub events: u64,
    /// The leaf index of its last event.
    pub last_index: u64,
    /// The head's place in the index (sorted by id).
    pub position: u64,
    /// The inclusion proof of the head's leaf in the index, base64.
    pub hashes: Vec<String>,
}

impl HeadProof {
    pub(super) fn of(placed: &Placed) -> HeadProof {
        HeadProof {
            intent_id: placed.head.intent_id,
            events: placed.head.events,
            last_index: placed.head.last_index,
            position: placed.position,
            hashes: placed.hashes.iter().map(|h| b64(h)).collect(),
        }
    }

    fn placed(&self) -> Result<Placed, Refused> {
        Ok(Placed {
            head: Head {
                intent_id: self.intent_id,
                events: self.events,
                last_index: self.last_index,
            },
            position: self.position,
            hashes: self
                .hashes
                .iter()
                .map(|h| unb64_hash(h).ok_or_else(|| refuse("a proof hash is not base64 SHA-256")))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Checks the head is in the checkpoint's index.
    pub(super) fn check(&self, checkpoint: &Checkpoint) -> Result<Head, Refused> {
        let index = checkpoint.heads.as_ref().ok_or_else(|| {
            refuse(
                "the checkpoint commits to no intent-heads index (it was signed by an earlier \
                 release): nothing shows the deployment's events are all there",
            )
        })?;
        let placed = self.placed()?;
        verify_placed(&placed, index).map_err(|e| {
            refuse(format!(
                "the head of intent {} ({} events, the last at leaf {}) is not in the \
                 checkpoint's intent-heads index: {e}",
                self.intent_id, self.events, self.last_index
            ))
        })?;
        Ok(placed.head)
    }
}

/// What `GET /api/v1/evidence/heads/{id}` answers: the latest signed checkpoint and, under it,
/// the intent's head with its proof, or the heads on either side of where it would be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadLookup {
    #[schema(value_type = String)]
    pub intent_id: Uuid,
    /// The signed checkpoint (a C2SP signed note) the proofs are against.
    pub checkpoint: String,
    /// The intent's head, when it has one.
    #[schema(value_type = Option<Object>)]
    pub head: Option<HeadProof>,
    /// When it has none: the head just below where its id would sort (none before the first).
    #[schema(value_type = Option<Object>)]
    pub below: Option<HeadProof>,
    /// When it has none: the head just above (none after the last).
    #[schema(value_type = Option<Object>)]
    pub above: Option<HeadProof>,
}

/// What a checked lookup shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupVerified {
    pub tree_size: u64,
    /// The intent's head, or `None`: proved absent.
    pub head: Option<Head>,
}

/// The latest signed checkpoint (its note, opened with `key`) and the intent heads at its size,
/// checked against the index it commits to.
pub(super) async fn signed_heads(
    store: &Store,
    log: &LogView,
    key: &SigningKey,
) -> Result<(String, Checkpoint, Arc<HeadIndex>), EvidenceError> {
    let latest = store.latest_checkpoint().await?.ok_or_else(|| {
        EvidenceError::NotYetSigned(
            "no checkpoint has been signed yet: the first is due within the checkpoint interval"
                .into(),
        )
    })?;
    let checkpoint = open_checkpoint(&latest.note, key.verifier_key()).map_err(|e| {
        EvidenceError::Export(format!(
            "the latest checkpoint does not verify with this key: {e}"
        ))
    })?;
    let heads = heads_under(store, log, &checkpoint).await?;
    Ok((latest.note, checkpoint, heads))
}

/// The intent heads at `checkpoint`'s size, equal to the index it commits to: those the server
/// kept when it signed it, or (another process's checkpoint, the command line) read from the
/// stream.
pub(super) async fn heads_under(
    store: &Store,
    log: &LogView,
    checkpoint: &Checkpoint,
) -> Result<Arc<HeadIndex>, EvidenceError> {
    let Some(index) = checkpoint.heads else {
        return Err(EvidenceError::NotYetSigned(
            "the latest checkpoint was signed by an earlier release and commits to no \
             intent-heads index; the next one does, and is signed as soon as the log grows"
                .into(),
        ));
    };
    let heads = match log.signed_heads(checkpoint.size) {
        Some(kept) => kept,
        None => IntentHeads::of(store, checkpoint.size).await?,
    };
    if heads.root() != index {
        return Err(EvidenceError::Export(format!(
            "the intent heads read from the log do not match the index the checkpoint of tree \
             size {} commits to",
            checkpoint.size
        )));
    }
    Ok(heads)
}

/// The head of intent `id` under the latest signed checkpoint, or the proof it has none.
pub async fn lookup(
    store: &Store,
    log: &LogView,
    key: &SigningKey,
    id: Uuid,
) -> Result<HeadLookup, EvidenceError> {
    let (note, _, heads) = signed_heads(store, log, key).await?;
    let mut found = HeadLookup {
        intent_id: id,
        checkpoint: note,
        head: None,
        below: None,
        above: None,
    };
    match heads.lookup(id) {
        Lookup::Present(placed) => found.head = Some(HeadProof::of(&placed)),
        Lookup::Absent { below, above } => {
            found.below = below.as_ref().map(HeadProof::of);
            found.above = above.as_ref().map(HeadProof::of);
        }
    }
    Ok(found)
}

/// Checks a lookup offline with the verifier key: the checkpoint's signature, then the head's
/// proof, or that the neighbours are adjacent in the index and surround the id.
pub fn verify_lookup(found: &HeadLookup, verifier_key: &str) -> Result<LookupVerified, Refused> {
    let checkpoint = open_checkpoint(&found.checkpoint, verifier_key)
        .map_err(|e| refuse(format!("the checkpoint: {e}")))?;
    let head = match (&found.head, &found.below, &found.above) {
        (Some(head), None, None) => {
            if head.intent_id != found.intent_id {
                return Err(refuse(format!(
                    "the head given is intent {}'s, not {}'s",
                    head.intent_id, found.intent_id
                )));
            }
            Some(head.check(&checkpoint)?)
        }
        (Some(_), _, _) => {
            return Err(refuse(
                "a lookup gives the intent's head or its neighbours, not both",
            ))
        }
        (None, below, above) => {
            let index = checkpoint.heads.as_ref().ok_or_else(|| {
                refuse("the checkpoint commits to no intent-heads index: no absence can be shown")
            })?;
            let below = below.as_ref().map(HeadProof::placed).transpose()?;
            let above = above.as_ref().map(HeadProof::placed).transpose()?;
            verify_absent(found.intent_id, below.as_ref(), above.as_ref(), index).map_err(|e| {
                refuse(format!(
                    "the absence of {} is not shown: {e}",
                    found.intent_id
                ))
            })?;
            None
        }
    };
    Ok(LookupVerified {
        tree_size: checkpoint.size,
        head,
    })
}
