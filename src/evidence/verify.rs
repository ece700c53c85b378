//! The offline verifier: the archive read once, the manifest's signature and every file's
//! digest, the events parsed on every core, the proofs against the checkpoint, the controls
//! recomputed.

use std::collections::BTreeMap;
use std::io::Read;

use base64::Engine;
use chrono::{DateTime, Utc};
use eucora_projections::decode::{decode_stream, StreamEvent};
use eucora_projections::merkle::{self, Hash};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::controls::ControlsFile;
use super::format::{
    pae, unb64_hash, EventRecord, ProofFile, FILES, FILES_V1, MANIFEST, PAYLOAD_TYPE,
    PREDICATE_TYPE, PREDICATE_TYPE_V1, STATEMENT_TYPE,
};
use super::population::Population;
use super::report::{report_html, Summary};
use crate::checkpoints::{open_checkpoint, Checkpoint};

/// What a verified bundle holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub events: u64,
    pub intents: u64,
    pub tree_size: u64,
    pub failed_controls: u64,
    /// The controls, recomputed from the events and equal to `controls.json`; `None` for a
    /// bundle of an earlier release (evidence/v1), whose controls were judged by earlier rules
    /// and are not recomputed.
    pub controls: Option<ControlsFile>,
}

/// Why a bundle did not verify: the first failure, in our words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn refuse(what: impl Into<String>) -> Refused {
    Refused(what.into())
}

/// A bundle as read, before any check: its files but `events.jsonl`, that file's SHA-256, and
/// its events parsed (each one's leaf hash and index, and the population they make).
pub struct Bundle {
    files: BTreeMap<String, Vec<u8>>,
    events_digest: Option<String>,
    leaves: Vec<Hash>,
    indices: Vec<u64>,
    population: Population,
}

/// Reads a bundle once, on two cores: one thread gunzips the archive and hashes the files, this
/// one parses the events, hashes their leaves and folds them into the population. Memory holds
/// one hash per event and the bundle's decoded events. Nothing is checked but that it reads.
pub fn read_bundle(bundle: impl Read + Send) -> Result<Bundle, Refused> {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let (archive, events) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_archive(bundle, sender));
        let events = parse_events(receiver);
        let archive = reader
            .join()
            .unwrap_or_else(|_| Err(refuse("the archive reader panicked")));
        (archive, events)
    });
    // In the order a single pass meets them: a line that does not parse, before damage after it.
    let events = events?;
    let Archive {
        files,
        events_digest,
    } = archive?;
    Ok(Bundle {
        files,
        events_digest,
        leaves: events.leaves,
        indices: events.indices,
        population: events.population,
    })
}

/// What a bundle says of itself, from its manifest's statement (signed, but not checked here).
#[derive(Debug, Clone)]
pub struct Claims {
    /// The predicate's scope: `{from, to}` or `{deployment_id}`.
    pub scope: Value,
    /// When the controls are judged (none in an evidence/v1 bundle).
    pub as_of: Option<DateTime<Utc>>,
    pub tree_size: u64,
    /// The manifest's payload, as signed, its envelope and the statement it holds.
    payload: Vec<u8>,
    envelope: Value,
    statement: Value,
}

impl Bundle {
    /// The population its events make.
    pub fn population(&self) -> &Population {
        &self.population
    }

