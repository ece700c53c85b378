//! The W3C trace context in and out: the trace id events and log lines carry, the `traceparent`
//! a connector call sends and a stored one a dispatch continues. A floor of the house: it names no
//! other module, so the store, the write side and the connectors can all use it.
//! [`crate::telemetry`] installs the subscriber that makes these spans OpenTelemetry spans.

use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace id of the span being run, when its trace is sampled (recorded, or exported, by this
/// process or its caller): what events store in their metadata and logs print beside the
/// correlation id.
pub fn trace_id() -> Option<String> {
    trace_context().map(|(trace, _)| trace)
}

/// [`trace_id`] and the W3C `traceparent` of the span being run, when its trace is sampled.
pub fn trace_context() -> Option<(String, String)> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span = span.span_context();
    (span.is_valid() && span.is_sampled()).then(|| {
        let trace = span.trace_id().to_string();
        let parent = format!(
            "00-{trace}-{}-{:02x}",
            span.span_id(),
            span.trace_flags().to_u8()
        );
        (trace, parent)
    })
}

/// The W3C trace context of the span being run, as `traceparent` (and `tracestate`) headers.
pub fn inject_trace_context(headers: &mut axum::http::HeaderMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut opentelemetry_http::HeaderInjector(headers))
    });
}

/// Makes `span` a child of the W3C trace context in `headers` (a caller's `traceparent`), if
/// any, and records its trace id in its `trace_id` field, so every log line inside it carries it.
pub fn continue_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    if parent.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed (a test's subscriber): nothing to
        // join then.
        let _ = span.set_parent(parent);
    }
    record_trace_id(span);
}

/// Makes `span` a child of a stored W3C `traceparent` (the command that queued the work), if any:
/// [`continue_trace`] from a value kept rather than a request's header.
pub fn continue_stored_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let mut headers = axum::http::HeaderMap::new();
    if let Some(value) = traceparent.and_then(|t| t.parse().ok()) {
        headers.insert("traceparent", value);
    }
    continue_trace(span, &headers);
}

/// Records a span's trace id in its `trace_id` field (which it must declare), so that every log
/// line inside it carries the id: for the roots of traces (a request, a connector dispatch).
fn record_trace_id(span: &tracing::Span) {
    if let Some(id) = span.in_scope(trace_id) {
        span.record("trace_id", id);
    }
}
