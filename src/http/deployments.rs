//! `/api/v1/deployments`: the intent endpoints of docs/api.md.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use eucora_projections::event::{
    ChangeType, ConnectorType, DeploymentEvent, Ring, SiteClass, Status,
};
use eucora_projections::intent::IntentState;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{if_match, parse_id, whole_number, ApiJson, Principal, QueryParams};
use super::refusals::Attempt;
use super::schema::{
    ChangeTypeName, ConnectorName, RetroApprovalName, RingName, SiteClassName, StatusName,
};
use super::{correlation, idempotency};
use crate::domain::{Action, Command, CreateIntent, RiskFactors, RolloutInput};
use crate::http::AppState;
use crate::read::ListFilter;
use crate::store::RetroApproval;

mod response;
pub use response::{CostResponse, IntentResponse, StatusRejectedResponse};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one))
        .routes(routes!(events))
        .routes(routes!(approve))
        .routes(routes!(reject))
        .routes(routes!(deploy))
        .routes(routes!(promote))
        .routes(routes!(rollback))
}

/// Body of `POST /api/v1/deployments`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    #[schema(
        example = "7-Zip",
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub app_name: String,
    #[schema(
        example = "24.08",
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub version: String,
    /// `intune`, `jamf`, `sccm`, `landscape`, `ansible`, or a custom connector configured on the
    /// server (422 otherwise).
    #[schema(value_type = ConnectorName, example = "intune")]
    pub connector_type: ConnectorType,
    /// Default `LAB`; never past `target_ring` (422).
    #[schema(value_type = Option<RingName>)]
    pub start_ring: Option<Ring>,
    /// Highest ring to roll out to; default `GLOBAL`.
    #[schema(value_type = Option<RingName>)]
    pub target_ring: Option<Ring>,
    /// Default `normal`.
    #[schema(value_type = Option<ChangeTypeName>)]
    pub change_type: Option<ChangeType>,
    /// Default `online`.
    #[schema(value_type = Option<SiteClassName>)]
    pub site_class: Option<SiteClass>,
    /// AV, EDR or admin tools: always needs CAB approval.
    #[serde(default)]
    pub privileged_tooling: bool,
    #[serde(default)]
    pub critical_infrastructure: bool,
    /// The rollback plan was validated (required before leaving LAB).
    #[serde(default)]
    pub rollback_validated: bool,
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub artifact_sha256: Option<String>,
    /// Each factor from 0 to 1 (an object; an array is refused).
    #[serde(deserialize_with = "RiskFactors::object_only")]
    pub risk_factors: RiskFactors,
    #[schema(max_length = 4096)]
    pub justification: Option<String>,
    /// When the change was committed to source control (RFC 3339), where its lead time starts;
    /// without it, lead time starts at this request. At most 5 minutes ahead of the server (422).
    pub source_committed_at: Option<DateTime<Utc>>,
    /// The change's reference in another system (a ServiceNow CHG number, a Jira key): 1 to 64
    /// printable characters, no space at either end.
    #[schema(min_length = 1, max_length = 64)]
    pub change_ref: Option<String>,
    /// The artifact's size in bytes, 0 to 10,000,000,000,000: what delivering it to each device
    /// costs (`cost_rates.per_gb_delivered`).
    #[schema(minimum = 0, maximum = 10_000_000_000_000_u64)]
    pub artifact_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    #[schema(max_length = 4096)]
    pub comment: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    /// Not blank.
    #[schema(min_length = 1, max_length = 4096, pattern = "\\S")]
    pub reason: String,
}

/// A rollout result for the intent's current ring; counts are cumulative.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The intent's current ring (409 otherwise).
    #[schema(value_type = RingName, example = "LAB")]
    pub ring: Ring,
    /// Counts are whole numbers; `10.0` reads as 10, `10.5` is refused.
    #[schema(minimum = 1, maximum = 10_000_000)]
    #[serde(deserialize_with = "whole_number")]
    pub target_devices: u64,
    /// `succeeded + failed` may not exceed `target_devices`.
    #[schema(minimum = 0, maximum = 10_000_000)]
    #[serde(deserialize_with = "whole_number")]
    pub succeeded: u64,
    #[schema(minimum = 0, maximum = 10_000_000)]
    #[serde(deserialize_with = "whole_number")]
    pub failed: u64,
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub incidents: u64,
}

