//! Rollout rules of the `DeploymentIntent` aggregate: reports (by hand, polled or pushed by a
//! connector) and gated promotion.

use super::*;

/// Whether `actor` may push `pushed` for the intent: its own connector's principal, for an
/// assignment it was sent, with a sequence after the last it pushed in the ring.
pub(super) fn pushed_in_order(
    actor: &Actor,
    state: &IntentState,
    pushed: &PushedReport,
) -> Result<(), DomainError> {
    let ring = pushed.report.ring;
    let assignment = assignment_id(state.id, ring);
    let owner = state.connector_type.as_str();
    let pusher = actor
        .subject
        .strip_prefix("connector:")
        .unwrap_or(&actor.subject);
    if actor.role != Role::Connector || pusher != owner {
        return Err(DomainError::NotOwnAssignment {
            assignment,
            owner: owner.to_string(),
        });
    }
    let publish = idempotency_key(state.id, ring, ConnectorAction::Publish);
    if state.connector_actions.get(&publish) != Some(&DispatchOutcome::Dispatched) {
        return Err(DomainError::NotSent {
            connector: owner.to_string(),
            assignment,
        });
    }
    match &state.last_pushed {
        Some(last) if last.ring == ring && pushed.sequence < last.sequence => {
            Err(DomainError::StaleSequence {
                assignment,
                sequence: pushed.sequence,
                why: format!("is before sequence {}, applied already", last.sequence),
            })
        }
        Some(last)
            if last.ring == ring
                && pushed.sequence == last.sequence
                && last.counts != pushed.report.counts() =>
        {
            Err(DomainError::StaleSequence {
                assignment,
                sequence: pushed.sequence,
                why: "was applied already with other counts".to_string(),
            })
        }
        _ => Ok(()),
    }
}

pub(super) fn deploy(
    out: &mut Events,
    state: &IntentState,
    r: &RolloutInput,
    sequence: Option<u64>,
) -> Result<(), DomainError> {
    if r.ring != state.current_ring {
        return Err(DomainError::RingMismatch {
            reported: r.ring,
            current: state.current_ring,
        });
    }
    // The ring's last report again, exactly (a client retrying without an Idempotency-Key, a
    // tool sending what it sent before) says nothing new: nothing is appended, and the answer
    // is the intent as it stands.
    if state.latest_report.as_ref().map(|l| l.counts()) == Some(r.counts()) {
        return Ok(());
    }
    if !(1..=MAX_DEVICES).contains(&r.target_devices) {
        return Err(DomainError::invalid(
            "target_devices",
            format!("must be from 1 to {MAX_DEVICES}"),
        ));
    }
    for (field, count) in [
        ("succeeded", r.succeeded),
        ("failed", r.failed),
        ("incidents", r.incidents),
    ] {
        if count > MAX_DEVICES {
            return Err(DomainError::invalid(
                field,
                format!("must be from 0 to {MAX_DEVICES}"),
            ));
        }
    }
    // Both at most MAX_DEVICES: the sum cannot overflow.
    if r.succeeded + r.failed > r.target_devices {
        return Err(DomainError::invalid(
            "succeeded",
            "succeeded + failed must not exceed target_devices",
        ));
    }
    // Counts are cumulative within a ring: a report may not take back what an earlier one said,
    // or a later report could talk a gate round (incidents 2, then 0; fewer target devices for a
    // higher success rate). `failed` may fall: a device that failed may succeed on a retry.
    if let Some(before) = &state.latest_report {
        for (field, was, now) in [
            ("target_devices", before.target_devices, r.target_devices),
            ("succeeded", before.succeeded, r.succeeded),
            ("incidents", before.incidents, r.incidents),
        ] {
            if now < was {
                return Err(DomainError::invalid(
                    field,
                    format!(
                        "counts are cumulative within a ring: {now} is below the {was} already reported in {}",
                        state.current_ring.as_str()
                    ),
                ));
            }
        }
    }
    let ring_policy = out.policy().ring(state.current_ring);
    let threshold = ring_policy.success_rate;
    let compliance_due_at = state
        .ring_entered_at
        .map(|entered| entered + ring_policy.time_to_compliance(state.site_class));
    let success_rate = r.succeeded as f64 / r.target_devices as f64;
    let first_compliant = state.ring_compliant_at.is_none() && success_rate >= threshold;
    let retro_approval_due_at = (state.retro_approval_pending && state.first_deployed_at.is_none())
        .then(|| out.now + out.policy().emergency_retro_window);
    out.push(|meta| {
        DeploymentEvent::DeploymentDeployed(Deployed {
            meta,
            ring: r.ring,
            target_devices: r.target_devices,
            succeeded: r.succeeded,
            failed: r.failed,
            incidents: r.incidents,
            success_rate,
            compliance_threshold: threshold,
            compliance_due_at,
            first_compliant,
            retro_approval_due_at,
            sequence,
        })
    });
    if first_compliant && state.current_ring == state.target_ring {
        out.push(|meta| {
            DeploymentEvent::DeploymentCompleted(Completed {
                meta,
                ring: state.current_ring,
            })
        });
    }
    Ok(())
}

