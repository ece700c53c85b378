//! The write side's rules: commands, the `DeploymentIntent` aggregate, the risk model and the
//! promotion policy. Nothing here performs I/O; time and event ids come from injected services.

mod command;
pub mod intent;
pub mod policy;
pub mod risk;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use eucora_projections::event::{Ring, Status};
use uuid::Uuid;

/// A path as an absolute one, resolved against the current folder: what a message about a file
/// names, so that whoever reads it knows which file was meant wherever the command ran.
pub fn absolute(path: impl AsRef<std::path::Path>) -> String {
    let path = path.as_ref();
    std::path::absolute(path)
        .map_or_else(|_| path.display().to_string(), |p| p.display().to_string())
}

pub use command::{
    Action, Command, CreateIntent, DispatchRecord, DriftRecord, PushedReport, RolloutInput,
    StatusRejection,
};
pub use intent::{DeploymentIntent, IntentEvent};
pub use policy::Policy;
pub use risk::RiskFactors;

/// Where commands read the time. Production uses [`SystemClock`]; tests drive a [`FakeClock`].
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to.
pub struct FakeClock(Mutex<DateTime<Utc>>);

impl FakeClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        FakeClock(Mutex::new(start))
    }

    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where commands get event ids.
pub trait IdSource: Send + Sync {
    fn event_id(&self, at: DateTime<Utc>) -> Uuid;
}

/// UUIDv7 ids whose time part is the command's clock.
pub struct V7Ids;

impl IdSource for V7Ids {
    fn event_id(&self, at: DateTime<Utc>) -> Uuid {
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            at.timestamp().max(0) as u64,
            at.timestamp_subsec_nanos(),
        );
        Uuid::new_v7(ts)
    }
}

/// Predictable ids (1, 2, 3, …) so that tests can compare whole events.
#[derive(Default)]
pub struct SequentialIds(AtomicU64);

impl IdSource for SequentialIds {
    fn event_id(&self, _at: DateTime<Utc>) -> Uuid {
        Uuid::from_u128(self.0.fetch_add(1, Ordering::SeqCst) as u128 + 1)
    }
}

/// What the aggregate needs from outside: the clock, an id source and the gate policy.
#[derive(Clone)]
pub struct DomainServices {
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdSource>,
    pub policy: Arc<Policy>,
}

impl DomainServices {
    pub fn new(clock: Arc<dyn Clock>, policy: Policy) -> Self {
        DomainServices {
            clock,
            ids: Arc::new(V7Ids),
            policy: Arc::new(policy),
        }
    }
}

/// Why a command was refused. Nothing is appended when a command fails.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DomainError {
    #[error("deployment intent not found")]
    NotFound,
    #[error("a deployment intent with this id already exists")]
    AlreadyExists,
    #[error("{field}: {reason}")]
    InvalidInput { field: String, reason: String },
    #[error("the SBOM has a Critical vulnerability without exception; creation is refused")]
    CriticalVulnerability,
    #[error("{command} is not allowed while the intent is {}", status.as_str())]
    NotAllowedInState {
        command: &'static str,
        status: Status,
    },
    #[error("the report is for {}, but the intent is in {}", reported.as_str(), current.as_str())]
    RingMismatch { reported: Ring, current: Ring },
    #[error("the CAB rejected this emergency change retrospectively: it must be rolled back, and may not be {0}")]
    RollbackRequired(&'static str),
    #[error("the intent is already in its target ring {}", .0.as_str())]
    AtTargetRing(Ring),
    #[error("segregation of duties: the requester of an intent may not decide on it")]
    SegregationOfDuties,
    #[error("a requester may only roll back its own intents")]
    NotOwnIntent,
    #[error("stream is at version {actual}, the request expected {expected}")]
    VersionMismatch { expected: u64, actual: u64 },
    #[error("{0} is recorded already")]
    AlreadyRecorded(String),
    /// A connector pushed a result for an assignment it was never sent.
    #[error("connector {connector} was never sent assignment {assignment}")]
    NotSent {
        connector: String,
        assignment: String,
    },
    /// A connector pushed a result for another connector's intent.
    #[error("assignment {assignment} is connector {owner}'s: only its own token (subject connector:{owner}, role connector) may push its results")]
    NotOwnAssignment { assignment: String, owner: String },
    /// A pushed report's sequence is not after the last applied.
    #[error("report sequence {sequence} of {assignment} {why}")]
    StaleSequence {
        assignment: String,
        sequence: u64,
        why: String,
    },
}

impl DomainError {
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        DomainError::InvalidInput {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}
