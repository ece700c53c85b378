//! Dispatch to connectors (docs/connectors.md): the outbox projection queues what the stream
//! clears, the dispatcher sends it, polls what was sent and reports it back, and reconciles.
//!
//! - [`Outbox`], a projection on the one runner: an intent cleared to deploy in a ring (approved
//!   there, or promoted into it) owes its connector a `publish`; an intent rolled back owes a
//!   `rollback`. Each is queued under its idempotency key in the transaction that moves the
//!   projection's checkpoint, so nothing is lost across a crash and nothing is queued twice.
//! - [`Dispatcher::dispatch`]: every server claims due actions under a lease (PostgreSQL skips
//!   rows another server is claiming), calls the connector once per claim, and records the outcome
//!   as an event on the intent (`ConnectorDispatched`, or `ConnectorDispatchFailed` for a
//!   permanent or policy refusal) before settling the row. A server killed mid-call leaves a lease
//!   that expires; whoever claims the action next sends it again under the same key, which the
//!   connector honours, and the intent refuses a second outcome for the key. So each action has
//!   one side effect and one outcome event, however many servers and restarts.
//! - [`Dispatcher::ingest`]: the status of each active assignment is read every `poll_interval`
//!   and each change is reported through the normal command path as `connector:<type>` (role
//!   `connector`), so the promotion gates decide on measured numbers; an answer that cannot be a
//!   result is recorded as `ConnectorStatusRejected`, once per distinct problem, and a 404 as
//!   drift, then read again with backoff (`ingest.rs`).
//! - [`Dispatcher::reconcile`]: every `reconcile_interval`, what each connector reports is
//!   compared with the intent's last report; an assignment that disappeared or whose installed
//!   count fell is recorded as `DeploymentDriftDetected`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use eucora_projections::event::{
    ApprovalBasis, ConnectorAction, ConnectorType, DeploymentEvent, FailureClass, Ring, Role,
};
use eucora_projections::intent::{DispatchOutcome, IntentState};
use tokio::sync::Notify;
use tracing::Instrument;
use uuid::Uuid;

use super::admission::Admission;
use super::client::{CallError, Connector, Settings};
use super::{idempotency_key, Assignment};
use crate::domain::intent::DISPATCHER;
use crate::domain::{Action, Command, DispatchRecord, DomainError};
use crate::projection::{decoded, Event, Projection, ProjectionError};
use crate::store::{Backlog, Checkpoint, Claimed, Columns, OutboxEntry, Settled, Store};
use crate::telemetry::{ConnectorGauge, DispatchGauges};

mod ingest;
use crate::write::{CommandError, Commands};
pub use ingest::ABSENT_MAX_WAIT;

/// The outbox projection's name in `projection_checkpoints`.
pub const OUTBOX: &str = "connector_outbox";
/// Actions one server has in hand at once (claimed, not yet settled).
const CLAIM: i64 = 64;
/// The longest a dispatcher sleeps with nothing due; a queue in this process wakes it at once.
const IDLE: Duration = Duration::from_millis(250);
/// How long an action waits while its connector's breaker is open (or every call slot is taken),
/// before it is looked at again.
const BREAKER_WAIT: Duration = Duration::from_secs(1);
/// How long an action waits when its outcome could not be recorded (the store did not answer).
const STORE_WAIT: Duration = Duration::from_secs(2);
/// Intents read per page when polling and reconciling.
const PAGE: i64 = 500;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The queue of actions: a consumer of the global stream.
pub struct Outbox {
    /// Events up to this ordinal were committed before dispatch was first configured.
    start: i64,
    wake: Arc<Notify>,
}

