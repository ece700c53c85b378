//! The connector protocol (docs/connectors.md): how EUCORA tells an execution plane (Intune,
//! Jamf, SCCM, Landscape, Ansible, each behind a small bridge that speaks this protocol) what to
//! install where, asks how it is going, and has it undone.
//!
//! Three calls, over HTTP and JSON:
//! - `PUT /v1/assignments/{assignment_id}`: publish an assignment (intent, version, ring,
//!   artifact hash);
//! - `GET /v1/assignments/{assignment_id}`: its status (device counts, incidents);
//! - `POST /v1/assignments/{assignment_id}/remediations`: uninstall, roll back or re-deploy.
//!
//! Every call that changes something carries an `Idempotency-Key` derived from the intent, the
//! ring and the action ([`idempotency_key`]), so a repeat never causes a second side effect.
//!
//! [`sim`] is a connector that speaks it (`eucora connector-sim`), with a device population per
//! ring and the faults a real one shows.

pub mod admission;
pub mod client;
pub mod dispatch;
pub mod settings;
pub mod sim;

use eucora_projections::event::Ring;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The header every changing call carries.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// What is asked of a connector for one intent in one ring: publish, uninstall, roll back,
/// re-deploy (the event schema's type, as the dispatch events record it).
pub use eucora_projections::event::ConnectorAction as Action;

/// The protocol operation an action is sent with: `publish`, or `remediate` for the others (the
/// `operation` label of the connector metrics).
pub fn operation(action: Action) -> &'static str {
    match action {
        Action::Publish => "publish",
        Action::Uninstall | Action::Rollback | Action::Redeploy => "remediate",
    }
}

/// The assignment id and idempotency key formats live with the event schema, which records them.
pub use eucora_projections::event::{assignment_id, idempotency_key};

/// `PUT /v1/assignments/{assignment_id}`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    pub deployment_id: Uuid,
    pub app_name: String,
    pub version: String,
    /// `LAB`, `CANARY`, `PILOT`, `DEPARTMENT` or `GLOBAL`.
    #[schema(value_type = String)]
    pub ring: Ring,
    /// The artifact's SHA-256, hex, when the intent recorded one.
    pub artifact_sha256: Option<String>,
}

/// `GET /v1/assignments/{assignment_id}`'s answer: where the rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AssignmentStatus {
    pub assignment_id: String,
    /// `active`, or the remediation last applied (`uninstall`, `rollback`, `redeploy`).
    pub state: String,
    /// Devices the assignment targets.
    pub targeted: u64,
    /// Devices that have the version installed now.
    pub installed: u64,
    /// Devices whose install failed.
    pub failed: u64,
    /// Devices that have not reported yet.
    pub pending: u64,
    /// Incidents raised against the version on these devices.
    pub incidents: u64,
}

/// The most assignments one batch status read asks for.
pub const BATCH: usize = 100;

/// `GET /v1/assignments?ids=…`'s answer: the statuses of the assignments asked for that the
/// connector has (one it does not have is left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AssignmentStatuses {
    pub assignments: Vec<AssignmentStatus>,
}

/// `POST /v1/assignments/{assignment_id}/remediations`' body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Remediation {
    /// `uninstall`, `rollback` or `redeploy`.
    #[schema(value_type = String, pattern = "^(uninstall|rollback|redeploy)$")]
    pub action: Action,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_intent_the_ring_and_the_action() {
        let id = Uuid::parse_str("0b5e1c2a-3f4d-4e5f-8a9b-0c1d2e3f4a5b").unwrap();
        assert_eq!(
            idempotency_key(id, Ring::Pilot, Action::Rollback),
            "0b5e1c2a-3f4d-4e5f-8a9b-0c1d2e3f4a5b:PILOT:rollback"
        );
        assert_eq!(
            assignment_id(id, Ring::Global),
            "0b5e1c2a-3f4d-4e5f-8a9b-0c1d2e3f4a5b.global"
        );
        assert_ne!(
            idempotency_key(id, Ring::Lab, Action::Publish),
            idempotency_key(id, Ring::Canary, Action::Publish)
        );
    }
}
