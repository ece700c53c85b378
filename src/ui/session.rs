//! Signing in to the console: a bearer token pasted once becomes a session cookie (`HttpOnly`,
//! `SameSite=Strict`, `Secure` when the public URL is https). The store keeps the SHA-256 of the
//! cookie and of the token; every request looks the token up exactly as the API does, so a
//! revoked, rotated or expired token ends its sessions at once on every replica, and a session
//! idle past `--session-idle` is refused and deleted. Each session's CSRF token is derived from
//! its cookie: every form carries it, and a POST without it changes nothing.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::Utc;
use eucora_projections::event::{Actor, Role};
use maud::html;
use serde::Deserialize;

use super::layout::{self, unavailable};
use crate::http::error::ApiError;
use crate::http::extract::{Principal, ADDRESS_LIMIT, PRINCIPAL_LIMIT};
use crate::http::AppState;
use crate::principals::{sha256_hex, AuthFailure, Authenticated, Presented};

/// The session cookie's name.
pub const COOKIE: &str = "eucora_session";

/// The signed-in viewer of a console page.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub principal: Principal,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    session_hash: String,
}

impl Viewer {
    pub fn role(&self) -> Role {
        self.principal.0.role
    }

    pub fn subject(&self) -> &str {
        &self.principal.0.subject
    }

    pub fn actor(&self) -> &Actor {
        &self.principal.0
    }

    /// Whether the viewer's role may do what `roles` allow (an admin may do everything).
    pub fn may(&self, roles: &[Role]) -> bool {
        self.role() == Role::Admin || roles.contains(&self.role())
    }

