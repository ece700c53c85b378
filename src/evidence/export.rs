//! Writing a bundle: the stream read in batches, the population gathered, the proofs and the
//! signed manifest; `archive.rs` spools `events.jsonl` and writes the tar.gz around them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;

use chrono::{DateTime, Utc};
use eucora_projections::decode::StreamEvent;
use eucora_projections::governance::{GovernanceEvent, POLICY_STREAM};
use eucora_projections::heads::Lookup;
use eucora_projections::intent::IntentState;
use eucora_projections::merkle;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use super::archive::{write_bundle, EventsSpool};
use super::controls::rfc3339;
use super::format::{
    b64, pae, Boundaries, BoundaryEvent, ConsistencyProof, EventRecord, EvidenceError, Format,
    InclusionProof, Line, Previous, ProofFile, RangeProof, Scope, Texts, FILES, PAYLOAD_TYPE,
    STATEMENT_TYPE,
};
use super::free_apart;
use super::heads::{heads_under, HeadProof};
use super::population::Gathering;
use super::report::derive;
use crate::checkpoints::{open_checkpoint, SigningKey};
use crate::projection::log::{leaves_of, with_tiles, LogTree, LogView};
use crate::projection::{Event, ProjectionError, RunError, StreamReader};
use crate::store::{Columns, Store, StreamRow};

/// Rows read per batch while exporting.
const BATCH: i64 = 5000;

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub events: u64,
    pub intents: u64,
    pub tree_size: u64,
    pub failed_controls: u64,
}

