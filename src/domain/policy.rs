//! Promotion gate thresholds: the built-in defaults (docs/rules.md), overridable by an operator's TOML file.
//!
//! ```toml
//! emergency_retro_window = "48h"
//! max_emergency_start_ring = "PILOT"
//!
//! [rings.CANARY]
//! success_rate = 0.98
//! max_incidents = 0
//! min_bake_time = "48h"
//! time_to_compliance = { online = "24h", intermittent = "72h", air_gapped = "7d" }
//!
//! [cab]
//! always_for_critical_infrastructure = true
//!
//! [cost]
//! currency = "EUR"
//! per_device_install = 0.05
//!
//! [forecast]
//! trend_window = "6h"
//! horizon = "4h"
//! cab_queue_limit = 20
//!
//! [slo]
//! api_availability = 0.999
//! api_latency = "500ms"
//! api_latency_objective = 0.99
//! time_to_compliance_objective = 0.95
//! ```
//! Every key is optional; what a file leaves out keeps its default. Durations are a whole number
//! followed by `s`, `m`, `h`, `d` or `w`.

use std::collections::BTreeMap;

use chrono::Duration;
use eucora_projections::cost::{CostRates, CURRENCIES};
use eucora_projections::event::{Ring, SiteClass};
use serde::Deserialize;

/// One ring's gate thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct RingPolicy {
    /// `succeeded / target_devices` that makes the ring compliant.
    pub success_rate: f64,
    pub max_incidents: u64,
    pub min_bake_time: Duration,
    pub time_to_compliance_online: Duration,
    pub time_to_compliance_intermittent: Duration,
    pub time_to_compliance_air_gapped: Duration,
}

impl RingPolicy {
    pub fn time_to_compliance(&self, site: SiteClass) -> Duration {
        match site {
            SiteClass::Online => self.time_to_compliance_online,
            SiteClass::Intermittent => self.time_to_compliance_intermittent,
            SiteClass::AirGapped => self.time_to_compliance_air_gapped,
        }
    }
}

/// The days each SLO is measured over.
pub const SLO_PERIOD_DAYS: u32 = 30;

/// The service level objectives the Prometheus SLO rules are generated from (`eucora slo
/// rules`), each over a 30-day window. The time-to-compliance SLO's bounds are the rings'
/// `time_to_compliance`.
#[derive(Debug, Clone, PartialEq)]
pub struct SloPolicy {
    /// Share of API requests answered without a 5xx.
    pub api_availability: f64,
    /// The latency a request must be answered within, to count as fast.
    pub api_latency: Duration,
    /// Share of API requests answered within `api_latency`.
    pub api_latency_objective: f64,
    /// Share of rollouts compliant within their ring's and site class's time to compliance.
    pub time_to_compliance_objective: f64,
}

/// What the predictive alerts watch (`eucora forecast rules`): how far back a trend is measured,
/// how far ahead it is extrapolated, and the limits it must not pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastPolicy {
    /// The range a queue's trend is measured over (`predict_linear`'s).
    pub trend_window: Duration,
    /// How far ahead a queue's trend is extrapolated.
    pub horizon: Duration,
    /// Intents awaiting a CAB decision.
    pub cab_queue_limit: u64,
    /// Connector actions queued and not yet settled.
    pub outbox_limit: u64,
    /// Emergency changes awaiting their retrospective review.
    pub retro_backlog_limit: u64,
    /// How far ahead an SLO's error budget is extrapolated, at the last day's burn rate; at most
    /// the SLOs' 30-day period.
    pub budget_horizon: Duration,
}

/// When the CAB must decide, besides the risk model's threshold and privileged tooling.
#[derive(Debug, Clone, PartialEq)]
pub struct CabPolicy {
    /// Every change flagged critical infrastructure goes to the CAB, whatever its score.
    pub always_for_critical_infrastructure: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    rings: [RingPolicy; 5],
    pub cab: CabPolicy,
    /// The cost rates recorded on every intent requested under this policy.
    pub cost: CostRates,
    pub slo: SloPolicy,
    pub forecast: ForecastPolicy,
    /// How long after its first deployment an emergency change may be approved retrospectively.
    pub emergency_retro_window: Duration,
    /// The furthest ring an emergency change may start in (it skips the CAB there until it is
    /// approved retrospectively, so how far it reaches is capped).
    pub max_emergency_start_ring: Ring,
    /// SHA-256 of the policy text it was read from, lowercase hex (the built-in default's is
    /// the empty text's: the same rules).
    digest: String,
    /// The text it was read from (empty for the built-in default).
    text: String,
}

