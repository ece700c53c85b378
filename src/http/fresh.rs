//! Fresh reads. Every command's answer carries its index: the global position of the last event
//! of its intent (`EUCORA-Index` and the body's `index`). A read of the intent list, the global
//! stream or the metrics given `?min_index=N` answers once the projection it is served from has
//! passed that event, waiting at most [`WAIT`], then 503 with `Retry-After`. A single intent is
//! folded from its own stream on request, so it is always fresh: it takes `min_index` and does
//! not wait.

use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::Response;
use utoipa::IntoParams;

use super::error::ApiError;
use super::extract::QueryParams;
use super::AppState;

/// The header a command's answer carries its index in.
pub const INDEX_HEADER: &str = "eucora-index";
/// The longest a fresh read waits for its projection.
pub const WAIT: Duration = Duration::from_secs(1);

/// The query as the OpenAPI document describes it; [`min_index`] reads it, in our words.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct FreshParams {
    /// Answer only once this read reflects the event at this index (a command's
    /// `EUCORA-Index`): wait for it at most one second, then 503 with `Retry-After`.
    #[param(minimum = 1)]
    min_index: Option<i64>,
}

/// The `min_index` asked for, if any.
pub fn min_index(q: &QueryParams) -> Result<Option<i64>, ApiError> {
    q.number("min_index", 1..=i64::MAX)
}

/// Waits until `projection` has passed the event at `index` (nothing to wait for without one).
pub async fn wait_for(
    state: &AppState,
    projection: &'static str,
    index: Option<i64>,
) -> Result<(), ApiError> {
    let Some(index) = index else {
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut progress = state.runner.progress();
    let mut known = false;
    loop {
        let at = state.runner.checkpoint(projection).unwrap_or_default();
        if state.store.read_past(at, index).await? {
            return Ok(());
        }
        // Asked only when the projection is not past it already, so the usual read asks nothing
        // more than whether it is.
        if !known {
            if !state.store.has_position(index).await? {
                return Err(ApiError::NotFound(format!(
                    "no event has index {index}: give the EUCORA-Index of a command's answer"
                )));
            }
            known = true;
        }
        match tokio::time::timeout_at(deadline, progress.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                return Err(ApiError::Unavailable(format!(
                    "this read has not reached index {index} within {} s (the {projection} \
                     projection is behind, or a transaction before it is still open): retry",
                    WAIT.as_secs()
                )))
            }
        }
    }
}

/// Puts a command's index on its answer's header.
pub fn set_index(response: &mut Response, index: Option<i64>) {
    if let Some(value) = index.and_then(|i| HeaderValue::from_str(&i.to_string()).ok()) {
        response.headers_mut().insert(INDEX_HEADER, value);
    }
}
