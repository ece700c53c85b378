//! What a change cost: the rates recorded on its creation (the policy's `[cost]` in force then)
//! applied to what its events say happened. Deterministic: the same events give the same cost, in
//! the same order of additions, on every replica and after a replay, whatever the policy is now.
//!
//! | component | charged on | amount |
//! |---|---|---|
//! | `device_installs` | `DeploymentDeployed` | new installed devices in the ring × `per_device_install` |
//! | `delivery` | `DeploymentDeployed` | new installed devices × `artifact_bytes` / 10⁹ × `per_gb_delivered` |
//! | `incidents` | `DeploymentDeployed` | new incidents in the ring × `per_incident` |
//! | `connector_calls` | `ConnectorDispatched`, `ConnectorDispatchFailed` | calls made × `per_connector_call` |
//! | `cab_review` | the first CAB decision (`DeploymentApproved` by the CAB, `DeploymentRejected`) | hours from the request to it × `per_cab_review_hour` |
//! | `rollback` | `DeploymentRolledBack` | `per_rollback` |

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::event::CostRates;
use crate::event::{ApprovalBasis, DeploymentEvent, Ring};

/// ISO 4217 currency codes (active, and the funds and metals codes), for checking a policy's.
pub const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD",
    "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUC", "CUP",
    "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP",
    "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS",
    "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW",
    "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD",
    "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN",
    "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR",
    "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SLL",
    "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY",
    "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES",
    "VND", "VUV", "WST", "XAF", "XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XCD", "XCG", "XDR",
    "XOF", "XPD", "XPF", "XPT", "XSU", "XUA", "YER", "ZAR", "ZMW", "ZWG", "ZWL",
];

/// What a cost is for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    DeviceInstalls,
    Delivery,
    ConnectorCalls,
    Incidents,
    CabReview,
    Rollback,
}

impl Component {
    /// The component's number, in [`Component::ALL`]'s order.
    pub fn index(self) -> usize {
        self as usize
    }

    pub const ALL: [Component; 6] = [
        Component::DeviceInstalls,
        Component::Delivery,
        Component::ConnectorCalls,
        Component::Incidents,
        Component::CabReview,
        Component::Rollback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::DeviceInstalls => "device_installs",
            Component::Delivery => "delivery",
            Component::ConnectorCalls => "connector_calls",
            Component::Incidents => "incidents",
            Component::CabReview => "cab_review",
            Component::Rollback => "rollback",
        }
    }

    /// In words, for people.
    pub fn words(self) -> &'static str {
        match self {
            Component::DeviceInstalls => "device installs",
            Component::Delivery => "delivery",
            Component::ConnectorCalls => "connector calls",
            Component::Incidents => "incidents",
            Component::CabReview => "CAB review",
            Component::Rollback => "rollback",
        }
    }
}

/// What charges an intent's next event: the rates recorded on its creation, and the counts
/// (which only grow) already charged in each ring.
///
/// The metrics fold keeps one for every intent in memory, inline and without an allocation of
/// its own (the rates are shared, [`Tariff::share_rates`]); it needs what each event adds, not
/// what was charged before, which a [`CostMeter`] keeps besides.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tariff {
    /// `None` for an intent requested before costs were recorded: it has no cost. Shared by the
    /// tariffs of intents requested under the same rates.
    rates: Option<Arc<CostRates>>,
    artifact_bytes: Option<u64>,
    requested_at: Option<DateTime<Utc>>,
    cab_charged: bool,
    /// The rings a report was charged in, a bit each by [`Ring::index`].
    reported: u8,
    /// Installed devices and incidents charged so far, by ring, from its first report on.
    charged: [(u64, u64); Ring::ALL.len()],
}

/// One intent's cost so far: its [`Tariff`], and every amount charged, by ring and component.
///
/// It is stored, in the intent read model's rows, in the shape of [`StoredMeter`], which has not
/// changed since costs were first recorded.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(from = "StoredMeter", into = "StoredMeter")]
pub struct CostMeter {
    tariff: Tariff,
    /// By [`Ring::index`] and [`Component::index`]; `None` until something is charged. Only
    /// positive amounts are ever added, so 0 is "nothing charged".
    amounts: Option<Box<[[f64; Component::ALL.len()]; Ring::ALL.len()]>>,
}

