//! All HTTP: the router, its middleware (correlation id, body limit, timeout), health probes,
//! and the OpenAPI document generated from the handlers' own annotations.

pub mod connectors;
pub mod contract;
pub mod correlation;
pub mod deployments;
pub mod error;
pub mod events;
pub mod evidence;
pub mod extract;
pub mod fresh;
pub mod idempotency;
pub mod log;
pub mod ops;
pub mod policies;
pub mod principals;
pub mod refusals;
pub mod schema;
pub mod serve;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use error::ApiError;

use crate::principals::Principals;
use crate::projection::metrics::MetricsView;
use crate::projection::RunnerStatus;
use crate::read::IntentReader;
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::write::Commands;
use std::sync::Arc;

#[derive(OpenApi)]
#[openapi(
    info(title = "EUCORA control plane", description = "Event-sourced deployment intents: \
        create, CAB approval, rollout reports, gated ring promotion and rollback."),
    modifiers(&BearerAuth),
    // Named only by a query parameter, so not found through any body.
    components(schemas(schema::RetroApprovalName)),
    tags(
        (name = "deployments", description = "Deployment intents and their streams"),
        (name = "events", description = "The global event stream, for audit"),
        (name = "operations", description = "Health probes, metrics and the runbook: no token"),
        (name = "log", description = "The Merkle log: signed checkpoints and proofs, for auditors"),
        (name = "evidence", description = "Compliance evidence bundles, for auditors"),
        (name = "principals", description = "The access review: principals listed and revoked, by admins"),
        (name = "policies", description = "The policies in force, as recorded at each server's start, for auditors"),
        (name = "connectors", description = "Results pushed by connectors, with their own tokens")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub commands: Arc<Commands>,
    pub reads: Arc<dyn IntentReader>,
    pub principals: Arc<Principals>,
    /// The domain metrics, served once the runner caught up.
    pub metrics: MetricsView,
    /// The Merkle log's tree, for checkpoints and proofs.
    pub log: crate::projection::log::LogView,
    /// What the integrity checks found (readiness).
    pub integrity: Arc<crate::checkpoints::IntegrityStatus>,
    /// The log's signing key, when checkpoints are signed (evidence bundles are signed with it).
    pub signing_key: Option<Arc<crate::checkpoints::SigningKey>>,
    /// The projection runner's progress (readiness).
    pub runner: Arc<RunnerStatus>,
    pub telemetry: Arc<Telemetry>,
    /// This server process, as the holder of `Idempotency-Key` leases.
    pub instance: Arc<str>,
    /// How the web console keeps its sessions.
    pub console: Arc<ConsoleSettings>,
    /// The connectors' health, when any is configured.
    pub dispatch: Option<Arc<dyn crate::telemetry::DispatchGauges>>,
    /// Holds commands that may queue a connector action while the dispatcher is behind.
    pub admission: Option<Arc<crate::connector::admission::Admission>>,
}

impl AppState {
    /// Waits before a command that may queue a connector action while the dispatcher is behind
    /// (docs/connectors.md, "Admission"), and counts the hold: from the API and the console alike.
    pub async fn admit(&self, action: &crate::domain::Action) {
        if let (Some(admission), true) = (&self.admission, action.may_queue_connector_action()) {
            let held = admission.admit().await;
            if !held.is_zero() {
                self.telemetry.record_held(held);
            }
        }
    }
}

/// How the web console keeps its sessions.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// A session unused this long is ended.
    pub session_idle: chrono::Duration,
    /// Session cookies are `Secure` (the public URL is https).
    pub secure_cookie: bool,
}

/// Limits a request may not exceed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub body_bytes: usize,
    pub request_timeout: Duration,
}

/// The whole API, with its OpenAPI document, and `pages` (the web console), under the same
/// limits and middleware.
pub fn router(state: AppState, limits: Limits, pages: Router<AppState>) -> Router {
    let (api, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1/deployments", deployments::router())
        .nest("/api/v1/events", events::router())
        .nest("/api/v1/principals", principals::router())
        .nest("/api/v1/policies", policies::router())
        .nest("/api/v1/connectors", connectors::router())
        .merge(ops::router())
        .merge(log::router())
        .merge(evidence::router())
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    contract::complete_responses(&mut doc);
    let queries = Arc::new(contract::QueryContract::of(&mut doc));
    let doc = doc.to_json().unwrap_or_else(|_| "{}".into());
    let timeout = limits.request_timeout;
    api.route(
        "/api/v1/openapi.json",
        get(move || async move { ([("content-type", "application/json")], doc) }),
    )
    .route_layer(middleware::from_fn_with_state(
        queries,
        contract::check_query,
    ))
    .merge(pages)
    .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
    .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
    .layer(DefaultBodyLimit::max(limits.body_bytes))
    .layer(middleware::from_fn(move |req: Request, next: Next| {
        time_limit(timeout, req, next)
    }))
    // Outside the time limit, so that a request answered 503 for running too long is counted.
    .layer(middleware::from_fn_with_state(
        state.clone(),
        record_request,
    ))
    .layer(middleware::from_fn(bound_headers))
    .layer(middleware::from_fn(correlation::middleware))
    .with_state(state)
}

/// The longest request header value accepted, and all header names and values together.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
pub const MAX_HEADERS_BYTES: usize = 32 * 1024;

/// Answers 431 to a request whose headers exceed the limits, before anything reads them.
async fn bound_headers(req: Request, next: Next) -> Response {
    let mut total = 0;
    for (name, value) in req.headers() {
        let size = name.as_str().len() + value.len();
        total += size;
        if value.len() > MAX_HEADER_BYTES || total > MAX_HEADERS_BYTES {
            return ApiError::HeadersTooLarge.into_response();
        }
    }
    next.run(req).await
}

/// The router the reserve connections get when every ordinary slot is taken: the health probes
/// answer, anything else gets 503, so a flood of idle connections cannot blind the orchestrator.
pub fn probes_only(router: Router) -> Router {
    router.layer(middleware::from_fn(|req: Request, next: Next| async move {
        if req.uri().path().starts_with("/health/") {
            next.run(req).await
        } else {
            ApiError::Unavailable("every connection slot is taken; retry shortly".into())
                .into_response()
        }
    }))
}

/// Records each request's duration under its route template (never the raw path).
async fn record_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let response = next.run(req).await;
    state.telemetry.record_request(
        &method,
        route.as_deref(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Answers 503 problem+json when a request runs past the limit. The command in flight either
/// committed or did not; a retry with the same `Idempotency-Key` tells which.
async fn time_limit(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(format!(
            "the request did not finish within {} ms",
            limit.as_millis()
        ))
        .into_response(),
    }
}
