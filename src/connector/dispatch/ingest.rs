//! Result ingestion and reconciliation: the dispatcher reads what connectors report of the
//! assignments it published, reports each change as a rollout result, records what cannot be
//! one (`ConnectorStatusRejected`) and what drifted (`DeploymentDriftDetected`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use eucora_projections::event::{ConnectorAction, ConnectorType, Role, Status};
use eucora_projections::intent::{DispatchOutcome, DriftSeen, IntentState};
use futures_util::StreamExt;
use uuid::Uuid;

use super::{system_actor, Dispatcher, PAGE};
use crate::connector::client::{CallError, Connector};
use crate::connector::{assignment_id, idempotency_key, AssignmentStatus};
use crate::domain::{Action, Command, DomainError, DriftRecord, RolloutInput, StatusRejection};
use crate::store::ListFilter;
use crate::write::CommandError;

/// An assignment a connector no longer has: how often it was missed, and when to look again.
#[derive(Debug, Clone, Copy)]
pub(super) struct Absent {
    misses: u32,
    next: std::time::Instant,
}

/// The longest wait between reads of an assignment its connector answered 404 for.
pub const ABSENT_MAX_WAIT: Duration = Duration::from_secs(3600);

impl Dispatcher {
    /// Intents in `status` for connector `kind` which were published in their current ring,
    /// page by page.
    async fn published_in(
        &self,
        kind: ConnectorType,
        status: Status,
    ) -> Vec<(IntentState, Arc<Connector>)> {
        let filter = ListFilter {
            status: Some(status),
            ..ListFilter::default()
        };
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let rows = match self.store.list_intents(&filter, after, PAGE).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list intents to poll their connectors");
                    return out;
                }
            };
            let Some(last) = rows.last() else {
                return out;
            };
            after = last.seq;
            let full = rows.len() as i64 == PAGE;
            for row in rows {
                let state = row.state;
                let key = idempotency_key(state.id, state.current_ring, ConnectorAction::Publish);
                if state.connector_type != kind
                    || state.connector_actions.get(&key) != Some(&DispatchOutcome::Dispatched)
                {
                    continue;
                }
                // An assignment recorded as gone from an intent that has ended is never read
                // again; one gone from a live intent is read again with backoff.
                let gone = Some(DriftSeen {
                    ring: state.current_ring,
                    reported_installed: None,
                });
                if (state.status.is_terminal() && state.last_drift == gone)
                    || !self.due(&assignment_id(state.id, state.current_ring))
                {
                    continue;
                }
                if let Some(connector) = self.connectors.get(&kind) {
                    out.push((state, connector.clone()));
                }
            }
            if !full {
                return out;
            }
        }
    }

    /// Reads the status of every active assignment of connector `kind` and reports each change
    /// as a rollout result. A fall in installed devices is not reported: that is drift, for
    /// [`Dispatcher::reconcile`].
    pub async fn ingest(&self, kind: ConnectorType) {
        const LIVE: [Status; 2] = [Status::Approved, Status::Deployed];
        let Some(connector) = self.connectors.get(&kind) else {
            return;
        };
        if !connector.settings.batch_status {
            self.each_published(kind, LIVE, |state, c| async move {
                if let Some(now) = self.read(&state, &c).await {
                    self.report(state, now).await;
                }
            })
            .await;
            return;
        }
        // A hundred statuses a call, the calls within max_in_flight.
        for status in LIVE {
            let published = self.published_in(kind, status).await;
            let batches: Vec<Vec<IntentState>> = published
                .chunks(crate::connector::BATCH)
                .map(|batch| batch.iter().map(|(state, _)| state.clone()).collect())
                .collect();
            futures_util::stream::iter(batches)
                .for_each_concurrent(connector.settings.max_in_flight, |batch| async move {
                    let ids: Vec<String> = batch
                        .iter()
                        .map(|s| assignment_id(s.id, s.current_ring))
                        .collect();
                    let answer = connector.statuses_once(&ids).await;
                    for (state, id) in batch.into_iter().zip(ids) {
                        let one = answer.as_ref().map(|all| all.get(&id).cloned());
                        if let Some(now) = self
                            .settle(&state, connector, one.map_err(Clone::clone))
                            .await
                        {
                            self.report(state, now).await;
                        }
                    }
                })
                .await;
        }
    }

    /// Runs `job` on each intent of connector `kind` in `statuses` that was published in its
    /// current ring, the connector's `max_in_flight` at a time (its calls share that bound with
    /// the sends, so reads never crowd them out for longer than a call).
    async fn each_published<F, Fut>(&self, kind: ConnectorType, statuses: [Status; 2], job: F)
    where
        F: Fn(IntentState, Arc<Connector>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let Some(bound) = self.connectors.get(&kind).map(|c| c.settings.max_in_flight) else {
            return;
        };
        for status in statuses {
            let published = self.published_in(kind, status).await;
            futures_util::stream::iter(published)
                .for_each_concurrent(bound, |(state, connector)| job(state, connector))
                .await;
        }
    }

    /// Reports what the connector says of one intent's assignment, if it changed.
    async fn report(&self, state: IntentState, now: AssignmentStatus) {
        let last = state.latest_report.as_ref();
        let counts = (now.targeted, now.installed, now.failed, now.incidents);
        let unchanged = last.is_some_and(|l| l.counts() == counts);
        let fell = last.is_some_and(|l| now.installed < l.succeeded);
        if now.targeted == 0 || now.state != "active" || unchanged || fell {
            return;
        }
        let command = Command {
            actor: eucora_projections::event::Actor {
                subject: format!("connector:{}", state.connector_type.as_str()),
                role: Role::Connector,
            },
            correlation_id: format!(
                "connector-{}-{}",
                state.connector_type.as_str(),
                Uuid::new_v4()
            ),
            // Applied to the intent's latest state, not the one polled: the write path reloads
            // and decides again when it loses a race (a deployer retrying promotion appends an
            // evaluation each time), the domain refuses a report for a ring the intent has left
            // or one that takes back counts, and the same report from another server is the ring's
            // last report again, which appends nothing.
            expected_version: None,
            action: Action::Deploy(RolloutInput {
                ring: state.current_ring,
                target_devices: now.targeted,
                succeeded: now.installed,
                failed: now.failed,
                incidents: now.incidents,
            }),
        };
        match self.commands.execute(state.id, command).await {
            Ok(_) => {}
            // Counts the rules refuse (installed above targeted, out of range, taken back) are
            // the connector's problem: recorded on the intent, with the counts.
            Err(CommandError::Domain(e @ DomainError::InvalidInput { .. })) => {
                let problem = format!(
                    "{e} (targeted {}, installed {}, failed {}, incidents {})",
                    now.targeted, now.installed, now.failed, now.incidents
                );
                self.reject(&state, problem).await;
            }
            // The intent moved on meanwhile (another ring, a terminal state): nothing to say.
            Err(CommandError::Domain(_)) => {}
            Err(e) => tracing::warn!(deployment_id = %state.id, error = %e,
                "cannot report a connector's rollout result"),
        }
    }

    /// Reads the status of an intent's assignment in its current ring. `None` when there is
    /// nothing to go on: an answer that cannot be a status is recorded as
    /// `ConnectorStatusRejected`, a missing assignment (404) as drift and read again with backoff,
    /// and a call that failed otherwise is made again at the next poll.
    async fn read(&self, state: &IntentState, connector: &Connector) -> Option<AssignmentStatus> {
        let answer = connector.status_once(state.id, state.current_ring).await;
        self.settle(state, connector, answer).await
    }

    /// What [`Dispatcher::read`] makes of a status answer, however it was read.
    async fn settle(
        &self,
        state: &IntentState,
        connector: &Connector,
        answer: Result<Option<AssignmentStatus>, CallError>,
    ) -> Option<AssignmentStatus> {
        let id = assignment_id(state.id, state.current_ring);
        match answer {
            Ok(Some(now)) => {
                self.absent_lock().remove(&id);
                Some(now)
            }
            Ok(None) => {
                self.missed(id, connector.settings.poll_interval);
                self.drift(state, None).await;
                None
            }
            Err(CallError::Permanent { status, detail }) => {
                let problem = if (200..300).contains(&status) {
                    detail
                } else {
                    format!("the status read was answered {status}: {detail}")
                };
                self.reject(state, problem).await;
                None
            }
            Err(_) => None,
        }
    }

    fn absent_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Absent>> {
        self.absent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an assignment may be read now: always, unless its connector answered 404 and the
    /// backoff has not run out.
    fn due(&self, assignment: &str) -> bool {
        self.absent_lock()
            .get(assignment)
            .is_none_or(|a| a.next <= std::time::Instant::now())
    }

    /// Notes a 404 for `assignment`: read again after `poll_interval × 2^misses`, at most
    /// [`ABSENT_MAX_WAIT`].
    fn missed(&self, assignment: String, poll_interval: Duration) {
        let mut absent = self.absent_lock();
        let misses = absent.get(&assignment).map_or(0, |a| a.misses) + 1;
        let wait = poll_interval
            .saturating_mul(1u32 << misses.min(16))
            .min(ABSENT_MAX_WAIT);
        absent.insert(
            assignment,
            Absent {
                misses,
                next: std::time::Instant::now() + wait,
            },
        );
    }

    /// Records a status answer that could not be a rollout result, once per distinct problem.
    async fn reject(&self, state: &IntentState, problem: String) {
        tracing::warn!(deployment_id = %state.id, connector = state.connector_type.as_str(),
            reason = %problem, "the connector's status answer was rejected; nothing reported");
        let command = Command {
            actor: system_actor(),
            correlation_id: format!("status-{}", Uuid::new_v4()),
            expected_version: None,
            action: Action::RecordStatusRejected(StatusRejection {
                connector_type: state.connector_type,
                ring: state.current_ring,
                assignment_id: assignment_id(state.id, state.current_ring),
                problem,
            }),
        };
        match self.commands.execute(state.id, command).await {
            Ok(_) | Err(CommandError::Domain(_)) => {}
            Err(e) => tracing::warn!(deployment_id = %state.id, error = %e,
                "cannot record a rejected connector status"),
        }
    }

    /// Compares what connector `kind` reports with its intents' last reports, and records drift.
    pub async fn reconcile(&self, kind: ConnectorType) {
        self.each_published(
            kind,
            [Status::Deployed, Status::Completed],
            |state, c| async move { self.reconcile_one(state, &c).await },
        )
        .await;
    }

    /// Records drift on one intent, if its connector no longer reports what was installed.
    async fn reconcile_one(&self, state: IntentState, connector: &Connector) {
        let Some(expected) = state.latest_report.as_ref().map(|l| l.succeeded) else {
            return;
        };
        if let Some(now) = self.read(&state, connector).await {
            if now.installed < expected {
                self.drift(&state, Some(now.installed)).await;
            }
        }
    }

    /// Records that an intent's connector reports `reported` devices installed in its current
    /// ring (`None`: no such assignment), fewer than its last rollout report; once per drift.
    async fn drift(&self, state: &IntentState, reported: Option<u64>) {
        let expected = state.latest_report.as_ref().map_or(0, |l| l.succeeded);
        let command = Command {
            actor: system_actor(),
            correlation_id: format!("reconcile-{}", Uuid::new_v4()),
            expected_version: None,
            action: Action::RecordDrift(DriftRecord {
                connector_type: state.connector_type,
                ring: state.current_ring,
                expected_installed: expected,
                reported_installed: reported,
            }),
        };
        match self.commands.execute(state.id, command).await {
            Ok(_) => {
                tracing::warn!(deployment_id = %state.id, ring = state.current_ring.as_str(),
                expected, reported = ?reported, "drift: the connector no longer reports what was installed")
            }
            Err(CommandError::Domain(_)) => {}
            Err(e) => {
                tracing::warn!(deployment_id = %state.id, error = %e, "cannot record drift")
            }
        }
    }
}
