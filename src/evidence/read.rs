//! Reading a bundle: the archive gunzipped and hashed on one thread while `events.jsonl` is
//! parsed, hashed and decoded on every core into the population, and the manifest's statement
//! decoded; nothing checked yet (`verify.rs` checks).

use std::collections::BTreeMap;
use std::io::Read;

use base64::Engine;
use chrono::{DateTime, Utc};
use eucora_projections::decode::{decode_stream, StreamEvent};
use eucora_projections::merkle::Hash;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::format::{Format, Line, MANIFEST, PAYLOAD_TYPE, STATEMENT_TYPE};
use super::population::{Gathering, Population};

/// Why a bundle did not verify: the first failure, in our words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

pub(super) fn refuse(what: impl Into<String>) -> Refused {
    Refused(what.into())
}

/// A bundle as read, before any check: its files but `events.jsonl`, every file's SHA-256, and
/// its events parsed (each one's leaf hash and index, and the population they make).
pub struct Bundle {
    pub(super) files: BTreeMap<String, Vec<u8>>,
    /// Each file's SHA-256 (hex), `events.jsonl` too, taken as it was read.
    pub(super) digests: BTreeMap<String, String>,
    pub(super) leaves: Vec<Hash>,
    pub(super) indices: Vec<u64>,
    pub(super) population: Population,
    /// The leaf index of the first event whose line embeds a stored text as a JSON value (which
    /// only evidence/v4 on writes).
    pub(super) first_embedded: Option<u64>,
}

/// Reads a bundle once, on two cores: one thread gunzips the archive and hashes the files, this
/// one parses the events, hashes their leaves and folds them into the population. Memory holds
/// one hash per event and the bundle's decoded events. Nothing is checked but that it reads.
pub fn read_bundle(bundle: impl Read + Send) -> Result<Bundle, Refused> {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    // Blocks parsed go back to the reader to be filled again: fresh memory costs more than
    // the parsing.
    let (spare, spares) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
    let (archive, events) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_archive(bundle, sender, spares));
        let events = parse_events(receiver, spare);
        let archive = reader
            .join()
            .unwrap_or_else(|_| Err(refuse("the archive reader panicked")));
        (archive, events)
    });
    // In the order a single pass meets them: a line that does not parse, before damage after it.
    let events = events?;
    let Archive { files, digests } = archive?;
    Ok(Bundle {
        files,
        digests,
        leaves: events.leaves,
        indices: events.indices,
        population: events.gathering.population(),
        first_embedded: events.first_embedded,
    })
}

/// What a bundle says of itself, from its manifest's statement (signed, but not checked here).
#[derive(Debug, Clone)]
pub struct Claims {
    /// The bundle's format, from its `predicateType`.
    pub format: Format,
    /// The predicate's scope: `{from, to}` or `{deployment_id}`.
    pub scope: Value,
    /// When the controls are judged (none in an evidence/v1 bundle).
    pub as_of: Option<DateTime<Utc>>,
    pub tree_size: u64,
    /// The manifest's payload, as signed, its envelope and the statement it holds.
    pub(super) payload: Vec<u8>,
    pub(super) envelope: Value,
    pub(super) statement: Value,
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
        let format = statement["predicateType"]
            .as_str()
            .and_then(Format::of_predicate_type)
            .filter(|_| statement["_type"] == STATEMENT_TYPE)
            .ok_or_else(|| {
                refuse("the manifest is not an in-toto Statement v1 of EUCORA evidence")
            })?;
        // The time the controls were judged at (evidence/v2 on); none in an earlier release's
        // bundle.
        let as_of = match statement["predicate"]["as_of"].as_str() {
            Some(text) => Some(
                DateTime::parse_from_rfc3339(text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| refuse("the predicate's as_of is not an RFC 3339 time"))?,
            ),
            None if format.judged() => return Err(refuse("the predicate has no as_of")),
            None => None,
        };
        Ok(Claims {
            format,
            scope: statement["predicate"]["scope"].clone(),
            as_of,
            tree_size: statement["predicate"]["tree_size"].as_u64().unwrap_or(0),
            payload,
            envelope,
            statement,
        })
    }
}

/// The archive's files but `events.jsonl`, and every file's SHA-256.
struct Archive {
    files: BTreeMap<String, Vec<u8>>,
    digests: BTreeMap<String, String>,
}

/// Bytes of `events.jsonl` handed to the parsing thread at a time (whole lines).
const VERIFY_BLOCK: usize = 1 << 20;

/// Reads the archive, keeping every file but `events.jsonl`, which goes to `events` in blocks of
/// whole lines as it is hashed; each file is hashed here, as it is read, while the parsers are
/// still busy. A closed `events` (the parser stopped on a bad line) stops it.
fn read_archive(
    bundle: impl Read,
    events: std::sync::mpsc::SyncSender<Vec<u8>>,
    spares: std::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<Archive, Refused> {
    // A bundle is several gzip members, one after the other (docs/evidence.md).
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(bundle));
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut digests: BTreeMap<String, String> = BTreeMap::new();
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
        if digests.contains_key(&name) {
            return Err(refuse(format!("{name} appears twice in the bundle")));
        }
        if name == "events.jsonl" {
            let mut hasher = Sha256::new();
            let mut carry: Vec<u8> = Vec::new();
            loop {
                let mut block = spares.try_recv().unwrap_or_default();
                block.clear();
                block.append(&mut carry);
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
                if let Some(last) = memchr::memrchr(b'\n', &block) {
                    carry = block.split_off(last + 1);
                    events.send(block).map_err(|_| stopped())?;
                } else {
                    carry = block;
                }
            }
            digests.insert(name, hex::encode(hasher.finalize()));
        } else {
            // Sized from the header at once (REPORT.html is hundreds of megabytes at a
            // million events), within reason for a header that lies.
            let size = entry.header().size().unwrap_or(0).min(1 << 30);
            let mut data = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut data)
                .map_err(|e| refuse(format!("{name} is damaged: {e}")))?;
            digests.insert(name.clone(), hex::encode(Sha256::digest(&data)));
            files.insert(name, data);
        }
    }
    Ok(Archive { files, digests })
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
    gathering: Gathering,
    /// The leaf index of the first event whose line embeds a stored text as a JSON value.
    first_embedded: Option<u64>,
}

