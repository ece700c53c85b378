//! The event schema: what every event of a deployment intent's stream records.
//!
//! Events are past tense, each with a stable type name (the enum variant) and a schema version of
//! its own ([`DeploymentEvent::version`], also in `EventMeta::schema_version`). Stored events are
//! never edited; [`crate::decode`] upcasts an older version when it is read.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod values;

pub use values::*;

/// The envelope every event of an intent carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventMeta {
    /// UUIDv7, from the command's clock.
    pub event_id: Uuid,
    /// The intent (its stream).
    pub deployment_id: Uuid,
    /// From `X-Correlation-ID`, or generated for the request.
    pub correlation_id: String,
    /// Who sent the command (for a policy approval, the requester whose request triggered it).
    pub actor: Actor,
    /// Set once from the command's injected clock; never read again at replay.
    #[serde(deserialize_with = "crate::time::utc")]
    pub occurred_at: DateTime<Utc>,
    /// The event type's schema version it was written at.
    pub schema_version: u32,
}

/// Version 2 added `source_committed_at` (version 1 events upcast to `None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Created {
    /// The envelope: event id, intent, correlation id, actor, time, schema version.
    pub meta: EventMeta,
    /// The application, as the requester named it.
    pub app_name: String,
    /// The application's version.
    pub version: String,
    /// The tool that installs it.
    pub connector_type: ConnectorType,
    /// The first ring.
    pub start_ring: Ring,
    /// The last ring: compliance there completes the intent.
    pub target_ring: Ring,
    /// Standard, normal or emergency.
    pub change_type: ChangeType,
    /// The sites' connectivity, which sets each ring's time to compliance.
    pub site_class: SiteClass,
    /// The package is privileged tooling: the CAB must always approve it.
    pub privileged_tooling: bool,
    /// The change touches critical infrastructure (raises the blast radius; sends it to the CAB
    /// under `cab.always_for_critical_infrastructure`).
    pub critical_infrastructure: bool,
    /// The rollback plan was validated (required to start, or be promoted, outside LAB).
    pub rollback_validated: bool,
    /// The package's SHA-256 (64 hex digits, lower case), if given.
    pub artifact_sha256: Option<String>,
    /// The requester's justification, if any.
    pub justification: Option<String>,
    /// The whole risk assessment, as scored at the request.
    pub risk: RiskAssessment,
    /// When the change was committed to source control, if the requester said: where lead time
    /// starts (else at creation).
    #[serde(default, deserialize_with = "crate::time::utc_opt")]
    pub source_committed_at: Option<DateTime<Utc>>,
    /// The change's reference in another system (a ServiceNow CHG number, a Jira key), if the
    /// requester gave one: 1 to 64 printable characters.
    pub change_ref: Option<String>,
    /// The artifact's size in bytes, if the requester gave it (what delivery costs).
    pub artifact_bytes: Option<u64>,
    /// The policy's cost rates in force at the request: what the change's cost is computed with.
    pub cost_rates: Option<Box<CostRates>>,
}

/// Why an intent was cleared to deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalBasis {
    /// Risk low enough for automatic approval by the risk model's policy.
    Policy,
    /// A CAB approver approved an intent awaiting CAB.
    Cab,
    /// An emergency change cleared for its start ring only, pending retrospective CAB approval.
    EmergencyProvisional,
    /// A CAB approver approved an emergency change after it was cleared provisionally.
    CabRetrospective,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Approved {
    /// The envelope: event id, intent, correlation id, actor, time, schema version.
    pub meta: EventMeta,
    /// The approving subject, or `policy:<model>` when no person approved.
    pub approver: String,
    /// Why it was cleared: by policy, by the CAB, provisionally as an emergency change, or by the
    /// CAB retrospectively.
    pub basis: ApprovalBasis,
    /// The ring it was cleared for (its current ring).
    pub ring: Ring,
    /// The approver's comment, if any.
    pub comment: Option<String>,
    /// For a retrospective approval: whether it came within the window after first deployment.
    pub retro_deadline_met: Option<bool>,
}

/// Version 2 added `retrospective` (version 1 events, all made while awaiting CAB, upcast to
/// `false`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Rejected {
    /// The envelope: event id, intent, correlation id, actor, time, schema version.
    pub meta: EventMeta,
    /// Its current ring at the decision.
    pub ring: Ring,
    /// The CAB's reason.
    pub reason: String,
    /// A CAB rejection of an emergency change after it was deployed, rather than a decision on an
    /// intent awaiting CAB.
    pub retrospective: bool,
}