    /// One of its files but `events.jsonl`.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(Vec::as_slice)
    }

    /// What its manifest's statement says, decoded: refused when it is not EUCORA evidence.
    pub fn claims(&self) -> Result<Claims, Refused> {
        let manifest = self
            .files
            .get(MANIFEST)
            .ok_or_else(|| refuse("the bundle has no manifest.dsse.json"))?;
        let envelope: Value = serde_json::from_slice(manifest)
            .map_err(|e| refuse(format!("the manifest is not JSON: {e}")))?;
        if envelope["payloadType"] != PAYLOAD_TYPE {
            return Err(refuse("the manifest's payloadType is not in-toto's"));
        }
        let payload = envelope["payload"]
            .as_str()
            .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
            .ok_or_else(|| refuse("the manifest's payload is not base64"))?;
        let statement: Value = serde_json::from_slice(&payload)
            .map_err(|e| refuse(format!("the manifest's statement is not JSON: {e}")))?;
        if statement["_type"] != STATEMENT_TYPE
            || (statement["predicateType"] != PREDICATE_TYPE
                && statement["predicateType"] != PREDICATE_TYPE_V1)
        {
            return Err(refuse(
                "the manifest is not an in-toto Statement v1 of EUCORA evidence",
            ));
        }
        // The time the controls were judged at (evidence/v2); none in an earlier release's bundle.
        let as_of = match statement["predicate"]["as_of"].as_str() {
            Some(text) => Some(
                DateTime::parse_from_rfc3339(text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| refuse("the predicate's as_of is not an RFC 3339 time"))?,
            ),
            None if statement["predicateType"] == PREDICATE_TYPE => {
                return Err(refuse("the predicate has no as_of"))
            }
            None => None,
        };
        Ok(Claims {
            scope: statement["predicate"]["scope"].clone(),
            as_of,
            tree_size: statement["predicate"]["tree_size"].as_u64().unwrap_or(0),
            payload,
            envelope,
            statement,
        })
    }
}

/// Verifies a bundle offline, with nothing but the bundle, the verifier key, and optionally an
/// earlier checkpoint the auditor kept.
pub fn verify(
    bundle: impl Read + Send,
    verifier_key: &str,
    previous: Option<&str>,
) -> Result<Verified, Refused> {
    verify_read(&read_bundle(bundle)?, verifier_key, previous)
}

