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

use crate::cost::{Component, Tariff, CURRENCIES};
use crate::decode::StreamEvent;
use crate::event::{
    ApprovalBasis, ChangeType, ConnectorType, DeploymentEvent, Gate, Ring, SiteClass, Status,
};

/// The fold's maps, keyed by what EUCORA makes itself (rings, statuses, the ids it generates, app
/// labels bounded by the label limit), hash with foldhash: SipHash, std's default, was a
/// fiftieth of a catch-up's CPU. The apps seen, keyed by names requesters choose, keep SipHash.
type Fast<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

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
    /// The app's number in [`Apps`]: its own name (failures and recoveries are the same app's)
    /// and its `app_name` label.
    app: u32,
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
    /// What charges its next event, the `currency` label it is counted under, and what it cost
    /// so far: the sum of what each event added, in the order they were charged.
    cost: Tariff,
    total_cost: f64,
    /// The `currency` label's number in [`CURRENCIES`] (past its end: `XXX`).
    currency: u8,
    /// When its rollout is expected to be compliant; `None` once the rollout has ended, as an
    /// ended forecaster forecasts nothing more whatever comes (so the many ended intents keep
    /// nothing of it).
    forecast: Option<Box<crate::forecast::Forecaster>>,
}

/// What an intent counts in the gauges over every intent (`deployments_in_state`,
/// `emergency_changes_awaiting_retro_approval`, `deployment_rollouts_forecast_to_miss`): kept up
/// to date as each event is folded, so a scrape does not visit every intent ever requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counted {
    state: (Status, Ring),
    /// An emergency change awaiting retrospective approval: `Some(overdue)`.
    awaiting: Option<bool>,
    /// The ring of an open rollout forecast to miss its deadline.
    missing: Option<Ring>,
}

impl Intent {
    fn counted(&self) -> Counted {
        Counted {
            state: (self.status, self.ring),
            awaiting: self.retro_awaiting,
            missing: self.forecast.as_ref().and_then(|f| f.missing()),
        }
    }
}

/// The gauges over every intent, as [`Counted`] by each.
#[derive(Debug, Clone, PartialEq, Default)]
struct Gauges {
    in_state: Fast<(Status, Ring), u64>,
    /// By overdue: not yet, overdue.
    awaiting: [u64; 2],
    /// By [`Ring::index`].
    missing: [u64; Ring::ALL.len()],
}

impl Gauges {
    fn add(&mut self, c: Counted) {
        *self.in_state.entry(c.state).or_default() += 1;
        if let Some(overdue) = c.awaiting {
            self.awaiting[usize::from(overdue)] += 1;
        }
        if let Some(ring) = c.missing {
            self.missing[ring.index()] += 1;
        }
    }

    /// Takes back what [`Gauges::add`] added for `c`.
    fn remove(&mut self, c: Counted) {
        if let Some(n) = self.in_state.get_mut(&c.state) {
            *n = n.saturating_sub(1);
        }
        if let Some(overdue) = c.awaiting {
            let n = &mut self.awaiting[usize::from(overdue)];
            *n = n.saturating_sub(1);
        }
        if let Some(ring) = c.missing {
            let n = &mut self.missing[ring.index()];
            *n = n.saturating_sub(1);
        }
    }
}

/// Every intent's state, numbered in the order requested. A `HashMap<Uuid, Intent>` holds a slot
/// the size of an intent for up to twice as many intents as there are (its table grows by
/// doubling); here the table holds numbers (20 bytes a slot), and the intents lie in blocks of
/// [`Intents::BLOCK`] that never move, only the last one not full.
#[derive(Debug, Clone, PartialEq, Default)]
struct Intents {
    numbers: Fast<Uuid, u32>,
    blocks: Vec<Vec<Intent>>,
}

impl Intents {
    const BLOCK: usize = 4096;

    fn get(&self, id: &Uuid) -> Option<&Intent> {
        let n = *self.numbers.get(id)? as usize;
        self.blocks.get(n / Self::BLOCK)?.get(n % Self::BLOCK)
    }

    fn get_mut(&mut self, id: &Uuid) -> Option<&mut Intent> {
        let n = *self.numbers.get(id)? as usize;
        self.blocks
            .get_mut(n / Self::BLOCK)?
            .get_mut(n % Self::BLOCK)
    }

    fn contains_key(&self, id: &Uuid) -> bool {
        self.numbers.contains_key(id)
    }

