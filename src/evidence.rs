//! Compliance evidence: the bundle an auditor takes away (`eucora evidence export`,
//! `GET /api/v1/evidence`, `GET /api/v1/deployments/{id}/evidence`), the controls recomputed from
//! events, and the offline verifier (`eucora evidence verify`), which needs nothing but the bundle
//! and the verifier key. docs/evidence.md documents every file.
//!
//! A bundle is a `.tar.gz` of:
//! - `events.jsonl`: the events, exactly as stored, one JSON object a line, with leaf index and
//!   position, in leaf order;
//! - `checkpoint`: the signed checkpoint the proofs are against;
//! - `proof.json`: a range proof (a period: the events are exactly the leaves `[start, end)`) or an
//!   inclusion proof per event (one deployment), and optionally a consistency proof from an
//!   earlier checkpoint the auditor supplied;
//! - `controls.json`: every control's verdict per intent, with the leaf indices that prove it;
//! - `changes.csv`: the population, one row per intent with an event in the bundle;
//! - `VERIFY.md`: how to check it;
//! - `manifest.dsse.json`: a DSSE envelope over an in-toto Statement v1 whose subjects are every
//!   other file with its SHA-256, signed with the log's key.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};

use base64::Engine;
use chrono::{DateTime, Utc};
use eucora_projections::decode::{decode_stream, StreamEvent};
use eucora_projections::event::{ApprovalBasis, DeploymentEvent, Ring};
use eucora_projections::integrity::{leaf_hash, StoredRow};
use eucora_projections::merkle::{self, Hash};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::checkpoints::{open_checkpoint, Checkpoint, SigningKey};
use crate::projection::log::{with_tiles, LogView};
use crate::projection::{Event, ProjectionError, RunError, StreamReader};
use crate::store::Store;

