//! Request extractors that answer in problem+json: the JSON body, the principal, and the headers
//! that shape a write (`If-Match`, `Idempotency-Key`).

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use eucora_projections::event::{Actor, Role};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::http::AppState;
use crate::principals::{sha256_hex, Presented};

/// A JSON body with unknown fields refused. An empty body reads as `{}`, so that bodies whose
/// fields are all optional may be left out. Keeps a digest of the request for idempotency.
/// A body that is JSON but not what the endpoint takes, said without the parser's internals: no
/// line and column (a body is one line to its sender), and an unknown name listed with the names
/// it may be ("`canary` is not one of LAB, CANARY, …").
fn in_our_words(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" at line ") {
        Some(at) => &text[..at],
        None => &text,
    };
    for (kind, what) in [
        ("unknown variant `", "one of"),
        ("unknown field `", "a field of"),
    ] {
        if let Some((got, expected)) = text
            .strip_prefix(kind)
            .and_then(|rest| rest.split_once("`, expected "))
        {
            let expected = expected
                .trim_start_matches("one of ")
                .replace(" or ", ", ")
                .replace('`', "");
            let note = if kind.contains("variant") {
                " (names are case-sensitive)"
            } else {
                ""
            };
            return format!("`{got}` is not {what} {expected}{note}");
        }
    }
    text.to_string()
}

pub struct ApiJson<T> {
    pub value: T,
    /// SHA-256 over the method, the path and the body.
    pub digest: String,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                let v = v.trim();
                v.eq_ignore_ascii_case("application/json") || v.ends_with("+json")
            });
        let prefix = format!("{} {}\n", req.method(), req.uri().path());
        let has_content_type = req.headers().contains_key(header::CONTENT_TYPE);
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::BadRequest(e.body_text())
                }
            })?;
        if !bytes.is_empty() && !is_json || bytes.is_empty() && has_content_type && !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let body: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        let value = serde_json::from_slice(body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::Unprocessable(in_our_words(&e)),
            _ => ApiError::BadRequest(format!("the body is not valid JSON: {e}")),
        })?;
        let mut hashed = prefix.into_bytes();
        hashed.extend_from_slice(body);
        Ok(ApiJson {
            value,
            digest: sha256_hex(&hashed),
        })
    }
}

/// A query string, parsed and checked in our own words: every error names the parameter and
/// what it must be, never the framework's parser. Parameters an operation does not document, or
/// one given twice, were refused before the handler runs (`contract::check_query`).
pub struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let raw = parts.uri.query().unwrap_or_default();
        Ok(QueryParams(
            form_urlencoded::parse(raw.as_bytes())
                .into_owned()
                .collect(),
        ))
    }
}

