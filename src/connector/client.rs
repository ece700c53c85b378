//! The HTTP client of the connector protocol: one [`Connector`] per connector type, configured
//! from a connectors file ([`load`], `eucora serve --connectors`; used by [`super::dispatch`]), with
//! the error classes, retries, circuit breaker and write limits of docs/connectors.md.
//!
//! - Retries: exponential backoff with full jitter ([`retry_wait`]: from `retry_min`, 2 s,
//!   doubling up to `retry_max`, 60 s, each wait drawn between 0 and that), waiting at least a
//!   `Retry-After` the connector sends. Only transient errors retry.
//! - Circuit breaker: failsafe's state machine, opened by `breaker_failures` (5) consecutive
//!   transient failures, half-open after `breaker_open` (60 s); this module lets exactly one
//!   trial call through while half-open, and no call at all while open.
//! - Throttling: governor's rate limiters on writes (publish, remediate), per app and per
//!   tenant (the connector), set so that no window of the configured length (sliding) ever holds
//!   more than the configured writes ([`quota`]); Intune's defaults are its published 100 writes
//!   per 20 s per app and 200 per 20 s per tenant. A call waits for its turn rather than earn a
//!   429.
//! - Credentials are read from a file or the environment when the file is loaded, sent as a
//!   bearer token, and never printed: their `Debug` is `***`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eucora_projections::event::{ConnectorType, Ring};
use failsafe::failure_policy::ConsecutiveFailures;
use serde::Deserialize;
use tracing::Instrument;
use uuid::Uuid;

use super::{assignment_id, idempotency_key, Action, Assignment, AssignmentStatus, Remediation};

/// A credential: kept in memory only, never printed.
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// One connector's table of the `--connectors` file.
#[derive(Debug, Clone)]
pub struct Settings {
    pub base_url: reqwest::Url,
    pub credential: Option<Secret>,
    /// For each call.
    pub timeout: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Calls a retrying call (`publish`, `status`) makes before it gives up on a transient
    /// error; the dispatcher calls once and retries from the outbox instead.
    pub retry_attempts: usize,
    pub breaker_failures: u32,
    pub breaker_open: Duration,
    /// Writes allowed per app in a window, when limited.
    pub writes_per_app: Option<(u32, Duration)>,
    /// Writes allowed to the connector as a whole in a window, when limited.
    pub writes_per_tenant: Option<(u32, Duration)>,
    /// How often the status of its active assignments is read and reported.
    pub poll_interval: Duration,
    /// How often what it reports is compared with what was installed (drift).
    pub reconcile_interval: Duration,
}

/// A table as written; durations like `10s`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    base_url: String,
    token_file: Option<std::path::PathBuf>,
    token_env: Option<String>,
    #[serde(default = "defaults::timeout")]
    timeout: String,
    #[serde(default = "defaults::retry_min")]
    retry_min: String,
    #[serde(default = "defaults::retry_max")]
    retry_max: String,
    #[serde(default = "defaults::retry_attempts")]
    retry_attempts: usize,
    #[serde(default = "defaults::breaker_failures")]
    breaker_failures: u32,
    #[serde(default = "defaults::breaker_open")]
    breaker_open: String,
    /// `N/DURATION` (`100/20s`) or `unlimited`; Intune's published limits by default.
    writes_per_app: Option<String>,
    writes_per_tenant: Option<String>,
    #[serde(default = "defaults::poll_interval")]
    poll_interval: String,
    #[serde(default = "defaults::reconcile_interval")]
    reconcile_interval: String,
}

mod defaults {
    pub fn timeout() -> String {
        "10s".into()
    }
    pub fn retry_min() -> String {
        "2s".into()
    }
    pub fn retry_max() -> String {
        "60s".into()
    }
    pub fn retry_attempts() -> usize {
        8
    }
    pub fn breaker_failures() -> u32 {
        5
    }
    pub fn breaker_open() -> String {
        "60s".into()
    }
    pub fn poll_interval() -> String {
        "5s".into()
    }
    pub fn reconcile_interval() -> String {
        "60s".into()
    }
}

