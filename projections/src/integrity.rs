//! The leaf of the Merkle log for one stored event: its canonical encoding and its RFC 9162 leaf
//! hash.
//!
//! The leaf data covers the event row exactly as stored (position, stream, sequence, type, version
//! and the payload and metadata bytes), so any edit, or a move to another position or another
//! stream, changes it. docs/evidence.md states the encoding byte by byte:
//!
//! ```text
//! "eucora-event-v1" ‖ position (i64, 8 bytes big-endian) ‖ sequence (i64, 8 bytes big-endian)
//!   ‖ for each of aggregate_type, aggregate_id, event_type, event_version, payload, metadata:
//!       its length in bytes (u64, 8 bytes big-endian) ‖ its UTF-8 bytes
//! ```
//!
//! and the leaf hash is SHA-256(0x00 ‖ leaf data) ([`crate::merkle::leaf_hash`]).

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

impl StoredRow<'_> {
    fn fields(&self) -> [&str; 6] {
        [
            self.aggregate_type,
            self.aggregate_id,
            self.event_type,
            self.event_version,
            self.payload,
            self.metadata,
        ]
    }
}

/// The row's leaf data: each field length-prefixed, so that no two rows encode alike.
pub fn leaf_data(row: &StoredRow) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(15 + 16 + row.fields().iter().map(|f| 8 + f.len()).sum::<usize>());
    out.extend_from_slice(b"eucora-event-v1");
    out.extend_from_slice(&row.position.to_be_bytes());
    out.extend_from_slice(&row.sequence.to_be_bytes());
    for field in row.fields() {
        out.extend_from_slice(&(field.len() as u64).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

/// The row's leaf hash, SHA-256(0x00 ‖ [`leaf_data`]), hashed as it is encoded (no copy).
pub fn leaf_hash(row: &StoredRow) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(b"eucora-event-v1");
    h.update(row.position.to_be_bytes());
    h.update(row.sequence.to_be_bytes());
    for field in row.fields() {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().into()
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
    fn the_leaf_hash_is_rfc_9162s_over_the_documented_leaf_data() {
        let r = row(7, "{\"x\":1}");
        assert_eq!(leaf_hash(&r), crate::merkle::leaf_hash(&leaf_data(&r)));
        let data = leaf_data(&r);
        assert!(data.starts_with(b"eucora-event-v1\0\0\0\0\0\0\0\x07\0\0\0\0\0\0\0\x01"));
        assert!(
            data.ends_with(b"\0\0\0\0\0\0\0\x02{}"),
            "metadata last, length-prefixed"
        );
        assert_eq!(
            data.len(),
            15 + 16 + 6 * 8 + "deployment a DeploymentCreated 1 {\"x\":1} {}".len() - 5
        );
    }
}
