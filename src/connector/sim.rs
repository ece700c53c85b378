//! `eucora connector-sim`: a connector that speaks the protocol (docs/connectors.md) over a
//! simulated device population, for the demo, docker compose, the tests and the benchmarks.
//!
//! - Each ring has a device population; a published assignment reaches its devices evenly over
//!   the convergence time, and a configured share of them fail.
//! - Faults, from flags or at run time (`PUT /sim/faults`): latency, a share of calls answered 503,
//!   a share answered 429 with `Retry-After`, and outage windows in which every call is a 503.
//! - Drift (`POST /sim/drift`): an assignment disappears, or loses installed devices.
//! - It counts, per idempotency key, the calls that carried it and the side effects they caused,
//!   and per assignment and action the side effects (`GET /sim/side-effects`): a connector that
//!   honours the key shows one effect however often a call is repeated.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    Action, Assignment, AssignmentStatus, AssignmentStatuses, Remediation, IDEMPOTENCY_KEY,
};

/// How the simulator behaves; `eucora connector-sim`'s flags.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Devices per ring, in ring order.
    pub devices: [u64; 5],
    /// How long an assignment takes to reach all its devices.
    pub converge: Duration,
    /// Share of devices whose install fails.
    pub device_failure_rate: f64,
    pub faults: Faults,
    /// Outage windows, from start: (after, for).
    pub outages: Vec<(Duration, Duration)>,
    /// Seed of the fault draws, so a run can be repeated.
    pub seed: u64,
    /// The bearer token protocol calls must carry (401 without it, 403 with another), if any.
    pub token: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            devices: [10, 50, 200, 1000, 5000],
            converge: Duration::from_secs(5),
            device_failure_rate: 0.0,
            faults: Faults::default(),
            outages: Vec::new(),
            seed: 1,
            token: None,
        }
    }
}

/// Faults on protocol calls (`/v1/…`); `/sim/…` is never faulted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added before every answer.
    pub latency_ms: u64,
    /// Share of calls answered 503.
    pub failure_rate: f64,
    /// Share of calls answered 429 with `Retry-After`.
    pub throttle_rate: f64,
    /// The `Retry-After` of a 429, in seconds.
    pub retry_after_seconds: u64,
    /// From now, every call is a 503 for this long (`PUT /sim/faults` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outage_seconds: Option<f64>,
    /// Latency added to every call about these assignments, in milliseconds, by assignment id.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub slow: BTreeMap<String, u64>,
}

impl Faults {
    fn check(&self) -> Result<(), String> {
        for (name, rate) in [
            ("failure_rate", self.failure_rate),
            ("throttle_rate", self.throttle_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, not {rate}"));
            }
        }
        if self
            .outage_seconds
            .is_some_and(|s| !(0.0..=86_400.0).contains(&s))
        {
            return Err("outage_seconds must be between 0 and 86400".into());
        }
        Ok(())
    }
}

struct Published {
    assignment: Assignment,
    key: String,
    at: Instant,
    /// `active`, or the last remediation applied.
    state: Action,
    /// When the last remediation was applied (a re-deploy converges again from it).
    remediated_at: Option<Instant>,
    /// Installed devices lost to drift.
    lost: u64,
    /// Gone from the connector (drift).
    removed: bool,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
struct KeyCount {
    calls: u64,
    effects: u64,
}

struct Sim {
    config: SimConfig,
    started: Instant,
    outage_until: Option<Instant>,
    rng: StdRng,
    assignments: HashMap<String, Published>,
    keys: BTreeMap<String, KeyCount>,
    actions: BTreeMap<String, u64>,
    /// Every protocol call that arrived, faulted or not.
    requests: u64,
    /// Status reads answered, by assignment id (404s included).
    reads: BTreeMap<String, u64>,
    /// Batch status reads answered (`GET /v1/assignments?ids=`).
    batches: u64,
    /// Status answers set by hand (`POST /sim/answer`), served as they are, by assignment id.
    answers: HashMap<String, String>,
    /// Protocol calls being answered now, and the most there ever were at once.
    in_flight: u64,
    max_in_flight: u64,
}

type Shared = Arc<Mutex<Sim>>;

/// The connector protocol's OpenAPI document (`GET /v1/openapi.json` on the simulator).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "EUCORA connector protocol", description = "What EUCORA asks of an execution \
        plane: publish an assignment, report its status, remediate it. docs/connectors.md."),
    paths(publish, status, statuses, remediate),
    components(schemas(Assignment, AssignmentStatus, AssignmentStatuses, Remediation)),
    tags((name = "connector", description = "The calls a connector answers"))
)]
pub struct ProtocolDoc;

