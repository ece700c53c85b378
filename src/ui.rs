//! The web console: server-rendered HTML (maud) for the people who decide and audit changes,
//! at `/` and under `/ui/`. Every asset is embedded in the binary; the one script is ours, small
//! and optional (live refresh and local times): every page and form works without it. Each
//! action goes through the command path the API uses ([`crate::http::refusals::Attempt`]).

pub mod change;
pub mod desk;
pub mod layout;
pub mod pages;
pub mod session;

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::http::AppState;

/// The console's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/overview") }))
        .route("/ui", get(|| async { Redirect::to("/ui/overview") }))
        .route(
            "/ui/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/ui/sign-out", post(session::sign_out))
        .route("/ui/overview", get(pages::overview))
        .route("/ui/changes", get(pages::changes))
        .route("/ui/cab", get(pages::cab))
        .route("/ui/emergency", get(pages::emergency))
        .route("/ui/changes/{id}", get(change::show))
        .route("/ui/changes/{id}/evidence", get(desk::change_evidence))
        .route("/ui/changes/{id}/{action}", post(change::act))
        .route("/ui/audit", get(desk::audit))
        .route("/ui/evidence", get(desk::period_evidence))
        .route("/ui/access", get(desk::access))
        .route("/ui/access/{id}/revoke", post(desk::revoke))
        .route("/ui/access/{id}/rotate", post(desk::rotate))
        .route("/ui/live", get(pages::live))
        .route("/ui/assets/console.css", get(css))
        .route("/ui/assets/console.js", get(js))
        // Pages are repetitive HTML: gzip (tower-http's) keeps every one well under 100 KB on
        // the wire.
        .layer(tower_http::compression::CompressionLayer::new())
}

const CSS: &str = include_str!("ui/console.css");
const JS: &str = include_str!("ui/console.js");

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