impl Default for Policy {
    fn default() -> Self {
        let ring = |rate, incidents, bake, online, intermittent, air_gapped| RingPolicy {
            success_rate: rate,
            max_incidents: incidents,
            min_bake_time: Duration::hours(bake),
            time_to_compliance_online: Duration::hours(online),
            time_to_compliance_intermittent: Duration::hours(intermittent),
            time_to_compliance_air_gapped: Duration::hours(air_gapped),
        };
        Policy {
            rings: [
                ring(0.95, 1, 24, 4, 8, 24),
                ring(0.98, 0, 48, 24, 72, 168),
                ring(0.97, 0, 72, 24, 72, 168),
                ring(0.99, 0, 168, 24, 72, 168),
                ring(0.99, 0, 0, 24, 72, 168),
            ],
            emergency_retro_window: Duration::hours(48),
            max_emergency_start_ring: Ring::Pilot,
            cab: CabPolicy {
                always_for_critical_infrastructure: true,
            },
            cost: CostRates::default(),
            slo: SloPolicy {
                api_availability: 0.999,
                api_latency: Duration::milliseconds(500),
                api_latency_objective: 0.99,
                time_to_compliance_objective: 0.95,
            },
            forecast: ForecastPolicy {
                trend_window: Duration::hours(6),
                horizon: Duration::hours(4),
                cab_queue_limit: 20,
                outbox_limit: 500,
                retro_backlog_limit: 5,
                budget_horizon: Duration::days(7),
            },
            digest: digest_of(""),
            text: String::new(),
        }
    }
}

