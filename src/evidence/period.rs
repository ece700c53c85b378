//! A period's selection: where its range of the log starts and ends, and which streams bring
//! their earlier events with it (docs/evidence.md, "Which events").

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use eucora_projections::decode::StreamEvent;
use eucora_projections::governance::{GovernanceEvent, POLICY_AGGREGATE_TYPE, POLICY_STREAM};
use eucora_projections::intent::IntentState;

use super::export::{run_error, BATCH};
use super::EvidenceError;
use crate::projection::log::leaves_of;
use crate::projection::{Event, StreamReader};
use crate::store::{Checkpoint, Columns, Store, StreamRow};

/// Where a period's range starts, the period's end, where to read it from, and the streams whose
/// earlier events come with it.
pub(super) struct PeriodSelection {
    pub(super) start: u64,
    pub(super) to: DateTime<Utc>,
    /// The checkpoint after the event two before the range: reading from it, the first event is
    /// the one before the range (its boundary), then the range.
    pub(super) resume: Checkpoint,
    /// The streams with events before the range that come with it, as (aggregate type, id):
    /// every intent open at its start, every intent with an event in it that is not its first,
    /// and the policy stream when a policy was activated before it.
    pub(super) history: HashSet<(&'static str, String)>,
}

/// Whether an intent is still open: awaiting the CAB, deployed and not complete, or an
/// emergency change still owing its retrospective decision or the rollback it requires.
fn is_open(state: &IntentState) -> bool {
    !state.status.is_terminal() || state.retro_approval_pending || state.rollback_required
}

/// The first pass of a period's export, over the stream up to the checkpoint's size: the range of
/// leaves stamped in the period (from the first event stamped at or after `from` to the first
/// stamped at or after `to`), and the streams whose earlier events its population brings: the
/// intents open when it starts (folded from their events before it), the intents with an event
/// in it that have earlier ones, and the policy stream when a policy was activated before it.
pub(super) async fn find_period(
    store: &Store,
    size: u64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<PeriodSelection, EvidenceError> {
    let intent_type = <crate::domain::DeploymentIntent as cqrs_es::Aggregate>::TYPE;
    let mut open: HashMap<String, IntentState> = HashMap::new();
    let mut history: HashSet<(&'static str, String)> = HashSet::new();
    // Whether a policy was activated before the range: then the policy stream's events come too,
    // so the bundle shows the policy in force when the period starts.
    let mut policy_before = false;
    let mut start = None;
    let mut index = 0u64;
    // The checkpoints after the last two events read before the range.
    let beginning = Checkpoint {
        position: 0,
        ordinal: 0,
    };
    let (mut two_back, mut one_back) = (beginning, beginning);
    // Which stream each event is of, and the event: no metadata, no leaf hash.
    let mut stream = StreamReader::from_start(store.clone(), size, BATCH, Columns::Streams);
    'read: while index < size {
        let Some(batch) = stream.next().await else {
            break;
        };
        let batch = batch.map_err(run_error)?;
        for read in batch.iter() {
            let Event { row, event, .. } = read;
            let at = event.as_ref().map(StreamEvent::occurred_at).ok();
            if start.is_none() && at.is_some_and(|t| t >= from && t < to) {
                if index == 0 {
                    // Nothing before the range: no earlier events to bring.
                    return Ok(PeriodSelection {
                        start: 0,
                        to,
                        resume: beginning,
                        history,
                    });
                }
                start = Some(index);
                // Carried over: every intent open as the period starts, and the policy stream.
                history.extend(open.drain().map(|(id, _)| (intent_type, id)));
                if policy_before {
                    history.insert((POLICY_AGGREGATE_TYPE, POLICY_STREAM.to_string()));
                }
            }
            if start.is_some_and(|s| index > s) && at.is_some_and(|t| t >= to) {
                break 'read;
            }
            match (start, event) {
                (None, Ok(StreamEvent::Deployment(e))) => {
                    let id = row.stream()?.aggregate_id.to_string();
                    let state = IntentState::fold(open.remove(&id), e);
                    if let Some(state) = state.filter(is_open) {
                        open.insert(id, state);
                    }
                }
                // An intent's event in the range that is not its first: its earlier ones come
                // too (sequences count from 1).
                (Some(_), Ok(StreamEvent::Deployment(_))) => {
                    let stream = row.stream()?;
                    if stream.sequence > 1 {
                        history.insert((intent_type, stream.aggregate_id.clone()));
                    }
                }
                (None, Ok(StreamEvent::Governance(GovernanceEvent::PolicyActivated(_)))) => {
                    policy_before = true;
                }
                _ => {}
            }
            if start.is_none() {
                (two_back, one_back) = (one_back, read.checkpoint());
            }
            index += 1;
            if index >= size {
                break;
            }
        }
    }
    let Some(start) = start else {
        return Err(EvidenceError::NotFound(
            "no signed event falls in this period".into(),
        ));
    };
    Ok(PeriodSelection {
        start,
        to,
        resume: two_back,
        history,
    })
}

/// The events before a period's range of the streams whose history it brings: each stream read
/// on its own, and its events placed in the log by its tiles (a galloping search, as a
/// deployment's are), not by reading the log before the period. In leaf order.
pub(super) async fn earlier_events(
    store: &Store,
    size: u64,
    period: &PeriodSelection,
) -> Result<Vec<(u64, StreamRow)>, EvidenceError> {
    let mut rows: Vec<StreamRow> = Vec::new();
    for (aggregate_type, id) in &period.history {
        rows.extend(store.stream_stored(aggregate_type, id).await?);
    }
    // In the log's order, so the search over the tiles only ever moves forward.
    let keys = store
        .order_keys(&rows.iter().map(|r| r.position).collect::<Vec<_>>())
        .await?;
    rows.sort_by_key(|r| keys.get(&r.position).copied());
    let positions: Vec<i64> = rows.iter().map(|r| r.position).collect();
    let leaves = leaves_of(store, size, &positions).await?;
    Ok(rows
        .into_iter()
        .zip(leaves)
        .filter_map(|(row, leaf)| Some((leaf?, row)))
        .filter(|(leaf, _)| *leaf < period.start)
        .collect())
}
