//! The domain metrics (docs/runbook.md) as a fold over the event stream, rendered as Prometheus text.
//!
//! Everything here is a function of the events in global order: durations come from events'
//! `occurred_at`, the `app_name` label's bound is decided by order of first appearance, and the
//! rendering orders every series, so replaying a stream yields the same text byte for byte.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

mod render;

use crate::cost::{Component, CostMeter, CURRENCIES};
use crate::decode::StreamEvent;
use crate::event::{
    ApprovalBasis, ChangeType, ConnectorType, DeploymentEvent, Gate, Ring, SiteClass, Status,
};

/// Buckets for durations: a minute to two weeks (rollouts last hours to days).
pub const DURATION_BUCKETS: &[f64] = &[
    60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0, 259200.0,
    604800.0, 1209600.0,
];
/// Buckets for risk scores.
pub const RISK_BUCKETS: &[f64] = &[10.0, 25.0, 50.0, 75.0, 90.0, 100.0];
/// A completed change's cost, in its currency's units.
pub const COST_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0,
];
/// The `app_name` value that apps past the label limit are counted under.
pub const OTHER_APP: &str = "other";

/// Every event type of every stream: `eucora_events_total` shows each, from 0.
const EVENT_TYPES: [&str; 18] = [
    "DeploymentCreated",
    "DeploymentApproved",
    "DeploymentRejected",
    "DeploymentDeployed",
    "PromotionGateEvaluated",
    "RingPromoted",
    "DeploymentCompleted",
    "DeploymentRolledBack",
    "RetroApprovalOverdue",
    "ConnectorDispatched",
    "ConnectorDispatchFailed",
    "DeploymentDriftDetected",
    "ConnectorStatusRejected",
    "PrincipalCreated",
    "PrincipalTokenRotated",
    "PrincipalRevoked",
    "PolicyActivated",
    "CommandRefused",
];

