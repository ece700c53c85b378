//! The access stream: principals created, their tokens rotated, and principals revoked. Each
//! principal's events are a stream of their own in the events table (aggregate type
//! [`AGGREGATE_TYPE`]), so access reviews are sealed by the Merkle log and exported as evidence
//! like every other change. No event carries a token or its hash.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{Actor, Role};

/// The aggregate type of a principal's stream in the events table.
pub const AGGREGATE_TYPE: &str = "principal";

/// The envelope of every access event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessMeta {
    /// UUIDv7.
    pub event_id: Uuid,
    pub principal_id: Uuid,
    pub correlation_id: String,
    /// Who made the change: an admin over the API, or an operator at the command line
    /// (`cli:<user>`).
    pub actor: Actor,
    pub occurred_at: DateTime<Utc>,
    pub schema_version: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrincipalCreated {
    pub meta: AccessMeta,
    pub subject: String,
    pub role: Role,
    pub expires_at: DateTime<Utc>,
}

/// The principal's token was replaced: the old one stopped working as this was committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrincipalTokenRotated {
    pub meta: AccessMeta,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrincipalRevoked {
    pub meta: AccessMeta,
}

/// Every event of a principal's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
        1
    }

    pub fn meta(&self) -> &AccessMeta {
        match self {
            AccessEvent::PrincipalCreated(e) => &e.meta,
            AccessEvent::PrincipalTokenRotated(e) => &e.meta,
            AccessEvent::PrincipalRevoked(e) => &e.meta,
        }
    }
}