/// What an event asks of a connector, if anything.
fn owed(event: &DeploymentEvent) -> Option<(Ring, ConnectorAction)> {
    match event {
        DeploymentEvent::DeploymentApproved(e) => match e.basis {
            ApprovalBasis::Policy | ApprovalBasis::Cab | ApprovalBasis::EmergencyProvisional => {
                Some((e.ring, ConnectorAction::Publish))
            }
            // Already cleared (and published) in its ring.
            ApprovalBasis::CabRetrospective => None,
        },
        DeploymentEvent::RingPromoted(e) => Some((e.to_ring, ConnectorAction::Publish)),
        DeploymentEvent::DeploymentRolledBack(e) => Some((e.ring, ConnectorAction::Rollback)),
        _ => None,
    }
}

impl Outbox {
    /// The outbox of a store: the first server to run with connectors records where the stream
    /// ends (before it serves anything), and dispatch starts after it, on every server.
    pub async fn open(store: &Store) -> Result<Outbox, crate::store::StoreError> {
        let head = store.event_count().await?;
        Ok(Outbox {
            start: store.dispatch_start(head).await?,
            wake: Arc::default(),
        })
    }

    /// What this projection rings when it queues an action (the dispatcher listens).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}

#[async_trait]
impl Projection for Outbox {
    fn name(&self) -> &'static str {
        OUTBOX
    }

    fn persisted(&self) -> bool {
        true
    }

    /// The stored metadata too: each action continues the trace of the command that owed it.
    fn columns(&self) -> Columns {
        Columns::Stored
    }

    async fn resume(&mut self, store: &Store) -> Result<Checkpoint, ProjectionError> {
        Ok(store.checkpoint(OUTBOX).await?)
    }

    async fn apply(&mut self, store: &Store, events: &[Event]) -> Result<(), ProjectionError> {
        let Some(end) = events.last().map(Event::checkpoint) else {
            return Ok(());
        };
        let start = self.start;
        let entries: Vec<OutboxEntry> = decoded(events)
            .into_iter()
            .filter(|(e, _)| e.ordinal > start)
            .filter_map(|(row, event)| {
                let (ring, action) = owed(event)?;
                let meta = event.meta();
                let traceparent = row.row.stored.as_ref().and_then(|s| {
                    crate::store::metadata_member(&s.metadata, crate::store::TRACEPARENT_METADATA)
                });
                Some(OutboxEntry {
                    idempotency_key: idempotency_key(meta.deployment_id, ring, action),
                    deployment_id: meta.deployment_id,
                    ring,
                    action,
                    correlation_id: meta.correlation_id.clone(),
                    committed_ms: meta.occurred_at.timestamp_millis(),
                    traceparent,
                })
            })
            .collect();
        store.enqueue(OUTBOX, &entries, end).await?;
        if !entries.is_empty() {
            self.wake.notify_one();
        }
        Ok(())
    }
}

/// What the metrics and the health endpoint see of dispatch.
pub struct DispatchStatus {
    connectors: Vec<Arc<Connector>>,
    backlog: Mutex<Backlog>,
}

