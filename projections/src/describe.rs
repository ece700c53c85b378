//! One line per event, for people: who did it *of record* (the approver a policy approval names,
//! not the requester whose request triggered it) and what it says (reason, comment, gate values,
//! device counts, risk score). `eucora events`, `eucora deployments history`, an evidence bundle's
//! `REPORT.html` and a sample's workpaper all say them the same way.

use crate::event::{ApprovalBasis, DeploymentEvent, FailureClass, GateResult};
use chrono::SecondsFormat;

/// `#SEQ TIME TYPE  SUMMARY`.
pub fn event_line(sequence: i64, event: &DeploymentEvent) -> String {
    let at = event
        .meta()
        .occurred_at
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    format!(
        "#{sequence:<3} {at}  {:<22} {}",
        event.type_name(),
        summary(event)
    )
}

/// What the event records, in words.
pub fn summary(event: &DeploymentEvent) -> String {
    let actor = &event.meta().actor;
    let by = format!("{} ({})", actor.subject, actor.role.as_str());
    match event {
        DeploymentEvent::DeploymentCreated(e) => format!(
            "requested by {by}: {} {} via {:?}, {} to {}, {:?} change, {:?} sites; risk {} \
             ({:?}, {}), {}{}{}",
            e.app_name,
            e.version,
            e.connector_type,
            e.start_ring.as_str(),
            e.target_ring.as_str(),
            e.change_type,
            e.site_class,
            e.risk.score,
            e.risk.threshold,
            if e.risk.requires_cab {
                "CAB required"
            } else {
                "no CAB needed"
            },
            if e.rollback_validated {
                "rollback plan validated"
            } else {
                "rollback plan NOT validated"
            },
            if e.privileged_tooling {
                ", privileged tooling"
            } else {
                ""
            },
            e.justification
                .as_deref()
                .map(|j| format!("; justification: {j}"))
                .unwrap_or_default(),
        ),
        DeploymentEvent::DeploymentApproved(e) => {
            let basis = match e.basis {
                ApprovalBasis::Policy => "by policy (no CAB needed)".to_string(),
                ApprovalBasis::Cab => "by the CAB".to_string(),
                ApprovalBasis::EmergencyProvisional => {
                    "provisionally, as an emergency change (retrospective CAB approval owed)"
                        .to_string()
                }
                ApprovalBasis::CabRetrospective => format!(
                    "retrospectively by the CAB, {}",
                    match e.retro_deadline_met {
                        Some(false) => "LATE (after the deadline)",
                        _ => "within the deadline",
                    }
                ),
            };
            let recorded = if e.approver == actor.subject {
                String::new()
            } else {
                format!("; recorded on the request of {by}")
            };
            format!(
                "approver of record {}, {basis}, for {}{}{recorded}",
                e.approver,
                e.ring.as_str(),
                e.comment
                    .as_deref()
                    .map(|c| format!("; comment: {c}"))
                    .unwrap_or_default(),
            )
        }
        DeploymentEvent::DeploymentRejected(e) => format!(
            "rejected{} by {by} in {}; reason: {}",
            if e.retrospective {
                " retrospectively (a rollback is required)"
            } else {
                ""
            },
            e.ring.as_str(),
            e.reason
        ),
        DeploymentEvent::DeploymentDeployed(e) => format!(
            "reported by {by} for {}: {} of {} devices succeeded, {} failed, {} incidents; \
             success rate {:.3} (threshold {:.3}){}{}",
            e.ring.as_str(),
            e.succeeded,
            e.target_devices,
            e.failed,
            e.incidents,
            e.success_rate,
            e.compliance_threshold,
            if e.first_compliant {
                "; ring compliant"
            } else {
                ""
            },
            e.retro_approval_due_at
                .map(|due| format!(
                    "; retrospective CAB approval due by {}",
                    due.to_rfc3339_opts(SecondsFormat::Secs, true)
                ))
                .unwrap_or_default(),
        ),
        DeploymentEvent::PromotionGateEvaluated(e) => format!(
            "{} to {} {} for {by}: {}",
            e.from_ring.as_str(),
            e.to_ring.as_str(),
            if e.passed { "passed" } else { "BLOCKED" },
            e.gates.iter().map(gate).collect::<Vec<_>>().join(", ")
        ),
        DeploymentEvent::RingPromoted(e) => format!(
            "promoted from {} to {} by {by}",
            e.from_ring.as_str(),
            e.to_ring.as_str()
        ),
        DeploymentEvent::DeploymentCompleted(e) => {
            format!("compliant in its target ring {}", e.ring.as_str())
        }
        DeploymentEvent::DeploymentRolledBack(e) => format!(
            "rolled back by {by} in {} (was {}); reason: {}",
            e.ring.as_str(),
            e.from_status.as_str(),
            e.reason
        ),
        DeploymentEvent::RetroApprovalOverdue(e) => format!(
            "retrospective CAB approval overdue: due by {}, none given; recorded by {by}",
            e.due_at.to_rfc3339_opts(SecondsFormat::Secs, true)
        ),
        DeploymentEvent::ConnectorDispatched(e) => format!(
            "{} {} sent to {} (after {} call{}); key {}",
            e.action.as_str(),
            e.ring.as_str(),
            e.connector_type.as_str(),
            e.attempts,
            if e.attempts == 1 { "" } else { "s" },
            e.idempotency_key
        ),
        DeploymentEvent::ConnectorDispatchFailed(e) => format!(
            "{} {} REFUSED by {} ({} {}): {}",
            e.action.as_str(),
            e.ring.as_str(),
            e.connector_type.as_str(),
            match e.class {
                FailureClass::Permanent => "permanent",
                FailureClass::Policy => "policy",
            },
            e.status,
            e.detail
        ),
        DeploymentEvent::DeploymentDriftDetected(e) => match e.reported_installed {
            None => format!(
                "DRIFT in {}: {} no longer has the assignment ({} devices had it)",
                e.ring.as_str(),
                e.connector_type.as_str(),
                e.expected_installed
            ),
            Some(now) => format!(
                "DRIFT in {}: {} reports {now} devices installed, {} were",
                e.ring.as_str(),
                e.connector_type.as_str(),
                e.expected_installed
            ),
        },
        DeploymentEvent::ConnectorStatusRejected(e) => format!(
            "status of {} REJECTED from {}: {}; nothing reported",
            e.ring.as_str(),
            e.connector_type.as_str(),
            e.problem
        ),
    }
}