/// The intent as a command left it, with the command's index (docs/api.md, "Fresh reads").
fn intent_response(status: StatusCode, s: &IntentState, index: Option<i64>) -> Response {
    let mut body = IntentResponse::from(s);
    body.index = index;
    let mut response = (status, Json(body)).into_response();
    super::fresh::set_index(&mut response, index);
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", s.stream_version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// The one command-handling path: checks the role, runs the command once per
/// `Idempotency-Key`, and answers with the intent as it now stands (201 with `Location` for a
/// create, 409 with the gate results for a blocked promotion, 200 otherwise).
pub(crate) async fn command(
    state: AppState,
    principal: Principal,
    headers: &HeaderMap,
    id: Uuid,
    digest: &str,
    action: Action,
) -> Result<Response, ApiError> {
    let (is_create, is_promotion) = (
        matches!(action, Action::Create(_)),
        matches!(action, Action::Promote),
    );
    let attempt = Attempt {
        principal: principal.clone(),
        intent: (!is_create).then_some(id),
        command: action.name(),
    };
    attempt.require(&state, action.roles()).await?;
    state.admit(&action).await;
    let command = Command {
        actor: principal.0,
        correlation_id: correlation::current(),
        expected_version: if is_create { None } else { if_match(headers)? },
        action,
    };
    let subject = command.actor.subject.clone();
    let refusals = state.clone();
    let run = move |id: Uuid, key: Option<String>| async move {
        Ok(attempt.run(&refusals, id, command, key.as_deref()).await?)
    };
    let answer = move |intent: &IntentState, index: Option<i64>| match &intent.last_promotion {
        Some(attempt) if is_promotion && !attempt.passed => {
            let blocked: Vec<&str> = attempt.blocked_by().iter().map(|g| g.as_str()).collect();
            let mut body = IntentResponse::from(intent);
            body.index = index;
            let mut response = ApiError::PromotionBlocked {
                detail: format!(
                    "promotion from {} to {} blocked by: {} (the evaluation is recorded)",
                    attempt.from_ring.as_str(),
                    attempt.to_ring.as_str(),
                    blocked.join(", ")
                ),
                extra: json!({
                    "promotion": attempt,
                    "intent": body,
                }),
            }
            .into_response();
            super::fresh::set_index(&mut response, index);
            response
        }
        _ if is_create => {
            let mut response = intent_response(StatusCode::CREATED, intent, index);
            let location = format!("/api/v1/deployments/{}", intent.id);
            if let Ok(location) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        _ => intent_response(StatusCode::OK, intent, index),
    };
    let write = idempotency::Write {
        intent: id,
        run,
        answer,
    };
    idempotency::once(&state, &subject, headers, digest, write).await
}

/// A command on an existing intent, named by the path's id.
async fn on_intent(
    state: AppState,
    principal: Principal,
    headers: HeaderMap,
    id: String,
    digest: String,
    action: Action,
) -> Result<Response, ApiError> {
    let attempt = Attempt {
        principal: principal.clone(),
        intent: Uuid::parse_str(&id).ok(),
        command: action.name(),
    };
    attempt.require(&state, action.roles()).await?;
    let id = parse_id(&id)?;
    command(state, principal, &headers, id, &digest, action).await
}

/// Create a deployment intent.
///
/// Scores its risk, records the full assessment, and approves it by policy when the risk allows.
#[utoipa::path(post, path = "", tag = "deployments", request_body = CreateRequest,
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, description = "retry safely: 1 to 255 visible ASCII characters", min_length = 1, max_length = 255, pattern = "^[\\x21-\\x7e]{1,255}$")),
    responses(
        (status = 201, description = "created", body = IntentResponse),
        (status = 400, description = "malformed request"), (status = 401), (status = 403),
        (status = 413), (status = 415),
        (status = 409, description = "an intent with this id exists (a retried create under another key)"),
        (status = 422, description = "invalid (start past target), an SBOM with a Critical finding, or the Idempotency-Key was used with another request"),
        (status = 503, description = "the store did not answer; retry after Retry-After")),
    security(("bearer" = [])))]
