//! The access stream: principals created, their tokens rotated, and principals revoked. Each
//! principal's events are a stream of their own in the events table (aggregate type
//! [`AGGREGATE_TYPE`]), so access reviews are sealed by the Merkle log and exported as evidence
//! like every other change. No event carries a token or its hash.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{Actor, Role};

/// The aggregate type of a principal's stream in the events table.
pub const AGGREGATE_TYPE: &str = "principal";

/// The envelope of every access event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccessMeta {
    /// UUIDv7.
    pub event_id: Uuid,
    /// The principal changed (its stream).
    pub principal_id: Uuid,
    /// The correlation id of the request or command-line run that made the change.
    pub correlation_id: String,
    /// Who made the change: an admin over the API, or an operator at the command line
    /// (`cli:<user>`).
    pub actor: Actor,
    /// When the change was made.
    pub occurred_at: DateTime<Utc>,
    /// The event type's schema version it was written at.
    pub schema_version: u32,
}

/// A principal granted. Version 2 added `conflict_allowed` (version 1 grants upcast to null).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PrincipalCreated {
    /// The envelope: event id, principal, correlation id, actor, time, schema version.
    pub meta: AccessMeta,
    /// Who it is (the subject its actions are recorded under).
    pub subject: String,
    /// What it may do.
    pub role: Role,
    /// When its token stops working.
    pub expires_at: DateTime<Utc>,
    /// Why a role conflicting with one the subject already held (requester and CAB approver)
    /// was granted anyway (`--allow-conflict`); null for every other grant.
    pub conflict_allowed: Option<String>,
}

/// The principal's token was replaced: the old one stopped working as this was committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PrincipalTokenRotated {
    /// The envelope: event id, principal, correlation id, actor, time, schema version.
    pub meta: AccessMeta,
    /// When the new token stops working (the old one already has).
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PrincipalRevoked {
    /// The envelope: event id, principal, correlation id, actor, time, schema version.
    pub meta: AccessMeta,
}

/// Every event of a principal's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum AccessEvent {
    PrincipalCreated(PrincipalCreated),
    PrincipalTokenRotated(PrincipalTokenRotated),
    PrincipalRevoked(PrincipalRevoked),
}

impl AccessEvent {
    /// The stable type name stored beside the payload.
    pub fn type_name(&self) -> &'static str {
        match self {
            AccessEvent::PrincipalCreated(_) => "PrincipalCreated",
            AccessEvent::PrincipalTokenRotated(_) => "PrincipalTokenRotated",
            AccessEvent::PrincipalRevoked(_) => "PrincipalRevoked",
        }
    }

    /// This event type's schema version as this build writes and reads it.
    pub fn version(&self) -> u32 {
        match self {
            AccessEvent::PrincipalCreated(_) => 2,
            AccessEvent::PrincipalTokenRotated(_) | AccessEvent::PrincipalRevoked(_) => 1,
        }
    }

    pub fn meta(&self) -> &AccessMeta {
        match self {
            AccessEvent::PrincipalCreated(e) => &e.meta,
            AccessEvent::PrincipalTokenRotated(e) => &e.meta,
            AccessEvent::PrincipalRevoked(e) => &e.meta,
        }
    }
}

/// What a principal's events say it is: the table of principals must agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalFacts {
    pub subject: String,
    pub role: Role,
    /// The expiry of its current token: from its creation or its last rotation.
    pub expires_at: DateTime<Utc>,
    pub revoked: bool,
}

impl PrincipalFacts {
    /// Folds one principal's events, in stream order; `None` without its `PrincipalCreated`.
    pub fn fold<'a>(events: impl IntoIterator<Item = &'a AccessEvent>) -> Option<PrincipalFacts> {
        let mut facts: Option<PrincipalFacts> = None;
        for event in events {
            match (event, facts.as_mut()) {
                (AccessEvent::PrincipalCreated(c), None) => {
                    facts = Some(PrincipalFacts {
                        subject: c.subject.clone(),
                        role: c.role,
                        expires_at: c.expires_at,
                        revoked: false,
                    })
                }
                (AccessEvent::PrincipalTokenRotated(r), Some(f)) => f.expires_at = r.expires_at,
                (AccessEvent::PrincipalRevoked(_), Some(f)) => f.revoked = true,
                // A second creation, or a change before any: not a principal's history.
                _ => return None,
            }
        }
        facts
    }
}
