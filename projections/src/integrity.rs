//! The integrity chain over the global stream: a leaf hash per stored event and a running chain.
//!
//! A leaf covers the event row exactly as stored (position, stream, sequence, type, version and
//! the payload and metadata bytes), so any edit, a move to another position or another stream,
//! changes it. The chain links each leaf to everything before it in the global order, so a deleted,
//! inserted or reordered event changes every chain value from there on.

use sha2::{Digest, Sha256};

/// The stored form of one event, as the leaf hash reads it.
#[derive(Debug, Clone, Copy)]
pub struct StoredRow<'a> {
    pub position: i64,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub payload: &'a str,
    pub metadata: &'a str,
}

/// SHA-256 over the row, each field length-prefixed so that no two rows encode alike.
pub fn leaf_hash(row: &StoredRow) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"eucora-event-v1");
    h.update(row.position.to_be_bytes());
    h.update(row.sequence.to_be_bytes());
    for field in [
        row.aggregate_type,
        row.aggregate_id,
        row.event_type,
        row.event_version,
        row.payload,
        row.metadata,
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().into()
}

/// One seal: the event at `ordinal` (from 1) in the global order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub ordinal: i64,
    pub position: i64,
    pub leaf_hash: String,
    pub chain_hash: String,
}

/// The running chain: `chain(n) = SHA-256(chain(n-1) ‖ leaf(n))`, `chain(0)` all zeros.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    ordinal: i64,
    head: [u8; 32],
}

impl Chain {
    /// Continues a chain from a stored seal.
    pub fn resume(seal: &Seal) -> Option<Chain> {
        let bytes = hex::decode(&seal.chain_hash).ok()?;
        Some(Chain {
            ordinal: seal.ordinal,
            head: bytes.try_into().ok()?,
        })
    }

    pub fn ordinal(&self) -> i64 {
        self.ordinal
    }

    /// Extends the chain by one event and returns its seal.
    pub fn seal(&mut self, row: &StoredRow) -> Seal {
        self.extend(row.position, leaf_hash(row))
    }

    /// Extends the chain by a leaf computed elsewhere (leaves are independent of each other, so
    /// they may be hashed ahead, in parallel with the chain).
    pub fn push(&mut self, leaf: [u8; 32]) {
        let mut h = Sha256::new();
        h.update(self.head);
        h.update(leaf);
        self.head = h.finalize().into();
        self.ordinal += 1;
    }

    /// Whether the chain, as it stands, is the one `seal` records for the same ordinal.
    pub fn matches(&self, seal: &Seal) -> bool {
        seal.ordinal == self.ordinal
            && hex::decode(&seal.chain_hash).is_ok_and(|stored| stored == self.head)
    }

    /// [`Chain::push`], returning the new event's seal.
    pub fn extend(&mut self, position: i64, leaf: [u8; 32]) -> Seal {
        self.push(leaf);
        Seal {
            ordinal: self.ordinal,
            position,
            leaf_hash: hex::encode(leaf),
            chain_hash: hex::encode(self.head),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(position: i64, payload: &str) -> StoredRow<'_> {
        StoredRow {
            position,
            aggregate_type: "deployment",
            aggregate_id: "a",
            sequence: 1,
            event_type: "DeploymentCreated",
            event_version: "1",
            payload,
            metadata: "{}",
        }
    }

    #[test]
    fn any_change_to_a_stored_row_changes_its_leaf() {
        let base = leaf_hash(&row(1, "{\"x\":1}"));
        assert_ne!(base, leaf_hash(&row(2, "{\"x\":1}")), "moved");
        assert_ne!(base, leaf_hash(&row(1, "{\"x\":2}")), "edited");
        assert_ne!(base, leaf_hash(&row(1, "{\"x\": 1}")), "even whitespace");
        let mut other = row(1, "{\"x\":1}");
        other.aggregate_id = "b";
        assert_ne!(base, leaf_hash(&other), "another stream");
    }

    #[test]
    fn the_chain_depends_on_order_and_resumes_from_a_seal() {
        let (a, b) = (row(1, "a"), row(2, "b"));
        let mut forward = Chain::default();
        forward.seal(&a);
        let second = forward.seal(&b);
        let mut swapped = Chain::default();
        swapped.seal(&b);
        assert_ne!(swapped.seal(&a).chain_hash, second.chain_hash);

        let mut first_only = Chain::default();
        let first = first_only.seal(&a);
        let mut resumed = Chain::resume(&first).unwrap();
        assert!(resumed.matches(&first));
        assert_eq!(resumed.seal(&b), second);
        assert!(resumed.matches(&second) && !resumed.matches(&first));
        let mut altered = second.clone();
        altered.chain_hash = first.chain_hash.clone();
        altered.ordinal = 2;
        assert!(!resumed.matches(&altered));
        assert_eq!((second.ordinal, second.position), (2, 2));
    }
}