/// Reads the `--connectors` file: one table per connector type (`[intune]`, `[jamf]`, `[sccm]`,
/// `[landscape]`, `[ansible]`). Errors name the table and the key, never a credential.
pub fn load(path: &std::path::Path) -> Result<BTreeMap<ConnectorType, Settings>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the connectors file {}: {e}", path.display()))?;
    parse(&text, &|name| std::env::var(name).ok()).map_err(|e| format!("{}: {e}", path.display()))
}

/// [`load`] of a text, with the environment given.
pub fn parse(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<ConnectorType, Settings>, String> {
    let tables: BTreeMap<String, Table> =
        toml::from_str(text).map_err(|e| format!("not a connectors file: {}", e.message()))?;
    let mut out = BTreeMap::new();
    for (name, table) in tables {
        let kind = ConnectorType::parse(&name).ok_or_else(|| {
            format!("[{name}] is not a connector type (intune, jamf, sccm, landscape, ansible)")
        })?;
        let duration = |key: &str, text: &str| {
            crate::domain::policy::duration(text)
                .and_then(|d| d.to_std().ok())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("[{name}] {key}: {text:?} is not a duration like \"10s\""))
        };
        let base_url = reqwest::Url::parse(&table.base_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                format!(
                    "[{name}] base_url: {:?} is not an http(s) URL",
                    table.base_url
                )
            })?;
        if !base_url.username().is_empty() || base_url.password().is_some() {
            return Err(format!(
                "[{name}] base_url: put credentials in token_file or token_env, not in the URL"
            ));
        }
        let credential = match (&table.token_file, &table.token_env) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "[{name}] token_file and token_env: give one, not both"
                ))
            }
            (Some(file), None) => Some(Secret(
                std::fs::read_to_string(file)
                    .map_err(|e| format!("[{name}] token_file {}: {e}", file.display()))?
                    .trim()
                    .to_string(),
            )),
            (None, Some(var)) => {
                Some(Secret(env(var).ok_or_else(|| {
                    format!("[{name}] token_env: {var} is not set")
                })?))
            }
            (None, None) => None,
        };
        if credential.as_ref().is_some_and(|c| c.0.is_empty()) {
            return Err(format!("[{name}] the credential is empty"));
        }
        let limit = |key: &str, given: &Option<String>, intune: &str| {
            let text = match (given.as_deref(), kind) {
                (Some("unlimited"), _) => return Ok(None),
                (Some(text), _) => text,
                (None, ConnectorType::Intune) => intune,
                (None, _) => return Ok(None),
            };
            text.split_once('/')
                .and_then(|(n, window)| {
                    let n: u32 = n.trim().parse().ok().filter(|n| (1..=1_000_000).contains(n))?;
                    let window = crate::domain::policy::duration(window)?.to_std().ok()?;
                    (!window.is_zero()).then_some((n, window))
                })
                .map(Some)
                .ok_or_else(|| {
                    format!("[{name}] {key}: {text:?} is not N/DURATION (like \"100/20s\") or \"unlimited\"")
                })
        };
        let settings = Settings {
            base_url,
            credential,
            timeout: duration("timeout", &table.timeout)?,
            retry_min: duration("retry_min", &table.retry_min)?,
            retry_max: duration("retry_max", &table.retry_max)?,
            retry_attempts: table.retry_attempts.clamp(1, 100),
            breaker_failures: table.breaker_failures.max(1),
            breaker_open: duration("breaker_open", &table.breaker_open)?,
            writes_per_app: limit("writes_per_app", &table.writes_per_app, "100/20s")?,
            writes_per_tenant: limit("writes_per_tenant", &table.writes_per_tenant, "200/20s")?,
            poll_interval: duration("poll_interval", &table.poll_interval)?,
            reconcile_interval: duration("reconcile_interval", &table.reconcile_interval)?,
        };
        if settings.retry_min > settings.retry_max {
            return Err(format!("[{name}] retry_min is longer than retry_max"));
        }
        out.insert(kind, settings);
    }
    Ok(out)
}

