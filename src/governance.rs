//! The rules in force and the decisions refused, on the record: at start-up the policy the
//! server runs with is appended to the policy stream when it differs from the last one recorded,
//! and a command refused for segregation of duties or a missing role becomes a `CommandRefused`.

use chrono::Utc;
use eucora_projections::governance::{
    CommandRefused, GovernanceEvent, GovernanceMeta, PolicyActivated,
};
use uuid::Uuid;

use crate::domain::Policy;
use crate::store::{Store, StoreError};

/// Where the policy in force came from when no file was given.
pub const BUILT_IN: &str = "built-in default";

/// Records `policy` (read from `source`) as the one in force, unless it is the last one recorded
/// already; returns the event appended, if any. Two replicas starting at once with the same new
/// policy record it once.
pub async fn record_policy(
    store: &Store,
    policy: &Policy,
    source: &str,
) -> Result<Option<PolicyActivated>, StoreError> {
    for _ in 0..3 {
        let previous = store.policy_history().await?.pop().map(|(_, p)| p.digest);
        if previous.as_deref() == Some(policy.digest()) {
            return Ok(None);
        }
        let activated = PolicyActivated {
            meta: meta(format!("start-{}", Uuid::new_v4())),
            digest: policy.digest().to_string(),
            policy: policy.text().to_string(),
            source: source.to_string(),
            activated_by: process_identity(),
            previous_digest: previous,
        };
        let event = GovernanceEvent::PolicyActivated(activated.clone());
        if store.append_governance(&event).await? {
            return Ok(Some(activated));
        }
        // Another replica recorded one first: read again.
    }
    Err(StoreError::Corrupt {
        position: 0,
        reason: "the policy stream kept changing while this server recorded its policy".into(),
    })
}

/// Records a refused command. Failing to record it is logged, not returned: the caller is refused
/// either way.
pub async fn record_refusal(store: &Store, refusal: CommandRefused) {
    let event = GovernanceEvent::CommandRefused(refusal);
    if let Err(e) = store.append_governance(&event).await {
        tracing::error!(error = %e, "cannot record a refused command");
    }
}

/// A governance event's envelope, now, under `correlation_id`.
pub fn meta(correlation_id: String) -> GovernanceMeta {
    GovernanceMeta {
        event_id: Uuid::now_v7(),
        correlation_id,
        occurred_at: Utc::now(),
        schema_version: 1,
    }
}

/// `<OS user>@<host>` of this process: the login (USER, LOGNAME) or the numeric user id, and the
/// kernel's host name.
pub fn process_identity() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self")
                .ok()
                .map(|m| format!("uid {}", m.uid()))
        })
        .unwrap_or_else(|| "unknown user".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown host".into());
    format!("{user}@{host}")
}
