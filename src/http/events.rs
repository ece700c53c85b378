//! `GET /api/v1/events`: the global stream, for audit replay and downstream consumers.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use eucora_projections::event::{DeploymentEvent, Role};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{Principal, QueryParams};
use crate::http::AppState;
use crate::store::{Columns, StoreError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(global_stream))
}

/// The query as the OpenAPI document describes it; [`QueryParams`] reads it, in our words.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct GlobalParams {
    /// The position of the last event already read; 0 or absent reads from the start.
    #[param(minimum = 0)]
    after: Option<i64>,
    /// At most this many events, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GlobalEventOut {
    /// The event's global position: pass the last one read as `after`.
    pub position: i64,
    pub deployment_id: String,
    /// Place in its intent's stream, from 1.
    pub sequence: i64,
    pub event_type: String,
    /// The event, envelope included, as this version reads it (an older stored version is
    /// upcast; the stored bytes are never rewritten).
    #[schema(value_type = Object)]
    pub event: DeploymentEvent,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GlobalPage {
    pub events: Vec<GlobalEventOut>,
    /// `after` for the next page; absent when this page reached the head of the stream.
    pub next_after: Option<i64>,
}

/// The global stream in commit order: every committed event once, in an order that never changes.
///
/// On PostgreSQL, positions are unique but not sorted in this order (a position is taken at insert,
/// the order is fixed at commit): page with `after` = the last position read, never by arithmetic.
#[utoipa::path(get, path = "", tag = "events", params(GlobalParams),
    responses((status = 200, body = GlobalPage), (status = 400), (status = 401), (status = 403), (status = 404, description = "`after` names no stored event"), (status = 503)),
    security(("bearer" = [])))]
async fn global_stream(
    State(state): State<AppState>,
    principal: Principal,
    query: QueryParams,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Auditor])?;
    let q = query.only(&["after", "limit"])?;
    let limit = q.number("limit", 1..=1000)?.unwrap_or(100);
    let after = q.number("after", 0..=i64::MAX)?.unwrap_or(0);
    // A cursor is a stored event: the stream's order is not the positions' order on PostgreSQL,
    // so there is no "after" a position no event has.
    if after > 0 && !state.store.has_position(after).await? {
        return Err(ApiError::NotFound(format!(
            "no stored event has position {after}: pass the position of the last event read"
        )));
    }
    let events = state
        .store
        .read_global((after > 0).then_some(after), limit, Columns::Streams)
        .await?;
    let next_after = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.position))
        .flatten();
    let events = events
        .into_iter()
        .map(|e| {
            let event = e.decode().map_err(|err| StoreError::Corrupt {
                position: e.position,
                reason: err.to_string(),
            })?;
            let stream = e.stream()?;
            Ok(GlobalEventOut {
                position: e.position,
                deployment_id: stream.aggregate_id.clone(),
                sequence: stream.sequence,
                event_type: e.event_type,
                event,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Json(GlobalPage { next_after, events }).into_response())
}
