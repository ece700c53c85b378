//! The controls: every verdict of docs/evidence.md for one intent, recomputed from its events,
//! and `controls.json`'s shape.

use std::collections::BTreeMap;

use eucora_projections::event::{ApprovalBasis, DeploymentEvent, Ring};
use serde::{Deserialize, Serialize};

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

pub(super) fn verdict(
    control: &str,
    v: &str,
    leaves: Vec<u64>,
    detail: impl Into<String>,
) -> Verdict {
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

#[cfg(test)]
mod tests {
    use super::*;
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
}
