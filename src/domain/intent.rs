//! The `DeploymentIntent` aggregate: turns commands into events under the rules of docs/rules.md.
//!
//! `handle` checks every rule and writes events; `apply` folds them through the same
//! [`IntentState::fold`] the read side uses, so there is one lifecycle state machine.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use eucora_projections::event::*;
use eucora_projections::intent::{DispatchOutcome, IntentState};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use super::command::{
    Action, Command, CreateIntent, DispatchRecord, DriftRecord, PushedReport, RolloutInput,
    StatusRejection,
};
use super::policy::Policy;
use super::risk;
use super::{DomainError, DomainServices};

/// The approver recorded when the risk model's policy approves an intent.
pub const POLICY_APPROVER: &str = "policy:risk_model_v1.0";
/// The approver recorded when an emergency change is cleared for its start ring.
pub const EMERGENCY_APPROVER: &str = "policy:emergency_change";
/// The subject the control plane records when it acts on a deadline (role `system`).
pub const DEADLINE_WATCHER: &str = "system:retro_deadline";
/// The subject the control plane records for connector outcomes and drift (role `system`).
pub const DISPATCHER: &str = "system:dispatcher";

const MAX_TEXT: usize = 4096;
/// The longest external change reference (`change_ref`).
const MAX_CHANGE_REF: usize = 64;
/// How far ahead of the server's clock a `source_committed_at` may be (another system's clock).
const MAX_CLOCK_SKEW_MINUTES: i64 = 5;
/// The largest artifact a request may declare: 10 TB.
const MAX_ARTIFACT_BYTES: u64 = 10_000_000_000_000;
/// The most devices a rollout report may count in one ring (and the most incidents): beyond any
/// real estate, far below where arithmetic on the counts could overflow.
pub const MAX_DEVICES: u64 = 10_000_000;

/// The stored form of an event: the shared schema, with cqrs-es's type name and version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IntentEvent(pub DeploymentEvent);

impl DomainEvent for IntentEvent {
    fn event_type(&self) -> String {
        self.0.type_name().to_string()
    }

