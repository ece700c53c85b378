//! When a rollout will be compliant: each ring's reports extrapolated to its success threshold,
//! against the deadline recorded with them (ring entry plus the ring's and site class's
//! `time_to_compliance`, under the policy in force at the report). Deterministic: a function of
//! the intent's events alone, as of its latest report, so every replica and every replay agrees.
//!
//! The install rate is the success share gained from the ring's first report to its latest, over
//! the time between them; with one report (or several at one instant), from ring entry (share 0)
//! to it. The expected compliance time is the latest report's plus what is left to the threshold
//! at that rate. A rollout that gains nothing has no expected time, and will miss any deadline.

use chrono::{DateTime, Duration, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{ApprovalBasis, DeploymentEvent, Ring};

/// Beyond this, an extrapolation is no time at all: ten years.
const LONGEST_SECONDS: f64 = 10.0 * 365.0 * 86_400.0;

/// A rollout's forecast in its current ring, as of its latest report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Forecast {
    /// The ring reported on.
    pub ring: Ring,
    /// The ring's success threshold (`succeeded / target_devices`) in force at the report.
    pub threshold: f64,
    /// The latest report's success share.
    pub share: f64,
    /// The latest report's time: what the forecast is as of.
    pub as_of: DateTime<Utc>,
    /// When the ring must be compliant by; `None` for reports recorded before deadlines were
    /// (no deadline to miss).
    pub due_at: Option<DateTime<Utc>>,
    /// The threshold was reached (`expected_at` is when).
    pub compliant: bool,
    /// When it was reached, or is expected to be at the current rate; `None` when the rollout
    /// gains nothing.
    pub expected_at: Option<DateTime<Utc>>,
    /// It reached, or is expected to reach, the threshold after `due_at` (or never).
    pub will_miss_deadline: bool,
}

/// One intent's forecast, and what it needs to forecast its next report.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Forecaster {
    /// When the current ring was entered (approval, or promotion).
    entered_at: Option<DateTime<Utc>>,
    /// The ring's first report: its time and share.
    first: Option<(DateTime<Utc>, f64)>,
    /// The rollout ended (completed, rolled back, rejected): nothing more is forecast.
    ended: bool,
    /// The forecast in the current ring, once it has a report.
    pub forecast: Option<Forecast>,
}

impl Forecaster {
    /// Folds `event` of the intent.
    pub fn fold(&mut self, event: &DeploymentEvent) {
        let at = event.meta().occurred_at;
        match event {
            DeploymentEvent::DeploymentApproved(e)
                if e.basis != ApprovalBasis::CabRetrospective =>
            {
                self.enter(at)
            }
            DeploymentEvent::RingPromoted(_) => self.enter(at),
            DeploymentEvent::DeploymentCompleted(_) | DeploymentEvent::DeploymentRolledBack(_) => {
                self.ended = true
            }
            DeploymentEvent::DeploymentRejected(e) if !e.retrospective => self.ended = true,
            DeploymentEvent::DeploymentDeployed(e) => {
                let share = e.success_rate;
                let first = *self.first.get_or_insert((at, share));
                let reached = self
                    .forecast
                    .as_ref()
                    .filter(|f| f.compliant && f.ring == e.ring)
                    .and_then(|f| f.expected_at);
                let (compliant, expected_at) = match reached {
                    Some(when) => (true, Some(when)),
                    None if share >= e.compliance_threshold => (true, Some(at)),
                    None => {
                        let (from, from_share) = if first.0 < at {
                            first
                        } else {
                            (self.entered_at.unwrap_or(at), 0.0)
                        };
                        (
                            false,
                            extrapolate(from, from_share, at, share, e.compliance_threshold),
                        )
                    }
                };
                let will_miss_deadline = match (e.compliance_due_at, expected_at) {
                    (None, _) => false,
                    (Some(due), Some(expected)) => expected > due,
                    (Some(_), None) => true,
                };
                self.forecast = Some(Forecast {
                    ring: e.ring,
                    threshold: e.compliance_threshold,
                    share,
                    as_of: at,
                    due_at: e.compliance_due_at,
                    compliant,
                    expected_at,
                    will_miss_deadline,
                });
            }
            _ => {}
        }
    }

    fn enter(&mut self, at: DateTime<Utc>) {
        self.entered_at = Some(at);
        self.first = None;
        self.forecast = None;
    }

    /// Whether the rollout ended (completed, rolled back, rejected): for good, as nothing that
    /// follows an end makes it forecast again.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The forecast of a rollout not ended (completed, rolled back, rejected), once its ring
    /// has a report.
    pub fn current(&self) -> Option<&Forecast> {
        self.forecast.as_ref().filter(|_| !self.ended)
    }

    /// An open rollout (not compliant in its ring, not ended) forecast to miss its deadline:
    /// the ring it is in.
    pub fn missing(&self) -> Option<Ring> {
        self.current()
            .filter(|f| !f.compliant && f.will_miss_deadline)
            .map(|f| f.ring)
    }
}

