//! Evidence bundles over HTTP: a period's (`GET /api/v1/evidence?from=&to=`) and one intent's
//! (`GET /api/v1/deployments/{id}/evidence`), for auditors. The bundle is written to a temporary
//! file as the stream is read, then streamed from it: memory holds the bundle's intents, never
//! its bytes.

use std::io::Seek;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use eucora_projections::event::Role;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{parse_id, Principal, QueryParams};
use crate::evidence::{export, lookup, EvidenceError, HeadLookup, Previous, Scope};
use crate::http::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(period))
        .routes(routes!(deployment))
        .routes(routes!(head))
}

/// Query of `GET /api/v1/evidence`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PeriodParams {
    /// Start of the period, RFC 3339: from the first event stamped at or after it.
    from: chrono::DateTime<chrono::Utc>,
    /// End of the period, RFC 3339: up to the first event stamped at or after it.
    to: chrono::DateTime<chrono::Utc>,
    /// The size of a tree you kept a checkpoint of: the bundle then carries the consistency
    /// proof from it to the bundle's checkpoint (at most that checkpoint's size, else 422).
    #[param(minimum = 1)]
    previous_size: Option<u64>,
}

/// What a server without a signing key answers for evidence, naming the fix.
pub const NO_SIGNING_KEY: &str = "this server has no signing key, so it signs no checkpoints and \
     exports no evidence: make one with `eucora key generate --out FILE` and start every replica \
     with --signing-key-file FILE (EUCORA_SIGNING_KEY_FILE); see docs/evidence.md";

impl From<EvidenceError> for ApiError {
    fn from(e: EvidenceError) -> Self {
        match e {
            EvidenceError::NotFound(why) => ApiError::NotFound(why),
            EvidenceError::Invalid(why) => ApiError::Unprocessable(why),
            EvidenceError::NotYetSigned(why) => ApiError::Conflict {
                detail: why,
                extra: None,
            },
            EvidenceError::Store(e) => e.into(),
            EvidenceError::Export(why) => ApiError::Unavailable(why),
            EvidenceError::Io(e) => ApiError::Unavailable(format!("cannot write the bundle: {e}")),
        }
    }
}

/// `previous_size`: the size of a tree the auditor kept, from 1 (past the checkpoint: 422).
fn previous_size(q: &QueryParams) -> Result<Option<Previous<'static>>, ApiError> {
    Ok(q.number("previous_size", 1..=i64::MAX)?
        .map(|n| Previous::Size(n as u64)))
}

/// The evidence bundle of `scope`, as a download named `name`: what the API and the console
/// serve.
pub async fn bundle(
    state: &AppState,
    scope: Scope,
    previous: Option<Previous<'_>>,
    name: String,
) -> Result<Response, ApiError> {
    let key = state
        .signing_key
        .clone()
        .ok_or_else(|| ApiError::NotConfigured(NO_SIGNING_KEY.into()))?;
    // Evidence of a history that failed its integrity checks is not signed off.
    if let Some(failure) = state.integrity.failure() {
        return Err(ApiError::Unavailable(format!(
            "integrity check failed: {failure}"
        )));
    }
    let mut file = crate::evidence::tempfile_in_tmp()
        .map_err(|e| ApiError::Unavailable(format!("cannot write the bundle: {e}")))?;
    export(
        &state.store,
        &state.log,
        &key,
        &scope,
        previous,
        std::io::BufWriter::new(&mut file),
    )
    .await?;
    file.rewind()
        .map_err(|e| ApiError::Unavailable(format!("cannot read the bundle back: {e}")))?;
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The evidence bundle of a period (a .tar.gz; docs/evidence.md).
#[utoipa::path(get, path = "/api/v1/evidence", tag = "evidence", params(PeriodParams),
    responses(
        (status = 200, content_type = "application/gzip", body = Vec<u8>),
        (status = 400), (status = 401), (status = 403),
        (status = 404, description = "no signed event falls in the period"),
        (status = 422, description = "`from` is not before `to`, or `previous_size` is past the latest signed checkpoint"),
        (status = 503, description = "the store did not answer, or this server has no signing key (not-configured: the detail names the fix)")),
    security(("bearer" = [])))]
async fn period(
    State(state): State<AppState>,
    principal: Principal,
    q: QueryParams,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Auditor])?;
    let previous = previous_size(&q)?;
    let from = QueryParams::required("from", q.time("from")?)?;
    let to = QueryParams::required("to", q.time("to")?)?;
    if from >= to {
        return Err(ApiError::Unprocessable("from must be before to".into()));
    }
    let name = format!(
        "eucora-evidence-{}-{}.tar.gz",
        from.format("%Y%m%dT%H%M%SZ"),
        to.format("%Y%m%dT%H%M%SZ")
    );
    bundle(&state, Scope::Period { from, to }, previous, name).await
}

/// The evidence bundle of one deployment intent's whole history.
#[utoipa::path(get, path = "/api/v1/deployments/{id}/evidence", tag = "evidence",
    params(("id" = Uuid, Path),
        ("previous_size" = Option<u64>, Query, minimum = 1, description = "the size of a tree you kept a checkpoint of: the bundle then carries the consistency proof from it")),
    responses(
        (status = 200, content_type = "application/gzip", body = Vec<u8>),
        (status = 400), (status = 401), (status = 403),
        (status = 404, description = "no such intent"),
        (status = 409, description = "the intent's events are not under a signed checkpoint yet (within the checkpoint interval of its creation)"),
        (status = 422, description = "`previous_size` is past the latest signed checkpoint"),
        (status = 503, description = "the store did not answer, or this server has no signing key (not-configured: the detail names the fix)")),
    security(("bearer" = [])))]
async fn deployment(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    q: QueryParams,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Auditor])?;
    let id = parse_id(&id)?;
    let previous = previous_size(&q)?;
    bundle(
        &state,
        Scope::Deployment(id),
        previous,
        format!("eucora-evidence-{id}.tar.gz"),
    )
    .await
}

/// The intent's head under the latest signed checkpoint, with its proof in the checkpoint's
/// intent-heads index, or the neighbouring heads that prove it has none: "no such change",
/// verifiably (`eucora evidence verify` checks the document; docs/evidence.md).
#[utoipa::path(get, path = "/api/v1/evidence/heads/{id}", tag = "evidence",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = HeadLookup, description = "`head` when the intent is in the log, else `below` and `above`"),
        (status = 400), (status = 401), (status = 403),
        (status = 409, description = "no checkpoint with an intent-heads index is signed yet"),
        (status = 503, description = "the store did not answer, or this server has no signing key (not-configured: the detail names the fix)")),
    security(("bearer" = [])))]
async fn head(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<HeadLookup>, ApiError> {
    principal.require(&[Role::Auditor])?;
    let id = parse_id(&id)?;
    let key = state
        .signing_key
        .clone()
        .ok_or_else(|| ApiError::NotConfigured(NO_SIGNING_KEY.into()))?;
    Ok(axum::Json(
        lookup(&state.store, &state.log, &key, id).await?,
    ))
}