/// SHA-256 of a policy's text, lowercase hex.
pub fn digest_of(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("policy file is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("policy file is not valid: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    emergency_retro_window: Option<String>,
    max_emergency_start_ring: Option<String>,
    #[serde(default)]
    rings: BTreeMap<String, RingOverride>,
    cab: Option<CabOverride>,
    slo: Option<SloOverride>,
    cost: Option<CostOverride>,
    forecast: Option<ForecastOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForecastOverride {
    trend_window: Option<String>,
    horizon: Option<String>,
    cab_queue_limit: Option<i64>,
    outbox_limit: Option<i64>,
    retro_backlog_limit: Option<i64>,
    budget_horizon: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CostOverride {
    currency: Option<String>,
    per_device_install: Option<f64>,
    per_gb_delivered: Option<f64>,
    per_connector_call: Option<f64>,
    per_incident: Option<f64>,
    per_cab_review_hour: Option<f64>,
    per_rollback: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CabOverride {
    always_for_critical_infrastructure: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SloOverride {
    api_availability: Option<f64>,
    api_latency: Option<String>,
    api_latency_objective: Option<f64>,
    time_to_compliance_objective: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RingOverride {
    success_rate: Option<f64>,
    max_incidents: Option<u64>,
    min_bake_time: Option<String>,
    time_to_compliance: Option<SiteOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteOverride {
    online: Option<String>,
    intermittent: Option<String>,
    air_gapped: Option<String>,
}

impl Policy {
    /// SHA-256 of the policy text it was read from, lowercase hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The text it was read from (empty for the built-in default).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn ring(&self, ring: Ring) -> &RingPolicy {
        &self.rings[ring.index()]
    }

    /// Reads a policy file, applying it over the defaults.
    pub fn load(path: &str) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: super::absolute(path),
            source,
        })?;
        Policy::from_toml(&text)
    }

    /// Parses policy TOML, applying it over the defaults.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text)?;
        let mut policy = Policy {
            digest: digest_of(text),
            text: text.to_string(),
            ..Policy::default()
        };
        if let Some(w) = file.emergency_retro_window {
            policy.emergency_retro_window = parse_duration("emergency_retro_window", &w)?;
        }
        if let Some(name) = file.max_emergency_start_ring {
            policy.max_emergency_start_ring = parse_ring("max_emergency_start_ring", &name)?;
        }
        if let Some(always) = file.cab.and_then(|c| c.always_for_critical_infrastructure) {
            policy.cab.always_for_critical_infrastructure = always;
        }
        if let Some(o) = file.slo {
            let objective = |key: &str, value: Option<f64>, into: &mut f64| {
                if let Some(v) = value {
                    // An objective of 1 leaves no error budget to burn.
                    if !(v > 0.0 && v < 1.0) {
                        return Err(PolicyError::Invalid(format!(
                            "slo.{key} must be above 0 and below 1 (0.999 is 99.9 %), got {v}"
                        )));
                    }
                    *into = v;
                }
                Ok(())
            };
            let slo = &mut policy.slo;
            objective(
                "api_availability",
                o.api_availability,
                &mut slo.api_availability,
            )?;
            objective(
                "api_latency_objective",
                o.api_latency_objective,
                &mut slo.api_latency_objective,
            )?;
            objective(
                "time_to_compliance_objective",
                o.time_to_compliance_objective,
                &mut slo.time_to_compliance_objective,
            )?;
            if let Some(d) = o.api_latency {
                slo.api_latency = parse_duration("slo.api_latency", &d)?;
            }
        }
        if let Some(o) = file.cost {
            let cost = &mut policy.cost;
            if let Some(code) = o.currency {
                if !CURRENCIES.contains(&code.as_str()) {
                    return Err(PolicyError::Invalid(format!(
                        "cost.currency {code:?} is not an ISO 4217 currency code (like EUR, USD, GBP)"
                    )));
                }
                cost.currency = code;
            }
            for (key, value, into) in [
                (
                    "per_device_install",
                    o.per_device_install,
                    &mut cost.per_device_install,
                ),
                (
                    "per_gb_delivered",
                    o.per_gb_delivered,
                    &mut cost.per_gb_delivered,
                ),
                (
                    "per_connector_call",
                    o.per_connector_call,
                    &mut cost.per_connector_call,
                ),
                ("per_incident", o.per_incident, &mut cost.per_incident),
                (
                    "per_cab_review_hour",
                    o.per_cab_review_hour,
                    &mut cost.per_cab_review_hour,
                ),
                ("per_rollback", o.per_rollback, &mut cost.per_rollback),
            ] {
                if let Some(v) = value {
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(PolicyError::Invalid(format!(
                            "cost.{key} must be a number from 0, got {v}"
                        )));
                    }
                    *into = v;
                }
            }
        }
        if let Some(o) = file.forecast {
            forecast(&mut policy.forecast, o)?;
        }
        for (name, o) in file.rings {
            let ring = parse_ring("rings", &name)?;
            let p = &mut policy.rings[ring.index()];
            if let Some(rate) = o.success_rate {
                if !(rate > 0.0 && rate <= 1.0) {
                    return Err(PolicyError::Invalid(format!(
                        "rings.{name}.success_rate must be in (0, 1], got {rate}"
                    )));
                }
                p.success_rate = rate;
            }
            if let Some(n) = o.max_incidents {
                p.max_incidents = n;
            }
            if let Some(d) = o.min_bake_time {
                p.min_bake_time = parse_duration(&format!("rings.{name}.min_bake_time"), &d)?;
            }
            if let Some(t) = o.time_to_compliance {
                let key = |site: &str| format!("rings.{name}.time_to_compliance.{site}");
                if let Some(d) = t.online {
                    p.time_to_compliance_online = parse_duration(&key("online"), &d)?;
                }
                if let Some(d) = t.intermittent {
                    p.time_to_compliance_intermittent = parse_duration(&key("intermittent"), &d)?;
                }
                if let Some(d) = t.air_gapped {
                    p.time_to_compliance_air_gapped = parse_duration(&key("air_gapped"), &d)?;
                }
            }
        }
        Ok(policy)
    }
}

/// Applies a file's `[forecast]` table: durations above zero (a trend window of at least ten
/// minutes, a budget horizon of at most the SLOs' period), limits whole numbers from 1.
fn forecast(into: &mut ForecastPolicy, o: ForecastOverride) -> Result<(), PolicyError> {
    for (key, value, into, least) in [
        (
            "trend_window",
            o.trend_window,
            &mut into.trend_window,
            Duration::minutes(10),
        ),
        (
            "horizon",
            o.horizon,
            &mut into.horizon,
            Duration::minutes(1),
        ),
        (
            "budget_horizon",
            o.budget_horizon,
            &mut into.budget_horizon,
            Duration::hours(1),
        ),
    ] {
        if let Some(text) = value {
            let d = parse_duration(&format!("forecast.{key}"), &text)?;
            if d < least {
                return Err(PolicyError::Invalid(format!(
                    "forecast.{key} must be at least {}, got {text:?}",
                    duration_text(least)
                )));
            }
            *into = d;
        }
    }
    let period = Duration::days(i64::from(SLO_PERIOD_DAYS));
    if into.budget_horizon > period {
        return Err(PolicyError::Invalid(format!(
            "forecast.budget_horizon must be at most the SLOs' period, {}",
            duration_text(period)
        )));
    }
    for (key, value, into) in [
        (
            "cab_queue_limit",
            o.cab_queue_limit,
            &mut into.cab_queue_limit,
        ),
        ("outbox_limit", o.outbox_limit, &mut into.outbox_limit),
        (
            "retro_backlog_limit",
            o.retro_backlog_limit,
            &mut into.retro_backlog_limit,
        ),
    ] {
        if let Some(n) = value {
            *into = u64::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
                PolicyError::Invalid(format!(
                    "forecast.{key} must be a whole number from 1, got {n}"
                ))
            })?;
        }
    }
    Ok(())
}

