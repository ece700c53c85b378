//! The controls: every verdict of docs/evidence.md for one intent, recomputed from its events,
//! and `controls.json`'s shape.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use eucora_projections::event::{ApprovalBasis, DeploymentEvent, Ring};
use eucora_projections::intent::IntentState;
use serde::{Deserialize, Serialize};

use super::format::Format;

/// A control's verdict for one intent, with the leaf indices that prove it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    pub control: String,
    /// `pass`, `fail`, `not_applicable` or `open`.
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
    /// The time the controls are judged at (RFC 3339, UTC, to the second): the period's end, or
    /// for one deployment the time of the checkpoint's export. A change still open then is
    /// `open` for what cannot be judged yet.
    pub as_of: String,
    /// The population is complete: leaf indices contiguous, and each intent's stream versions
    /// contiguous within the bundle.
    pub population_complete: Verdict,
    pub intents: Vec<IntentControls>,
    /// Informational: the policies the changes were judged under and those activated among the
    /// events (absent when none is named).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<super::governance::PolicyInForce>,
    /// Informational: the commands refused among the events (absent when none was).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_commands: Vec<super::governance::RefusedCommand>,
}

impl ControlsFile {
    /// Every verdict that is `fail`, with its intent's id (none for `population_complete`,
    /// which comes first).
    pub fn failing(&self) -> impl Iterator<Item = (Option<&str>, &Verdict)> {
        std::iter::once((None, &self.population_complete))
            .chain(self.intents.iter().flat_map(|i| {
                i.controls
                    .iter()
                    .map(move |v| (Some(i.deployment_id.as_str()), v))
            }))
            .filter(|(_, v)| v.verdict == FAIL)
    }

    /// How many verdicts are `fail`.
    pub fn failed(&self) -> u64 {
        self.failing().count() as u64
    }

    /// `controls.json` as a bundle of `format` holds it. Before evidence/v5 it was pretty-printed,
    /// one leaf index a line (160 MB at a million events); from v5 every intent, policy and
    /// refused command is one line of compact JSON in the members' order, so a change is one
    /// line to `grep` and the file a quarter of the size.
    pub fn json(&self, format: Format) -> Result<Vec<u8>, serde_json::Error> {
        // About 1.2 kB an intent: sized at once, as growing a hundred megabytes by copies costs
        // more than writing them (and capacity never written is never touched).
        let mut out = Vec::with_capacity(4096 + self.intents.len() * 2048);
        if !format.lean() {
            serde_json::to_writer_pretty(&mut out, self)?;
            out.push(b'\n');
            return Ok(out);
        }
        out.extend_from_slice(b"{\"as_of\":");
        serde_json::to_writer(&mut out, &self.as_of)?;
        out.extend_from_slice(b",\n\"population_complete\":");
        serde_json::to_writer(&mut out, &self.population_complete)?;
        fn lines<T: Serialize>(
            out: &mut Vec<u8>,
            name: &str,
            items: &[T],
        ) -> Result<(), serde_json::Error> {
            out.extend_from_slice(format!(",\n\"{name}\":[").as_bytes());
            for (n, item) in items.iter().enumerate() {
                out.extend_from_slice(if n == 0 { b"\n" } else { b",\n" });
                serde_json::to_writer(&mut *out, item)?;
            }
            out.extend_from_slice(b"\n]");
            Ok(())
        }
        lines(&mut out, "intents", &self.intents)?;
        if !self.policies.is_empty() {
            lines(&mut out, "policies", &self.policies)?;
        }
        if !self.refused_commands.is_empty() {
            lines(&mut out, "refused_commands", &self.refused_commands)?;
        }
        out.extend_from_slice(b"\n}\n");
        Ok(out)
    }
}

/// The four verdicts. A control whose premise is absent is not applicable; one whose premise
/// holds but that cannot be judged before something still due (a review within its window, a
/// rollout in progress) is open.
pub const PASS: &str = "pass";
pub const FAIL: &str = "fail";
pub const NOT_APPLICABLE: &str = "not_applicable";
pub const OPEN: &str = "open";

/// Every control, in the order `controls.json` lists them for each intent.
pub const CONTROLS: [&str; 8] = [
    "approval_before_deployment",
    "requester_not_approver",
    "cab_approval_where_required",
    "emergency_retro_review",
    "promotion_after_passed_gates",
    "rollback_validated_outside_lab",
    "completion_after_compliance",
    "rejected_not_deployed",
];

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

/// The retrospective-approval window when a stream predates recording it on the first
/// deployment: 48 hours, the policy's default.
const RETRO_WINDOW_HOURS: i64 = 48;

