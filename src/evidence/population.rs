//! The population: a bundle's events folded per intent into `controls.json` and `changes.csv`.

use std::collections::{BTreeMap, HashMap};

use eucora_projections::decode::StreamEvent;
use eucora_projections::event::DeploymentEvent;
use eucora_projections::governance::GovernanceEvent;

use chrono::{DateTime, Utc};

use super::controls::{intent_controls, rfc3339, verdict, ControlsFile, FAIL, PASS};
use super::format::Format;

/// A bundle's events gathered in leaf order, one map lookup each (a hash map: a B-tree's string
/// comparisons were most of the fold's time), then moved into a [`Population`]'s B-trees once.
#[derive(Default)]
pub struct Gathering {
    streams: HashMap<String, Gathered>,
    indices: Vec<u64>,
    undecodable: Vec<u64>,
    governance: Vec<(u64, GovernanceEvent)>,
}

/// One stream's events as gathered: its sequences, its decoded intent events, whether it is a
/// principal's.
#[derive(Default)]
struct Gathered {
    sequences: Vec<i64>,
    events: Vec<(u64, DeploymentEvent)>,
    principal: bool,
}

impl Gathering {
    /// One event of the bundle, decoded (`None`: it does not decode).
    pub(super) fn add(
        &mut self,
        index: u64,
        aggregate_id: &str,
        sequence: i64,
        event: Option<StreamEvent>,
    ) {
        self.indices.push(index);
        let stream = match self.streams.get_mut(aggregate_id) {
            Some(stream) => stream,
            None => self.streams.entry(aggregate_id.into()).or_default(),
        };
        stream.sequences.push(sequence);
        match event {
            Some(StreamEvent::Access(_)) => stream.principal = true,
            Some(StreamEvent::Governance(e)) => self.governance.push((index, e)),
            Some(StreamEvent::Deployment(e)) => stream.events.push((index, e)),
            None => self.undecodable.push(index),
        }
    }

    /// The population of every event added, its streams in the order of their ids (the
    /// population's B-trees keep it).
    pub(super) fn population(self) -> Population {
        let mut population = Population {
            indices: self.indices,
            undecodable: self.undecodable,
            governance: self.governance,
            ..Population::default()
        };
        for (id, stream) in self.streams {
            if stream.principal {
                population.principals.insert(id.clone());
            }
            if !stream.events.is_empty() {
                population.intents.insert(id.clone(), stream.events);
            }
            population.sequences.insert(id, stream.sequences);
        }
        population
    }
}

/// A bundle's events folded per intent into `controls.json` and `changes.csv` (each intent's
/// decoded events kept until the end: a bundle's intents, not the log's).
#[derive(Default)]
pub struct Population {
    intents: BTreeMap<String, Vec<(u64, DeploymentEvent)>>,
    /// Each intent's sequences seen, to check they are contiguous.
    sequences: BTreeMap<String, Vec<i64>>,
    indices: Vec<u64>,
    undecodable: Vec<u64>,
    /// The principals whose events (access changes) are in the population.
    principals: std::collections::BTreeSet<String>,
    /// The policies activated and the commands refused, with their leaf indices.
    governance: Vec<(u64, GovernanceEvent)>,
    /// Each intent's `changes.csv` row, made once when first asked for.
    rows: std::sync::OnceLock<BTreeMap<String, Vec<String>>>,
}

impl Population {
    /// How many deployment intents it holds.
    pub fn intent_count(&self) -> usize {
        self.intents.len()
    }

    /// How many events it holds.
    pub fn event_count(&self) -> usize {
        self.indices.len()
    }

    /// Each intent's `changes.csv` row (its fields in `COLUMNS` order), by id.
    pub fn rows(&self) -> &BTreeMap<String, Vec<String>> {
        self.rows.get_or_init(|| {
            let all: Vec<_> = self.intents.iter().collect();
            super::halves(&all, |(id, events)| {
                ((*id).clone(), super::changes::row(id, events))
            })
            .into_iter()
            .collect()
        })
    }

    /// Each intent's events, with their leaf indices, by id.
    pub fn histories(&self) -> impl Iterator<Item = (&String, &Vec<(u64, DeploymentEvent)>)> {
        self.intents.iter()
    }

    /// Every verdict, judged at `as_of` (the period's end, or a deployment bundle's export time).
    pub fn controls(&self, as_of: DateTime<Utc>) -> ControlsFile {
        let contiguous_leaves = self.indices.windows(2).all(|w| w[1] > w[0]);
        // A gap in a stream, or an intent without its first events (every intent of a bundle
        // comes with its whole history; a principal's stream only with its events in the period).
        let gaps: Vec<String> = self
            .sequences
            .iter()
            .filter(|(id, s)| {
                s.windows(2).any(|w| w[1] != w[0] + 1)
                    || (self.intents.contains_key(*id) && s.first() != Some(&1))
            })
            .map(|(id, _)| id.clone())
            .collect();
        let population_complete = if !contiguous_leaves
            || !gaps.is_empty()
            || !self.undecodable.is_empty()
        {
            verdict(
                "population_complete",
                FAIL,
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
                PASS,
                vec![],
                format!(
                    "{} events of {} intents and {} principals, stream versions contiguous",
                    self.indices.len(),
                    self.intents.len(),
                    self.principals.len()
                ),
            )
        };
        // The intents judged and their rows (needed next) made in halves, each on a thread of
        // its own, the policies on another: the cores share them, so none is left running
        // alone at the end (the rows and the policies on one thread took as long as the rest).
        let all: Vec<_> = self.intents.iter().collect();
        let (intents, policies) = std::thread::scope(|scope| {
            scope.spawn(|| self.rows());
            let policies =
                scope.spawn(|| super::governance::policies(&self.governance, &self.intents));
            let intents = super::halves(&all, |(id, events)| intent_controls(id, events, as_of));
            (intents, super::joined(policies))
        });
        ControlsFile {
            as_of: rfc3339(as_of),
            population_complete,
            intents,
            policies,
            refused_commands: super::governance::refused_commands(&self.governance),
        }
    }

    /// `changes.csv` of a bundle of `format`: one row per intent of the population.
    pub fn changes_csv(&self, format: Format) -> String {
        super::changes::changes_csv(self.rows().values(), format)
    }
}
