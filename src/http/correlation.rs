//! `X-Correlation-ID`: read from the request or generated, echoed on every response, stored on
//! every event, and quoted in every problem. Here too the request's span: the root of the
//! request's trace, or the child of the caller's W3C `traceparent`.

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use uuid::Uuid;

pub static HEADER: HeaderName = HeaderName::from_static("x-correlation-id");

tokio::task_local! {
    static CURRENT: String;
}

/// The correlation id of the request being served ("" outside a request).
pub fn current() -> String {
    CURRENT.try_with(Clone::clone).unwrap_or_default()
}

/// Runs `work` (on another task, say) under the current request's correlation id and span.
pub fn carry<F: std::future::Future>(work: F) -> impl std::future::Future<Output = F::Output> {
    CURRENT.scope(
        current(),
        tracing::Instrument::instrument(work, tracing::Span::current()),
    )
}

/// A caller's id is kept when it is 1 to 128 visible ASCII characters; otherwise one is generated.
fn accept(value: Option<&HeaderValue>) -> Option<String> {
    let v = value?.to_str().ok()?;
    let ok = !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| v.to_string())
}

pub async fn middleware(request: Request, next: Next) -> Response {
    let id = accept(request.headers().get(&HEADER)).unwrap_or_else(|| Uuid::new_v4().to_string());
    let method = request.method().clone();
    // The route template, never the raw path, names the span (OpenTelemetry's HTTP conventions).
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.to_string(),
    };
    let span = tracing::info_span!(
        "request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = route.as_deref(),
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        correlation_id = %id,
        trace_id = tracing::field::Empty,
    );
    crate::trace::continue_trace(&span, request.headers());
    let mut response = CURRENT
        .scope(
            id.clone(),
            tracing::Instrument::instrument(next.run(request), span.clone()),
        )
        .await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER.clone(), value);
    }
    response
}