/// How a call went wrong, in the classes of docs/connectors.md.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// 429, 502, 503, 504, a timeout or no connection: worth retrying.
    #[error("transient: {detail}")]
    Transient {
        detail: String,
        retry_after: Option<Duration>,
    },
    /// 400, 404, 409, 422 and any other 4xx but 401, 403 and 429: never retried.
    #[error("permanent ({status}): {detail}")]
    Permanent { status: u16, detail: String },
    /// 401, 403: the connector's credentials or rights are wrong; never retried.
    #[error("refused by policy ({status}): {detail}")]
    Policy { status: u16, detail: String },
    /// The circuit breaker is open: no call was made.
    #[error("the circuit breaker is open: no call made")]
    BreakerOpen,
}

/// The breaker's state, as `circuit_breaker_state` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// failsafe tells its transitions here; the single half-open trial is kept here too.
#[derive(Debug, Default)]
struct Transitions {
    state: AtomicU8,
    trial: AtomicBool,
}

/// failsafe's instrument: a handle on the [`Transitions`] the connector reads.
#[derive(Debug, Clone, Default)]
struct Told(Arc<Transitions>);

impl failsafe::Instrument for Told {
    fn on_call_rejected(&self) {}
    fn on_open(&self) {
        self.0
            .state
            .store(BreakerState::Open as u8, Ordering::SeqCst);
    }
    fn on_half_open(&self) {
        self.0
            .state
            .store(BreakerState::HalfOpen as u8, Ordering::SeqCst);
    }
    fn on_closed(&self) {
        self.0
            .state
            .store(BreakerState::Closed as u8, Ordering::SeqCst);
    }
}

type Machine = failsafe::StateMachine<ConsecutiveFailures<failsafe::backoff::Constant>, Told>;

/// One connector: its settings, an HTTP client, its circuit breaker and its write limits.
pub struct Connector {
    pub connector_type: ConnectorType,
    pub settings: Settings,
    http: reqwest::Client,
    machine: Machine,
    transitions: Arc<Transitions>,
    per_app: Option<governor::DefaultKeyedRateLimiter<String>>,
    per_tenant: Option<governor::DefaultDirectRateLimiter>,
    /// The last call answered (rather than failing transiently).
    answering: AtomicBool,
    metrics: Option<Arc<crate::telemetry::ConnectorMetrics>>,
}

/// governor's quota for at most `n` calls in any `window` (sliding, not aligned): one call at a
/// time, spaced `window / (n - 1)` apart. A GCRA limiter admits at most its burst plus one call per
/// period in any stretch of time, so a burst of `n` refilling at `n` per window (what this was)
/// let a window hold nearly `2n`; a burst of 1 at `n - 1` per window holds exactly `n`, and a
/// burst of calls is spread evenly over the window.
fn quota((n, window): (u32, Duration)) -> Option<governor::Quota> {
    let spacing = window / n.saturating_sub(1).max(1);
    governor::Quota::with_period(spacing)
}