/// RFC 3339 in UTC to the second, as every time in the bundle's own files is written.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// When an emergency change's retrospective review falls due: as recorded on its first
/// deployment, or 48 hours after it for streams written before that was recorded; `None` before
/// any deployment.
pub(super) fn retro_due_at(events: &[(u64, DeploymentEvent)]) -> Option<DateTime<Utc>> {
    events.iter().find_map(|(_, e)| match e {
        DeploymentEvent::DeploymentDeployed(d) => Some(
            d.retro_approval_due_at
                .unwrap_or(d.meta.occurred_at + chrono::Duration::hours(RETRO_WINDOW_HOURS)),
        ),
        _ => None,
    })
}

/// An intent's state in words, for a verdict's detail.
fn state_word(state: &Option<IntentState>) -> String {
    match state {
        Some(s) => s.status.as_str().replace('_', " "),
        None => "no state".into(),
    }
}

/// Every control of docs/evidence.md for one intent, from all its events (in leaf order), judged
/// at `as_of`: what is still due after it is `open`, never `fail`.
pub fn intent_controls(
    id: &str,
    events: &[(u64, DeploymentEvent)],
    as_of: DateTime<Utc>,
) -> IntentControls {
    let created = events.iter().find_map(|(i, e)| match e {
        DeploymentEvent::DeploymentCreated(c) => Some((*i, c)),
        _ => None,
    });
    let mut out = Vec::new();
    let Some((created_at, created)) = created else {
        for control in CONTROLS {
            out.push(verdict(
                control,
                NOT_APPLICABLE,
                vec![],
                "the bundle does not hold the intent's creation (see population_complete)",
            ));
        }
        return IntentControls {
            deployment_id: id.into(),
            controls: out,
        };
    };
    let requester = created.meta.actor.subject.clone();
    let state = IntentState::replay(events.iter().map(|(_, e)| e));

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
            NOT_APPLICABLE,
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
                PASS,
                leaves,
                "every ring was cleared before its first deployment",
            )
        } else {
            verdict(
                "approval_before_deployment",
                FAIL,
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
            NOT_APPLICABLE,
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
                PASS,
                human.iter().map(|(i, _)| *i).collect(),
                format!("no decision by the requester {requester}"),
            )
        } else {
            verdict(
                "requester_not_approver",
                FAIL,
                own,
                format!("the requester {requester} decided"),
            )
        }
    });

    // Emergency changes: cleared provisionally, reviewed by the CAB afterwards, by the due time
    // recorded on the first deployment (streams written before it was recorded: 48 hours).
    let provisional = events.iter().find_map(|(i, e)| match e {
        DeploymentEvent::DeploymentApproved(a)
            if a.basis == ApprovalBasis::EmergencyProvisional =>
        {
            Some(*i)
        }
        _ => None,
    });
    let first_deploy_at = events.iter().find_map(|(i, e)| match e {
        DeploymentEvent::DeploymentDeployed(_) => Some(*i),
        _ => None,
    });
    let first_deploy_at = first_deploy_at.zip(retro_due_at(events));
    let review = events.iter().find_map(|(i, e)| match e {
        DeploymentEvent::DeploymentApproved(a) if a.basis == ApprovalBasis::CabRetrospective => {
            Some((*i, a.meta.occurred_at))
        }
        DeploymentEvent::DeploymentRejected(r) if r.retrospective => Some((*i, r.meta.occurred_at)),
        _ => None,
    });
    // Still inside its review window at `as_of`, not yet reviewed: what cannot be judged yet.
    let review_due = match (provisional, first_deploy_at, review) {
        (Some(_), Some((_, due)), None) if due > as_of => Some(due),
        _ => None,
    };

    // A CAB approval where the recorded assessment required one (risk above the threshold,
    // privileged tooling, critical infrastructure by policy), for a change that was deployed.
    let needs_cab = created.risk.requires_cab || created.privileged_tooling;
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
            NOT_APPLICABLE,
            vec![created_at],
            format!(
                "the CAB was not required: risk {} ({}), not privileged tooling",
                created.risk.score,
                created.risk.threshold.words()
            ),
        )
    } else if first_deployed.is_empty() {
        verdict(
            "cab_approval_where_required",
            NOT_APPLICABLE,
            vec![created_at],
            format!("never deployed ({})", state_word(&state)),
        )
    } else if !cab.is_empty() {
        let mut leaves = vec![created_at];
        leaves.extend(&cab);
        verdict(
            "cab_approval_where_required",
            PASS,
            leaves,
            "approved by the CAB",
        )
    } else if let Some(due) = review_due {
        verdict(
            "cab_approval_where_required",
            OPEN,
            vec![created_at],
            format!(
                "emergency change: its retrospective CAB review is due by {}",
                rfc3339(due)
            ),
        )
    } else {
        let mut leaves = vec![created_at];
        leaves.extend(first_deployed.values());
        verdict(
            "cab_approval_where_required",
            FAIL,
            leaves,
            format!(
                "the CAB was required (risk {}{}) and the change was deployed without its approval",
                created.risk.score,
                if created.privileged_tooling {
                    ", privileged tooling"
                } else {
                    ""
                }
            ),
        )
    });

    out.push(match (provisional, first_deploy_at, review) {
        (None, _, _) => verdict(
            "emergency_retro_review",
            NOT_APPLICABLE,
            vec![],
            "not cleared as an emergency change",
        ),
        (Some(p), None, Some((r, _))) => verdict(
            "emergency_retro_review",
            PASS,
            vec![p, r],
            "reviewed before any deployment",
        ),
        (Some(p), None, None) => verdict(
            "emergency_retro_review",
            NOT_APPLICABLE,
            vec![p],
            "never deployed, not yet reviewed",
        ),
        (Some(p), Some((d, due)), None) if due > as_of => verdict(
            "emergency_retro_review",
            OPEN,
            vec![p, d],
            format!("not yet reviewed; due by {}", rfc3339(due)),
        ),
        (Some(p), Some((d, due)), None) => verdict(
            "emergency_retro_review",
            FAIL,
            vec![p, d],
            format!(
                "missing: deployed without the CAB and not reviewed by its due time {}",
                rfc3339(due)
            ),
        ),
        (Some(p), Some((d, due)), Some((r, reviewed))) => {
            if reviewed <= due {
                verdict(
                    "emergency_retro_review",
                    PASS,
                    vec![p, d, r],
                    format!("reviewed by its due time {}", rfc3339(due)),
                )
            } else {
                verdict(
                    "emergency_retro_review",
                    FAIL,
                    vec![p, d, r],
                    format!("late: reviewed after its due time {}", rfc3339(due)),
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
            NOT_APPLICABLE,
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
                PASS,
                leaves,
                "every promotion follows an evaluation with every gate passed",
            )
        } else {
            verdict(
                "promotion_after_passed_gates",
                FAIL,
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
            NOT_APPLICABLE,
            vec![],
            "never deployed outside LAB",
        )
    } else if created.rollback_validated {
        let mut leaves = vec![created_at];
        leaves.extend(&outside);
        verdict(
            "rollback_validated_outside_lab",
            PASS,
            leaves,
            "rollback plan validated at creation",
        )
    } else {
        verdict(
            "rollback_validated_outside_lab",
            FAIL,
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
        None if state.as_ref().is_some_and(|s| s.status.is_terminal()) => verdict(
            "completion_after_compliance",
            NOT_APPLICABLE,
            vec![],
            format!("not completed: {}", state_word(&state)),
        ),
        None => verdict(
            "completion_after_compliance",
            OPEN,
            vec![],
            format!("still in progress: {}", state_word(&state)),
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
                    PASS,
                    vec![d, c],
                    "a compliant report in the target ring came first",
                ),
                None => verdict(
                    "completion_after_compliance",
                    FAIL,
                    vec![c],
                    "completed without a compliant report in the target ring",
                ),
            }
        }
    });
    // A rejected change was not deployed afterwards; one rejected retrospectively, after it was
    // deployed, was rolled back.
    let rejection = events.iter().find_map(|(i, e)| match e {
        DeploymentEvent::DeploymentRejected(r) => Some((*i, r)),
        _ => None,
    });
    out.push(match rejection {
        None => verdict(
            "rejected_not_deployed",
            NOT_APPLICABLE,
            vec![],
            "not rejected",
        ),
        Some((r, rejected)) => {
            let deployed_after: Vec<u64> = events
                .iter()
                .filter(|(i, e)| *i > r && matches!(e, DeploymentEvent::DeploymentDeployed(_)))
                .map(|(i, _)| *i)
                .collect();
            let deployed_before = first_deployed.values().any(|d| *d < r);
            let rolled_back = events.iter().find_map(|(i, e)| match e {
                DeploymentEvent::DeploymentRolledBack(_) => Some(*i),
                _ => None,
            });
            if !deployed_after.is_empty() {
                let mut leaves = vec![r];
                leaves.extend(deployed_after);
                verdict(
                    "rejected_not_deployed",
                    FAIL,
                    leaves,
                    "deployed after its rejection",
                )
            } else if !deployed_before {
                verdict(
                    "rejected_not_deployed",
                    PASS,
                    vec![r],
                    format!(
                        "rejected by {} and never deployed",
                        rejected.meta.actor.subject
                    ),
                )
            } else if let Some(b) = rolled_back {
                verdict(
                    "rejected_not_deployed",
                    PASS,
                    vec![r, b],
                    "rejected retrospectively and rolled back",
                )
            } else {
                verdict(
                    "rejected_not_deployed",
                    FAIL,
                    vec![r],
                    "rejected retrospectively and still deployed: no rollback recorded",
                )
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

    /// The verdict of `control` over literal events (numbered as leaves 0, 1, 2, …), judged a
    /// year after the script's start, when everything due is long past.
    fn judged(events: Vec<DeploymentEvent>, control: &str) -> (String, Vec<u64>) {
        judged_at(events, control, 24.0 * 365.0)
    }

    /// The same, judged `hours` after the script's start.
    fn judged_at(events: Vec<DeploymentEvent>, control: &str, hours: f64) -> (String, Vec<u64>) {
        let numbered: Vec<(u64, DeploymentEvent)> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| (i as u64, e))
            .collect();
        let as_of = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 1, 1, 0, 0, 0).unwrap()
            + chrono::Duration::milliseconds((hours * 3_600_000.0) as i64);
        let v = intent_controls("x", &numbered, as_of)
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
            judged(events.clone(), "cab_approval_where_required"),
            ("fail".into(), vec![0, 2])
        );
        assert_eq!(
            judged_at(events, "cab_approval_where_required", 10.0).0,
            "open",
            "inside its 48 h review window an emergency change cannot be judged yet"
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
            judged(missing.clone(), "emergency_retro_review"),
            ("fail".into(), vec![1, 2])
        );
        assert_eq!(
            judged_at(missing.clone(), "emergency_retro_review", 48.9),
            ("open".into(), vec![1, 2]),
            "due at hour 49 (48 h after the first deployment): open before"
        );
        assert_eq!(judged_at(missing, "emergency_retro_review", 49.1).0, "fail");
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
    fn changes_that_never_deployed_are_not_judged_by_the_approval_controls() {
        let mut x = Script::new(1);
        let awaiting = vec![x.created("app", true)];
        let mut x = Script::new(1);
        let rejected = vec![x.created("app", true), x.rejected(2.0)];
        for events in [awaiting.clone(), rejected] {
            for control in [
                "approval_before_deployment",
                "cab_approval_where_required",
                "emergency_retro_review",
                "promotion_after_passed_gates",
                "rollback_validated_outside_lab",
            ] {
                assert_eq!(
                    judged(events.clone(), control).0,
                    "not_applicable",
                    "{control}"
                );
            }
        }
        assert_eq!(
            judged(awaiting, "completion_after_compliance").0,
            "open",
            "awaiting the CAB at the end of the period: still open"
        );
    }

    #[test]
    fn a_rollout_in_progress_is_open_for_completion() {
        let mut x = Script::new(1);
        let events = vec![
            x.created("app", false),
            x.approved(0.0, B::Policy, "policy:risk_model_v1.0"),
            x.deployed(1.0, Ring::Lab, 10, true),
        ];
        assert_eq!(judged(events, "completion_after_compliance").0, "open");
    }

    #[test]
    fn a_rejected_change_must_stay_undeployed_or_be_rolled_back() {
        let mut x = Script::new(1);
        let rejected = vec![x.created("app", true), x.rejected(2.0)];
        assert_eq!(
            judged(rejected, "rejected_not_deployed"),
            ("pass".into(), vec![1])
        );
        let emergency = |x: &mut Script| {
            vec![
                x.created("app", true),
                x.approved(0.0, B::EmergencyProvisional, "policy:emergency_change"),
                x.deployed(1.0, Ring::Lab, 10, true),
                x.retro_rejected(10.0),
            ]
        };
        let mut x = Script::new(1);
        let mut rolled = emergency(&mut x);
        rolled.push(x.rolled_back(11.0, Ring::Lab, Status::Deployed));
        assert_eq!(
            judged(rolled, "rejected_not_deployed"),
            ("pass".into(), vec![3, 4])
        );
        let mut x = Script::new(1);
        let live = emergency(&mut x);
        assert_eq!(
            judged(live, "rejected_not_deployed"),
            ("fail".into(), vec![3])
        );
        // A stream that deploys after its rejection (written by hand: the aggregate refuses it).
        let mut x = Script::new(1);
        let forged = vec![
            x.created("app", true),
            x.rejected(2.0),
            x.deployed(3.0, Ring::Lab, 10, true),
        ];
        assert_eq!(
            judged(forged, "rejected_not_deployed"),
            ("fail".into(), vec![1, 2])
        );
        let mut x = Script::new(1);
        assert_eq!(
            judged(clean(&mut x), "rejected_not_deployed").0,
            "not_applicable"
        );
    }

    #[test]
    fn an_intent_without_its_creation_is_not_judged() {
        let mut x = Script::new(1);
        let mut events = clean(&mut x);
        events.remove(0);
        let numbered: Vec<(u64, DeploymentEvent)> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| (i as u64 + 10, e))
            .collect();
        let judged = intent_controls("x", &numbered, Utc::now());
        assert_eq!(judged.controls.len(), CONTROLS.len());
        assert!(judged
            .controls
            .iter()
            .all(|v| v.verdict == "not_applicable" && v.detail.contains("creation")));
    }
}
