//! The one decode point for stored events: (event type, event version, payload) to the domain
//! event, upcasting an older version of a type to the one this build reads.
//!
//! Every reader goes through here: the projection runner, one intent's history, `as_of`, the audit
//! stream, and the write side's load path (through [`upcast_payload`]). Stored bytes are never
//! rewritten, so integrity hashes over them stay valid across schema changes.
//!
//! To change an event's schema: bump its number in [`DeploymentEvent::version`] and
//! [`current_version`], and add the step from the old version to [`upcast_step`]. Old events
//! then read as the new version everywhere.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::access::AccessEvent;
use crate::event::DeploymentEvent;
use crate::governance::GovernanceEvent;

/// Why a stored event cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// No event type of that name exists.
    UnknownType(String),
    /// The version is not a number from 1 to the type's current version.
    UnknownVersion { event_type: String, version: String },
    /// The payload is not that version of that type.
    Malformed { event_type: String, reason: String },
    /// The payload holds another event type than the row says.
    TypeMismatch { event_type: String, payload: String },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::UnknownType(t) => write!(f, "unknown event type {t:?}"),
            DecodeError::UnknownVersion {
                event_type,
                version,
            } => write!(f, "{event_type} has no version {version:?}"),
            DecodeError::Malformed { event_type, reason } => {
                write!(f, "not a valid {event_type}: {reason}")
            }
            DecodeError::TypeMismatch {
                event_type,
                payload,
            } => write!(
                f,
                "the row says {event_type} but the payload is a {payload}"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The kind of stream an event type is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deployment,
    Access,
    Governance,
}

/// The kind of stream of `event_type` and the version of it this build writes and reads, or
/// `None` for an unknown type: one match, as every decode looks its type up once.
fn known(event_type: &str) -> Option<(Kind, u32)> {
    use Kind::*;
    Some(match event_type {
        "DeploymentCreated" => (Deployment, 5),
        "DeploymentApproved" => (Deployment, 1),
        "DeploymentRejected" => (Deployment, 2),
        "DeploymentDeployed" => (Deployment, 4),
        "PromotionGateEvaluated" => (Deployment, 2),
        "RingPromoted" => (Deployment, 1),
        "DeploymentCompleted" => (Deployment, 1),
        "DeploymentRolledBack" => (Deployment, 1),
        "RetroApprovalOverdue" => (Deployment, 1),
        "ConnectorDispatched" => (Deployment, 1),
        "ConnectorDispatchFailed" => (Deployment, 1),
        "DeploymentDriftDetected" => (Deployment, 1),
        "ConnectorStatusRejected" => (Deployment, 1),
        "PrincipalCreated" => (Access, 2),
        "PrincipalTokenRotated" | "PrincipalRevoked" => (Access, 1),
        "PolicyActivated" | "CommandRefused" => (Governance, 1),
        _ => return None,
    })
}

/// The version of `event_type` this build writes and reads, or `None` for an unknown type.
/// Agrees with [`DeploymentEvent::version`] (a test holds them together).
pub fn current_version(event_type: &str) -> Option<u32> {
    known(event_type).map(|(_, version)| version)
}

/// The stored version string as a number this build can read for `event_type`, with the type's
/// current version.
fn readable_version(event_type: &str, event_version: &str) -> Result<(u32, u32), DecodeError> {
    let current =
        current_version(event_type).ok_or_else(|| DecodeError::UnknownType(event_type.into()))?;
    Ok((version_of(event_type, event_version, current)?, current))
}

/// The stored version string as a number from 1 to `current`.
fn version_of(event_type: &str, event_version: &str, current: u32) -> Result<u32, DecodeError> {
    event_version
        .parse::<u32>()
        .ok()
        .filter(|v| (1..=current).contains(v))
        .ok_or_else(|| DecodeError::UnknownVersion {
            event_type: event_type.into(),
            version: event_version.into(),
        })
}

/// An event of the global stream: a deployment intent's, or a principal's.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StreamEvent {
    Deployment(DeploymentEvent),
    Access(AccessEvent),
    /// The policy stream's, or a refused command's.
    Governance(GovernanceEvent),
}