/// A duration as a policy file (and PromQL) writes it, in its largest whole unit: `10m`, `6h`,
/// `30d`.
pub fn duration_text(d: Duration) -> String {
    let s = d.num_seconds();
    match s {
        _ if s % 86_400 == 0 => format!("{}d", s / 86_400),
        _ if s % 3600 == 0 => format!("{}h", s / 3600),
        _ if s % 60 == 0 => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

fn parse_ring(key: &str, name: &str) -> Result<Ring, PolicyError> {
    Ring::parse(name).ok_or_else(|| {
        PolicyError::Invalid(format!(
            "{key}: unknown ring {name:?} (expected LAB, CANARY, PILOT, DEPARTMENT or GLOBAL)"
        ))
    })
}

/// Parses `500ms`, `90s`, `15m`, `4h`, `7d` or `2w`: a whole number and a unit.
pub fn duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Some(number) = text.strip_suffix("ms") {
        let n: i64 = number.parse().ok().filter(|n| *n >= 0)?;
        return Duration::try_milliseconds(n);
    }
    let split = text.len().checked_sub(1)?;
    let (number, unit) = text.split_at_checked(split)?;
    let n: i64 = number.parse().ok().filter(|n| *n >= 0)?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return None,
    };
    n.checked_mul(seconds).and_then(Duration::try_seconds)
}

