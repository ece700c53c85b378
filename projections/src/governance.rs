//! The rules in force and the decisions refused: the `policy` stream (each policy a server started
//! with, when it differs from the last recorded) and the `access` streams of refused commands.
//! Both are sealed by the Merkle log and exported as evidence like every other event.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::Role;

/// The aggregate type of the policy stream.
pub const POLICY_AGGREGATE_TYPE: &str = "policy";
/// The one policy stream's id.
pub const POLICY_STREAM: &str = "policy";
/// The aggregate type of refused commands: each is a stream of its own (its id is the event's),
/// so recording one never waits on another.
pub const REFUSAL_AGGREGATE_TYPE: &str = "access";

/// The envelope of every governance event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GovernanceMeta {
    /// UUIDv7.
    pub event_id: Uuid,
    /// The correlation id of the start-up or request that recorded it.
    pub correlation_id: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The event type's schema version it was written at.
    pub schema_version: u32,
}

/// A server started with a policy other than the last one recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PolicyActivated {
    /// The envelope: event id, correlation id, time, schema version.
    pub meta: GovernanceMeta,
    /// SHA-256 of the policy file's bytes as read (lowercase hex); the built-in default's is that
    /// of the empty file, which means the same rules.
    pub digest: String,
    /// The whole policy text (empty for the built-in default).
    pub policy: String,
    /// The file it was read from, or `built-in default`.
    pub source: String,
    /// Who started the server with it: `<OS user>@<host>`.
    pub activated_by: String,
    /// The digest of the policy recorded before it; null for the first.
    pub previous_digest: Option<String>,
}

/// A command refused for segregation of duties, for an intent not the requester's own, or for a
/// missing role (a 403 on a command endpoint). The intent it was aimed at is unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CommandRefused {
    /// The envelope: event id, correlation id, time, schema version.
    pub meta: GovernanceMeta,
    /// The principal that sent it.
    pub principal_id: Uuid,
    /// Its subject.
    pub subject: String,
    /// Its role.
    pub role: Role,
    /// The intent it was aimed at; null for a request to create one.
    pub intent: Option<Uuid>,
    /// The command: `create`, `approve`, `reject`, `deploy`, `promote`, `rollback`,
    /// `push_result` (`POST /api/v1/connectors/{name}/results`), or `revoke_principal`
    /// (`DELETE /api/v1/principals/{id}`).
    pub command: String,
    /// `segregation_of_duties` (the requester deciding on its own change), `not_own_intent` (a
    /// requester rolling back another's), `not_own_assignment` (a result pushed for another
    /// connector's assignment) or `missing_role`.
    pub reason: String,
    /// The refusal in words, as the caller was told.
    pub detail: String,
    /// The W3C trace id of the request, when its trace was sampled.
    pub trace_id: Option<String>,
}

/// Every event of the policy stream and of refused commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum GovernanceEvent {
    PolicyActivated(PolicyActivated),
    CommandRefused(CommandRefused),
}

impl GovernanceEvent {
    /// The stable type name stored beside the payload.
    pub fn type_name(&self) -> &'static str {
        match self {
            GovernanceEvent::PolicyActivated(_) => "PolicyActivated",
            GovernanceEvent::CommandRefused(_) => "CommandRefused",
        }
    }

    /// This event type's schema version as this build writes and reads it.
    pub fn version(&self) -> u32 {
        1
    }

    pub fn meta(&self) -> &GovernanceMeta {
        match self {
            GovernanceEvent::PolicyActivated(e) => &e.meta,
            GovernanceEvent::CommandRefused(e) => &e.meta,
        }
    }

    /// The aggregate type and id of the stream it is stored in.
    pub fn stream(&self) -> (&'static str, String) {
        match self {
            GovernanceEvent::PolicyActivated(_) => (POLICY_AGGREGATE_TYPE, POLICY_STREAM.into()),
            GovernanceEvent::CommandRefused(e) => {
                (REFUSAL_AGGREGATE_TYPE, e.meta.event_id.to_string())
            }
        }
    }
}

/// Whether `event_type` names a governance event.
pub fn is_governance_type(event_type: &str) -> bool {
    matches!(event_type, "PolicyActivated" | "CommandRefused")
}