async fn create(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: ApiJson<CreateRequest>,
) -> Result<Response, ApiError> {
    let r = body.value;
    // A custom connector exists only where the connectors file names it.
    let configured = || {
        state.dispatch.as_ref().is_some_and(|d| {
            d.connectors()
                .iter()
                .any(|c| c.connector_type == r.connector_type.as_str())
        })
    };
    if !r.connector_type.is_builtin() && !configured() {
        return Err(ApiError::Unprocessable(format!(
            "connector_type: {:?} is not intune, jamf, sccm, landscape, ansible, or a custom \
             connector configured on this server ([connectors.{}] with type = \"custom\")",
            r.connector_type.as_str(),
            r.connector_type.as_str()
        )));
    }
    let action = Action::Create(Box::new(CreateIntent {
        app_name: r.app_name,
        version: r.version,
        connector_type: r.connector_type,
        start_ring: r.start_ring.unwrap_or(Ring::Lab),
        target_ring: r.target_ring.unwrap_or(Ring::Global),
        change_type: r.change_type.unwrap_or(ChangeType::Normal),
        site_class: r.site_class.unwrap_or(SiteClass::Online),
        privileged_tooling: r.privileged_tooling,
        critical_infrastructure: r.critical_infrastructure,
        rollback_validated: r.rollback_validated,
        artifact_sha256: r.artifact_sha256,
        risk_factors: r.risk_factors,
        justification: r.justification,
        source_committed_at: r.source_committed_at,
        change_ref: r.change_ref,
        artifact_bytes: r.artifact_bytes,
    }));
    command(
        state,
        principal,
        &headers,
        Uuid::now_v7(),
        &body.digest,
        action,
    )
    .await
}

/// Query of `GET /api/v1/deployments`.
/// The query as the OpenAPI document describes it; [`QueryParams`] reads it, in our words.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListParams {
    /// Only intents in this state.
    #[param(value_type = Option<StatusName>)]
    status: Option<String>,
    /// Only intents whose current ring is this one.
    #[param(value_type = Option<RingName>)]
    ring: Option<String>,
    app_name: Option<String>,
    /// Only emergency changes awaiting retrospective CAB approval: `pending` (all of them) or
    /// `overdue` (past their due time).
    #[param(value_type = Option<RetroApprovalName>)]
    retro_approval: Option<String>,
    /// Only the intent with this external change reference.
    change_ref: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IntentPage {
    pub items: Vec<IntentResponse>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// List deployment intents in creation order.
#[utoipa::path(get, path = "", tag = "deployments", params(ListParams, super::fresh::FreshParams),
    responses((status = 200, body = IntentPage), (status = 400), (status = 401), (status = 404, description = "no event has the `min_index` given"), (status = 503, description = "the store did not answer, or `min_index` was not reached within a second")),
    security(("bearer" = [])))]
async fn list(
    State(state): State<AppState>,
    _principal: Principal,
    q: QueryParams,
) -> Result<Response, ApiError> {
    let filter = ListFilter {
        status: q.parsed(
            "status",
            "a state (awaiting_cab, approved, deployed, completed, rejected, rolled_back)",
            Status::parse,
        )?,
        ring: q.parsed(
            "ring",
            "a ring (LAB, CANARY, PILOT, DEPARTMENT, GLOBAL)",
            Ring::parse,
        )?,
        app_name: q.text("app_name").map(str::to_string),
        retro_approval: q.parsed("retro_approval", "pending or overdue", RetroApproval::parse)?,
        change_ref: q.text("change_ref").map(str::to_string),
        ..ListFilter::default()
    };
    let limit = q.number("limit", 1..=500)?.unwrap_or(50) as usize;
    let after = q
        .parsed("cursor", "a cursor from this API", |c| {
            c.parse::<i64>().ok().filter(|p| *p >= 0)
        })?
        .unwrap_or(0);
    let fresh = super::fresh::min_index(&q)?;
    super::fresh::wait_for(&state, crate::projection::intent_view::INTENTS, fresh).await?;
    let page = state.reads.list(&filter, after, limit).await?;
    Ok(Json(IntentPage {
        items: page.items.iter().map(IntentResponse::from).collect(),
        next_cursor: page.next_cursor.map(|p| p.to_string()),
    })
    .into_response())
}

/// One deployment intent as it now stands, folded from its own stream on request: always fresh
/// (`min_index` is taken, and never waited for).
#[utoipa::path(get, path = "/{id}", tag = "deployments",
    params(("id" = Uuid, Path), super::fresh::FreshParams),
    responses((status = 200, body = IntentResponse), (status = 400), (status = 401), (status = 404), (status = 503)),
    security(("bearer" = [])))]
