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

/// A gate's verdict in words, with its unit: `success_rate 98 % >= 95 % pass`,
/// `bake_time 5 s >= 2 d FAIL`, `incidents 0 <= 1 pass`, `cab_approval no (required) FAIL`.
pub fn gate(g: &GateResult) -> String {
    let verdict = if g.passed { "pass" } else { "FAIL" };
    if g.unit == "bool" {
        let measured = match g.measured {
            Some(v) if v >= 1.0 => "yes",
            Some(_) => "no",
            None => "none",
        };
        return format!("{} {measured} (required) {verdict}", g.gate.as_str());
    }
    let op = if g.bound == "min" { ">=" } else { "<=" };
    let measured = g
        .measured
        .map_or_else(|| "none".to_string(), |v| with_unit(v, &g.unit));
    format!(
        "{} {measured} {op} {} {verdict}",
        g.gate.as_str(),
        with_unit(g.threshold, &g.unit)
    )
}

/// A gate's number in its unit: a ratio as a percentage, seconds in the largest unit that keeps
/// it readable (`45 s`, `30 min`, `4 h`, `2 d`), a count as it is.
fn with_unit(v: f64, unit: &str) -> String {
    match unit {
        "ratio" => format!("{} %", trim(v * 100.0)),
        "seconds" => {
            let (n, u) = if v < 120.0 {
                (v, "s")
            } else if v < 7_200.0 {
                (v / 60.0, "min")
            } else if v < 172_800.0 {
                (v / 3_600.0, "h")
            } else {
                (v / 86_400.0, "d")
            };
            format!("{} {u}", trim(n))
        }
        _ => trim(v),
    }
}

/// A number without trailing zeros (`0.95`, `86400`).
fn trim(v: f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_say_their_values_with_units() {
        let g = |gate, unit: &str, bound: &str, threshold, measured, passed| {
            super::gate(&GateResult {
                gate,
                unit: unit.into(),
                bound: bound.into(),
                threshold,
                measured,
                passed,
            })
        };
        assert_eq!(
            g(
                Gate::BakeTime,
                "seconds",
                "min",
                172_800.0,
                Some(5.026),
                false
            ),
            "bake_time 5.026 s >= 2 d FAIL"
        );
        assert_eq!(
            g(
                Gate::TimeToCompliance,
                "seconds",
                "max",
                14_400.0,
                Some(1_800.0),
                true
            ),
            "time_to_compliance 30 min <= 4 h pass"
        );
        assert_eq!(
            g(Gate::SuccessRate, "ratio", "min", 0.95, Some(0.98), true),
            "success_rate 98 % >= 95 % pass"
        );
        assert_eq!(
            g(Gate::Incidents, "count", "max", 1.0, None, false),
            "incidents none <= 1 FAIL"
        );
        assert_eq!(
            g(Gate::RollbackPlan, "bool", "min", 1.0, Some(1.0), true),
            "rollback_plan yes (required) pass"
        );
    }
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
            gates.contains("BLOCKED") && gates.contains("cab_approval no (required) FAIL"),
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