/// A [`CostMeter`] as the intent read model stores it.
#[derive(Serialize, Deserialize)]
struct StoredMeter {
    rates: Option<CostRates>,
    artifact_bytes: Option<u64>,
    requested_at: Option<DateTime<Utc>>,
    charged: BTreeMap<Ring, (u64, u64)>,
    cab_charged: bool,
    by_ring: BTreeMap<Ring, BTreeMap<Component, f64>>,
}

impl From<StoredMeter> for CostMeter {
    fn from(s: StoredMeter) -> CostMeter {
        let mut tariff = Tariff {
            rates: s.rates.map(Arc::new),
            artifact_bytes: s.artifact_bytes,
            requested_at: s.requested_at,
            cab_charged: s.cab_charged,
            ..Tariff::default()
        };
        for (ring, charged) in s.charged {
            tariff.reported |= 1 << ring.index();
            tariff.charged[ring.index()] = charged;
        }
        let mut amounts = [[0.0; Component::ALL.len()]; Ring::ALL.len()];
        for (ring, components) in s.by_ring {
            for (component, amount) in components.into_iter().filter(|(_, a)| *a > 0.0) {
                amounts[ring.index()][component.index()] = amount;
            }
        }
        CostMeter {
            tariff,
            amounts: amounts
                .iter()
                .flatten()
                .any(|a| *a > 0.0)
                .then(|| Box::new(amounts)),
        }
    }
}

impl From<CostMeter> for StoredMeter {
    fn from(m: CostMeter) -> StoredMeter {
        let t = &m.tariff;
        let charged = Ring::ALL
            .into_iter()
            .filter(|r| t.reported & (1 << r.index()) != 0)
            .map(|r| (r, t.charged[r.index()]))
            .collect();
        StoredMeter {
            by_ring: m.by_ring(),
            charged,
            rates: m.tariff.rates.map(Arc::unwrap_or_clone),
            artifact_bytes: m.tariff.artifact_bytes,
            requested_at: m.tariff.requested_at,
            cab_charged: m.tariff.cab_charged,
        }
    }
}

impl Tariff {
    /// The tariff of the intent `created` (its `DeploymentCreated`) requests.
    pub fn opened(created: &DeploymentEvent) -> Tariff {
        let mut tariff = Tariff::default();
        tariff.charge(created);
        tariff
    }

    /// Charges `event`: returns what it adds, by ring and component (nothing for a zero amount).
    pub fn charge(&mut self, event: &DeploymentEvent) -> Vec<(Ring, Component, f64)> {
        if let DeploymentEvent::DeploymentCreated(e) = event {
            self.rates = e.cost_rates.as_deref().cloned().map(Arc::new);
            self.artifact_bytes = e.artifact_bytes;
            self.requested_at = Some(e.meta.occurred_at);
            return Vec::new();
        }
        let Some(rates) = &self.rates else {
            return Vec::new();
        };
        let at = event.meta().occurred_at;
        let mut out = Vec::new();
        let mut cab_review = |ring: Ring, charged: &mut bool| {
            if !*charged {
                *charged = true;
                let hours = self.requested_at.map_or(0.0, |from| {
                    (at - from).num_milliseconds().max(0) as f64 / 3.6e6
                });
                out.push((
                    ring,
                    Component::CabReview,
                    hours * rates.per_cab_review_hour,
                ));
            }
        };
        match event {
            DeploymentEvent::DeploymentApproved(e)
                if matches!(
                    e.basis,
                    ApprovalBasis::Cab | ApprovalBasis::CabRetrospective
                ) =>
            {
                cab_review(e.ring, &mut self.cab_charged);
            }
            DeploymentEvent::DeploymentRejected(e) => cab_review(e.ring, &mut self.cab_charged),
            DeploymentEvent::DeploymentDeployed(e) => {
                self.reported |= 1 << e.ring.index();
                let (installed, incidents) = &mut self.charged[e.ring.index()];
                let new_installs = e.succeeded.saturating_sub(*installed);
                let new_incidents = e.incidents.saturating_sub(*incidents);
                *installed = (*installed).max(e.succeeded);
                *incidents = (*incidents).max(e.incidents);
                out.push((
                    e.ring,
                    Component::DeviceInstalls,
                    new_installs as f64 * rates.per_device_install,
                ));
                if let Some(bytes) = self.artifact_bytes {
                    let gigabytes = new_installs as f64 * bytes as f64 / 1e9;
                    out.push((
                        e.ring,
                        Component::Delivery,
                        gigabytes * rates.per_gb_delivered,
                    ));
                }
                out.push((
                    e.ring,
                    Component::Incidents,
                    new_incidents as f64 * rates.per_incident,
                ));
            }
            DeploymentEvent::ConnectorDispatched(e) => out.push((
                e.ring,
                Component::ConnectorCalls,
                f64::from(e.attempts) * rates.per_connector_call,
            )),
            DeploymentEvent::ConnectorDispatchFailed(e) => out.push((
                e.ring,
                Component::ConnectorCalls,
                f64::from(e.attempts) * rates.per_connector_call,
            )),
            DeploymentEvent::DeploymentRolledBack(e) => {
                out.push((e.ring, Component::Rollback, rates.per_rollback))
            }
            _ => {}
        }
        out.retain(|(_, _, amount)| *amount > 0.0);
        out
    }

