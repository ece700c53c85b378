//! `controls.json`'s informational sections: the policies in force over the bundle's events, with
//! the changes judged under each, and the commands refused. Neither is a control: nothing passes
//! or fails; each cites its leaves, and the verifier recomputes both from the events.

use std::collections::BTreeMap;

use eucora_projections::event::DeploymentEvent;
use eucora_projections::governance::GovernanceEvent;
use serde::{Deserialize, Serialize};

use super::controls::rfc3339;

/// A policy the bundle's changes were judged under, or one activated among its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInForce {
    /// SHA-256 of the policy text.
    pub digest: String,
    /// The leaf of its `PolicyActivated` when the bundle holds it (a period's bundle holds every
    /// one up to its end), else null.
    pub leaf: Option<u64>,
    /// When, by whom and from where it was activated, and what it replaced (null without its
    /// `PolicyActivated`).
    pub activated_at: Option<String>,
    pub activated_by: Option<String>,
    pub source: Option<String>,
    pub previous_digest: Option<String>,
    /// The changes whose assessment or a gate evaluation names it, sorted.
    pub judged: Vec<String>,
}

/// A command refused, as its `CommandRefused` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusedCommand {
    pub leaf: u64,
    pub at: String,
    pub subject: String,
    pub role: String,
    /// The intent it was aimed at (null for a create or a revocation).
    pub intent: Option<String>,
    pub command: String,
    pub reason: String,
}

/// The policies: each activated among `governance` (in leaf order), then any other digest the
/// changes name; each with the changes judged under it.
pub(super) fn policies(
    governance: &[(u64, GovernanceEvent)],
    intents: &BTreeMap<String, Vec<(u64, DeploymentEvent)>>,
) -> Vec<PolicyInForce> {
    // Each digest's changes, in the order of their ids (the intents' own order): an intent's
    // digests gathered first (almost always one, named by many of its events), then it is added
    // once to each.
    let mut judged: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut named: Vec<&str> = Vec::new();
    for (id, events) in intents {
        named.clear();
        for (_, event) in events {
            let digest = match event {
                DeploymentEvent::DeploymentCreated(c) => c.risk.policy_digest.as_deref(),
                DeploymentEvent::PromotionGateEvaluated(g) => g.policy_digest.as_deref(),
                _ => None,
            };
            if let Some(digest) = digest.filter(|d| !named.contains(d)) {
                named.push(digest);
            }
        }
        for digest in &named {
            judged.entry(digest).or_default().push(id);
        }
    }
    let names = |digest: &str| -> Vec<String> {
        judged
            .get(digest)
            .map(|ids| ids.iter().map(|id| id.to_string()).collect())
            .unwrap_or_default()
    };
    let mut out: Vec<PolicyInForce> = governance
        .iter()
        .filter_map(|(leaf, e)| match e {
            GovernanceEvent::PolicyActivated(p) => Some(PolicyInForce {
                digest: p.digest.clone(),
                leaf: Some(*leaf),
                activated_at: Some(rfc3339(p.meta.occurred_at)),
                activated_by: Some(p.activated_by.clone()),
                source: Some(p.source.clone()),
                previous_digest: p.previous_digest.clone(),
                judged: names(&p.digest),
            }),
            GovernanceEvent::CommandRefused(_) => None,
        })
        .collect();
    for digest in judged.keys() {
        if !out.iter().any(|p| p.digest == *digest) {
            out.push(PolicyInForce {
                digest: digest.to_string(),
                leaf: None,
                activated_at: None,
                activated_by: None,
                source: None,
                previous_digest: None,
                judged: names(digest),
            });
        }
    }
    out
}

/// The refused commands among `governance`, in leaf order.
pub(super) fn refused_commands(governance: &[(u64, GovernanceEvent)]) -> Vec<RefusedCommand> {
    governance
        .iter()
        .filter_map(|(leaf, e)| match e {
            GovernanceEvent::CommandRefused(r) => Some(RefusedCommand {
                leaf: *leaf,
                at: rfc3339(r.meta.occurred_at),
                subject: r.subject.clone(),
                role: r.role.as_str().to_string(),
                intent: r.intent.map(|i| i.to_string()),
                command: r.command.clone(),
                reason: r.reason.clone(),
            }),
            GovernanceEvent::PolicyActivated(_) => None,
        })
        .collect()
}