/// A rollout result for one ring; counts are cumulative and reports may repeat.
///
/// Version 2 added `retro_approval_due_at` (version 1 events upcast to `None`); version 3 added
/// `sequence`, version 4 `compliance_due_at` (earlier events upcast to `None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Deployed {
    /// The envelope: event id, intent, correlation id, actor, time, schema version.
    pub meta: EventMeta,
    /// The ring reported on (the current ring).
    pub ring: Ring,
    /// Devices in the ring's scope (cumulative: never lowered).
    pub target_devices: u64,
    /// Devices where it installed (cumulative in the ring).
    pub succeeded: u64,
    /// Devices where it failed (cumulative in the ring; may fall when a retry succeeds).
    pub failed: u64,
    /// Incidents raised against it in the ring (cumulative).
    pub incidents: u64,
    /// `succeeded / target_devices`.
    pub success_rate: f64,
    /// The ring's success-rate threshold in force when the report was made.
    pub compliance_threshold: f64,
    /// When the ring must be compliant by: its entry plus the ring's and site class's
    /// `time_to_compliance` in force when the report was made (`None` on reports recorded before
    /// version 4).
    #[serde(default, deserialize_with = "crate::time::utc_opt")]
    pub compliance_due_at: Option<DateTime<Utc>>,
    /// This report is the ring's first to reach the threshold.
    pub first_compliant: bool,
    /// On the first deployment of an emergency change awaiting retrospective approval: when that
    /// approval falls due (this report's time plus the policy's window).
    #[serde(default, deserialize_with = "crate::time::utc_opt")]
    pub retro_approval_due_at: Option<DateTime<Utc>>,
    /// The connector's report sequence, when it pushed this result
    /// (`POST /api/v1/connectors/{name}/results`); `None` for a polled or hand-made report.
    pub sequence: Option<u64>,
}

/// The promotion gates (docs/rules.md; their thresholds are the policy's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    SuccessRate,
    TimeToCompliance,
    Incidents,
    BakeTime,
    RollbackPlan,
    CabApproval,
}

impl Gate {
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::SuccessRate => "success_rate",
            Gate::TimeToCompliance => "time_to_compliance",
            Gate::Incidents => "incidents",
            Gate::BakeTime => "bake_time",
            Gate::RollbackPlan => "rollback_plan",
            Gate::CabApproval => "cab_approval",
        }
    }
}

/// One gate's threshold, measured value and verdict. Booleans are recorded as 0 or 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GateResult {
    /// Which gate.
    pub gate: Gate,
    /// `ratio`, `seconds`, `count` or `bool`.
    pub unit: String,
    /// Which side of the threshold passes: `min` (measured ≥ threshold) or `max` (measured ≤ threshold).
    pub bound: String,
    /// The threshold in force (from the policy).
    pub threshold: f64,
    /// `None` when there is nothing to measure yet (for example, never compliant).
    pub measured: Option<f64>,
    /// The measured value met the threshold.
    pub passed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GateEvaluated {
    /// The envelope: event id, intent, correlation id, actor, time, schema version.
    pub meta: EventMeta,
    /// The ring it would leave.
    pub from_ring: Ring,
    /// The ring it would enter.
    pub to_ring: Ring,
    /// Every gate's threshold, measured value, bound and verdict.
    pub gates: Vec<GateResult>,
    /// Every gate passed: a `RingPromoted` follows.
    pub passed: bool,
    /// The SHA-256 of the policy whose thresholds these are (a `PolicyActivated` of the policy
    /// stream holds its text); null on events written before version 2.
    pub policy_digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Promoted {
    /// The envelope: event id, intent, correlation id, actor, time, schema version.
    pub meta: EventMeta,
    /// The ring it left.
    pub from_ring: Ring,
    /// The ring it entered.
    pub to_ring: Ring,
}

/// The intent became compliant in its target ring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Completed {
    /// The envelope: event id, intent, correlation id, actor, time, schema version.
    pub meta: EventMeta,
    /// The target ring, where it became compliant.
    pub ring: Ring,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RolledBack {
    /// The envelope: event id, intent, correlation id, actor, time, schema version.
    pub meta: EventMeta,
    /// The ring it was rolled back in (its current ring).
    pub ring: Ring,
    /// The state it left.
    pub from_status: Status,
    /// Why it was rolled back.
    pub reason: String,
}

/// An emergency change's retrospective approval did not come by its due time. Appended by the
/// control plane (actor role `system`) once the deadline has passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RetroApprovalOverdue {
    /// The envelope: event id, intent, correlation id, actor, time, schema version.
    pub meta: EventMeta,
    /// Its current ring.
    pub ring: Ring,
    /// The due time that passed without a retrospective CAB decision.
    #[serde(deserialize_with = "crate::time::utc")]
    pub due_at: DateTime<Utc>,
}

