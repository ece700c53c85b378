//! The bundle's format: its file names, an event record as `events.jsonl` holds it, the proof
//! file, the DSSE envelope's constants and pre-authentication encoding, and what a bundle covers.

use base64::Engine;
use chrono::{DateTime, Timelike, Utc};
use eucora_projections::integrity::{leaf_hash, StoredRow};
use eucora_projections::merkle::Hash;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The bundle's files, in the order they are written; the manifest comes last.
pub const FILES: [&str; 7] = [
    "events.jsonl",
    "checkpoint",
    "proof.json",
    "controls.json",
    "changes.csv",
    "REPORT.html",
    "VERIFY.md",
];
/// The files of an evidence/v1 bundle (before `REPORT.html`).
const FILES_V1: [&str; 6] = [
    "events.jsonl",
    "checkpoint",
    "proof.json",
    "controls.json",
    "changes.csv",
    "VERIFY.md",
];
pub const MANIFEST: &str = "manifest.dsse.json";
pub(super) const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
pub(super) const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

/// The bundle formats this release reads; it writes the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// Earlier releases' bundles: their integrity verifies; their controls were judged by
    /// earlier rules, so they are not recomputed.
    V1,
    /// Controls judged at the predicate's `as_of`, with `open` and `rejected_not_deployed`.
    V2,
    /// As v2, and `changes.csv` ends with each change's `cost_currency` and `cost_total`.
    V3,
}

impl Format {
    /// The format this release writes.
    pub const CURRENT: Format = Format::V3;
    const ALL: [Format; 3] = [Format::V1, Format::V2, Format::V3];

    /// The statement's `predicateType`.
    pub fn predicate_type(self) -> &'static str {
        match self {
            Format::V1 => "https://eucora.dev/evidence/v1",
            Format::V2 => "https://eucora.dev/evidence/v2",
            Format::V3 => "https://eucora.dev/evidence/v3",
        }
    }

    /// The format a `predicateType` names, if this release reads it.
    pub fn of_predicate_type(text: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.predicate_type() == text)
    }

    /// The files it holds besides the manifest (an evidence/v1 bundle has no `REPORT.html`).
    pub fn files(self) -> &'static [&'static str] {
        match self {
            Format::V1 => &FILES_V1,
            Format::V2 | Format::V3 => &FILES,
        }
    }

    /// Its controls are recomputed: it records the time they were judged at (`as_of`).
    pub fn judged(self) -> bool {
        self >= Format::V2
    }
}

pub(super) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(super) fn unb64_hash(text: &str) -> Option<Hash> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?
        .try_into()
        .ok()
}

/// One event as the bundle holds it: the stored row's columns exactly, and its place in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRecord {
    pub index: u64,
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The payload JSON exactly as stored (a string, so its bytes survive).
    pub payload: String,
    pub metadata: String,
}

impl EventRecord {
    /// The record of the row read at leaf `index` (with every column).
    pub(super) fn of(
        index: u64,
        row: &crate::store::StreamRow,
    ) -> Result<EventRecord, EvidenceError> {
        let stored = row.row()?;
        Ok(EventRecord {
            index,
            position: row.position,
            aggregate_type: stored.aggregate_type.to_string(),
            aggregate_id: stored.aggregate_id.to_string(),
            sequence: stored.sequence,
            event_type: row.event_type.clone(),
            event_version: row.event_version.clone(),
            payload: row.payload.clone(),
            metadata: stored.metadata.to_string(),
        })
    }

    pub fn leaf(&self) -> Hash {
        leaf_hash(&StoredRow {
            position: self.position,
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            sequence: self.sequence,
            event_type: &self.event_type,
            event_version: &self.event_version,
            payload: &self.payload,
            metadata: &self.metadata,
        })
    }
}

/// What a bundle covers.
#[derive(Debug, Clone)]
pub enum Scope {
    /// The events committed from the first one stamped at or after `from` up to (not including)
    /// the first one stamped at or after `to`: a contiguous range of the log.
    Period {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    /// Every event of one deployment intent.
    Deployment(Uuid),
}

impl Scope {
    /// When a bundle exported at `now` judges its controls: the period's end, or `now` if the
    /// period has not ended (or for one deployment), to the second.
    pub fn as_of(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let at = match self {
            Scope::Period { to, .. } => (*to).min(now),
            Scope::Deployment(_) => now,
        };
        at.with_nanosecond(0).unwrap_or(at)
    }
}

/// An earlier tree the bundle should prove the log extends: a signed checkpoint the exporter
/// holds (checked with the key), or just its size (the auditor checks the proof against the
/// checkpoint they kept).
#[derive(Debug, Clone, Copy)]
pub enum Previous<'a> {
    Checkpoint(&'a str),
    Size(u64),
}

/// Why evidence could not be exported or did not verify.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("{0}")]
    Export(String),
    #[error("{0}")]
    NotFound(String),
    /// What the request asked cannot be: an earlier tree of size 0 or past the checkpoint.
    #[error("{0}")]
    Invalid(String),
    /// The intent exists, but none of its events is under a signed checkpoint yet.
    #[error("{0}")]
    NotYetSigned(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot write the bundle: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofFile {
    pub tree_size: u64,
    /// A period: the events are exactly the leaves `[start, end)`.
    pub range: Option<RangeProof>,
    /// One deployment: an inclusion proof per event; a period: one per event before its range.
    pub inclusion: Vec<InclusionProof>,
    /// From an earlier checkpoint the auditor supplied, to `tree_size`.
    pub consistency: Option<ConsistencyProof>,
    /// A period: the events just outside its range, which prove the range is the whole period
    /// (absent in evidence/v1 bundles and in a deployment's).
    #[serde(default)]
    pub boundaries: Option<Boundaries>,
    /// A deployment: its intent's head in the checkpoint's intent-heads index, which shows the
    /// bundle holds every one of its events (absent in a period's bundle and in earlier
    /// releases').
    #[serde(default)]
    pub head: Option<super::heads::HeadProof>,
}

/// The events on either side of a period's range, each with its inclusion proof: the one before
/// it (none when the range starts at leaf 0) is stamped outside the period, the one after it
/// (none when the range ends at the checkpoint's size) at or after its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boundaries {
    pub before: Option<BoundaryEvent>,
    pub after: Option<BoundaryEvent>,
}

/// An event outside the bundle's population, as stored, with its inclusion proof.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoundaryEvent {
    pub event: EventRecord,
    pub hashes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeProof {
    pub start: u64,
    pub end: u64,
    pub hashes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    pub index: u64,
    pub hashes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    pub from: u64,
    pub hashes: Vec<String>,
}

/// DSSE's pre-authentication encoding: `DSSEv1 <len(type)> <type> <len(body)> <body>`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}
