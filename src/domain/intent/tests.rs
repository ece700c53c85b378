//! Given/when/then for every command and every refusal of the aggregate.

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use eucora_projections::event::*;
use uuid::Uuid;

use super::*;
use crate::domain::{
    Clock, DomainError, DomainServices, FakeClock, IdSource, Policy, RiskFactors, SequentialIds,
    StatusRejection,
};

const ID: Uuid = Uuid::from_u128(0xd1);

fn actor(subject: &str, role: Role) -> Actor {
    Actor {
        subject: subject.into(),
        role,
    }
}

fn alice() -> Actor {
    actor("alice", Role::Requester)
}
fn carol() -> Actor {
    actor("carol", Role::CabApprover)
}
fn ops() -> Actor {
    actor("ops-bot", Role::Deployer)
}

fn factors(v: f64) -> RiskFactors {
    RiskFactors {
        privilege_impact: v,
        supply_chain_trust: v,
        exploitability: v,
        data_access: v,
        sbom_vulnerability: v,
        operational_complexity: v,
        history: v,
    }
}

/// A low-risk intent from LAB to CANARY (score 21: automatic approval).
fn low_risk() -> CreateIntent {
    CreateIntent {
        app_name: "7-Zip".into(),
        version: "24.08".into(),
        connector_type: ConnectorType::Intune,
        start_ring: Ring::Lab,
        target_ring: Ring::Canary,
        change_type: ChangeType::Normal,
        site_class: SiteClass::Online,
        privileged_tooling: false,
        critical_infrastructure: false,
        rollback_validated: true,
        artifact_sha256: None,
        risk_factors: factors(0.2),
        justification: None,
        source_committed_at: None,
        change_ref: None,
        artifact_bytes: None,
    }
}

/// A high-risk intent (score 75: needs CAB).
fn high_risk() -> CreateIntent {
    CreateIntent {
        risk_factors: factors(0.8),
        ..low_risk()
    }
}

/// A high-risk emergency change: cleared for its start ring at once, CAB approval owed.
fn emergency() -> CreateIntent {
    CreateIntent {
        change_type: ChangeType::Emergency,
        ..high_risk()
    }
}

fn command(by: Actor, action: Action) -> (Uuid, Command) {
    (
        ID,
        Command {
            actor: by,
            correlation_id: "corr-1".into(),
            expected_version: None,
            action,
        },
    )
}

fn report(ring: Ring, target: u64, succeeded: u64, incidents: u64) -> Action {
    Action::Deploy(RolloutInput {
        ring,
        target_devices: target,
        succeeded,
        failed: target - succeeded,
        incidents,
    })
}

fn reason(text: &str) -> String {
    text.to_string()
}

/// Builds a history by running real commands, so `given` streams are ones the aggregate writes.
struct World {
    clock: Arc<FakeClock>,
    services: DomainServices,
    intent: DeploymentIntent,
    history: Vec<IntentEvent>,
}

impl World {
    fn new() -> World {
        World::with_policy(Policy::default())
    }

    fn with_policy(policy: Policy) -> World {
        let clock = Arc::new(FakeClock::new(
            Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap(),
        ));
        let services = DomainServices {
            clock: clock.clone(),
            ids: Arc::new(SequentialIds::default()),
            policy: Arc::new(policy),
        };
        World {
            clock,
            services,
            intent: DeploymentIntent::default(),
            history: vec![],
        }
    }

    fn run(mut self, by: Actor, action: Action) -> World {
        let (id, cmd) = command(by, action);
        let events = self
            .intent
            .decide(id, cmd, &self.services)
            .expect("history command");
        for e in events {
            self.intent.apply(IntentEvent(e.clone()));
            self.history.push(IntentEvent(e));
        }
        self
    }

    fn after(self, by: Duration) -> World {
        self.clock.advance(by);
        self
    }

    fn created(self, c: CreateIntent) -> World {
        self.run(alice(), Action::Create(Box::new(c)))
    }

    /// A low-risk intent deployed compliant in LAB, `bake` hours ago.
    fn deployed_in_lab(bake: i64) -> World {
        World::new()
            .created(low_risk())
            .after(Duration::hours(1))
            .run(ops(), report(Ring::Lab, 10, 10, 0))
            .after(Duration::hours(bake))
    }

    fn when(&self, by: Actor, action: Action) -> Result<Vec<DeploymentEvent>, DomainError> {
        self.when_command(command(by, action))
    }

    fn when_command(&self, cmd: (Uuid, Command)) -> Result<Vec<DeploymentEvent>, DomainError> {
        TestFramework::<DeploymentIntent>::with(self.services.clone())
            .given(self.history.clone())
            .when(cmd)
            .inspect_result()
            .map(|events| events.into_iter().map(|e| e.0).collect())
    }

    fn refuses(&self, by: Actor, action: Action, error: DomainError) {
        TestFramework::<DeploymentIntent>::with(self.services.clone())
            .given(self.history.clone())
            .when(command(by, action))
            .then_expect_error(error);
    }
}

fn types(events: &[DeploymentEvent]) -> Vec<&'static str> {
    events.iter().map(DeploymentEvent::type_name).collect()
}

fn gates(events: &[DeploymentEvent]) -> &GateEvaluated {
    match &events[0] {
        DeploymentEvent::PromotionGateEvaluated(g) => g,
        other => panic!("expected PromotionGateEvaluated, got {other:?}"),
    }
}

fn gate(evaluation: &GateEvaluated, which: Gate) -> &GateResult {
    evaluation
        .gates
        .iter()
        .find(|g| g.gate == which)
        .expect("gate recorded")
}

// --- create ---------------------------------------------------------------------------------

#[test]
fn creating_a_low_risk_intent_records_the_assessment_and_approves_it_by_policy() {
    let events = World::new()
        .when(alice(), Action::Create(Box::new(low_risk())))
        .unwrap();
    assert_eq!(types(&events), ["DeploymentCreated", "DeploymentApproved"]);
    let DeploymentEvent::DeploymentCreated(created) = &events[0] else {
        unreachable!()
    };
    assert_eq!(created.risk.score, 21);
    assert_eq!(created.risk.threshold, ThresholdLabel::AutomatedAllowed);
    assert_eq!(created.risk.factors.len(), 8);
    let DeploymentEvent::DeploymentApproved(approved) = &events[1] else {
        unreachable!()
    };
    assert_eq!(approved.approver, "policy:risk_model_v1.0");
    assert_eq!(approved.basis, ApprovalBasis::Policy);
}