async fn get_one(
    State(state): State<AppState>,
    _principal: Principal,
    Path(id): Path<String>,
    q: QueryParams,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    super::fresh::min_index(&q)?;
    let intent = state
        .reads
        .get(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no deployment intent {id}")))?;
    Ok(intent_response(StatusCode::OK, &intent, None))
}

/// The query as the OpenAPI document describes it; [`QueryParams`] reads it, in our words.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct EventsParams {
    /// RFC 3339 time: only events up to it, and the state as it stood then.
    as_of: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StreamEvent {
    /// Place in the global stream.
    pub position: i64,
    /// Place in this intent's stream, from 1.
    pub sequence: i64,
    pub event_type: String,
    /// The W3C trace id of the request that wrote the event, when its trace was sampled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The stored payload, envelope included.
    #[schema(value_type = Object)]
    pub event: DeploymentEvent,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IntentHistory {
    pub deployment_id: Uuid,
    pub as_of: Option<DateTime<Utc>>,
    pub events: Vec<StreamEvent>,
    /// The intent as the listed events leave it.
    pub state: Option<IntentResponse>,
}

/// One intent's stream, in order, with global positions; `as_of` replays the state at a time.
#[utoipa::path(get, path = "/{id}/events", tag = "deployments",
    params(("id" = Uuid, Path), EventsParams),
    responses((status = 200, body = IntentHistory), (status = 400), (status = 401), (status = 404), (status = 503)),
    security(("bearer" = [])))]
async fn events(
    State(state): State<AppState>,
    _principal: Principal,
    Path(id): Path<String>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let as_of = query.time("as_of")?;
    let stored = state.store.intent_events(id).await?;
    if stored.is_empty() {
        return Err(ApiError::NotFound(format!("no deployment intent {id}")));
    }
    let events: Vec<StreamEvent> = stored
        .into_iter()
        .filter(|e| as_of.is_none_or(|t| e.event.meta().occurred_at <= t))
        .map(|e| StreamEvent {
            position: e.position,
            sequence: e.sequence,
            event_type: e.event.type_name().to_string(),
            trace_id: e.trace_id,
            event: e.event,
        })
        .collect();
    let intent = IntentState::replay(events.iter().map(|e| &e.event));
    Ok(Json(IntentHistory {
        deployment_id: id,
        as_of,
        state: intent.as_ref().map(IntentResponse::from),
        events,
    })
    .into_response())
}

/// CAB approval (or retrospective approval of an emergency change).
#[utoipa::path(post, path = "/{id}/approve", tag = "deployments", request_body = ApproveRequest,
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, nullable = false, description = "apply only at this stream version: an ETag from this API, or *", pattern = "^(\\*|(W/)?\"?[0-9]{1,19}\"?)$"), ("Idempotency-Key" = Option<String>, Header, nullable = false, description = "retry safely: 1 to 255 visible ASCII characters", min_length = 1, max_length = 255, pattern = "^[\\x21-\\x7e]{1,255}$")),
    responses((status = 200, body = IntentResponse), (status = 403, description = "role, or segregation of duties"), (status = 400, description = "malformed JSON, id or header"), (status = 401), (status = 413), (status = 415), (status = 422, description = "invalid, or the Idempotency-Key was used with another request"), (status = 503, description = "the store did not answer; retry after Retry-After"),
        (status = 404), (status = 409), (status = 412)),
    security(("bearer" = [])))]
async fn approve(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: ApiJson<ApproveRequest>,
) -> Result<Response, ApiError> {
    let action = Action::Approve {
        comment: body.value.comment,
    };
    on_intent(state, principal, headers, id, body.digest, action).await
}

/// CAB rejection; terminal.
#[utoipa::path(post, path = "/{id}/reject", tag = "deployments", request_body = ReasonRequest,
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, nullable = false, description = "apply only at this stream version: an ETag from this API, or *", pattern = "^(\\*|(W/)?\"?[0-9]{1,19}\"?)$"), ("Idempotency-Key" = Option<String>, Header, nullable = false, description = "retry safely: 1 to 255 visible ASCII characters", min_length = 1, max_length = 255, pattern = "^[\\x21-\\x7e]{1,255}$")),
    responses((status = 200, body = IntentResponse), (status = 403), (status = 404), (status = 409), (status = 412), (status = 400, description = "malformed JSON, id or header"), (status = 401), (status = 413), (status = 415), (status = 422, description = "invalid, or the Idempotency-Key was used with another request"), (status = 503, description = "the store did not answer; retry after Retry-After")),
    security(("bearer" = [])))]