    /// Keeps the intent of an id not kept yet (the fold checks, as a creation seen again counts
    /// in nothing); intents past the four billionth, which no memory holds, are not kept.
    fn insert(&mut self, id: Uuid, intent: Intent) {
        let Ok(n) = u32::try_from(self.numbers.len()) else {
            return;
        };
        if (n as usize).is_multiple_of(Self::BLOCK) {
            self.blocks.push(Vec::with_capacity(Self::BLOCK));
        }
        if let Some(block) = self.blocks.last_mut() {
            block.push(intent);
            self.numbers.insert(id, n);
        }
    }

    #[cfg(test)]
    fn values(&self) -> impl Iterator<Item = &Intent> {
        self.blocks.iter().flatten()
    }
}

/// A series' labels: each name and its value, borrowed from the series' key.
type Labels<'a> = Vec<(&'static str, &'a str)>;

/// The domain metrics, folded from the stream.
///
/// Series are kept under typed keys, so folding an event allocates nothing but a new intent's
/// entry; [`Metrics::render`] turns the keys into labels and sorts the series by them.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    apps: Apps,
    intents: Intents,
    gauges: Gauges,
    /// (status, ring, app_name, requires_cab)
    deployments: Fast<(&'static str, Ring, Arc<str>, bool), u64>,
    /// (ring, status)
    duration: Fast<(Ring, &'static str), Histogram>,
    time_to_compliance: Fast<(Ring, SiteClass), Histogram>,
    /// decision
    cab_wait: Fast<&'static str, Histogram>,
    /// requires_cab
    risk: Fast<bool, Histogram>,
    /// (from_ring, to_ring, passed)
    promotions: Fast<(Ring, Ring, bool), u64>,
    /// (ring, gate, passed)
    gate_evaluations: Fast<(Ring, Gate, bool), u64>,
    attempts: BTreeMap<Ring, (u64, u64)>,
    rollbacks: Fast<Ring, u64>,
    /// (ring, connector_type)
    drift: Fast<(Ring, ConnectorType), u64>,
    /// (ring, connector_type)
    status_rejected: Fast<(Ring, ConnectorType), u64>,
    /// Cost, per (app_name label, currency, ring, component).
    cost: Fast<(Arc<str>, &'static str, Ring, Component), f64>,
    /// Completed changes' whole cost, per currency.
    cost_per_intent: Fast<&'static str, Histogram>,
    /// Delivery performance, per ring: lead time to compliance in the ring.
    lead_time: Fast<Ring, Histogram>,
    /// The same per (app_name, ring), as a sum and a count only: a histogram per app would
    /// multiply the scrape by its buckets.
    app_lead_time: Fast<(Arc<str>, Ring), (f64, u64)>,
    /// A failure (rollback) in the ring to the app's next compliant version there, per ring.
    recovery_time: Fast<Ring, Histogram>,
    /// Rollbacks: changes that failed in the ring.
    change_failures: Fast<(Arc<str>, Ring), u64>,
    /// Emergency changes requested while the app had an unrecovered failure in the ring.
    rework: Fast<(Arc<str>, Ring), u64>,
    /// The first unrecovered failure of each app (its own name) in each ring, until a version of
    /// the app is compliant there again.
    unrecovered: Fast<(Arc<str>, Ring), DateTime<Utc>>,
    /// The cost rates the latest intent was requested under, shared by the intents requested
    /// under the same ones.
    rates: Option<Arc<crate::cost::CostRates>>,
    events: BTreeMap<&'static str, u64>,
    position: i64,
}

// Every code has a number below `u8::MAX`, which stands for none.
const _: () = assert!(CURRENCIES.len() < u8::MAX as usize);

/// The `currency` label's number: the ISO 4217 code's place in [`CURRENCIES`] (checked when
/// the policy was read), past its end for anything else.
fn currency_number(code: Option<&str>) -> u8 {
    code.and_then(|c| CURRENCIES.iter().position(|k| *k == c))
        .and_then(|n| u8::try_from(n).ok())
        .unwrap_or(u8::MAX)
}

/// The `currency` label of a [`currency_number`]: `XXX` (ISO's "no currency") past the codes.
fn currency_label(number: u8) -> &'static str {
    CURRENCIES
        .get(usize::from(number))
        .copied()
        .unwrap_or("XXX")
}

/// The apps seen, numbered in the order they first appear.
#[derive(Debug, Clone, PartialEq)]
struct Apps {
    /// How many apps keep their own `app_name` label: the first to appear; later ones are
    /// counted as `other`.
    label_limit: usize,
    /// Apps' own names, by number.
    names: Vec<Arc<str>>,
    numbers: HashMap<String, u32>,
    other: Arc<str>,
}

impl Apps {
    /// The app's number, given it at its first appearance.
    fn number(&mut self, app: &str) -> u32 {
        if let Some(&number) = self.numbers.get(app) {
            return number;
        }
        let number = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(Arc::from(app));
        self.numbers.insert(app.to_string(), number);
        number
    }

    /// The app's own name.
    fn name(&self, number: u32) -> Arc<str> {
        self.names[number as usize].clone()
    }

    /// Its `app_name` label: its name, or `other` past the label limit.
    fn label(&self, number: u32) -> Arc<str> {
        if (number as usize) < self.label_limit {
            self.name(number)
        } else {
            self.other.clone()
        }
    }
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

impl Metrics {
    /// `app_label_limit`: how many apps keep their own `app_name` label; the first to appear in
    /// the stream keep it, later ones are counted as `other`.
    pub fn new(app_label_limit: usize) -> Self {
        Metrics {
            apps: Apps {
                label_limit: app_label_limit,
                names: Vec::new(),
                numbers: HashMap::new(),
                other: Arc::from(OTHER_APP),
            },
            intents: Intents::default(),
            gauges: Gauges::default(),
            deployments: Fast::default(),
            duration: Fast::default(),
            time_to_compliance: Fast::default(),
            cab_wait: Fast::default(),
            risk: Fast::default(),
            promotions: Fast::default(),
            gate_evaluations: Fast::default(),
            attempts: BTreeMap::new(),
            rollbacks: Fast::default(),
            drift: Fast::default(),
            status_rejected: Fast::default(),
            cost: Fast::default(),
            cost_per_intent: Fast::default(),
            lead_time: Fast::default(),
            app_lead_time: Fast::default(),
            recovery_time: Fast::default(),
            change_failures: Fast::default(),
            rework: Fast::default(),
            unrecovered: Fast::default(),
            rates: None,
            events: EVENT_TYPES.iter().map(|t| (*t, 0)).collect(),
            position: 0,
        }
    }

    /// The global position of the last event applied.
    pub fn position(&self) -> i64 {
        self.position
    }

    fn count_status(&mut self, id: Uuid, status: &'static str, ring: Ring) {
        let Some(intent) = self.intents.get(&id) else {
            return;
        };
        let key = (
            status,
            ring,
            self.apps.label(intent.app),
            intent.requires_cab,
        );
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
        let id = event.meta().deployment_id;
        let before = self.intents.get(&id).map(Intent::counted);
        self.fold(position, event);
        let after = self.intents.get(&id).map(Intent::counted);
        if before != after {
            if let Some(before) = before {
                self.gauges.remove(before);
            }
            if let Some(after) = after {
                self.gauges.add(after);
            }
        }
    }

    fn fold(&mut self, position: i64, event: &DeploymentEvent) {
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
                intent.total_cost += amount;
                *self
                    .cost
                    .entry((
                        self.apps.label(intent.app),
                        currency_label(intent.currency),
                        ring,
                        component,
                    ))
                    .or_default() += amount;
            }
        }
        match event {
            DeploymentEvent::DeploymentCreated(e) => {
                if self.intents.contains_key(&id) {
                    return;
                }
                let app = self.apps.number(&e.app_name);
                let name = self.apps.name(app);
                // Rework: an emergency change for an app whose failure in some ring is not yet
                // recovered, counted in the ring of its latest such failure.
                if e.change_type == ChangeType::Emergency {
                    let latest = Ring::ALL
                        .into_iter()
                        .filter_map(|r| Some((*self.unrecovered.get(&(name.clone(), r))?, r)))
                        .max();
                    if let Some((_, ring)) = latest {
                        *self.rework.entry((self.apps.label(app), ring)).or_default() += 1;
                    }
                }
                self.intents.insert(
                    id,
                    Intent {
                        app,
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
                        currency: currency_number(
                            e.cost_rates.as_ref().map(|r| r.currency.as_str()),
                        ),
                        cost: {
                            let mut tariff = Tariff::opened(event);
                            tariff.share_rates(&mut self.rates);
                            tariff
                        },
                        total_cost: 0.0,
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
                        .entry((self.apps.label(intent.app), e.ring))
                        .or_default();
                    *sum += lead;
                    *count += 1;
                    if let Some(failed) = self
                        .unrecovered
                        .remove(&(self.apps.name(intent.app), e.ring))
                    {
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
                            .entry(currency_label(intent.currency))
                            .or_insert_with(|| Histogram::new(COST_BUCKETS))
                            .observe(intent.total_cost);
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
                    .entry((self.apps.label(intent.app), e.ring))
                    .or_default() += 1;
                self.unrecovered
                    .entry((self.apps.name(intent.app), e.ring))
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

    /// The gauges over every intent are kept as events are folded: after every event of a mixed
    /// stream (rollouts, a failure and its recovery, emergency changes, a rollout forecast to
    /// miss its deadline that then catches up), they are what counting every intent gives.
    #[test]
    fn the_gauges_kept_are_those_a_count_of_every_intent_gives() {
        // 20 %, then 30 % of 100 devices: forecast to miss the deadline at 4 h; then 96 %.
        let mut late = Script::new(40);
        let mut slow_rollout = vec![
            late.created("slow", false),
            late.approved(0.0, B::Policy, "policy:auto"),
        ];
        for (hours, succeeded) in [(2.0, 20), (3.0, 30), (3.5, 96)] {
            let mut e = late.deployed(hours, Ring::Lab, 0, succeeded >= 95);
            if let DeploymentEvent::DeploymentDeployed(d) = &mut e {
                d.target_devices = 100;
                d.succeeded = succeeded;
                d.success_rate = succeeded as f64 / 100.0;
                d.compliance_threshold = 0.95;
                d.compliance_due_at = Some(late.at(4.0));
            }
            slow_rollout.push(e);
        }
        let (mut a, mut b) = (Script::new(50), Script::new(51));
        let provisional = B::EmergencyProvisional;
        let emergencies = vec![
            a.created("a", true),
            a.approved(0.0, provisional, "policy:emergency_change"),
            b.created("b", true),
            b.approved(0.0, provisional, "policy:emergency_change"),
            a.emergency_deployed(1.0, 48.0),
            a.retro_overdue(49.5, 49.0),
            b.approved(2.0, B::CabRetrospective, "carol"),
            a.retro_rejected(50.0),
        ];
        // Interleaved, as a stream of many intents is.
        let streams = [
            completed_rollout(),
            failure_and_recovery(),
            emergencies,
            slow_rollout,
        ];
        let longest = streams.iter().map(Vec::len).max().unwrap_or(0);
        let mut m = Metrics::new(10);
        let mut seen = (false, false);
        for i in 0..longest {
            for event in streams.iter().filter_map(|s| s.get(i)) {
                m.apply(1, event);
                let mut counted = Gauges::default();
                m.intents.values().for_each(|i| counted.add(i.counted()));
                // A state left by every intent is kept at 0; a count has no entry for it.
                let mut kept = m.gauges.clone();
                kept.in_state.retain(|_, n| *n > 0);
                assert_eq!(kept, counted, "after {}", event.type_name());
                seen.0 |= counted.missing.iter().any(|n| *n > 0);
                seen.1 |= counted.awaiting.iter().any(|n| *n > 0);
            }
        }
        assert_eq!(seen, (true, true), "a rollout missed, and a change awaited");
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
    fn every_family_renders_its_series_in_the_order_of_their_label_values() {
        // Apps created out of order, each failing once in a ring, so the per-app families
        // hold many series.
        let mut events = Vec::new();
        for n in 0..40u32 {
            let app = format!("app-{}", n * 17 % 40);
            let mut x = Script::new(u128::from(n) + 1);
            events.push(x.created(&app, n % 3 == 0));
            events.push(x.rolled_back(1.0, Ring::Lab, Status::Deployed));
        }
        let text = fold(100, &events);
        // Gauges list a fixed set (every ring, every state) in its own order.
        let gauges: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" gauge"))
            .collect();
        let mut families: BTreeMap<&str, Vec<Vec<&str>>> = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("le="))
        {
            let Some((name, rest)) = line.split_once('{') else {
                continue;
            };
            if gauges.contains(&name) {
                continue;
            }
            let labels = rest.split_once('}').map_or("", |(labels, _)| labels);
            let values = labels
                .split("\",")
                .map(|pair| {
                    pair.split_once("=\"")
                        .map_or("", |(_, v)| v.trim_end_matches('"'))
                })
                .collect();
            families.entry(name).or_default().push(values);
        }
        assert!(families["deployment_change_failures_total"].len() >= 40);
        for (name, series) in &families {
            assert!(
                series.windows(2).all(|w| w[0] < w[1]),
                "{name}: series out of order: {series:?}"
            );
        }
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