/// [`verify`] of a bundle already read.
pub fn verify_read(
    bundle: &Bundle,
    verifier_key: &str,
    previous: Option<&str>,
) -> Result<Verified, Refused> {
    let Bundle {
        files,
        events_digest,
        leaves,
        indices,
        population,
    } = bundle;

    // 1. The manifest: signed by the key, naming every file with its hash, and nothing else.
    let claims = bundle.claims()?;
    let (envelope, statement) = (&claims.envelope, &claims.statement);
    let payload = &claims.payload;
    let verifier = signed_note::StandardVerifier::new(verifier_key.trim())
        .map_err(|_| refuse(format!("{:?} is not a verifier key", verifier_key.trim())))?;
    let signed = envelope["signatures"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| {
            s["sig"]
                .as_str()
                .and_then(|sig| base64::engine::general_purpose::STANDARD.decode(sig).ok())
                .is_some_and(|sig| {
                    signed_note::Verifier::verify(&verifier, &pae(PAYLOAD_TYPE, payload), &sig)
                })
        });
    if !signed {
        return Err(refuse(
            "the manifest's signature does not verify with this key",
        ));
    }
    let as_of = claims.as_of;
    let subjects: BTreeMap<String, String> = statement["subject"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            Some((
                s["name"].as_str()?.to_string(),
                s["digest"]["sha256"].as_str()?.to_string(),
            ))
        })
        .collect();
    // An earlier release's bundle has no REPORT.html.
    let expected: &[&str] = if claims.as_of.is_some() {
        &FILES
    } else {
        &FILES_V1
    };
    for &name in expected {
        let expected = subjects
            .get(name)
            .ok_or_else(|| refuse(format!("the manifest does not list {name}")))?;
        let actual = if name == "events.jsonl" {
            events_digest
                .clone()
                .ok_or_else(|| refuse("the bundle has no events.jsonl"))?
        } else {
            hex::encode(Sha256::digest(
                files
                    .get(name)
                    .ok_or_else(|| refuse(format!("the bundle has no {name}")))?,
            ))
        };
        if &actual != expected {
            return Err(refuse(format!(
                "{name} does not match its SHA-256 in the manifest (it was changed)"
            )));
        }
    }
    if let Some(extra) = files
        .keys()
        .find(|n| n.as_str() != MANIFEST && !expected.contains(&n.as_str()))
    {
        return Err(refuse(format!(
            "{extra} is in the bundle but not in the manifest"
        )));
    }
    if subjects.len() != expected.len() {
        return Err(refuse("the manifest lists files the bundle does not have"));
    }

    // 2. The checkpoint, signed by the key.
    let note = String::from_utf8(files["checkpoint"].clone())
        .map_err(|_| refuse("the checkpoint is not UTF-8"))?;
    let checkpoint =
        open_checkpoint(&note, verifier_key).map_err(|e| refuse(format!("the checkpoint: {e}")))?;
    let proof: ProofFile = serde_json::from_slice(&files["proof.json"])
        .map_err(|e| refuse(format!("proof.json is not a proof: {e}")))?;
    if proof.tree_size != checkpoint.size {
        return Err(refuse(
            "proof.json is for another tree size than the checkpoint",
        ));
    }
    let hashes = |list: &[String]| -> Result<Vec<Hash>, Refused> {
        list.iter()
            .map(|h| unb64_hash(h).ok_or_else(|| refuse("a proof hash is not base64 SHA-256")))
            .collect()
    };

    // 3. The events are exactly the leaves the proofs place under the checkpoint's head.
    if indices.is_empty() {
        return Err(refuse("the bundle holds no events"));
    }
    // Leaf order, named by what broke it.
    let mut sorted = indices.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(refuse(format!(
            "leaf {} appears twice: an event was inserted",
            w[0]
        )));
    }
    if &sorted != indices {
        return Err(refuse(
            "the events are not in leaf order: they were reordered",
        ));
    }
    // Each event outside a proved range (every event of a deployment bundle, the earlier events of
    // a period's intents) has an inclusion proof, in the same order.
    let outside = match &proof.range {
        Some(range) => indices.partition_point(|i| *i < range.start),
        None => indices.len(),
    };
    if proof.inclusion.len() != outside {
        return Err(refuse(match &proof.range {
            Some(_) => "proof.json has not one inclusion proof per event before the period's range",
            None => "proof.json has not one inclusion proof per event",
        }));
    }
    for ((index, leaf), inclusion) in indices.iter().zip(leaves).zip(&proof.inclusion) {
        if inclusion.index != *index {
            return Err(refuse(format!(
                "the inclusion proofs are not for the events' leaves (leaf {index})"
            )));
        }
        merkle::verify_inclusion(*index, checkpoint.size, leaf, &hashes(&inclusion.hashes)?, &checkpoint.root)
            .map_err(|e| refuse(format!("the event at leaf {index} is not in the checkpoint's tree: {e} (it was edited, or moved)")))?;
    }
    if let Some(range) = &proof.range {
        let held = &indices[outside..];
        if held.is_empty() {
            return Err(refuse("the bundle holds none of the period's events"));
        }
        if let Some(beyond) = held.iter().find(|i| **i >= range.end) {
            return Err(refuse(format!(
                "leaf {beyond} is an event beyond the proved range ({} to {})",
                range.start, range.end
            )));
        }
        if let Some(missing) = (range.start..)
            .zip(held)
            .find(|(i, r)| i != *r)
            .map(|(i, _)| i)
        {
            return Err(refuse(format!(
                "leaf {missing} is missing: an event was dropped"
            )));
        }
        let held_to = range.start + held.len() as u64;
        if held_to != range.end {
            return Err(refuse(format!(
                "the events stop at leaf {held_to}, before the end of the range proved ({}): the bundle was truncated",
                range.end
            )));
        }
        merkle::verify_range(range.start, &leaves[outside..], checkpoint.size, &hashes(&range.hashes)?, &checkpoint.root).map_err(|e| {
            refuse(format!("the events are not the checkpoint's leaves {} to {}: {e} (an event was edited, or the bundle mixes two logs)", range.start, range.end))
        })?;
    }

    // Every count the signed predicate states.
    if claims.tree_size != checkpoint.size {
        return Err(refuse(format!(
            "the predicate states tree size {}, the checkpoint is of size {}",
            claims.tree_size, checkpoint.size
        )));
    }
    let stated = statement["predicate"]["events"].as_u64();
    if stated != Some(indices.len() as u64) {
        return Err(refuse(format!(
            "the predicate counts {} events, the bundle holds {}",
            stated.map_or("no".to_string(), |n| n.to_string()),
            indices.len()
        )));
    }

    // A period's range is the whole period: the events just outside it are stamped outside it
    // (evidence/v2).
    if let (Some(range), Some(_)) = (&proof.range, as_of) {
        check_boundaries(
            &claims,
            range,
            proof.boundaries.as_ref(),
            &checkpoint,
            &hashes,
        )?;
    }

    // 4. The earlier checkpoint the auditor kept: the log still extends it.
    if let Some(previous) = previous {
        let earlier: Checkpoint = open_checkpoint(previous, verifier_key)
            .map_err(|e| refuse(format!("the earlier checkpoint: {e}")))?;
        let consistency = proof.consistency.as_ref().ok_or_else(|| {
            refuse(
                "the bundle has no consistency proof: export it again with your earlier checkpoint",
            )
        })?;
        if consistency.from != earlier.size {
            return Err(refuse(format!(
                "the bundle's consistency proof starts at tree size {}, your checkpoint's is {}",
                consistency.from, earlier.size
            )));
        }
        merkle::verify_consistency(earlier.size, checkpoint.size, &earlier.root, &checkpoint.root, &hashes(&consistency.hashes)?)
            .map_err(|e| refuse(format!("the log does not extend your earlier checkpoint (tree size {}): {e}; its history was rewritten", earlier.size)))?;
    }

    // 5. The controls and the population, recomputed from the events.
    let controls = match as_of {
        Some(as_of) => {
            let controls = population.controls(as_of);
            let claimed: ControlsFile = serde_json::from_slice(&files["controls.json"])
                .map_err(|e| refuse(format!("controls.json is not controls: {e}")))?;
            if claimed != controls {
                return Err(refuse(
                    "controls.json does not match the controls recomputed from the events",
                ));
            }
            if files["changes.csv"] != population.changes_csv().into_bytes() {
                return Err(refuse(
                    "changes.csv does not match the population recomputed from the events",
                ));
            }
            let summary = Summary::new(
                &claims.scope,
                Some(as_of),
                checkpoint.size,
                population,
                &controls,
            );
            if files["REPORT.html"] != report_html(&summary, population, &controls).into_bytes() {
                return Err(refuse(
                    "REPORT.html does not match the report recomputed from the events",
                ));
            }
            Some(controls)
        }
        None => None,
    };
    Ok(Verified {
        events: indices.len() as u64,
        intents: population.intent_count() as u64,
        tree_size: checkpoint.size,
        failed_controls: controls.as_ref().map_or(0, ControlsFile::failed),
        controls,
    })
}

