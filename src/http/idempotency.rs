//! `Idempotency-Key`: a keyed write runs once; a repeat with the same request gets the stored
//! answer, the same key with another request gets 422.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::correlation;
use super::error::ApiError;
use super::extract::idempotency_key;
use crate::store::{Reservation, Store};

/// The largest response a replayed `Idempotency-Key` may carry.
const MAX_STORED_RESPONSE: usize = 1 << 20;

/// Runs a write once per `Idempotency-Key`: a repeat with the same request gets the stored
/// response and appends nothing; the same key with a different request gets 422. A write that
/// fails appended nothing, so its key is released for a retry.
///
/// A keyed write runs on its own task: if the client's request is dropped (the time limit, a
/// disconnect) the write still finishes and stores its answer or frees its key, so a retry with
/// the same key learns whether it committed instead of finding the key stuck in flight.
pub async fn once(
    store: &Store,
    subject: &str,
    headers: &HeaderMap,
    digest: &str,
    run: impl std::future::Future<Output = Result<Response, ApiError>> + Send + 'static,
) -> Result<Response, ApiError> {
    let Some(key) = idempotency_key(headers)? else {
        return run.await;
    };
    match store.reserve_idempotency_key(subject, &key, digest).await? {
        Reservation::Reserved => {}
        Reservation::Replay { status, body } => return replay(status, &body),
        Reservation::Mismatch => {
            return Err(ApiError::Unprocessable(
                "this Idempotency-Key was used with a different request".into(),
            ))
        }
        Reservation::InFlight => {
            return Err(ApiError::Conflict {
                detail: "a request with this Idempotency-Key is still in progress; retry later"
                    .into(),
                extra: None,
            })
        }
    }
    let store = store.clone();
    let subject = subject.to_string();
    let write = tokio::spawn(correlation::carry(async move {
        let response = match run.await {
            Ok(response) => response,
            Err(e) => {
                store.release_idempotency_key(&subject, &key).await?;
                return Err(e);
            }
        };
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_STORED_RESPONSE)
            .await
            .map_err(|e| ApiError::Internal(format!("buffering response: {e}")))?;
        let kept: serde_json::Map<String, Value> =
            [header::CONTENT_TYPE, header::ETAG, header::LOCATION]
                .iter()
                .filter_map(|h| {
                    let v = parts.headers.get(h)?.to_str().ok()?;
                    Some((h.as_str().to_string(), Value::from(v)))
                })
                .collect();
        let stored = json!({ "headers": kept, "body": String::from_utf8_lossy(&bytes) });
        store
            .complete_idempotency_key(&subject, &key, parts.status.as_u16(), &stored.to_string())
            .await?;
        Ok(Response::from_parts(parts, Body::from(bytes)))
    }));
    write
        .await
        .map_err(|e| ApiError::Internal(format!("the idempotent write task failed: {e}")))?
}

fn replay(status: u16, stored: &str) -> Result<Response, ApiError> {
    let stored: Value = serde_json::from_str(stored)
        .map_err(|e| ApiError::Internal(format!("stored idempotent response: {e}")))?;
    let status = StatusCode::from_u16(status)
        .map_err(|e| ApiError::Internal(format!("stored idempotent status: {e}")))?;
    let body = stored["body"].as_str().unwrap_or_default().to_string();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    if let Some(kept) = stored["headers"].as_object() {
        for (name, value) in kept {
            if let (Ok(name), Some(Ok(value))) = (
                header::HeaderName::from_bytes(name.as_bytes()),
                value.as_str().map(HeaderValue::from_str),
            ) {
                headers.insert(name, value);
            }
        }
    }
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(response)
}
