//! The event schema: what every event of a deployment intent's stream records.
//!
//! Events are past tense, each with a stable type name (the enum variant) and a schema version of
//! its own ([`DeploymentEvent::version`], also in `EventMeta::schema_version`). Stored events are
//! never edited; [`crate::decode`] upcasts an older version when it is read.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Rollout rings, in promotion order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Ring {
    Lab,
    Canary,
    Pilot,
    Department,
    Global,
}

impl Ring {
    pub const ALL: [Ring; 5] = [
        Ring::Lab,
        Ring::Canary,
        Ring::Pilot,
        Ring::Department,
        Ring::Global,
    ];

    /// Ring number of DOMAIN.md (LAB is 0).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The ring after this one, if any.
    pub fn next(self) -> Option<Ring> {
        Ring::ALL.get(self.index() + 1).copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Ring::Lab => "LAB",
            Ring::Canary => "CANARY",
            Ring::Pilot => "PILOT",
            Ring::Department => "DEPARTMENT",
            Ring::Global => "GLOBAL",
        }
    }

    pub fn parse(s: &str) -> Option<Ring> {
        Ring::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// What a principal may do (DOMAIN.md, "Who uses it").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Requester,
    CabApprover,
    Deployer,
    Auditor,
    Admin,
    /// The control plane itself, acting on a rule rather than a request (a deadline passing).
    /// No principal holds it: it is not in [`Role::ALL`], so no token can be made for it.
    System,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Requester,
        Role::CabApprover,
        Role::Deployer,
        Role::Auditor,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Requester => "requester",
            Role::CabApprover => "cab_approver",
            Role::Deployer => "deployer",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Who made a change: an authenticated subject acting in one role, or the policy engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub subject: String,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteClass {
    Online,
    Intermittent,
    AirGapped,
}

impl SiteClass {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteClass::Online => "online",
            SiteClass::Intermittent => "intermittent",
            SiteClass::AirGapped => "air_gapped",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeType {
    Standard,
    Normal,
    Emergency,
}

impl ChangeType {
    /// The name the API and the stored events use.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Standard => "standard",
            ChangeType::Normal => "normal",
            ChangeType::Emergency => "emergency",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorType {
    Intune,
    Jamf,
    Sccm,
    Landscape,
    Ansible,
}

/// The label the risk model gives an assessment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ThresholdLabel {
    AutomatedAllowed,
    CabRequired,
    PrivilegedTooling,
}

impl ThresholdLabel {
    /// The label in words, for people.
    pub fn words(self) -> &'static str {
        match self {
            ThresholdLabel::AutomatedAllowed => "automated approval allowed",
            ThresholdLabel::CabRequired => "CAB required",
            ThresholdLabel::PrivilegedTooling => "privileged tooling",
        }
    }
}

/// One factor's part in a risk score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorAssessment {
    pub factor: String,
    pub value: f64,
    pub weight: f64,
    pub contribution: f64,
}

/// A risk assessment as made at creation; a later model never rewrites it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskAssessment {
    pub model_version: String,
    pub score: u32,
    pub threshold: ThresholdLabel,
    pub requires_cab: bool,
    pub factors: Vec<FactorAssessment>,
    /// Why the CAB must decide, in words (`risk score 62 is above the CAB threshold 50`,
    /// `privileged tooling`, `critical infrastructure (policy cab.always_for_critical_infrastructure)`,
    /// joined by `; `); null when it need not, and on events written before version 3 of
    /// `DeploymentCreated`.
    pub cab_required_reason: Option<String>,
}

/// The lifecycle states of DOMAIN.md. `Completed`, `Rejected` and `RolledBack` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    AwaitingCab,
    Approved,
    Deployed,
    Completed,
    Rejected,
    RolledBack,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::AwaitingCab,
        Status::Approved,
        Status::Deployed,
        Status::Completed,
        Status::Rejected,
        Status::RolledBack,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Rejected | Status::RolledBack
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::AwaitingCab => "awaiting_cab",
            Status::Approved => "approved",
            Status::Deployed => "deployed",
            Status::Completed => "completed",
            Status::Rejected => "rejected",
            Status::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// The envelope every event carries (DOMAIN.md, "Every event").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMeta {
    /// UUIDv7, from the command's clock.
    pub event_id: Uuid,
    pub deployment_id: Uuid,
    /// From `X-Correlation-ID`, or generated for the request.
    pub correlation_id: String,
    pub actor: Actor,
    /// Set once from the command's injected clock; never read again at replay.
    pub occurred_at: DateTime<Utc>,
    pub schema_version: u32,
}

/// Version 2 added `source_committed_at` (version 1 events upcast to `None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Created {
    pub meta: EventMeta,
    pub app_name: String,
    pub version: String,
    pub connector_type: ConnectorType,
    pub start_ring: Ring,
    pub target_ring: Ring,
    pub change_type: ChangeType,
    pub site_class: SiteClass,
    pub privileged_tooling: bool,
    pub critical_infrastructure: bool,
    pub rollback_validated: bool,
    pub artifact_sha256: Option<String>,
    pub justification: Option<String>,
    pub risk: RiskAssessment,
    /// When the change was committed to source control, if the requester said: where lead time
    /// starts (else at creation).
    pub source_committed_at: Option<DateTime<Utc>>,
    /// The change's reference in another system (a ServiceNow CHG number, a Jira key), if the
    /// requester gave one: 1 to 64 printable characters.
    pub change_ref: Option<String>,
}

/// Why an intent was cleared to deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approved {
    pub meta: EventMeta,
    /// The approving subject, or `policy:<model>` when no person approved.
    pub approver: String,
    pub basis: ApprovalBasis,
    pub ring: Ring,
    pub comment: Option<String>,
    /// For a retrospective approval: whether it came within the window after first deployment.
    pub retro_deadline_met: Option<bool>,
}