#[derive(Debug, Clone, PartialEq)]
struct Histogram {
    buckets: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(buckets: &'static [f64]) -> Self {
        Histogram {
            buckets,
            counts: vec![0; buckets.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in self.buckets.iter().zip(self.counts.iter_mut()) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

/// What the fold remembers of each intent.
#[derive(Debug, Clone, PartialEq)]
struct Intent {
    /// The `app_name` label: the app's name, or `other` past the label limit.
    app: Arc<str>,
    /// The app's own name, whatever its label: failures and recoveries are the same app's.
    name: Arc<str>,
    /// Where lead time starts: the change's commit (`source_committed_at`), else its creation.
    lead_from: DateTime<Utc>,
    requires_cab: bool,
    site_class: SiteClass,
    status: Status,
    ring: Ring,
    created_at: DateTime<Utc>,
    ring_entered_at: Option<DateTime<Utc>>,
    ring_compliant: bool,
    /// An emergency change awaiting retrospective approval: `Some(overdue)`.
    retro_awaiting: Option<bool>,
    /// A rollout result was reported in some ring.
    deployed: bool,
    /// What it cost so far, and the `currency` label it is counted under.
    cost: CostMeter,
    currency: &'static str,
    /// When its rollout is expected to be compliant; `None` once the rollout has ended, as an
    /// ended forecaster forecasts nothing more whatever comes (so the many ended intents keep
    /// nothing of it).
    forecast: Option<Box<crate::forecast::Forecaster>>,
}

type Labels = Vec<(&'static str, String)>;

/// The domain metrics, folded from the stream.
///
/// Series are kept under typed keys, so folding an event allocates nothing but a new intent's
/// entry; [`Metrics::render`] turns the keys into labels and sorts the series by them.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    app_label_limit: usize,
    /// Apps that keep their own `app_name` label, by name.
    labelled_apps: HashMap<String, Arc<str>>,
    other_app: Arc<str>,
    intents: HashMap<Uuid, Intent>,
    /// (status, ring, app_name, requires_cab)
    deployments: HashMap<(&'static str, Ring, Arc<str>, bool), u64>,
    /// (ring, status)
    duration: HashMap<(Ring, &'static str), Histogram>,
    time_to_compliance: HashMap<(Ring, SiteClass), Histogram>,
    /// decision
    cab_wait: HashMap<&'static str, Histogram>,
    /// requires_cab
    risk: HashMap<bool, Histogram>,
    /// (from_ring, to_ring, passed)
    promotions: HashMap<(Ring, Ring, bool), u64>,
    /// (ring, gate, passed)
    gate_evaluations: HashMap<(Ring, Gate, bool), u64>,
    attempts: BTreeMap<Ring, (u64, u64)>,
    rollbacks: HashMap<Ring, u64>,
    /// (ring, connector_type)
    drift: HashMap<(Ring, ConnectorType), u64>,
    /// (ring, connector_type)
    status_rejected: HashMap<(Ring, ConnectorType), u64>,
    /// Cost, per (app_name label, currency, ring, component).
    cost: HashMap<(Arc<str>, &'static str, Ring, Component), f64>,
    /// Completed changes' whole cost, per currency.
    cost_per_intent: HashMap<&'static str, Histogram>,
    /// Delivery performance, per ring: lead time to compliance in the ring.
    lead_time: HashMap<Ring, Histogram>,
    /// The same per (app_name, ring), as a sum and a count only: a histogram per app would
    /// multiply the scrape by its buckets.
    app_lead_time: HashMap<(Arc<str>, Ring), (f64, u64)>,
    /// A failure (rollback) in the ring to the app's next compliant version there, per ring.
    recovery_time: HashMap<Ring, Histogram>,
    /// Rollbacks: changes that failed in the ring.
    change_failures: HashMap<(Arc<str>, Ring), u64>,
    /// Emergency changes requested while the app had an unrecovered failure in the ring.
    rework: HashMap<(Arc<str>, Ring), u64>,
    /// The first unrecovered failure of each app (its own name) in each ring, until a version of
    /// the app is compliant there again.
    unrecovered: HashMap<(Arc<str>, Ring), DateTime<Utc>>,
    /// Apps' own names, shared by their intents.
    names: HashMap<String, Arc<str>>,
    /// The cost rates the latest intent was requested under, shared by the intents requested
    /// under the same ones.
    rates: Option<Arc<crate::cost::CostRates>>,
    events: BTreeMap<&'static str, u64>,
    position: i64,
}

/// The `currency` label: the ISO 4217 code (checked when the policy was read), `XXX` (ISO's "no
/// currency") for anything else.
fn currency_label(code: Option<&str>) -> &'static str {
    code.and_then(|c| CURRENCIES.iter().find(|k| **k == c).copied())
        .unwrap_or("XXX")
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

impl Metrics {
    /// `app_label_limit`: how many apps keep their own `app_name` label; the first to appear in
    /// the stream keep it, later ones are counted as `other`.
    pub fn new(app_label_limit: usize) -> Self {
        Metrics {
            app_label_limit,
            labelled_apps: HashMap::new(),
            other_app: Arc::from(OTHER_APP),
            intents: HashMap::new(),
            deployments: HashMap::new(),
            duration: HashMap::new(),
            time_to_compliance: HashMap::new(),
            cab_wait: HashMap::new(),
            risk: HashMap::new(),
            promotions: HashMap::new(),
            gate_evaluations: HashMap::new(),
            attempts: BTreeMap::new(),
            rollbacks: HashMap::new(),
            drift: HashMap::new(),
            status_rejected: HashMap::new(),
            cost: HashMap::new(),
            cost_per_intent: HashMap::new(),
            lead_time: HashMap::new(),
            app_lead_time: HashMap::new(),
            recovery_time: HashMap::new(),
            change_failures: HashMap::new(),
            rework: HashMap::new(),
            unrecovered: HashMap::new(),
            names: HashMap::new(),
            rates: None,
            events: EVENT_TYPES.iter().map(|t| (*t, 0)).collect(),
            position: 0,
        }
    }

    /// The global position of the last event applied.
    pub fn position(&self) -> i64 {
        self.position
    }

    fn app_label(&mut self, app: &str) -> Arc<str> {
        if let Some(label) = self.labelled_apps.get(app) {
            return label.clone();
        }
        if self.labelled_apps.len() < self.app_label_limit {
            let label: Arc<str> = Arc::from(app);
            self.labelled_apps.insert(app.to_string(), label.clone());
            return label;
        }
        self.other_app.clone()
    }

    fn count_status(&mut self, id: Uuid, status: &'static str, ring: Ring) {
        let Some(intent) = self.intents.get(&id) else {
            return;
        };
        let key = (status, ring, intent.app.clone(), intent.requires_cab);
        *self.deployments.entry(key).or_default() += 1;
    }

    /// Folds one event of any stream at its global position: a principal's event, a policy's
    /// or a refused command's only counts in `eucora_events_total`.
    pub fn apply_stream(&mut self, position: i64, event: &StreamEvent) {
        match event {
            StreamEvent::Deployment(e) => self.apply(position, e),
            StreamEvent::Access(_) | StreamEvent::Governance(_) => {
                self.position = position;
                *self.events.entry(event.type_name()).or_default() += 1;
            }
        }
    }

    /// Folds one deployment intent's event at its global position.
    pub fn apply(&mut self, position: i64, event: &DeploymentEvent) {
        self.position = position;
        *self.events.entry(event.type_name()).or_default() += 1;
        let meta = event.meta();
        let (id, at) = (meta.deployment_id, meta.occurred_at);
        if let Some(intent) = self.intents.get_mut(&id) {
            if let Some(forecast) = intent.forecast.as_mut() {
                forecast.fold(event);
                if forecast.ended() {
                    intent.forecast = None;
                }
            }
            for (ring, component, amount) in intent.cost.charge(event) {
                *self
                    .cost
                    .entry((intent.app.clone(), intent.currency, ring, component))
                    .or_default() += amount;
            }
        }
        match event {
            DeploymentEvent::DeploymentCreated(e) => {
                if self.intents.contains_key(&id) {
                    return;
                }
                let app = self.app_label(&e.app_name);
                let name = match self.names.get(e.app_name.as_str()) {
                    Some(name) => name.clone(),
                    None => {
                        let name: Arc<str> = Arc::from(e.app_name.as_str());
                        self.names.insert(e.app_name.clone(), name.clone());
                        name
                    }
                };
                // Rework: an emergency change for an app whose failure in some ring is not yet
                // recovered, counted in the ring of its latest such failure.
                if e.change_type == ChangeType::Emergency {
                    let latest = Ring::ALL
                        .into_iter()
                        .filter_map(|r| Some((*self.unrecovered.get(&(name.clone(), r))?, r)))
                        .max();
                    if let Some((_, ring)) = latest {
                        *self.rework.entry((app.clone(), ring)).or_default() += 1;
                    }
                }
                self.intents.insert(
                    id,
                    Intent {
                        app,
                        name,
                        // A commit a little ahead of this clock (another system's) counts as now.
                        lead_from: e.source_committed_at.map_or(at, |c| c.min(at)),
                        requires_cab: e.risk.requires_cab,
                        site_class: e.site_class,
                        status: Status::AwaitingCab,
                        ring: e.start_ring,
                        created_at: at,
                        ring_entered_at: None,
                        ring_compliant: false,
                        retro_awaiting: None,
                        deployed: false,
                        currency: currency_label(
                            e.cost_rates.as_ref().map(|r| r.currency.as_str()),
                        ),
                        cost: {
                            let mut meter = CostMeter::opened(event);
                            meter.share_rates(&mut self.rates);
                            meter
                        },
                        forecast: Some(Box::default()),
                    },
                );
                self.risk
                    .entry(e.risk.requires_cab)
                    .or_insert_with(|| Histogram::new(RISK_BUCKETS))
                    .observe(e.risk.score as f64);
                if e.risk.requires_cab {
                    self.count_status(id, "pending", e.start_ring);
                }
            }
            DeploymentEvent::DeploymentApproved(e) => {
                let Some(intent) = self.intents.get_mut(&id) else {
                    return;
                };
                let created_at = intent.created_at;
                match e.basis {
                    ApprovalBasis::EmergencyProvisional => intent.retro_awaiting = Some(false),
                    ApprovalBasis::CabRetrospective => intent.retro_awaiting = None,
                    ApprovalBasis::Policy | ApprovalBasis::Cab => {}
                }
                let decision = match e.basis {
                    ApprovalBasis::Policy | ApprovalBasis::EmergencyProvisional => None,
                    ApprovalBasis::Cab => Some("approved"),
                    ApprovalBasis::CabRetrospective => Some("retrospective"),
                };
                if e.basis != ApprovalBasis::CabRetrospective {
                    intent.status = Status::Approved;
                    intent.ring_entered_at = Some(at);
                    intent.ring_compliant = false;
                    let ring = intent.ring;
                    self.count_status(id, "approved", ring);
                }
                if let Some(decision) = decision {
                    self.cab_wait
                        .entry(decision)
                        .or_insert_with(|| Histogram::new(DURATION_BUCKETS))
                        .observe(seconds(created_at, at));
                }
            }
            DeploymentEvent::DeploymentRejected(e) => {
                let Some(intent) = self.intents.get_mut(&id) else {
                    return;
                };
                // A retrospective rejection of a change already deployed leaves it in its state
                // until it is rolled back (as IntentState's fold does).
                let ends_it = !e.retrospective || !intent.deployed;
                intent.retro_awaiting = None;
                if ends_it {
                    intent.status = Status::Rejected;
                }
                let (ring, created_at) = (intent.ring, intent.created_at);
                if ends_it {
                    self.count_status(id, "rejected", ring);
                }
                let decision = if e.retrospective {
                    "retrospective_rejected"
                } else {
                    "rejected"
                };
                self.cab_wait
                    .entry(decision)
                    .or_insert_with(|| Histogram::new(DURATION_BUCKETS))
                    .observe(seconds(created_at, at));
            }
            DeploymentEvent::DeploymentDeployed(e) => {
                let Some(intent) = self.intents.get_mut(&id) else {
                    return;
                };
                intent.status = Status::Deployed;
                intent.deployed = true;
                if e.first_compliant && !intent.ring_compliant {
                    intent.ring_compliant = true;
                    let site = intent.site_class;
                    let lead = seconds(intent.lead_from, at);
                    self.lead_time
                        .entry(e.ring)
                        .or_insert_with(|| Histogram::new(DURATION_BUCKETS))
                        .observe(lead);
                    let (sum, count) = self
                        .app_lead_time
                        .entry((intent.app.clone(), e.ring))
                        .or_default();
                    *sum += lead;
                    *count += 1;
                    if let Some(failed) = self.unrecovered.remove(&(intent.name.clone(), e.ring)) {
                        self.recovery_time
                            .entry(e.ring)
                            .or_insert_with(|| Histogram::new(DURATION_BUCKETS))
                            .observe(seconds(failed, at));
                    }
                    if let Some(entered) = intent.ring_entered_at {
                        let took = seconds(entered, at);
                        self.time_to_compliance
                            .entry((e.ring, site))
                            .or_insert_with(|| Histogram::new(DURATION_BUCKETS))
                            .observe(took);
                        self.duration
                            .entry((e.ring, "success"))
                            .or_insert_with(|| Histogram::new(DURATION_BUCKETS))
                            .observe(took);
                    }
                    self.count_status(id, "success", e.ring);
                }
            }
            DeploymentEvent::PromotionGateEvaluated(e) => {
                *self
                    .promotions
                    .entry((e.from_ring, e.to_ring, e.passed))
                    .or_default() += 1;
                for g in &e.gates {
                    *self
                        .gate_evaluations
                        .entry((e.from_ring, g.gate, g.passed))
                        .or_default() += 1;
                }
                let (passed, evaluated) = self.attempts.entry(e.from_ring).or_default();
                *evaluated += 1;
                if e.passed {
                    *passed += 1;
                }
            }
            DeploymentEvent::RingPromoted(e) => {
                let Some(intent) = self.intents.get_mut(&id) else {
                    return;
                };
                intent.ring = e.to_ring;
                intent.status = Status::Approved;
                intent.ring_entered_at = Some(at);
                intent.ring_compliant = false;
                self.count_status(id, "approved", e.to_ring);
            }
            DeploymentEvent::DeploymentCompleted(_) => {
                if let Some(intent) = self.intents.get_mut(&id) {
                    intent.status = Status::Completed;
                    if intent.cost.currency().is_some() {
                        self.cost_per_intent
                            .entry(intent.currency)
                            .or_insert_with(|| Histogram::new(COST_BUCKETS))
                            .observe(intent.cost.total());
                    }
                }
            }
            DeploymentEvent::RetroApprovalOverdue(_) => {
                if let Some(intent) = self.intents.get_mut(&id) {
                    if intent.retro_awaiting.is_some() {
                        intent.retro_awaiting = Some(true);
                    }
                }
            }
            DeploymentEvent::ConnectorDispatched(_)
            | DeploymentEvent::ConnectorDispatchFailed(_) => {}
            DeploymentEvent::DeploymentDriftDetected(e) => {
                *self.drift.entry((e.ring, e.connector_type)).or_default() += 1;
            }
            DeploymentEvent::ConnectorStatusRejected(e) => {
                *self
                    .status_rejected
                    .entry((e.ring, e.connector_type))
                    .or_default() += 1;
            }
            DeploymentEvent::DeploymentRolledBack(e) => {
                let Some(intent) = self.intents.get_mut(&id) else {
                    return;
                };
                intent.status = Status::RolledBack;
                let entered = intent.ring_entered_at;
                *self.rollbacks.entry(e.ring).or_default() += 1;
                *self
                    .change_failures
                    .entry((intent.app.clone(), e.ring))
                    .or_default() += 1;
                self.unrecovered
                    .entry((intent.name.clone(), e.ring))
                    .or_insert(at);
                if let Some(entered) = entered {
                    self.duration
                        .entry((e.ring, "failed"))
                        .or_insert_with(|| Histogram::new(DURATION_BUCKETS))
                        .observe(seconds(entered, at));
                }
                self.count_status(id, "failed", e.ring);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ApprovalBasis as B, Gate};
    use crate::fixtures::Script;

    fn fold(limit: usize, events: &[DeploymentEvent]) -> String {
        let mut m = Metrics::new(limit);
        for (n, e) in events.iter().enumerate() {
            m.apply(n as i64 + 1, e);
        }
        m.render()
    }

    #[test]
    fn every_stream_counts_in_events_total_and_a_principal_event_in_nothing_else() {
        let mut x = Script::new(1);
        let mut m = Metrics::new(10);
        m.apply_stream(1, &StreamEvent::Deployment(x.created("app", false)));
        let before = m.render();
        let meta = crate::access::AccessMeta {
            event_id: Uuid::from_u128(9),
            principal_id: Uuid::from_u128(8),
            correlation_id: "c".into(),
            actor: crate::event::Actor {
                subject: "cli:root".into(),
                role: crate::event::Role::Admin,
            },
            occurred_at: chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 1, 1, 1, 0, 0)
                .unwrap(),
            schema_version: 1,
        };
        m.apply_stream(
            2,
            &StreamEvent::Access(crate::access::AccessEvent::PrincipalRevoked(
                crate::access::PrincipalRevoked { meta },
            )),
        );
        let after = m.render();
        has(
            &after,
            "eucora_events_total{event_type=\"PrincipalRevoked\"} 1",
        );
        has(
            &after,
            "eucora_events_total{event_type=\"PrincipalCreated\"} 0",
        );
        has(
            &after,
            "eucora_events_total{event_type=\"DeploymentCreated\"} 1",
        );
        let changed: Vec<(&str, &str)> = before
            .lines()
            .zip(after.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            changed,
            [
                (
                    "eucora_events_total{event_type=\"PrincipalRevoked\"} 0",
                    "eucora_events_total{event_type=\"PrincipalRevoked\"} 1"
                ),
                (
                    "eucora_projection_position{projection=\"metrics\"} 1",
                    "eucora_projection_position{projection=\"metrics\"} 2"
                )
            ],
            "a principal's event counts, and moves the position, and nothing else"
        );
    }

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }

    /// A CAB-approved intent rolled out LAB → CANARY and completed.
    fn completed_rollout() -> Vec<DeploymentEvent> {
        let mut x = Script::new(1);
        vec![
            x.created("7zip", true),
            x.approved(2.0, B::Cab, "carol"),
            x.deployed(4.0, Ring::Lab, 9, false),
            x.deployed(5.0, Ring::Lab, 10, true),
            x.evaluated(
                30.0,
                Ring::Lab,
                Ring::Canary,
                &[(Gate::SuccessRate, true), (Gate::BakeTime, true)],
            ),
            x.promoted(30.0, Ring::Lab, Ring::Canary),
            x.deployed(40.0, Ring::Canary, 10, true),
            x.completed(40.0, Ring::Canary),
        ]
    }

    #[test]
    fn a_completed_rollout_counts_each_status_entered_per_ring() {
        let text = fold(10, &completed_rollout());
        let series = |status: &str, ring: &str| {
            format!("deployment_total{{status=\"{status}\",ring=\"{ring}\",app_name=\"7zip\",requires_cab=\"true\"}} 1")
        };
        for (status, ring) in [
            ("pending", "LAB"),
            ("approved", "LAB"),
            ("success", "LAB"),
            ("approved", "CANARY"),
            ("success", "CANARY"),
        ] {
            has(&text, &series(status, ring));
        }
        assert!(!text.contains("status=\"failed\""));
        has(
            &text,
            "deployments_in_state{state=\"completed\",ring=\"CANARY\"} 1",
        );
        has(
            &text,
            "deployments_in_state{state=\"approved\",ring=\"LAB\"} 0",
        );
        has(
            &text,
            "eucora_events_total{event_type=\"DeploymentDeployed\"} 3",
        );
        has(
            &text,
            "eucora_projection_position{projection=\"metrics\"} 8",
        );
    }

    #[test]
    fn time_to_compliance_and_duration_run_from_ring_entry_to_first_compliance() {
        let text = fold(10, &completed_rollout());
        // LAB: entered at CAB approval (2 h), compliant at 5 h; CANARY: 30 h → 40 h.
        has(
            &text,
            "deployment_time_to_compliance_seconds_sum{ring=\"LAB\",site_class=\"online\"} 10800",
        );
        has(&text, "deployment_time_to_compliance_seconds_bucket{ring=\"LAB\",site_class=\"online\",le=\"7200\"} 0");
        has(&text, "deployment_time_to_compliance_seconds_bucket{ring=\"LAB\",site_class=\"online\",le=\"14400\"} 1");
        has(&text, "deployment_time_to_compliance_seconds_bucket{ring=\"LAB\",site_class=\"online\",le=\"+Inf\"} 1");
        has(&text, "deployment_time_to_compliance_seconds_sum{ring=\"CANARY\",site_class=\"online\"} 36000");
        has(
            &text,
            "deployment_duration_seconds_count{ring=\"CANARY\",status=\"success\"} 1",
        );
    }

    #[test]
    fn cab_wait_runs_from_creation_to_the_decision() {
        let text = fold(10, &completed_rollout());
        has(
            &text,
            "cab_approval_wait_seconds_sum{decision=\"approved\"} 7200",
        );
        has(
            &text,
            "cab_approval_wait_seconds_bucket{decision=\"approved\",le=\"3600\"} 0",
        );
        has(
            &text,
            "cab_approval_wait_seconds_bucket{decision=\"approved\",le=\"7200\"} 1",
        );
        let mut x = Script::new(2);
        let text = fold(10, &[x.created("vlc", true), x.rejected(0.5)]);
        has(
            &text,
            "cab_approval_wait_seconds_sum{decision=\"rejected\"} 1800",
        );
        has(&text, "deployment_total{status=\"rejected\",ring=\"LAB\",app_name=\"vlc\",requires_cab=\"true\"} 1");
        has(
            &text,
            "deployments_in_state{state=\"rejected\",ring=\"LAB\"} 1",
        );
    }

    #[test]
    fn risk_scores_fall_into_their_buckets_by_cab_requirement() {
        let (mut a, mut b) = (Script::new(1), Script::new(2));
        let text = fold(10, &[a.created("a", true), b.created("b", false)]);
        has(
            &text,
            "risk_score_distribution_bucket{requires_cab=\"true\",le=\"50\"} 0",
        );
        has(
            &text,
            "risk_score_distribution_bucket{requires_cab=\"true\",le=\"75\"} 1",
        );
        has(
            &text,
            "risk_score_distribution_bucket{requires_cab=\"false\",le=\"25\"} 1",
        );
        has(
            &text,
            "risk_score_distribution_sum{requires_cab=\"false\"} 20",
        );
        assert!(
            !text.contains("status=\"pending\",ring=\"LAB\",app_name=\"b\""),
            "policy-approved intents never wait"
        );
    }

    #[test]
    fn promotion_attempts_gates_and_success_rate_are_counted_per_ring() {
        let mut x = Script::new(1);
        let text = fold(
            10,
            &[
                x.created("7zip", false),
                x.approved(0.0, B::Policy, "policy:risk_model_v1.0"),
                x.deployed(1.0, Ring::Lab, 10, true),
                x.evaluated(
                    2.0,
                    Ring::Lab,
                    Ring::Canary,
                    &[(Gate::SuccessRate, true), (Gate::BakeTime, false)],
                ),
                x.evaluated(
                    30.0,
                    Ring::Lab,
                    Ring::Canary,
                    &[(Gate::SuccessRate, true), (Gate::BakeTime, true)],
                ),
                x.promoted(30.0, Ring::Lab, Ring::Canary),
            ],
        );
        has(
            &text,
            "ring_promotion_total{from_ring=\"LAB\",to_ring=\"CANARY\",status=\"blocked\"} 1",
        );
        has(
            &text,
            "ring_promotion_total{from_ring=\"LAB\",to_ring=\"CANARY\",status=\"passed\"} 1",
        );
        has(
            &text,
            "promotion_gate_evaluations_total{ring=\"LAB\",gate=\"bake_time\",result=\"failed\"} 1",
        );
        has(
            &text,
            "promotion_gate_evaluations_total{ring=\"LAB\",gate=\"bake_time\",result=\"passed\"} 1",
        );
        has(&text, "promotion_gate_evaluations_total{ring=\"LAB\",gate=\"success_rate\",result=\"passed\"} 2");
        has(&text, "promotion_gate_success_rate{ring=\"LAB\"} 0.5");
        assert!(
            !text.contains("promotion_gate_success_rate{ring=\"CANARY\"}"),
            "no attempts, no rate"
        );
    }

    #[test]
    fn emergency_changes_awaiting_retro_approval_are_counted_overdue_once_marked() {
        let (mut a, mut b, mut c) = (Script::new(1), Script::new(2), Script::new(3));
        let provisional = B::EmergencyProvisional;
        let mut events = vec![
            a.created("a", true),
            a.approved(0.0, provisional, "policy:emergency_change"),
            a.emergency_deployed(1.0, 48.0),
            b.created("b", true),
            b.approved(0.0, provisional, "policy:emergency_change"),
            b.emergency_deployed(1.0, 48.0),
            c.created("c", true),
            c.approved(0.0, provisional, "policy:emergency_change"),
        ];
        let text = fold(10, &events);
        has(
            &text,
            "emergency_changes_awaiting_retro_approval{overdue=\"false\"} 3",
        );
        has(
            &text,
            "emergency_changes_awaiting_retro_approval{overdue=\"true\"} 0",
        );
        events.push(a.retro_overdue(49.5, 49.0));
        events.push(b.approved(2.0, B::CabRetrospective, "carol"));
        let text = fold(10, &events);
        has(
            &text,
            "emergency_changes_awaiting_retro_approval{overdue=\"false\"} 1",
        );
        has(
            &text,
            "emergency_changes_awaiting_retro_approval{overdue=\"true\"} 1",
        );
        has(
            &text,
            "eucora_events_total{event_type=\"RetroApprovalOverdue\"} 1",
        );
        // A late decision still ends the wait; a retrospective rejection of a deployed change
        // leaves it deployed (it must be rolled back) and is not a rejected intent.
        events.push(a.retro_rejected(50.0));
        let text = fold(10, &events);
        has(
            &text,
            "emergency_changes_awaiting_retro_approval{overdue=\"true\"} 0",
        );
        has(
            &text,
            "deployments_in_state{state=\"deployed\",ring=\"LAB\"} 2",
        );
        has(
            &text,
            "cab_approval_wait_seconds_count{decision=\"retrospective_rejected\"} 1",
        );
        assert!(
            !text.contains("deployment_total{status=\"rejected\""),
            "{text}"
        );
        // One never deployed is rejected outright.
        events.push(c.retro_rejected(3.0));
        let text = fold(10, &events);
        has(&text, "deployment_total{status=\"rejected\",ring=\"LAB\",app_name=\"c\",requires_cab=\"true\"} 1");
        has(
            &text,
            "emergency_changes_awaiting_retro_approval{overdue=\"false\"} 0",
        );
    }

    #[test]
    fn a_rollback_counts_as_failed_with_its_ring_duration() {
        let mut x = Script::new(1);
        let text = fold(
            10,
            &[
                x.created("7zip", false),
                x.approved(1.0, B::Policy, "policy:risk_model_v1.0"),
                x.deployed(2.0, Ring::Lab, 3, false),
                x.rolled_back(3.5, Ring::Lab, Status::Deployed),
            ],
        );
        has(&text, "deployment_rollbacks_total{ring=\"LAB\"} 1");
        has(&text, "deployment_total{status=\"failed\",ring=\"LAB\",app_name=\"7zip\",requires_cab=\"false\"} 1");
        has(
            &text,
            "deployment_duration_seconds_sum{ring=\"LAB\",status=\"failed\"} 9000",
        );
        has(
            &text,
            "deployments_in_state{state=\"rolled_back\",ring=\"LAB\"} 1",
        );
    }

    #[test]
    fn apps_past_the_label_limit_are_counted_as_other_in_stream_order() {
        let (mut a, mut b, mut c) = (Script::new(1), Script::new(2), Script::new(3));
        let text = fold(
            2,
            &[
                a.created("zoom", true),
                b.created("acrobat", true),
                c.created("slack", true),
            ],
        );
        has(&text, "deployment_total{status=\"pending\",ring=\"LAB\",app_name=\"zoom\",requires_cab=\"true\"} 1");
        has(&text, "deployment_total{status=\"pending\",ring=\"LAB\",app_name=\"acrobat\",requires_cab=\"true\"} 1");
        has(&text, "deployment_total{status=\"pending\",ring=\"LAB\",app_name=\"other\",requires_cab=\"true\"} 1");
        assert!(!text.contains("slack"));
    }

    /// An intent's creation, as an emergency change when `emergency`, committed `committed`
    /// hours before its request when given.
    fn request(
        x: &mut Script,
        app: &str,
        emergency: bool,
        committed: Option<f64>,
    ) -> DeploymentEvent {
        let mut event = x.created(app, false);
        if let DeploymentEvent::DeploymentCreated(c) = &mut event {
            if emergency {
                c.change_type = ChangeType::Emergency;
            }
            c.source_committed_at = committed.map(|h| {
                c.meta.occurred_at - chrono::Duration::milliseconds((h * 3_600_000.0) as i64)
            });
        }
        event
    }

    /// 7zip's version A: committed a day before its request, compliant in LAB at 5 h, failed in
    /// CANARY at 40 h. Its emergency fix B: compliant in LAB at 50 h and in CANARY at 60 h, which
    /// recovers CANARY. An emergency change of another app, which followed no failure, and one
    /// of 7zip after the recovery are no rework.
    fn failure_and_recovery() -> Vec<DeploymentEvent> {
        let (mut a, mut b, mut c, mut d) = (
            Script::new(1),
            Script::new(2),
            Script::new(3),
            Script::new(4),
        );
        vec![
            request(&mut a, "7zip", false, Some(24.0)),
            a.approved(0.0, B::Policy, "policy"),
            a.deployed(5.0, Ring::Lab, 10, true),
            a.promoted(30.0, Ring::Lab, Ring::Canary),
            a.deployed(35.0, Ring::Canary, 6, false),
            a.rolled_back(40.0, Ring::Canary, Status::Deployed),
            request(&mut b, "7zip", true, None),
            request(&mut c, "Firefox", true, None),
            b.approved(0.0, B::EmergencyProvisional, "policy:emergency_change"),
            b.deployed(50.0, Ring::Lab, 10, true),
            b.promoted(51.0, Ring::Lab, Ring::Canary),
            b.deployed(60.0, Ring::Canary, 10, true),
            request(&mut d, "7zip", true, None),
        ]
    }

    #[test]
    fn delivery_performance_follows_a_failure_its_rework_and_its_recovery() {
        let text = fold(10, &failure_and_recovery());
        // Lead time in LAB: A 5 h + the day before its request = 29 h; B 50 h (from creation).
        has(
            &text,
            "deployment_app_lead_time_seconds_sum{app_name=\"7zip\",ring=\"LAB\"} 284400",
        );
        has(
            &text,
            "deployment_app_lead_time_seconds_count{app_name=\"7zip\",ring=\"LAB\"} 2",
        );
        has(&text, "deployment_lead_time_seconds_count{ring=\"LAB\"} 2");
        has(
            &text,
            "deployment_lead_time_seconds_bucket{ring=\"LAB\",le=\"172800\"} 1",
        );
        // In CANARY only B was compliant, 60 h after its creation.
        has(
            &text,
            "deployment_app_lead_time_seconds_sum{app_name=\"7zip\",ring=\"CANARY\"} 216000",
        );
        has(
            &text,
            "deployment_lead_time_seconds_sum{ring=\"CANARY\"} 216000",
        );
        has(
            &text,
            "deployment_change_failures_total{app_name=\"7zip\",ring=\"CANARY\"} 1",
        );
        // Recovered 20 h after the failure, by the next compliant version in that ring; B's
        // compliance in LAB recovered nothing (nothing failed there).
        has(
            &text,
            "deployment_recovery_time_seconds_sum{ring=\"CANARY\"} 72000",
        );
        has(
            &text,
            "deployment_recovery_time_seconds_count{ring=\"CANARY\"} 1",
        );
        assert!(!text.contains("deployment_recovery_time_seconds_count{ring=\"LAB\"}"));
        // B followed the failure; Firefox's and the one after the recovery did not.
        has(
            &text,
            "deployment_rework_total{app_name=\"7zip\",ring=\"CANARY\"} 1",
        );
        assert_eq!(
            text.matches("deployment_rework_total{").count(),
            1,
            "{text}"
        );
        // The same events fold to the same text, byte for byte.
        assert_eq!(text, fold(10, &failure_and_recovery()));
    }

    #[test]
    fn failures_and_recoveries_are_each_apps_own_past_the_label_limit() {
        // With no labelled apps, 7zip and Firefox are both `other`: Firefox's emergency change
        // still follows no failure of its own.
        let text = fold(0, &failure_and_recovery());
        has(
            &text,
            "deployment_rework_total{app_name=\"other\",ring=\"CANARY\"} 1",
        );
        has(
            &text,
            "deployment_recovery_time_seconds_count{ring=\"CANARY\"} 1",
        );
    }

    #[test]
    fn user_supplied_label_values_are_escaped() {
        let text = fold(10, &[Script::new(1).created("a\"b\\c\nd", true)]);
        has(&text, "deployment_total{status=\"pending\",ring=\"LAB\",app_name=\"a\\\"b\\\\c\\nd\",requires_cab=\"true\"} 1");
    }

    #[test]
    fn every_family_is_typed_once_and_rendering_is_repeatable() {
        let events = completed_rollout();
        let text = fold(10, &events);
        assert_eq!(text, fold(10, &events));
        for family in [
            "deployment_total counter",
            "deployment_duration_seconds histogram",
            "deployment_time_to_compliance_seconds histogram",
            "cab_approval_wait_seconds histogram",
            "risk_score_distribution histogram",
            "ring_promotion_total counter",
            "promotion_gate_evaluations_total counter",
            "promotion_gate_success_rate gauge",
            "deployment_rollbacks_total counter",
            "deployment_drift_total counter",
            "connector_status_rejected_total counter",
            "deployment_cost_total counter",
            "deployment_cost_per_intent histogram",
            "deployment_lead_time_seconds histogram",
            "deployment_app_lead_time_seconds summary",
            "deployment_recovery_time_seconds histogram",
            "deployment_change_failures_total counter",
            "deployment_rework_total counter",
            "deployments_in_state gauge",
            "eucora_events_total counter",
            "eucora_projection_position gauge",
        ] {
            let line = format!("# TYPE {family}");
            assert_eq!(text.lines().filter(|l| *l == line).count(), 1, "{family}");
        }
    }
}