impl Connector {
    pub fn new(connector_type: ConnectorType, settings: Settings) -> Result<Connector, String> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        let transitions = Arc::new(Transitions::default());
        let machine = failsafe::Config::new()
            .failure_policy(failsafe::failure_policy::consecutive_failures(
                settings.breaker_failures,
                failsafe::backoff::constant(settings.breaker_open),
            ))
            .instrument(Told(transitions.clone()))
            .build();
        let per_app = settings
            .writes_per_app
            .and_then(quota)
            .map(governor::RateLimiter::keyed);
        let per_tenant = settings
            .writes_per_tenant
            .and_then(quota)
            .map(governor::RateLimiter::direct);
        Ok(Connector {
            connector_type,
            settings,
            http,
            machine,
            transitions,
            per_app,
            per_tenant,
            answering: AtomicBool::new(true),
            metrics: None,
        })
    }

    /// Records every call in these process metrics.
    pub fn with_metrics(mut self, metrics: Arc<crate::telemetry::ConnectorMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Healthy: its breaker is closed and its last call was answered (`connector_health`).
    pub fn healthy(&self) -> bool {
        self.breaker_state() == BreakerState::Closed && self.answering.load(Ordering::SeqCst)
    }

    pub fn breaker_state(&self) -> BreakerState {
        match self.transitions.state.load(Ordering::SeqCst) {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// Publishes one intent's assignment to one ring, retrying transient errors.
    pub async fn publish(&self, assignment: &Assignment) -> Result<AssignmentStatus, CallError> {
        self.publish_calls(assignment, self.settings.retry_attempts)
            .await
    }

    /// [`Connector::publish`] in one call: the outbox retries it later instead.
    pub async fn publish_once(
        &self,
        assignment: &Assignment,
    ) -> Result<AssignmentStatus, CallError> {
        self.publish_calls(assignment, 1).await
    }

    async fn publish_calls(
        &self,
        assignment: &Assignment,
        calls: usize,
    ) -> Result<AssignmentStatus, CallError> {
        let id = assignment_id(assignment.deployment_id, assignment.ring);
        let key = idempotency_key(assignment.deployment_id, assignment.ring, Action::Publish);
        self.with_retries(
            Some(&assignment.app_name),
            super::operation(Action::Publish),
            calls,
            || {
                self.http
                    .put(self.url(&format!("v1/assignments/{id}")))
                    .header(super::IDEMPOTENCY_KEY, &key)
                    .json(assignment)
            },
        )
        .await
        .and_then(|status| status.ok_or_else(|| gone(&id)))
    }

    /// Where an assignment stands; `None` when the connector has no such assignment.
    pub async fn status(
        &self,
        deployment_id: Uuid,
        ring: Ring,
    ) -> Result<Option<AssignmentStatus>, CallError> {
        self.status_calls(deployment_id, ring, self.settings.retry_attempts)
            .await
    }

    /// [`Connector::status`] in one call: a poll that fails is made again at the next poll.
    pub async fn status_once(
        &self,
        deployment_id: Uuid,
        ring: Ring,
    ) -> Result<Option<AssignmentStatus>, CallError> {
        self.status_calls(deployment_id, ring, 1).await
    }

    async fn status_calls(
        &self,
        deployment_id: Uuid,
        ring: Ring,
        calls: usize,
    ) -> Result<Option<AssignmentStatus>, CallError> {
        let id = assignment_id(deployment_id, ring);
        let status = self
            .with_retries(None, "status", calls, || {
                self.http.get(self.url(&format!("v1/assignments/{id}")))
            })
            .await?;
        // An answer about another assignment is no answer about this one.
        match status {
            Some(s) if s.assignment_id != id => Err(CallError::Permanent {
                status: 200,
                detail: format!(
                    "the answer is about assignment {:?}, not {id}",
                    s.assignment_id
                ),
            }),
            other => Ok(other),
        }
    }

    /// Uninstalls, rolls back or re-deploys one intent's assignment (of `app_name`) in one ring,
    /// in one call: the outbox retries it later instead.
    pub async fn remediate_once(
        &self,
        deployment_id: Uuid,
        app_name: &str,
        ring: Ring,
        action: Action,
    ) -> Result<AssignmentStatus, CallError> {
        let id = assignment_id(deployment_id, ring);
        let key = idempotency_key(deployment_id, ring, action);
        self.with_retries(Some(app_name), super::operation(action), 1, || {
            self.http
                .post(self.url(&format!("v1/assignments/{id}/remediations")))
                .header(super::IDEMPOTENCY_KEY, &key)
                .json(&Remediation { action })
        })
        .await
        .and_then(|status| status.ok_or_else(|| gone(&id)))
    }

    fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.settings.base_url.clone();
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}/{path}"));
        url
    }

    /// Whether a call may be made now: never while open, one trial while half-open.
    fn permit(&self) -> bool {
        if self.breaker_state() == BreakerState::HalfOpen
            && self.transitions.trial.load(Ordering::SeqCst)
        {
            return false;
        }
        if !self.machine.is_call_permitted() {
            return false;
        }
        self.breaker_state() != BreakerState::HalfOpen
            || !self.transitions.trial.swap(true, Ordering::SeqCst)
    }

    fn record(&self, transient: bool) {
        if transient {
            self.machine.on_error();
        } else {
            self.machine.on_success();
        }
        self.transitions.trial.store(false, Ordering::SeqCst);
    }

    /// Makes the call until it answers, gives up on a permanent or policy error, or has made
    /// `calls` calls; a 404 is `Ok(None)`. A write (for `app`) waits for its turn under the write
    /// limits before each call. Each call is counted under `operation` in the process metrics.
    async fn with_retries(
        &self,
        app: Option<&str>,
        operation: &'static str,
        calls: usize,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Option<AssignmentStatus>, CallError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(app) = app {
                if let Some(limiter) = &self.per_app {
                    limiter.until_key_ready(&app.to_string()).await;
                }
                if let Some(limiter) = &self.per_tenant {
                    limiter.until_ready().await;
                }
            }
            if !self.permit() {
                return Err(CallError::BreakerOpen);
            }
            let mut call = request();
            if let Some(secret) = &self.settings.credential {
                call = call.bearer_auth(&secret.0);
            }
            if attempt > 1 {
                if let Some(m) = &self.metrics {
                    m.record_retry(self.connector_type, operation);
                }
            }
            let span = tracing::info_span!(
                "connector.call",
                otel.name = %format_args!("{} {operation}", self.connector_type.as_str()),
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                connector_type = self.connector_type.as_str(),
                operation,
                attempt,
                outcome = tracing::field::Empty,
            );
            // The connector joins the trace: W3C trace context on every call.
            let mut headers = reqwest::header::HeaderMap::new();
            span.in_scope(|| crate::trace::inject_trace_context(&mut headers));
            call = call.headers(headers);
            let started = std::time::Instant::now();
            let outcome = classify(call.send().instrument(span.clone()).await)
                .instrument(span.clone())
                .await;
            span.record("outcome", outcome_label(&outcome));
            if outcome.is_err() {
                span.record("otel.status_code", "ERROR");
            }
            let transient = matches!(outcome, Err(CallError::Transient { .. }));
            self.record(transient);
            self.answering.store(!transient, Ordering::SeqCst);
            if let Some(m) = &self.metrics {
                m.record_call(
                    self.connector_type,
                    operation,
                    outcome_label(&outcome),
                    started.elapsed(),
                );
            }
            match outcome {
                Err(CallError::Transient { retry_after, .. }) if attempt < calls => {
                    let wait = retry_wait(&self.settings, attempt as u32, &mut rand::thread_rng());
                    tokio::time::sleep(wait.max(retry_after.unwrap_or_default())).await;
                }
                other => return other,
            }
        }
    }
}

