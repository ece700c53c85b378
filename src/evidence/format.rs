//! The bundle's format: its file names, an event record as `events.jsonl` holds it, the proof
//! file, the DSSE envelope's constants and pre-authentication encoding, and what a bundle covers.

use std::borrow::Cow;

use base64::Engine;
use chrono::{DateTime, Timelike, Utc};
use eucora_projections::integrity::{leaf_hash, StoredRow};
use eucora_projections::merkle::Hash;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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
    /// As v3, and `events.jsonl` holds each stored JSON text (payload, metadata) as the JSON
    /// value it is, byte for byte, instead of as an escaped string ([`Stored`]).
    V4,
    /// As v4, and lean for people and machines alike: `REPORT.html` gives a trail only for the
    /// changes an auditor must follow up (a control failing or open), and `controls.json` holds
    /// one intent a line instead of one number a line.
    V5,
}

impl Format {
    /// The format this release writes.
    pub const CURRENT: Format = Format::V5;
    const ALL: [Format; 5] = [Format::V1, Format::V2, Format::V3, Format::V4, Format::V5];

    /// The statement's `predicateType`.
    pub fn predicate_type(self) -> &'static str {
        match self {
            Format::V1 => "https://eucora.dev/evidence/v1",
            Format::V2 => "https://eucora.dev/evidence/v2",
            Format::V3 => "https://eucora.dev/evidence/v3",
            Format::V4 => "https://eucora.dev/evidence/v4",
            Format::V5 => "https://eucora.dev/evidence/v5",
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
            Format::V2 | Format::V3 | Format::V4 | Format::V5 => &FILES,
        }
    }

    /// Its controls are recomputed: it records the time they were judged at (`as_of`).
    pub fn judged(self) -> bool {
        self >= Format::V2
    }

    /// Its `events.jsonl` may embed stored JSON texts as values.
    pub fn embeds(self) -> bool {
        self >= Format::V4
    }

    /// Its report and controls are lean (evidence/v5): trails only for the changes to follow up,
    /// `controls.json` an intent a line.
    pub fn lean(self) -> bool {
        self >= Format::V5
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
        Ok(Line::of_row(index, row, Texts::Strings)?.record())
    }

    /// The record a line of `events.jsonl` holds, in any format.
    pub fn from_line(line: &str) -> Result<EventRecord, serde_json::Error> {
        serde_json::from_str::<Line>(line).map(|l| l.record())
    }

    /// Its line, the stored texts as strings.
    fn line(&self) -> Line<'_> {
        Line {
            index: self.index,
            position: self.position,
            aggregate_type: Cow::Borrowed(&self.aggregate_type),
            aggregate_id: Cow::Borrowed(&self.aggregate_id),
            sequence: self.sequence,
            event_type: Cow::Borrowed(&self.event_type),
            event_version: Cow::Borrowed(&self.event_version),
            payload: Stored::Text(Cow::Borrowed(&self.payload)),
            metadata: Stored::Text(Cow::Borrowed(&self.metadata)),
        }
    }

    pub fn leaf(&self) -> Hash {
        self.line().leaf()
    }
}