#[test]
fn every_event_carries_the_envelope_from_the_command_and_clock() {
    let world = World::new();
    let now = world.clock.now();
    let events = world
        .when(alice(), Action::Create(Box::new(low_risk())))
        .unwrap();
    for (n, e) in events.iter().enumerate() {
        let m = e.meta();
        assert_eq!(m.event_id, Uuid::from_u128(n as u128 + 1));
        assert_eq!(m.deployment_id, ID);
        assert_eq!(m.correlation_id, "corr-1");
        assert_eq!(m.actor, alice());
        assert_eq!(m.occurred_at, now);
        assert_eq!(m.schema_version, e.version());
    }
}

#[test]
fn production_event_ids_are_uuid_v7_stamped_with_the_command_clock() {
    let at = Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap();
    let id = crate::domain::V7Ids.event_id(at);
    assert_eq!(id.get_version_num(), 7);
    let (secs, _) = id.get_timestamp().unwrap().to_unix();
    assert_eq!(secs as i64, at.timestamp());
}

#[test]
fn creating_a_high_risk_intent_waits_for_cab() {
    let events = World::new()
        .when(alice(), Action::Create(Box::new(high_risk())))
        .unwrap();
    assert_eq!(types(&events), ["DeploymentCreated"]);
    let DeploymentEvent::DeploymentCreated(created) = &events[0] else {
        unreachable!()
    };
    assert_eq!(created.risk.threshold, ThresholdLabel::CabRequired);
}

#[test]
fn privileged_tooling_waits_for_cab_whatever_its_score() {
    let create = CreateIntent {
        privileged_tooling: true,
        ..low_risk()
    };
    let events = World::new()
        .when(alice(), Action::Create(Box::new(create)))
        .unwrap();
    assert_eq!(types(&events), ["DeploymentCreated"]);
}

#[test]
fn an_emergency_change_is_cleared_for_its_start_ring_at_once() {
    let create = CreateIntent {
        change_type: ChangeType::Emergency,
        ..high_risk()
    };
    let events = World::new()
        .when(alice(), Action::Create(Box::new(create)))
        .unwrap();
    assert_eq!(types(&events), ["DeploymentCreated", "DeploymentApproved"]);
    let DeploymentEvent::DeploymentApproved(a) = &events[1] else {
        unreachable!()
    };
    assert_eq!(a.basis, ApprovalBasis::EmergencyProvisional);
    assert_eq!(a.approver, EMERGENCY_APPROVER);
}

#[test]
fn a_critical_sbom_finding_refuses_creation() {
    let mut create = low_risk();
    create.risk_factors.sbom_vulnerability = 1.0;
    World::new().refuses(
        alice(),
        Action::Create(Box::new(create)),
        DomainError::CriticalVulnerability,
    );
}

#[test]
fn a_start_ring_past_the_target_is_refused() {
    let create = CreateIntent {
        start_ring: Ring::Pilot,
        target_ring: Ring::Canary,
        ..low_risk()
    };
    let err = World::new()
        .when(alice(), Action::Create(Box::new(create)))
        .unwrap_err();
    assert!(matches!(err, DomainError::InvalidInput { ref field, .. } if field == "start_ring"));
}

#[test]
fn a_commit_time_is_recorded_and_one_in_the_future_is_refused() {
    let world = World::new();
    let now = world.clock.now();
    let committed = now - Duration::days(2);
    let create = CreateIntent {
        source_committed_at: Some(committed),
        ..low_risk()
    };
    let events = world
        .when(alice(), Action::Create(Box::new(create)))
        .unwrap();
    let DeploymentEvent::DeploymentCreated(c) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(c.source_committed_at, Some(committed));
    // Another system's clock may run a little ahead; a commit an hour from now is a mistake.
    let skewed = CreateIntent {
        source_committed_at: Some(now + Duration::minutes(4)),
        ..low_risk()
    };
    assert!(world
        .when(alice(), Action::Create(Box::new(skewed)))
        .is_ok());
    let future = CreateIntent {
        source_committed_at: Some(now + Duration::hours(1)),
        ..low_risk()
    };
    let err = world
        .when(alice(), Action::Create(Box::new(future)))
        .unwrap_err();
    assert!(
        matches!(err, DomainError::InvalidInput { ref field, .. } if field == "source_committed_at"),
        "{err:?}"
    );
}

#[test]
fn blank_names_and_malformed_digests_are_refused() {
    let blank = CreateIntent {
        app_name: "  ".into(),
        ..low_risk()
    };
    let err = World::new()
        .when(alice(), Action::Create(Box::new(blank)))
        .unwrap_err();
    assert!(matches!(err, DomainError::InvalidInput { ref field, .. } if field == "app_name"));
    let digest = CreateIntent {
        artifact_sha256: Some("abc".into()),
        ..low_risk()
    };
    let err = World::new()
        .when(alice(), Action::Create(Box::new(digest)))
        .unwrap_err();
    assert!(
        matches!(err, DomainError::InvalidInput { ref field, .. } if field == "artifact_sha256")
    );
}

#[test]
fn an_intent_cannot_be_created_twice() {
    World::new().created(low_risk()).refuses(
        alice(),
        Action::Create(Box::new(low_risk())),
        DomainError::AlreadyExists,
    );
}

#[test]
fn commands_on_an_unknown_intent_are_refused() {
    World::new().refuses(ops(), Action::Promote, DomainError::NotFound);
}

// --- approve and reject ---------------------------------------------------------------------

#[test]
fn a_cab_approver_approves_an_intent_awaiting_cab() {
    let world = World::new().created(high_risk()).after(Duration::hours(2));
    let events = world
        .when(
            carol(),
            Action::Approve {
                comment: Some("ok".into()),
            },
        )
        .unwrap();
    let DeploymentEvent::DeploymentApproved(a) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(
        (a.approver.as_str(), a.basis, a.ring),
        ("carol", ApprovalBasis::Cab, Ring::Lab)
    );
    assert_eq!(a.comment.as_deref(), Some("ok"));
}

#[test]
fn the_requester_may_not_approve_its_own_intent_even_as_admin() {
    World::new().created(high_risk()).refuses(
        actor("alice", Role::Admin),
        Action::Approve { comment: None },
        DomainError::SegregationOfDuties,
    );
}

