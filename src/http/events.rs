//! `GET /api/v1/events`: the global stream, for audit replay and downstream consumers.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use eucora_projections::decode::StreamEvent;
use eucora_projections::event::Role;
use eucora_projections::governance::{
    GovernanceEvent, POLICY_AGGREGATE_TYPE, REFUSAL_AGGREGATE_TYPE,
};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{Principal, QueryParams};
use crate::http::AppState;
use crate::store::{Columns, StoreError, TILE};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(global_stream))
}

/// The query as the OpenAPI document describes it; [`QueryParams`] reads it, in our words.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct GlobalParams {
    /// How many events were already read (the previous page's `next_after`); 0 or absent reads
    /// from the start.
    #[param(minimum = 0)]
    after: Option<i64>,
    /// At most this many events, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GlobalEventOut {
    /// The event's leaf index in the Merkle log: its place in the stream, from 0, gap-free.
    pub index: i64,
    /// The event's position in the store (in its leaf data; not the cursor).
    pub position: i64,
    /// Whose stream the event is in: `deployment` (an intent's), `principal` (an access
    /// change: a principal created, its token rotated, or revoked), `policy` (a policy
    /// activated) or `access` (a command refused).
    #[schema(value_type = String, example = "deployment")]
    pub stream: &'static str,
    /// The intent's id, for an event of a deployment stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    /// The principal's id, for an event of a principal's stream or a refused command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    /// Place in its stream, from 1.
    pub sequence: i64,
    pub event_type: String,
    /// The W3C trace id of the request that wrote the event, when its trace was sampled: look
    /// the trace up in the tracing backend the server exports to (or the caller's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The event, envelope included, as this version reads it (an older stored version is
    /// upcast; the stored bytes are never rewritten).
    #[schema(value_type = Object)]
    pub event: StreamEvent,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GlobalPage {
    pub events: Vec<GlobalEventOut>,
    /// `after` for the next page; absent when this page reached the head of the log.
    pub next_after: Option<i64>,
}

/// The global stream in commit order, every committed event once, each with its `index`: its
/// leaf in the Merkle log, from 0, gap-free. Page with `after` = the number of events already read
/// (the `next_after` of the previous page). Events appear once the log has taken them, within a
/// second of their commit.
#[utoipa::path(get, path = "", tag = "events", params(GlobalParams, super::fresh::FreshParams),
    responses((status = 200, body = GlobalPage), (status = 400), (status = 401), (status = 403), (status = 404, description = "the log does not have that many events yet, or no event has the `min_index` given"), (status = 503, description = "the store did not answer, or `min_index` was not reached within a second")),
    security(("bearer" = [])))]
async fn global_stream(
    State(state): State<AppState>,
    principal: Principal,
    q: QueryParams,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Auditor])?;
    let limit = q.number("limit", 1..=1000)?.unwrap_or(100) as u64;
    let after = q.number("after", 0..=i64::MAX)?.unwrap_or(0) as u64;
    let fresh = super::fresh::min_index(&q)?;
    super::fresh::wait_for(&state, crate::projection::log::LOG, fresh).await?;
    Ok(Json(global_page(&state, after, limit).await?).into_response())
}

/// `limit` events of the global stream after the first `after`, as the log has taken them.
pub async fn global_page(state: &AppState, after: u64, limit: u64) -> Result<GlobalPage, ApiError> {
    let size = state.log.size();
    if after > size {
        return Err(ApiError::NotFound(format!(
            "the log has {size} events, fewer than the {after} already read"
        )));
    }
    let take = limit.min(size - after);
    // Where leaf `after - 1` stands in the store: the page starts right after it.
    let start = if after == 0 {
        None
    } else {
        let tile = ((after - 1) / TILE) as i64;
        let position = state
            .store
            .log_tiles(tile, tile)
            .await?
            .into_iter()
            .next()
            .and_then(|t| t.positions.get(((after - 1) % TILE) as usize).copied())
            .ok_or_else(|| ApiError::Unavailable("the log's tiles are being written".into()))?;
        Some(position)
    };
    let rows = if take == 0 {
        Vec::new()
    } else {
        state
            .store
            .read_global(start, take as i64, Columns::Stored)
            .await?
    };
    let next = after + rows.len() as u64;
    let next_after = (next < size).then_some(next as i64);
    let events = rows
        .into_iter()
        .zip(after..)
        .map(|(e, index)| {
            let event = e.decode().map_err(|err| StoreError::Corrupt {
                position: e.position,
                reason: err.to_string(),
            })?;
            let stream = e.stream()?;
            let (kind, deployment_id, principal_id) = match &event {
                StreamEvent::Deployment(_) => {
                    ("deployment", Some(stream.aggregate_id.clone()), None)
                }
                StreamEvent::Access(_) => ("principal", None, Some(stream.aggregate_id.clone())),
                StreamEvent::Governance(GovernanceEvent::PolicyActivated(_)) => {
                    (POLICY_AGGREGATE_TYPE, None, None)
                }
                StreamEvent::Governance(GovernanceEvent::CommandRefused(e)) => (
                    REFUSAL_AGGREGATE_TYPE,
                    None,
                    Some(e.principal_id.to_string()),
                ),
            };
            Ok(GlobalEventOut {
                index: index as i64,
                position: e.position,
                stream: kind,
                deployment_id,
                principal_id,
                sequence: stream.sequence,
                trace_id: e.stored.as_ref().and_then(|s| {
                    crate::store::metadata_member(&s.metadata, crate::store::TRACE_METADATA)
                }),
                event_type: e.event_type,
                event,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(GlobalPage { next_after, events })
}