/// A stored JSON text (an event's payload or metadata) as a line of `events.jsonl` holds it: from
/// evidence/v4, the JSON value itself when the text is a JSON object or array on one line, so the
/// value's bytes in the line are the stored bytes exactly; otherwise (and in earlier formats) a
/// JSON string whose content is the text.
#[derive(Debug, Clone)]
pub enum Stored<'a> {
    /// Embedded: the text, one JSON object or array with nothing around it and no line break
    /// (as [`Stored::of`], [`Stored::of_decoded`] and reading a line make it).
    Value(&'a str),
    Text(Cow<'a, str>),
}

impl<'a> Stored<'a> {
    /// `text` as evidence/v4 writes it: embedded when that keeps its bytes.
    pub fn of(text: &'a str) -> Stored<'a> {
        if !one_line_object_or_array(text) {
            return Stored::Text(Cow::Borrowed(text));
        }
        match serde_json::from_str::<&RawValue>(text) {
            // The whole text is the one value (no whitespace around it).
            Ok(raw) if raw.get().len() == text.len() => Stored::Value(text),
            _ => Stored::Text(Cow::Borrowed(text)),
        }
    }

    /// [`Stored::of`] for a payload the event decoding read whole: serde_json parsed the entire
    /// text as one value (a typed event only decodes from valid JSON with nothing but whitespace
    /// around it), so it is not parsed a second time; only its ends and line breaks are looked
    /// at.
    pub fn of_decoded(text: &'a str) -> Stored<'a> {
        let closed = matches!(text.as_bytes().last(), Some(b'}' | b']'));
        match closed && one_line_object_or_array(text) {
            true => Stored::Value(text),
            false => Stored::of(text),
        }
    }

    /// The stored text.
    pub fn text(&self) -> &str {
        match self {
            Stored::Value(text) => text,
            Stored::Text(text) => text,
        }
    }

    /// Whether it is embedded as a value.
    pub fn embedded(&self) -> bool {
        matches!(self, Stored::Value(_))
    }

    /// Its JSON in a line: the value's own bytes, or a string.
    fn write(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        match self {
            Stored::Value(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(())
            }
            Stored::Text(text) => serde_json::to_writer(out, text),
        }
    }
}

/// Whether `text` opens as a JSON object or array and holds no line break.
fn one_line_object_or_array(text: &str) -> bool {
    matches!(text.as_bytes().first(), Some(b'{' | b'['))
        && memchr::memchr2(b'\n', b'\r', text.as_bytes()).is_none()
}

impl<'de: 'a, 'a> Deserialize<'de> for Stored<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = <&'a RawValue>::deserialize(deserializer)?;
        match raw.get().as_bytes().first() {
            Some(b'"') => serde_json::from_str::<Cow<'a, str>>(raw.get())
                .map(Stored::Text)
                .map_err(D::Error::custom),
            Some(b'{' | b'[') => Ok(Stored::Value(raw.get())),
            _ => Err(D::Error::custom(
                "a stored JSON text is a JSON object, an array or a string",
            )),
        }
    }
}

/// Appends `name` (the text before a member's value) and the value as JSON.
fn member(out: &mut Vec<u8>, name: &str, value: &impl Serialize) -> serde_json::Result<()> {
    out.extend_from_slice(name.as_bytes());
    serde_json::to_writer(out, value)
}

/// How a line holds a row's stored texts (payload and metadata).
#[derive(Debug, Clone, Copy)]
pub(super) enum Texts {
    /// As JSON strings (an event record, as every format before evidence/v4).
    Strings,
    /// Embedded as values where that keeps their bytes; `payload_decoded`: the payload decoded
    /// as an event, so it is known to be JSON already.
    Embedded { payload_decoded: bool },
}

/// One line of `events.jsonl`, borrowed from the line (written by the export, read by the
/// verifier): the stored row's columns and its place in the log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line<'a> {
    pub index: u64,
    pub position: i64,
    #[serde(borrow)]
    pub aggregate_type: Cow<'a, str>,
    #[serde(borrow)]
    pub aggregate_id: Cow<'a, str>,
    pub sequence: i64,
    #[serde(borrow)]
    pub event_type: Cow<'a, str>,
    #[serde(borrow)]
    pub event_version: Cow<'a, str>,
    #[serde(borrow)]
    pub payload: Stored<'a>,
    #[serde(borrow)]
    pub metadata: Stored<'a>,
}