/// One line of `events.jsonl`, parsed, hashed and decoded on a worker.
struct ParsedLine {
    index: u64,
    leaf: Hash,
    embeds: bool,
    aggregate_id: String,
    sequence: i64,
    event: Option<StreamEvent>,
}

/// A block's lines, or the first that is not an event record (its number in the block, from 1,
/// and why).
type ParsedBlock = Result<Vec<ParsedLine>, (u64, String)>;

fn parse_block(block: &[u8]) -> ParsedBlock {
    let lines = block.strip_suffix(b"\n").unwrap_or(block);
    let count = memchr::memchr_iter(b'\n', lines).count() + 1;
    let mut start = 0;
    let spans = memchr::memchr_iter(b'\n', lines)
        .chain([lines.len()])
        .map(move |end| {
            let span = start..end;
            start = end + 1;
            span
        });
    // The block is checked for UTF-8 once, so its lines' strings and stored texts are not
    // checked one by one; a block that is not UTF-8 is parsed line by line from its bytes, which
    // names the line at fault.
    match std::str::from_utf8(lines) {
        Ok(text) => parse_lines(count, spans.map(|s| serde_json::from_str::<Line>(&text[s]))),
        Err(_) => parse_lines(
            count,
            spans.map(|s| serde_json::from_slice::<Line>(&lines[s])),
        ),
    }
}

/// The block's `count` lines as parsed, hashed and decoded, or the first that is not an event
/// record.
fn parse_lines<'a>(
    count: usize,
    lines: impl Iterator<Item = serde_json::Result<Line<'a>>>,
) -> ParsedBlock {
    // Sized at once: a vector grown line by line spends more time on fresh memory than parsing.
    let mut parsed = Vec::with_capacity(count);
    for (n, line) in lines.enumerate() {
        let line = line.map_err(|e| (n as u64 + 1, e.to_string()))?;
        parsed.push(ParsedLine {
            index: line.index,
            leaf: line.leaf(),
            embeds: line.embeds(),
            event: decode_stream(&line.event_type, &line.event_version, line.payload.text()).ok(),
            aggregate_id: line.aggregate_id.into_owned(),
            sequence: line.sequence,
        });
    }
    Ok(parsed)
}

/// Parses the blocks of `events.jsonl` as they arrive, on every core: workers parse, hash and
/// decode whole blocks, and this thread folds them into the population in the file's order. On
/// a line that is not an event record it stops (closing `blocks`, which stops the reader) and
/// names the line.
fn parse_events(
    blocks: std::sync::mpsc::Receiver<Vec<u8>>,
    spare: std::sync::mpsc::SyncSender<Vec<u8>>,
) -> Result<ParsedEvents, Refused> {
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    let blocks = std::sync::Mutex::new(Some(blocks.into_iter().enumerate()));
    let (sender, parsed_blocks) =
        std::sync::mpsc::sync_channel::<(usize, ParsedBlock)>(workers * 2);
    let mut parsed = ParsedEvents {
        leaves: Vec::new(),
        indices: Vec::new(),
        gathering: Gathering::default(),
        first_embedded: None,
    };
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (blocks, sender, spare) = (&blocks, sender.clone(), spare.clone());
            scope.spawn(move || loop {
                // The lock is held only to take the next block.
                let next = blocks
                    .lock()
                    .map(|mut b| b.as_mut().and_then(Iterator::next));
                let Ok(Some((n, block))) = next else { return };
                if sender.send((n, parse_block(&block))).is_err() {
                    return;
                }
                // Not kept when the reader has enough.
                let _ = spare.try_send(block);
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
                        if line.embeds && parsed.first_embedded.is_none() {
                            parsed.first_embedded = Some(line.index);
                        }
                        parsed.leaves.push(line.leaf);
                        parsed.indices.push(line.index);
                        parsed.gathering.add(
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
    use crate::evidence::format::EventRecord;

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
            parse_events(receiver, std::sync::mpsc::sync_channel(1).0)
        };
        let blocks: Vec<Vec<u8>> = (0..40u64)
            .map(|b| (b * 5..b * 5 + 5).flat_map(line).collect())
            .collect();
        let parsed = run(blocks.clone()).unwrap();
        assert_eq!(parsed.indices, (0..200).collect::<Vec<u64>>());
        assert_eq!(parsed.leaves.len(), 200);
        let mut broken = blocks.clone();
        broken[23] = [line(115), b"{not json\n".to_vec(), line(116)].concat();
        let refused = run(broken).err().unwrap();
        assert!(
            refused
                .0
                .starts_with("events.jsonl line 117 is not an event record"),
            "{refused}"
        );
        // A block that is not UTF-8 is read line by line: the line at fault is still named.
        let mut broken = blocks;
        let bad = [&line(115)[..30], b"\xff\xfe", &line(115)[30..]].concat();
        broken[23] = [line(114), bad, line(116)].concat();
        let refused = run(broken).err().unwrap();
        assert!(
            refused
                .0
                .starts_with("events.jsonl line 117 is not an event record"),
            "{refused}"
        );
    }
}
