//! The HTTP layer's one error type. Only this module maps errors to status codes and RFC 9457
//! problem+json; a 500 logs its detail and returns none of it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::correlation;
use crate::domain::DomainError;
use crate::principals::AuthFailure;
use crate::store::StoreError;
use crate::write::CommandError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// `Retry-After` in whole seconds, rounded up (never 0: the allowance is not back yet).
fn retry_after_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[derive(Debug)]
pub enum ApiError {
    /// 400: the request cannot be read (malformed JSON, bad UUID, bad cursor or header).
    BadRequest(String),
    /// 401: no bearer token, or one that names no principal, has expired or was revoked.
    Unauthorized(AuthFailure),
    /// 403: the principal's role may not do this, or a domain rule forbids this principal.
    Forbidden(String),
    /// 404
    NotFound(String),
    /// 405
    MethodNotAllowed,
    /// 409: not allowed in the intent's current state; `extra` adds members (gate results).
    Conflict {
        detail: String,
        extra: Option<Value>,
    },
    /// 409 of its own kind: a promotion a gate blocked (recorded, unlike a conflict); `extra`
    /// adds the gate results and the intent.
    PromotionBlocked { detail: String, extra: Value },
    /// 412: `If-Match` names an older stream version.
    PreconditionFailed(String),
    /// 413: body over the configured limit.
    PayloadTooLarge,
    /// 431: a header, or all of them together, over the limit.
    HeadersTooLarge,
    /// 415: a body that is not `application/json`.
    UnsupportedMediaType,
    /// 422: well-formed but invalid (unknown field, wrong type, out-of-range value, rule broken).
    Unprocessable(String),
    /// 429 with `Retry-After`: a rate limit is spent until then; the second field says which
    /// (`this principal's requests a minute`, for one).
    TooManyRequests(std::time::Duration, &'static str),
    /// 503 with `Retry-After`: the store did not answer, or the request ran out of time.
    Unavailable(String),
    /// 503 without `Retry-After`: what was asked needs a setting this server was started
    /// without (a signing key for evidence); the detail names the fix.
    NotConfigured(String),
    /// 500: logged with its detail, answered without it.
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            ),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Conflict { .. } => (
                StatusCode::CONFLICT,
                "conflict",
                "Conflict with the intent's state",
            ),
            PromotionBlocked { .. } => (
                StatusCode::CONFLICT,
                "promotion-blocked",
                "Promotion blocked by gates",
            ),
            PreconditionFailed(_) => (
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Stream version does not match If-Match",
            ),
            PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
            ),
            HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers-too-large",
                "Request header fields too large",
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            Unprocessable(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "The request is not valid",
            ),
            TooManyRequests(..) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service temporarily unavailable",
            ),
            NotConfigured(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not-configured",
                "Not configured on this server",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
        }
    }

    /// What went wrong, in words: the problem document's `detail`.
    pub fn detail(&self) -> String {
        use ApiError::*;
        match self {
            BadRequest(d)
            | Forbidden(d)
            | NotFound(d)
            | PreconditionFailed(d)
            | Unprocessable(d)
            | Unavailable(d)
            | NotConfigured(d) => d.clone(),
            Conflict { detail, .. } | PromotionBlocked { detail, .. } => detail.clone(),
            Unauthorized(AuthFailure::Missing) => {
                "send Authorization: Bearer <token>, from `eucora token create`".into()
            }
            Unauthorized(AuthFailure::Unknown) => "that bearer token names no principal".into(),
            Unauthorized(AuthFailure::Expired) => {
                "that bearer token has expired: ask an admin for a new one (`eucora token \
                 rotate`)"
                    .into()
            }
            Unauthorized(AuthFailure::Revoked) => "that bearer token's principal is revoked".into(),
            Unauthorized(AuthFailure::Unrecorded) => {
                "that bearer token's principal does not match its recorded access events (it was \
                 made or changed outside EUCORA): refused, and logged as an integrity failure"
                    .into()
            }
            TooManyRequests(wait, which) => format!(
                "{which} are spent; retry in {} s",
                retry_after_seconds(*wait)
            ),
            MethodNotAllowed => "this path does not accept that method".into(),
            PayloadTooLarge => "the request body exceeds the configured limit".into(),
            HeadersTooLarge => format!(
                "a request header may hold at most {} bytes, and all of them {} bytes",
                super::MAX_HEADER_BYTES,
                super::MAX_HEADERS_BYTES
            ),
            UnsupportedMediaType => "send the body as Content-Type: application/json".into(),
            Internal(_) => {
                "the error was logged; quote the correlation id when reporting it".into()
            }
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let correlation_id = correlation::current();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%correlation_id, %detail, "request failed");
        }
        let mut body = json!({
            "type": format!("urn:eucora:problem:{slug}"),
            "title": title,
            "status": status.as_u16(),
            "detail": self.detail(),
            "correlation_id": correlation_id,
        });
        if let ApiError::Conflict {
            extra: Some(Value::Object(extra)),
            ..
        }
        | ApiError::PromotionBlocked {
            extra: Value::Object(extra),
            ..
        } = &self
        {
            for (k, v) in extra {
                body[k] = v.clone();
            }
        }
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match self {
            ApiError::Unauthorized(AuthFailure::Missing) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // RFC 6750 section 3.1: a token was sent and is no good.
            ApiError::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            ApiError::TooManyRequests(wait, _) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_seconds(wait)),
                );
            }
            ApiError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let detail = e.to_string();
        match e {
            DomainError::NotFound | DomainError::NotSent { .. } => ApiError::NotFound(detail),
            DomainError::InvalidInput { .. } | DomainError::CriticalVulnerability => {
                ApiError::Unprocessable(detail)
            }
            DomainError::AlreadyExists
            | DomainError::NotAllowedInState { .. }
            | DomainError::RingMismatch { .. }
            | DomainError::RollbackRequired(_)
            | DomainError::AtTargetRing(_)
            | DomainError::AlreadyRecorded(_)
            | DomainError::StaleSequence { .. } => ApiError::Conflict {
                detail,
                extra: None,
            },
            DomainError::SegregationOfDuties
            | DomainError::NotOwnIntent
            | DomainError::NotOwnAssignment { .. } => ApiError::Forbidden(detail),
            DomainError::VersionMismatch { .. } => ApiError::PreconditionFailed(detail),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "store unavailable");
                ApiError::Unavailable("the event store is not answering; retry shortly".into())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Domain(d) => d.into(),
            CommandError::Contention => ApiError::Conflict {
                detail: e.to_string(),
                extra: None,
            },
            CommandError::Store(s) => s.into(),
            CommandError::Internal(detail) => ApiError::Internal(detail),
        }
    }
}
