//! The state of one deployment intent, folded from its stream.
//!
//! The aggregate keeps this state to check its rules, and the intent read model serves it, so the
//! lifecycle is written down once. The fold is total: every event type has an arm, and a new event
//! type does not build until this fold handles it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{
    ApprovalBasis, ChangeType, ConnectorType, DeploymentEvent, Gate, GateResult, Ring, SiteClass,
    Status, ThresholdLabel,
};

/// The latest rollout report for the current ring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutReport {
    pub target_devices: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub incidents: u64,
    pub success_rate: f64,
}

impl RolloutReport {
    /// What the report counted: target devices, succeeded, failed, incidents.
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        (
            self.target_devices,
            self.succeeded,
            self.failed,
            self.incidents,
        )
    }
}

/// The latest promotion attempt and every gate's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromotionAttempt {
    pub from_ring: Ring,
    pub to_ring: Ring,
    pub passed: bool,
    pub gates: Vec<GateResult>,
    pub evaluated_at: DateTime<Utc>,
}

impl PromotionAttempt {
    /// The gates that blocked this attempt.
    pub fn blocked_by(&self) -> Vec<Gate> {
        self.gates
            .iter()
            .filter(|g| !g.passed)
            .map(|g| g.gate)
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentState {
    pub id: Uuid,
    /// The correlation id of the request that created the intent.
    pub correlation_id: String,
    pub app_name: String,
    pub version: String,
    /// The change's reference in another system, if the requester gave one.
    #[serde(default)]
    pub change_ref: Option<String>,
    pub connector_type: ConnectorType,
    /// The artifact's SHA-256, when the intent recorded one.
    #[serde(default)]
    pub artifact_sha256: Option<String>,
    pub change_type: ChangeType,
    pub site_class: SiteClass,
    pub privileged_tooling: bool,
    pub critical_infrastructure: bool,
    pub rollback_validated: bool,
    pub status: Status,
    pub start_ring: Ring,
    pub current_ring: Ring,
    pub target_ring: Ring,
    pub risk_score: u32,
    pub risk_model_version: String,
    pub risk_threshold: ThresholdLabel,
    pub requires_cab: bool,
    /// Why the CAB must decide, as the risk assessment recorded it (none before version 3 of
    /// `DeploymentCreated`, or when it need not).
    #[serde(default)]
    pub cab_required_reason: Option<String>,
    /// A CAB approver (not the policy) has approved this intent.
    pub cab_approved: bool,
    /// An emergency change cleared for its start ring that still needs retrospective approval.
    pub retro_approval_pending: bool,
    /// When the retrospective approval falls due (set on the emergency change's first
    /// deployment).
    #[serde(default)]
    pub retro_approval_due_at: Option<DateTime<Utc>>,
    /// The retrospective approval was not given by its due time (`RetroApprovalOverdue`).
    #[serde(default)]
    pub retro_approval_overdue: bool,
    /// The CAB rejected this emergency change after it was deployed: only a rollback may follow.
    #[serde(default)]
    pub rollback_required: bool,
    pub requested_by: String,
    pub approved_by: Option<String>,
    /// Who rejected it (the CAB's decision on the request, or its retrospective review), and why.
    #[serde(default)]
    pub rejected_by: Option<String>,
    #[serde(default)]
    pub rejection_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Number of events in the stream (the version an `If-Match` names).
    pub stream_version: u64,
    /// When the intent entered its current ring (was first cleared to deploy there).
    pub ring_entered_at: Option<DateTime<Utc>>,
    /// The current ring's first rollout report.
    pub ring_first_deployed_at: Option<DateTime<Utc>>,
    /// The current ring's first compliant rollout report.
    pub ring_compliant_at: Option<DateTime<Utc>>,
    /// The intent's first rollout report in any ring (starts the retrospective-approval window).
    pub first_deployed_at: Option<DateTime<Utc>>,
    pub latest_report: Option<RolloutReport>,
    pub last_promotion: Option<PromotionAttempt>,
    /// The connector actions with a recorded outcome, by idempotency key
    /// (`<deployment id>:<RING>:<action>`).
    #[serde(default)]
    pub connector_actions: BTreeMap<String, DispatchOutcome>,
    /// The drift last recorded, so the same drift is recorded once.
    #[serde(default)]
    pub last_drift: Option<DriftSeen>,
    /// The connector's last status answer that could not be a rollout result
    /// (`ConnectorStatusRejected`), until a rollout report in its ring supersedes it: shown on
    /// the intent, and recorded again only when the problem changes.
    #[serde(default)]
    pub status_rejected: Option<StatusRejectedSeen>,
    /// The last report its connector pushed in the current ring, so a repeat of its sequence is
    /// answered without a second event and an older one is refused.
    #[serde(default)]
    pub last_pushed: Option<PushedSeen>,
    /// What the change cost so far, with the rates recorded at its request.
    #[serde(default)]
    pub cost: crate::cost::CostMeter,
    /// When the rollout in its current ring is expected to be compliant, against its deadline.
    /// (A state stored before forecasts has none until its next event.)
    #[serde(default)]
    pub forecast: crate::forecast::Forecaster,
}

/// A pushed report as applied: its ring, sequence and counts (target devices, succeeded,
/// failed, incidents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushedSeen {
    pub ring: Ring,
    pub sequence: u64,
    pub counts: (u64, u64, u64, u64),
}

/// How a connector action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DispatchOutcome {
    /// The connector accepted it (`ConnectorDispatched`).
    Dispatched,
    /// The connector refused it for good (`ConnectorDispatchFailed`).
    Failed,
}