impl DispatchStatus {
    /// The outbox as last counted.
    pub fn backlog(&self) -> Backlog {
        *self.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DispatchGauges for DispatchStatus {
    fn connectors(&self) -> Vec<ConnectorGauge> {
        self.connectors
            .iter()
            .map(|c| ConnectorGauge {
                connector_type: c.connector_type.as_str(),
                healthy: c.healthy(),
                breaker_state: c.breaker_state() as i64,
            })
            .collect()
    }

    fn queued(&self) -> i64 {
        self.backlog().pending
    }

    fn oldest_age_seconds(&self) -> f64 {
        self.backlog()
            .oldest_committed_ms
            .map_or(0.0, |oldest| (now_ms() - oldest).max(0) as f64 / 1000.0)
    }
}

/// Sends what the outbox holds, reads back what connectors report, and reconciles.
pub struct Dispatcher {
    store: Store,
    commands: Arc<Commands>,
    connectors: BTreeMap<ConnectorType, Arc<Connector>>,
    status: Arc<DispatchStatus>,
    wake: Arc<Notify>,
    /// This server's name on the leases it takes.
    owner: String,
    /// How long a claim holds an action: twice the longest call, and some.
    lease: Duration,
    metrics: Option<Arc<crate::telemetry::ConnectorMetrics>>,
    /// Assignments a connector answered 404 for, by assignment id: read again with backoff.
    absent: Mutex<HashMap<String, ingest::Absent>>,
    /// How far behind each claim shows this dispatcher to be, for the commands it holds.
    admission: Arc<Admission>,
}

impl Dispatcher {
    /// A dispatcher for `connectors`, woken by `wake` (the [`Outbox`]'s waker), telling
    /// `admission` how far behind it is.
    pub fn new(
        store: Store,
        commands: Arc<Commands>,
        connectors: BTreeMap<ConnectorType, Settings>,
        metrics: Option<Arc<crate::telemetry::ConnectorMetrics>>,
        owner: String,
        wake: Arc<Notify>,
        admission: Arc<Admission>,
    ) -> Result<Dispatcher, String> {
        let mut built = BTreeMap::new();
        for (kind, settings) in connectors {
            let mut connector = Connector::new(kind, settings)?;
            if let Some(m) = &metrics {
                connector = connector.with_metrics(m.clone());
            }
            built.insert(kind, Arc::new(connector));
        }
        let longest = built
            .values()
            .map(|c| c.settings.timeout)
            .max()
            .unwrap_or_default();
        let status = Arc::new(DispatchStatus {
            connectors: built.values().cloned().collect(),
            backlog: Mutex::default(),
        });
        Ok(Dispatcher {
            store,
            commands,
            connectors: built,
            status,
            wake,
            owner,
            lease: longest * 2 + Duration::from_secs(5),
            metrics,
            absent: Mutex::default(),
            admission,
        })
    }

    pub fn status(&self) -> Arc<DispatchStatus> {
        self.status.clone()
    }

    /// Runs dispatch, ingestion and reconciliation until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()> + Send) {
        /// Runs `job` every `period`, for ever.
        async fn every<F, Fut>(period: Duration, job: F)
        where
            F: Fn() -> Fut,
            Fut: std::future::Future<Output = ()>,
        {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                job().await;
            }
        }
        // Each connector is polled and reconciled at its own intervals.
        let mut loops = tokio::task::JoinSet::new();
        for (&kind, connector) in &self.connectors {
            // A connector that pushes its results is not polled for them.
            if connector.settings.mode == super::settings::Mode::Poll {
                let me = self.clone();
                let period = connector.settings.poll_interval;
                loops.spawn(async move { every(period, || me.ingest(kind)).await });
            }
            let me = self.clone();
            let period = connector.settings.reconcile_interval;
            loops.spawn(async move { every(period, || me.reconcile(kind)).await });
        }
        let me = self.clone();
        loops.spawn(async move { every(Duration::from_secs(2), || me.count_backlog()).await });
        tokio::select! {
            () = shutdown => {}
            () = self.clone().dispatch() => {}
            _ = loops.join_next() => {}
        }
    }

    async fn count_backlog(&self) {
        match self.store.outbox_backlog().await {
            Ok(backlog) => {
                *self
                    .status
                    .backlog
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = backlog;
            }
            Err(e) => tracing::warn!(error = %e, "cannot count the connector outbox"),
        }
    }