/// What EUCORA asks of a connector for one intent in one ring (docs/connectors.md).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorAction {
    /// Make the version available to the ring's devices.
    Publish,
    /// Remove it from the ring's devices.
    Uninstall,
    /// Put back the version the ring had before.
    Rollback,
    /// Install it again where it failed or went missing.
    Redeploy,
}

impl ConnectorAction {
    pub const ALL: [ConnectorAction; 4] = [
        ConnectorAction::Publish,
        ConnectorAction::Uninstall,
        ConnectorAction::Rollback,
        ConnectorAction::Redeploy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorAction::Publish => "publish",
            ConnectorAction::Uninstall => "uninstall",
            ConnectorAction::Rollback => "rollback",
            ConnectorAction::Redeploy => "redeploy",
        }
    }

    pub fn parse(s: &str) -> Option<ConnectorAction> {
        ConnectorAction::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// The assignment of one intent to one ring: `<deployment id>.<ring>`, ring in lower case.
pub fn assignment_id(deployment_id: Uuid, ring: Ring) -> String {
    format!("{deployment_id}.{}", ring.as_str().to_ascii_lowercase())
}

/// The intent and ring of an assignment id ([`assignment_id`]'s inverse); `None` for anything
/// else.
pub fn parse_assignment_id(id: &str) -> Option<(Uuid, Ring)> {
    let (deployment, ring) = id.split_once('.')?;
    let ring = Ring::ALL
        .into_iter()
        .find(|r| r.as_str().to_ascii_lowercase() == ring)?;
    Some((Uuid::parse_str(deployment).ok()?, ring))
}

/// `<deployment id>:<RING>:<action>`: the same intent, ring and action always give the same key,
/// so whoever sends it again (a retry, another replica, a restarted server) changes nothing more.
pub fn idempotency_key(deployment_id: Uuid, ring: Ring, action: ConnectorAction) -> String {
    format!("{deployment_id}:{}:{}", ring.as_str(), action.as_str())
}

impl ConnectorType {
    /// Whether `name` may name a connector: 1 to 32 characters, lower-case letters, digits, `-`
    /// and `_`, starting with a letter.
    pub fn is_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && name.len() <= 32
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    }

    /// The five built-in types.
    pub const ALL: [ConnectorType; 5] = [
        ConnectorType::Intune,
        ConnectorType::Jamf,
        ConnectorType::Sccm,
        ConnectorType::Landscape,
        ConnectorType::Ansible,
    ];

    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// One of the five built-in types, by name.
    pub fn builtin(s: &str) -> Option<ConnectorType> {
        ConnectorType::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether this is one of the five built-in types (not a custom connector).
    pub fn is_builtin(self) -> bool {
        ConnectorType::builtin(self.0).is_some()
    }

    /// A connector by name: a built-in type, or a custom connector's name ([`ConnectorType::is_name`]).
    /// A custom name is kept for the life of the process the first time it is seen (names come
    /// from the connectors file and the stored events, so there are few).
    pub fn parse(s: &str) -> Option<ConnectorType> {
        if let Some(builtin) = ConnectorType::builtin(s) {
            return Some(builtin);
        }
        if !ConnectorType::is_name(s) {
            return None;
        }
        static NAMES: std::sync::OnceLock<
            std::sync::Mutex<std::collections::BTreeSet<&'static str>>,
        > = std::sync::OnceLock::new();
        let mut names = NAMES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(&known) = names.get(s) {
            return Some(ConnectorType(known));
        }
        let name: &'static str = Box::leak(s.to_string().into_boxed_str());
        names.insert(name);
        Some(ConnectorType(name))
    }
}

/// The connector accepted an action: the dispatcher sent it (under `idempotency_key`) and the
/// connector answered. Appended by the control plane (actor `system:dispatcher`, role `system`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Dispatched {
    /// The envelope: event id, intent, correlation id, actor, time, schema version.
    pub meta: EventMeta,
    /// The connector that accepted it.
    pub connector_type: ConnectorType,
    /// The ring the action was for.
    pub ring: Ring,
    /// What was asked of the connector.
    pub action: ConnectorAction,
    /// `<deployment id>:<RING>:<action>`, sent with every call.
    pub idempotency_key: String,
    /// Calls made, retries included, across every server that tried.
    pub attempts: u32,
}

