//! What a command asks of an intent: who sent it, the stream version it expects, and the action
//! with its input. The rules that decide it are the aggregate's (`intent.rs`).

use chrono::{DateTime, Utc};
use eucora_projections::event::*;

use super::risk::RiskFactors;

/// A command, with who sent it and the stream version it expects (from `If-Match`).
#[derive(Debug, Clone)]
pub struct Command {
    pub actor: Actor,
    pub correlation_id: String,
    pub expected_version: Option<u64>,
    pub action: Action,
}

#[derive(Debug, Clone)]
pub enum Action {
    Create(Box<CreateIntent>),
    Approve {
        comment: Option<String>,
    },
    Reject {
        reason: String,
    },
    Deploy(RolloutInput),
    Promote,
    Rollback {
        reason: String,
    },
    /// Record that an emergency change's retrospective approval is past due (the control plane's
    /// deadline watcher sends it).
    MarkRetroOverdue,
    /// Record how a connector answered an action (the dispatcher sends it).
    RecordDispatch(DispatchRecord),
    /// Record a drift between what was installed and what a connector reports (the
    /// reconciler sends it).
    RecordDrift(DriftRecord),
    /// Record a connector status answer that could not be a rollout result (the dispatcher
    /// sends it).
    RecordStatusRejected(StatusRejection),
    /// A rollout result its connector pushed, with the connector's report sequence.
    ReportPushed(PushedReport),
}

impl Action {
    /// Whether it may clear an intent for a ring or roll it back, and so queue a connector action.
    pub fn may_queue_connector_action(&self) -> bool {
        matches!(
            self,
            Action::Create(_) | Action::Approve { .. } | Action::Promote | Action::Rollback { .. }
        )
    }

    /// Who may ask for it over the API and the console (an admin may ask for anything; the
    /// server's own jobs send the rest).
    pub fn roles(&self) -> &'static [Role] {
        match self {
            Action::Create(_) => &[Role::Requester],
            Action::Approve { .. } | Action::Reject { .. } => &[Role::CabApprover],
            Action::Deploy(_) | Action::Promote => &[Role::Deployer],
            Action::ReportPushed(_) => &[Role::Connector],
            Action::Rollback { .. } => &[Role::Deployer, Role::Requester],
            Action::MarkRetroOverdue
            | Action::RecordDispatch(_)
            | Action::RecordDrift(_)
            | Action::RecordStatusRejected(_) => &[],
        }
    }
}

/// A connector's answer to one action.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchRecord {
    pub connector_type: ConnectorType,
    pub ring: Ring,
    pub action: ConnectorAction,
    pub idempotency_key: String,
    pub attempts: u32,
    /// `None` when the connector accepted it; else the class, HTTP status and detail.
    pub refused: Option<(FailureClass, u16, String)>,
}

/// A drift the reconciler found.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftRecord {
    pub connector_type: ConnectorType,
    pub ring: Ring,
    /// What the reconciler last saw reported; the intent's own last rollout report in the
    /// ring, when it has one, is what the event records.
    pub expected_installed: u64,
    pub reported_installed: Option<u64>,
}

/// A rollout result a connector pushed for its assignment in `report.ring`.
#[derive(Debug, Clone, PartialEq)]
pub struct PushedReport {
    pub report: RolloutInput,
    /// The connector's sequence for the assignment: each report's higher than the last.
    pub sequence: u64,
}

/// A connector status answer the dispatcher could not take as a rollout result.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusRejection {
    pub connector_type: ConnectorType,
    pub ring: Ring,
    pub assignment_id: String,
    /// What was wrong, in our words; cut to 4,096 characters when recorded.
    pub problem: String,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Create(_) => "create",
            Action::Approve { .. } => "approve",
            Action::Reject { .. } => "reject",
            Action::Deploy(_) => "deploy",
            Action::Promote => "promote",
            Action::Rollback { .. } => "rollback",
            Action::MarkRetroOverdue => "mark_retro_overdue",
            Action::RecordDispatch(_) => "record_dispatch",
            Action::RecordDrift(_) => "record_drift",
            Action::RecordStatusRejected(_) => "record_status_rejected",
            Action::ReportPushed(_) => "push_result",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CreateIntent {
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
    pub risk_factors: RiskFactors,
    pub justification: Option<String>,
    /// When the change was committed to source control (lead time starts there).
    pub source_committed_at: Option<DateTime<Utc>>,
    /// The artifact's size in bytes, when known (what delivery costs).
    pub artifact_bytes: Option<u64>,
    /// The change's reference in another system (a ServiceNow CHG number, a Jira key).
    pub change_ref: Option<String>,
}

/// A rollout result for the current ring (cumulative counts).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutInput {
    pub ring: Ring,
    pub target_devices: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub incidents: u64,
}

impl RolloutInput {
    /// What the report counts, as [`eucora_projections::intent::RolloutReport::counts`] has it.
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        (
            self.target_devices,
            self.succeeded,
            self.failed,
            self.incidents,
        )
    }
}
