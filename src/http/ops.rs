//! What operators and their tools call without a token: the health probes, the metrics
//! endpoints Prometheus scrapes, the runbook the alerts link to, and the events' JSON Schema.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::QueryParams;
use super::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(live))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .routes(routes!(metrics_at_root))
        .routes(routes!(runbook))
        .routes(routes!(event_schemas))
}

/// The JSON Schema (2020-12) of every stored event, generated from the event types:
/// `{"deployment": …, "access": …, "governance": …}`, each a `oneOf` whose members name the
/// event type.
/// docs/events.md is rendered from the same schema.
#[utoipa::path(get, path = "/api/v1/schemas/events", tag = "operations",
    responses((status = 200, description = "`{deployment, access, governance}`: three JSON Schemas")))]
async fn event_schemas() -> impl IntoResponse {
    static SCHEMA: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    Json(
        SCHEMA
            .get_or_init(eucora_projections::schema::events_schema)
            .clone(),
    )
}

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, description = "`{\"status\": \"live\"}`")))]
async fn live() -> impl IntoResponse {
    Json(json!({ "status": "live" }))
}

/// Ready when the store answers and the projections have caught up. Stored rows that no
/// projection can read are listed (`unreadable_events`): the service is up, but its history needs
/// looking at (docs/runbook.md).
#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses(
        (status = 200, description = "`{status, backend}`, and `unreadable_events` (`[{position, reason}]`) when the store holds rows no projection can read"),
        (status = 503, description = "the store does not answer, the projections are catching up, or an integrity check failed (the stored history is not what was signed)")))]
async fn ready(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.store.ping().await?;
    if let Some(failure) = state.integrity.failure() {
        return Err(ApiError::Unavailable(format!(
            "integrity check failed: {failure}"
        )));
    }
    if !state.runner.caught_up() {
        return Err(catching_up());
    }
    let mut body = json!({ "status": "ready", "backend": state.store.backend().as_str() });
    let unreadable = state.runner.unreadable();
    if !unreadable.is_empty() {
        body["unreadable_events"] = unreadable
            .into_iter()
            .map(|(position, reason)| json!({ "position": position, "reason": reason }))
            .collect();
    }
    Ok(Json(body))
}

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The domain metrics (a projection of the event stream) and the process metrics, in the
/// Prometheus text format; 503 until the projections have caught up, so a scrape never sees a
/// half-replayed state.
#[utoipa::path(get, path = "/api/v1/metrics", tag = "operations", params(super::fresh::FreshParams),
    responses(
        (status = 200, content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 404, description = "no event has the `min_index` given"),
        (status = 503, description = "the projections are catching up with the event store, or `min_index` was not reached within a second")))]
async fn metrics(
    State(state): State<AppState>,
    q: QueryParams,
) -> Result<impl IntoResponse, ApiError> {
    let fresh = super::fresh::min_index(&q)?;
    super::fresh::wait_for(&state, crate::projection::metrics::METRICS, fresh).await?;
    let mut text = state.metrics.render().ok_or_else(catching_up)?;
    text.push_str(&state.telemetry.render());
    Ok(([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text))
}

/// The same as `/api/v1/metrics`, at the path Prometheus scrapes by default.
#[utoipa::path(get, path = "/metrics", tag = "operations", params(super::fresh::FreshParams),
    responses(
        (status = 200, content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 404, description = "no event has the `min_index` given"),
        (status = 503, description = "the projections are catching up with the event store, or `min_index` was not reached within a second")))]
async fn metrics_at_root(
    state: State<AppState>,
    q: QueryParams,
) -> Result<impl IntoResponse, ApiError> {
    metrics(state, q).await
}

fn catching_up() -> ApiError {
    ApiError::Unavailable("the projections are catching up with the event store".into())
}

/// The metrics and alerts runbook (docs/runbook.md) as a web page. Every alert's `runbook_url`
/// links a heading here; headings carry GitHub's anchors, so the same fragment works on the
/// repository's copy.
#[utoipa::path(get, path = "/docs/runbook", tag = "operations",
    responses((status = 200, content_type = "text/html; charset=utf-8", body = String)))]
async fn runbook() -> impl IntoResponse {
    static PAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let page = PAGE.get_or_init(|| {
        markdown_page(
            "EUCORA metrics and alerts runbook",
            include_str!("../../docs/runbook.md"),
        )
    });
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page.as_str(),
    )
}

/// GitHub's anchor for a heading: lower case, spaces to hyphens, other punctuation dropped.
pub fn heading_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Markdown as a whole HTML page, each heading with its [`heading_anchor`] as `id`.
fn markdown_page(title: &str, markdown: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
    let mut events = Vec::new();
    let mut heading: Option<(usize, Vec<Event>)> = None;
    for event in Parser::new_ext(markdown, Options::ENABLE_TABLES) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => heading = Some((level as usize, vec![])),
            Event::End(TagEnd::Heading(_)) => {
                if let Some((level, inner)) = heading.take() {
                    let text: String = inner
                        .iter()
                        .filter_map(|e| match e {
                            Event::Text(t) | Event::Code(t) => Some(t.as_ref()),
                            _ => None,
                        })
                        .collect();
                    let mut html = String::new();
                    pulldown_cmark::html::push_html(&mut html, inner.into_iter());
                    events.push(Event::Html(
                        format!(
                            "<h{level} id=\"{}\">{html}</h{level}>\n",
                            heading_anchor(&text)
                        )
                        .into(),
                    ));
                }
            }
            other => match &mut heading {
                Some((_, inner)) => inner.push(other),
                None => events.push(other),
            },
        }
    }
    let mut body = String::new();
    pulldown_cmark::html::push_html(&mut body, events.into_iter());
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         </head><body>\n{body}</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_get_githubs_anchors_and_the_rest_renders() {
        let page = markdown_page("t", "# Runbook\n\n### `deployment_total`\n\nSee *this*.\n");
        assert!(page.contains("<h1 id=\"runbook\">Runbook</h1>"), "{page}");
        assert!(
            page.contains("<h3 id=\"deployment_total\"><code>deployment_total</code></h3>"),
            "{page}"
        );
        assert!(page.contains("<em>this</em>"), "{page}");
        assert_eq!(
            heading_anchor("UnreadableEventsStored"),
            "unreadableeventsstored"
        );
        assert_eq!(heading_anchor("Metrics and alerts"), "metrics-and-alerts");
    }
}