/// Why a connector refused an action for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// 400, 404, 409, 422 and other client errors: the request itself is wrong.
    Permanent,
    /// 401, 403: the connector's credentials or rights are wrong.
    Policy,
}

/// The connector refused an action and it is not retried: recorded once, surfaced on the intent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DispatchFailed {
    /// The envelope: event id, intent, correlation id, actor, time, schema version.
    pub meta: EventMeta,
    /// The connector asked.
    pub connector_type: ConnectorType,
    /// The ring the action was for.
    pub ring: Ring,
    /// What was asked of the connector.
    pub action: ConnectorAction,
    /// `<deployment id>:<RING>:<action>`, sent with every call.
    pub idempotency_key: String,
    /// Why it is not retried: `permanent` (the connector refused the request) or `policy` (it
    /// refused the credential).
    pub class: FailureClass,
    /// The HTTP status the connector answered with.
    pub status: u16,
    /// The connector's answer, in its words.
    pub detail: String,
    /// Calls made, retries included.
    pub attempts: u32,
}

/// What a connector reports no longer matches what was installed: the assignment is gone
/// (`reported_installed` is `None`) or fewer devices have the version than the intent's last
/// rollout report counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DriftDetected {
    /// The envelope: event id, intent, correlation id, actor, time, schema version.
    pub meta: EventMeta,
    /// The connector reconciled.
    pub connector_type: ConnectorType,
    /// The ring whose assignment drifted.
    pub ring: Ring,
    /// Devices the intent's last rollout report in the ring counted as installed.
    pub expected_installed: u64,
    /// Devices the connector reports as installed now; `None` when it has no such assignment.
    pub reported_installed: Option<u64>,
}

/// A connector answered a status read with something that cannot be a rollout result: not JSON,
/// a missing or negative count, an answer about another assignment, an error status, or counts
/// the rules refuse (installed above targeted, more than 10,000,000 devices). Recorded once per
/// distinct problem, not on every poll; nothing is reported on the intent from that answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusRejected {
    /// The envelope: event id, intent, correlation id, actor, time, schema version.
    pub meta: EventMeta,
    /// The connector read.
    pub connector_type: ConnectorType,
    /// The ring whose assignment was read.
    pub ring: Ring,
    /// The assignment read: `<deployment id>.<ring>`, ring in lower case.
    pub assignment_id: String,
    /// What was wrong with the answer, in EUCORA's words.
    pub problem: String,
}

/// Every event of a deployment intent's stream. A request's event is the largest by far (the
/// whole risk assessment, the rates its cost is priced with), and boxed: a decoded event moves
/// from the decoding task into a batch, across a channel and into whatever keeps it, and every
/// move copies the enum's whole size (392 bytes unboxed, 200 boxed), while one event in a dozen
/// is a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum DeploymentEvent {
    DeploymentCreated(Box<Created>),
    DeploymentApproved(Approved),
    DeploymentRejected(Rejected),
    DeploymentDeployed(Deployed),
    PromotionGateEvaluated(GateEvaluated),
    RingPromoted(Promoted),
    DeploymentCompleted(Completed),
    DeploymentRolledBack(RolledBack),
    RetroApprovalOverdue(RetroApprovalOverdue),
    ConnectorDispatched(Dispatched),
    ConnectorDispatchFailed(DispatchFailed),
    DeploymentDriftDetected(DriftDetected),
    ConnectorStatusRejected(StatusRejected),
}

