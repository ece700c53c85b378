//! Literal events for fold tests: a `Script` writes one intent's events with ascending ids.

use chrono::{DateTime, Duration, TimeZone, Utc};
use uuid::Uuid;

/// The digest the built-in default policy is recorded under: SHA-256 of the empty text.
pub const DEFAULT_POLICY_DIGEST: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

use crate::event::*;

/// Writes the events of one intent, `hours` after 2026-01-01T00:00Z.
pub struct Script {
    pub id: Uuid,
    next: u128,
}

impl Script {
    pub fn new(id: u128) -> Self {
        Script {
            id: Uuid::from_u128(id),
            next: 0,
        }
    }

    pub fn meta(&mut self, hours: f64, subject: &str, role: Role) -> EventMeta {
        self.next += 1;
        EventMeta {
            event_id: Uuid::from_u128(self.id.as_u128() * 1000 + self.next),
            deployment_id: self.id,
            correlation_id: format!("corr-{}", self.next),
            actor: Actor {
                subject: subject.into(),
                role,
            },
            occurred_at: self.at(hours),
            schema_version: 1,
        }
    }

    /// The time `hours` after 2026-01-01T00:00Z.
    pub fn at(&self, hours: f64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
            + Duration::milliseconds((hours * 3_600_000.0) as i64)
    }

    /// Created at hour 0 by alice, LAB → CANARY, online; score 70 when it needs CAB, else 20.
    pub fn created(&mut self, app: &str, requires_cab: bool) -> DeploymentEvent {
        DeploymentEvent::DeploymentCreated(Box::new(Created {
            meta: self.meta(0.0, "alice", Role::Requester),
            app_name: app.into(),
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
            justification: None,
            source_committed_at: None,
            change_ref: None,
            artifact_bytes: None,
            cost_rates: None,
            risk: RiskAssessment {
                model_version: "risk_model_v1.0".into(),
                score: if requires_cab { 70 } else { 20 },
                threshold: if requires_cab {
                    ThresholdLabel::CabRequired
                } else {
                    ThresholdLabel::AutomatedAllowed
                },
                requires_cab,
                factors: vec![],
                cab_required_reason: requires_cab
                    .then(|| "risk score 70 is above the CAB threshold 50".into()),
                policy_digest: Some(DEFAULT_POLICY_DIGEST.into()),
            },
        }))
    }

    pub fn approved(
        &mut self,
        hours: f64,
        basis: ApprovalBasis,
        approver: &str,
    ) -> DeploymentEvent {
        DeploymentEvent::DeploymentApproved(Approved {
            meta: self.meta(hours, approver, Role::CabApprover),
            approver: approver.into(),
            basis,
            ring: Ring::Lab,
            comment: None,
            retro_deadline_met: None,
        })
    }

    pub fn rejected(&mut self, hours: f64) -> DeploymentEvent {
        DeploymentEvent::DeploymentRejected(Rejected {
            meta: self.meta(hours, "carol", Role::CabApprover),
            ring: Ring::Lab,
            reason: "no".into(),
            retrospective: false,
        })
    }

    /// A report on 10 devices.
    pub fn deployed(
        &mut self,
        hours: f64,
        ring: Ring,
        succeeded: u64,
        first_compliant: bool,
    ) -> DeploymentEvent {
        DeploymentEvent::DeploymentDeployed(Deployed {
            meta: self.meta(hours, "ops", Role::Deployer),
            ring,
            target_devices: 10,
            succeeded,
            failed: 10 - succeeded,
            incidents: 0,
            success_rate: succeeded as f64 / 10.0,
            compliance_threshold: 0.95,
            first_compliant,
            retro_approval_due_at: None,
            compliance_due_at: None,
            sequence: None,
        })
    }

    /// The first report of an emergency change, whose retrospective approval falls due
    /// `due_in` hours later.
    pub fn emergency_deployed(&mut self, hours: f64, due_in: f64) -> DeploymentEvent {
        let mut event = self.deployed(hours, Ring::Lab, 10, true);
        if let DeploymentEvent::DeploymentDeployed(d) = &mut event {
            d.retro_approval_due_at =
                Some(d.meta.occurred_at + Duration::milliseconds((due_in * 3_600_000.0) as i64));
        }
        event
    }

    pub fn retro_rejected(&mut self, hours: f64) -> DeploymentEvent {
        let mut event = self.rejected(hours);
        if let DeploymentEvent::DeploymentRejected(r) = &mut event {
            r.retrospective = true;
        }
        event
    }

    /// The deadline watcher's record that the retrospective approval due at `due` hours is late.
    pub fn retro_overdue(&mut self, hours: f64, due: f64) -> DeploymentEvent {
        let meta = self.meta(hours, "system:retro_deadline", Role::System);
        let due_at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
            + Duration::milliseconds((due * 3_600_000.0) as i64);
        DeploymentEvent::RetroApprovalOverdue(RetroApprovalOverdue {
            meta,
            ring: Ring::Lab,
            due_at,
        })
    }

    /// An evaluation whose gates are `(gate, passed)`.
    pub fn evaluated(
        &mut self,
        hours: f64,
        from: Ring,
        to: Ring,
        gates: &[(Gate, bool)],
    ) -> DeploymentEvent {
        DeploymentEvent::PromotionGateEvaluated(GateEvaluated {
            meta: self.meta(hours, "ops", Role::Deployer),
            from_ring: from,
            to_ring: to,
            gates: gates
                .iter()
                .map(|(gate, passed)| GateResult {
                    gate: *gate,
                    unit: "bool".into(),
                    bound: "min".into(),
                    threshold: 1.0,
                    measured: Some(if *passed { 1.0 } else { 0.0 }),
                    passed: *passed,
                })
                .collect(),
            passed: gates.iter().all(|(_, p)| *p),
            policy_digest: Some(DEFAULT_POLICY_DIGEST.into()),
        })
    }

    pub fn promoted(&mut self, hours: f64, from: Ring, to: Ring) -> DeploymentEvent {
        DeploymentEvent::RingPromoted(Promoted {
            meta: self.meta(hours, "ops", Role::Deployer),
            from_ring: from,
            to_ring: to,
        })
    }

    pub fn completed(&mut self, hours: f64, ring: Ring) -> DeploymentEvent {
        DeploymentEvent::DeploymentCompleted(Completed {
            meta: self.meta(hours, "ops", Role::Deployer),
            ring,
        })
    }

    pub fn rolled_back(&mut self, hours: f64, ring: Ring, from: Status) -> DeploymentEvent {
        DeploymentEvent::DeploymentRolledBack(RolledBack {
            meta: self.meta(hours, "ops", Role::Deployer),
            ring,
            from_status: from,
            reason: "bad".into(),
        })
    }
}