/// The simulator's routes: the protocol under `/v1`, its controls under `/sim`.
pub fn router(config: SimConfig) -> Router {
    let state: Shared = Arc::new(Mutex::new(Sim {
        rng: StdRng::seed_from_u64(config.seed),
        config,
        started: Instant::now(),
        outage_until: None,
        assignments: HashMap::new(),
        keys: BTreeMap::new(),
        actions: BTreeMap::new(),
        requests: 0,
        reads: BTreeMap::new(),
        batches: 0,
        answers: HashMap::new(),
        in_flight: 0,
        max_in_flight: 0,
    }));
    let protocol = Router::new()
        .route("/v1/assignments", get(statuses))
        .route("/v1/assignments/{id}", put(publish).get(status))
        .route("/v1/assignments/{id}/remediations", post(remediate))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), faults));
    Router::new()
        .merge(protocol)
        .route(
            "/v1/openapi.json",
            get(|| async { Json(<ProtocolDoc as utoipa::OpenApi>::openapi()) }),
        )
        .route("/sim/faults", get(get_faults).put(put_faults))
        .route("/sim/drift", post(drift))
        .route("/sim/answer", post(answer))
        .route("/sim/side-effects", get(side_effects))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

/// A refusal, as `application/problem+json`.
struct Problem(StatusCode, String);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let Problem(status, detail) = self;
        (
            status,
            [("content-type", "application/problem+json")],
            Json(json!({ "status": status.as_u16(), "detail": detail })),
        )
            .into_response()
    }
}

fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    Problem(status, detail.into()).into_response()
}

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, Sim> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Latency, outages, 503s and 429s, before any protocol call is looked at.
/// Counts a call in flight while it lives, however it ends.
struct InFlight(Shared);

impl InFlight {
    fn enter(state: &Shared) -> InFlight {
        let mut sim = lock(state);
        sim.in_flight += 1;
        sim.max_in_flight = sim.max_in_flight.max(sim.in_flight);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0).in_flight -= 1;
    }
}

async fn faults(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let _counted = InFlight::enter(&state);
    let assignment = request
        .uri()
        .path()
        .strip_prefix("/v1/assignments/")
        .map(|rest| rest.split('/').next().unwrap_or_default().to_string());
    let (latency, verdict) = {
        let mut sim = lock(&state);
        sim.requests += 1;
        let now = Instant::now();
        let since = now - sim.started;
        let out = sim.outage_until.is_some_and(|until| now < until)
            || sim
                .config
                .outages
                .iter()
                .any(|(after, lasting)| since >= *after && since < *after + *lasting);
        let faults = sim.config.faults.clone();
        let verdict = if out {
            Some(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the connector is in an outage",
            ))
        } else if faults.throttle_rate > 0.0 && sim.rng.gen_bool(faults.throttle_rate) {
            let mut reply = problem(StatusCode::TOO_MANY_REQUESTS, "too many requests");
            reply.headers_mut().insert(
                "retry-after",
                faults
                    .retry_after_seconds
                    .to_string()
                    .parse()
                    .unwrap_or_else(|_| axum::http::HeaderValue::from_static("1")),
            );
            Some(reply)
        } else if faults.failure_rate > 0.0 && sim.rng.gen_bool(faults.failure_rate) {
            Some(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the connector failed this call (simulated)",
            ))
        } else {
            None
        };
        let slow = assignment
            .and_then(|id| faults.slow.get(&id).copied())
            .unwrap_or(0);
        (
            Duration::from_millis(faults.latency_ms.saturating_add(slow)),
            verdict,
        )
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match verdict {
        Some(reply) => reply,
        None => next.run(request).await,
    }
}

