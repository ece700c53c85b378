//! `Idempotency-Key`: a keyed write runs once; a repeat with the same request gets the stored
//! answer, the same key with another request gets 422.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use eucora_projections::intent::IntentState;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::idempotency_key;
use super::{correlation, AppState};
use crate::principals::sha256_hex;
use crate::store::{Lease, Reservation};

/// The largest response a replayed `Idempotency-Key` may carry.
const MAX_STORED_RESPONSE: usize = 1 << 20;

/// How long a reservation holds its key without renewal: a server that died frees its keys this
/// long after its last renewal, and a retry then takes them over.
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(5);
/// How often a holder renews the lease while its write runs.
const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A keyed write: the intent it acts on, how to run it, and how to answer with the state it leaves.
pub struct Write<R, A> {
    /// The intent the command acts on (a create's new id).
    pub intent: Uuid,
    /// Runs the command on an intent, with the key's digest for the events' metadata.
    pub run: R,
    /// The response for the intent as the command left it, and its index (the position of its
    /// last event, when it could be read).
    pub answer: A,
}

/// Runs a write once per `Idempotency-Key`: a repeat with the same request gets the stored
/// response and appends nothing; the same key with a different request gets 422. A write that
/// fails appended nothing, so its key is released for a retry.
///
/// A keyed write runs on its own task: if the client's request is dropped (the time limit, a
/// disconnect) the write still finishes and stores its answer or frees its key, so a retry with
/// the same key learns whether it committed instead of finding the key stuck in flight. While it
/// runs, its server renews the key's lease; if the server dies, the lease runs out within
/// [`LEASE`], and a retry (on any server) takes the key over: if the dead server's write
/// committed, its events carry the key's digest and the retry answers with the state they left;
/// otherwise the retry runs the write, on the same intent id.
pub async fn once<R, F, A>(
    state: &AppState,
    subject: &str,
    headers: &HeaderMap,
    digest: &str,
    write: Write<R, A>,
) -> Result<Response, ApiError>
where
    R: FnOnce(Uuid, Option<String>) -> F + Send + 'static,
    F: std::future::Future<Output = Result<IntentState, ApiError>> + Send + 'static,
    A: Fn(&IntentState, Option<i64>) -> Response + Send + Sync + 'static,
{
    let Write {
        intent,
        run,
        answer,
    } = write;
    let Some(key) = idempotency_key(headers)? else {
        let s = run(intent, None).await?;
        let index = state.commands.index_of(&s).await;
        return Ok(answer(&s, index));
    };
    let store = state.store.clone();
    let commands = state.commands.clone();
    let key_digest = sha256_hex(format!("{subject}\n{key}").as_bytes());
    let mut lease = Lease {
        holder: state.instance.to_string(),
        until: (chrono::Utc::now() + LEASE).timestamp_millis(),
    };
    let reserved = store
        .reserve_idempotency_key(subject, &key, digest, &intent.to_string(), &lease)
        .await?;
    let (intent, taken_over) = match reserved {
        Reservation::Reserved => (intent, false),
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
        Reservation::TakenOver { intent_id } => {
            let intent = intent_id
                .and_then(|id| Uuid::parse_str(&id).ok())
                .unwrap_or(intent);
            tracing::warn!(%key, %intent, "took over an Idempotency-Key whose server stopped renewing it");
            (intent, true)
        }
    };
    let subject = subject.to_string();
    let write = tokio::spawn(correlation::carry(async move {
        // A takeover first looks for what the dead holder committed; a fresh key has nothing.
        let committed_version = if taken_over {
            store
                .idempotent_write(&intent.to_string(), &key_digest)
                .await?
        } else {
            None
        };
        let committed = match committed_version {
            Some(version) => {
                let events = store.intent_events(intent).await?;
                IntentState::replay(
                    events
                        .iter()
                        .filter(|e| e.sequence <= version)
                        .map(|e| &e.event),
                )
            }
            None => None,
        };
        let state = match committed {
            Some(state) => state,
            None => {
                let running = run(intent, Some(key_digest));
                tokio::pin!(running);
                let mut ticker = tokio::time::interval(RENEW_EVERY);
                ticker.tick().await;
                let outcome = loop {
                    tokio::select! {
                        outcome = &mut running => break outcome,
                        _ = ticker.tick() => {
                            lease.until = (chrono::Utc::now() + LEASE).timestamp_millis();
                            if let Err(e) = store.renew_idempotency_key(&subject, &key, &lease).await {
                                tracing::warn!(error = %e, "cannot renew an Idempotency-Key lease");
                            }
                        }
                    }
                };
                match outcome {
                    Ok(state) => state,
                    Err(e) => {
                        store
                            .release_idempotency_key(&subject, &key, &lease.holder)
                            .await?;
                        return Err(e);
                    }
                }
            }
        };
        let index = commands.index_of(&state).await;
        let response = answer(&state, index);
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_STORED_RESPONSE)
            .await
            .map_err(|e| ApiError::Internal(format!("buffering response: {e}")))?;
        let kept: serde_json::Map<String, Value> = [
            header::CONTENT_TYPE,
            header::ETAG,
            header::LOCATION,
            header::HeaderName::from_static(super::fresh::INDEX_HEADER),
        ]
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