/// When the share reaches `threshold`, at the rate from (`from`, `from_share`) to (`at`,
/// `share`); `None` when it gains nothing, or would take longer than any plan.
fn extrapolate(
    from: DateTime<Utc>,
    from_share: f64,
    at: DateTime<Utc>,
    share: f64,
    threshold: f64,
) -> Option<DateTime<Utc>> {
    let elapsed = (at - from).num_milliseconds() as f64 / 1000.0;
    let gained = share - from_share;
    if elapsed <= 0.0 || gained <= 0.0 {
        return None;
    }
    let left = (threshold - share) * elapsed / gained;
    (left <= LONGEST_SECONDS).then(|| at + Duration::milliseconds((left * 1000.0).round() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ApprovalBasis as B, Status};
    use crate::fixtures::Script;

    /// A report of `succeeded` of 100 devices `hours` after creation, due `due` hours after it.
    fn report(s: &mut Script, hours: f64, succeeded: u64, due: f64) -> DeploymentEvent {
        let mut e = s.deployed(hours, Ring::Lab, 0, false);
        if let DeploymentEvent::DeploymentDeployed(d) = &mut e {
            d.target_devices = 100;
            (d.succeeded, d.failed) = (succeeded, 0);
            d.success_rate = succeeded as f64 / 100.0;
            d.compliance_threshold = 0.95;
            d.compliance_due_at = Some(s.at(due));
        }
        e
    }

    fn folded(events: &[DeploymentEvent]) -> Forecaster {
        let mut f = Forecaster::default();
        events.iter().for_each(|e| f.fold(e));
        f
    }

    #[test]
    fn a_rollout_is_extrapolated_from_its_first_report_to_its_latest() {
        let mut s = Script::new(1);
        let created = s.created("app", false);
        let approved = s.approved(0.0, B::Policy, "policy:auto");
        // One report: 20 % in the two hours since ring entry, so 95 % at 9.5 h; due at 4 h.
        let one = report(&mut s, 2.0, 20, 4.0);
        let f = folded(&[created.clone(), approved.clone(), one.clone()]);
        let forecast = f.forecast.clone().unwrap();
        assert_eq!(forecast.expected_at, Some(s.at(9.5)));
        assert!(forecast.will_miss_deadline && !forecast.compliant);
        assert_eq!(f.missing(), Some(Ring::Lab));
        // A second: 80 % at 3 h, a gain of 60 points in an hour: 95 % at 3 h 15 m, in time.
        let two = report(&mut s, 3.0, 80, 4.0);
        let f = folded(&[created.clone(), approved.clone(), one.clone(), two]);
        let forecast = f.forecast.clone().unwrap();
        assert_eq!(forecast.expected_at, Some(s.at(3.25)));
        assert!(!forecast.will_miss_deadline);
        assert_eq!(f.missing(), None);
        // No gain since the first report: no expected time, and the deadline will be missed.
        let stuck = report(&mut s, 3.0, 20, 4.0);
        let f = folded(&[created.clone(), approved.clone(), one.clone(), stuck]);
        let forecast = f.forecast.clone().unwrap();
        assert_eq!(forecast.expected_at, None);
        assert!(forecast.will_miss_deadline);
        // Compliant at 3.5 h: when it was reached, and it stays so.
        let done = report(&mut s, 3.5, 96, 4.0);
        let later = report(&mut s, 5.0, 97, 4.0);
        let f = folded(&[created, approved, one, done, later]);
        let forecast = f.forecast.clone().unwrap();
        assert!(forecast.compliant && !forecast.will_miss_deadline);
        assert_eq!(forecast.expected_at, Some(s.at(3.5)));
        assert_eq!(f.missing(), None);
    }

    #[test]
    fn a_rollout_without_a_recorded_deadline_misses_none_and_an_ended_one_is_not_counted() {
        let mut s = Script::new(2);
        let created = s.created("app", false);
        let approved = s.approved(0.0, B::Policy, "policy:auto");
        let mut old = report(&mut s, 2.0, 20, 4.0);
        if let DeploymentEvent::DeploymentDeployed(d) = &mut old {
            d.compliance_due_at = None;
        }
        let f = folded(&[created.clone(), approved.clone(), old]);
        assert!(!f.forecast.unwrap().will_miss_deadline);
        let late = report(&mut s, 2.0, 20, 4.0);
        let rolled_back = s.rolled_back(3.0, Ring::Lab, Status::Deployed);
        let f = folded(&[created, approved, late, rolled_back]);
        assert!(f.forecast.as_ref().unwrap().will_miss_deadline);
        assert_eq!(f.missing(), None, "a rolled-back rollout is not open");
        assert_eq!(f.current(), None, "nor forecast");
    }
}
