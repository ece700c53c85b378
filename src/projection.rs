//! The read side's one runner: it reads each batch of the global stream once, decodes it once,
//! and hands it to every registered [`Projection`], each with its own checkpoint.
//!
//! - [`metrics`]: the domain metrics (in memory, rebuilt from position 0 at start-up);
//! - [`intent_view`]: the intent read model lists are served from (persisted);
//! - [`log`]: the Merkle log over the global stream (persisted; in `eucora replay`, the integrity
//!   check).
//!
//! Adding a projection is one type implementing [`Projection`] and one `register` call where the
//! runner is built (`app` for `eucora serve`, `replay` for `eucora replay`).
//!
//! Projections whose checkpoints agree share one read ("a lane"). One that is behind (a new
//! projection over a long history, or one that failed and is retrying) reads its own batches in
//! the same step, at most [`LAGGARD_BATCHES`] a step, after the leading lane has read everything
//! new; once it has read to the end of the stream it stands where the leader stands and joins
//! its lane: it catches up without holding the others back. Its read-ahead, stopped at the
//! bound, is kept reading for its next step.

pub mod intent_view;
pub mod log;
pub mod metrics;
mod runner;
mod status;
mod stream;

use async_trait::async_trait;
use eucora_projections::decode::{DecodeError, StreamEvent};
use eucora_projections::event::DeploymentEvent;

use crate::store::{Checkpoint, Columns, Store, StoreError, StreamRow};

pub use runner::{Runner, Step, BATCH, LAGGARD_BATCHES};
pub use status::RunnerStatus;
pub use stream::StreamReader;

/// One event handed to the projections: its row, its place in the global order and the event
/// decoded (once, for every projection).
#[derive(Debug)]
pub struct Event {
    /// Place in the global order, from 1.
    pub ordinal: i64,
    pub row: StreamRow,
    /// A deployment intent's event or a principal's; projections of intents read the former
    /// through [`decoded`].
    pub event: Result<StreamEvent, DecodeError>,
    /// The Merkle log's leaf hash of the row as stored, when it was read with every column: hashed
    /// on the decoding stage, in parallel with the projections, once for all of them.
    pub leaf: Option<[u8; 32]>,
}

impl Event {
    /// The checkpoint of a projection that has applied this event.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            position: self.row.position,
            ordinal: self.ordinal,
        }
    }
}

/// The deployment intents' events of a batch that decode (principals' events are passed over).
/// A row that does not (a foreign or malformed row written
/// by hand) is passed over by every projection alike, so none of them halts on it: the runner
/// names it in its log, its status (readiness) and a metric, and `eucora replay` fails on it.
pub fn decoded(events: &[Event]) -> Vec<(&Event, &DeploymentEvent)> {
    events
        .iter()
        .filter_map(|e| {
            e.event
                .as_ref()
                .ok()
                .and_then(StreamEvent::deployment)
                .map(|event| (e, event))
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the event at position {position} cannot be read: {reason}")]
    Unreadable { position: i64, reason: String },
    #[error("integrity check failed at position {position}: {what}")]
    Integrity { position: i64, what: String },
}

/// A consumer of the global stream.
#[async_trait]
pub trait Projection: Send + 'static {
    /// Its name in logs, metrics and `projection_checkpoints`.
    fn name(&self) -> &'static str;

    /// The columns it reads: as few as it needs, since every column costs both ends of the
    /// connection on every event ([`Columns::Stored`] only for what hashes rows as stored).
    fn columns(&self) -> Columns {
        Columns::Events
    }

    /// Whether its checkpoint is kept in the store. A persisted projection is resumed again
    /// before every step, so it follows what another process (or a replay, which may move it
    /// back) did meanwhile.
    fn persisted(&self) -> bool {
        false
    }

    /// Where it resumes: a persisted projection reads its checkpoint, one kept in memory starts
    /// from position 0 (`Checkpoint::default()`).
    async fn resume(&mut self, store: &Store) -> Result<Checkpoint, ProjectionError>;

    /// Applies the next events after its checkpoint, in order. On an error the checkpoint stays
    /// where it was, so what it applied must be all of the batch or none of it.
    async fn apply(&mut self, store: &Store, events: &[Event]) -> Result<(), ProjectionError>;

    /// After a replay reached the end of the stream at `at`: writes what it held back.
    async fn finish(&mut self, _store: &Store, _at: Checkpoint) -> Result<(), ProjectionError> {
        Ok(())
    }
}
/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error(
        "{read} of {head} stored events became readable: a transaction left open on the database \
         server holds the rest back, or an event carries a transaction id from the future (tampering)"
    )]
    Stalled { read: i64, head: i64 },
    #[error("the event at position {position} {UNREACHABLE}")]
    Unreachable { position: i64 },
}

/// Why a row on PostgreSQL is never read: said alike in the log, readiness and replay.
pub const UNREACHABLE: &str = "carries a transaction id no snapshot will reach, so no reader \
                               will ever return it (a row written by hand, not by a transaction)";

impl From<StoreError> for RunError {
    fn from(e: StoreError) -> Self {
        RunError::Projection(e.into())
    }
}