/// 401 without a bearer token, 403 with the wrong one, when the simulator wants one.
async fn authenticate(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let wanted = lock(&state).config.token.clone();
    if let Some(wanted) = wanted {
        let given = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => return problem(StatusCode::UNAUTHORIZED, "a bearer token is required"),
            Some(given) if given != wanted => {
                return problem(StatusCode::FORBIDDEN, "this token may not do that")
            }
            Some(_) => {}
        }
    }
    next.run(request).await
}

fn key_of(headers: &HeaderMap) -> Result<String, Problem> {
    headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .map(str::to_string)
        .ok_or_else(|| {
            Problem(
                StatusCode::BAD_REQUEST,
                "an Idempotency-Key header (1 to 200 characters) is required".into(),
            )
        })
}

/// Parses a JSON body in our words (422 for a body that is not the protocol's).
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(bytes)
        .map_err(|e| Problem(StatusCode::UNPROCESSABLE_ENTITY, format!("the body: {e}")))
}

/// Publish an assignment: make the version available to the ring's devices.
#[utoipa::path(put, path = "/v1/assignments/{assignment_id}", tag = "connector",
    params(("assignment_id" = String, Path, description = "`<deployment id>.<ring in lower case>`"),
           ("Idempotency-Key" = String, Header, description = "`<deployment id>:<RING>:publish`")),
    request_body = Assignment,
    responses(
        (status = 201, description = "published now", body = AssignmentStatus),
        (status = 200, description = "already published with this key and body: nothing done again", body = AssignmentStatus),
        (status = 400, description = "no Idempotency-Key"),
        (status = 409, description = "published before with another key or body (permanent)"),
        (status = 422, description = "the body is not an assignment, or the id is not its assignment id"),
        (status = 429, description = "throttled: retry after `Retry-After` seconds"),
        (status = 503, description = "unavailable for now (transient)")))]
async fn publish(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response, Problem> {
    let key = key_of(&headers)?;
    let assignment: Assignment = body(&bytes)?;
    if id != super::assignment_id(assignment.deployment_id, assignment.ring) {
        return Err(Problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the assignment id of {} in {} is {}, not {id}",
                assignment.deployment_id,
                assignment.ring.as_str(),
                super::assignment_id(assignment.deployment_id, assignment.ring)
            ),
        ));
    }
    let mut sim = lock(&state);
    sim.keys.entry(key.clone()).or_default().calls += 1;
    if let Some(existing) = sim.assignments.get(&id) {
        if existing.key != key || existing.assignment != assignment {
            return Err(Problem(
                StatusCode::CONFLICT,
                format!("{id} was published with another key or body"),
            ));
        }
        let status = sim.status_of(&id);
        return Ok((StatusCode::OK, Json(status)).into_response());
    }
    sim.keys.entry(key.clone()).or_default().effects += 1;
    *sim.actions.entry(format!("{id}/publish")).or_default() += 1;
    sim.assignments.insert(
        id.clone(),
        Published {
            assignment,
            key,
            at: Instant::now(),
            state: Action::Publish,
            remediated_at: None,
            lost: 0,
            removed: false,
        },
    );
    let status = sim.status_of(&id);
    Ok((StatusCode::CREATED, Json(status)).into_response())
}

/// Where the assignment's rollout stands.
/// The statuses of many assignments in one read (optional: EUCORA uses it for a connector
/// configured with `batch_status = true`).
#[utoipa::path(get, path = "/v1/assignments", tag = "connector",
    params(("ids" = String, Query, description = "assignment ids, comma-separated: at most 100")),
    responses(
        (status = 200, description = "the assignments asked for that the connector has; one it does not have is left out", body = AssignmentStatuses),
        (status = 400, description = "no ids, or more than 100"),
        (status = 429, description = "throttled: retry after `Retry-After` seconds"),
        (status = 503, description = "unavailable for now (transient)")))]
