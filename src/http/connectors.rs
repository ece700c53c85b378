//! `/api/v1/connectors/{name}/results`: a connector pushes its rollout results
//! (docs/connectors.md, "Pushing results"), as its own principal, through the same command path
//! as the results EUCORA polls.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use eucora_projections::event::{parse_assignment_id, Role};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::deployments::command;
use super::error::ApiError;
use super::extract::{whole_number, ApiJson, Principal};
use super::refusals::Attempt;
use crate::domain::{Action, PushedReport, RolloutInput};
use crate::http::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(push_result))
}

/// A rollout result as a connector pushes it: the assignment's status as
/// `GET /v1/assignments/{assignment_id}` would answer it, with the connector's report sequence.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushedResult {
    /// The assignment EUCORA published: `<deployment id>.<ring in lower case>`.
    #[schema(
        example = "0b5e1c2a-3f4d-4e5f-8a9b-0c1d2e3f4a5b.lab",
        pattern = "^[0-9a-fA-F-]{36}\\.(lab|canary|pilot|department|global)$"
    )]
    pub assignment_id: String,
    /// The connector's sequence for this assignment: each report's higher than the last one
    /// applied. The last one again, with the same counts, is answered without a second effect.
    #[schema(minimum = 0, maximum = 9_007_199_254_740_992_u64)]
    #[serde(deserialize_with = "whole_number")]
    pub sequence: u64,
    /// `active`, or the remediation last applied; only an active assignment's counts are a
    /// rollout result (409 otherwise).
    #[schema(max_length = 64)]
    pub state: String,
    /// Devices the assignment targets.
    #[schema(minimum = 1, maximum = 10_000_000)]
    #[serde(deserialize_with = "whole_number")]
    pub targeted: u64,
    /// Devices that have the version installed now (`installed + failed` at most `targeted`).
    #[schema(minimum = 0, maximum = 10_000_000)]
    #[serde(deserialize_with = "whole_number")]
    pub installed: u64,
    #[schema(minimum = 0, maximum = 10_000_000)]
    #[serde(deserialize_with = "whole_number")]
    pub failed: u64,
    #[schema(minimum = 0, maximum = 10_000_000)]
    #[serde(deserialize_with = "whole_number")]
    pub pending: u64,
    #[schema(minimum = 0, maximum = 10_000_000)]
    #[serde(deserialize_with = "whole_number")]
    pub incidents: u64,
}

/// Push a rollout result for an assignment EUCORA published to this connector.
///
/// Authenticated as the connector's own principal (subject `connector:<name>`, role
/// `connector`). Applied as a polled result is: the same rules, and a `DeploymentDeployed` event
/// carrying the sequence.
#[utoipa::path(post, path = "/{name}/results", tag = "connectors", request_body = PushedResult,
    params(("name" = String, Path, description = "the connector's name: `intune`, `jamf`, `sccm`, `landscape`, `ansible`, or a custom connector's", max_length = 64)),
    responses(
        (status = 200, description = "applied, or applied before (the same sequence and counts): the intent as it now stands", body = super::deployments::IntentResponse),
        (status = 400, description = "malformed JSON or header"), (status = 401),
        (status = 403, description = "not this connector's own principal, or another connector's assignment (recorded as a refused command)"),
        (status = 404, description = "no such intent, or the connector was never sent this assignment"),
        (status = 409, description = "a sequence before the last applied (or the same with other counts), a ring the intent has left, an intent that takes no result, or an assignment that is not active"),
        (status = 413), (status = 415),
        (status = 422, description = "not an assignment id, counts out of range, or installed + failed above targeted"),
        (status = 503, description = "the store did not answer; retry after Retry-After")),
    security(("bearer" = [])))]
async fn push_result(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: ApiJson<PushedResult>,
) -> Result<Response, ApiError> {
    let r = body.value;
    let parsed = parse_assignment_id(&r.assignment_id);
    let attempt = Attempt {
        principal: principal.clone(),
        intent: parsed.map(|(id, _)| id),
        command: "push_result",
    };
    attempt.require(&state, &[Role::Connector]).await?;
    if principal.0.subject != format!("connector:{name}") {
        let detail = format!(
            "this token is {}'s: a connector pushes its results with its own token (subject connector:{name}, role connector)",
            principal.0.subject
        );
        return Err(attempt.refuse(&state, "not_own_assignment", detail).await);
    }
    let Some((id, ring)) = parsed else {
        return Err(ApiError::Unprocessable(format!(
            "assignment_id: {:?} is not an assignment EUCORA publishes (<deployment id>.<ring in lower case>)",
            r.assignment_id
        )));
    };
    if r.state != "active" {
        return Err(ApiError::Conflict {
            detail: format!(
                "assignment {} is {:?}: only an active assignment's counts are a rollout result; nothing recorded",
                r.assignment_id, r.state
            ),
            extra: None,
        });
    }
    if r.pending > crate::domain::intent::MAX_DEVICES {
        return Err(ApiError::Unprocessable(format!(
            "pending: must be from 0 to {}",
            crate::domain::intent::MAX_DEVICES
        )));
    }
    let action = Action::ReportPushed(PushedReport {
        report: RolloutInput {
            ring,
            target_devices: r.targeted,
            succeeded: r.installed,
            failed: r.failed,
            incidents: r.incidents,
        },
        sequence: r.sequence,
    });
    command(state, principal, &headers, id, &body.digest, action).await
}