/// Turns a proof's base64 hashes into hashes.
type Decoder = dyn Fn(&[String]) -> Result<Vec<Hash>, Refused>;

/// Checks the events on either side of a period's range: each is the leaf next to the range,
/// is in the checkpoint's tree, and is stamped outside the period (the one after it at or after
/// its end); none is needed at leaf 0 or at the tree's end.
fn check_boundaries(
    claims: &Claims,
    range: &super::format::RangeProof,
    boundaries: Option<&super::format::Boundaries>,
    checkpoint: &Checkpoint,
    hashes: &Decoder,
) -> Result<(), Refused> {
    // Read as the export wrote them (chrono's serde form, RFC 3339 for years up to 9999).
    let time = |name: &str| {
        serde_json::from_value::<DateTime<Utc>>(claims.scope[name].clone())
            .map_err(|_| refuse(format!("the predicate's scope has no {name} time")))
    };
    let (from, to) = (time("from")?, time("to")?);
    let boundaries = boundaries
        .ok_or_else(|| refuse("proof.json proves no boundaries for the period's range"))?;
    let proved = |side: &str, b: &super::format::BoundaryEvent, leaf: u64| {
        if b.event.index != leaf {
            return Err(refuse(format!(
                "the event {side} the range is leaf {}, not leaf {leaf}",
                b.event.index
            )));
        }
        merkle::verify_inclusion(
            leaf,
            checkpoint.size,
            &b.event.leaf(),
            &hashes(&b.hashes)?,
            &checkpoint.root,
        )
        .map_err(|e| {
            refuse(format!(
                "the event {side} the range (leaf {leaf}) is not in the checkpoint's tree: {e}"
            ))
        })?;
        decode_stream(
            &b.event.event_type,
            &b.event.event_version,
            &b.event.payload,
        )
        .map(|e| e.occurred_at())
        .map_err(|e| {
            refuse(format!(
                "the event {side} the range (leaf {leaf}) does not decode: {e}"
            ))
        })
    };
    match (&boundaries.before, range.start) {
        (None, 0) => {}
        (None, start) => {
            return Err(refuse(format!(
                "proof.json does not prove leaf {}, the event before the range: the period may start earlier",
                start - 1
            )))
        }
        (Some(b), start) => {
            let at = proved("before", b, start.saturating_sub(1))?;
            if at >= from && at < to {
                return Err(refuse(format!(
                    "the event before the range (leaf {}) is stamped {}, inside the period: the range leaves out the period's first events",
                    b.event.index,
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )));
            }
        }
    }
    match (&boundaries.after, range.end) {
        (None, end) if end == checkpoint.size => {}
        (None, end) => {
            return Err(refuse(format!(
                "proof.json does not prove leaf {end}, the event after the range: the period may end later"
            )))
        }
        (Some(a), end) => {
            let at = proved("after", a, end)?;
            if at < to {
                return Err(refuse(format!(
                    "the event after the range (leaf {end}) is stamped {}, before the period's end: the range leaves out the period's last events",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )));
            }
        }
    }
    Ok(())
}