    fn event_version(&self) -> String {
        self.0.version().to_string()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DeploymentIntent {
    state: Option<IntentState>,
}

impl DeploymentIntent {
    pub fn state(&self) -> Option<&IntentState> {
        self.state.as_ref()
    }

    /// The events a command produces against the current state, or why it is refused.
    pub fn decide(
        &self,
        id: Uuid,
        command: Command,
        services: &DomainServices,
    ) -> Result<Vec<DeploymentEvent>, DomainError> {
        let now = services.clock.now();
        let mut out = Events {
            id,
            now,
            command: &command,
            services,
            events: Vec::new(),
        };
        let version = self.state.as_ref().map_or(0, |s| s.stream_version);
        if let Some(expected) = command.expected_version {
            if expected != version {
                return Err(DomainError::VersionMismatch {
                    expected,
                    actual: version,
                });
            }
        }
        let state = match (&self.state, &command.action) {
            (None, Action::Create(create)) => {
                create_intent(&mut out, create)?;
                return Ok(out.events);
            }
            (Some(_), Action::Create(_)) => return Err(DomainError::AlreadyExists),
            (None, _) => return Err(DomainError::NotFound),
            (Some(state), _) => state,
        };
        let refuse = || DomainError::NotAllowedInState {
            command: command.action.name(),
            status: state.status,
        };
        // A terminal state ends the lifecycle, except for what an emergency change still owes:
        // its retrospective CAB decision (and deadline), and the rollback a retrospective
        // rejection of a completed change requires.
        let still_owed = match &command.action {
            Action::Approve { .. } | Action::Reject { .. } | Action::MarkRetroOverdue => {
                state.retro_approval_pending
            }
            Action::Rollback { .. } => state.rollback_required,
            // What a connector did or reports is a fact whatever the intent's state: a rollback
            // is remediated after the intent is rolled back, and drift matters most after it
            // completed.
            Action::RecordDispatch(_)
            | Action::RecordDrift(_)
            | Action::RecordStatusRejected(_) => true,
            _ => false,
        };
        if state.rollback_required {
            match &command.action {
                Action::Deploy(_) => return Err(DomainError::RollbackRequired("deployed further")),
                Action::Promote => return Err(DomainError::RollbackRequired("promoted")),
                _ => {}
            }
        }
        if state.status.is_terminal() && !still_owed {
            return Err(refuse());
        }
        match &command.action {
            Action::Create(_) => unreachable!("handled above"),
            Action::Approve { comment } => {
                check_text("comment", comment.as_deref(), false)?;
                let basis = if state.status == Status::AwaitingCab {
                    ApprovalBasis::Cab
                } else if state.retro_approval_pending {
                    ApprovalBasis::CabRetrospective
                } else {
                    return Err(refuse());
                };
                if command.actor.subject == state.requested_by {
                    return Err(DomainError::SegregationOfDuties);
                }
                let retro_deadline_met = (basis == ApprovalBasis::CabRetrospective)
                    .then(|| retro_due_at(state, out.policy()).is_none_or(|due| now <= due));
                out.push(|meta| {
                    DeploymentEvent::DeploymentApproved(Approved {
                        meta,
                        approver: command.actor.subject.clone(),
                        basis,
                        ring: state.current_ring,
                        comment: comment.clone(),
                        retro_deadline_met,
                    })
                });
            }
            Action::Reject { reason } => {
                check_text("reason", Some(reason), true)?;
                let retrospective = if state.status == Status::AwaitingCab {
                    false
                } else if state.retro_approval_pending {
                    true
                } else {
                    return Err(refuse());
                };
                if command.actor.subject == state.requested_by {
                    return Err(DomainError::SegregationOfDuties);
                }
                out.push(|meta| {
                    DeploymentEvent::DeploymentRejected(Rejected {
                        meta,
                        ring: state.current_ring,
                        reason: reason.clone(),
                        retrospective,
                    })
                });
            }
            Action::Deploy(report) => {
                if !matches!(state.status, Status::Approved | Status::Deployed) {
                    return Err(refuse());
                }
                deploy(&mut out, state, report, None)?;
            }
            Action::ReportPushed(pushed) => {
                pushed_in_order(&command.actor, state, pushed)?;
                if !matches!(state.status, Status::Approved | Status::Deployed) {
                    return Err(refuse());
                }
                // The same sequence again with the same counts: applied already, nothing new.
                let seen = (pushed.report.ring, pushed.sequence, pushed.report.counts());
                if state
                    .last_pushed
                    .as_ref()
                    .is_some_and(|p| (p.ring, p.sequence, p.counts) == seen)
                {
                    return Ok(Vec::new());
                }
                deploy(&mut out, state, &pushed.report, Some(pushed.sequence))?;
            }
            Action::Promote => {
                if state.status != Status::Deployed {
                    return Err(refuse());
                }
                promote(&mut out, state)?;
            }
            Action::Rollback { reason } => {
                check_text("reason", Some(reason), true)?;
                if command.actor.role == Role::Requester
                    && command.actor.subject != state.requested_by
                {
                    return Err(DomainError::NotOwnIntent);
                }
                out.push(|meta| {
                    DeploymentEvent::DeploymentRolledBack(RolledBack {
                        meta,
                        ring: state.current_ring,
                        from_status: state.status,
                        reason: reason.clone(),
                    })
                });
            }
            Action::MarkRetroOverdue => {
                let due = state
                    .retro_approval_due_at
                    .filter(|due| {
                        state.retro_approval_pending && !state.retro_approval_overdue && now > *due
                    })
                    .ok_or_else(refuse)?;
                out.push(|meta| {
                    DeploymentEvent::RetroApprovalOverdue(RetroApprovalOverdue {
                        meta,
                        ring: state.current_ring,
                        due_at: due,
                    })
                });
            }
            Action::RecordDispatch(record) => {
                if command.actor.role != Role::System {
                    return Err(refuse());
                }
                if state
                    .connector_actions
                    .contains_key(&record.idempotency_key)
                {
                    return Err(DomainError::AlreadyRecorded(format!(
                        "the outcome of connector action {}",
                        record.idempotency_key
                    )));
                }
                check_text(
                    "detail",
                    record.refused.as_ref().map(|r| r.2.as_str()),
                    false,
                )?;
                out.push(|meta| match &record.refused {
                    None => DeploymentEvent::ConnectorDispatched(Dispatched {
                        meta,
                        connector_type: record.connector_type,
                        ring: record.ring,
                        action: record.action,
                        idempotency_key: record.idempotency_key.clone(),
                        attempts: record.attempts,
                    }),
                    Some((class, status, detail)) => {
                        DeploymentEvent::ConnectorDispatchFailed(DispatchFailed {
                            meta,
                            connector_type: record.connector_type,
                            ring: record.ring,
                            action: record.action,
                            idempotency_key: record.idempotency_key.clone(),
                            class: *class,
                            status: *status,
                            detail: detail.clone(),
                            attempts: record.attempts,
                        })
                    }
                });
            }
            Action::RecordDrift(drift) => {
                if command.actor.role != Role::System {
                    return Err(refuse());
                }
                let seen = eucora_projections::intent::DriftSeen {
                    ring: drift.ring,
                    reported_installed: drift.reported_installed,
                };
                if state.last_drift.as_ref() == Some(&seen) {
                    return Err(DomainError::AlreadyRecorded(format!(
                        "drift in {}",
                        drift.ring.as_str()
                    )));
                }
                // What was installed is the stream's own last rollout report in the ring: the
                // reconciler read its figure from a view that may not have applied the latest
                // report yet. Its figure stands only where the stream has none.
                let expected = state
                    .latest_report
                    .as_ref()
                    .filter(|_| state.current_ring == drift.ring)
                    .map_or(drift.expected_installed, |report| report.succeeded);
                if drift.reported_installed.is_some_and(|n| n >= expected) {
                    return Err(DomainError::InvalidInput {
                        field: "reported_installed".into(),
                        reason: format!(
                            "no drift: the last rollout report in {} counted {expected} installed",
                            drift.ring.as_str()
                        ),
                    });
                }
                out.push(|meta| {
                    DeploymentEvent::DeploymentDriftDetected(DriftDetected {
                        meta,
                        connector_type: drift.connector_type,
                        ring: drift.ring,
                        expected_installed: expected,
                        reported_installed: drift.reported_installed,
                    })
                });
            }
            Action::RecordStatusRejected(rejection) => {
                if command.actor.role != Role::System {
                    return Err(refuse());
                }
                let StatusRejection {
                    connector_type,
                    ring,
                    assignment_id,
                    problem,
                } = rejection;
                // Bounded like every other text on the stream; a connector's answer can be long.
                let problem: String = problem.chars().take(MAX_TEXT).collect();
                // Once per distinct problem: the same answer polled again adds nothing.
                if state.status_rejected.as_ref().is_some_and(|seen| {
                    seen.ring == *ring
                        && seen.assignment_id == *assignment_id
                        && seen.problem == problem
                }) {
                    return Err(DomainError::AlreadyRecorded(format!(
                        "the rejected status of {assignment_id}"
                    )));
                }
                out.push(|meta| {
                    DeploymentEvent::ConnectorStatusRejected(StatusRejected {
                        meta,
                        connector_type: *connector_type,
                        ring: *ring,
                        assignment_id: assignment_id.clone(),
                        problem,
                    })
                });
            }
        }
        Ok(out.events)
    }
}

/// Collects a command's events, stamping each with the envelope.
struct Events<'a> {
    id: Uuid,
    now: DateTime<Utc>,
    command: &'a Command,
    services: &'a DomainServices,
    events: Vec<DeploymentEvent>,
}

impl Events<'_> {
    fn push(&mut self, build: impl FnOnce(EventMeta) -> DeploymentEvent) {
        let meta = EventMeta {
            event_id: self.services.ids.event_id(self.now),
            deployment_id: self.id,
            correlation_id: self.command.correlation_id.clone(),
            actor: self.command.actor.clone(),
            occurred_at: self.now,
            schema_version: 0,
        };
        let mut event = build(meta);
        event.meta_mut().schema_version = event.version();
        self.events.push(event);
    }