    /// Shares its rates with `kept` when they are the same, else keeps its own there: intents
    /// requested under one policy have the same rates, so a fold keeping many tariffs (one for
    /// each intent) keeps them once.
    pub fn share_rates(&mut self, kept: &mut Option<Arc<CostRates>>) {
        match (&self.rates, kept.as_ref()) {
            (Some(mine), Some(theirs)) if mine == theirs => self.rates = Some(theirs.clone()),
            (Some(mine), _) => *kept = Some(mine.clone()),
            (None, _) => {}
        }
    }

    /// The currency of the cost, when it has one.
    pub fn currency(&self) -> Option<&str> {
        self.rates.as_ref().map(|r| r.currency.as_str())
    }
}

impl CostMeter {
    /// The meter of the intent `created` (its `DeploymentCreated`) requests.
    pub fn opened(created: &DeploymentEvent) -> CostMeter {
        CostMeter {
            tariff: Tariff::opened(created),
            amounts: None,
        }
    }

    /// Charges `event`: returns what it adds, by ring and component (nothing for a zero amount),
    /// and adds it to the meter.
    pub fn charge(&mut self, event: &DeploymentEvent) -> Vec<(Ring, Component, f64)> {
        let out = self.tariff.charge(event);
        if !out.is_empty() {
            let amounts = self.amounts.get_or_insert_with(Box::default);
            for (ring, component, amount) in &out {
                amounts[ring.index()][component.index()] += amount;
            }
        }
        out
    }

    /// Every amount charged so far, by ring, then component, in their orders.
    fn amounts(&self) -> impl Iterator<Item = (Ring, Component, f64)> + '_ {
        self.amounts.iter().flat_map(|a| {
            Ring::ALL.into_iter().flat_map(move |r| {
                Component::ALL.into_iter().filter_map(move |c| {
                    let amount = a[r.index()][c.index()];
                    (amount > 0.0).then_some((r, c, amount))
                })
            })
        })
    }

    /// The cost so far, by ring and component.
    pub fn by_ring(&self) -> BTreeMap<Ring, BTreeMap<Component, f64>> {
        let mut by_ring: BTreeMap<Ring, BTreeMap<Component, f64>> = BTreeMap::new();
        for (ring, component, amount) in self.amounts() {
            by_ring.entry(ring).or_default().insert(component, amount);
        }
        by_ring
    }

    /// The currency of the cost, when it has one.
    pub fn currency(&self) -> Option<&str> {
        self.tariff.currency()
    }

    /// The cost by component, every ring together.
    pub fn components(&self) -> BTreeMap<Component, f64> {
        let mut all = BTreeMap::new();
        for (_, component, amount) in self.amounts() {
            *all.entry(component).or_default() += amount;
        }
        all
    }

    /// The whole cost so far.
    pub fn total(&self) -> f64 {
        self.components().values().sum()
    }
}