async fn statuses(
    State(state): State<Shared>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let ids: Vec<String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "ids")
        .flat_map(|(_, v)| {
            v.split(',')
                .filter(|id| !id.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    if ids.is_empty() || ids.len() > super::BATCH {
        return problem(
            StatusCode::BAD_REQUEST,
            format!(
                "ids: give 1 to {} assignment ids, comma-separated",
                super::BATCH
            ),
        );
    }
    let mut sim = lock(&state);
    sim.batches += 1;
    let mut assignments = Vec::new();
    for id in ids {
        *sim.reads.entry(id.clone()).or_default() += 1;
        if sim.assignments.get(&id).is_some_and(|p| !p.removed) {
            assignments.push(sim.status_of(&id));
        }
    }
    Json(AssignmentStatuses { assignments }).into_response()
}

#[utoipa::path(get, path = "/v1/assignments/{assignment_id}", tag = "connector",
    params(("assignment_id" = String, Path, description = "`<deployment id>.<ring in lower case>`")),
    responses(
        (status = 200, body = AssignmentStatus),
        (status = 404, description = "no such assignment: never published, or gone (drift)"),
        (status = 429, description = "throttled: retry after `Retry-After` seconds"),
        (status = 503, description = "unavailable for now (transient)")))]
async fn status(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let mut sim = lock(&state);
    *sim.reads.entry(id.clone()).or_default() += 1;
    if let Some(text) = sim.answers.get(&id) {
        return ([("content-type", "application/json")], text.clone()).into_response();
    }
    match sim.assignments.get(&id) {
        Some(p) if !p.removed => Json(sim.status_of(&id)).into_response(),
        _ => problem(StatusCode::NOT_FOUND, format!("no assignment {id}")),
    }
}

/// Remediate an assignment: uninstall, roll back, or re-deploy.
#[utoipa::path(post, path = "/v1/assignments/{assignment_id}/remediations", tag = "connector",
    params(("assignment_id" = String, Path, description = "`<deployment id>.<ring in lower case>`"),
           ("Idempotency-Key" = String, Header, description = "`<deployment id>:<RING>:<action>`")),
    request_body = Remediation,
    responses(
        (status = 202, description = "applied (now, or before with this key: nothing done again)", body = AssignmentStatus),
        (status = 400, description = "no Idempotency-Key"),
        (status = 404, description = "no such assignment"),
        (status = 422, description = "the body is not a remediation"),
        (status = 429, description = "throttled: retry after `Retry-After` seconds"),
        (status = 503, description = "unavailable for now (transient)")))]
async fn remediate(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response, Problem> {
    let key = key_of(&headers)?;
    let remediation: Remediation = body(&bytes)?;
    if remediation.action == Action::Publish {
        return Err(Problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a remediation is uninstall, rollback or redeploy".into(),
        ));
    }
    let mut sim = lock(&state);
    if sim.assignments.get(&id).is_none_or(|p| p.removed) {
        return Err(Problem(
            StatusCode::NOT_FOUND,
            format!("no assignment {id}"),
        ));
    }
    let count = sim.keys.entry(key).or_default();
    count.calls += 1;
    if count.effects == 0 {
        count.effects += 1;
        *sim.actions
            .entry(format!("{id}/{}", remediation.action.as_str()))
            .or_default() += 1;
        if let Some(p) = sim.assignments.get_mut(&id) {
            p.state = remediation.action;
            p.remediated_at = Some(Instant::now());
            if remediation.action == Action::Redeploy {
                p.lost = 0;
            }
        }
    }
    let status = sim.status_of(&id);
    Ok((StatusCode::ACCEPTED, Json(status)).into_response())
}