/// A drift as recorded (`DeploymentDriftDetected`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftSeen {
    pub ring: Ring,
    pub reported_installed: Option<u64>,
}

/// A connector's status answer as rejected (`ConnectorStatusRejected`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRejectedSeen {
    pub ring: Ring,
    pub assignment_id: String,
    pub problem: String,
    pub at: DateTime<Utc>,
}

impl IntentState {
    /// Why the CAB must decide: as the assessment recorded it, or (for intents requested before
    /// it was recorded) from the recorded label; `None` when it need not.
    pub fn cab_reason(&self) -> Option<String> {
        if !self.requires_cab {
            return None;
        }
        self.cab_required_reason.clone().or_else(|| {
            Some(match self.risk_threshold {
                ThresholdLabel::PrivilegedTooling => "privileged tooling".into(),
                _ => format!("risk score {} is above the CAB threshold", self.risk_score),
            })
        })
    }

    /// Folds one event into the state. A stream must start with `DeploymentCreated`; an event
    /// that cannot apply (anything before creation, a second creation) leaves the state as it is.
    pub fn fold(state: Option<IntentState>, event: &DeploymentEvent) -> Option<IntentState> {
        let mut state = match (state, event) {
            (None, DeploymentEvent::DeploymentCreated(e)) => {
                return Some(IntentState {
                    id: e.meta.deployment_id,
                    correlation_id: e.meta.correlation_id.clone(),
                    app_name: e.app_name.clone(),
                    version: e.version.clone(),
                    change_ref: e.change_ref.clone(),
                    connector_type: e.connector_type,
                    artifact_sha256: e.artifact_sha256.clone(),
                    change_type: e.change_type,
                    site_class: e.site_class,
                    privileged_tooling: e.privileged_tooling,
                    critical_infrastructure: e.critical_infrastructure,
                    rollback_validated: e.rollback_validated,
                    status: Status::AwaitingCab,
                    start_ring: e.start_ring,
                    current_ring: e.start_ring,
                    target_ring: e.target_ring,
                    risk_score: e.risk.score,
                    risk_model_version: e.risk.model_version.clone(),
                    risk_threshold: e.risk.threshold,
                    requires_cab: e.risk.requires_cab,
                    cab_required_reason: e.risk.cab_required_reason.clone(),
                    cab_approved: false,
                    retro_approval_pending: false,
                    retro_approval_due_at: None,
                    retro_approval_overdue: false,
                    rollback_required: false,
                    requested_by: e.meta.actor.subject.clone(),
                    approved_by: None,
                    rejected_by: None,
                    rejection_reason: None,
                    created_at: e.meta.occurred_at,
                    updated_at: e.meta.occurred_at,
                    stream_version: 1,
                    ring_entered_at: None,
                    ring_first_deployed_at: None,
                    ring_compliant_at: None,
                    first_deployed_at: None,
                    latest_report: None,
                    last_promotion: None,
                    connector_actions: BTreeMap::new(),
                    last_drift: None,
                    status_rejected: None,
                    last_pushed: None,
                    cost: crate::cost::CostMeter::opened(event),
                    forecast: crate::forecast::Forecaster::default(),
                })
            }
            (None, _) => return None,
            (Some(s), DeploymentEvent::DeploymentCreated(_)) => return Some(s),
            (Some(s), _) => s,
        };
        state.cost.charge(event);
        state.forecast.fold(event);
        let at = event.meta().occurred_at;
        match event {
            DeploymentEvent::DeploymentCreated(_) => {}
            DeploymentEvent::DeploymentApproved(e) => {
                state.approved_by = Some(e.approver.clone());
                match e.basis {
                    ApprovalBasis::Policy | ApprovalBasis::Cab => {
                        state.cab_approved = e.basis == ApprovalBasis::Cab;
                        state.status = Status::Approved;
                        state.ring_entered_at = Some(at);
                    }
                    ApprovalBasis::EmergencyProvisional => {
                        state.retro_approval_pending = true;
                        state.status = Status::Approved;
                        state.ring_entered_at = Some(at);
                    }
                    ApprovalBasis::CabRetrospective => {
                        state.cab_approved = true;
                        state.retro_approval_pending = false;
                    }
                }
            }
            // A decision on an intent awaiting CAB, or on an emergency change never deployed,
            // ends it; a retrospective rejection of a deployed change requires its rollback.
            DeploymentEvent::DeploymentRejected(e) => {
                state.retro_approval_pending = false;
                state.rejected_by = Some(e.meta.actor.subject.clone());
                state.rejection_reason = Some(e.reason.clone());
                if !e.retrospective || state.first_deployed_at.is_none() {
                    state.status = Status::Rejected;
                } else if state.status != Status::RolledBack {
                    state.rollback_required = true;
                }
            }
            DeploymentEvent::DeploymentDeployed(e) => {
                state.status = Status::Deployed;
                if e.retro_approval_due_at.is_some() {
                    state.retro_approval_due_at = e.retro_approval_due_at;
                }
                state.ring_first_deployed_at.get_or_insert(at);
                state.first_deployed_at.get_or_insert(at);
                if e.first_compliant {
                    state.ring_compliant_at = Some(at);
                }
                state.latest_report = Some(RolloutReport {
                    target_devices: e.target_devices,
                    succeeded: e.succeeded,
                    failed: e.failed,
                    incidents: e.incidents,
                    success_rate: e.success_rate,
                });
                // A result was accepted: the connector answers properly again.
                state.status_rejected = None;
                if let Some(sequence) = e.sequence {
                    state.last_pushed = Some(PushedSeen {
                        ring: e.ring,
                        sequence,
                        counts: (e.target_devices, e.succeeded, e.failed, e.incidents),
                    });
                }
            }
            DeploymentEvent::PromotionGateEvaluated(e) => {
                state.last_promotion = Some(PromotionAttempt {
                    from_ring: e.from_ring,
                    to_ring: e.to_ring,
                    passed: e.passed,
                    gates: e.gates.clone(),
                    evaluated_at: at,
                });
            }
            DeploymentEvent::RingPromoted(e) => {
                state.current_ring = e.to_ring;
                state.status = Status::Approved;
                state.ring_entered_at = Some(at);
                state.ring_first_deployed_at = None;
                state.ring_compliant_at = None;
                state.latest_report = None;
                state.status_rejected = None;
                state.last_pushed = None;
            }
            DeploymentEvent::DeploymentCompleted(_) => state.status = Status::Completed,
            DeploymentEvent::DeploymentRolledBack(_) => {
                state.status = Status::RolledBack;
                state.rollback_required = false;
            }
            DeploymentEvent::RetroApprovalOverdue(_) => state.retro_approval_overdue = true,
            DeploymentEvent::ConnectorDispatched(e) => {
                state
                    .connector_actions
                    .insert(e.idempotency_key.clone(), DispatchOutcome::Dispatched);
            }
            DeploymentEvent::ConnectorDispatchFailed(e) => {
                state
                    .connector_actions
                    .insert(e.idempotency_key.clone(), DispatchOutcome::Failed);
            }
            DeploymentEvent::DeploymentDriftDetected(e) => {
                state.last_drift = Some(DriftSeen {
                    ring: e.ring,
                    reported_installed: e.reported_installed,
                });
            }
            DeploymentEvent::ConnectorStatusRejected(e) => {
                state.status_rejected = Some(StatusRejectedSeen {
                    ring: e.ring,
                    assignment_id: e.assignment_id.clone(),
                    problem: e.problem.clone(),
                    at,
                });
            }
        }
        state.updated_at = at;
        state.stream_version += 1;
        Some(state)
    }

