//! The Merkle log over HTTP, for auditors: the latest signed checkpoint, and inclusion and
//! consistency proofs (RFC 9162 2.1.3 and 2.1.4) against any tree size the log has reached.
//! Hashes are base64 (standard alphabet), as in the checkpoint itself.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use eucora_projections::event::Role;
use eucora_projections::merkle;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{Principal, QueryParams};
use crate::http::AppState;
use crate::projection::log::{with_tiles, LogProofError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(checkpoint))
        .routes(routes!(inclusion))
        .routes(routes!(consistency))
}

fn b64(hash: &merkle::Hash) -> String {
    base64::engine::general_purpose::STANDARD.encode(hash)
}

impl From<LogProofError> for ApiError {
    fn from(e: LogProofError) -> Self {
        match e {
            // Sizes and indices each valid alone but not together (a leaf past the tree).
            LogProofError::Bounds(why) => ApiError::Unprocessable(why),
            LogProofError::Store(e) => e.into(),
            LogProofError::Inconsistent => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// The latest signed checkpoint: a C2SP tlog-checkpoint body (origin, tree size, base64 tree
/// head) signed as a C2SP signed note. Verify it with the server's verifier key.
#[utoipa::path(get, path = "/api/v1/checkpoint", tag = "log",
    responses(
        (status = 200, content_type = "text/plain; charset=utf-8", body = String),
        (status = 401), (status = 403),
        (status = 404, description = "no checkpoint has been signed yet"),
        (status = 503, description = "the store did not answer, or this server has no signing key (not-configured)")),
    security(("bearer" = [])))]
async fn checkpoint(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Auditor])?;
    if state.signing_key.is_none() {
        return Err(ApiError::NotConfigured(
            super::evidence::NO_SIGNING_KEY.into(),
        ));
    }
    let latest = state
        .store
        .latest_checkpoint()
        .await?
        .ok_or_else(|| ApiError::NotFound("no checkpoint has been signed yet".into()))?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        latest.note,
    )
        .into_response())
}

/// Query of `GET /api/v1/proofs/inclusion`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct InclusionParams {
    /// The leaf's index (from 0, in commit order).
    #[param(minimum = 0)]
    index: u64,
    /// The tree size to prove it in (a checkpoint's); at most the log's size.
    #[param(minimum = 1)]
    tree_size: u64,
}

#[derive(Serialize, ToSchema)]
pub struct InclusionProof {
    pub index: u64,
    pub tree_size: u64,
    /// The leaf hash, base64.
    pub leaf_hash: String,
    /// The global position of the leaf's event.
    pub position: i64,
    /// PATH(index, D[tree_size]) of RFC 9162 2.1.3.1, base64 hashes.
    pub hashes: Vec<String>,
}

/// The inclusion proof of one leaf in the tree of a given size.
#[utoipa::path(get, path = "/api/v1/proofs/inclusion", tag = "log", params(InclusionParams),
    responses((status = 200, body = InclusionProof), (status = 400), (status = 401), (status = 403),
        (status = 404, description = "the log has not reached `tree_size` yet"),
        (status = 422, description = "`index` is not below `tree_size`"), (status = 503)),
    security(("bearer" = [])))]
async fn inclusion(
    State(state): State<AppState>,
    principal: Principal,
    q: QueryParams,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Auditor])?;
    let tree = state.log.tree();
    let size = tree.size() as i64;
    let index = QueryParams::required("index", q.number("index", 0..=i64::MAX)?)? as u64;
    let tree_size = QueryParams::required("tree_size", q.number("tree_size", 1..=i64::MAX)?)?;
    if tree_size > size {
        return Err(ApiError::NotFound(format!(
            "no tree of {tree_size} leaves yet: the log has {size}"
        )));
    }
    let tree_size = tree_size as u64;
    let proof = with_tiles(&state.store, &tree, |r| {
        merkle::inclusion_proof(r, index, tree_size)
    })
    .await?;
    let tile = (index / crate::store::TILE) as i64;
    let (leaf, position) = state
        .store
        .log_tiles(tile, tile)
        .await?
        .into_iter()
        .next()
        .and_then(|t| {
            let at = (index % crate::store::TILE) as usize;
            Some((*t.leaves.get(at)?, *t.positions.get(at)?))
        })
        .ok_or_else(|| ApiError::Unavailable(LogProofError::Inconsistent.to_string()))?;
    Ok(Json(InclusionProof {
        index,
        tree_size,
        leaf_hash: b64(&leaf),
        position,
        hashes: proof.iter().map(b64).collect(),
    })
    .into_response())
}

/// Query of `GET /api/v1/proofs/consistency`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ConsistencyParams {
    /// The earlier tree size (a checkpoint's).
    #[param(minimum = 1)]
    from: u64,
    /// The later tree size; at most the log's size.
    #[param(minimum = 1)]
    to: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    /// PROOF(from, D[to]) of RFC 9162 2.1.4.1, base64 hashes.
    pub hashes: Vec<String>,
}

/// The consistency proof between two tree sizes: the earlier tree is a prefix of the later.
#[utoipa::path(get, path = "/api/v1/proofs/consistency", tag = "log", params(ConsistencyParams),
    responses((status = 200, body = ConsistencyProof), (status = 400), (status = 401), (status = 403),
        (status = 404, description = "the log has not reached `to` yet"),
        (status = 422, description = "`from` is above `to`"), (status = 503)),
    security(("bearer" = [])))]
async fn consistency(
    State(state): State<AppState>,
    principal: Principal,
    q: QueryParams,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Auditor])?;
    let tree = state.log.tree();
    let size = tree.size() as i64;
    let from = QueryParams::required("from", q.number("from", 1..=i64::MAX)?)?;
    let to = QueryParams::required("to", q.number("to", 1..=i64::MAX)?)?;
    if to > size {
        return Err(ApiError::NotFound(format!(
            "no tree of {to} leaves yet: the log has {size}"
        )));
    }
    let (from, to) = (from as u64, to as u64);
    let proof = with_tiles(&state.store, &tree, |r| {
        merkle::consistency_proof(r, from, to)
    })
    .await?;
    Ok(Json(ConsistencyProof {
        from,
        to,
        hashes: proof.iter().map(b64).collect(),
    })
    .into_response())
}