/// Writes the bundle of `scope` to `out` (a `.tar.gz`). Reads the stream in batches and spools
/// the events to a temporary file, so memory holds the bundle's intents, not its bytes.
pub async fn export(
    store: &Store,
    log: &LogView,
    key: &SigningKey,
    scope: &Scope,
    previous: Option<Previous<'_>>,
    out: impl Write,
) -> Result<ExportSummary, EvidenceError> {
    let Some(latest) = store.latest_checkpoint().await? else {
        let why = "no checkpoint has been signed yet: start the server with a signing key and \
                   wait for its first checkpoint";
        return Err(match scope {
            Scope::Deployment(id) if !store.intent_events(*id).await?.is_empty() => {
                EvidenceError::NotYetSigned(why.into())
            }
            _ => EvidenceError::NotFound(why.into()),
        });
    };
    let checkpoint = open_checkpoint(&latest.note, key.verifier_key()).map_err(|e| {
        EvidenceError::Export(format!(
            "the latest checkpoint does not verify with this key: {e}"
        ))
    })?;
    let size = checkpoint.size;
    // A store shorter than what was signed would keep a period's reading of the stream waiting
    // for ever: refused at once. (A deployment's reads only its own events and the tiles.)
    if let Scope::Period { .. } = scope {
        let held = store.event_count().await?.max(0) as u64;
        if held < size {
            return Err(EvidenceError::Export(format!(
                "integrity check failed: the store holds {held} events, fewer than the {size} \
                 the latest signed checkpoint covers: events were deleted (docs/runbook.md, \
                 IntegrityCheckFailed)"
            )));
        }
    }
    let tree = log.tree();
    if tree.size() < size {
        return Err(EvidenceError::Export(
            "the log is behind its latest checkpoint; try again in a moment".into(),
        ));
    }
    let previous = match previous {
        None => None,
        Some(Previous::Checkpoint(note)) => Some(
            open_checkpoint(note, key.verifier_key())
                .map_err(|e| EvidenceError::Invalid(format!("the earlier checkpoint: {e}")))?
                .size,
        ),
        Some(Previous::Size(0)) => {
            return Err(EvidenceError::Invalid(
                "the earlier tree size must be at least 1 (the empty tree proves nothing)".into(),
            ))
        }
        Some(Previous::Size(n)) => Some(n),
    };

    // One deployment's head under the checkpoint: its events' count and last leaf, proved in the
    // index the checkpoint commits to (an intent with none is told apart below).
    let head = match scope {
        Scope::Deployment(id) => match heads_under(store, log, &checkpoint).await?.lookup(*id) {
            Lookup::Present(placed) => Some(HeadProof::of(&placed)),
            Lookup::Absent { .. } => None,
        },
        Scope::Period { .. } => None,
    };

    // Which events: for one deployment, its own; for a period, the events stamped in it (a
    // contiguous range of leaves) and, before them, the earlier events of every intent with an
    // event in the period or open at its start, so each change is judged on its whole history.
    let wanted = match scope {
        Scope::Deployment(id) => Selection::Deployment(*id),
        Scope::Period { from, to } => {
            Selection::Period(find_period(store, size, *from, *to).await?)
        }
    };

    // The events, in leaf order, spooled.
    let mut events = EventsSpool::new()?;
    let mut gathering = Gathering::default();
    let mut chosen: Vec<u64> = Vec::new();
    // A period's range ends at the first event after its start stamped at or after its end (read
    // here, as its boundary), or at the checkpoint's size.
    let (mut before, mut after) = (None, None);
    let mut range_end = size;
    // An event of the bundle, at leaf `index`: its line spooled, its leaf and event kept.
    let mut take = |index: u64, row: &StreamRow, event: Option<StreamEvent>| {
        let payload_decoded = event.is_some();
        let line = Line::of_row(index, row, Texts::Embedded { payload_decoded })?;
        chosen.push(index);
        gathering.add(index, &line.aggregate_id, line.sequence, event);
        events.line(&line)
    };
    match &wanted {
        Selection::Deployment(id) => {
            // One deployment: its own events, placed in the log through its tiles; nothing else
            // is read, so its cost does not grow with the log.
            let rows = store.intent_stored(*id).await?;
            let positions: Vec<i64> = rows.iter().map(|r| r.position).collect();
            let leaves = leaves_of(store, size, &positions).await?;
            for (row, leaf) in rows.iter().zip(leaves) {
                let Some(leaf) = leaf else { break };
                take(leaf, row, row.decode().ok())?;
            }
        }
        Selection::Period(p) => {
            // Read and decoded ahead on other tasks, compressed on another thread: the stages
            // overlap.
            let mut stream = StreamReader::from_start(store.clone(), size, BATCH, Columns::Stored);
            let mut index = 0u64;
            'read: while index < size {
                let Some(batch) = stream.next().await else {
                    break;
                };
                // Each decoded event moves into the population, not copied.
                for Event { row, event, .. } in batch.map_err(run_error)? {
                    let event = event.ok();
                    let at = event.as_ref().map(StreamEvent::occurred_at);
                    if index > p.start && at.is_some_and(|t| t >= p.to) {
                        after = Some(EventRecord::of(index, &row)?);
                        range_end = index;
                        break 'read;
                    }
                    if index + 1 == p.start {
                        before = Some(EventRecord::of(index, &row)?);
                    }
                    if index >= p.start || p.intents.contains(&row.stream()?.aggregate_id) {
                        take(index, &row, event)?;
                    }
                    index += 1;
                    if index >= size {
                        break;
                    }
                }
            }
        }
    }
    let population = gathering.population();
    if chosen.is_empty() {
        return Err(match scope {
            Scope::Deployment(id) if !store.intent_events(*id).await?.is_empty() => {
                EvidenceError::NotYetSigned(format!(
                    "the events of deployment intent {id} are not under a signed checkpoint yet; \
                     the next one is due within the checkpoint interval"
                ))
            }
            Scope::Deployment(id) => EvidenceError::NotFound(format!("no deployment intent {id}")),
            Scope::Period { .. } => {
                EvidenceError::NotFound("no signed event falls in this period".into())
            }
        });
    }

    if let Some(head) = &head {
        if chosen.len() as u64 != head.events || chosen.last() != Some(&head.last_index) {
            return Err(EvidenceError::Export(format!(
                "the log holds {} events of intent {} ending at leaf {:?}, its head under the \
                 checkpoint says {} ending at leaf {}",
                chosen.len(),
                head.intent_id,
                chosen.last(),
                head.events,
                head.last_index
            )));
        }
    }

    // The proofs, against the checkpoint.
    let proof_error =
        |e: crate::projection::log::LogProofError| EvidenceError::Export(e.to_string());
    let proof = ProofFile {
        tree_size: size,
        range: match &wanted {
            Selection::Period(p) => {
                let (start, end) = (p.start, range_end);
                let hashes = with_tiles(store, &tree, |r| merkle::range_proof(r, start, end, size))
                    .await
                    .map_err(proof_error)?;
                Some(RangeProof {
                    start,
                    end,
                    hashes: encoded(&hashes),
                })
            }
            Selection::Deployment(_) => None,
        },
        // One deployment: every event; a period: the earlier events before its range.
        inclusion: {
            let mut all = Vec::new();
            for &index in &chosen {
                if matches!(&wanted, Selection::Period(p) if index >= p.start) {
                    break;
                }
                all.push(InclusionProof {
                    index,
                    hashes: inclusion(store, &tree, index, size).await?,
                });
            }
            all
        },
        boundaries: match &wanted {
            Selection::Deployment(_) => None,
            Selection::Period(_) => {
                let before = boundary(store, &tree, before, size).await?;
                let after = boundary(store, &tree, after, size).await?;
                Some(Boundaries { before, after })
            }
        },
        head,
        consistency: match previous {
            None => None,
            Some(from) if from > size => {
                return Err(EvidenceError::Invalid(format!(
                "the earlier tree (size {from}) is past the latest signed checkpoint (size {size})"
            )))
            }
            Some(from) => {
                let hashes = with_tiles(store, &tree, |r| merkle::consistency_proof(r, from, size))
                    .await
                    .map_err(proof_error)?;
                Some(ConsistencyProof {
                    from,
                    hashes: encoded(&hashes),
                })
            }
        },
    };
    let now = chrono::Utc::now();
    let as_of = scope.as_of(now);
    let written = u64::try_from(now.timestamp()).unwrap_or(0);
    let scope_json = match scope {
        Scope::Period { from, to } => json!({"from": from, "to": to}),
        Scope::Deployment(id) => json!({"deployment_id": id}),
    };
    let derived = derive(Format::CURRENT, &scope_json, as_of, size, &population)
        .map_err(|e| EvidenceError::Export(e.to_string()))?;
    let (failed, intents) = (derived.controls.failed(), derived.controls.intents.len());
    let mut events = events.finish()?;
    let files: BTreeMap<&str, Vec<u8>> = [
        ("checkpoint", latest.note.clone().into_bytes()),
        ("proof.json", pretty(&proof)?),
        ("controls.json", derived.controls_json),
        ("changes.csv", derived.changes_csv),
        ("REPORT.html", derived.report_html),
        ("VERIFY.md", verify_md(key.verifier_key()).into_bytes()),
    ]
    .into_iter()
    .collect();

    let signed = |digests: &[(&str, [u8; 32])]| -> Result<Vec<u8>, EvidenceError> {
        // The manifest: every file's SHA-256, signed.
        let subjects: Vec<_> = digests
            .iter()
            .map(|(name, digest)| json!({"name": name, "digest": {"sha256": hex::encode(digest)}}))
            .collect();
        let statement = json!({
            "_type": STATEMENT_TYPE,
            "subject": subjects,
            "predicateType": Format::CURRENT.predicate_type(),
            "predicate": {
                "scope": scope_json,
                "as_of": rfc3339(as_of),
                "tree_size": size,
                "events": chosen.len(),
                "generated_by": format!("eucora {}", env!("CARGO_PKG_VERSION")),
            },
        });
        let payload =
            serde_json::to_vec(&statement).map_err(|e| EvidenceError::Export(e.to_string()))?;
        let signature = key
            .sign(&pae(PAYLOAD_TYPE, &payload))
            .map_err(EvidenceError::Export)?;
        pretty(&json!({
            "payloadType": PAYLOAD_TYPE,
            "payload": b64(&payload),
            "signatures": [{"keyid": key.verifier_key(), "sig": b64(&signature)}],
        }))
    };
    let listed: Vec<(&str, &[u8])> = FILES[1..]
        .iter()
        .map(|name| (*name, files[name].as_slice()))
        .collect();
    write_bundle(out, &mut events, &listed, written, signed)?;
    // Freed once the bundle is written: a command line that exits next does not wait for it, and
    // the writing does not share a core with it.
    free_apart(population);
    Ok(ExportSummary {
        events: chosen.len() as u64,
        intents: intents as u64,
        tree_size: size,
        failed_controls: failed,
    })
}