/// The wait after the `attempts`-th call of an action failed transiently: full jitter, drawn
/// uniformly between 0 and `min(retry_max, retry_min × 2^(attempts − 1))`, afresh for every
/// action and every server, so retries of many actions do not arrive together and none waits
/// past `retry_max`. (backon's jitter, used before, added up to the whole delay again, past
/// `retry_max`, from one fixed seed without its `std` feature: every action waited the same.)
pub fn retry_wait(settings: &Settings, attempts: u32, rng: &mut impl rand::Rng) -> Duration {
    let doubled = settings
        .retry_min
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let cap = doubled.min(settings.retry_max);
    cap.mul_f64(rng.gen_range(0.0..=1.0))
}

/// `connector_requests_total`'s `outcome`.
fn outcome_label(outcome: &Result<Option<AssignmentStatus>, CallError>) -> &'static str {
    match outcome {
        Ok(Some(_)) => "ok",
        Ok(None) => "not_found",
        Err(CallError::Transient { .. }) => "transient",
        Err(CallError::Permanent { .. }) => "permanent",
        Err(CallError::Policy { .. }) => "policy",
        Err(CallError::BreakerOpen) => "breaker_open",
    }
}

fn gone(id: &str) -> CallError {
    CallError::Permanent {
        status: 404,
        detail: format!("the connector has no assignment {id}"),
    }
}