/// An amount as the evidence writes it: to the millionth, without trailing zeros (`990.903`,
/// `240`).
pub fn amount(value: f64) -> String {
    let text = format!("{value:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ConnectorAction, ConnectorType, Dispatched, Status};
    use crate::fixtures::Script;

    /// Rows of the intent read model hold meters as JSON: one written before the meter was made
    /// compact reads back with the same cost and is written again unchanged, and a meter reads
    /// back as it was.
    #[test]
    fn a_meter_is_stored_in_the_shape_rows_were_written_in() {
        let rates = serde_json::to_value(CostRates::default()).unwrap();
        let stored = serde_json::json!({
            "rates": rates,
            "artifact_bytes": 2_000_000_000u64,
            "requested_at": "2026-01-01T00:00:00Z",
            "charged": { "LAB": [10, 1], "CANARY": [0, 0] },
            "cab_charged": true,
            "by_ring": {
                "LAB": { "device_installs": 20.0, "incidents": 150.0, "cab_review": 240.0 },
                "CANARY": { "connector_calls": 0.5 }
            }
        });
        let meter: CostMeter = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(meter.total(), 410.5);
        assert_eq!(
            meter.by_ring()[&Ring::Lab]
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            [
                Component::DeviceInstalls,
                Component::Incidents,
                Component::CabReview
            ]
        );
        assert_eq!(serde_json::to_value(&meter).unwrap(), stored);
        let mut s = Script::new(9);
        let mut created = s.created("7-Zip", true);
        if let DeploymentEvent::DeploymentCreated(c) = &mut created {
            c.cost_rates = Some(Box::default());
        }
        let mut charged = CostMeter::opened(&created);
        charged.charge(&s.deployed(2.0, Ring::Lab, 0, false));
        let text = serde_json::to_string(&charged).unwrap();
        assert!(text.contains(r#""charged":{"LAB":[0,0]}"#), "{text}");
        assert_eq!(serde_json::from_str::<CostMeter>(&text).unwrap(), charged);
    }

    /// docs/observability.md's worked example, event by event.
    #[test]
    fn a_change_costs_what_its_events_say_at_the_rates_recorded_for_it() {
        let mut s = Script::new(7);
        let mut created = s.created("7-Zip", true);
        if let DeploymentEvent::DeploymentCreated(c) = &mut created {
            c.artifact_bytes = Some(2_000_000_000);
            c.cost_rates = Some(Box::default());
        }
        let mut last = s.deployed(5.0, Ring::Lab, 10, true);
        if let DeploymentEvent::DeploymentDeployed(d) = &mut last {
            d.incidents = 1;
        }
        let dispatched = DeploymentEvent::ConnectorDispatched(Dispatched {
            meta: s.meta(3.5, "system:dispatcher", crate::event::Role::System),
            connector_type: ConnectorType::Intune,
            ring: Ring::Lab,
            action: ConnectorAction::Publish,
            idempotency_key: "k".into(),
            attempts: 3,
        });
        let events = [
            created,
            s.approved(3.0, ApprovalBasis::Cab, "carol"),
            dispatched,
            s.deployed(4.0, Ring::Lab, 6, false),
            last,
            s.rolled_back(6.0, Ring::Lab, Status::Deployed),
        ];
        let mut meter = CostMeter::default();
        let charged: Vec<Vec<(Ring, Component, f64)>> =
            events.iter().map(|e| meter.charge(e)).collect();
        // The CAB's three hours, at 80 an hour.
        assert_eq!(charged[1], vec![(Ring::Lab, Component::CabReview, 240.0)]);
        // Three calls at 0.001.
        assert_eq!(
            charged[2],
            vec![(Ring::Lab, Component::ConnectorCalls, 0.003)]
        );
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let components = meter.components();
        for (component, expected) in [
            // 10 devices at 0.05.
            (Component::DeviceInstalls, 0.5),
            // 10 × 2 GB at 0.02 a GB.
            (Component::Delivery, 0.4),
            (Component::Incidents, 250.0),
            (Component::CabReview, 240.0),
            (Component::ConnectorCalls, 0.003),
            (Component::Rollback, 500.0),
        ] {
            assert!(
                close(components[&component], expected),
                "{component:?}: {components:?}"
            );
        }
        assert!(close(meter.total(), 990.903), "{}", meter.total());
        assert_eq!(amount(meter.total()), "990.903");
        assert_eq!(
            (amount(240.0), amount(0.0), amount(0.0000004)),
            ("240".into(), "0".into(), "0".into())
        );
        assert_eq!(meter.currency(), Some("EUR"));
        // The same events give the same cost, to the bit.
        let mut again = CostMeter::default();
        events.iter().for_each(|e| {
            again.charge(e);
        });
        assert_eq!(again.total().to_bits(), meter.total().to_bits());
        // A request made before costs were recorded costs nothing.
        let mut old = CostMeter::default();
        let mut plain = Script::new(8);
        assert!(old.charge(&plain.created("putty", false)).is_empty());
        assert!(old
            .charge(&plain.deployed(1.0, Ring::Lab, 10, true))
            .is_empty());
        assert_eq!(old.total(), 0.0);
    }
}