async fn reject(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: ApiJson<ReasonRequest>,
) -> Result<Response, ApiError> {
    let action = Action::Reject {
        reason: body.value.reason,
    };
    on_intent(state, principal, headers, id, body.digest, action).await
}

/// Report a rollout result for the current ring.
#[utoipa::path(post, path = "/{id}/deploy", tag = "deployments", request_body = DeployRequest,
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, nullable = false, description = "apply only at this stream version: an ETag from this API, or *", pattern = "^(\\*|(W/)?\"?[0-9]{1,19}\"?)$"), ("Idempotency-Key" = Option<String>, Header, nullable = false, description = "retry safely: 1 to 255 visible ASCII characters", min_length = 1, max_length = 255, pattern = "^[\\x21-\\x7e]{1,255}$")),
    responses((status = 200, body = IntentResponse), (status = 403), (status = 404), (status = 409), (status = 412), (status = 400, description = "malformed JSON, id or header"), (status = 401), (status = 413), (status = 415), (status = 422, description = "invalid, or the Idempotency-Key was used with another request"), (status = 503, description = "the store did not answer; retry after Retry-After")),
    security(("bearer" = [])))]
async fn deploy(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: ApiJson<DeployRequest>,
) -> Result<Response, ApiError> {
    let r = body.value;
    let action = Action::Deploy(RolloutInput {
        ring: r.ring,
        target_devices: r.target_devices,
        succeeded: r.succeeded,
        failed: r.failed,
        incidents: r.incidents,
    });
    on_intent(state, principal, headers, id, body.digest, action).await
}

/// Evaluate every promotion gate; promote to the next ring when all pass.
///
/// The evaluation is recorded either way. 409 carries the same gate results when a gate blocks.
#[utoipa::path(post, path = "/{id}/promote", tag = "deployments",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, nullable = false, description = "apply only at this stream version: an ETag from this API, or *", pattern = "^(\\*|(W/)?\"?[0-9]{1,19}\"?)$"), ("Idempotency-Key" = Option<String>, Header, nullable = false, description = "retry safely: 1 to 255 visible ASCII characters", min_length = 1, max_length = 255, pattern = "^[\\x21-\\x7e]{1,255}$")),
    responses((status = 200, description = "promoted", body = IntentResponse), (status = 400, description = "malformed JSON, id or header"), (status = 401), (status = 413), (status = 415), (status = 422, description = "invalid, or the Idempotency-Key was used with another request"), (status = 503, description = "the store did not answer; retry after Retry-After"),
        (status = 409, description = "a gate blocked (with `promotion`), or not allowed in this state"),
        (status = 403), (status = 404), (status = 412)),
    security(("bearer" = [])))]
async fn promote(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: ApiJson<serde_json::Map<String, Value>>,
) -> Result<Response, ApiError> {
    if !body.value.is_empty() {
        return Err(ApiError::Unprocessable(
            "promote takes no body fields".into(),
        ));
    }
    on_intent(state, principal, headers, id, body.digest, Action::Promote).await
}

/// Roll back, with a reason. A requester may roll back only its own intents.
#[utoipa::path(post, path = "/{id}/rollback", tag = "deployments", request_body = ReasonRequest,
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, nullable = false, description = "apply only at this stream version: an ETag from this API, or *", pattern = "^(\\*|(W/)?\"?[0-9]{1,19}\"?)$"), ("Idempotency-Key" = Option<String>, Header, nullable = false, description = "retry safely: 1 to 255 visible ASCII characters", min_length = 1, max_length = 255, pattern = "^[\\x21-\\x7e]{1,255}$")),
    responses((status = 200, body = IntentResponse), (status = 403), (status = 404), (status = 409), (status = 412), (status = 400, description = "malformed JSON, id or header"), (status = 401), (status = 413), (status = 415), (status = 422, description = "invalid, or the Idempotency-Key was used with another request"), (status = 503, description = "the store did not answer; retry after Retry-After")),
    security(("bearer" = [])))]
async fn rollback(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: ApiJson<ReasonRequest>,
) -> Result<Response, ApiError> {
    let action = Action::Rollback {
        reason: body.value.reason,
    };
    on_intent(state, principal, headers, id, body.digest, action).await
}