    fn policy(&self) -> &Policy {
        &self.services.policy
    }
}

/// When an emergency change's retrospective approval falls due: as recorded on its first
/// deployment, or, for a stream written before that was recorded, its first deployment plus the
/// policy's window. `None` until it is first deployed.
fn retro_due_at(state: &IntentState, policy: &Policy) -> Option<DateTime<Utc>> {
    state.retro_approval_due_at.or_else(|| {
        state
            .first_deployed_at
            .map(|first| first + policy.emergency_retro_window)
    })
}

fn check_text(field: &str, value: Option<&str>, required: bool) -> Result<(), DomainError> {
    match value {
        None if required => Err(DomainError::invalid(field, "is required")),
        Some(v) if required && v.trim().is_empty() => {
            Err(DomainError::invalid(field, "must not be empty"))
        }
        Some(v) if v.chars().count() > MAX_TEXT => Err(DomainError::invalid(
            field,
            format!("must be at most {MAX_TEXT} characters"),
        )),
        _ => Ok(()),
    }
}

/// Names and versions: 1 to 128 printable characters, no control characters, not blank.
fn check_label(field: &str, value: &str) -> Result<(), DomainError> {
    // Characters, not bytes: the OpenAPI document's maxLength counts characters.
    if value.trim().is_empty() || value.chars().count() > 128 || value.chars().any(char::is_control)
    {
        return Err(DomainError::invalid(
            field,
            "must be 1 to 128 printable characters",
        ));
    }
    Ok(())
}