impl StreamEvent {
    pub fn type_name(&self) -> &'static str {
        match self {
            StreamEvent::Deployment(e) => e.type_name(),
            StreamEvent::Access(e) => e.type_name(),
            StreamEvent::Governance(e) => e.type_name(),
        }
    }

    /// When it happened, by the clock of the command that made it.
    pub fn occurred_at(&self) -> chrono::DateTime<chrono::Utc> {
        match self {
            StreamEvent::Deployment(e) => e.meta().occurred_at,
            StreamEvent::Access(e) => e.meta().occurred_at,
            StreamEvent::Governance(e) => e.meta().occurred_at,
        }
    }

    /// The deployment intent's event, if it is one.
    pub fn deployment(&self) -> Option<&DeploymentEvent> {
        match self {
            StreamEvent::Deployment(e) => Some(e),
            StreamEvent::Access(_) | StreamEvent::Governance(_) => None,
        }
    }
}

/// Whether `event_type` names an event of a principal's stream.
pub fn is_access_type(event_type: &str) -> bool {
    matches!(known(event_type), Some((Kind::Access, _)))
}

/// Decodes one stored event of any kind of stream.
pub fn decode_stream(
    event_type: &str,
    event_version: &str,
    payload: &str,
) -> Result<StreamEvent, DecodeError> {
    let found = known(event_type);
    match found {
        Some((Kind::Access, current)) => {
            let event: AccessEvent = decode_as(event_type, event_version, current, payload)?;
            check_type(event_type, event.type_name())?;
            Ok(StreamEvent::Access(event))
        }
        Some((Kind::Governance, current)) => {
            let event: GovernanceEvent = decode_as(event_type, event_version, current, payload)?;
            check_type(event_type, event.type_name())?;
            Ok(StreamEvent::Governance(event))
        }
        _ => deployment(event_type, event_version, found, payload).map(StreamEvent::Deployment),
    }
}

/// The stored payload of a type read as `T` (`current` its type's version in this build), upcast
/// first when older.
fn decode_as<T: serde::de::DeserializeOwned>(
    event_type: &str,
    event_version: &str,
    current: u32,
    payload: &str,
) -> Result<T, DecodeError> {
    let version = version_of(event_type, event_version, current)?;
    let malformed = |e: serde_json::Error| DecodeError::Malformed {
        event_type: event_type.into(),
        reason: e.to_string(),
    };
    if version == current {
        serde_json::from_str(payload).map_err(malformed)
    } else {
        let value = serde_json::from_str(payload).map_err(malformed)?;
        let (value, _) = upcast_payload(event_type, event_version, value)?;
        serde_json::from_value(value).map_err(malformed)
    }
}

/// The payload must hold the type the row names.
fn check_type(event_type: &str, payload: &str) -> Result<(), DecodeError> {
    if payload != event_type {
        return Err(DecodeError::TypeMismatch {
            event_type: event_type.into(),
            payload: payload.into(),
        });
    }
    Ok(())
}

/// Decodes one stored event of a deployment intent's stream. The current version is parsed
/// straight from the stored text; an older one is upcast first. A principal's event is not one.
pub fn decode(
    event_type: &str,
    event_version: &str,
    payload: &str,
) -> Result<DeploymentEvent, DecodeError> {
    deployment(event_type, event_version, known(event_type), payload)
}

/// [`decode`], the type already looked up (`found`, as [`known`] said).
fn deployment(
    event_type: &str,
    event_version: &str,
    found: Option<(Kind, u32)>,
    payload: &str,
) -> Result<DeploymentEvent, DecodeError> {
    let current = match found {
        Some((Kind::Deployment, current)) => current,
        Some((Kind::Access | Kind::Governance, _)) => {
            return Err(DecodeError::Malformed {
                event_type: event_type.into(),
                reason: "not an event of a deployment intent's stream".into(),
            })
        }
        None => return Err(DecodeError::UnknownType(event_type.into())),
    };
    let event: DeploymentEvent = decode_as(event_type, event_version, current, payload)?;
    check_type(event_type, event.type_name())?;
    Ok(event)
}

/// Brings a stored payload (as JSON) up to its type's current version; returns it with that
/// version. A payload already current is returned as it is.
pub fn upcast_payload(
    event_type: &str,
    event_version: &str,
    mut payload: Value,
) -> Result<(Value, u32), DecodeError> {
    let (mut version, current) = readable_version(event_type, event_version)?;
    while version < current {
        let body = payload
            .get_mut(event_type)
            .and_then(Value::as_object_mut)
            .ok_or_else(|| DecodeError::Malformed {
                event_type: event_type.into(),
                reason: format!("version {version} payload is not an object under {event_type}"),
            })?;
        upcast_step(event_type, version, body).map_err(|reason| DecodeError::Malformed {
            event_type: event_type.into(),
            reason,
        })?;
        version += 1;
        if let Some(meta) = body.get_mut("meta").and_then(Value::as_object_mut) {
            meta.insert("schema_version".into(), Value::from(version));
        }
    }
    Ok((payload, version))
}