    /// The refusal of a form whose CSRF token is not this session's, if it is not.
    pub fn csrf_refusal(&self, given: &str) -> Option<Response> {
        (!constant_time_eq(given.as_bytes(), self.csrf.as_bytes())).then(|| {
            refused(
                "This form has expired or did not come from this console: nothing was changed. \
                 Open the page again and retry.",
            )
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The CSRF token of the session whose cookie is `cookie`.
fn csrf_of(cookie: &str) -> String {
    sha256_hex(format!("eucora-console-csrf:{cookie}").as_bytes())
}

fn refused(text: &str) -> Response {
    let mut response = layout::page(None, "", "Refused", layout::notice("error", text));
    *response.status_mut() = axum::http::StatusCode::FORBIDDEN;
    response
}

/// Where an unsigned-in viewer is sent: the sign-in page, saying why.
fn to_sign_in(why: &str) -> Response {
    Redirect::to(&format!("/ui/sign-in?why={why}")).into_response()
}

/// The cookie a request carries, if any.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(cookie) = cookie(&parts.headers) else {
            return Err(to_sign_in("signed-out"));
        };
        let session_hash = sha256_hex(cookie.as_bytes());
        let now = Utc::now();
        let Some(session) = state
            .store
            .session(&session_hash)
            .await
            .map_err(unavailable)?
        else {
            return Err(to_sign_in("expired"));
        };
        let idle = state.console.session_idle;
        if now - session.last_seen_at > idle {
            let _ = state
                .store
                .end_sessions(Some(&session_hash), now - idle)
                .await;
            return Err(to_sign_in("idle"));
        }
        let found = state
            .principals
            .authenticate(&session.token_hash, now)
            .await
            .map_err(unavailable)?;
        // The session is kept (until it is cleared as idle): every request it makes, a page's
        // and a refresh's racing it alike, is told the token no longer works, not that no
        // session was found. Without a working token it opens nothing.
        let Authenticated::Principal { id, actor } = found else {
            return Err(to_sign_in("revoked"));
        };
        if let Err(wait) = state.principals.admit(id) {
            return Err(ApiError::TooManyRequests(wait, PRINCIPAL_LIMIT).into_response());
        }
        // Touched at most every 15 s (or a quarter of the idle timeout): a page view is a read,
        // not a write, most of the time.
        if now - session.last_seen_at > (idle / 4).min(chrono::Duration::seconds(15)) {
            state
                .store
                .touch_session(&session_hash, now)
                .await
                .map_err(unavailable)?;
        }
        Ok(Viewer {
            principal: Principal(actor, id),
            csrf: csrf_of(&cookie),
            session_hash,
        })
    }
}

#[derive(Deserialize)]
pub struct SignInQuery {
    why: Option<String>,
}

/// The sign-in page.
pub async fn sign_in_page(axum::extract::Query(q): axum::extract::Query<SignInQuery>) -> Response {
    let why = match q.why.as_deref() {
        Some("signed-out") | None => None,
        Some("expired") => Some("Your session has ended. Sign in again."),
        Some("idle") => Some("Your session was idle too long. Sign in again."),
        Some("revoked") => Some(
            "Your token no longer works (revoked, rotated or expired). Sign in with a new one.",
        ),
        Some("bye") => Some("Signed out."),
        Some(_) => None,
    };
    sign_in_form(why, "info")
}

fn sign_in_form(message: Option<&str>, kind: &str) -> Response {
    layout::page(
        None,
        "",
        "Sign in",
        html! {
            @if let Some(message) = message { (layout::notice(kind, message)) }
            form.signin method="post" action="/ui/sign-in" {
                p {
                    label for="token" { "Bearer token" }
                    input id="token" name="token" type="password" autocomplete="off" required
                        aria-describedby="token-help";
                }
                p id="token-help" {
                    "Paste the token an administrator gave you (" code { "eucora token create" } "). "
                    "It is checked once and kept only as a hash; the console then uses a session."
                }
                button type="submit" { "Sign in" }
            }
        },
    )
}

#[derive(Deserialize)]
pub struct SignInForm {
    token: String,
}

/// Checks the token as the API does and, when it works, starts a session.
pub async fn sign_in(
    State(state): State<AppState>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Form(form): Form<SignInForm>,
) -> Response {
    let token_hash = sha256_hex(form.token.trim().as_bytes());
    let now = Utc::now();
    let address = connect.map(|c| c.0 .0.ip());
    let presented = match state
        .principals
        .present(address, Some(&token_hash), now)
        .await
    {
        Ok(presented) => presented,
        Err(e) => return unavailable(e),
    };
    let reason = match presented {
        Presented::Principal { .. } => None,
        Presented::Refused(reason) => Some(reason),
        Presented::Limited { wait, failure } => {
            if let Some(reason) = failure {
                state.telemetry.record_auth_failure(reason);
            }
            return ApiError::TooManyRequests(wait, ADDRESS_LIMIT).into_response();
        }
    };
    if let Some(reason) = reason {
        state.telemetry.record_auth_failure(reason);
        let text = match reason {
            AuthFailure::Expired => "That token has expired.",
            AuthFailure::Revoked => "That token has been revoked.",
            _ => "That is not a token this server knows.",
        };
        let mut response = sign_in_form(Some(text), "error");
        *response.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
        return response;
    }
    let cookie = crate::principals::random_secret();
    if let Err(e) = state
        .store
        .create_session(&sha256_hex(cookie.as_bytes()), &token_hash, now)
        .await
    {
        return unavailable(e);
    }
    // Sessions nobody came back to are deleted as others sign in (indexed by last use).
    let _ = state
        .store
        .end_sessions(None, now - state.console.session_idle)
        .await;
    let secure = if state.console.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let set = format!("{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict{secure}");
    let mut response = Redirect::to("/ui/overview").into_response();
    if let Ok(value) = HeaderValue::from_str(&set) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// A form that carries nothing but the session's CSRF token.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// Ends the session, and with it the cookie.
pub async fn sign_out(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(refusal) = viewer.csrf_refusal(&form.csrf) {
        return refusal;
    }
    let idle_since = Utc::now() - state.console.session_idle;
    if let Err(e) = state
        .store
        .end_sessions(Some(&viewer.session_hash), idle_since)
        .await
    {
        return unavailable(e);
    }
    let mut response = Redirect::to("/ui/sign-in?why=bye").into_response();
    let expired = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others_and_csrf_is_per_session() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; eucora_session=abc123; other=1"),
        );
        assert_eq!(cookie(&headers).as_deref(), Some("abc123"));
        assert_eq!(cookie(&HeaderMap::new()), None);
        assert_ne!(csrf_of("a"), csrf_of("b"));
        assert!(constant_time_eq(b"same", b"same"));
        assert!(!constant_time_eq(b"same", b"samf"));
        assert!(!constant_time_eq(b"same", b"sam"));
    }
}