    /// Folds a whole stream, in order.
    pub fn replay<'a>(
        events: impl IntoIterator<Item = &'a DeploymentEvent>,
    ) -> Option<IntentState> {
        events.into_iter().fold(None, IntentState::fold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;
    use crate::fixtures::Script;
    use chrono::Duration;

    #[test]
    fn a_state_stored_before_costs_and_forecasts_still_reads() {
        let mut s = Script::new(1);
        let state = IntentState::replay(&[s.created("app", false)]).unwrap();
        let mut stored = serde_json::to_value(&state).unwrap();
        for later in ["cost", "forecast"] {
            stored.as_object_mut().unwrap().remove(later);
        }
        let read: IntentState = serde_json::from_value(stored).unwrap();
        assert_eq!(read.forecast, crate::forecast::Forecaster::default());
        assert_eq!(read.cost, crate::cost::CostMeter::default());
        assert_eq!(read.app_name, "app");
    }

    #[test]
    fn a_created_intent_that_needs_cab_awaits_it() {
        let s = IntentState::replay(&[Script::new(42).created("7zip", true)]).unwrap();
        assert_eq!(s.status, Status::AwaitingCab);
        assert_eq!(s.current_ring, Ring::Lab);
        assert_eq!(s.requested_by, "alice");
        assert_eq!(s.stream_version, 1);
        assert_eq!(s.ring_entered_at, None);
    }

    #[test]
    fn cab_approval_clears_the_start_ring_and_marks_entry() {
        let mut x = Script::new(42);
        let s = IntentState::replay(&[
            x.created("7zip", true),
            x.approved(3.0, ApprovalBasis::Cab, "carol"),
        ])
        .unwrap();
        assert_eq!(s.status, Status::Approved);
        assert!(s.cab_approved);
        assert_eq!(s.approved_by.as_deref(), Some("carol"));
        assert_eq!(s.ring_entered_at, Some(s.created_at + Duration::hours(3)));
        assert_eq!(s.stream_version, 2);
    }

    #[test]
    fn a_retrospective_rejection_after_deployment_requires_a_rollback() {
        let mut x = Script::new(42);
        let mut events = vec![
            x.created("7zip", true),
            x.approved(
                0.0,
                ApprovalBasis::EmergencyProvisional,
                "policy:emergency_change",
            ),
            x.emergency_deployed(1.0, 48.0),
            x.completed(1.0, Ring::Lab),
        ];
        let s = IntentState::replay(&events).unwrap();
        assert_eq!(
            s.retro_approval_due_at,
            Some(s.created_at + Duration::hours(49))
        );
        events.push(x.retro_overdue(50.0, 49.0));
        assert!(IntentState::replay(&events).unwrap().retro_approval_overdue);
        events.push(x.retro_rejected(51.0));
        let s = IntentState::replay(&events).unwrap();
        assert_eq!(s.status, Status::Completed);
        assert!(s.rollback_required && !s.retro_approval_pending);
        events.push(x.rolled_back(52.0, Ring::Lab, Status::Completed));
        let s = IntentState::replay(&events).unwrap();
        assert_eq!(s.status, Status::RolledBack);
        assert!(!s.rollback_required);
    }

    #[test]
    fn emergency_clearance_waits_for_retrospective_approval() {
        let mut x = Script::new(42);
        let mut events = vec![
            x.created("7zip", true),
            x.approved(
                0.0,
                ApprovalBasis::EmergencyProvisional,
                "policy:emergency_change",
            ),
            x.deployed(1.0, Ring::Lab, 10, true),
        ];
        let s = IntentState::replay(&events).unwrap();
        assert!(s.retro_approval_pending);
        assert!(!s.cab_approved);
        events.push(x.approved(5.0, ApprovalBasis::CabRetrospective, "carol"));
        let s = IntentState::replay(&events).unwrap();
        assert!(!s.retro_approval_pending);
        assert!(s.cab_approved);
        assert_eq!(
            s.status,
            Status::Deployed,
            "retro approval does not change the state"
        );
    }

    #[test]
    fn rollout_reports_track_first_deployment_and_compliance() {
        let mut x = Script::new(42);
        let s = IntentState::replay(&[
            x.created("7zip", false),
            x.approved(0.0, ApprovalBasis::Policy, "policy:risk_model_v1.0"),
            x.deployed(2.0, Ring::Lab, 5, false),
            x.deployed(3.0, Ring::Lab, 10, true),
        ])
        .unwrap();
        assert_eq!(s.status, Status::Deployed);
        let t0 = s.created_at;
        assert_eq!(s.ring_first_deployed_at, Some(t0 + Duration::hours(2)));
        assert_eq!(s.ring_compliant_at, Some(t0 + Duration::hours(3)));
        assert_eq!(s.latest_report.as_ref().unwrap().succeeded, 10);
    }

    #[test]
    fn promotion_enters_the_next_ring_with_fresh_ring_timings() {
        let mut x = Script::new(42);
        let s = IntentState::replay(&[
            x.created("7zip", false),
            x.approved(0.0, ApprovalBasis::Policy, "policy:risk_model_v1.0"),
            x.deployed(2.0, Ring::Lab, 10, true),
            x.evaluated(30.0, Ring::Lab, Ring::Canary, &[(Gate::BakeTime, true)]),
            x.promoted(30.0, Ring::Lab, Ring::Canary),
        ])
        .unwrap();
        assert_eq!(s.current_ring, Ring::Canary);
        assert_eq!(s.status, Status::Approved);
        assert_eq!(s.ring_entered_at, Some(s.created_at + Duration::hours(30)));
        assert_eq!(s.ring_first_deployed_at, None);
        assert_eq!(s.latest_report, None);
        assert!(s.last_promotion.unwrap().passed);
        assert_eq!(s.first_deployed_at, Some(s.created_at + Duration::hours(2)));
    }

    #[test]
    fn terminal_events_set_terminal_states() {
        for (end, status) in [
            (0, Status::Rejected),
            (1, Status::RolledBack),
            (2, Status::Completed),
        ] {
            let mut x = Script::new(42);
            let created = x.created("7zip", true);
            let last = match end {
                0 => x.rejected(1.0),
                1 => x.rolled_back(1.0, Ring::Lab, Status::AwaitingCab),
                _ => x.completed(1.0, Ring::Lab),
            };
            let s = IntentState::replay(&[created, last]).unwrap();
            assert_eq!(s.status, status);
            assert!(s.status.is_terminal());
        }
    }

    #[test]
    fn events_before_creation_or_a_second_creation_change_nothing() {
        let mut x = Script::new(42);
        let approval = x.approved(0.0, ApprovalBasis::Cab, "c");
        assert_eq!(IntentState::replay(&[approval]), None);
        let (first, second) = (x.created("7zip", true), x.created("7zip", false));
        let once = IntentState::replay(std::slice::from_ref(&first));
        let twice = IntentState::replay(&[first, second]);
        assert_eq!(once, twice);
    }

    #[test]
    fn events_round_trip_through_json_with_stable_type_names() {
        let e = Script::new(42).created("7zip", true);
        let json = serde_json::to_value(&e).unwrap();
        assert!(json.get("DeploymentCreated").is_some());
        assert_eq!(e.type_name(), "DeploymentCreated");
        let back: DeploymentEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }
}