/// Version 2 added `retrospective` (version 1 events, all made while awaiting CAB, upcast to
/// `false`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    pub meta: EventMeta,
    pub ring: Ring,
    pub reason: String,
    /// A CAB rejection of an emergency change after it was deployed, rather than a decision on an
    /// intent awaiting CAB.
    pub retrospective: bool,
}

/// A rollout result for one ring; counts are cumulative and reports may repeat.
///
/// Version 2 added `retro_approval_due_at` (version 1 events upcast to `None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployed {
    pub meta: EventMeta,
    pub ring: Ring,
    pub target_devices: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub incidents: u64,
    /// `succeeded / target_devices`.
    pub success_rate: f64,
    /// The ring's success-rate threshold in force when the report was made.
    pub compliance_threshold: f64,
    /// This report is the ring's first to reach the threshold.
    pub first_compliant: bool,
    /// On the first deployment of an emergency change awaiting retrospective approval: when that
    /// approval falls due (this report's time plus the policy's window).
    pub retro_approval_due_at: Option<DateTime<Utc>>,
}

/// The promotion gates of DOMAIN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub gate: Gate,
    /// `ratio`, `seconds`, `count` or `bool`.
    pub unit: String,
    /// Which side of the threshold passes: `min` (measured ≥ threshold) or `max` (measured ≤ threshold).
    pub bound: String,
    pub threshold: f64,
    /// `None` when there is nothing to measure yet (for example, never compliant).
    pub measured: Option<f64>,
    pub passed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateEvaluated {
    pub meta: EventMeta,
    pub from_ring: Ring,
    pub to_ring: Ring,
    pub gates: Vec<GateResult>,
    pub passed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promoted {
    pub meta: EventMeta,
    pub from_ring: Ring,
    pub to_ring: Ring,
}

/// The intent became compliant in its target ring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completed {
    pub meta: EventMeta,
    pub ring: Ring,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolledBack {
    pub meta: EventMeta,
    pub ring: Ring,
    pub from_status: Status,
    pub reason: String,
}

/// An emergency change's retrospective approval did not come by its due time. Appended by the
/// control plane (actor role `system`) once the deadline has passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetroApprovalOverdue {
    pub meta: EventMeta,
    pub ring: Ring,
    pub due_at: DateTime<Utc>,
}

/// What EUCORA asks of a connector for one intent in one ring (docs/connectors.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

impl ConnectorType {
    pub const ALL: [ConnectorType; 5] = [
        ConnectorType::Intune,
        ConnectorType::Jamf,
        ConnectorType::Sccm,
        ConnectorType::Landscape,
        ConnectorType::Ansible,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorType::Intune => "intune",
            ConnectorType::Jamf => "jamf",
            ConnectorType::Sccm => "sccm",
            ConnectorType::Landscape => "landscape",
            ConnectorType::Ansible => "ansible",
        }
    }

    pub fn parse(s: &str) -> Option<ConnectorType> {
        ConnectorType::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// The connector accepted an action: the dispatcher sent it (under `idempotency_key`) and the
/// connector answered. Appended by the control plane (actor `system:dispatcher`, role `system`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dispatched {
    pub meta: EventMeta,
    pub connector_type: ConnectorType,
    pub ring: Ring,
    pub action: ConnectorAction,
    pub idempotency_key: String,
    /// Calls made, retries included, across every server that tried.
    pub attempts: u32,
}

/// Why a connector refused an action for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// 400, 404, 409, 422 and other client errors: the request itself is wrong.
    Permanent,
    /// 401, 403: the connector's credentials or rights are wrong.
    Policy,
}

/// The connector refused an action and it is not retried: recorded once, surfaced on the intent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DispatchFailed {
    pub meta: EventMeta,
    pub connector_type: ConnectorType,
    pub ring: Ring,
    pub action: ConnectorAction,
    pub idempotency_key: String,
    pub class: FailureClass,
    /// The HTTP status the connector answered with.
    pub status: u16,
    pub detail: String,
    pub attempts: u32,
}

/// What a connector reports no longer matches what was installed: the assignment is gone
/// (`reported_installed` is `None`) or fewer devices have the version than the intent's last
/// rollout report counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftDetected {
    pub meta: EventMeta,
    pub connector_type: ConnectorType,
    pub ring: Ring,
    /// Devices the intent's last rollout report in the ring counted as installed.
    pub expected_installed: u64,
    /// Devices the connector reports as installed now; `None` when it has no such assignment.
    pub reported_installed: Option<u64>,
}

/// Every event of a deployment intent's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeploymentEvent {
    DeploymentCreated(Created),
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
        }
    }

    /// This event type's schema version as this build writes and reads it.
    pub fn version(&self) -> u32 {
        match self {
            DeploymentEvent::DeploymentCreated(_) => 3,
            DeploymentEvent::DeploymentApproved(_) => 1,
            DeploymentEvent::DeploymentRejected(_) => 2,
            DeploymentEvent::DeploymentDeployed(_) => 2,
            DeploymentEvent::PromotionGateEvaluated(_) => 1,
            DeploymentEvent::RingPromoted(_) => 1,
            DeploymentEvent::DeploymentCompleted(_) => 1,
            DeploymentEvent::DeploymentRolledBack(_) => 1,
            DeploymentEvent::RetroApprovalOverdue(_) => 1,
            DeploymentEvent::ConnectorDispatched(_) => 1,
            DeploymentEvent::ConnectorDispatchFailed(_) => 1,
            DeploymentEvent::DeploymentDriftDetected(_) => 1,
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
        }
    }
}
