//! `/api/v1/policies`: which rules were in force, and since when. Each policy a server started
//! with, when it differed from the last one recorded, is a `PolicyActivated` of the policy stream.

use axum::extract::{Path, State};
use axum::Json;
use eucora_projections::event::Role;
use eucora_projections::governance::PolicyActivated;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::Principal;
use crate::http::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(history))
        .routes(routes!(show))
}

/// One policy activation: its digest, where it was read from, who started a server with it,
/// when, and the policy it replaced.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyOut {
    /// SHA-256 of the policy text (lowercase hex).
    pub digest: String,
    /// The file it was read from, or `built-in default`.
    pub source: String,
    /// `<OS user>@<host>` of the server that started with it.
    pub activated_by: String,
    /// When, RFC 3339.
    pub activated_at: String,
    /// The digest it replaced; null for the first.
    pub previous_digest: Option<String>,
    /// The event's position in the store.
    pub position: i64,
    /// The whole policy text (only on `GET /api/v1/policies/{digest}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

impl PolicyOut {
    fn new(position: i64, p: PolicyActivated, with_text: bool) -> PolicyOut {
        PolicyOut {
            activated_at: p
                .meta
                .occurred_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            digest: p.digest,
            source: p.source,
            activated_by: p.activated_by,
            previous_digest: p.previous_digest,
            position,
            policy: with_text.then_some(p.policy),
        }
    }
}

/// Every policy activated, oldest first (without their texts).
#[utoipa::path(get, path = "", tag = "policies",
    responses((status = 200, body = Vec<PolicyOut>), (status = 401), (status = 403), (status = 429), (status = 503)),
    security(("bearer" = [])))]
async fn history(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<PolicyOut>>, ApiError> {
    principal.require(&[Role::Auditor])?;
    Ok(Json(
        state
            .store
            .policy_history()
            .await?
            .into_iter()
            .map(|(position, p)| PolicyOut::new(position, p, false))
            .collect(),
    ))
}

/// The policy with this digest (a prefix of at least 8 hex digits names it when only one
/// matches), with its whole text, as last activated.
#[utoipa::path(get, path = "/{digest}", tag = "policies",
    params(("digest" = String, Path, description = "the SHA-256, or a unique prefix of at least 8 hex digits")),
    responses((status = 200, body = PolicyOut), (status = 400), (status = 401), (status = 403), (status = 404), (status = 429), (status = 503)),
    security(("bearer" = [])))]
async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(digest): Path<String>,
) -> Result<Json<PolicyOut>, ApiError> {
    principal.require(&[Role::Auditor])?;
    let wanted = digest.to_ascii_lowercase();
    if wanted.len() < 8 || wanted.len() > 64 || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!(
            "{digest:?} is not a policy digest: 8 to 64 hex digits"
        )));
    }
    let mut found: Vec<(i64, PolicyActivated)> = state
        .store
        .policy_history()
        .await?
        .into_iter()
        .filter(|(_, p)| p.digest.starts_with(&wanted))
        .collect();
    let distinct: std::collections::BTreeSet<&str> =
        found.iter().map(|(_, p)| p.digest.as_str()).collect();
    if distinct.len() > 1 {
        return Err(ApiError::BadRequest(format!(
            "{digest:?} names {} policies; give more of the digest",
            distinct.len()
        )));
    }
    let (position, p) = found.pop().ok_or_else(|| {
        ApiError::NotFound(format!("no policy with digest {digest} was activated"))
    })?;
    Ok(Json(PolicyOut::new(position, p, true)))
}