fn gate(gate: Gate, unit: &str, bound: &str, threshold: f64, measured: Option<f64>) -> GateResult {
    let passed = match (bound, measured) {
        (_, None) => false,
        ("min", Some(m)) => m >= threshold,
        (_, Some(m)) => m <= threshold,
    };
    GateResult {
        gate,
        unit: unit.to_string(),
        bound: bound.to_string(),
        threshold,
        measured,
        passed,
    }
}

fn seconds(d: chrono::Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

pub(super) fn promote(out: &mut Events, state: &IntentState) -> Result<(), DomainError> {
    let from = state.current_ring;
    let to = match from.next() {
        Some(next) if from < state.target_ring => next,
        _ => return Err(DomainError::AtTargetRing(from)),
    };
    let policy = out.policy().ring(from).clone();
    let policy_digest = Some(out.policy().digest().to_string());
    let report = state.latest_report.as_ref();
    let mut gates = vec![
        gate(
            Gate::SuccessRate,
            "ratio",
            "min",
            policy.success_rate,
            report.map(|r| r.success_rate),
        ),
        gate(
            Gate::TimeToCompliance,
            "seconds",
            "max",
            seconds(policy.time_to_compliance(state.site_class)),
            state
                .ring_compliant_at
                .zip(state.ring_entered_at)
                .map(|(compliant, entered)| seconds(compliant - entered)),
        ),
        gate(
            Gate::Incidents,
            "count",
            "max",
            policy.max_incidents as f64,
            report.map(|r| r.incidents as f64),
        ),
        gate(
            Gate::BakeTime,
            "seconds",
            "min",
            seconds(policy.min_bake_time),
            state
                .ring_first_deployed_at
                .map(|first| seconds(out.now - first)),
        ),
    ];
    if from == Ring::Lab {
        let validated = if state.rollback_validated { 1.0 } else { 0.0 };
        gates.push(gate(
            Gate::RollbackPlan,
            "bool",
            "min",
            1.0,
            Some(validated),
        ));
    }
    if state.requires_cab {
        let approved = if state.cab_approved { 1.0 } else { 0.0 };
        gates.push(gate(Gate::CabApproval, "bool", "min", 1.0, Some(approved)));
    }
    let passed = gates.iter().all(|g| g.passed);
    out.push(|meta| {
        DeploymentEvent::PromotionGateEvaluated(GateEvaluated {
            meta,
            from_ring: from,
            to_ring: to,
            gates,
            passed,
            policy_digest,
        })
    });
    if passed {
        out.push(|meta| {
            DeploymentEvent::RingPromoted(Promoted {
                meta,
                from_ring: from,
                to_ring: to,
            })
        });
    }
    Ok(())
}
