//! Refused commands on the record: a command refused for a missing role, for segregation of
//! duties, on an intent that is not the requester's own, or a result pushed for another
//! connector's assignment, is counted
//! (`eucora_commands_refused_total{reason}`) and recorded as a `CommandRefused` event. What was
//! refused changes nothing on the intent.

use eucora_projections::event::Role;
use eucora_projections::governance::CommandRefused;
use eucora_projections::intent::IntentState;
use uuid::Uuid;

use super::correlation;
use super::error::ApiError;
use super::extract::Principal;
use crate::domain::{Command, DomainError};
use crate::http::AppState;
use crate::write::CommandError;

/// A command as it was attempted: by whom, on which intent (none for a create), which.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub principal: Principal,
    pub intent: Option<Uuid>,
    pub command: &'static str,
}

impl Attempt {
    /// 403 unless the principal holds one of `roles`; a refusal is recorded.
    pub async fn require(&self, state: &AppState, roles: &[Role]) -> Result<(), ApiError> {
        match self.principal.require(roles) {
            Ok(_) => Ok(()),
            Err(e) => {
                if let ApiError::Forbidden(detail) = &e {
                    self.refused(state, "missing_role", detail).await;
                }
                Err(e)
            }
        }
    }

    /// Runs `command` on intent `id` (under the digest of an `Idempotency-Key`, if any): the one
    /// path every command of a person takes, from the API and the console alike. A refusal by
    /// the domain is recorded.
    pub async fn run(
        &self,
        state: &AppState,
        id: Uuid,
        command: Command,
        key_digest: Option<&str>,
    ) -> Result<IntentState, CommandError> {
        let outcome = state.commands.execute_keyed(id, command, key_digest).await;
        self.check(state, &outcome).await;
        outcome
    }

    /// Records the domain's refusal of the command, if it was one (segregation of duties, not
    /// the requester's own intent).
    pub async fn check(&self, state: &AppState, outcome: &Result<impl Sized, CommandError>) {
        let Err(CommandError::Domain(e)) = outcome else {
            return;
        };
        let reason = match e {
            DomainError::SegregationOfDuties => "segregation_of_duties",
            DomainError::NotOwnIntent => "not_own_intent",
            DomainError::NotOwnAssignment { .. } => "not_own_assignment",
            _ => return,
        };
        self.refused(state, reason, &e.to_string()).await;
    }

    /// Refuses the command with 403 for `reason`, and records the refusal.
    pub async fn refuse(&self, state: &AppState, reason: &'static str, detail: String) -> ApiError {
        self.refused(state, reason, &detail).await;
        ApiError::Forbidden(detail)
    }

    async fn refused(&self, state: &AppState, reason: &'static str, detail: &str) {
        state.telemetry.record_refusal(reason);
        let actor = &self.principal.0;
        tracing::warn!(
            subject = %actor.subject,
            command = self.command,
            reason,
            "command refused"
        );
        crate::governance::record_refusal(
            &state.store,
            CommandRefused {
                meta: crate::governance::meta(correlation::current()),
                principal_id: self.principal.1,
                subject: actor.subject.clone(),
                role: actor.role,
                intent: self.intent,
                command: self.command.to_string(),
                reason: reason.to_string(),
                detail: detail.to_string(),
                trace_id: crate::trace::trace_id(),
            },
        )
        .await;
    }
}
