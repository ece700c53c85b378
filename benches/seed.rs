//! Realistic intents for the benchmarks, written through the real aggregate: deterministic for a
//! seed. Each bench uses some of it.
#![allow(dead_code)]

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
use cqrs_es::{Aggregate, DomainEvent};
use eucora::domain::intent::{Action, Command, CreateIntent, IntentEvent, RolloutInput};
use eucora::domain::{
    DeploymentIntent, DomainServices, FakeClock, Policy, RiskFactors, SequentialIds,
};
use eucora::store::Store;
use eucora_projections::event::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

/// Apps the generator picks from.
pub const APPS: usize = 1000;

/// Writes realistic intents through the aggregate: created (CAB-approved when the risk asks),
/// rolled out ring by ring with a partial then a compliant report, a week's bake, promotion; one
/// in ten rolled back. Deterministic for a seed.
pub struct Generator {
    /// One in this many intents that need the CAB is left awaiting it (0: none).
    pub awaiting_one_in: u32,
    rng: StdRng,
    clock: Arc<FakeClock>,
    services: DomainServices,
    next_intent: u128,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        let clock = Arc::new(FakeClock::new(
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        ));
        let services = DomainServices {
            clock: clock.clone(),
            ids: Arc::new(SequentialIds::default()),
            policy: Arc::new(Policy::default()),
        };
        Generator {
            awaiting_one_in: 0,
            rng: StdRng::seed_from_u64(seed),
            clock,
            services,
            next_intent: 0,
        }
    }

    fn actor(subject: &str, role: Role) -> Actor {
        Actor {
            subject: subject.into(),
            role,
        }
    }

    /// One intent's whole stream.
    pub fn intent(&mut self) -> Vec<SerializedEvent> {
        self.next_intent += 1;
        let id = Uuid::from_u128(self.next_intent);
        let mut intent = DeploymentIntent::default();
        let mut out = Vec::new();
        let mut run =
            |g: &mut Generator, intent: &mut DeploymentIntent, actor: Actor, action: Action| {
                let command = Command {
                    actor,
                    correlation_id: format!("bench-{}", g.next_intent),
                    expected_version: None,
                    action,
                };
                let events = intent.decide(id, command, &g.services).unwrap_or_default();
                for e in events {
                    intent.apply(IntentEvent(e.clone()));
                    let event = IntentEvent(e);
                    out.push(SerializedEvent::new(
                        id.to_string(),
                        out.len() + 1,
                        DeploymentIntent::TYPE.to_string(),
                        event.event_type(),
                        event.event_version(),
                        serde_json::to_value(&event).unwrap(),
                        serde_json::json!({}),
                    ));
                }
            };
        let risk: f64 = self.rng.gen_range(0.05..0.9);
        let target = Ring::ALL[self.rng.gen_range(1..5)];
        let app = format!("app-{:04}", self.rng.gen_range(0..APPS));
        let create = CreateIntent {
            app_name: app,
            version: format!(
                "{}.{}",
                self.rng.gen_range(1..30),
                self.rng.gen_range(0..10)
            ),
            connector_type: ConnectorType::Intune,
            start_ring: Ring::Lab,
            target_ring: target,
            change_type: ChangeType::Normal,
            site_class: SiteClass::Online,
            privileged_tooling: false,
            critical_infrastructure: false,
            rollback_validated: true,
            artifact_sha256: None,
            risk_factors: RiskFactors {
                privilege_impact: risk,
                supply_chain_trust: risk,
                exploitability: risk,
                data_access: risk,
                sbom_vulnerability: risk * 0.5,
                operational_complexity: risk,
                history: risk,
            },
            justification: None,
            source_committed_at: None,
            change_ref: None,
            artifact_bytes: None,
        };
        run(
            self,
            &mut intent,
            Self::actor("req", Role::Requester),
            Action::Create(Box::new(create)),
        );
        let needs_cab = intent
            .state()
            .is_some_and(|s| s.status == Status::AwaitingCab);
        if needs_cab && self.awaiting_one_in > 0 && self.rng.gen_ratio(1, self.awaiting_one_in) {
            return out;
        }
        self.clock.advance(chrono::Duration::minutes(30));
        run(
            self,
            &mut intent,
            Self::actor("cab", Role::CabApprover),
            Action::Approve { comment: None },
        );
        for ring in Ring::ALL.into_iter().take(target.index() + 1) {
            self.clock.advance(chrono::Duration::minutes(40));
            let report = |succeeded| {
                Action::Deploy(RolloutInput {
                    ring,
                    target_devices: 100,
                    succeeded,
                    failed: 100 - succeeded,
                    incidents: 0,
                })
            };
            run(
                self,
                &mut intent,
                Self::actor("ops", Role::Deployer),
                report(60),
            );
            self.clock.advance(chrono::Duration::minutes(40));
            if self.rng.gen_ratio(1, 10) {
                run(
                    self,
                    &mut intent,
                    Self::actor("ops", Role::Deployer),
                    Action::Rollback {
                        reason: "regression".into(),
                    },
                );
                break;
            }
            run(
                self,
                &mut intent,
                Self::actor("ops", Role::Deployer),
                report(100),
            );
            self.clock.advance(chrono::Duration::days(8));
            run(
                self,
                &mut intent,
                Self::actor("ops", Role::Deployer),
                Action::Promote,
            );
        }
        out
    }
}

/// Seeds `n` events (whole intents, so a little over) and returns how many.
pub async fn seed(store: &Store, n: u64) -> u64 {
    seed_with(store, n, Generator::new(42)).await
}

/// [`seed`] with a generator of the caller's.
pub async fn seed_with(store: &Store, n: u64, mut generator: Generator) -> u64 {
    let repo = store.event_repo();
    let (mut written, mut batch) = (0u64, Vec::new());
    while written < n {
        let stream = generator.intent();
        written += stream.len() as u64;
        batch.extend(stream);
        if batch.len() >= 5000 || written >= n {
            repo.persist::<DeploymentIntent>(&batch, None)
                .await
                .expect("seed");
            batch.clear();
        }
    }
    written
}

/// Seeds `intents` whole intents from `generator`; returns how many events that was.
pub async fn seed_intents(store: &Store, intents: u64, mut generator: Generator) -> u64 {
    let repo = store.event_repo();
    let (mut events, mut batch) = (0u64, Vec::new());
    for n in 0..intents {
        let stream = generator.intent();
        events += stream.len() as u64;
        batch.extend(stream);
        if batch.len() >= 5000 || n + 1 == intents {
            repo.persist::<DeploymentIntent>(&batch, None)
                .await
                .expect("seed");
            batch.clear();
        }
    }
    events
}
