//! The HTTP client of the connector protocol: one [`Connector`] per connector type, configured
//! from a connectors file ([`super::settings`], `eucora serve --connectors`; used by
//! [`super::dispatch`]), with
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
//! - Credentials are read from a file or the environment when the file is loaded
//!   ([`super::settings`]), sent as a bearer token, and never printed: their `Debug` is `***`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eucora_projections::event::{ConnectorType, Ring};
use failsafe::failure_policy::ConsecutiveFailures;
use tracing::Instrument;
use uuid::Uuid;

use super::settings::MAX_IN_FLIGHT;
pub use super::settings::{load, parse, Secret, Settings};
use super::{
    assignment_id, idempotency_key, Action, Assignment, AssignmentStatus, AssignmentStatuses,
    Remediation,
};

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
    /// Every one of the connector's `max_in_flight` calls stayed in flight for a whole `timeout`:
    /// no call was made.
    #[error("all {0} of the connector's call slots stayed busy for a whole timeout: no call made")]
    Busy(usize),
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
    /// One permit per call in flight: at most `max_in_flight` at once.
    in_flight: tokio::sync::Semaphore,
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
        let settings_in_flight = settings.max_in_flight.clamp(1, MAX_IN_FLIGHT);
        Ok(Connector {
            connector_type,
            settings,
            http,
            machine,
            transitions,
            per_app,
            per_tenant,
            in_flight: tokio::sync::Semaphore::new(settings_in_flight),
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
        let status: Option<AssignmentStatus> = self
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

    /// The statuses of up to [`super::BATCH`] assignments in one call (`GET /v1/assignments?ids=…`, for
    /// a connector with `batch_status`), by assignment id: an assignment the answer leaves out is
    /// one the connector does not have. An answer naming an assignment not asked for, or the
    /// same one twice, is refused whole.
    pub async fn statuses_once(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, AssignmentStatus>, CallError> {
        let asked = ids.join(",");
        let answer: Option<AssignmentStatuses> = self
            .with_retries(None, "status", 1, || {
                self.http
                    .get(self.url("v1/assignments"))
                    .query(&[("ids", asked.as_str())])
            })
            .await?;
        let refused = |detail: String| CallError::Permanent {
            status: 200,
            detail,
        };
        let answer =
            answer.ok_or_else(|| refused("the batch status read was answered 404".into()))?;
        let mut statuses = BTreeMap::new();
        for status in answer.assignments {
            if !ids.contains(&status.assignment_id) {
                return Err(refused(format!(
                    "the batch answer names assignment {:?}, which was not asked for",
                    status.assignment_id
                )));
            }
            let id = status.assignment_id.clone();
            if statuses.insert(id.clone(), status).is_some() {
                return Err(refused(format!(
                    "the batch answer names assignment {id:?} twice"
                )));
            }
        }
        Ok(statuses)
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
    async fn with_retries<T: serde::de::DeserializeOwned>(
        &self,
        app: Option<&str>,
        operation: &'static str,
        calls: usize,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Option<T>, CallError> {
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
            // A slot among the calls in flight, held for this call only (not a retry's wait),
            // waited for no longer than a call may take.
            let slot =
                match tokio::time::timeout(self.settings.timeout, self.in_flight.acquire()).await {
                    Ok(Ok(slot)) => slot,
                    _ => return Err(CallError::Busy(self.settings.max_in_flight)),
                };
            if !self.permit() {
                return Err(CallError::BreakerOpen);
            }
            let mut call = request();
            if let Some(secret) = &self.settings.credential {
                call = call.bearer_auth(secret.expose());
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
            drop(slot);
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
fn outcome_label<T>(outcome: &Result<Option<T>, CallError>) -> &'static str {
    match outcome {
        Ok(Some(_)) => "ok",
        Ok(None) => "not_found",
        Err(CallError::Transient { .. }) => "transient",
        Err(CallError::Permanent { .. }) => "permanent",
        Err(CallError::Policy { .. }) => "policy",
        Err(CallError::BreakerOpen) => "breaker_open",
        Err(CallError::Busy(_)) => "busy",
    }
}

fn gone(id: &str) -> CallError {
    CallError::Permanent {
        status: 404,
        detail: format!("the connector has no assignment {id}"),
    }
}

/// Sorts an answer into the classes of docs/connectors.md.
async fn classify<T: serde::de::DeserializeOwned>(
    reply: Result<reqwest::Response, reqwest::Error>,
) -> Result<Option<T>, CallError> {
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
        return serde_json::from_slice::<T>(&body)
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
        let read: AssignmentStatus = classify(reqwest::get(&url).await).await.unwrap().unwrap();
        assert_eq!(read.installed, 5);
        // 20 MB, with its length announced and without.
        let mut huge = br#"{"assignment_id":"a","state":"active","targeted":5,"installed":5,"failed":0,"pending":0,"incidents":0,"x":""#.to_vec();
        huge.extend(std::iter::repeat_n(b'x', 20 << 20));
        huge.extend(br#""}"#);
        for chunked in [false, true] {
            let url = answering(200, huge.clone(), chunked).await;
            let refused = classify::<AssignmentStatus>(reqwest::get(&url).await).await;
            assert!(
                matches!(&refused, Err(CallError::Permanent { detail, .. })
                    if detail.contains("longer than 65536 bytes")),
                "chunked {chunked}: {refused:?}"
            );
        }
        // A refusal's long body is not read either: the status alone is reported.
        let url = answering(503, huge, true).await;
        let refused = classify::<AssignmentStatus>(reqwest::get(&url).await).await;
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

    /// When each write reached the server, and of which app.
    type Seen = Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>;

    /// A server that notes when each write reaches it, and of which app.
    async fn noting_writes() -> (String, Seen) {
        let seen: Seen = Arc::default();
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
        (url, seen)
    }

    /// Sends `per_app` writes for each of apps `a` and `b` at once, through a connector with
    /// `limits`; returns when the burst started and, per app, when its writes arrived.
    async fn burst(
        limits: &str,
        per_app: usize,
    ) -> (
        std::time::Instant,
        BTreeMap<String, Vec<std::time::Instant>>,
    ) {
        let (url, seen) = noting_writes().await;
        let file = format!("[sccm]\nbase_url = \"{url}\"\n{limits}");
        let settings = parse(&file, &|_| None)
            .unwrap()
            .remove(&ConnectorType::Sccm)
            .unwrap();
        let connector = Arc::new(Connector::new(ConnectorType::Sccm, settings).unwrap());
        let started = std::time::Instant::now();
        let calls: Vec<_> = (0..2 * per_app)
            .map(|n| {
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
            })
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        let mut by_app: BTreeMap<String, Vec<std::time::Instant>> = BTreeMap::new();
        for (at, app) in seen.lock().unwrap().iter() {
            by_app.entry(app.clone()).or_default().push(*at);
        }
        by_app.values_mut().for_each(|times| times.sort());
        (started, by_app)
    }

    /// `n` writes in a window are spaced `window / (n - 1)` apart, so `count` writes take at least
    /// `count - 1` spacings from the burst's start. Measured where they arrive, late delivery only
    /// lengthens it: a limiter letting more through (or a burst at once) ends too soon, whatever
    /// the machine's load.
    fn at_least(count: usize, n: u32, window: Duration) -> Duration {
        window / (n - 1) * (count as u32 - 1) * 97 / 100
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_are_spread_under_the_tenant_limit() {
        // The tenant's limit alone: 16 writes of two apps, 8 in any second.
        let (started, by_app) = burst("writes_per_tenant = \"8/1s\"\n", 8).await;
        let all: Vec<_> = by_app.values().flatten().copied().collect();
        assert_eq!(all.len(), 16);
        let last = all.iter().max().unwrap().duration_since(started);
        let least = at_least(16, 8, Duration::from_secs(1));
        assert!(
            last >= least,
            "16 writes in {last:?}: the tenant's limit allows no fewer than {least:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_app_waits_its_own_turn_under_the_per_app_limit() {
        // The per-app limit alone: 5 in any second for each app (that one app's allowance is
        // not another's is tests/api/connector_sim.rs's to show).
        let (started, by_app) = burst("writes_per_app = \"5/1s\"\n", 8).await;
        for (app, times) in &by_app {
            assert_eq!(times.len(), 8, "app {app}");
            let last = times.last().unwrap().duration_since(started);
            let least = at_least(8, 5, Duration::from_secs(1));
            assert!(
                last >= least,
                "app {app}: 8 writes in {last:?}, not before {least:?}"
            );
        }
        assert_eq!(by_app.len(), 2);
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