impl QueryParams {
    pub fn text(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A parameter read by `parse`, which says what it expected when it returns `None`.
    pub fn parsed<T>(
        &self,
        name: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ApiError> {
        self.text(name)
            .map(|v| {
                parse(v).ok_or_else(|| {
                    ApiError::BadRequest(format!("query parameter {name}={v:?} is not {expected}"))
                })
            })
            .transpose()
    }

    /// A parameter that must be given: 400 naming it otherwise.
    pub fn required<T>(name: &str, value: Option<T>) -> Result<T, ApiError> {
        value.ok_or_else(|| ApiError::BadRequest(format!("query parameter {name} is required")))
    }

    /// A whole number in `range`.
    pub fn number(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<Option<i64>, ApiError> {
        let expected = format!("a whole number from {} to {}", range.start(), range.end());
        self.parsed(name, &expected, |v| {
            v.parse::<i64>().ok().filter(|n| range.contains(n))
        })
    }

    /// An RFC 3339 time. A `+` in a query string means a space, so an offset sent unencoded
    /// arrives as one: the error says to send `%2B` (or `Z`).
    pub fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        let Some(v) = self.text(name) else {
            return Ok(None);
        };
        match DateTime::parse_from_rfc3339(v) {
            Ok(t) => Ok(Some(t.with_timezone(&Utc))),
            Err(_) if v.contains(' ') => Err(ApiError::BadRequest(format!(
                "query parameter {name}={v:?} is not an RFC 3339 time: a + in a query string \
                 reads as a space, so send the offset as %2B (2026-01-01T00:00:00%2B00:00) or \
                 use Z (2026-01-01T00:00:00Z)"
            ))),
            Err(_) => Err(ApiError::BadRequest(format!(
                "query parameter {name}={v:?} is not an RFC 3339 time such as 2026-01-01T00:00:00Z"
            ))),
        }
    }
}

/// The authenticated caller. Missing or unknown tokens get 401 before the handler runs.
#[derive(Debug, Clone)]
pub struct Principal(pub Actor, pub uuid::Uuid);

impl Principal {
    /// 403 unless the principal holds one of `roles`; `admin` may call every endpoint.
    pub fn require(&self, roles: &[Role]) -> Result<&Actor, ApiError> {
        if self.0.role == Role::Admin || roles.contains(&self.0.role) {
            Ok(&self.0)
        } else {
            let allowed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(ApiError::Forbidden(format!(
                "role {} may not do this (allowed: {}, admin)",
                self.0.role.as_str(),
                allowed.join(", ")
            )))
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // A command (any method but GET and HEAD) refused for its credentials is counted
        // among refused commands too; it is not recorded as an event (nobody to name).
        let command = !matches!(
            parts.method,
            axum::http::Method::GET | axum::http::Method::HEAD
        );
        let failed = |reason| {
            state.telemetry.record_auth_failure(reason);
            if command {
                state.telemetry.record_refusal("unauthenticated");
            }
        };
        let address = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let token_hash = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .map(|token| sha256_hex(token.as_bytes()));
        match state
            .principals
            .present(address, token_hash.as_deref(), Utc::now())
            .await?
        {
            Presented::Principal { id, actor } => {
                state
                    .principals
                    .admit(id)
                    .map_err(|wait| ApiError::TooManyRequests(wait, PRINCIPAL_LIMIT))?;
                Ok(Principal(actor, id))
            }
            Presented::Refused(reason) => {
                failed(reason);
                Err(ApiError::Unauthorized(reason))
            }
            Presented::Limited { wait, failure } => {
                if let Some(reason) = failure {
                    failed(reason);
                }
                Err(ApiError::TooManyRequests(wait, ADDRESS_LIMIT))
            }
        }
    }
}

/// Whose allowance a 429 spent, in its message.
pub const ADDRESS_LIMIT: &str = "this client address's failed authentications a minute";
pub const PRINCIPAL_LIMIT: &str = "this principal's requests a minute";

/// The token of an `Authorization` value in the Bearer scheme (RFC 6750 section 2.1 and RFC 9110
/// section 11.4): the scheme name in any case, one or more spaces (not tabs), then a token68.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ');
    let body = token.trim_end_matches('=');
    let token68 = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    token68.then_some(token)
}

/// The stream version named by `If-Match` (`"3"`, `W/"3"` or `3`); `*` or no header means any.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || ApiError::BadRequest("If-Match must be an ETag from this API, like \"3\"".into());
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(None);
    }
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse().map(Some).map_err(|_| bad())
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters".into())
        })?;
    Ok(Some(key.to_string()))
}

/// A path's id: a UUID, else 400 naming it.
pub fn parse_id(id: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(id).map_err(|_| ApiError::BadRequest(format!("{id:?} is not a UUID")))
}

/// A count in a request body: a whole number as JSON writes it (`10`) or as JSON Schema also
/// counts an integer (`10.0`). A fraction, a negative number or one past 2^53 (where a decimal
/// stops being exact) is refused, naming the value.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Whole;
    impl serde::de::Visitor<'_> for Whole {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("{v} is not a whole number from 0")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
            if v.fract() == 0.0 && (0.0..=EXACT).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::custom(format!("{v} is not a whole number from 0")))
            }
        }
    }
    d.deserialize_any(Whole)
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, in_our_words};
    use serde::de::DeserializeOwned;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_separated_by_spaces_only() {
        for ok in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "Bearer   abc",
            "Bearer a.b-c_d~e+f/g==",
        ] {
            assert!(bearer_token(ok).is_some(), "{ok:?}");
        }
        assert_eq!(bearer_token("bearer eucora_00ff"), Some("eucora_00ff"));
        for bad in [
            "Bearer\tabc",
            "Bearer \tabc",
            "Bearerabc",
            "Bearer ",
            "Bearer a b",
            "Bearer ===",
            "Basic abc",
            "Bearer abc\t",
        ] {
            assert_eq!(bearer_token(bad), None, "{bad:?}");
        }
    }

    fn refusal<T: DeserializeOwned + std::fmt::Debug>(body: &str) -> String {
        in_our_words(&serde_json::from_str::<T>(body).unwrap_err())
    }

    #[test]
    fn an_unknown_name_is_listed_with_the_names_it_may_be_and_no_line_or_column() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            ring: eucora_projections::event::Ring,
        }
        assert_eq!(
            refusal::<Body>(r#"{"ring": "canary"}"#),
            "`canary` is not one of LAB, CANARY, PILOT, DEPARTMENT, GLOBAL (names are case-sensitive)"
        );
        assert_eq!(
            refusal::<Body>(r#"{"rign": "LAB"}"#),
            "`rign` is not a field of ring"
        );
        let other = refusal::<Body>(r#"{"ring": 3}"#);
        assert!(!other.contains(" at line ") && !other.is_empty(), "{other}");
    }
}
