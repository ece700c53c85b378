//! The intent read model: each intent's state after its last event, with the ordinal of its
//! creation event as the list's sort key. `eucora serve` keeps it in `intent_view`, batch by
//! batch, with its checkpoint; `eucora replay` folds it in memory from position 0 and then makes
//! the stored one equal to it, writing only the rows that differ.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use eucora_projections::event::DeploymentEvent;
use eucora_projections::intent::IntentState;

use super::{decoded, Event, Projection, ProjectionError};
use crate::store::{Checkpoint, Columns, IntentRow, Store, ViewRepair};

/// The intent read model's name in `projection_checkpoints`.
pub const INTENTS: &str = "intents";

enum Mode {
    /// Rows are read from and written to the store per batch.
    Persisted,
    /// Every row stays in memory; `finish` replaces the stored model with them.
    Rebuild(Arc<Mutex<Option<ViewRepair>>>),
}

pub struct IntentView {
    mode: Mode,
    /// The rows the current batch touches (persisted), or every row (rebuild).
    rows: HashMap<String, IntentRow>,
}

impl IntentView {
    /// The read model `eucora serve` keeps up to date.
    pub fn persisted() -> Self {
        IntentView {
            mode: Mode::Persisted,
            rows: HashMap::new(),
        }
    }

    /// The read model rebuilt from position 0 by `eucora replay`; the handle tells, after the
    /// replay, what the stored model needed changing.
    pub fn rebuild() -> (Self, Arc<Mutex<Option<ViewRepair>>>) {
        let repair = Arc::new(Mutex::new(None));
        (
            IntentView {
                mode: Mode::Rebuild(repair.clone()),
                rows: HashMap::new(),
            },
            repair,
        )
    }
}

/// Folds events into `rows`; returns the ids of the rows it changed. An event at or below a row's
/// stream version was applied already (by this runner before a restart, or by another process),
/// so several runners may apply the same batch.
fn fold(
    rows: &mut HashMap<String, IntentRow>,
    events: &[(&Event, &DeploymentEvent)],
) -> Result<Vec<String>, ProjectionError> {
    let mut changed = Vec::new();
    for (e, event) in events {
        let stream = e.row.stream()?;
        // Rows are keyed by the intent the event names, which is the row's id: a row written by
        // hand into another stream cannot make two rows of one intent.
        let id = event.meta().deployment_id.to_string();
        let current = rows.remove(&id);
        if current
            .as_ref()
            .is_some_and(|r| stream.sequence as u64 <= r.state.stream_version)
        {
            rows.extend(current.map(|row| (id, row)));
            continue;
        }
        let seq = current.as_ref().map_or(e.ordinal, |r| r.seq);
        // Folding onto an existing state always yields one; only an event before an intent's
        // creation yields none, and then there is no row to keep.
        if let Some(state) = IntentState::fold(current.map(|r| r.state), event) {
            changed.push(id.clone());
            rows.insert(id, IntentRow { seq, state });
        }
    }
    changed.sort();
    changed.dedup();
    Ok(changed)
}

#[async_trait]
impl Projection for IntentView {
    fn name(&self) -> &'static str {
        INTENTS
    }

    fn columns(&self) -> Columns {
        Columns::Streams
    }

    fn persisted(&self) -> bool {
        matches!(self.mode, Mode::Persisted)
    }

    async fn resume(&mut self, store: &Store) -> Result<Checkpoint, ProjectionError> {
        Ok(match self.mode {
            Mode::Persisted => store.checkpoint(INTENTS).await?,
            Mode::Rebuild(_) => Checkpoint::default(),
        })
    }

    async fn apply(&mut self, store: &Store, events: &[Event]) -> Result<(), ProjectionError> {
        let events = decoded(events);
        let Some(end) = events.last().map(|(e, _)| e.checkpoint()) else {
            return Ok(());
        };
        match self.mode {
            Mode::Rebuild(_) => {
                fold(&mut self.rows, &events)?;
            }
            Mode::Persisted => {
                let ids: Vec<String> = events
                    .iter()
                    .map(|(_, event)| event.meta().deployment_id.to_string())
                    .collect();
                self.rows = store.intent_rows(&ids).await?;
                let changed: Vec<IntentRow> = fold(&mut self.rows, &events)?
                    .iter()
                    .filter_map(|id| self.rows.get(id).cloned())
                    .collect();
                self.rows.clear();
                store.save_intents(INTENTS, &changed, end).await?;
            }
        }
        Ok(())
    }

    async fn finish(&mut self, store: &Store, at: Checkpoint) -> Result<(), ProjectionError> {
        if let Mode::Rebuild(repair) = &self.mode {
            let rows: Vec<IntentRow> = std::mem::take(&mut self.rows).into_values().collect();
            let done = store.replace_intent_view(INTENTS, &rows, at).await?;
            *repair.lock().unwrap_or_else(|e| e.into_inner()) = Some(done);
        }
        Ok(())
    }
}