/// `success_rate 0.98 >= 0.95 pass`.
pub fn gate(g: &GateResult) -> String {
    let op = if g.bound == "min" { ">=" } else { "<=" };
    let measured = g.measured.map_or_else(|| "none".to_string(), trim);
    format!(
        "{} {measured} {op} {} {}",
        g.gate.as_str(),
        trim(g.threshold),
        if g.passed { "pass" } else { "FAIL" }
    )
}

/// A number without trailing zeros (`0.95`, `86400`).
fn trim(v: f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;
    use crate::fixtures::Script;

    #[test]
    fn a_policy_approval_names_the_policy_as_approver_not_the_requester() {
        let mut x = Script::new(1);
        x.created("7zip", false);
        let mut approved = x.approved(0.0, ApprovalBasis::Policy, "policy:risk_model_v1.0");
        approved.meta_mut().actor = Actor {
            subject: "alice".into(),
            role: Role::Requester,
        };
        let line = summary(&approved);
        assert!(
            line.starts_with("approver of record policy:risk_model_v1.0, by policy"),
            "{line}"
        );
        assert!(
            line.contains("recorded on the request of alice (requester)"),
            "{line}"
        );
    }

    #[test]
    fn each_event_shows_its_substance() {
        let mut x = Script::new(1);
        let created = summary(&x.created("7zip", true));
        assert!(
            created.contains("risk 70") && created.contains("CAB required"),
            "{created}"
        );
        let report = summary(&x.deployed(1.0, Ring::Lab, 9, false));
        assert!(
            report.contains("9 of 10 devices succeeded, 1 failed, 0 incidents"),
            "{report}"
        );
        let gates = summary(&x.evaluated(
            2.0,
            Ring::Lab,
            Ring::Canary,
            &[(Gate::SuccessRate, true), (Gate::CabApproval, false)],
        ));
        assert!(
            gates.contains("BLOCKED") && gates.contains("cab_approval 0 >= 1 FAIL"),
            "{gates}"
        );
        let rejected = summary(&x.retro_rejected(3.0));
        assert!(
            rejected.contains("retrospectively") && rejected.contains("reason: no"),
            "{rejected}"
        );
        let rolled = summary(&x.rolled_back(4.0, Ring::Lab, Status::Deployed));
        assert!(rolled.contains("reason: bad"), "{rolled}");
        let late = summary(&x.retro_overdue(50.0, 49.0));
        assert!(late.contains("due by 2026-01-03T01:00:00Z"), "{late}");
    }
}