/// Turns version `from` of `event_type` into version `from + 1`, in place.
fn upcast_step(event_type: &str, from: u32, body: &mut Map<String, Value>) -> Result<(), String> {
    match (event_type, from) {
        // Version 1 rejections were all decisions on intents awaiting CAB.
        ("DeploymentRejected", 1) => {
            body.insert("retrospective".into(), Value::Bool(false));
            Ok(())
        }
        // Version 1 requests did not say when their change was committed.
        ("DeploymentCreated", 1) => {
            body.insert("source_committed_at".into(), Value::Null);
            Ok(())
        }
        // Version 2 requests carried no external change reference, and their risk assessment
        // did not say why the CAB was required (readers derive it from the recorded label).
        ("DeploymentCreated", 2) => {
            body.insert("change_ref".into(), Value::Null);
            let risk = body
                .get_mut("risk")
                .and_then(Value::as_object_mut)
                .ok_or("version 2 payload has no risk object")?;
            risk.insert("cab_required_reason".into(), Value::Null);
            Ok(())
        }
        // Version 3 requests did not record the policy they were assessed under.
        ("DeploymentCreated", 3) => {
            let risk = body
                .get_mut("risk")
                .and_then(Value::as_object_mut)
                .ok_or("version 3 payload has no risk object")?;
            risk.insert("policy_digest".into(), Value::Null);
            Ok(())
        }
        // Version 4 requests recorded neither an artifact size nor cost rates: they have no cost.
        ("DeploymentCreated", 4) => {
            body.insert("artifact_bytes".into(), Value::Null);
            body.insert("cost_rates".into(), Value::Null);
            Ok(())
        }
        // Version 1 gate evaluations did not record the policy their thresholds came from.
        ("PromotionGateEvaluated", 1) => {
            body.insert("policy_digest".into(), Value::Null);
            Ok(())
        }
        // Version 1 grants were never of a role conflicting with one the subject held.
        ("PrincipalCreated", 1) => {
            body.insert("conflict_allowed".into(), Value::Null);
            Ok(())
        }
        // Version 1 reports carried no retrospective-approval deadline.
        ("DeploymentDeployed", 1) => {
            body.insert("retro_approval_due_at".into(), Value::Null);
            Ok(())
        }
        // Version 2 reports were never pushed by a connector with a sequence.
        ("DeploymentDeployed", 2) => {
            body.insert("sequence".into(), Value::Null);
            Ok(())
        }
        // Version 3 reports recorded no compliance deadline.
        ("DeploymentDeployed", 3) => {
            body.insert("compliance_due_at".into(), Value::Null);
            Ok(())
        }
        _ => Err(format!("no upcaster from version {from}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ApprovalBasis, Gate, Ring, Status};
    use crate::fixtures::Script;

    fn stored(event: &DeploymentEvent) -> String {
        serde_json::to_string(event).unwrap()
    }

    #[test]
    fn every_event_type_decodes_at_its_current_version() {
        let mut s = Script::new(1);
        let events = [
            s.created("7-Zip", true),
            s.approved(1.0, ApprovalBasis::Cab, "carol"),
            s.rejected(1.0),
            s.deployed(2.0, Ring::Lab, 10, true),
            s.promoted(3.0, Ring::Lab, Ring::Canary),
            s.completed(4.0, Ring::Canary),
            s.rolled_back(5.0, Ring::Canary, Status::Deployed),
        ];
        for mut e in events {
            // Written as this build writes it: the envelope carries the type's version.
            e.meta_mut().schema_version = e.version();
            let e = &e;
            assert_eq!(current_version(e.type_name()), Some(e.version()));
            let back = decode(e.type_name(), &e.version().to_string(), &stored(e)).unwrap();
            assert_eq!(&back, e);
        }
    }

    /// A version-1 rejection, as stored before `retrospective` existed.
    fn rejected_v1() -> (DeploymentEvent, String) {
        let mut s = Script::new(1);
        let mut event = s.rejected(1.0);
        event.meta_mut().schema_version = 1;
        let mut json: Value = serde_json::to_value(&event).unwrap();
        json["DeploymentRejected"]
            .as_object_mut()
            .unwrap()
            .remove("retrospective");
        (event, json.to_string())
    }

    #[test]
    fn a_version_1_rejection_reads_as_version_2_not_retrospective() {
        let (original, payload) = rejected_v1();
        let event = decode("DeploymentRejected", "1", &payload).unwrap();
        let DeploymentEvent::DeploymentRejected(r) = &event else {
            panic!("{event:?}")
        };
        assert!(!r.retrospective);
        assert_eq!(r.meta.schema_version, 2);
        let DeploymentEvent::DeploymentRejected(before) = &original else {
            unreachable!()
        };
        assert_eq!(
            (&r.reason, r.ring, &r.meta.event_id),
            (&before.reason, before.ring, &before.meta.event_id)
        );
        // Read as the current version, the old payload lacks the field and is refused.
        assert!(matches!(
            decode("DeploymentRejected", "2", &payload),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn a_version_1_report_reads_as_version_4_without_a_retro_deadline_sequence_or_due_time() {
        let mut s = Script::new(1);
        let mut event = s.deployed(1.0, Ring::Lab, 9, false);
        event.meta_mut().schema_version = 1;
        let mut json: Value = serde_json::to_value(&event).unwrap();
        json["DeploymentDeployed"]
            .as_object_mut()
            .unwrap()
            .remove("retro_approval_due_at");
        json["DeploymentDeployed"]
            .as_object_mut()
            .unwrap()
            .remove("sequence");
        json["DeploymentDeployed"]
            .as_object_mut()
            .unwrap()
            .remove("compliance_due_at");
        let read = decode("DeploymentDeployed", "1", &json.to_string()).unwrap();
        let DeploymentEvent::DeploymentDeployed(d) = &read else {
            panic!("{read:?}")
        };
        assert_eq!((d.retro_approval_due_at, d.sequence), (None, None));
        assert_eq!(d.compliance_due_at, None);
        assert_eq!(d.meta.schema_version, 4);
        assert_eq!((d.succeeded, d.failed), (9, 1));
    }

    /// A request as version `version` stored it: without what later versions added.
    fn older_request(version: u32) -> Value {
        let mut s = Script::new(1);
        let mut event = s.created("7-Zip", true);
        event.meta_mut().schema_version = version;
        let mut json: Value = serde_json::to_value(&event).unwrap();
        let body = json["DeploymentCreated"].as_object_mut().unwrap();
        body.remove("artifact_bytes");
        body.remove("cost_rates");
        if version == 4 {
            return json;
        }
        let risk = body["risk"].as_object_mut().unwrap();
        risk.remove("policy_digest");
        if version == 3 {
            return json;
        }
        risk.remove("cab_required_reason");
        body.remove("change_ref");
        if version == 1 {
            body.remove("source_committed_at");
        }
        json
    }

    #[test]
    fn a_version_1_request_reads_as_the_current_version_without_a_commit_time() {
        let json = older_request(1);
        let read = decode("DeploymentCreated", "1", &json.to_string()).unwrap();
        let DeploymentEvent::DeploymentCreated(c) = &read else {
            panic!("{read:?}")
        };
        assert_eq!(c.source_committed_at, None);
        assert_eq!(c.change_ref, None);
        assert_eq!(c.meta.schema_version, 5);
        assert_eq!(c.app_name, "7-Zip");
    }

    #[test]
    fn a_version_2_request_reads_as_the_current_version_without_a_change_ref_or_cab_reason() {
        let json = older_request(2);
        let read = decode("DeploymentCreated", "2", &json.to_string()).unwrap();
        let DeploymentEvent::DeploymentCreated(c) = &read else {
            panic!("{read:?}")
        };
        assert_eq!((c.change_ref.as_deref(), c.meta.schema_version), (None, 5));
        assert_eq!(c.risk.cab_required_reason, None);
        assert!(c.risk.requires_cab, "what version 2 recorded is kept");
        // A version 2 payload without its risk object is named, not guessed.
        let mut broken = older_request(2);
        broken["DeploymentCreated"]
            .as_object_mut()
            .unwrap()
            .remove("risk");
        assert!(matches!(
            decode("DeploymentCreated", "2", &broken.to_string()),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn a_version_4_request_reads_with_no_size_and_no_cost() {
        let json = older_request(4);
        let read = decode("DeploymentCreated", "4", &json.to_string()).unwrap();
        let DeploymentEvent::DeploymentCreated(c) = &read else {
            panic!("{read:?}")
        };
        assert_eq!((c.artifact_bytes, &c.cost_rates), (None, &None));
        assert_eq!(c.meta.schema_version, 5);
        assert!(c.risk.policy_digest.is_some(), "version 4's digest is kept");
    }

    #[test]
    fn judgements_written_before_the_policy_was_recorded_read_with_no_digest() {
        let json = older_request(3);
        let read = decode("DeploymentCreated", "3", &json.to_string()).unwrap();
        let DeploymentEvent::DeploymentCreated(c) = &read else {
            panic!("{read:?}")
        };
        assert_eq!(c.risk.policy_digest, None);
        assert!(
            c.risk.cab_required_reason.is_some(),
            "version 3's reason is kept"
        );
        assert_eq!(c.meta.schema_version, 5);

        let mut s = Script::new(1);
        let mut gates = s.evaluated(2.0, Ring::Lab, Ring::Canary, &[(Gate::SuccessRate, true)]);
        gates.meta_mut().schema_version = 1;
        let mut json = serde_json::to_value(&gates).unwrap();
        json["PromotionGateEvaluated"]
            .as_object_mut()
            .unwrap()
            .remove("policy_digest");
        let read = decode("PromotionGateEvaluated", "1", &json.to_string()).unwrap();
        let DeploymentEvent::PromotionGateEvaluated(g) = &read else {
            panic!("{read:?}")
        };
        assert_eq!(
            (g.policy_digest.as_deref(), g.meta.schema_version),
            (None, 2)
        );
        assert!(g.passed);
    }

    #[test]
    fn governance_events_decode_and_are_not_an_intents() {
        let refused = r#"{"CommandRefused":{"meta":{"event_id":"0190f0f0-0000-7000-8000-000000000001","correlation_id":"c-1","occurred_at":"2026-01-01T00:00:00Z","schema_version":1},"principal_id":"0190f0f0-0000-7000-8000-000000000002","subject":"alice","role":"requester","intent":null,"command":"approve","reason":"missing_role","detail":"no","trace_id":null}}"#;
        let read = decode_stream("CommandRefused", "1", refused).unwrap();
        assert_eq!(read.type_name(), "CommandRefused");
        assert_eq!(read.deployment(), None);
        assert!(matches!(
            decode("CommandRefused", "1", refused),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            decode_stream("PolicyActivated", "1", refused),
            Err(DecodeError::TypeMismatch { .. })
        ));
    }

    #[test]
    fn a_version_1_grant_reads_as_version_2_with_no_conflict_allowed() {
        let stored = r#"{"PrincipalCreated":{"meta":{"event_id":"0190f0f0-0000-7000-8000-000000000001","principal_id":"0190f0f0-0000-7000-8000-000000000002","correlation_id":"cli-1","actor":{"subject":"cli:root","role":"admin"},"occurred_at":"2026-01-01T00:00:00Z","schema_version":1},"subject":"carol","role":"cab_approver","expires_at":"2026-04-01T00:00:00Z"}}"#;
        let StreamEvent::Access(AccessEvent::PrincipalCreated(p)) =
            decode_stream("PrincipalCreated", "1", stored).unwrap()
        else {
            panic!("not a grant")
        };
        assert_eq!((p.subject.as_str(), p.conflict_allowed), ("carol", None));
        assert_eq!(p.meta.schema_version, 2);
    }

    #[test]
    fn unknown_types_versions_and_mismatched_rows_are_named() {
        let mut s = Script::new(1);
        let created = s.created("7-Zip", false);
        let payload = stored(&created);
        assert_eq!(
            decode("DeploymentExploded", "1", &payload),
            Err(DecodeError::UnknownType("DeploymentExploded".into()))
        );
        for version in ["0", "6", "one", ""] {
            assert!(matches!(
                decode("DeploymentCreated", version, &payload),
                Err(DecodeError::UnknownVersion { .. })
            ));
        }
        assert!(matches!(
            decode("DeploymentCompleted", "1", &payload),
            Err(DecodeError::TypeMismatch { .. })
        ));
        assert!(matches!(
            decode("DeploymentCreated", "1", "{not json"),
            Err(DecodeError::Malformed { .. })
        ));
        // A principal's or the policy stream's event is not an intent's, whatever its version.
        for (event_type, version) in [("PrincipalRevoked", "1"), ("PolicyActivated", "9")] {
            assert!(matches!(
                decode(event_type, version, &payload),
                Err(DecodeError::Malformed { reason, .. })
                    if reason == "not an event of a deployment intent's stream"
            ));
        }
        // Every kind of stream names an unknown type or version the same way.
        assert_eq!(
            decode_stream("PrincipalExploded", "1", &payload),
            Err(DecodeError::UnknownType("PrincipalExploded".into()))
        );
        for event_type in ["DeploymentCreated", "PrincipalCreated", "CommandRefused"] {
            assert!(matches!(
                decode_stream(event_type, "7", &payload),
                Err(DecodeError::UnknownVersion { .. })
            ));
        }
    }
}