impl DeploymentEvent {
    /// The stable type name stored beside the payload.
    pub fn type_name(&self) -> &'static str {
        match self {
            DeploymentEvent::DeploymentCreated(_) => "DeploymentCreated",
            DeploymentEvent::DeploymentApproved(_) => "DeploymentApproved",
            DeploymentEvent::DeploymentRejected(_) => "DeploymentRejected",
            DeploymentEvent::DeploymentDeployed(_) => "DeploymentDeployed",
            DeploymentEvent::PromotionGateEvaluated(_) => "PromotionGateEvaluated",
            DeploymentEvent::RingPromoted(_) => "RingPromoted",
            DeploymentEvent::DeploymentCompleted(_) => "DeploymentCompleted",
            DeploymentEvent::DeploymentRolledBack(_) => "DeploymentRolledBack",
            DeploymentEvent::RetroApprovalOverdue(_) => "RetroApprovalOverdue",
            DeploymentEvent::ConnectorDispatched(_) => "ConnectorDispatched",
            DeploymentEvent::ConnectorDispatchFailed(_) => "ConnectorDispatchFailed",
            DeploymentEvent::DeploymentDriftDetected(_) => "DeploymentDriftDetected",
            DeploymentEvent::ConnectorStatusRejected(_) => "ConnectorStatusRejected",
        }
    }

    /// This event type's schema version as this build writes and reads it.
    pub fn version(&self) -> u32 {
        match self {
            DeploymentEvent::DeploymentCreated(_) => 5,
            DeploymentEvent::DeploymentApproved(_) => 1,
            DeploymentEvent::DeploymentRejected(_) => 2,
            DeploymentEvent::DeploymentDeployed(_) => 4,
            DeploymentEvent::PromotionGateEvaluated(_) => 2,
            DeploymentEvent::RingPromoted(_) => 1,
            DeploymentEvent::DeploymentCompleted(_) => 1,
            DeploymentEvent::DeploymentRolledBack(_) => 1,
            DeploymentEvent::RetroApprovalOverdue(_) => 1,
            DeploymentEvent::ConnectorDispatched(_) => 1,
            DeploymentEvent::ConnectorDispatchFailed(_) => 1,
            DeploymentEvent::DeploymentDriftDetected(_) => 1,
            DeploymentEvent::ConnectorStatusRejected(_) => 1,
        }
    }

    pub fn meta(&self) -> &EventMeta {
        match self {
            DeploymentEvent::DeploymentCreated(e) => &e.meta,
            DeploymentEvent::DeploymentApproved(e) => &e.meta,
            DeploymentEvent::DeploymentRejected(e) => &e.meta,
            DeploymentEvent::DeploymentDeployed(e) => &e.meta,
            DeploymentEvent::PromotionGateEvaluated(e) => &e.meta,
            DeploymentEvent::RingPromoted(e) => &e.meta,
            DeploymentEvent::DeploymentCompleted(e) => &e.meta,
            DeploymentEvent::DeploymentRolledBack(e) => &e.meta,
            DeploymentEvent::RetroApprovalOverdue(e) => &e.meta,
            DeploymentEvent::ConnectorDispatched(e) => &e.meta,
            DeploymentEvent::ConnectorDispatchFailed(e) => &e.meta,
            DeploymentEvent::DeploymentDriftDetected(e) => &e.meta,
            DeploymentEvent::ConnectorStatusRejected(e) => &e.meta,
        }
    }

    pub fn meta_mut(&mut self) -> &mut EventMeta {
        match self {
            DeploymentEvent::DeploymentCreated(e) => &mut e.meta,
            DeploymentEvent::DeploymentApproved(e) => &mut e.meta,
            DeploymentEvent::DeploymentRejected(e) => &mut e.meta,
            DeploymentEvent::DeploymentDeployed(e) => &mut e.meta,
            DeploymentEvent::PromotionGateEvaluated(e) => &mut e.meta,
            DeploymentEvent::RingPromoted(e) => &mut e.meta,
            DeploymentEvent::DeploymentCompleted(e) => &mut e.meta,
            DeploymentEvent::DeploymentRolledBack(e) => &mut e.meta,
            DeploymentEvent::RetroApprovalOverdue(e) => &mut e.meta,
            DeploymentEvent::ConnectorDispatched(e) => &mut e.meta,
            DeploymentEvent::ConnectorDispatchFailed(e) => &mut e.meta,
            DeploymentEvent::DeploymentDriftDetected(e) => &mut e.meta,
            DeploymentEvent::ConnectorStatusRejected(e) => &mut e.meta,
        }
    }
}