impl Sim {
    /// Where an assignment stands now: its devices converge evenly over the convergence time
    /// from publication (or from a re-deploy); an uninstall or rollback takes them all off.
    fn status_of(&self, id: &str) -> AssignmentStatus {
        let Some(p) = self.assignments.get(id) else {
            return AssignmentStatus {
                assignment_id: id.to_string(),
                state: "unknown".into(),
                targeted: 0,
                installed: 0,
                failed: 0,
                pending: 0,
                incidents: 0,
            };
        };
        let targeted = self.config.devices[p.assignment.ring.index()];
        let since = match p.state {
            Action::Redeploy => p.remediated_at.unwrap_or(p.at),
            _ => p.at,
        };
        let share = if self.config.converge.is_zero() {
            1.0
        } else {
            (since.elapsed().as_secs_f64() / self.config.converge.as_secs_f64()).min(1.0)
        };
        let reached = (targeted as f64 * share).floor() as u64;
        let failed = (reached as f64 * self.config.device_failure_rate).round() as u64;
        let (installed, failed) = match p.state {
            Action::Uninstall | Action::Rollback => (0, 0),
            Action::Publish | Action::Redeploy => {
                ((reached - failed).saturating_sub(p.lost), failed)
            }
        };
        AssignmentStatus {
            assignment_id: id.to_string(),
            state: match p.state {
                Action::Publish => "active".into(),
                other => other.as_str().into(),
            },
            targeted,
            installed,
            failed,
            pending: targeted - reached.min(targeted),
            incidents: 0,
        }
    }
}

async fn get_faults(State(state): State<Shared>) -> Response {
    let sim = lock(&state);
    let mut faults = sim.config.faults.clone();
    faults.outage_seconds = sim.outage_until.map(|until| {
        until
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
    });
    Json(faults).into_response()
}

async fn put_faults(
    State(state): State<Shared>,
    bytes: axum::body::Bytes,
) -> Result<Response, Problem> {
    let faults: Faults = body(&bytes)?;
    if let Err(why) = faults.check() {
        return Err(Problem(StatusCode::UNPROCESSABLE_ENTITY, why));
    }
    let mut sim = lock(&state);
    sim.outage_until = faults
        .outage_seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    sim.config.faults = Faults {
        outage_seconds: None,
        ..faults
    };
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /sim/drift`'s body: the assignment disappears, or loses installed devices.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Drift {
    assignment_id: String,
    #[serde(default)]
    remove: bool,
    #[serde(default)]
    lose_devices: u64,
}

async fn drift(State(state): State<Shared>, bytes: axum::body::Bytes) -> Result<Response, Problem> {
    let drift: Drift = body(&bytes)?;
    let mut sim = lock(&state);
    let Some(p) = sim.assignments.get_mut(&drift.assignment_id) else {
        return Err(Problem(
            StatusCode::NOT_FOUND,
            format!("no assignment {}", drift.assignment_id),
        ));
    };
    p.removed |= drift.remove;
    p.lost = p.lost.saturating_add(drift.lose_devices);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /sim/answer`'s body: from now, status reads of the assignment are answered 200 with
/// `body` exactly as given (a bad answer, to see what EUCORA makes of it); `null` restores the
/// simulator's own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    assignment_id: String,
    body: Option<String>,
}

async fn answer(
    State(state): State<Shared>,
    bytes: axum::body::Bytes,
) -> Result<Response, Problem> {
    let answer: Answer = body(&bytes)?;
    let mut sim = lock(&state);
    match answer.body {
        Some(text) => sim.answers.insert(answer.assignment_id, text),
        None => sim.answers.remove(&answer.assignment_id),
    };
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn side_effects(State(state): State<Shared>) -> Response {
    let sim = lock(&state);
    Json(json!({
        "requests": sim.requests,
        "keys": sim.keys,
        "actions": sim.actions,
        "reads": sim.reads,
        "batches": sim.batches,
        "max_in_flight": sim.max_in_flight,
    }))
    .into_response()
}

/// Serves the simulator on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: SimConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(config))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    /// docs/connector-protocol.json is the protocol's OpenAPI document as the simulator serves
    /// it, so a bridge can be written from the docs alone; with `EUCORA_WRITE_DOCS` set, it is
    /// written first.
    #[test]
    fn docs_connector_protocol_json_is_the_simulators_document() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/connector-protocol.json");
        let text = <super::ProtocolDoc as utoipa::OpenApi>::openapi()
            .to_pretty_json()
            .unwrap()
            + "\n";
        if std::env::var_os("EUCORA_WRITE_DOCS").is_some() {
            std::fs::write(path, &text).expect("docs/connector-protocol.json is writable");
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == text,
            "docs/connector-protocol.json differs from the protocol: write it again with \
             EUCORA_WRITE_DOCS=1 cargo test --lib connector::sim"
        );
    }
}