/// Sorts an answer into the classes of docs/connectors.md.
async fn classify(
    reply: Result<reqwest::Response, reqwest::Error>,
) -> Result<Option<AssignmentStatus>, CallError> {
    let reply = match reply {
        Ok(reply) => reply,
        Err(e) => {
            return Err(CallError::Transient {
                detail: if e.is_timeout() {
                    "the call timed out".into()
                } else {
                    format!("no answer: {}", without_url(&e))
                },
                retry_after: None,
            })
        }
    };
    let status = reply.status().as_u16();
    let retry_after = reply
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)));
    let body = read_capped(reply).await;
    if (200..300).contains(&status) {
        let body = body.map_err(|detail| CallError::Permanent { status, detail })?;
        return serde_json::from_slice::<AssignmentStatus>(&body)
            .map(Some)
            .map_err(|e| CallError::Permanent {
                status,
                detail: format!("the answer is not an assignment status: {e}"),
            });
    }
    let detail = body
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["detail"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("answered {status}"));
    Err(match status {
        404 => return Ok(None),
        429 | 502 | 503 | 504 => CallError::Transient {
            detail: format!("{status}: {detail}"),
            retry_after,
        },
        401 | 403 => CallError::Policy { status, detail },
        400..=499 => CallError::Permanent { status, detail },
        _ => CallError::Transient {
            detail: format!("{status}: {detail}"),
            retry_after,
        },
    })
}

/// The most of a connector's answer that is read: an assignment status is a few hundred bytes.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A connector's answer, read no further than [`MAX_ANSWER_BYTES`]: a longer one is refused,
/// in our words, before it is all in memory.
async fn read_capped(mut reply: reqwest::Response) -> Result<Vec<u8>, String> {
    let too_long = || format!("the answer is longer than {MAX_ANSWER_BYTES} bytes: not read");
    if reply
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_long());
    }
    let mut body = Vec::new();
    loop {
        match reply.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() > MAX_ANSWER_BYTES => {
                return Err(too_long())
            }
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => return Ok(body),
            Err(e) => return Err(format!("the answer broke off: {}", without_url(&e))),
        }
    }
}

