//! `/api/v1/principals`: the access review. Admins list every principal and revoke one; each
//! revocation is an event of the principal's stream, and takes effect on every server at once.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use eucora_projections::event::Role;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::correlation;
use super::error::ApiError;
use super::extract::{parse_id, Principal};
use super::refusals::Attempt;
use crate::http::AppState;
use crate::principals::PrincipalOut;
use crate::store::{AccessChange, AccessRefused};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(revoke))
}

/// Every principal, oldest first, with its state now (`active`, `expired` or `revoked`). Never a
/// token or its hash.
#[utoipa::path(get, path = "", tag = "principals",
    responses((status = 200, body = Vec<PrincipalOut>), (status = 401), (status = 403), (status = 429), (status = 503)),
    security(("bearer" = [])))]
async fn list(State(state): State<AppState>, principal: Principal) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin])?;
    let now = Utc::now();
    let grantors = state.store.principal_grantors().await?;
    let out: Vec<PrincipalOut> = state
        .store
        .principals()
        .await?
        .into_iter()
        .map(|p| PrincipalOut::new(p, now, &grantors))
        .collect();
    Ok(Json(out).into_response())
}

/// Revokes a principal: its token stops working on every server as this commits, and a
/// `PrincipalRevoked` event records who did it. Revoking one already revoked changes nothing and
/// answers the same.
#[utoipa::path(delete, path = "/{id}", tag = "principals",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = PrincipalOut), (status = 400), (status = 401), (status = 403), (status = 404), (status = 429), (status = 503)),
    security(("bearer" = [])))]
async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = revoke_as(&state, principal, &id).await?;
    let grantors = state.store.principal_grantors().await?;
    Ok(Json(PrincipalOut::new(record, Utc::now(), &grantors)).into_response())
}

/// Revokes principal `id` for `principal` (an admin): the one path the API and the console take.
pub async fn revoke_as(
    state: &AppState,
    principal: Principal,
    id: &str,
) -> Result<crate::store::PrincipalRecord, ApiError> {
    let attempt = Attempt {
        principal: principal.clone(),
        intent: None,
        command: "revoke_principal",
    };
    attempt.require(state, &[Role::Admin]).await?;
    let actor = principal.0.clone();
    let id = parse_id(id)?;
    let change = AccessChange {
        actor,
        correlation_id: correlation::current(),
        at: Utc::now(),
    };
    match state.store.revoke_principal(id, &change).await? {
        Ok(record) => {
            // Access changes are the security log's news, under the request's correlation and
            // trace ids.
            tracing::info!(principal_id = %id, subject = %record.subject,
                by = %change.actor.subject, "principal revoked");
            Ok(record)
        }
        Err(e @ AccessRefused::NotFound(_)) => Err(ApiError::NotFound(e.to_string())),
        Err(e @ AccessRefused::Revoked(_)) => Err(ApiError::Conflict {
            detail: e.to_string(),
            extra: None,
        }),
    }
}