/// The bundle's files, in the order they are written; the manifest comes last.
pub const FILES: [&str; 6] = [
    "events.jsonl",
    "checkpoint",
    "proof.json",
    "controls.json",
    "changes.csv",
    "VERIFY.md",
];
pub const MANIFEST: &str = "manifest.dsse.json";
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
const PREDICATE_TYPE: &str = "https://eucora.dev/evidence/v1";
/// Rows read per batch while exporting.
const BATCH: i64 = 5000;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64_hash(text: &str) -> Option<Hash> {
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

/// Why evidence could not be exported or did not verify.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("{0}")]
    Export(String),
    #[error("{0}")]
    NotFound(String),
    /// The intent exists, but none of its events is under a signed checkpoint yet.
    #[error("{0}")]
    NotYetSigned(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot write the bundle: {0}")]
    Io(#[from] std::io::Error),
}

// ---- proofs -------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofFile {
    pub tree_size: u64,
    /// A period: the events are exactly the leaves `[start, end)`.
    pub range: Option<RangeProof>,
    /// One deployment: an inclusion proof per event.
    pub inclusion: Vec<InclusionProof>,
    /// From an earlier checkpoint the auditor supplied, to `tree_size`.
    pub consistency: Option<ConsistencyProof>,
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

// ---- controls -----------------------------------------------------------------------------

/// A control's verdict for one intent, with the leaf indices that prove it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    pub control: String,
    /// `pass`, `fail` or `not_applicable`.
    pub verdict: String,
    pub leaves: Vec<u64>,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentControls {
    pub deployment_id: String,
    pub controls: Vec<Verdict>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlsFile {
    /// The population is complete: leaf indices contiguous, and each intent's stream versions
    /// contiguous within the bundle.
    pub population_complete: Verdict,
    pub intents: Vec<IntentControls>,
}

impl ControlsFile {
    /// How many verdicts are `fail`.
    pub fn failed(&self) -> u64 {
        self.intents
            .iter()
            .flat_map(|i| &i.controls)
            .chain(std::iter::once(&self.population_complete))
            .filter(|v| v.verdict == "fail")
            .count() as u64
    }
}

fn verdict(control: &str, v: &str, leaves: Vec<u64>, detail: impl Into<String>) -> Verdict {
    Verdict {
        control: control.into(),
        verdict: v.into(),
        leaves,
        detail: detail.into(),
    }
}

/// The retrospective-approval window of DOMAIN.md.
const RETRO_WINDOW_HOURS: i64 = 48;

/// Every control of docs/evidence.md for one intent, from its events in the bundle (in leaf
/// order). An intent created before the bundle's first event is judged on what the bundle holds,
/// and the controls that need its creation say so (export its deployment bundle for all of it).
pub fn intent_controls(id: &str, events: &[(u64, DeploymentEvent)]) -> IntentControls {
    let created = events.iter().find_map(|(i, e)| match e {
        DeploymentEvent::DeploymentCreated(c) => Some((*i, c)),
        _ => None,
    });
    let mut out = Vec::new();
    let Some((created_at, created)) = created else {
        for control in [
            "approval_before_deployment",
            "requester_not_approver",
            "cab_approval_where_required",
            "emergency_retro_review",
            "promotion_after_passed_gates",
            "rollback_validated_outside_lab",
            "completion_after_compliance",
        ] {
            out.push(verdict(
                control,
                "not_applicable",
                vec![],
                "the intent was created before this bundle's first event; export its deployment \
                 bundle to judge it",
            ));
        }
        return IntentControls {
            deployment_id: id.into(),
            controls: out,
        };
    };
    let requester = created.meta.actor.subject.clone();

    // Approval before the first deployment in each ring: the ring was cleared (an approval for
    // the start ring, a promotion into any later one) before its first rollout report.
    let mut cleared: BTreeMap<Ring, u64> = BTreeMap::new();
    let mut first_deployed: BTreeMap<Ring, u64> = BTreeMap::new();
    for (i, e) in events {
        match e {
            DeploymentEvent::DeploymentApproved(a)
                if a.basis != ApprovalBasis::CabRetrospective =>
            {
                cleared.entry(a.ring).or_insert(*i);
            }
            DeploymentEvent::RingPromoted(p) => {
                cleared.entry(p.to_ring).or_insert(*i);
            }
            DeploymentEvent::DeploymentDeployed(d) => {
                first_deployed.entry(d.ring).or_insert(*i);
            }
            _ => {}
        }
    }
    out.push(if first_deployed.is_empty() {
        verdict(
            "approval_before_deployment",
            "not_applicable",
            vec![],
            "never deployed",
        )
    } else {
        let unapproved: Vec<u64> = first_deployed
            .iter()
            .filter(|(ring, at)| cleared.get(ring).is_none_or(|c| c > at))
            .map(|(_, at)| *at)
            .collect();
        if unapproved.is_empty() {
            let mut leaves: Vec<u64> = cleared
                .values()
                .chain(first_deployed.values())
                .copied()
                .collect();
            leaves.sort_unstable();
            verdict(
                "approval_before_deployment",
                "pass",
                leaves,
                "every ring was cleared before its first deployment",
            )
        } else {
            verdict(
                "approval_before_deployment",
                "fail",
                unapproved,
                "deployed in a ring before it was cleared",
            )
        }
    });

    // Requester is not the approver, for every human approval or rejection.
    let human: Vec<(u64, &str)> = events
        .iter()
        .filter_map(|(i, e)| match e {
            DeploymentEvent::DeploymentApproved(a)
                if matches!(
                    a.basis,
                    ApprovalBasis::Cab | ApprovalBasis::CabRetrospective
                ) =>
            {
                Some((*i, a.approver.as_str()))
            }
            DeploymentEvent::DeploymentRejected(r) => Some((*i, r.meta.actor.subject.as_str())),
            _ => None,
        })
        .collect();
    out.push(if human.is_empty() {
        verdict(
            "requester_not_approver",
            "not_applicable",
            vec![],
            "no human decision",
        )
    } else {
        let own: Vec<u64> = human
            .iter()
            .filter(|(_, who)| *who == requester)
            .map(|(i, _)| *i)
            .collect();
        if own.is_empty() {
            verdict(
                "requester_not_approver",
                "pass",
                human.iter().map(|(i, _)| *i).collect(),
                format!("no decision by the requester {requester}"),
            )
        } else {
            verdict(
                "requester_not_approver",
                "fail",
                own,
                format!("the requester {requester} decided"),
            )
        }
    });

    // A human CAB approval where the risk is above 50 or the tooling privileged.
    let needs_cab =
        created.risk.score > crate::domain::risk::CAB_THRESHOLD || created.privileged_tooling;
    let cab: Vec<u64> = events
        .iter()
        .filter_map(|(i, e)| match e {
            DeploymentEvent::DeploymentApproved(a)
                if matches!(
                    a.basis,
                    ApprovalBasis::Cab | ApprovalBasis::CabRetrospective
                ) =>
            {
                Some(*i)
            }
            _ => None,
        })
        .collect();
    out.push(if !needs_cab {
        verdict(
            "cab_approval_where_required",
            "not_applicable",
            vec![created_at],
            format!("risk {} and not privileged tooling", created.risk.score),
        )
    } else if cab.is_empty() {
        verdict(
            "cab_approval_where_required",
            "fail",
            vec![created_at],
            format!(
                "risk {} or privileged tooling, and no CAB approval",
                created.risk.score
            ),
        )
    } else {
        let mut leaves = vec![created_at];
        leaves.extend(&cab);
        verdict(
            "cab_approval_where_required",
            "pass",
            leaves,
            "approved by the CAB",
        )
    });

    // Emergency changes reviewed afterwards, within 48 h of their first deployment.
    let provisional = events.iter().find_map(|(i, e)| match e {
        DeploymentEvent::DeploymentApproved(a)
            if a.basis == ApprovalBasis::EmergencyProvisional =>
        {
            Some(*i)
        }
        _ => None,
    });
    // The due time recorded on the first deployment (the policy's window then); streams written
    // before it was recorded fall back to DOMAIN.md's 48 hours.
    let first_deploy_at = events.iter().find_map(|(i, e)| match e {
        DeploymentEvent::DeploymentDeployed(d) => Some((
            *i,
            d.retro_approval_due_at
                .unwrap_or(d.meta.occurred_at + chrono::Duration::hours(RETRO_WINDOW_HOURS)),
        )),
        _ => None,
    });
    let review = events.iter().find_map(|(i, e)| match e {
        DeploymentEvent::DeploymentApproved(a) if a.basis == ApprovalBasis::CabRetrospective => {
            Some((*i, a.meta.occurred_at))
        }
        DeploymentEvent::DeploymentRejected(r) if r.retrospective => Some((*i, r.meta.occurred_at)),
        _ => None,
    });
    out.push(match (provisional, first_deploy_at, review) {
        (None, _, _) => verdict(
            "emergency_retro_review",
            "not_applicable",
            vec![],
            "not cleared as an emergency change",
        ),
        (Some(p), None, Some((r, _))) => verdict(
            "emergency_retro_review",
            "pass",
            vec![p, r],
            "reviewed before any deployment",
        ),
        (Some(p), None, None) => verdict(
            "emergency_retro_review",
            "not_applicable",
            vec![p],
            "never deployed, not yet reviewed",
        ),
        (Some(p), Some((d, _)), None) => verdict(
            "emergency_retro_review",
            "fail",
            vec![p, d],
            "missing: deployed without the CAB and never reviewed",
        ),
        (Some(p), Some((d, due)), Some((r, reviewed))) => {
            let due_text = due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            if reviewed <= due {
                verdict(
                    "emergency_retro_review",
                    "pass",
                    vec![p, d, r],
                    format!("reviewed by its due time {due_text}"),
                )
            } else {
                verdict(
                    "emergency_retro_review",
                    "fail",
                    vec![p, d, r],
                    format!("late: reviewed after its due time {due_text}"),
                )
            }
        }
    });

    // Every promotion right after an evaluation in which every gate passed.
    let promotions: Vec<(usize, u64)> = events
        .iter()
        .enumerate()
        .filter_map(|(n, (i, e))| matches!(e, DeploymentEvent::RingPromoted(_)).then_some((n, *i)))
        .collect();
    out.push(if promotions.is_empty() {
        verdict(
            "promotion_after_passed_gates",
            "not_applicable",
            vec![],
            "never promoted",
        )
    } else {
        let mut leaves = Vec::new();
        let mut bad = Vec::new();
        for (n, i) in &promotions {
            match n.checked_sub(1).and_then(|m| events.get(m)) {
                Some((g, DeploymentEvent::PromotionGateEvaluated(e)))
                    if e.passed && e.gates.iter().all(|g| g.passed) =>
                {
                    leaves.extend([*g, *i]);
                }
                _ => bad.push(*i),
            }
        }
        if bad.is_empty() {
            verdict(
                "promotion_after_passed_gates",
                "pass",
                leaves,
                "every promotion follows an evaluation with every gate passed",
            )
        } else {
            verdict(
                "promotion_after_passed_gates",
                "fail",
                bad,
                "a promotion without a passed evaluation right before it",
            )
        }
    });

    // Rollback validated before any deployment outside LAB.
    let outside: Vec<u64> = first_deployed
        .iter()
        .filter(|(r, _)| **r != Ring::Lab)
        .map(|(_, i)| *i)
        .collect();
    out.push(if outside.is_empty() {
        verdict(
            "rollback_validated_outside_lab",
            "not_applicable",
            vec![],
            "never deployed outside LAB",
        )
    } else if created.rollback_validated {
        let mut leaves = vec![created_at];
        leaves.extend(&outside);
        verdict(
            "rollback_validated_outside_lab",
            "pass",
            leaves,
            "rollback plan validated at creation",
        )
    } else {
        verdict(
            "rollback_validated_outside_lab",
            "fail",
            outside,
            "deployed outside LAB without a validated rollback plan",
        )
    });

    // Completion only after compliance in the target ring.
    let completed = events.iter().find_map(|(i, e)| match e {
        DeploymentEvent::DeploymentCompleted(c) => Some((*i, c.ring)),
        _ => None,
    });
    out.push(match completed {
        None => verdict(
            "completion_after_compliance",
            "not_applicable",
            vec![],
            "not completed",
        ),
        Some((c, ring)) => {
            let compliant = events.iter().find_map(|(i, e)| match e {
                DeploymentEvent::DeploymentDeployed(d)
                    if *i < c
                        && d.ring == ring
                        && ring == created.target_ring
                        && d.success_rate >= d.compliance_threshold =>
                {
                    Some(*i)
                }
                _ => None,
            });
            match compliant {
                Some(d) => verdict(
                    "completion_after_compliance",
                    "pass",
                    vec![d, c],
                    "a compliant report in the target ring came first",
                ),
                None => verdict(
                    "completion_after_compliance",
                    "fail",
                    vec![c],
                    "completed without a compliant report in the target ring",
                ),
            }
        }
    });
    IntentControls {
        deployment_id: id.into(),
        controls: out,
    }
}

/// Folds the bundle's events into controls and the population, in one pass of bounded state per
/// intent (its events' decoded forms are kept until the end: a bundle's intents, not the log's).
#[derive(Default)]
pub struct Population {
    intents: BTreeMap<String, Vec<(u64, DeploymentEvent)>>,
    /// Each intent's sequences seen, to check they are contiguous.
    sequences: BTreeMap<String, Vec<i64>>,
    indices: Vec<u64>,
    undecodable: Vec<u64>,
    /// The principals whose events (access changes) are in the population.
    principals: std::collections::BTreeSet<String>,
}

impl Population {
    /// One event of the bundle, decoded (`None`: it does not decode).
    fn add(&mut self, index: u64, aggregate_id: &str, sequence: i64, event: Option<StreamEvent>) {
        self.indices.push(index);
        match self.sequences.get_mut(aggregate_id) {
            Some(sequences) => sequences.push(sequence),
            None => {
                self.sequences.insert(aggregate_id.into(), vec![sequence]);
            }
        }
        match event {
            Some(StreamEvent::Access(_)) => {
                self.principals.insert(aggregate_id.into());
            }
            Some(StreamEvent::Deployment(e)) => match self.intents.get_mut(aggregate_id) {
                Some(events) => events.push((index, e)),
                None => {
                    self.intents.insert(aggregate_id.into(), vec![(index, e)]);
                }
            },
            None => self.undecodable.push(index),
        }
    }

    pub fn controls(&self) -> ControlsFile {
        let contiguous_leaves = self.indices.windows(2).all(|w| w[1] > w[0]);
        let gaps: Vec<String> = self
            .sequences
            .iter()
            .filter(|(_, s)| s.windows(2).any(|w| w[1] != w[0] + 1))
            .map(|(id, _)| id.clone())
            .collect();
        let population_complete = if !contiguous_leaves
            || !gaps.is_empty()
            || !self.undecodable.is_empty()
        {
            verdict(
                "population_complete",
                "fail",
                self.undecodable.clone(),
                format!(
                    "leaf indices in order: {contiguous_leaves}; intents with a gap in their stream: {}; events that do not decode: {}",
                    gaps.join(" "),
                    self.undecodable.len()
                ),
            )
        } else {
            verdict(
                "population_complete",
                "pass",
                vec![],
                format!(
                    "{} events of {} intents and {} principals, stream versions contiguous",
                    self.indices.len(),
                    self.intents.len(),
                    self.principals.len()
                ),
            )
        };
        ControlsFile {
            population_complete,
            intents: self
                .intents
                .iter()
                .map(|(id, events)| intent_controls(id, events))
                .collect(),
        }
    }

    /// `changes.csv`: one row per intent with any event in the bundle.
    pub fn changes_csv(&self) -> String {
        let mut out = String::from(
            "deployment_id,app_name,version,change_type,risk_score,cab_required,requester,approvals,\
             first_deployed_lab,first_deployed_canary,first_deployed_pilot,first_deployed_department,\
             first_deployed_global,emergency,retro_approved_at,outcome,leaves\n",
        );
        for (id, events) in &self.intents {
            let created = events.iter().find_map(|(_, e)| match e {
                DeploymentEvent::DeploymentCreated(c) => Some(c),
                _ => None,
            });
            let approvals: Vec<String> = events
                .iter()
                .filter_map(|(_, e)| match e {
                    DeploymentEvent::DeploymentApproved(a) => Some(format!(
                        "{}@{}",
                        a.approver,
                        a.meta
                            .occurred_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )),
                    _ => None,
                })
                .collect();
            let first_in = |ring: Ring| {
                events
                    .iter()
                    .find_map(|(_, e)| match e {
                        DeploymentEvent::DeploymentDeployed(d) if d.ring == ring => Some(
                            d.meta
                                .occurred_at
                                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        ),
                        _ => None,
                    })
                    .unwrap_or_default()
            };
            let emergency = events.iter().any(|(_, e)| {
                matches!(e, DeploymentEvent::DeploymentApproved(a) if a.basis == ApprovalBasis::EmergencyProvisional)
            });
            let retro = events
                .iter()
                .find_map(|(_, e)| match e {
                    DeploymentEvent::DeploymentApproved(a)
                        if a.basis == ApprovalBasis::CabRetrospective =>
                    {
                        Some(
                            a.meta
                                .occurred_at
                                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        )
                    }
                    _ => None,
                })
                .unwrap_or_default();
            let state =
                eucora_projections::intent::IntentState::replay(events.iter().map(|(_, e)| e));
            let leaves: Vec<String> = events.iter().map(|(i, _)| i.to_string()).collect();
            let fields = [
                id.clone(),
                created.map(|c| c.app_name.clone()).unwrap_or_default(),
                created.map(|c| c.version.clone()).unwrap_or_default(),
                created
                    .map(|c| format!("{:?}", c.change_type).to_lowercase())
                    .unwrap_or_default(),
                created
                    .map(|c| c.risk.score.to_string())
                    .unwrap_or_default(),
                created
                    .map(|c| c.risk.requires_cab.to_string())
                    .unwrap_or_default(),
                created
                    .map(|c| c.meta.actor.subject.clone())
                    .unwrap_or_default(),
                approvals.join(";"),
                first_in(Ring::Lab),
                first_in(Ring::Canary),
                first_in(Ring::Pilot),
                first_in(Ring::Department),
                first_in(Ring::Global),
                emergency.to_string(),
                retro,
                state
                    .map(|s| s.status.as_str().to_string())
                    .unwrap_or_else(|| "created before this bundle".into()),
                leaves.join(";"),
            ];
            let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
            out.push_str(&line.join(","));
            out.push('\n');
        }
        out
    }
}

/// RFC 4180: quoted when it holds a comma, a quote or a line break; quotes doubled.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

// ---- export ------------------------------------------------------------------------------

/// `events.jsonl` as the export writes it: lines are batched here, then hashed and
/// gzip-compressed on a thread of its own into an anonymous temporary file, so the reading of the
/// stream and the compression run on two cores. The compressed data becomes a gzip member of its
/// own in the bundle (docs/evidence.md).
struct EventsSpool {
    batch: Vec<u8>,
    sender: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    worker: Option<std::thread::JoinHandle<std::io::Result<CompressedEvents>>>,
}

/// What the compressing thread made of `events.jsonl`.
struct CompressedEvents {
    file: std::fs::File,
    digest: [u8; 32],
    len: u64,
}

/// Bytes of lines handed to the compressing thread at a time.
const SPOOL_BATCH: usize = 1 << 20;

impl EventsSpool {
    fn new() -> std::io::Result<EventsSpool> {
        let file = tempfile_in_tmp()?;
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let worker = std::thread::Builder::new()
            .name("eucora-evidence-gzip".into())
            .spawn(move || {
                let mut hasher = Sha256::new();
                let mut len = 0u64;
                let mut gz = flate2::write::GzEncoder::new(
                    std::io::BufWriter::new(file),
                    flate2::Compression::fast(),
                );
                for batch in receiver {
                    hasher.update(&batch);
                    len += batch.len() as u64;
                    gz.write_all(&batch)?;
                }
                let mut file = gz
                    .finish()?
                    .into_inner()
                    .map_err(std::io::IntoInnerError::into_error)?;
                file.rewind()?;
                Ok(CompressedEvents {
                    file,
                    digest: hasher.finalize().into(),
                    len,
                })
            })?;
        Ok(EventsSpool {
            batch: Vec::with_capacity(SPOOL_BATCH),
            sender: Some(sender),
            worker: Some(worker),
        })
    }

    fn line(&mut self, record: &EventRecord) -> Result<(), EvidenceError> {
        serde_json::to_writer(&mut self.batch, record)
            .map_err(|e| EvidenceError::Export(e.to_string()))?;
        self.batch.push(b'\n');
        if self.batch.len() >= SPOOL_BATCH {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<(), EvidenceError> {
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(SPOOL_BATCH));
        let gone = self
            .sender
            .as_ref()
            .is_none_or(|sender| sender.send(batch).is_err());
        if gone {
            // The thread stopped on an error: finishing says which.
            return Err(self.finish().err().unwrap_or_else(|| {
                EvidenceError::Export("the compressing thread stopped".into())
            }));
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<CompressedEvents, EvidenceError> {
        if !self.batch.is_empty() && self.sender.is_some() {
            let batch = std::mem::take(&mut self.batch);
            if let Some(sender) = &self.sender {
                let _ = sender.send(batch);
            }
        }
        self.sender = None;
        let worker = self
            .worker
            .take()
            .ok_or_else(|| EvidenceError::Export("the events were already written".into()))?;
        worker
            .join()
            .map_err(|_| EvidenceError::Export("the compressing thread panicked".into()))?
            .map_err(EvidenceError::Io)
    }
}

impl Drop for EventsSpool {
    fn drop(&mut self) {
        // An export that stopped early: let the thread end, and wait for it.
        self.sender = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// An anonymous temporary file (unlinked at once, so nothing is left behind).
pub fn tempfile_in_tmp() -> std::io::Result<std::fs::File> {
    let path = std::env::temp_dir().join(format!("eucora-evidence-{}", Uuid::new_v4().simple()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

fn tar_header(name: &str, len: u64) -> std::io::Result<tar::Header> {
    let mut header = tar::Header::new_gnu();
    header.set_path(name)?;
    header.set_size(len);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    Ok(header)
}

fn tar_file<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> std::io::Result<()> {
    tar.append(&tar_header(name, data.len() as u64)?, data)
}

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
    previous: Option<&str>,
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
    let tree = log.tree();
    if tree.size() < size {
        return Err(EvidenceError::Export(
            "the log is behind its latest checkpoint; try again in a moment".into(),
        ));
    }
    let previous = previous
        .map(|note| open_checkpoint(note, key.verifier_key()))
        .transpose()
        .map_err(|e| EvidenceError::Export(format!("the earlier checkpoint: {e}")))?;

    // The events: one pass over the stream, up to the checkpoint's size.
    let mut events = EventsSpool::new()?;
    let mut population = Population::default();
    let mut chosen: Vec<u64> = Vec::new();
    let (mut index, mut started, mut done) = (0u64, false, false);
    // Read and decoded ahead on other tasks, compressed on another thread: the stages overlap.
    let mut stream = StreamReader::from_start(store.clone(), size, BATCH);
    let wanted = match scope {
        Scope::Deployment(id) => Some(id.to_string()),
        Scope::Period { .. } => None,
    };
    while index < size && !done {
        let Some(batch) = stream.next().await else {
            break;
        };
        let batch = batch.map_err(|e| match e {
            RunError::Projection(ProjectionError::Store(e)) => EvidenceError::Store(e),
            e => EvidenceError::Export(e.to_string()),
        })?;
        for Event { row, event, .. } in batch.iter() {
            let stream = row.stream()?;
            let take = match scope {
                Scope::Deployment(_) => Some(&stream.aggregate_id) == wanted.as_ref(),
                Scope::Period { from, to } => {
                    let at = event.as_ref().map(StreamEvent::occurred_at).ok();
                    if !started && at.is_some_and(|t| t >= *from && t < *to) {
                        started = true;
                    }
                    if started && at.is_some_and(|t| t >= *to) {
                        done = true;
                    }
                    started && !done
                }
            };
            if take {
                let stored = row.row()?;
                let record = EventRecord {
                    index,
                    position: row.position,
                    aggregate_type: stored.aggregate_type.to_string(),
                    aggregate_id: stored.aggregate_id.to_string(),
                    sequence: stored.sequence,
                    event_type: row.event_type.clone(),
                    event_version: row.event_version.clone(),
                    payload: row.payload.clone(),
                    metadata: stored.metadata.to_string(),
                };
                chosen.push(index);
                population.add(
                    index,
                    &record.aggregate_id,
                    record.sequence,
                    event.as_ref().ok().cloned(),
                );
                events.line(&record)?;
            }
            index += 1;
            if done || index >= size {
                break;
            }
        }
    }
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

    // The proofs, against the checkpoint.
    let proof_error =
        |e: crate::projection::log::LogProofError| EvidenceError::Export(e.to_string());
    let proof = ProofFile {
        tree_size: size,
        range: match scope {
            Scope::Period { .. } => {
                let (start, end) = (chosen[0], chosen[chosen.len() - 1] + 1);
                let hashes = with_tiles(store, &tree, |r| merkle::range_proof(r, start, end, size))
                    .await
                    .map_err(proof_error)?;
                Some(RangeProof {
                    start,
                    end,
                    hashes: hashes.iter().map(|h| b64(h)).collect(),
                })
            }
            Scope::Deployment(_) => None,
        },
        inclusion: match scope {
            Scope::Deployment(_) => {
                let mut all = Vec::new();
                for i in &chosen {
                    let hashes = with_tiles(store, &tree, |r| merkle::inclusion_proof(r, *i, size))
                        .await
                        .map_err(proof_error)?;
                    all.push(InclusionProof {
                        index: *i,
                        hashes: hashes.iter().map(|h| b64(h)).collect(),
                    });
                }
                all
            }
            Scope::Period { .. } => Vec::new(),
        },
        consistency: match &previous {
            None => None,
            Some(p) if p.size > size => {
                return Err(EvidenceError::Export(format!(
                    "the earlier checkpoint (size {}) is past the latest one (size {size})",
                    p.size
                )))
            }
            Some(p) => {
                let hashes = if p.size == 0 {
                    Vec::new()
                } else {
                    with_tiles(store, &tree, |r| merkle::consistency_proof(r, p.size, size))
                        .await
                        .map_err(proof_error)?
                };
                Some(ConsistencyProof {
                    from: p.size,
                    hashes: hashes.iter().map(|h| b64(h)).collect(),
                })
            }
        },
    };
    let controls = population.controls();
    let failed = controls.failed();
    let mut events = events.finish()?;
    let files: BTreeMap<&str, Vec<u8>> = [
        ("checkpoint", latest.note.clone().into_bytes()),
        ("proof.json", pretty(&proof)?),
        ("controls.json", pretty(&controls)?),
        ("changes.csv", population.changes_csv().into_bytes()),
        ("VERIFY.md", verify_md(key.verifier_key()).into_bytes()),
    ]
    .into_iter()
    .collect();

    // The manifest: every file's SHA-256, signed.
    let mut subjects =
        vec![json!({"name": "events.jsonl", "digest": {"sha256": hex::encode(events.digest)}})];
    for name in &FILES[1..] {
        subjects.push(
            json!({"name": name, "digest": {"sha256": hex::encode(Sha256::digest(&files[name]))}}),
        );
    }
    let statement = json!({
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "scope": match scope {
                Scope::Period { from, to } => json!({"from": from, "to": to}),
                Scope::Deployment(id) => json!({"deployment_id": id}),
            },
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
    let envelope = json!({
        "payloadType": PAYLOAD_TYPE,
        "payload": b64(&payload),
        "signatures": [{"keyid": key.verifier_key(), "sig": b64(&signature)}],
    });

    // Three gzip members, one after the other (RFC 1952 2.2; every gunzip reads them as one
    // stream): the tar header of events.jsonl, the events compressed as they were read, then the
    // padding, the other files and the end of the archive.
    let mut out = out;
    let mut head = flate2::write::GzEncoder::new(&mut out, flate2::Compression::fast());
    head.write_all(tar_header("events.jsonl", events.len)?.as_bytes())?;
    head.finish()?;
    std::io::copy(&mut events.file, &mut out)?;
    let mut tail = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    tail.write_all(&[0u8; 512][..((512 - events.len % 512) % 512) as usize])?;
    let mut tar = tar::Builder::new(tail);
    for name in &FILES[1..] {
        tar_file(&mut tar, name, &files[name])?;
    }
    tar_file(&mut tar, MANIFEST, &pretty(&envelope)?)?;
    tar.into_inner()?.finish()?.flush()?;
    Ok(ExportSummary {
        events: chosen.len() as u64,
        intents: controls.intents.len() as u64,
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

// ---- verify --------------------------------------------------------------------------------

/// What a verified bundle holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub events: u64,
    pub intents: u64,
    pub tree_size: u64,
    pub failed_controls: u64,
}

/// Why a bundle did not verify: the first failure, in our words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn refuse(what: impl Into<String>) -> Refused {
    Refused(what.into())
}

/// Verifies a bundle offline, with nothing but the bundle, the verifier key, and optionally an
/// earlier checkpoint the auditor kept. Reads the archive once, on two cores: one thread gunzips
/// the archive and hashes the files, this one parses the events, hashes their leaves and folds
/// them into the population. Memory holds one hash per event and the bundle's decoded events.
pub fn verify(
    bundle: impl Read + Send,
    verifier_key: &str,
    previous: Option<&str>,
) -> Result<Verified, Refused> {
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
    let ParsedEvents {
        leaves,
        indices,
        population,
    } = events;

    // 1. The manifest: signed by the key, naming every file with its hash, and nothing else.
    let manifest = files
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
                    signed_note::Verifier::verify(&verifier, &pae(PAYLOAD_TYPE, &payload), &sig)
                })
        });
    if !signed {
        return Err(refuse(
            "the manifest's signature does not verify with this key",
        ));
    }
    let statement: Value = serde_json::from_slice(&payload)
        .map_err(|e| refuse(format!("the manifest's statement is not JSON: {e}")))?;
    if statement["_type"] != STATEMENT_TYPE || statement["predicateType"] != PREDICATE_TYPE {
        return Err(refuse(
            "the manifest is not an in-toto Statement v1 of EUCORA evidence",
        ));
    }
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
    for name in FILES {
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
        .find(|n| n.as_str() != MANIFEST && !FILES.contains(&n.as_str()))
    {
        return Err(refuse(format!(
            "{extra} is in the bundle but not in the manifest"
        )));
    }
    if subjects.len() != FILES.len() {
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
    match (&proof.range, proof.inclusion.is_empty()) {
        (Some(range), true) => {
            // Contiguity, named by what broke it.
            let order = &indices;
            let mut sorted = order.clone();
            sorted.sort_unstable();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return Err(refuse(format!(
                    "leaf {} appears twice: an event was inserted",
                    w[0]
                )));
            }
            if &sorted != order {
                return Err(refuse(
                    "the events are not in leaf order: they were reordered",
                ));
            }
            if let Some(missing) = (range.start..)
                .zip(&sorted)
                .find(|(i, r)| i != *r)
                .map(|(i, _)| i)
            {
                return Err(refuse(format!(
                    "leaf {missing} is missing: an event was dropped"
                )));
            }
            let held_to = range.start + sorted.len() as u64;
            if held_to != range.end {
                return Err(refuse(format!(
                    "the events stop at leaf {held_to}, before the end of the range proved ({}): the bundle was truncated",
                    range.end
                )));
            }
            merkle::verify_range(range.start, &leaves, checkpoint.size, &hashes(&range.hashes)?, &checkpoint.root).map_err(|e| {
                refuse(format!("the events are not the checkpoint's leaves {} to {}: {e} (an event was edited, or the bundle mixes two logs)", range.start, range.end))
            })?;
        }
        (None, false) => {
            if proof.inclusion.len() != indices.len() {
                return Err(refuse("proof.json has not one inclusion proof per event"));
            }
            for ((index, leaf), inclusion) in indices.iter().zip(&leaves).zip(&proof.inclusion) {
                if inclusion.index != *index {
                    return Err(refuse(format!(
                        "the inclusion proofs are not for the events' leaves (leaf {index})"
                    )));
                }
                merkle::verify_inclusion(*index, checkpoint.size, leaf, &hashes(&inclusion.hashes)?, &checkpoint.root)
                    .map_err(|e| refuse(format!("the event at leaf {index} is not in the checkpoint's tree: {e} (it was edited, or moved)")))?;
            }
            if indices.windows(2).any(|w| w[1] <= w[0]) {
                return Err(refuse("the events are not in leaf order"));
            }
        }
        _ => {
            return Err(refuse(
                "proof.json holds neither one range proof nor inclusion proofs",
            ))
        }
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
    let controls = population.controls();
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
    let failed = controls.failed();
    Ok(Verified {
        events: indices.len() as u64,
        intents: controls.intents.len() as u64,
        tree_size: checkpoint.size,
        failed_controls: failed,
    })
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
    use eucora_projections::event::{ApprovalBasis as B, Gate, Ring, Status};
    use eucora_projections::fixtures::Script;

    /// The verdict of `control` over literal events (numbered as leaves 0, 1, 2, …).
    fn judged(events: Vec<DeploymentEvent>, control: &str) -> (String, Vec<u64>) {
        let numbered: Vec<(u64, DeploymentEvent)> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| (i as u64, e))
            .collect();
        let v = intent_controls("x", &numbered)
            .controls
            .into_iter()
            .find(|v| v.control == control)
            .unwrap();
        (v.verdict, v.leaves)
    }

    /// CAB-approved, deployed compliant in LAB, promoted, compliant and completed in CANARY.
    fn clean(x: &mut Script) -> Vec<DeploymentEvent> {
        vec![
            x.created("app", true),
            x.approved(1.0, B::Cab, "carol"),
            x.deployed(2.0, Ring::Lab, 10, true),
            x.evaluated(30.0, Ring::Lab, Ring::Canary, &[(Gate::SuccessRate, true)]),
            x.promoted(30.0, Ring::Lab, Ring::Canary),
            x.deployed(31.0, Ring::Canary, 10, true),
            x.completed(31.0, Ring::Canary),
        ]
    }

    #[test]
    fn a_clean_rollout_passes_every_control_that_applies() {
        let events = clean(&mut Script::new(1));
        for control in [
            "approval_before_deployment",
            "requester_not_approver",
            "cab_approval_where_required",
            "promotion_after_passed_gates",
            "rollback_validated_outside_lab",
            "completion_after_compliance",
        ] {
            assert_eq!(judged(events.clone(), control).0, "pass", "{control}");
        }
        assert_eq!(judged(events, "emergency_retro_review").0, "not_applicable");
        assert_eq!(
            judged(clean(&mut Script::new(1)), "approval_before_deployment").1,
            vec![1, 2, 4, 5],
            "the clearances and first deployments that prove it"
        );
    }

    #[test]
    fn a_deployment_before_its_ring_was_cleared_fails() {
        let mut x = Script::new(1);
        let events = vec![
            x.created("app", true),
            x.deployed(1.0, Ring::Lab, 10, true),
            x.approved(2.0, B::Cab, "carol"),
        ];
        assert_eq!(
            judged(events, "approval_before_deployment"),
            ("fail".into(), vec![1])
        );
        let mut x = Script::new(1);
        assert_eq!(
            judged(vec![x.created("app", true)], "approval_before_deployment").0,
            "not_applicable"
        );
    }

    #[test]
    fn the_requester_approving_fails_and_a_policy_approval_is_no_human_decision() {
        let mut x = Script::new(1);
        let events = vec![x.created("app", true), x.approved(1.0, B::Cab, "alice")];
        assert_eq!(
            judged(events, "requester_not_approver"),
            ("fail".into(), vec![1])
        );
        let mut x = Script::new(1);
        let events = vec![
            x.created("app", false),
            x.approved(0.0, B::Policy, "policy:risk_model_v1.0"),
        ];
        assert_eq!(judged(events, "requester_not_approver").0, "not_applicable");
    }

    #[test]
    fn a_risky_change_without_a_cab_approval_fails_and_a_low_risk_one_needs_none() {
        let mut x = Script::new(1);
        let events = vec![
            x.created("app", true),
            x.approved(0.0, B::EmergencyProvisional, "policy:emergency_change"),
            x.deployed(1.0, Ring::Lab, 10, true),
        ];
        assert_eq!(
            judged(events, "cab_approval_where_required"),
            ("fail".into(), vec![0])
        );
        let mut x = Script::new(1);
        let events = vec![
            x.created("app", false),
            x.approved(0.0, B::Policy, "policy:risk_model_v1.0"),
        ];
        assert_eq!(
            judged(events, "cab_approval_where_required").0,
            "not_applicable"
        );
    }

    #[test]
    fn emergency_reviews_pass_on_time_and_fail_late_or_missing() {
        let emergency = |x: &mut Script| {
            vec![
                x.created("app", true),
                x.approved(0.0, B::EmergencyProvisional, "policy:emergency_change"),
                x.deployed(1.0, Ring::Lab, 10, true),
            ]
        };
        let mut x = Script::new(1);
        let mut on_time = emergency(&mut x);
        on_time.push(x.approved(48.0, B::CabRetrospective, "carol"));
        assert_eq!(
            judged(on_time, "emergency_retro_review"),
            ("pass".into(), vec![1, 2, 3])
        );
        let mut x = Script::new(1);
        let mut late = emergency(&mut x);
        late.push(x.approved(49.5, B::CabRetrospective, "carol"));
        assert_eq!(judged(late, "emergency_retro_review").0, "fail");
        let mut x = Script::new(1);
        let mut rejected = emergency(&mut x);
        rejected.push(x.retro_rejected(10.0));
        assert_eq!(judged(rejected, "emergency_retro_review").0, "pass");
        // The due time recorded on the first deployment is the one that counts (here a
        // policy of 24 h: 30 h is late).
        let mut x = Script::new(1);
        let mut short = vec![
            x.created("app", true),
            x.approved(0.0, B::EmergencyProvisional, "policy:emergency_change"),
            x.emergency_deployed(1.0, 24.0),
        ];
        short.push(x.approved(31.0, B::CabRetrospective, "carol"));
        let (verdict, _) = judged(short, "emergency_retro_review");
        assert_eq!(verdict, "fail");
        let mut x = Script::new(1);
        let missing = emergency(&mut x);
        assert_eq!(
            judged(missing, "emergency_retro_review"),
            ("fail".into(), vec![1, 2])
        );
    }

    #[test]
    fn a_promotion_without_a_passed_evaluation_right_before_it_fails() {
        let mut x = Script::new(1);
        let events = vec![
            x.created("app", false),
            x.approved(0.0, B::Policy, "policy:risk_model_v1.0"),
            x.deployed(1.0, Ring::Lab, 10, true),
            x.evaluated(30.0, Ring::Lab, Ring::Canary, &[(Gate::BakeTime, false)]),
            x.promoted(30.0, Ring::Lab, Ring::Canary),
        ];
        assert_eq!(
            judged(events, "promotion_after_passed_gates"),
            ("fail".into(), vec![4])
        );
    }

    #[test]
    fn a_deployment_outside_lab_without_a_validated_rollback_plan_fails() {
        let mut x = Script::new(1);
        let mut events = clean(&mut x);
        if let DeploymentEvent::DeploymentCreated(c) = &mut events[0] {
            c.rollback_validated = false;
        }
        assert_eq!(
            judged(events, "rollback_validated_outside_lab"),
            ("fail".into(), vec![5])
        );
        let mut x = Script::new(1);
        let lab_only = vec![
            x.created("app", false),
            x.approved(0.0, B::Policy, "policy:risk_model_v1.0"),
            x.deployed(1.0, Ring::Lab, 10, true),
        ];
        assert_eq!(
            judged(lab_only, "rollback_validated_outside_lab").0,
            "not_applicable"
        );
    }

    #[test]
    fn completion_without_a_compliant_report_in_the_target_ring_fails() {
        let mut x = Script::new(1);
        let events = vec![
            x.created("app", false),
            x.approved(0.0, B::Policy, "policy:risk_model_v1.0"),
            x.deployed(1.0, Ring::Lab, 10, true),
            x.completed(1.0, Ring::Canary),
        ];
        assert_eq!(
            judged(events, "completion_after_compliance"),
            ("fail".into(), vec![3])
        );
        let mut x = Script::new(1);
        let rolled = vec![
            x.created("app", false),
            x.rolled_back(1.0, Ring::Lab, Status::Approved),
        ];
        assert_eq!(
            judged(rolled, "completion_after_compliance").0,
            "not_applicable"
        );
    }

    #[test]
    fn an_intent_created_before_the_bundle_is_judged_not_applicable_with_the_reason() {
        let mut x = Script::new(1);
        let mut events = clean(&mut x);
        events.remove(0);
        let numbered: Vec<(u64, DeploymentEvent)> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| (i as u64 + 10, e))
            .collect();
        let judged = intent_controls("x", &numbered);
        assert!(judged
            .controls
            .iter()
            .all(|v| v.verdict == "not_applicable" && v.detail.contains("created before")));
    }

    #[test]
    fn csv_fields_with_commas_or_quotes_are_quoted() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