/// The archive's files but `events.jsonl`, and that one's SHA-256.
struct Archive {
    files: BTreeMap<String, Vec<u8>>,
    events_digest: Option<String>,
}

/// Bytes of `events.jsonl` handed to the parsing thread at a time (whole lines).
const VERIFY_BLOCK: usize = 1 << 20;

/// Reads the archive, keeping every file but `events.jsonl`, which goes to `events` in blocks of
/// whole lines as it is hashed. A closed `events` (the parser stopped on a bad line) stops it.
fn read_archive(
    bundle: impl Read,
    events: std::sync::mpsc::SyncSender<Vec<u8>>,
) -> Result<Archive, Refused> {
    // A bundle is several gzip members, one after the other (docs/evidence.md).
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(bundle));
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut events_digest = None;
    let stopped = || refuse("the events could not be read");
    for entry in archive
        .entries()
        .map_err(|e| refuse(format!("not a .tar.gz bundle: {e}")))?
    {
        let mut entry = entry.map_err(|e| refuse(format!("the archive is damaged: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| refuse(format!("the archive is damaged: {e}")))?
            .to_string_lossy()
            .into_owned();
        if files.contains_key(&name) || (name == "events.jsonl" && events_digest.is_some()) {
            return Err(refuse(format!("{name} appears twice in the bundle")));
        }
        if name == "events.jsonl" {
            let mut hasher = Sha256::new();
            let mut carry: Vec<u8> = Vec::new();
            loop {
                let mut block = std::mem::take(&mut carry);
                let held = block.len();
                block.resize(held + VERIFY_BLOCK, 0);
                let n = read_full(&mut entry, &mut block[held..])
                    .map_err(|e| refuse(format!("events.jsonl is damaged: {e}")))?;
                hasher.update(&block[held..held + n]);
                block.truncate(held + n);
                if n == 0 {
                    if !block.is_empty() {
                        events.send(block).map_err(|_| stopped())?;
                    }
                    break;
                }
                // Whole lines go now; the part after the last newline waits for the next read.
                if let Some(last) = block.iter().rposition(|b| *b == b'\n') {
                    carry = block.split_off(last + 1);
                    events.send(block).map_err(|_| stopped())?;
                } else {
                    carry = block;
                }
            }
            events_digest = Some(hex::encode(hasher.finalize()));
        } else {
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .map_err(|e| refuse(format!("{name} is damaged: {e}")))?;
            files.insert(name, data);
        }
    }
    Ok(Archive {
        files,
        events_digest,
    })
}

/// Reads until `buf` is full or the input ends; how many bytes it read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The events of a bundle, as the verifier keeps them: each one's leaf hash and index, in the
/// order of the file, and the population they make.
struct ParsedEvents {
    leaves: Vec<Hash>,
    indices: Vec<u64>,
    population: Population,
}

/// One line of `events.jsonl`, parsed, hashed and decoded on a worker.
struct ParsedLine {
    index: u64,
    leaf: Hash,
    aggregate_id: String,
    sequence: i64,
    event: Option<StreamEvent>,
}

/// A block's lines, or the first that is not an event record (its number in the block, from 1,
/// and why).
type ParsedBlock = Result<Vec<ParsedLine>, (u64, String)>;

fn parse_block(block: &[u8]) -> ParsedBlock {
    let lines = block.strip_suffix(b"\n").unwrap_or(block);
    lines
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(n, line)| {
            let record: EventRecord =
                serde_json::from_slice(line).map_err(|e| (n as u64 + 1, e.to_string()))?;
            Ok(ParsedLine {
                index: record.index,
                leaf: record.leaf(),
                event: decode_stream(&record.event_type, &record.event_version, &record.payload)
                    .ok(),
                aggregate_id: record.aggregate_id,
                sequence: record.sequence,
            })
        })
        .collect()
}

/// Parses the blocks of `events.jsonl` as they arrive, on every core: workers parse, hash and
/// decode whole blocks, and this thread folds them into the population in the file's order. On
/// a line that is not an event record it stops (closing `blocks`, which stops the reader) and
/// names the line.
fn parse_events(blocks: std::sync::mpsc::Receiver<Vec<u8>>) -> Result<ParsedEvents, Refused> {
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    let blocks = std::sync::Mutex::new(Some(blocks.into_iter().enumerate()));
    let (sender, parsed_blocks) =
        std::sync::mpsc::sync_channel::<(usize, ParsedBlock)>(workers * 2);
    let mut parsed = ParsedEvents {
        leaves: Vec::new(),
        indices: Vec::new(),
        population: Population::default(),
    };
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (blocks, sender) = (&blocks, sender.clone());
            scope.spawn(move || loop {
                // The lock is held only to take the next block.
                let next = blocks
                    .lock()
                    .map(|mut b| b.as_mut().and_then(Iterator::next));
                let Ok(Some((n, block))) = next else { return };
                if sender.send((n, parse_block(&block))).is_err() {
                    return;
                }
            });
        }
        drop(sender);
        let mut waiting: BTreeMap<usize, ParsedBlock> = BTreeMap::new();
        let (mut next, mut lines) = (0usize, 0u64);
        let outcome = (|| {
            for (n, block) in parsed_blocks.iter() {
                waiting.insert(n, block);
                while let Some(block) = waiting.remove(&next) {
                    next += 1;
                    let block = block.map_err(|(line, e)| {
                        refuse(format!(
                            "events.jsonl line {} is not an event record: {e}",
                            lines + line
                        ))
                    })?;
                    lines += block.len() as u64;
                    for line in block {
                        parsed.leaves.push(line.leaf);
                        parsed.indices.push(line.index);
                        parsed.population.add(
                            line.index,
                            &line.aggregate_id,
                            line.sequence,
                            line.event,
                        );
                    }
                }
            }
            Ok(())
        })();
        // Stops the workers (and through them the reader) on a refusal.
        drop(parsed_blocks);
        if let Ok(mut b) = blocks.lock() {
            *b = None;
        }
        outcome
    })?;
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines parsed on several workers keep the file's order, and a bad line is named by its
    /// number in the whole file, whichever block it was in.
    #[test]
    fn events_are_parsed_in_order_and_a_bad_line_is_named_by_its_number() {
        let line = |index: u64| {
            let mut l = serde_json::to_vec(&EventRecord {
                index,
                position: index as i64 + 1,
                aggregate_type: "deployment".into(),
                aggregate_id: format!("intent-{}", index % 3),
                sequence: index as i64 / 3 + 1,
                event_type: "DeploymentCreated".into(),
                event_version: "1".into(),
                payload: "{}".into(),
                metadata: "{}".into(),
            })
            .unwrap();
            l.push(b'\n');
            l
        };
        let run = |blocks: Vec<Vec<u8>>| {
            let (sender, receiver) = std::sync::mpsc::sync_channel(blocks.len());
            for b in blocks {
                sender.send(b).unwrap();
            }
            drop(sender);
            parse_events(receiver)
        };
        let blocks: Vec<Vec<u8>> = (0..40u64)
            .map(|b| (b * 5..b * 5 + 5).flat_map(line).collect())
            .collect();
        let parsed = run(blocks.clone()).unwrap();
        assert_eq!(parsed.indices, (0..200).collect::<Vec<u64>>());
        assert_eq!(parsed.leaves.len(), 200);
        let mut broken = blocks;
        broken[23] = [line(115), b"{not json\n".to_vec(), line(116)].concat();
        let refused = run(broken).err().unwrap();
        assert!(
            refused
                .0
                .starts_with("events.jsonl line 117 is not an event record"),
            "{refused}"
        );
    }
}
