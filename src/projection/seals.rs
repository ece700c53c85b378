//! The integrity seals: a leaf hash per stored row and a running chain over the global stream.
//!
//! `eucora serve` seals every event past the last seal as it arrives. `eucora replay` runs the same
//! projection from position 0: up to the last stored seal it verifies (the chain value commits to
//! every event before it, so one stored seal per batch, the batch's last, is compared; only a
//! batch that disagrees has all its seals read, to name the first bad position), and past it, it
//! seals.
//!
//! What the seals detect, for every event already sealed: an edited row (any column), a deleted
//! event, an event inserted among sealed ones, and events reordered or moved. What they do not
//! detect: an event appended after the last seal by someone with write access to the database,
//! a rewrite of events *and* seals together, or a seal row altered between two that are checked
//! (one per batch) while the events it covers stay intact. Signed checkpoints kept outside the
//! database close the second gap; events authenticated by the writer close the first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use eucora_projections::integrity::{leaf_hash, Chain, Seal};

use super::{Event, Projection, ProjectionError};
use crate::store::{Checkpoint, Columns, Store, StoreError};

/// What a verifying run found, read after the replay.
#[derive(Debug, Default)]
pub struct SealCounts {
    /// Events checked against an existing seal.
    pub verified: AtomicU64,
    /// Events past the last seal, sealed by this run.
    pub sealed: AtomicU64,
}

pub struct Seals {
    verifying: bool,
    chain: Chain,
    /// Events up to this ordinal are sealed already: checked, not sealed again.
    sealed_upto: i64,
    counts: Arc<SealCounts>,
}

impl Seals {
    /// `eucora serve`: seals what arrives, resuming from the last seal.
    pub fn sealing() -> Self {
        Seals {
            verifying: false,
            chain: Chain::default(),
            sealed_upto: 0,
            counts: Arc::default(),
        }
    }

    /// `eucora replay`: from position 0, verifies every sealed event and seals the rest.
    pub fn verifying() -> (Self, Arc<SealCounts>) {
        let counts = Arc::new(SealCounts::default());
        (
            Seals {
                verifying: true,
                chain: Chain::default(),
                sealed_upto: 0,
                counts: counts.clone(),
            },
            counts,
        )
    }
}

fn integrity(position: i64, what: String) -> ProjectionError {
    ProjectionError::Integrity { position, what }
}

/// Compares one event with the seal stored for its ordinal.
async fn check(
    store: &Store,
    e: &Event,
    computed: &Seal,
    stored: &Seal,
) -> Result<(), ProjectionError> {
    let position = e.row.position;
    if stored.position != position {
        // Either the sealed event is gone, or another event stands in its place.
        return Err(if store.has_position(stored.position).await? {
            integrity(
                position,
                format!(
                    "an event was inserted or moved here: the seal for this place in the \
                     stream names the event at position {}",
                    stored.position
                ),
            )
        } else {
            integrity(
                stored.position,
                "the event sealed at this position is missing (deleted)".to_string(),
            )
        });
    }
    if stored.leaf_hash != computed.leaf_hash {
        return Err(integrity(
            position,
            "the stored event differs from the one sealed at this position (edited)".to_string(),
        ));
    }
    if stored.chain_hash != computed.chain_hash {
        return Err(integrity(
            position,
            "the seal chain differs at this position (the seals were altered)".to_string(),
        ));
    }
    Ok(())
}

/// Names the first event of a batch that disagrees with its seal, once the batch's chain did not
/// match the seal at ordinal `at`: `chain` is the chain as it stood before the batch.
async fn first_disagreement(
    store: &Store,
    mut chain: Chain,
    events: &[(&Event, [u8; 32])],
    at: i64,
) -> ProjectionError {
    let Some(first) = events.first().map(|(e, _)| e.ordinal) else {
        return integrity(0, format!("seal #{at} names no event"));
    };
    let stored = match store.seals_from(first, at - first + 1).await {
        Ok(stored) => stored,
        Err(e) => return e.into(),
    };
    for ((e, leaf), expected) in events.iter().zip(first..=at) {
        let computed = chain.extend(e.row.position, *leaf);
        let Some(seal) = stored.iter().find(|s| s.ordinal == expected) else {
            return integrity(
                e.row.position,
                format!("seal #{expected} is missing (the seals were altered)"),
            );
        };
        if let Err(e) = check(store, e, &computed, seal).await {
            return e;
        }
    }
    let position = events
        .get((at - first) as usize)
        .map_or(0, |(e, _)| e.row.position);
    integrity(
        position,
        format!("the chain differs at seal #{at} (the seals were altered)"),
    )
}

#[async_trait]
impl Projection for Seals {
    fn name(&self) -> &'static str {
        "seals"
    }

    fn columns(&self) -> Columns {
        Columns::Stored
    }

    fn persisted(&self) -> bool {
        !self.verifying
    }

    async fn resume(&mut self, store: &Store) -> Result<Checkpoint, ProjectionError> {
        let last = store.last_seal().await?;
        self.sealed_upto = last.as_ref().map_or(0, |s| s.ordinal);
        if self.verifying {
            self.chain = Chain::default();
            return Ok(Checkpoint::default());
        }
        let Some(seal) = last else {
            return Ok(Checkpoint::default());
        };
        self.chain = Chain::resume(&seal).ok_or_else(|| StoreError::Corrupt {
            position: seal.position,
            reason: "the seal at this position has a malformed chain hash".to_string(),
        })?;
        Ok(Checkpoint {
            position: seal.position,
            ordinal: seal.ordinal,
        })
    }

    async fn apply(&mut self, store: &Store, events: &[Event]) -> Result<(), ProjectionError> {
        let Some(first) = events.first().map(|e| e.ordinal) else {
            return Ok(());
        };
        let leaves = events
            .iter()
            .map(|e| match e.leaf {
                Some(leaf) => Ok((e, leaf)),
                None => Ok((e, leaf_hash(&e.row.row()?))),
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // The seal the batch is checked against: the one of its last already-sealed event.
        let checked_at = if first <= self.sealed_upto {
            let at = (first + events.len() as i64 - 1).min(self.sealed_upto);
            let stored = store.seals_from(at, 1).await?;
            Some((at, stored.into_iter().find(|s| s.ordinal == at)))
        } else {
            None
        };
        let before = self.chain.clone();
        let (mut verified, mut fresh) = (0u64, Vec::new());
        for (e, leaf) in &leaves {
            if e.ordinal <= self.sealed_upto {
                self.chain.push(*leaf);
                verified += 1;
            } else {
                fresh.push(self.chain.extend(e.row.position, *leaf));
            }
            if let Some((at, stored)) = &checked_at {
                if self.chain.ordinal() == *at
                    && !stored.as_ref().is_some_and(|s| self.chain.matches(s))
                {
                    self.chain = before.clone();
                    return Err(first_disagreement(store, before, &leaves, *at).await);
                }
            }
        }
        if let Err(e) = store.insert_seals(&fresh).await {
            self.chain = before;
            return Err(e.into());
        }
        self.counts.verified.fetch_add(verified, Ordering::AcqRel);
        self.counts
            .sealed
            .fetch_add(fresh.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    /// A seal past the end of the stream names an event that is gone.
    async fn finish(&mut self, store: &Store, _at: Checkpoint) -> Result<(), ProjectionError> {
        if let Some(missing) = store.seals_from(self.chain.ordinal() + 1, 1).await?.first() {
            return Err(integrity(
                missing.position,
                "the event sealed at this position is missing (deleted)".to_string(),
            ));
        }
        Ok(())
    }
}
