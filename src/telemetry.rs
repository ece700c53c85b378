//! Logs, traces and process metrics: the one place that installs the tracing subscriber (logs to
//! stderr and, for `eucora serve`, spans to OpenTelemetry), and the one that builds the
//! OpenTelemetry meter provider and its instruments (exported with opentelemetry-prometheus).
//! Domain metrics are not here: they are a projection of the event stream
//! (`eucora_projections::metrics`), rendered by the fold, because OpenTelemetry has no
//! asynchronous histogram to expose a replayed one without re-recording it.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::{Histogram, MeterProvider};
use opentelemetry::trace::TracerProvider;
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use prometheus::{Encoder, TextEncoder};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use eucora_projections::event::ConnectorType;

use crate::projection::RunnerStatus;
use crate::store::Backend;

/// The log format on stderr (`--log-format`, `EUCORA_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The tracer provider behind the subscriber, when traces are on; flushed at exit.
#[must_use = "dropping it does not flush the spans still queued; call shutdown"]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    /// Sends the spans still queued, waiting at most 2 s: an unreachable collector does not hold
    /// the process up at exit.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(2)) {
                tracing::warn!(error = %e, "spans still queued at exit were not all sent");
            }
        }
    }
}

/// Installs the tracing subscriber. Logs go to stderr, so stdout carries only what a command
/// prints (a token, a stream). With `traces` (for `eucora serve`), spans also become
/// OpenTelemetry spans: exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, configured only by the standard `OTEL_*`
/// variables; when it is not, nothing is exported and an incoming `traceparent` is still
/// honoured, so events and logs carry the caller's trace id.
pub fn init_logging(format: LogFormat, traces: bool) -> Result<Tracing, String> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EUCORA_LOG")
        // The SDK's own lifecycle notes ("MeterProvider.Drop …") are not the operator's news.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,opentelemetry_sdk=warn"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(colour_on_stderr())
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let (otel, provider) = if traces {
        let (provider, exporting) = tracer_provider()?;
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("eucora"))
            .with_tracked_inactivity(false)
            .with_threads(false);
        (Some(layer), exporting.then_some(provider))
    } else {
        (None, None)
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .init();
    if provider.is_some() {
        tracing::info!("exporting traces over OTLP/HTTP, as the OTEL_* variables set");
    }
    Ok(Tracing { provider })
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// The tracer provider the `OTEL_*` variables describe, and whether it exports.
///
/// Exporting needs an endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` or its traces-only form) and is off
/// with `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. Spans go over HTTP/protobuf from
/// the batch processor's own thread (`OTEL_BSP_*`), so a slow or unreachable collector costs a
/// request nothing: when its queue is full, spans are dropped, never waited for. Sampling is the
/// SDK's (`OTEL_TRACES_SAMPLER`, by default parent-based always-on); the resource is the SDK's
/// (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), with `service.name` `eucora` unless named.
///
/// Without an exporter, only traces a caller sampled are sampled (parent-based always-off), so an
/// event never records a trace id that no collector holds.
fn tracer_provider() -> Result<(SdkTracerProvider, bool), String> {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    let endpoint =
        env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    if disabled || !endpoint {
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .build();
        return Ok((provider, false));
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        match std::env::var(name) {
            Ok(p) if !p.is_empty() && p != "http/protobuf" => {
                return Err(format!(
                    "{name}={p} is not supported: EUCORA exports traces over OTLP/HTTP with \
                     protobuf (http/protobuf); point OTEL_EXPORTER_OTLP_ENDPOINT at a collector's \
                     HTTP receiver (port 4318 by default)"
                ))
            }
            _ => {}
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("cannot build the OTLP trace exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = env_set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name("eucora");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            resource
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build();
    Ok((provider, true))
}

/// Colour only for a person at a terminal: never in a file or a pipe, and never when `NO_COLOR`
/// is set to anything (no-color.org).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// OpenTelemetry's recommended buckets for HTTP server durations, in seconds.
pub const HTTP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// What the connector dispatcher shows in the process metrics. Telemetry is a floor below the
/// connectors: the dispatcher implements this and hands itself to
/// [`Telemetry::observe_dispatch`], so this module never names it.
pub trait DispatchGauges: Send + Sync + 'static {
    /// Each connector's health and breaker state, read at every scrape.
    fn connectors(&self) -> Vec<ConnectorGauge>;
    /// Connector actions queued and not yet settled.
    fn queued(&self) -> i64;
    /// Age of the oldest queued action, in seconds (0 when none is queued).
    fn oldest_age_seconds(&self) -> f64;
}

/// One connector as [`DispatchGauges`] shows it.
pub struct ConnectorGauge {
    /// The `connector_type` label: `intune`, `jamf`, …
    pub connector_type: &'static str,
    /// Breaker closed and the last call answered.
    pub healthy: bool,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: i64,
}

/// The instruments of connector calls.
pub struct ConnectorMetrics {
    requests: opentelemetry::metrics::Counter<u64>,
    duration: Histogram<f64>,
    retries: opentelemetry::metrics::Counter<u64>,
}

impl ConnectorMetrics {
    /// One call: `operation` is `publish`, `status` or `remediate`; `outcome` is `ok`,
    /// `not_found`, `transient`, `permanent` or `policy`.
    pub fn record_call(
        &self,
        connector: ConnectorType,
        operation: &'static str,
        outcome: &'static str,
        took: Duration,
    ) {
        let labels = [
            KeyValue::new("connector_type", connector.as_str()),
            KeyValue::new("operation", operation),
        ];
        self.duration.record(took.as_secs_f64(), &labels);
        let [connector, operation] = labels;
        self.requests.add(
            1,
            &[connector, operation, KeyValue::new("outcome", outcome)],
        );
    }

    /// One call that repeats a call that failed transiently.
    pub fn record_retry(&self, connector: ConnectorType, operation: &'static str) {
        self.retries.add(
            1,
            &[
                KeyValue::new("connector_type", connector.as_str()),
                KeyValue::new("operation", operation),
            ],
        );
    }
}

/// The process's instruments and the registry they are exported through.
/// Why a command is refused, as `eucora_commands_refused_total` labels them.
pub const REFUSAL_REASONS: [&str; 5] = [
    "unauthenticated",
    "segregation_of_duties",
    "not_own_intent",
    "not_own_assignment",
    "missing_role",
];

pub struct Telemetry {
    registry: prometheus::Registry,
    // Kept alive: dropping the provider stops collection.
    _provider: SdkMeterProvider,
    http_duration: Histogram<f64>,
    append_duration: Histogram<f64>,
    auth_failures: opentelemetry::metrics::Counter<u64>,
    refusals: opentelemetry::metrics::Counter<u64>,
    held: opentelemetry::metrics::Counter<u64>,
    held_seconds: opentelemetry::metrics::Counter<f64>,
    backend: &'static str,
    meter: opentelemetry::metrics::Meter,
}

impl Telemetry {
    pub fn new(backend: Backend, runner: Arc<RunnerStatus>) -> Result<Telemetry, String> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .map_err(|e| format!("cannot build the Prometheus exporter: {e}"))?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter = provider.meter("eucora");
        let http_duration = meter
            .f64_histogram("http.server.request.duration")
            .with_unit("s")
            .with_description("Duration of HTTP server requests.")
            .with_boundaries(HTTP_BUCKETS.to_vec())
            .build();
        let append_duration = meter
            .f64_histogram("eucora.store.append.duration")
            .with_unit("s")
            .with_description("Duration of event appends to the store, by outcome.")
            .with_boundaries(HTTP_BUCKETS.to_vec())
            .build();
        // `eucora_commands_refused_total{reason}`: commands refused, every reason from zero.
        let refusals = meter
            .u64_counter("eucora.commands.refused")
            .with_description(
                "Commands refused: unauthenticated (401, not recorded as events), \
                 segregation_of_duties, not_own_intent, not_own_assignment or missing_role (403, each \
                 a CommandRefused event).",
            )
            .build();
        for reason in REFUSAL_REASONS {
            refusals.add(0, &[KeyValue::new("reason", reason)]);
        }
        // Exported from the first command held (docs/connectors.md, "Admission").
        let held = meter
            .u64_counter("connector.admission.held")
            .with_description("Commands held while the connector dispatcher was behind.")
            .build();
        let held_seconds = meter
            .f64_counter("connector.admission.held")
            .with_unit("s")
            .with_description("Time commands were held while the connector dispatcher was behind.")
            .build();
        let auth_failures = meter
            .u64_counter("eucora.authentication.failures")
            .with_description(
                "Requests refused for their credentials: missing, unknown, expired or revoked.",
            )
            .build();
        // Every reason from zero, so the first refusal is an increase and the series exist
        // before it.
        for reason in crate::principals::AuthFailure::ALL {
            auth_failures.add(0, &[KeyValue::new("reason", reason.as_str())]);
        }
        meter
            .i64_observable_gauge("eucora.projection.lag_events")
            .with_description("Events stored but not yet applied, per projection.")
            .with_callback({
                let runner = runner.clone();
                move |gauge| {
                    for (name, lag) in runner.lag() {
                        gauge.observe(lag, &[KeyValue::new("projection", name)]);
                    }
                }
            })
            .build();
        meter
            .f64_observable_gauge("eucora.projection.lag")
            .with_unit("s")
            .with_description(
                "How long the newest event each projection applied took from its recorded time \
                 to being applied: commit-to-visible.",
            )
            .with_callback({
                let runner = runner.clone();
                move |gauge| {
                    for (name, lag) in runner.lag_seconds() {
                        gauge.observe(lag, &[KeyValue::new("projection", name)]);
                    }
                }
            })
            .build();
        let unreadable_source = runner.clone();
        meter
            .u64_observable_gauge("eucora.stream.unreadable_events")
            .with_description(
                "Stored events no projection can read (malformed, foreign, or out of every \
                 snapshot's reach), passed over by every projection.",
            )
            .with_callback(move |gauge| {
                gauge.observe(unreadable_source.unreadable().len() as u64, &[])
            })
            .build();
        let info = [
            KeyValue::new("version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("backend", backend.as_str()),
        ];
        meter
            .i64_observable_gauge("eucora.build_info")
            .with_description("Always 1: the version and store backend of this process.")
            .with_callback(move |gauge| gauge.observe(1, &info))
            .build();
        Ok(Telemetry {
            registry,
            _provider: provider,
            http_duration,
            append_duration,
            auth_failures,
            refusals,
            held,
            held_seconds,
            backend: backend.as_str(),
            meter,
        })
    }

    /// Exports what the integrity checks found.
    pub fn observe_integrity(&self, status: Arc<crate::checkpoints::IntegrityStatus>) {
        let verified = status.clone();
        self.meter
            .u64_observable_gauge("eucora.integrity.verified_position")
            .with_description(
                "Leaf index up to which stored events were re-verified against the Merkle log.",
            )
            .with_callback(move |gauge| gauge.observe(verified.verified(), &[]))
            .build();
        let failures = status.clone();
        self.meter
            .u64_observable_counter("eucora.integrity.failures")
            .with_description(
                "Integrity checks that failed: the stored history is not what the log or a \
                 signed checkpoint says.",
            )
            .with_callback(move |counter| counter.observe(failures.failures(), &[]))
            .build();
        self.meter
            .u64_observable_gauge("eucora.checkpoint.tree_size")
            .with_description("Tree size of the latest signed checkpoint.")
            .with_callback(move |gauge| gauge.observe(status.checkpoint_size(), &[]))
            .build();
    }

    /// Exports whether this process signs checkpoints and exports evidence (it has a signing key).
    pub fn observe_signing(&self, enabled: bool) {
        self.meter
            .i64_observable_gauge("eucora.evidence.signing_enabled")
            .with_description(
                "1 when this process has a signing key (signs checkpoints, exports evidence), else 0.",
            )
            .with_callback(move |gauge| gauge.observe(i64::from(enabled), &[]))
            .build();
    }

    /// `eucora_policy_info{digest}`: 1, labelled with the digest of the policy this process
    /// runs with; replicas showing different digests run different rules.
    pub fn observe_policy(&self, digest: &str) {
        let digest = opentelemetry::KeyValue::new("digest", digest.to_string());
        self.meter
            .i64_observable_gauge("eucora.policy.info")
            .with_description(
                "1, labelled with the SHA-256 of the policy this process runs with (the policy stream holds its text).",
            )
            .with_callback(move |gauge| gauge.observe(1, std::slice::from_ref(&digest)))
            .build();
    }

    /// The instruments of connector calls (`connector_requests_total`,
    /// `connector_request_duration_seconds`, `connector_retries_total`).
    pub fn connector_metrics(&self) -> Arc<ConnectorMetrics> {
        Arc::new(ConnectorMetrics {
            requests: self
                .meter
                .u64_counter("connector.requests")
                .with_description("Calls to connectors, by operation and outcome.")
                .build(),
            duration: self
                .meter
                .f64_histogram("connector.request.duration")
                .with_unit("s")
                .with_description("Duration of calls to connectors.")
                .with_boundaries(HTTP_BUCKETS.to_vec())
                .build(),
            retries: self
                .meter
                .u64_counter("connector.retries")
                .with_description("Calls to connectors that repeat a call that failed transiently.")
                .build(),
        })
    }

    /// Exports each connector's health and breaker state, and the outbox's backlog, as the
    /// dispatcher reports them through [`DispatchGauges`].
    pub fn observe_dispatch(&self, dispatch: Arc<dyn DispatchGauges>) {
        let health = dispatch.clone();
        self.meter
            .i64_observable_gauge("connector.health")
            .with_description(
                "1 when the connector's breaker is closed and its last call was answered, else 0.",
            )
            .with_callback(move |gauge| {
                for c in health.connectors() {
                    gauge.observe(
                        i64::from(c.healthy),
                        &[KeyValue::new("connector_type", c.connector_type)],
                    );
                }
            })
            .build();
        let breakers = dispatch.clone();
        self.meter
            .i64_observable_gauge("circuit_breaker.state")
            .with_description("Each connector's circuit breaker: 0 closed, 1 open, 2 half-open.")
            .with_callback(move |gauge| {
                for c in breakers.connectors() {
                    gauge.observe(
                        c.breaker_state,
                        &[KeyValue::new("connector_type", c.connector_type)],
                    );
                }
            })
            .build();
        let backlog = dispatch.clone();
        self.meter
            .i64_observable_gauge("connector.outbox.backlog")
            .with_description("Connector actions queued and not yet settled.")
            .with_callback(move |gauge| gauge.observe(backlog.queued(), &[]))
            .build();
        self.meter
            .f64_observable_gauge("connector.outbox.oldest_age")
            .with_unit("s")
            .with_description("Age of the oldest connector action still queued (0 when none is).")
            .with_callback(move |gauge| gauge.observe(dispatch.oldest_age_seconds(), &[]))
            .build();
    }

    /// Records one HTTP request; `route` is the matched route template, never the raw path.
    pub fn record_request(&self, method: &str, route: Option<&str>, status: u16, took: Duration) {
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ];
        if let Some(route) = route {
            attributes.push(KeyValue::new("http.route", route.to_string()));
        }
        self.http_duration.record(took.as_secs_f64(), &attributes);
    }

    /// Counts one request refused for its credentials.
    pub fn record_auth_failure(&self, reason: crate::principals::AuthFailure) {
        self.auth_failures
            .add(1, &[KeyValue::new("reason", reason.as_str())]);
    }

    /// Counts a refused command (`reason` one of [`REFUSAL_REASONS`]).
    pub fn record_refusal(&self, reason: &'static str) {
        self.refusals.add(1, &[KeyValue::new("reason", reason)]);
    }

    /// Counts a command held for `held` while the dispatcher caught up.
    pub fn record_held(&self, held: Duration) {
        self.held.add(1, &[]);
        self.held_seconds.add(held.as_secs_f64(), &[]);
    }

    /// Records one append: `outcome` is `ok`, `conflict` or `error`.
    pub fn record_append(&self, outcome: &'static str, took: Duration) {
        let attributes = [
            KeyValue::new("backend", self.backend),
            KeyValue::new("outcome", outcome),
        ];
        self.append_duration.record(took.as_secs_f64(), &attributes);
    }

    /// The process metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode process metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