fn pretty(value: &impl Serialize) -> Result<Vec<u8>, EvidenceError> {
    let mut out =
        serde_json::to_vec_pretty(value).map_err(|e| EvidenceError::Export(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

fn verify_md(verifier_key: &str) -> String {
    format!(
        "# Verifying this evidence bundle\n\n\
         This bundle was exported by EUCORA and signed with the log key whose verifier key is:\n\n\
         ```\n{verifier_key}\n```\n\n\
         Obtain that key from the operator through another channel, then run, offline:\n\n\
         ```\neucora evidence verify BUNDLE.tar.gz --key KEYFILE [--previous-checkpoint FILE]\n```\n\n\
         where KEYFILE holds the verifier key line. It checks the manifest's signature and every\n\
         file's SHA-256, the checkpoint's signature, that the events are exactly the leaves the\n\
         proofs place under the checkpoint's tree head, their contiguity, the consistency proof\n\
         from an earlier checkpoint you kept (if given), and recomputes every control and the\n\
         population. It exits 0 only when all hold, and names the first failure otherwise.\n\n\
         docs/evidence.md in the EUCORA repository documents every byte, to write a verifier of\n\
         your own.\n"
    )
}

/// What an export takes from the stream.
enum Selection {
    /// Every event of this intent.
    Deployment(Uuid),
    Period(PeriodSelection),
}

/// Where a period's range starts, the period's end, and the intents whose earlier events come
/// with it.
struct PeriodSelection {
    start: u64,
    to: DateTime<Utc>,
    /// Every intent with an event in the period, or open at its start, and the policy stream's
    /// id when a policy was activated before it.
    intents: HashSet<String>,
}

/// The inclusion proof of leaf `index` in the tree of `size`, as the bundle writes it.
async fn inclusion(
    store: &Store,
    tree: &LogTree,
    index: u64,
    size: u64,
) -> Result<Vec<String>, EvidenceError> {
    with_tiles(store, tree, |r| merkle::inclusion_proof(r, index, size))
        .await
        .map(|hashes| encoded(&hashes))
        .map_err(|e| EvidenceError::Export(e.to_string()))
}

/// An event just outside a period's range, with its inclusion proof.
async fn boundary(
    store: &Store,
    tree: &LogTree,
    event: Option<EventRecord>,
    size: u64,
) -> Result<Option<BoundaryEvent>, EvidenceError> {
    Ok(match event {
        Some(event) => Some(BoundaryEvent {
            hashes: inclusion(store, tree, event.index, size).await?,
            event,
        }),
        None => None,
    })
}

/// A proof's hashes as the bundle writes them (base64).
fn encoded(hashes: &[merkle::Hash]) -> Vec<String> {
    hashes.iter().map(|h| b64(h)).collect()
}

fn run_error(e: RunError) -> EvidenceError {
    match e {
        RunError::Projection(ProjectionError::Store(e)) => EvidenceError::Store(e),
        e => EvidenceError::Export(e.to_string()),
    }
}

/// Whether an intent is still open: awaiting the CAB, deployed and not complete, or an
/// emergency change still owing its retrospective decision or the rollback it requires.
fn is_open(state: &IntentState) -> bool {
    !state.status.is_terminal() || state.retro_approval_pending || state.rollback_required
}

/// The first pass of a period's export, over the stream up to the checkpoint's size: the range of
/// leaves stamped in the period (from the first event stamped at or after `from` to the first
/// stamped at or after `to`), and the intents of its population: those with an event in the range
/// and those open when it starts (folded from their events before it), and the policy stream when
/// a policy was activated before it.
async fn find_period(
    store: &Store,
    size: u64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<PeriodSelection, EvidenceError> {
    let mut open: HashMap<String, IntentState> = HashMap::new();
    let mut intents: HashSet<String> = HashSet::new();
    // Whether a policy was activated before the range: then the policy stream's events come too,
    // so the bundle shows the policy in force when the period starts.
    let mut policy_before = false;
    let mut start = None;
    let mut index = 0u64;
    // Which stream each event is of, and the event: no metadata, no leaf hash.
    let mut stream = StreamReader::from_start(store.clone(), size, BATCH, Columns::Streams);
    'read: while index < size {
        let Some(batch) = stream.next().await else {
            break;
        };
        let batch = batch.map_err(run_error)?;
        for Event { row, event, .. } in batch.iter() {
            let at = event.as_ref().map(StreamEvent::occurred_at).ok();
            if start.is_none() && at.is_some_and(|t| t >= from && t < to) {
                if index == 0 {
                    // Nothing before the range: no earlier events to bring.
                    return Ok(PeriodSelection {
                        start: 0,
                        to,
                        intents: HashSet::new(),
                    });
                }
                start = Some(index);
                // Carried over: every intent open as the period starts, and the policy stream.
                intents.extend(open.drain().map(|(id, _)| id));
                if policy_before {
                    intents.insert(POLICY_STREAM.to_string());
                }
            }
            if start.is_some_and(|s| index > s) && at.is_some_and(|t| t >= to) {
                break 'read;
            }
            match (start, event) {
                (None, Ok(StreamEvent::Deployment(e))) => {
                    let id = row.stream()?.aggregate_id.to_string();
                    let state = IntentState::fold(open.remove(&id), e);
                    if let Some(state) = state.filter(is_open) {
                        open.insert(id, state);
                    }
                }
                (Some(_), Ok(StreamEvent::Deployment(_))) => {
                    intents.insert(row.stream()?.aggregate_id.to_string());
                }
                (None, Ok(StreamEvent::Governance(GovernanceEvent::PolicyActivated(_)))) => {
                    policy_before = true;
                }
                _ => {}
            }
            index += 1;
            if index >= size {
                break;
            }
        }
    }
    let Some(start) = start else {
        return Err(EvidenceError::NotFound(
            "no signed event falls in this period".into(),
        ));
    };
    Ok(PeriodSelection { start, to, intents })
}
