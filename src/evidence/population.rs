//! The population: a bundle's events folded per intent into `controls.json` and `changes.csv`.

use std::collections::BTreeMap;

use eucora_projections::decode::StreamEvent;
use eucora_projections::event::{ApprovalBasis, DeploymentEvent, Ring};

use super::controls::{intent_controls, verdict, ControlsFile};

/// Folds the bundle's events into controls and the population, in one pass of bounded state per
/// intent (its events' decoded forms are kept until the end: a bundle's intents, not the log's).
#[derive(Default)]
pub struct Population {
    intents: BTreeMap<String, Vec<(u64, DeploymentEvent)>>,
    /// Each intent's sequences seen, to check they are contiguous.
    sequences: BTreeMap<String, Vec<i64>>,
    indices: Vec<u64>,
    undecodable: Vec<u64>,
    /// The principals whose events (access changes) are in the population.
    principals: std::collections::BTreeSet<String>,
}

impl Population {
    /// One event of the bundle, decoded (`None`: it does not decode).
    pub(super) fn add(
        &mut self,
        index: u64,
        aggregate_id: &str,
        sequence: i64,
        event: Option<StreamEvent>,
    ) {
        self.indices.push(index);
        match self.sequences.get_mut(aggregate_id) {
            Some(sequences) => sequences.push(sequence),
            None => {
                self.sequences.insert(aggregate_id.into(), vec![sequence]);
            }
        }
        match event {
            Some(StreamEvent::Access(_)) => {
                self.principals.insert(aggregate_id.into());
            }
            Some(StreamEvent::Deployment(e)) => match self.intents.get_mut(aggregate_id) {
                Some(events) => events.push((index, e)),
                None => {
                    self.intents.insert(aggregate_id.into(), vec![(index, e)]);
                }
            },
            None => self.undecodable.push(index),
        }
    }

    pub fn controls(&self) -> ControlsFile {
        let contiguous_leaves = self.indices.windows(2).all(|w| w[1] > w[0]);
        let gaps: Vec<String> = self
            .sequences
            .iter()
            .filter(|(_, s)| s.windows(2).any(|w| w[1] != w[0] + 1))
            .map(|(id, _)| id.clone())
            .collect();
        let population_complete = if !contiguous_leaves
            || !gaps.is_empty()
            || !self.undecodable.is_empty()
        {
            verdict(
                "population_complete",
                "fail",
                self.undecodable.clone(),
                format!(
                    "leaf indices in order: {contiguous_leaves}; intents with a gap in their stream: {}; events that do not decode: {}",
                    gaps.join(" "),
                    self.undecodable.len()
                ),
            )
        } else {
            verdict(
                "population_complete",
                "pass",
                vec![],
                format!(
                    "{} events of {} intents and {} principals, stream versions contiguous",
                    self.indices.len(),
                    self.intents.len(),
                    self.principals.len()
                ),
            )
        };
        ControlsFile {
            population_complete,
            intents: self
                .intents
                .iter()
                .map(|(id, events)| intent_controls(id, events))
                .collect(),
        }
    }

    /// `changes.csv`: one row per intent with any event in the bundle.
    pub fn changes_csv(&self) -> String {
        let mut out = String::from(
            "deployment_id,app_name,version,change_type,risk_score,cab_required,requester,approvals,\
             first_deployed_lab,first_deployed_canary,first_deployed_pilot,first_deployed_department,\
             first_deployed_global,emergency,retro_approved_at,outcome,leaves\n",
        );
        for (id, events) in &self.intents {
            let created = events.iter().find_map(|(_, e)| match e {
                DeploymentEvent::DeploymentCreated(c) => Some(c),
                _ => None,
            });
            let approvals: Vec<String> = events
                .iter()
                .filter_map(|(_, e)| match e {
                    DeploymentEvent::DeploymentApproved(a) => Some(format!(
                        "{}@{}",
                        a.approver,
                        a.meta
                            .occurred_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )),
                    _ => None,
                })
                .collect();
            let first_in = |ring: Ring| {
                events
                    .iter()
                    .find_map(|(_, e)| match e {
                        DeploymentEvent::DeploymentDeployed(d) if d.ring == ring => Some(
                            d.meta
                                .occurred_at
                                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        ),
                        _ => None,
                    })
                    .unwrap_or_default()
            };
            let emergency = events.iter().any(|(_, e)| {
                matches!(e, DeploymentEvent::DeploymentApproved(a) if a.basis == ApprovalBasis::EmergencyProvisional)
            });
            let retro = events
                .iter()
                .find_map(|(_, e)| match e {
                    DeploymentEvent::DeploymentApproved(a)
                        if a.basis == ApprovalBasis::CabRetrospective =>
                    {
                        Some(
                            a.meta
                                .occurred_at
                                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        )
                    }
                    _ => None,
                })
                .unwrap_or_default();
            let state =
                eucora_projections::intent::IntentState::replay(events.iter().map(|(_, e)| e));
            let leaves: Vec<String> = events.iter().map(|(i, _)| i.to_string()).collect();
            let fields = [
                id.clone(),
                created.map(|c| c.app_name.clone()).unwrap_or_default(),
                created.map(|c| c.version.clone()).unwrap_or_default(),
                created
                    .map(|c| format!("{:?}", c.change_type).to_lowercase())
                    .unwrap_or_default(),
                created
                    .map(|c| c.risk.score.to_string())
                    .unwrap_or_default(),
                created
                    .map(|c| c.risk.requires_cab.to_string())
                    .unwrap_or_default(),
                created
                    .map(|c| c.meta.actor.subject.clone())
                    .unwrap_or_default(),
                approvals.join(";"),
                first_in(Ring::Lab),
                first_in(Ring::Canary),
                first_in(Ring::Pilot),
                first_in(Ring::Department),
                first_in(Ring::Global),
                emergency.to_string(),
                retro,
                state
                    .map(|s| s.status.as_str().to_string())
                    .unwrap_or_else(|| "created before this bundle".into()),
                leaves.join(";"),
            ];
            let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
            out.push_str(&line.join(","));
            out.push('\n');
        }
        out
    }
}

/// RFC 4180: quoted when it holds a comma, a quote or a line break; quotes doubled.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn csv_fields_with_commas_or_quotes_are_quoted() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