#[test]
fn a_cab_decision_is_final() {
    let approved = World::new()
        .created(high_risk())
        .run(carol(), Action::Approve { comment: None });
    approved.refuses(
        actor("dave", Role::CabApprover),
        Action::Approve { comment: None },
        DomainError::NotAllowedInState {
            command: "approve",
            status: Status::Approved,
        },
    );
    let rejected = World::new().created(high_risk()).run(
        carol(),
        Action::Reject {
            reason: reason("unsigned"),
        },
    );
    rejected.refuses(
        carol(),
        Action::Approve { comment: None },
        DomainError::NotAllowedInState {
            command: "approve",
            status: Status::Rejected,
        },
    );
}

#[test]
fn a_policy_approved_intent_needs_no_cab_approval() {
    World::new().created(low_risk()).refuses(
        carol(),
        Action::Approve { comment: None },
        DomainError::NotAllowedInState {
            command: "approve",
            status: Status::Approved,
        },
    );
}

#[test]
fn a_retrospective_approval_within_the_window_is_on_time() {
    let emergency = emergency();
    let world = World::new()
        .created(emergency)
        .run(ops(), report(Ring::Lab, 10, 10, 0))
        .after(Duration::hours(47));
    let events = world
        .when(carol(), Action::Approve { comment: None })
        .unwrap();
    let DeploymentEvent::DeploymentApproved(a) = &events[0] else {
        panic!()
    };
    assert_eq!(a.basis, ApprovalBasis::CabRetrospective);
    assert_eq!(a.retro_deadline_met, Some(true));
}

#[test]
fn a_retrospective_approval_after_the_window_is_recorded_as_late() {
    let emergency = emergency();
    let world = World::new()
        .created(emergency)
        .run(ops(), report(Ring::Lab, 10, 10, 0))
        .after(Duration::hours(49));
    let events = world
        .when(carol(), Action::Approve { comment: None })
        .unwrap();
    let DeploymentEvent::DeploymentApproved(a) = &events[0] else {
        panic!()
    };
    assert_eq!(a.retro_deadline_met, Some(false));
}

#[test]
fn a_cab_approver_rejects_with_a_reason() {
    let events = World::new()
        .created(high_risk())
        .when(
            carol(),
            Action::Reject {
                reason: reason("no SBOM"),
            },
        )
        .unwrap();
    let DeploymentEvent::DeploymentRejected(r) = &events[0] else {
        panic!()
    };
    assert_eq!(r.reason, "no SBOM");
}

#[test]
fn rejection_needs_a_reason_an_independent_approver_and_a_pending_intent() {
    let world = World::new().created(high_risk());
    let err = world
        .when(
            carol(),
            Action::Reject {
                reason: reason(" "),
            },
        )
        .unwrap_err();
    assert!(matches!(err, DomainError::InvalidInput { ref field, .. } if field == "reason"));
    world.refuses(
        actor("alice", Role::Admin),
        Action::Reject {
            reason: reason("x"),
        },
        DomainError::SegregationOfDuties,
    );
    World::new().created(low_risk()).refuses(
        carol(),
        Action::Reject {
            reason: reason("x"),
        },
        DomainError::NotAllowedInState {
            command: "reject",
            status: Status::Approved,
        },
    );
}

// --- deploy ---------------------------------------------------------------------------------

#[test]
fn nothing_is_deployed_before_cab_approval() {
    World::new().created(high_risk()).refuses(
        ops(),
        report(Ring::Lab, 10, 10, 0),
        DomainError::NotAllowedInState {
            command: "deploy",
            status: Status::AwaitingCab,
        },
    );
}

#[test]
fn a_report_for_another_ring_is_refused() {
    World::new().created(low_risk()).refuses(
        ops(),
        report(Ring::Canary, 10, 10, 0),
        DomainError::RingMismatch {
            reported: Ring::Canary,
            current: Ring::Lab,
        },
    );
}

#[test]
fn impossible_device_counts_are_refused() {
    let world = World::new().created(low_risk());
    let over = Action::Deploy(RolloutInput {
        ring: Ring::Lab,
        target_devices: 10,
        succeeded: 8,
        failed: 3,
        incidents: 0,
    });
    assert!(matches!(
        world.when(ops(), over),
        Err(DomainError::InvalidInput { .. })
    ));
    let empty = Action::Deploy(RolloutInput {
        ring: Ring::Lab,
        target_devices: 0,
        succeeded: 0,
        failed: 0,
        incidents: 0,
    });
    assert!(matches!(
        world.when(ops(), empty),
        Err(DomainError::InvalidInput { .. })
    ));
}