impl<'a> Line<'a> {
    /// The line of the row read at leaf `index` (with every column), its stored texts held as
    /// `texts` says.
    pub(super) fn of_row(
        index: u64,
        row: &'a crate::store::StreamRow,
        texts: Texts,
    ) -> Result<Line<'a>, EvidenceError> {
        let stored = row.row()?;
        let (payload, metadata) = match texts {
            Texts::Strings => (
                Stored::Text(Cow::Borrowed(row.payload.as_str())),
                Stored::Text(Cow::Borrowed(stored.metadata)),
            ),
            Texts::Embedded { payload_decoded } => (
                match payload_decoded {
                    true => Stored::of_decoded(&row.payload),
                    false => Stored::of(&row.payload),
                },
                Stored::of(stored.metadata),
            ),
        };
        Ok(Line {
            index,
            position: row.position,
            aggregate_type: Cow::Borrowed(stored.aggregate_type),
            aggregate_id: Cow::Borrowed(stored.aggregate_id),
            sequence: stored.sequence,
            event_type: Cow::Borrowed(&row.event_type),
            event_version: Cow::Borrowed(&row.event_version),
            payload,
            metadata,
        })
    }

    /// Appends the line's JSON (without its newline): its members in the documented order, each
    /// stored text as [`Stored`] holds it. Written member by member, since an embedded text is
    /// copied as it is, not parsed again to be serialized.
    pub(super) fn write(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        member(out, "{\"index\":", &self.index)?;
        member(out, ",\"position\":", &self.position)?;
        member(out, ",\"aggregate_type\":", &self.aggregate_type)?;
        member(out, ",\"aggregate_id\":", &self.aggregate_id)?;
        member(out, ",\"sequence\":", &self.sequence)?;
        member(out, ",\"event_type\":", &self.event_type)?;
        member(out, ",\"event_version\":", &self.event_version)?;
        out.extend_from_slice(b",\"payload\":");
        self.payload.write(out)?;
        out.extend_from_slice(b",\"metadata\":");
        self.metadata.write(out)?;
        out.push(b'}');
        Ok(())
    }

    /// The owned record of the same row.
    pub fn record(&self) -> EventRecord {
        EventRecord {
            index: self.index,
            position: self.position,
            aggregate_type: self.aggregate_type.to_string(),
            aggregate_id: self.aggregate_id.to_string(),
            sequence: self.sequence,
            event_type: self.event_type.to_string(),
            event_version: self.event_version.to_string(),
            payload: self.payload.text().to_string(),
            metadata: self.metadata.text().to_string(),
        }
    }

    /// Whether it embeds a stored text as a value (which only evidence/v4 on does).
    pub fn embeds(&self) -> bool {
        self.payload.embedded() || self.metadata.embedded()
    }

    pub fn leaf(&self) -> Hash {
        leaf_hash(&StoredRow {
            position: self.position,
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            sequence: self.sequence,
            event_type: &self.event_type,
            event_version: &self.event_version,
            payload: self.payload.text(),
            metadata: self.metadata.text(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as the export writes it, with `payload` and `metadata` as given.
    fn line<'a>(payload: Stored<'a>, metadata: Stored<'a>) -> Line<'a> {
        Line {
            index: 7,
            position: -3,
            aggregate_type: Cow::Borrowed("deployment"),
            aggregate_id: Cow::Borrowed("a \"quoted\\ id\u{1}é"),
            sequence: 2,
            event_type: Cow::Borrowed("DeploymentCreated"),
            event_version: Cow::Borrowed("1.0"),
            payload,
            metadata,
        }
    }

    fn written(line: &Line) -> String {
        let mut out = Vec::new();
        line.write(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// A text is embedded only when the line's value bytes are the stored bytes; either way the
    /// line gives back the stored text exactly. A payload the event decoding read is judged the
    /// same without being parsed again.
    #[test]
    fn a_stored_text_is_embedded_only_when_its_bytes_survive() {
        let cases = [
            (r#"{"a":1,"b":"x\"y"}"#, true),
            (r#"[1,2,{"c":null}]"#, true),
            (r#"{"a": 1, "b": [2, 3]}"#, true),
            ("{\"a\":\n1}", false),
            ("{\"a\":\r1}", false),
            (r#"{"a":1} "#, false),
            ("{\"a\":1}\t", false),
            (r#" {"a":1}"#, false),
            (r#""just a string""#, false),
            ("42", false),
            ("{not json", false),
            (r#"{"a":1}{"b":2}"#, false),
            ("", false),
        ];
        for (text, embedded) in cases {
            let decodes = serde_json::from_str::<serde_json::Value>(text).is_ok();
            let mut judged = vec![Stored::of(text)];
            if decodes {
                judged.push(Stored::of_decoded(text));
            }
            for stored in judged {
                assert_eq!(stored.embedded(), embedded, "{text:?}");
                let line = written(&self::line(stored, Stored::of("{}")));
                assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
                let back: Line = serde_json::from_str(&line).unwrap();
                assert_eq!(back.payload.text(), text, "{line}");
                assert_eq!(back.payload.embedded(), embedded, "{line}");
            }
        }
        let why = serde_json::from_str::<Stored>("17")
            .unwrap_err()
            .to_string();
        assert!(why.contains("a JSON object, an array or a string"), "{why}");
    }

    /// The line's members in the documented order, its strings escaped as JSON, an embedded text
    /// copied as it is; read back, the same line and the same leaf.
    #[test]
    fn a_line_is_written_member_by_member_and_reads_back_the_same() {
        let original = line(
            Stored::of(r#"{"b":1,"a":"x\"y"}"#),
            Stored::Text(Cow::Borrowed("line\nbreak")),
        );
        let text = written(&original);
        assert_eq!(
            text,
            concat!(
                r#"{"index":7,"position":-3,"aggregate_type":"deployment","#,
                r#""aggregate_id":"a \"quoted\\ id\u0001é","sequence":2,"#,
                r#""event_type":"DeploymentCreated","event_version":"1.0","#,
                r#""payload":{"b":1,"a":"x\"y"},"metadata":"line\nbreak"}"#
            )
        );
        let back: Line = serde_json::from_str(&text).unwrap();
        assert_eq!(back.record(), original.record());
        assert_eq!(back.leaf(), original.leaf());
    }
}
