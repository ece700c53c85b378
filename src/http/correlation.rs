//! `X-Correlation-ID`: read from the request or generated, echoed on every response, stored on
//! every event, and quoted in every problem.

use axum::extract::Request;
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

/// Runs `work` (on another task, say) under the current request's correlation id.
pub fn carry<F: std::future::Future>(work: F) -> impl std::future::Future<Output = F::Output> {
    CURRENT.scope(current(), work)
}

/// A caller's id is kept when it is 1 to 128 visible ASCII characters; otherwise one is generated.
fn accept(value: Option<&HeaderValue>) -> Option<String> {
    let v = value?.to_str().ok()?;
    let ok = !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| v.to_string())
}

pub async fn middleware(request: Request, next: Next) -> Response {
    let id = accept(request.headers().get(&HEADER)).unwrap_or_else(|| Uuid::new_v4().to_string());
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        correlation_id = %id,
    );
    let mut response = CURRENT
        .scope(
            id.clone(),
            tracing::Instrument::instrument(next.run(request), span),
        )
        .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER.clone(), value);
    }
    response
}