#[test]
fn device_counts_past_the_bound_are_refused_without_overflow() {
    let world = World::new().created(low_risk());
    let field = |action| match world.when(ops(), action) {
        Err(DomainError::InvalidInput { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    let max = u64::MAX;
    let saturated = Action::Deploy(RolloutInput {
        ring: Ring::Lab,
        target_devices: max,
        succeeded: max,
        failed: max,
        incidents: max,
    });
    assert_eq!(field(saturated), "target_devices");
    let huge_incidents = Action::Deploy(RolloutInput {
        ring: Ring::Lab,
        target_devices: 10,
        succeeded: 10,
        failed: 0,
        incidents: 1 << 63,
    });
    assert_eq!(field(huge_incidents), "incidents");
    let past_the_bound = Action::Deploy(RolloutInput {
        ring: Ring::Lab,
        target_devices: MAX_DEVICES,
        succeeded: MAX_DEVICES + 1,
        failed: 0,
        incidents: 0,
    });
    assert_eq!(field(past_the_bound), "succeeded");
    let at_the_bound = world
        .when(ops(), report(Ring::Lab, MAX_DEVICES, MAX_DEVICES, 0))
        .unwrap();
    assert_eq!(at_the_bound.len(), 1);
}

#[test]
fn the_first_report_reaching_the_threshold_marks_the_ring_compliant() {
    let world = World::new()
        .created(low_risk())
        .run(ops(), report(Ring::Lab, 20, 18, 0));
    let events = world.when(ops(), report(Ring::Lab, 20, 19, 0)).unwrap();
    let DeploymentEvent::DeploymentDeployed(d) = &events[0] else {
        panic!()
    };
    assert_eq!(
        (d.success_rate, d.compliance_threshold, d.first_compliant),
        (0.95, 0.95, true)
    );
    let world = world.run(ops(), report(Ring::Lab, 20, 19, 0));
    let events = world.when(ops(), report(Ring::Lab, 20, 20, 0)).unwrap();
    let DeploymentEvent::DeploymentDeployed(d) = &events[0] else {
        panic!()
    };
    assert!(!d.first_compliant, "only the first compliant report counts");
}

#[test]
fn compliance_in_the_target_ring_completes_the_intent() {
    let create = CreateIntent {
        target_ring: Ring::Lab,
        ..low_risk()
    };
    let events = World::new()
        .created(create)
        .when(ops(), report(Ring::Lab, 10, 10, 0))
        .unwrap();
    assert_eq!(
        types(&events),
        ["DeploymentDeployed", "DeploymentCompleted"]
    );
}

// --- promote --------------------------------------------------------------------------------

#[test]
fn promotion_needs_a_rollout_report_first() {
    World::new().created(low_risk()).refuses(
        ops(),
        Action::Promote,
        DomainError::NotAllowedInState {
            command: "promote",
            status: Status::Approved,
        },
    );
}

#[test]
fn promotion_passes_when_every_gate_passes() {
    let events = World::deployed_in_lab(24)
        .when(ops(), Action::Promote)
        .unwrap();
    assert_eq!(types(&events), ["PromotionGateEvaluated", "RingPromoted"]);
    let g = gates(&events);
    assert!(g.passed);
    assert_eq!((g.from_ring, g.to_ring), (Ring::Lab, Ring::Canary));
    let recorded: Vec<Gate> = g.gates.iter().map(|g| g.gate).collect();
    assert_eq!(
        recorded,
        [
            Gate::SuccessRate,
            Gate::TimeToCompliance,
            Gate::Incidents,
            Gate::BakeTime,
            Gate::RollbackPlan
        ]
    );
    let ttc = gate(g, Gate::TimeToCompliance);
    assert_eq!((ttc.threshold, ttc.measured), (4.0 * 3600.0, Some(3600.0)));
}

#[test]
fn promotion_before_the_bake_time_is_blocked_and_recorded() {
    let events = World::deployed_in_lab(23)
        .when(ops(), Action::Promote)
        .unwrap();
    assert_eq!(types(&events), ["PromotionGateEvaluated"]);
    let g = gates(&events);
    assert!(!g.passed);
    let bake = gate(g, Gate::BakeTime);
    assert_eq!(
        (bake.passed, bake.threshold, bake.measured),
        (false, 86400.0, Some(82800.0))
    );
    assert!(gate(g, Gate::SuccessRate).passed);
}

#[test]
fn leaving_lab_needs_a_validated_rollback_plan() {
    let create = CreateIntent {
        rollback_validated: false,
        ..low_risk()
    };
    let events = World::new()
        .created(create)
        .run(ops(), report(Ring::Lab, 10, 10, 0))
        .after(Duration::hours(24))
        .when(ops(), Action::Promote)
        .unwrap();
    let g = gates(&events);
    assert!(!g.passed);
    assert_eq!(
        g.gates
            .iter()
            .filter(|g| !g.passed)
            .map(|g| g.gate)
            .collect::<Vec<_>>(),
        [Gate::RollbackPlan]
    );
}

#[test]
fn an_emergency_change_stays_in_its_start_ring_until_approved_retrospectively() {
    let emergency = emergency();
    let world = World::new()
        .created(emergency)
        .run(ops(), report(Ring::Lab, 10, 10, 0))
        .after(Duration::hours(24));
    let events = world.when(ops(), Action::Promote).unwrap();
    let cab = gate(gates(&events), Gate::CabApproval);
    assert_eq!((cab.passed, cab.measured), (false, Some(0.0)));
    let approved = world.run(carol(), Action::Approve { comment: None });
    let events = approved.when(ops(), Action::Promote).unwrap();
    assert_eq!(types(&events), ["PromotionGateEvaluated", "RingPromoted"]);
}

#[test]
fn low_success_and_incidents_block_promotion_with_measured_values() {
    let events = World::new()
        .created(low_risk())
        .run(ops(), report(Ring::Lab, 100, 90, 2))
        .after(Duration::hours(30))
        .when(ops(), Action::Promote)
        .unwrap();
    let g = gates(&events);
    let rate = gate(g, Gate::SuccessRate);
    assert_eq!((rate.passed, rate.measured), (false, Some(0.9)));
    let incidents = gate(g, Gate::Incidents);
    assert_eq!(
        (incidents.passed, incidents.threshold, incidents.measured),
        (false, 1.0, Some(2.0))
    );
    let ttc = gate(g, Gate::TimeToCompliance);
    assert_eq!(
        (ttc.passed, ttc.measured),
        (false, None),
        "never compliant: nothing to measure"
    );
}

#[test]
fn compliance_later_than_the_site_class_allows_blocks_promotion() {
    let events = World::new()
        .created(low_risk())
        .after(Duration::hours(5))
        .run(ops(), report(Ring::Lab, 10, 10, 0))
        .after(Duration::hours(24))
        .when(ops(), Action::Promote)
        .unwrap();
    let ttc = gate(gates(&events), Gate::TimeToCompliance);
    assert_eq!(
        (ttc.passed, ttc.threshold, ttc.measured),
        (false, 14400.0, Some(18000.0))
    );
}

#[test]
fn gate_thresholds_come_from_the_policy_file() {
    let policy =
        Policy::from_toml("[rings.LAB]\nmin_bake_time = \"1h\"\nsuccess_rate = 0.5").unwrap();
    let events = World::with_policy(policy)
        .created(low_risk())
        .run(ops(), report(Ring::Lab, 10, 6, 0))
        .after(Duration::hours(1))
        .when(ops(), Action::Promote)
        .unwrap();
    let g = gates(&events);
    assert!(g.passed, "{g:?}");
    assert_eq!(gate(g, Gate::SuccessRate).threshold, 0.5);
    assert_eq!(gate(g, Gate::BakeTime).threshold, 3600.0);
}

#[test]
fn an_intent_in_its_target_ring_is_not_promoted_further() {
    let world = World::deployed_in_lab(24).run(ops(), Action::Promote);
    let world = world.run(ops(), report(Ring::Canary, 100, 50, 0));
    world.refuses(
        ops(),
        Action::Promote,
        DomainError::AtTargetRing(Ring::Canary),
    );
}

// --- rollback and versions ------------------------------------------------------------------

#[test]
fn a_deployer_rolls_back_with_a_reason() {
    let events = World::deployed_in_lab(1)
        .when(
            ops(),
            Action::Rollback {
                reason: reason("crash on launch"),
            },
        )
        .unwrap();
    let DeploymentEvent::DeploymentRolledBack(r) = &events[0] else {
        panic!()
    };
    assert_eq!(
        (r.ring, r.from_status, r.reason.as_str()),
        (Ring::Lab, Status::Deployed, "crash on launch")
    );
}

#[test]
fn a_requester_rolls_back_only_its_own_intents() {
    let world = World::new().created(low_risk());
    world.refuses(
        actor("bob", Role::Requester),
        Action::Rollback {
            reason: reason("x"),
        },
        DomainError::NotOwnIntent,
    );
    assert!(world
        .when(
            alice(),
            Action::Rollback {
                reason: reason("x")
            }
        )
        .is_ok());
}

#[test]
fn terminal_intents_refuse_every_command() {
    let world = World::new().created(low_risk()).run(
        ops(),
        Action::Rollback {
            reason: reason("x"),
        },
    );
    world.refuses(
        ops(),
        Action::Rollback {
            reason: reason("again"),
        },
        DomainError::NotAllowedInState {
            command: "rollback",
            status: Status::RolledBack,
        },
    );
    world.refuses(
        ops(),
        report(Ring::Lab, 1, 1, 0),
        DomainError::NotAllowedInState {
            command: "deploy",
            status: Status::RolledBack,
        },
    );
}

#[test]
fn rollback_needs_a_reason() {
    let err = World::new()
        .created(low_risk())
        .when(ops(), Action::Rollback { reason: reason("") })
        .unwrap_err();
    assert!(matches!(err, DomainError::InvalidInput { ref field, .. } if field == "reason"));
}

#[test]
fn a_command_for_an_older_stream_version_is_refused() {
    let world = World::new().created(low_risk());
    let (id, mut cmd) = command(ops(), report(Ring::Lab, 10, 10, 0));
    cmd.expected_version = Some(1);
    assert_eq!(
        world.when_command((id, cmd.clone())),
        Err(DomainError::VersionMismatch {
            expected: 1,
            actual: 2
        })
    );
    cmd.expected_version = Some(2);
    assert!(world.when_command((id, cmd)).is_ok());
}

#[test]
fn the_aggregate_type_is_stable() {
    assert_eq!(DeploymentIntent::TYPE, "deployment");
}

// --- properties -----------------------------------------------------------------------------

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn actors() -> impl Strategy<Value = Actor> {
        prop_oneof![
            Just(alice()),
            Just(actor("bob", Role::Requester)),
            Just(carol()),
            Just(actor("alice", Role::Admin)),
            Just(ops()),
        ]
    }

    fn rings() -> impl Strategy<Value = Ring> {
        prop::sample::select(Ring::ALL.to_vec())
    }

    fn actions() -> impl Strategy<Value = Action> {
        let create = (
            0.0..0.99f64,
            rings(),
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(vec![ChangeType::Normal, ChangeType::Emergency]),
        )
            .prop_map(
                |(risk, target, privileged, rollback_validated, change_type)| {
                    Action::Create(Box::new(CreateIntent {
                        target_ring: target,
                        privileged_tooling: privileged,
                        rollback_validated,
                        change_type,
                        risk_factors: factors(risk),
                        ..low_risk()
                    }))
                },
            );
        let deploy =
            (rings(), 1u64..50, 0u64..50, 0u64..3).prop_map(|(ring, target, ok, incidents)| {
                let succeeded = ok.min(target);
                Action::Deploy(RolloutInput {
                    ring,
                    target_devices: target,
                    succeeded,
                    failed: target - succeeded,
                    incidents,
                })
            });
        prop_oneof![
            1 => create,
            2 => Just(Action::Approve { comment: None }),
            1 => Just(Action::Reject { reason: "no".into() }),
            4 => deploy,
            3 => Just(Action::Promote),
            1 => Just(Action::Rollback { reason: "bad".into() }),
            1 => Just(Action::MarkRetroOverdue),
        ]
    }

    fn steps() -> impl Strategy<Value = Vec<(Actor, Action, i64)>> {
        prop::collection::vec((actors(), actions(), 0i64..60), 1..40)
    }

    /// Checks the lifecycle's invariants (docs/rules.md) for one accepted command.
    fn check(before: Option<&IntentState>, events: &[DeploymentEvent], after: &IntentState) {
        if let Some(b) = before {
            // A terminal intent accepts only what an emergency change still owes: its
            // retrospective decision or deadline, or the rollback a retrospective rejection
            // requires.
            let owed = events.iter().all(|e| match e {
                DeploymentEvent::DeploymentApproved(_)
                | DeploymentEvent::DeploymentRejected(_)
                | DeploymentEvent::RetroApprovalOverdue(_) => b.retro_approval_pending,
                DeploymentEvent::DeploymentRolledBack(_) => b.rollback_required,
                _ => false,
            });
            assert!(
                !b.status.is_terminal() || owed,
                "a terminal intent accepted {events:?}"
            );
            if b.rollback_required {
                assert!(
                    matches!(events, [DeploymentEvent::DeploymentRolledBack(_)]),
                    "only a rollback may follow a retrospective rejection, not {events:?}"
                );
            }
        }
        for (i, e) in events.iter().enumerate() {
            match e {
                DeploymentEvent::DeploymentDeployed(_) => {
                    let b = before.expect("deploy before creation");
                    assert!(
                        matches!(b.status, Status::Approved | Status::Deployed),
                        "deployed from {:?}",
                        b.status
                    );
                }
                DeploymentEvent::DeploymentApproved(a) => {
                    if matches!(
                        a.basis,
                        ApprovalBasis::Cab | ApprovalBasis::CabRetrospective
                    ) {
                        assert_ne!(a.approver, after.requested_by, "segregation of duties");
                    }
                }
                DeploymentEvent::RingPromoted(p) => {
                    let b = before.expect("promotion before creation");
                    assert_eq!(Some(p.to_ring), p.from_ring.next(), "one ring at a time");
                    assert!(p.to_ring <= b.target_ring, "never past the target ring");
                    assert!(
                        !b.requires_cab || b.cab_approved,
                        "CAB approval before leaving the start ring"
                    );
                    assert!(
                        matches!(&events[i - 1], DeploymentEvent::PromotionGateEvaluated(g) if g.passed),
                        "every promotion follows a passed evaluation"
                    );
                }
                DeploymentEvent::DeploymentCompleted(c) => assert_eq!(c.ring, after.target_ring),
                _ => {}
            }
        }
        assert!(after.current_ring <= after.target_ring);
    }

    proptest! {
        #[test]
        fn live_metrics_equal_metrics_replayed_from_the_stored_stream(
            steps in prop::collection::vec((0usize..3, actors(), actions(), 0i64..60), 1..60)
        ) {
            use eucora_projections::metrics::Metrics;
            // Three intents, commands interleaved, each accepted command's events appended to one
            // global stream and folded at once, as the runner would; a scrape now and then.
            let mut worlds = [World::new(), World::new(), World::new()];
            let ids = [Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3)];
            let (mut live, mut stored) = (Metrics::new(2), Vec::<String>::new());
            for (n, (which, by, action, hours)) in steps.into_iter().enumerate() {
                let world = &mut worlds[which];
                world.clock.advance(Duration::hours(hours));
                let (_, cmd) = command(by, action);
                if let Ok(events) = world.intent.decide(ids[which], cmd, &world.services) {
                    for e in events {
                        world.intent.apply(IntentEvent(e.clone()));
                        stored.push(serde_json::to_string(&IntentEvent(e.clone())).unwrap());
                        live.apply(stored.len() as i64, &e);
                    }
                }
                if n % 7 == 0 {
                    let _ = live.render();
                }
            }
            let mut replayed = Metrics::new(2);
            for (position, text) in stored.iter().enumerate() {
                let IntentEvent(e) = serde_json::from_str(text).unwrap();
                replayed.apply(position as i64 + 1, &e);
            }
            prop_assert_eq!(live.render(), replayed.render());
        }

        #[test]
        fn random_command_sequences_never_break_the_domain_invariants(steps in steps()) {
            let mut world = World::new();
            for (by, action, hours) in steps {
                world.clock.advance(Duration::hours(hours));
                let before = world.intent.state().cloned();
                let (id, cmd) = command(by, action);
                match world.intent.decide(id, cmd, &world.services) {
                    Ok(events) => {
                        for e in &events {
                            world.intent.apply(IntentEvent(e.clone()));
                            world.history.push(IntentEvent(e.clone()));
                        }
                        let after = world.intent.state().expect("state after accepted command");
                        check(before.as_ref(), &events, after);
                    }
                    Err(_) => prop_assert_eq!(world.intent.state(), before.as_ref(), "refusal changed state"),
                }
                if let Some(state) = world.intent.state() {
                    prop_assert_eq!(state.stream_version as usize, world.history.len());
                }
            }
            // The stored form (JSON) replays to the same state the aggregate holds.
            let stored: Vec<String> = world.history.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
            let replayed: Vec<DeploymentEvent> = stored
                .iter()
                .map(|s| serde_json::from_str::<IntentEvent>(s).unwrap().0)
                .collect();
            let rebuilt = IntentState::replay(&replayed);
            prop_assert_eq!(rebuilt.as_ref(), world.intent.state());
        }
    }
}

// --- the rules an auditor checks (issue 11) -------------------------------------------------

/// An emergency change (privileged tooling, score 75) targeting LAB only, deployed compliant in
/// LAB on its first report: it completes at once, with no human approval yet.
fn emergency_completed_in_lab() -> World {
    let emergency = CreateIntent {
        privileged_tooling: true,
        target_ring: Ring::Lab,
        ..emergency()
    };
    World::new()
        .created(emergency)
        .run(ops(), report(Ring::Lab, 10, 10, 0))
}

#[test]
fn a_completed_emergency_change_may_still_be_approved_retrospectively() {
    let world = emergency_completed_in_lab();
    assert_eq!(world.intent.state().unwrap().status, Status::Completed);
    assert!(world.intent.state().unwrap().retro_approval_pending);
    let events = world
        .when(carol(), Action::Approve { comment: None })
        .unwrap();
    let DeploymentEvent::DeploymentApproved(a) = &events[0] else {
        panic!()
    };
    assert_eq!(a.basis, ApprovalBasis::CabRetrospective);
    let state =
        IntentState::replay(world.history.iter().map(|e| &e.0).chain(events.iter())).unwrap();
    assert!(!state.retro_approval_pending);
    assert_eq!(state.status, Status::Completed);
}

#[test]
fn a_rolled_back_emergency_change_may_still_be_decided_on_retrospectively() {
    let emergency = emergency();
    let world = World::new()
        .created(emergency)
        .run(ops(), report(Ring::Lab, 10, 2, 0))
        .run(
            ops(),
            Action::Rollback {
                reason: reason("broke logins"),
            },
        );
    let events = world
        .when(
            carol(),
            Action::Reject {
                reason: reason("should never have gone out"),
            },
        )
        .unwrap();
    let DeploymentEvent::DeploymentRejected(r) = &events[0] else {
        panic!()
    };
    assert!(r.retrospective);
}

#[test]
fn a_retrospective_rejection_requires_a_rollback_and_nothing_else() {
    let world = emergency_completed_in_lab().run(
        carol(),
        Action::Reject {
            reason: reason("not an emergency"),
        },
    );
    let state = world.intent.state().unwrap();
    assert!(state.rollback_required);
    assert!(!state.retro_approval_pending);
    assert_eq!(state.status, Status::Completed);
    world.refuses(
        ops(),
        Action::Promote,
        DomainError::RollbackRequired("promoted"),
    );
    world.refuses(
        ops(),
        report(Ring::Lab, 10, 10, 0),
        DomainError::RollbackRequired("deployed further"),
    );
    world.refuses(
        carol(),
        Action::Approve { comment: None },
        DomainError::NotAllowedInState {
            command: "approve",
            status: Status::Completed,
        },
    );
    // Completed is terminal, but the rollback the rejection requires is accepted.
    let events = world
        .when(
            ops(),
            Action::Rollback {
                reason: reason("CAB rejected it"),
            },
        )
        .unwrap();
    assert_eq!(types(&events), ["DeploymentRolledBack"]);
    let rolled = world.run(
        ops(),
        Action::Rollback {
            reason: reason("CAB rejected it"),
        },
    );
    assert!(!rolled.intent.state().unwrap().rollback_required);
}

#[test]
fn a_retrospective_rejection_before_any_deployment_rejects_the_intent() {
    let emergency = emergency();
    let world = World::new().created(emergency).run(
        carol(),
        Action::Reject {
            reason: reason("no"),
        },
    );
    let state = world.intent.state().unwrap();
    assert_eq!(state.status, Status::Rejected);
    assert!(!state.rollback_required);
}

#[test]
fn an_unpromoted_completed_intent_is_not_rolled_back() {
    // The exception is for a retrospective rejection only.
    let world = World::new()
        .created(CreateIntent {
            target_ring: Ring::Lab,
            ..low_risk()
        })
        .run(ops(), report(Ring::Lab, 10, 10, 0));
    world.refuses(
        ops(),
        Action::Rollback {
            reason: reason("why not"),
        },
        DomainError::NotAllowedInState {
            command: "rollback",
            status: Status::Completed,
        },
    );
}

#[test]
fn an_emergency_change_may_not_start_past_the_policy_cap() {
    let emergency = |start| CreateIntent {
        change_type: ChangeType::Emergency,
        privileged_tooling: true,
        start_ring: start,
        target_ring: Ring::Global,
        ..high_risk()
    };
    let err = World::new()
        .when(alice(), Action::Create(Box::new(emergency(Ring::Global))))
        .unwrap_err();
    assert!(
        matches!(&err, DomainError::InvalidInput { field, reason } if field == "start_ring" && reason.contains("PILOT")),
        "{err}"
    );
    assert!(World::new()
        .when(alice(), Action::Create(Box::new(emergency(Ring::Pilot))))
        .is_ok());
    let strict = Policy::from_toml("max_emergency_start_ring = \"LAB\"").unwrap();
    assert!(World::with_policy(strict)
        .when(alice(), Action::Create(Box::new(emergency(Ring::Canary))))
        .is_err());
}

#[test]
fn the_first_emergency_deployment_records_when_retro_approval_falls_due() {
    let emergency = emergency();
    let world = World::new().created(emergency).after(Duration::hours(2));
    let now = world.clock.now();
    let events = world.when(ops(), report(Ring::Lab, 10, 5, 0)).unwrap();
    let DeploymentEvent::DeploymentDeployed(d) = &events[0] else {
        panic!()
    };
    assert_eq!(d.retro_approval_due_at, Some(now + Duration::hours(48)));
    // Only the first report sets it.
    let later = world
        .run(ops(), report(Ring::Lab, 10, 5, 0))
        .after(Duration::hours(1));
    let events = later.when(ops(), report(Ring::Lab, 10, 7, 0)).unwrap();
    let DeploymentEvent::DeploymentDeployed(d) = &events[0] else {
        panic!()
    };
    assert_eq!(d.retro_approval_due_at, None);
    assert_eq!(
        later.intent.state().unwrap().retro_approval_due_at,
        Some(now + Duration::hours(48))
    );
    // A change that needs no retrospective approval has no deadline.
    let plain = World::new().created(low_risk());
    let events = plain.when(ops(), report(Ring::Lab, 10, 5, 0)).unwrap();
    let DeploymentEvent::DeploymentDeployed(d) = &events[0] else {
        panic!()
    };
    assert_eq!(d.retro_approval_due_at, None);
}

#[test]
fn a_missed_retro_deadline_is_recorded_once_and_only_once_past_due() {
    let world = emergency_completed_in_lab();
    let due = world.intent.state().unwrap().retro_approval_due_at.unwrap();
    let watcher = || actor(DEADLINE_WATCHER, Role::System);
    let not_yet = DomainError::NotAllowedInState {
        command: "mark_retro_overdue",
        status: Status::Completed,
    };
    world.refuses(watcher(), Action::MarkRetroOverdue, not_yet.clone());
    let late = world.after(Duration::hours(49));
    let events = late.when(watcher(), Action::MarkRetroOverdue).unwrap();
    let DeploymentEvent::RetroApprovalOverdue(o) = &events[0] else {
        panic!()
    };
    assert_eq!(o.due_at, due);
    let marked = late.run(watcher(), Action::MarkRetroOverdue);
    assert!(marked.intent.state().unwrap().retro_approval_overdue);
    marked.refuses(watcher(), Action::MarkRetroOverdue, not_yet);
    // Late approval is still accepted, and recorded as late.
    let events = marked
        .when(carol(), Action::Approve { comment: None })
        .unwrap();
    let DeploymentEvent::DeploymentApproved(a) = &events[0] else {
        panic!()
    };
    assert_eq!(a.retro_deadline_met, Some(false));
}

#[test]
fn counts_within_a_ring_do_not_go_backwards() {
    let world = World::new().created(low_risk()).run(
        ops(),
        Action::Deploy(RolloutInput {
            ring: Ring::Lab,
            target_devices: 10,
            succeeded: 8,
            failed: 1,
            incidents: 2,
        }),
    );
    for (field, input) in [
        ("incidents", (10, 8, 1, 0)),
        ("target_devices", (9, 8, 1, 2)),
        ("succeeded", (10, 7, 1, 2)),
    ] {
        let err = world
            .when(
                ops(),
                Action::Deploy(RolloutInput {
                    ring: Ring::Lab,
                    target_devices: input.0,
                    succeeded: input.1,
                    failed: input.2,
                    incidents: input.3,
                }),
            )
            .unwrap_err();
        assert!(
            matches!(&err, DomainError::InvalidInput { field: f, .. } if f == field),
            "{field}: {err}"
        );
    }
    // The same counts again, or higher ones, are accepted; a failed device may succeed on retry.
    assert!(world
        .when(
            ops(),
            Action::Deploy(RolloutInput {
                ring: Ring::Lab,
                target_devices: 10,
                succeeded: 9,
                failed: 0,
                incidents: 2,
            })
        )
        .is_ok());
}

#[test]
fn counts_start_afresh_in_the_next_ring() {
    let policy =
        Policy::from_toml("[rings.LAB]\nmin_bake_time = \"0s\"\nmax_incidents = 5").unwrap();
    let world = World::with_policy(policy)
        .created(low_risk())
        .run(ops(), report(Ring::Lab, 10, 10, 1))
        .run(ops(), Action::Promote);
    assert_eq!(world.intent.state().unwrap().current_ring, Ring::Canary);
    assert!(world.when(ops(), report(Ring::Canary, 5, 5, 0)).is_ok());
}

#[test]
fn no_start_outside_lab_without_a_validated_rollback_plan() {
    let unvalidated = |start| CreateIntent {
        start_ring: start,
        rollback_validated: false,
        ..low_risk()
    };
    let err = World::new()
        .when(alice(), Action::Create(Box::new(unvalidated(Ring::Canary))))
        .unwrap_err();
    assert!(
        matches!(&err, DomainError::InvalidInput { field, .. } if field == "rollback_validated"),
        "{err}"
    );
    // Starting in LAB is allowed: the rollback-plan gate keeps it from leaving LAB.
    assert!(World::new()
        .when(alice(), Action::Create(Box::new(unvalidated(Ring::Lab))))
        .is_ok());
}

fn dispatcher() -> Actor {
    actor(DISPATCHER, Role::System)
}

fn dispatch(action: ConnectorAction, refused: Option<(FailureClass, u16, String)>) -> Action {
    Action::RecordDispatch(DispatchRecord {
        connector_type: ConnectorType::Intune,
        ring: Ring::Lab,
        action,
        idempotency_key: crate::connector::idempotency_key(ID, Ring::Lab, action),
        attempts: 2,
        refused,
    })
}

#[test]
fn a_dispatch_outcome_is_recorded_once_per_key_by_the_control_plane_only() {
    let world = World::new().created(low_risk());
    let events = world
        .when(dispatcher(), dispatch(ConnectorAction::Publish, None))
        .unwrap();
    let DeploymentEvent::ConnectorDispatched(d) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(
        (d.ring, d.action, d.attempts, d.idempotency_key.as_str()),
        (
            Ring::Lab,
            ConnectorAction::Publish,
            2,
            format!("{ID}:LAB:publish").as_str()
        )
    );
    // No person may claim a connector's answer, whatever their role.
    let refused = DomainError::NotAllowedInState {
        command: "record_dispatch",
        status: Status::Approved,
    };
    for who in [ops(), actor("root", Role::Admin)] {
        world.refuses(
            who,
            dispatch(ConnectorAction::Publish, None),
            refused.clone(),
        );
    }
    // A second outcome for the same key is refused: one event per action however often sent.
    let sent = world.run(dispatcher(), dispatch(ConnectorAction::Publish, None));
    sent.refuses(
        dispatcher(),
        dispatch(ConnectorAction::Publish, None),
        DomainError::AlreadyRecorded(format!("the outcome of connector action {ID}:LAB:publish")),
    );
    // A rolled-back (terminal) intent still records its remediation, and its refusal.
    let rolled_back = sent.run(
        ops(),
        Action::Rollback {
            reason: "recall".into(),
        },
    );
    let refusal = Some((FailureClass::Permanent, 409, "conflict".to_string()));
    let events = rolled_back
        .when(dispatcher(), dispatch(ConnectorAction::Rollback, refusal))
        .unwrap();
    let DeploymentEvent::ConnectorDispatchFailed(f) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!((f.class, f.status), (FailureClass::Permanent, 409));
}

#[test]
fn the_same_drift_is_recorded_once_and_a_new_one_again() {
    let world = World::new().created(low_risk());
    let drift = |reported| {
        Action::RecordDrift(DriftRecord {
            connector_type: ConnectorType::Intune,
            ring: Ring::Lab,
            expected_installed: 10,
            reported_installed: reported,
        })
    };
    let events = world.when(dispatcher(), drift(Some(7))).unwrap();
    assert!(matches!(
        &events[..],
        [DeploymentEvent::DeploymentDriftDetected(d)] if d.reported_installed == Some(7)
    ));
    let seen = world.run(dispatcher(), drift(Some(7)));
    assert!(matches!(
        seen.when(dispatcher(), drift(Some(7))),
        Err(DomainError::AlreadyRecorded(_))
    ));
    assert!(seen.when(dispatcher(), drift(None)).is_ok());
    assert!(matches!(
        seen.when(ops(), drift(None)),
        Err(DomainError::NotAllowedInState { .. })
    ));
}

#[test]
fn a_drift_is_measured_against_the_streams_last_report_not_the_reconcilers() {
    // The reconciler read 8 from a view that had not applied the report of 10 yet.
    let world = World::deployed_in_lab(1).run(ops(), report(Ring::Lab, 10, 10, 0));
    let drift = |expected, reported| {
        Action::RecordDrift(DriftRecord {
            connector_type: ConnectorType::Intune,
            ring: Ring::Lab,
            expected_installed: expected,
            reported_installed: reported,
        })
    };
    let events = world.when(dispatcher(), drift(8, Some(7))).unwrap();
    assert!(matches!(
        &events[..],
        [DeploymentEvent::DeploymentDriftDetected(d)]
            if (d.expected_installed, d.reported_installed) == (10, Some(7))
    ));
    // As many installed as the last report counted is no drift, whatever the reconciler saw.
    assert!(matches!(
        world.when(dispatcher(), drift(12, Some(10))),
        Err(DomainError::InvalidInput { .. })
    ));
}

#[test]
fn a_rejected_status_is_recorded_once_per_problem_until_a_result_supersedes_it() {
    let world = || World::new().created(low_risk());
    let rejected = |problem: &str| {
        Action::RecordStatusRejected(StatusRejection {
            connector_type: ConnectorType::Intune,
            ring: Ring::Lab,
            assignment_id: format!("{ID}.lab"),
            problem: problem.into(),
        })
    };
    let events = world().when(dispatcher(), rejected("not json")).unwrap();
    assert!(matches!(
        &events[..],
        [DeploymentEvent::ConnectorStatusRejected(r)] if r.problem == "not json"
    ));
    let seen = world().run(dispatcher(), rejected("not json"));
    assert!(matches!(
        seen.when(dispatcher(), rejected("not json")),
        Err(DomainError::AlreadyRecorded(_))
    ));
    // Another problem is recorded; nobody but the control plane records one.
    assert!(seen.when(dispatcher(), rejected("installed 12")).is_ok());
    assert!(matches!(
        seen.when(ops(), rejected("installed 12")),
        Err(DomainError::NotAllowedInState { .. })
    ));
    // An accepted result clears it: the same problem later is news again.
    let reported = seen.run(ops(), report(Ring::Lab, 10, 3, 0));
    assert!(reported.when(dispatcher(), rejected("not json")).is_ok());
    // A connector's words are bounded like every text on the stream.
    let long = "x".repeat(10_000);
    let events = world().when(dispatcher(), rejected(&long)).unwrap();
    let DeploymentEvent::ConnectorStatusRejected(r) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(r.problem.chars().count(), 4096);
}