fn create_intent(out: &mut Events, c: &CreateIntent) -> Result<(), DomainError> {
    check_label("app_name", &c.app_name)?;
    check_label("version", &c.version)?;
    check_text("justification", c.justification.as_deref(), false)?;
    if let Some(reference) = &c.change_ref {
        let length = reference.chars().count();
        if !(1..=MAX_CHANGE_REF).contains(&length)
            || reference.chars().any(char::is_control)
            || reference.trim() != reference
        {
            return Err(DomainError::invalid(
                "change_ref",
                format!(
                    "must be 1 to {MAX_CHANGE_REF} printable characters with no space at either \
                     end (a ServiceNow CHG number, a Jira key)"
                ),
            ));
        }
    }
    if let Some(sha) = &c.artifact_sha256 {
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DomainError::invalid(
                "artifact_sha256",
                "must be 64 hexadecimal characters",
            ));
        }
    }
    if let Some(committed) = c.source_committed_at {
        if committed > out.now + chrono::Duration::minutes(MAX_CLOCK_SKEW_MINUTES) {
            return Err(DomainError::invalid(
                "source_committed_at",
                format!(
                    "{} is after this request ({}): a change is committed before it is requested",
                    committed.to_rfc3339(),
                    out.now.to_rfc3339()
                ),
            ));
        }
    }
    if c.start_ring > c.target_ring {
        return Err(DomainError::invalid(
            "start_ring",
            format!(
                "{} is past the target ring {}",
                c.start_ring.as_str(),
                c.target_ring.as_str()
            ),
        ));
    }
    if c.start_ring != Ring::Lab && !c.rollback_validated {
        return Err(DomainError::invalid(
            "rollback_validated",
            format!(
                "must be true to start in {}: no deployment outside LAB without a validated rollback plan",
                c.start_ring.as_str()
            ),
        ));
    }
    let cap = out.policy().max_emergency_start_ring;
    if c.change_type == ChangeType::Emergency && c.start_ring > cap {
        return Err(DomainError::invalid(
            "start_ring",
            format!(
                "an emergency change may start at most in {} (the policy's max_emergency_start_ring), not {}",
                cap.as_str(),
                c.start_ring.as_str()
            ),
        ));
    }
    let risk = risk::assess(
        &c.risk_factors,
        c.target_ring,
        c.critical_infrastructure,
        c.privileged_tooling,
        &out.policy().cab,
    )?;
    let risk = RiskAssessment {
        policy_digest: Some(out.policy().digest().to_string()),
        ..risk
    };
    let requires_cab = risk.requires_cab;
    if c.artifact_bytes.is_some_and(|b| b > MAX_ARTIFACT_BYTES) {
        return Err(DomainError::invalid(
            "artifact_bytes",
            format!("must be from 0 to {MAX_ARTIFACT_BYTES} (10 TB)"),
        ));
    }
    let cost_rates = Some(Box::new(out.policy().cost.clone()));
    out.push(|meta| {
        DeploymentEvent::DeploymentCreated(Box::new(Created {
            meta,
            app_name: c.app_name.clone(),
            version: c.version.clone(),
            connector_type: c.connector_type,
            start_ring: c.start_ring,
            target_ring: c.target_ring,
            change_type: c.change_type,
            site_class: c.site_class,
            privileged_tooling: c.privileged_tooling,
            critical_infrastructure: c.critical_infrastructure,
            rollback_validated: c.rollback_validated,
            artifact_sha256: c.artifact_sha256.as_ref().map(|s| s.to_ascii_lowercase()),
            justification: c.justification.clone(),
            risk,
            source_committed_at: c.source_committed_at,
            change_ref: c.change_ref.clone(),
            artifact_bytes: c.artifact_bytes,
            cost_rates,
        }))
    });
    let clearance = match (requires_cab, c.change_type) {
        (false, _) => Some((POLICY_APPROVER, ApprovalBasis::Policy)),
        (true, ChangeType::Emergency) => {
            Some((EMERGENCY_APPROVER, ApprovalBasis::EmergencyProvisional))
        }
        (true, _) => None,
    };
    if let Some((approver, basis)) = clearance {
        out.push(|meta| {
            DeploymentEvent::DeploymentApproved(Approved {
                meta,
                approver: approver.to_string(),
                basis,
                ring: c.start_ring,
                comment: None,
                retro_deadline_met: None,
            })
        });
    }
    Ok(())
}

mod rollout;
use rollout::{deploy, promote, pushed_in_order};

#[cfg(test)]
mod tests;

impl Aggregate for DeploymentIntent {
    const TYPE: &'static str = "deployment";
    type Command = (Uuid, Command);
    type Event = IntentEvent;
    type Error = DomainError;
    type Services = DomainServices;

    async fn handle(
        &mut self,
        (id, command): Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(id, command, services)? {
            sink.write(IntentEvent(event), self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.state = IntentState::fold(self.state.take(), &event.0);
    }
}