/// [`duration`] for a policy key, with the key named when it is not one.
fn parse_duration(key: &str, text: &str) -> Result<Duration, PolicyError> {
    duration(text).ok_or_else(|| {
        PolicyError::Invalid(format!(
            "{key}: {text:?} is not a duration like \"30m\", \"24h\" or \"7d\""
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_a_whole_number_and_a_unit() {
        assert_eq!(duration("500ms"), Some(Duration::milliseconds(500)));
        assert_eq!(duration("90s"), Some(Duration::seconds(90)));
        assert_eq!(duration(" 2w "), Some(Duration::weeks(2)));
        for bad in ["", "s", "ms", "1.5s", "-1s", "10", "5x", "1 ms"] {
            assert_eq!(duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn defaults_follow_the_domain_table() {
        let p = Policy::default();
        assert_eq!(p.ring(Ring::Lab).success_rate, 0.95);
        assert_eq!(p.ring(Ring::Lab).max_incidents, 1);
        assert_eq!(
            p.ring(Ring::Lab)
                .time_to_compliance(SiteClass::Intermittent),
            Duration::hours(8)
        );
        assert_eq!(p.ring(Ring::Department).min_bake_time, Duration::days(7));
        assert_eq!(
            p.ring(Ring::Canary)
                .time_to_compliance(SiteClass::AirGapped),
            Duration::days(7)
        );
        assert_eq!(p.emergency_retro_window, Duration::hours(48));
        assert_eq!(p.max_emergency_start_ring, Ring::Pilot);
    }

    #[test]
    fn slo_objectives_are_read_and_one_without_a_budget_is_refused() {
        let p =
            Policy::from_toml("[slo]\napi_availability = 0.995\napi_latency = \"250ms\"").unwrap();
        assert_eq!(p.slo.api_availability, 0.995);
        assert_eq!(p.slo.api_latency, Duration::milliseconds(250));
        assert_eq!(p.slo.time_to_compliance_objective, 0.95);
        for bad in [
            "api_availability = 1.0",
            "api_latency_objective = 0",
            "time_to_compliance_objective = 99.9",
        ] {
            let err = Policy::from_toml(&format!("[slo]\n{bad}")).unwrap_err();
            assert!(
                err.to_string().contains("must be above 0 and below 1"),
                "{err}"
            );
        }
    }

    #[test]
    fn cost_rates_are_read_and_bad_ones_refused_in_our_words() {
        let p = Policy::from_toml("[cost]\ncurrency = \"GBP\"\nper_incident = 400\n").unwrap();
        assert_eq!(p.cost.currency, "GBP");
        assert_eq!(p.cost.per_incident, 400.0);
        // What the file leaves out keeps its default.
        assert_eq!(p.cost.per_rollback, CostRates::default().per_rollback);
        for (bad, says) in [
            ("currency = \"EURO\"", "not an ISO 4217 currency code"),
            ("currency = \"eur\"", "not an ISO 4217 currency code"),
            (
                "per_device_install = -0.5",
                "cost.per_device_install must be a number from 0",
            ),
            (
                "per_gb_delivered = nan",
                "cost.per_gb_delivered must be a number from 0",
            ),
            (
                "per_rollback = inf",
                "cost.per_rollback must be a number from 0",
            ),
            ("per_cab_review_hour = \"ten\"", "invalid type"),
            ("per_device = 1", "unknown field"),
        ] {
            let err = Policy::from_toml(&format!("[cost]\n{bad}")).unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn forecast_settings_are_read_and_bad_ones_refused_in_our_words() {
        let p = Policy::from_toml("[forecast]\nhorizon = \"2h\"\noutbox_limit = 50\n").unwrap();
        assert_eq!(p.forecast.horizon, Duration::hours(2));
        assert_eq!(p.forecast.outbox_limit, 50);
        assert_eq!(p.forecast.trend_window, Duration::hours(6));
        for (bad, says) in [
            ("horizon = \"0s\"", "forecast.horizon must be at least 1m"),
            (
                "trend_window = \"5m\"",
                "forecast.trend_window must be at least 10m",
            ),
            (
                "budget_horizon = \"0h\"",
                "forecast.budget_horizon must be at least 1h",
            ),
            ("budget_horizon = \"31d\"", "at most the SLOs' period, 30d"),
            (
                "horizon = \"soon\"",
                "forecast.horizon: \"soon\" is not a duration",
            ),
            (
                "cab_queue_limit = 0",
                "forecast.cab_queue_limit must be a whole number from 1",
            ),
            (
                "outbox_limit = -3",
                "forecast.outbox_limit must be a whole number from 1, got -3",
            ),
            ("retro_backlog_limit = \"many\"", "invalid type"),
            ("limit = 1", "unknown field"),
        ] {
            let err = Policy::from_toml(&format!("[forecast]\n{bad}")).unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn a_file_overrides_only_what_it_names() {
        let p = Policy::from_toml(
            r#"
            emergency_retro_window = "72h"
            max_emergency_start_ring = "LAB"
            [rings.LAB]
            min_bake_time = "0s"
            time_to_compliance = { online = "30m" }
            "#,
        )
        .unwrap();
        assert_eq!(p.ring(Ring::Lab).min_bake_time, Duration::zero());
        assert_eq!(
            p.ring(Ring::Lab).time_to_compliance_online,
            Duration::minutes(30)
        );
        assert_eq!(
            p.ring(Ring::Lab).time_to_compliance_intermittent,
            Duration::hours(8)
        );
        assert_eq!(p.ring(Ring::Lab).success_rate, 0.95);
        assert_eq!(p.emergency_retro_window, Duration::hours(72));
        assert_eq!(p.max_emergency_start_ring, Ring::Lab);
    }

    #[test]
    fn bad_files_are_refused_with_the_key_named() {
        let cases = [
            ("[rings.MOON]\nsuccess_rate = 0.5", "unknown ring"),
            ("[rings.LAB]\nsuccess_rate = 1.5", "rings.LAB.success_rate"),
            (
                "[rings.LAB]\nmin_bake_time = \"soon\"",
                "rings.LAB.min_bake_time",
            ),
            ("[rings.LAB]\nbake = \"1h\"", "unknown field"),
            ("emergency_retro_window = \"-1h\"", "emergency_retro_window"),
            (
                "max_emergency_start_ring = \"MARS\"",
                "max_emergency_start_ring: unknown ring",
            ),
        ];
        for (text, expected) in cases {
            let err = Policy::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?} gave {err}");
        }
    }
}