/// reqwest's error without the URL it names (a URL may carry a query the connector logs).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "the connector");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "INTUNE_TOKEN").then(|| "s3cret-token".to_string())
    }

    #[test]
    fn a_connectors_file_is_read_with_defaults_and_its_secret_is_never_printed() {
        let file = "[intune]\nbase_url = \"https://bridge.example/intune\"\ntoken_env = \"INTUNE_TOKEN\"\n\
                    [jamf]\nbase_url = \"http://127.0.0.1:9100\"\nretry_max = \"30s\"\n";
        let all = parse(file, &env).unwrap();
        let intune = &all[&ConnectorType::Intune];
        assert_eq!(
            (intune.timeout, intune.retry_min, intune.retry_max),
            (
                Duration::from_secs(10),
                Duration::from_secs(2),
                Duration::from_secs(60)
            )
        );
        assert_eq!(
            (intune.breaker_failures, intune.breaker_open),
            (5, Duration::from_secs(60))
        );
        // Intune's published write limits by default; none elsewhere unless written.
        assert_eq!(
            (intune.writes_per_app, intune.writes_per_tenant),
            (
                Some((100, Duration::from_secs(20))),
                Some((200, Duration::from_secs(20)))
            )
        );
        assert_eq!(all[&ConnectorType::Jamf].writes_per_app, None);
        assert_eq!(all[&ConnectorType::Jamf].retry_max, Duration::from_secs(30));
        let limited = parse(
            "[intune]\nbase_url = \"http://x\"\nwrites_per_app = \"unlimited\"\n\
             [ansible]\nbase_url = \"http://x\"\nwrites_per_tenant = \"10/1m\"\n",
            &env,
        )
        .unwrap();
        assert_eq!(limited[&ConnectorType::Intune].writes_per_app, None);
        assert_eq!(
            limited[&ConnectorType::Ansible].writes_per_tenant,
            Some((10, Duration::from_secs(60)))
        );
        assert!(all[&ConnectorType::Jamf].credential.is_none());
        let printed = format!("{all:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("***"));
    }

    #[test]
    fn a_bad_connectors_file_is_refused_in_our_words() {
        for (file, says) in [
            ("[intunes]\nbase_url = \"http://x\"\n", "not a connector type"),
            ("[sccm]\nbase_url = \"ftp://x\"\n", "is not an http(s) URL"),
            ("[sccm]\nbase_url = \"http://u:p@x\"\n", "not in the URL"),
            ("[sccm]\nbase_url = \"http://x\"\nretries = 3\n", "unknown field"),
            ("[sccm]\nbase_url = \"http://x\"\ntimeout = \"soon\"\n", "timeout"),
            ("[sccm]\nbase_url = \"http://x\"\ntoken_env = \"NOPE\"\n", "NOPE is not set"),
            (
                "[sccm]\nbase_url = \"http://x\"\ntoken_env = \"INTUNE_TOKEN\"\ntoken_file = \"/x\"\n",
                "not both",
            ),
            ("[sccm]\nbase_url = \"http://x\"\nretry_min = \"2m\"\n", "retry_min is longer"),
            ("[sccm]\n", "base_url"),
            ("[sccm]\nbase_url = \"http://x\"\nwrites_per_app = \"100\"\n", "N/DURATION"),
            ("[sccm]\nbase_url = \"http://x\"\nwrites_per_app = \"0/20s\"\n", "N/DURATION"),
        ] {
            let refused = parse(file, &env).unwrap_err();
            assert!(refused.contains(says), "{file:?}: {refused}");
            assert!(!refused.contains("s3cret"), "{refused}");
        }
    }

    /// Serves `body` on an ephemeral port: whole (with its length) or in 1 MiB chunks.
    async fn answering(status: u16, body: Vec<u8>, chunked: bool) -> String {
        use axum::body::Body;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(move || {
            let body = body.clone();
            async move {
                let body = if chunked {
                    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                        body.chunks(1 << 20).map(|c| Ok(c.to_vec())).collect();
                    Body::from_stream(futures_util::stream::iter(chunks))
                } else {
                    Body::from(body)
                };
                (axum::http::StatusCode::from_u16(status).unwrap(), body)
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    #[tokio::test]
    async fn an_answer_past_the_cap_is_refused_unread() {
        let status = br#"{"assignment_id":"a","state":"active","targeted":5,"installed":5,"failed":0,"pending":0,"incidents":0}"#.to_vec();
        let url = answering(200, status, false).await;
        let read = classify(reqwest::get(&url).await).await.unwrap().unwrap();
        assert_eq!(read.installed, 5);
        // 20 MB, with its length announced and without.
        let mut huge = br#"{"assignment_id":"a","state":"active","targeted":5,"installed":5,"failed":0,"pending":0,"incidents":0,"x":""#.to_vec();
        huge.extend(std::iter::repeat_n(b'x', 20 << 20));
        huge.extend(br#""}"#);
        for chunked in [false, true] {
            let url = answering(200, huge.clone(), chunked).await;
            let refused = classify(reqwest::get(&url).await).await;
            assert!(
                matches!(&refused, Err(CallError::Permanent { detail, .. })
                    if detail.contains("longer than 65536 bytes")),
                "chunked {chunked}: {refused:?}"
            );
        }
        // A refusal's long body is not read either: the status alone is reported.
        let url = answering(503, huge, true).await;
        let refused = classify(reqwest::get(&url).await).await;
        assert!(
            matches!(&refused, Err(CallError::Transient { detail, .. }) if detail == "503: answered 503"),
            "{refused:?}"
        );
    }

    #[test]
    fn retry_waits_are_jittered_per_draw_and_never_past_retry_max() {
        let file = "[jamf]\nbase_url = \"http://x\"\nretry_min = \"2s\"\nretry_max = \"60s\"\n";
        let settings = parse(file, &|_| None)
            .unwrap()
            .remove(&ConnectorType::Jamf)
            .unwrap();
        let mut rng = rand::thread_rng();
        for attempts in 1..=12u32 {
            let cap =
                (Duration::from_secs(2) * 2u32.pow(attempts - 1)).min(Duration::from_secs(60));
            let waits: Vec<Duration> = (0..200)
                .map(|_| retry_wait(&settings, attempts, &mut rng))
                .collect();
            assert!(
                waits.iter().all(|w| *w <= cap),
                "attempt {attempts}: {waits:?}"
            );
            // Spread over the range, not one value for everyone.
            let (low, high) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
            assert!(
                *high - *low > cap / 2,
                "attempt {attempts}: {low:?}..{high:?}"
            );
        }
    }

    /// How many of `times` fall in the busiest `window` starting at any of them.
    fn busiest(times: &[std::time::Instant], window: Duration) -> usize {
        times
            .iter()
            .map(|start| {
                times
                    .iter()
                    .filter(|t| **t >= *start && **t - *start < window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_window_ever_holds_more_writes_than_the_limits() {
        use std::sync::Mutex;
        let seen: Arc<Mutex<Vec<(std::time::Instant, String)>>> = Arc::default();
        let record = seen.clone();
        let app = axum::Router::new().fallback(move |body: String| {
            let record = record.clone();
            async move {
                let app = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["app_name"].as_str().map(str::to_string))
                    .unwrap_or_default();
                record.lock().unwrap().push((std::time::Instant::now(), app));
                (
                    axum::http::StatusCode::CREATED,
                    r#"{"assignment_id":"a","state":"active","targeted":1,"installed":0,"failed":0,"pending":1,"incidents":0}"#,
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let file = format!(
            "[sccm]\nbase_url = \"{url}\"\nwrites_per_app = \"5/1s\"\nwrites_per_tenant = \"8/1s\"\n"
        );
        let settings = parse(&file, &|_| None)
            .unwrap()
            .remove(&ConnectorType::Sccm)
            .unwrap();
        let connector = Arc::new(Connector::new(ConnectorType::Sccm, settings).unwrap());
        // A burst: 12 writes for each of two apps at once.
        let calls = (0..24).map(|n| {
            let connector = connector.clone();
            tokio::spawn(async move {
                let assignment = Assignment {
                    deployment_id: uuid::Uuid::new_v4(),
                    app_name: if n % 2 == 0 { "a" } else { "b" }.into(),
                    version: "1".into(),
                    ring: Ring::Lab,
                    artifact_sha256: None,
                };
                connector.publish_once(&assignment).await.unwrap();
            })
        });
        for call in calls.collect::<Vec<_>>() {
            call.await.unwrap();
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 24);
        let all: Vec<_> = seen.iter().map(|(t, _)| *t).collect();
        assert!(
            busiest(&all, Duration::from_secs(1)) <= 8,
            "the tenant's limit"
        );
        for app in ["a", "b"] {
            let one: Vec<_> = seen
                .iter()
                .filter(|(_, a)| a == app)
                .map(|(t, _)| *t)
                .collect();
            assert!(
                busiest(&one, Duration::from_secs(1)) <= 5,
                "app {app}'s limit"
            );
        }
    }

    #[tokio::test]
    async fn a_status_about_another_assignment_is_refused() {
        let body = br#"{"assignment_id":"someone-else","state":"active","targeted":5,"installed":5,"failed":0,"pending":0,"incidents":0}"#;
        let url = answering(200, body.to_vec(), false).await;
        let file = format!("[jamf]\nbase_url = \"{url}\"\n");
        let settings = parse(&file, &|_| None)
            .unwrap()
            .remove(&ConnectorType::Jamf)
            .unwrap();
        let connector = Connector::new(ConnectorType::Jamf, settings).unwrap();
        let refused = connector.status_once(uuid::Uuid::new_v4(), Ring::Lab).await;
        assert!(
            matches!(&refused, Err(CallError::Permanent { detail, .. }) if detail.contains("\"someone-else\", not")),
            "{refused:?}"
        );
    }
}