    /// Claims and sends due actions, for ever. Up to [`CLAIM`] are in hand at once, each sent
    /// by its own task; as calls end, their outcomes are settled together and their places
    /// claimed again, so a slow call holds only its own place (and one of its connector's
    /// `max_in_flight` slots), never the others.
    pub async fn dispatch(self: Arc<Self>) {
        let mut sending = tokio::task::JoinSet::new();
        loop {
            let room = CLAIM - sending.len() as i64;
            if room > 0 {
                let now = now_ms();
                let until = now + self.lease.as_millis() as i64;
                match self.store.claim_outbox(&self.owner, now, until, room).await {
                    Ok(claimed) => {
                        self.admission.claimed(&claimed, room, now);
                        for action in claimed {
                            let me = self.clone();
                            let span = dispatch_span(&action.entry);
                            sending.spawn(async move { me.send(action).await }.instrument(span));
                        }
                    }
                    Err(e) if sending.is_empty() => {
                        tracing::warn!(error = %e, "cannot claim connector actions; retrying");
                        tokio::time::sleep(STORE_WAIT).await;
                        continue;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot claim connector actions"),
                }
            }
            if sending.is_empty() {
                let _ = tokio::time::timeout(IDLE, self.wake.notified()).await;
                continue;
            }
            // A call ends, or (with room for more) something is queued or falls due.
            let room = sending.len() < CLAIM as usize;
            let mut settled = Vec::new();
            tokio::select! {
                done = sending.join_next() => settled.extend(done.and_then(Result::ok)),
                () = self.wake.notified(), if room => {}
                () = tokio::time::sleep(IDLE), if room => {}
            }
            // Settled together, in one transaction: one write for every call that has ended.
            while let Some(done) = sending.try_join_next() {
                settled.extend(done.ok());
            }
            if settled.is_empty() {
                continue;
            }
            if let Err(e) = self.store.settle_outbox(&settled, now_ms()).await {
                // The leases expire and the actions are claimed again: the connector and the
                // intent both refuse a second effect of the same key.
                tracing::warn!(error = %e, actions = settled.len(), "cannot settle connector actions");
            }
        }
    }

    /// Sends one claimed action; returns how it stands, to settle.
    async fn send(&self, claimed: Claimed) -> (i64, u32, Settled) {
        let entry = &claimed.entry;
        let (calls, settled) = match self.attempt(&claimed).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(key = %entry.idempotency_key, error = %e,
                    "cannot read a connector action's intent; it will be tried again");
                (0, store_wait(&e))
            }
        };
        (claimed.seq, calls, settled)
    }

    /// The calls made and how the action stands after them.
    async fn attempt(&self, claimed: &Claimed) -> Result<(u32, Settled), CommandError> {
        let entry = &claimed.entry;
        let Some(state) = self.intent(entry.deployment_id).await? else {
            return Ok((0, Settled::Skipped("no such intent".into())));
        };
        let Some(connector) = self.connectors.get(&state.connector_type) else {
            let why = format!(
                "no {} connector is configured",
                state.connector_type.as_str()
            );
            return Ok((0, Settled::Skipped(why)));
        };
        // Sent and recorded before, by a server that stopped before settling the row.
        match state.connector_actions.get(&entry.idempotency_key) {
            Some(DispatchOutcome::Dispatched) => return Ok((0, Settled::Done)),
            Some(DispatchOutcome::Failed) => {
                return Ok((0, Settled::Failed("recorded as refused".into())))
            }
            None => {}
        }
        if entry.action != ConnectorAction::Publish {
            let published =
                idempotency_key(entry.deployment_id, entry.ring, ConnectorAction::Publish);
            if state.connector_actions.get(&published) != Some(&DispatchOutcome::Dispatched) {
                let why = format!("nothing was published in {} to undo", entry.ring.as_str());
                return Ok((0, Settled::Skipped(why)));
            }
        }
        let answer = match entry.action {
            ConnectorAction::Publish => {
                let assignment = Assignment {
                    deployment_id: entry.deployment_id,
                    app_name: state.app_name.clone(),
                    version: state.version.clone(),
                    ring: entry.ring,
                    artifact_sha256: state.artifact_sha256.clone(),
                };
                connector.publish_once(&assignment).await
            }
            action => {
                connector
                    .remediate_once(entry.deployment_id, &state.app_name, entry.ring, action)
                    .await
            }
        };
        // A retry is a call that repeats a failed one: not a turn skipped while the breaker is
        // open or every call slot is taken.
        if claimed.attempts > 0
            && !matches!(answer, Err(CallError::BreakerOpen | CallError::Busy(_)))
        {
            if let Some(m) = &self.metrics {
                m.record_retry(state.connector_type, super::operation(entry.action));
            }
        }
        let attempts = claimed.attempts.saturating_add(1);
        let refused = match answer {
            Ok(_) => None,
            Err(e @ (CallError::BreakerOpen | CallError::Busy(_))) => {
                let next_attempt_ms = now_ms() + BREAKER_WAIT.as_millis() as i64;
                let error = e.to_string();
                return Ok((
                    0,
                    Settled::Retry {
                        next_attempt_ms,
                        error,
                    },
                ));
            }
            Err(CallError::Transient {
                detail,
                retry_after,
            }) => {
                let wait = super::client::retry_wait(
                    &connector.settings,
                    attempts,
                    &mut rand::thread_rng(),
                )
                .max(retry_after.unwrap_or_default());
                tracing::info!(key = %entry.idempotency_key, attempts, wait_ms = wait.as_millis() as u64,
                    error = %detail, "connector action failed transiently; retrying");
                let next_attempt_ms = now_ms() + wait.as_millis() as i64;
                return Ok((
                    1,
                    Settled::Retry {
                        next_attempt_ms,
                        error: detail,
                    },
                ));
            }
            Err(CallError::Permanent { status, detail }) => {
                Some((FailureClass::Permanent, status, detail))
            }
            Err(CallError::Policy { status, detail }) => {
                Some((FailureClass::Policy, status, detail))
            }
        };
        let settled = match &refused {
            None => Settled::Done,
            Some((_, status, detail)) => {
                tracing::warn!(key = %entry.idempotency_key, status, error = %detail,
                    "the connector refused an action; it is not retried");
                Settled::Failed(format!("{status}: {detail}"))
            }
        };
        let record = DispatchRecord {
            connector_type: state.connector_type,
            ring: entry.ring,
            action: entry.action,
            idempotency_key: entry.idempotency_key.clone(),
            attempts,
            refused,
        };
        let command = Command {
            actor: system_actor(),
            correlation_id: entry.correlation_id.clone(),
            expected_version: None,
            action: Action::RecordDispatch(record),
        };
        match self.commands.execute(entry.deployment_id, command).await {
            Ok(_) | Err(CommandError::Domain(DomainError::AlreadyRecorded(_))) => Ok((1, settled)),
            // Sent again later under the same key, which the connector honours.
            Err(e) => {
                tracing::warn!(key = %entry.idempotency_key, error = %e,
                    "cannot record a connector action's outcome; it will be sent again");
                Ok((1, store_wait(&e)))
            }
        }
    }

    /// An intent's state, folded from its stream (not the read model, which may lag).
    async fn intent(&self, id: Uuid) -> Result<Option<IntentState>, CommandError> {
        let events = self.store.intent_events(id).await?;
        Ok(IntentState::replay(events.iter().map(|e| &e.event)))
    }
}

/// The span of one action's dispatch: a child of the command that queued the action, so one
/// trace runs from its request to the connector.
fn dispatch_span(entry: &OutboxEntry) -> tracing::Span {
    let span = tracing::info_span!(
        "connector.dispatch",
        otel.name = %format_args!("dispatch {}", entry.action.as_str()),
        deployment_id = %entry.deployment_id,
        ring = entry.ring.as_str(),
        action = entry.action.as_str(),
        correlation_id = %entry.correlation_id,
        trace_id = tracing::field::Empty,
    );
    crate::trace::continue_stored_trace(&span, entry.traceparent.as_deref());
    span
}

/// An action to try again once the store answers.
fn store_wait(e: &CommandError) -> Settled {
    Settled::Retry {
        next_attempt_ms: now_ms() + STORE_WAIT.as_millis() as i64,
        error: e.to_string(),
    }
}

fn system_actor() -> eucora_projections::event::Actor {
    eucora_projections::event::Actor {
        subject: DISPATCHER.to_string(),
        role: Role::System,
    }
}
