//! One change: its facts, ring progress, risk assessment, gate evaluations, timeline and
//! connector state, as it is or as it was at any past time; and the actions the viewer's role
//! allows, each taken through the API's command path with the stream version the page was drawn
//! at, so a change that moved on meanwhile is answered with what happened and nothing twice.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{DateTime, NaiveDateTime, Utc};
use eucora_projections::describe;
use eucora_projections::event::{DeploymentEvent, Ring, Role, Status};
use eucora_projections::intent::IntentState;
use maud::{html, Markup};
use serde::Deserialize;
use uuid::Uuid;

use super::layout::{self, page, refresh, ring, status, time, unavailable};
use super::session::Viewer;
use crate::domain::{Action, Command, DomainError, RolloutInput};
use crate::http::refusals::Attempt;
use crate::http::AppState;
use crate::store::StoredEvent;
use crate::write::CommandError;

#[derive(Debug, Default, Deserialize)]
pub struct ChangeQuery {
    as_of: Option<String>,
    done: Option<String>,
}

/// A time typed into the "as of" field: RFC 3339, or a `datetime-local` value read as UTC.
fn as_of(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M").map(|t| t.and_utc()))
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").map(|t| t.and_utc()))
        .map_err(|_| format!("\"as of\" must be a time like 2026-12-01T09:30 (UTC), not {text:?}"))
}

fn not_found(viewer: &Viewer, what: &str) -> Response {
    let mut response = page(
        Some(viewer),
        "/ui/changes",
        "No such change",
        layout::notice("error", what),
    );
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// `GET /ui/changes/{id}[?as_of=]`.
pub async fn page_of(
    state: &AppState,
    viewer: &Viewer,
    id: &str,
    query: &ChangeQuery,
    notice: Option<(&str, String)>,
) -> Response {
    let Ok(id) = Uuid::parse_str(id) else {
        return not_found(viewer, &format!("{id:?} is not a change id (a UUID)."));
    };
    let at = match query
        .as_of
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        Some(text) => match as_of(text) {
            Ok(at) => Some(at),
            Err(problem) => {
                let mut response = page(
                    Some(viewer),
                    "/ui/changes",
                    "Change",
                    layout::notice("error", &problem),
                );
                *response.status_mut() = StatusCode::BAD_REQUEST;
                return response;
            }
        },
        None => None,
    };
    let events = match state.store.intent_events(id).await {
        Ok(events) => events,
        Err(e) => return unavailable(e),
    };
    let events: Vec<StoredEvent> = events
        .into_iter()
        .filter(|e| at.is_none_or(|t| e.event.meta().occurred_at <= t))
        .collect();
    let Some(intent) = IntentState::replay(events.iter().map(|e| &e.event)) else {
        return match at {
            Some(_) => not_found(viewer, "The change did not exist yet at that time."),
            None => not_found(viewer, &format!("There is no change {id}.")),
        };
    };
    let done = query.done.as_deref().map(|d| (d, &intent));
    let title = format!("{} {}", intent.app_name, intent.version);
    page(
        Some(viewer),
        "/ui/changes",
        &title,
        html! {
            @if let Some((kind, text)) = &notice { (layout::notice(kind, text)) }
            @if let Some((done, intent)) = done { (done_notice(done, intent)) }
            @if let Some(at) = at {
                p.notice.info { "As it was at " (time(at)) ". " a href={"/ui/changes/" (id)} { "Show it as it is now" } }
            } @else { (refresh(&format!("/ui/changes/{id}"))) }
            form.filters method="get" action={"/ui/changes/" (id)} {
                div { label for="as-of" { "As of (UTC)" }
                    input id="as-of" name="as_of" type="datetime-local" step="1"
                        value=(at.map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string()).unwrap_or_default()); }
                button.secondary type="submit" { "Show" }
            }
            (facts(&intent))
            (progress(&intent))
            (risk(&intent, &events))
            (gates(&events))
            @if at.is_none() { (actions(viewer, &intent)) }
            (connectors(&intent))
            (timeline(&events))
        },
    )
}

pub async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(query): Query<ChangeQuery>,
) -> Response {
    page_of(&state, &viewer, &id, &query, None).await
}

fn done_notice(done: &str, intent: &IntentState) -> Markup {
    let text = match done {
        "approve" => "Approved.".to_string(),
        "reject" => "Rejected.".to_string(),
        "report" => "Rollout report recorded.".to_string(),
        "rollback" => "Rolled back.".to_string(),
        "promote" => match &intent.last_promotion {
            Some(p) if p.passed => format!("Promoted to {}.", p.to_ring.as_str()),
            Some(p) => format!(
                "Promotion to {} blocked by: {}. The evaluation is recorded.",
                p.to_ring.as_str(),
                p.blocked_by()
                    .iter()
                    .map(|g| g.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "Promotion evaluated.".to_string(),
        },
        _ => return html! {},
    };
    let blocked = done == "promote" && intent.last_promotion.as_ref().is_some_and(|p| !p.passed);
    layout::notice(if blocked { "error" } else { "done" }, &text)
}

fn facts(i: &IntentState) -> Markup {
    html! {
        section aria-labelledby="facts" {
            h2 id="facts" { "Facts" }
            dl.facts {
                dt { "State" } dd { (status(i.status)) }
                dt { "App" } dd { (i.app_name) " " (i.version) }
                dt { "Change ref" } dd { @if let Some(r) = &i.change_ref { code { (r) } } @else { "—" } }
                dt { "Requested by" } dd { (i.requested_by) " at " (time(i.created_at)) }
                dt { "Approved by" } dd { (i.approved_by.as_deref().unwrap_or("—")) }
                @if let Some(by) = &i.rejected_by {
                    dt { "Rejected by" } dd { (by) ": " (i.rejection_reason.as_deref().unwrap_or("")) }
                }
                dt { "Connector" } dd { (i.connector_type.as_str()) }
                dt { "Kind" } dd { (i.change_type.as_str()) " change, " (i.site_class.as_str().replace('_', " ")) " sites" }
                dt { "Artifact" } dd { @if let Some(a) = &i.artifact_sha256 { code { (a) } } @else { "—" } }
                @if let Some(currency) = i.cost.currency() {
                    dt { "Cost so far" } dd { (currency) " " (format!("{:.2}", i.cost.total())) }
                }
                dt { "Id" } dd { code { (i.id) } " · stream version " (i.stream_version) }
            }
        }
    }
}

fn progress(i: &IntentState) -> Markup {
    let rings: Vec<Ring> = Ring::ALL
        .into_iter()
        .filter(|r| *r >= i.start_ring && *r <= i.target_ring)
        .collect();
    html! {
        section aria-labelledby="progress" {
            h2 id="progress" { "Ring progress" }
            ol.rings {
                @for r in &rings {
                    @let class = if *r < i.current_ring || (*r == i.current_ring && i.status == Status::Completed) { "done" }
                        else if *r == i.current_ring { "current" } else { "" };
                    li class=(class) aria-current=[(*r == i.current_ring).then_some("step")] { (r.as_str()) }
                }
            }
            @if let Some(report) = &i.latest_report {
                p { "Last report in " (ring(i.current_ring)) ": " (report.succeeded) " of " (report.target_devices)
                    " devices succeeded, " (report.failed) " failed, " (report.incidents) " incidents ("
                    (format!("{:.1} %", report.success_rate * 100.0)) ")." }
            } @else { p { "No rollout report in " (ring(i.current_ring)) " yet." } }
            @if let Some(f) = i.forecast.current() {
                p.forecast {
                    "Forecast: "
                    @match (f.compliant, f.expected_at) {
                        (true, Some(at)) => { "compliant at " (time(at)) },
                        (false, Some(at)) => { "expected compliant at " (time(at)) " at the install rate so far" },
                        _ => { "not expected to be compliant: the rollout gains nothing" },
                    }
                    @if let Some(due) = f.due_at { "; due by " (time(due)) }
                    "."
                    @if f.will_miss_deadline && !f.compliant { " " strong { "It will miss its deadline." } }
                }
            }
        }
    }
}

fn risk(i: &IntentState, events: &[StoredEvent]) -> Markup {
    let created = events.iter().find_map(|e| match &e.event {
        DeploymentEvent::DeploymentCreated(c) => Some(c),
        _ => None,
    });
    html! {
        section aria-labelledby="risk" {
            h2 id="risk" { "Risk assessment" }
            p { "Score " strong { (i.risk_score) } " of 100 (" (i.risk_threshold.words()) "), model "
                code { (i.risk_model_version) } ". "
                @if i.requires_cab { "The CAB must decide: " (i.cab_required_reason.as_deref().unwrap_or("the policy requires it")) "." }
                @else { "The CAB need not decide: the policy approves it." } }
            @if let Some(c) = created {
                div.scroll { table {
                    thead { tr { th scope="col" { "Factor" } th.num scope="col" { "Value" } th.num scope="col" { "Weight" } th.num scope="col" { "Contribution" } } }
                    tbody { @for f in &c.risk.factors { tr {
                        td { code { (f.factor) } }
                        td.num { (format!("{:.2}", f.value)) }
                        td.num { (format!("{:.0}", f.weight)) }
                        td.num { (format!("{:.1}", f.contribution)) }
                    } } }
                } }
                @if let Some(digest) = &c.risk.policy_digest { p.meta { "Judged under policy " code { (digest) } } }
            }
        }
    }
}

fn gates(events: &[StoredEvent]) -> Markup {
    let evaluations: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            DeploymentEvent::PromotionGateEvaluated(g) => Some(g),
            _ => None,
        })
        .collect();
    html! {
        section aria-labelledby="gates" {
            h2 id="gates" { "Gate evaluations" }
            @if evaluations.is_empty() { p { "No promotion has been evaluated." } }
            @for g in evaluations.iter().rev() {
                h3 { (g.from_ring.as_str()) " → " (g.to_ring.as_str()) ", " (time(g.meta.occurred_at)) ": "
                    @if g.passed { span.pass { "passed" } } @else { span.fail { "blocked" } } }
                div.scroll { table {
                    thead { tr { th scope="col" { "Gate" } th.num scope="col" { "Threshold" } th.num scope="col" { "Measured" } th scope="col" { "Verdict" } } }
                    tbody { @for r in &g.gates { tr {
                        td { (r.gate.as_str()) }
                        td.num { (if r.bound == "min" { "≥ " } else { "≤ " }) (r.threshold) " " (r.unit) }
                        td.num { @match r.measured { Some(m) => { (m) " " (r.unit) } None => { "nothing to measure" } } }
                        td { @if r.passed { span.pass { "pass" } } @else { span.fail { "fail" } } }
                    } } }
                } }
            }
        }
    }
}

fn connectors(i: &IntentState) -> Markup {
    html! {
        section aria-labelledby="dispatch" {
            h2 id="dispatch" { "Connector" }
            @if i.connector_actions.is_empty() { p { "No connector action is recorded." } } @else {
                ul { @for (key, outcome) in &i.connector_actions {
                    li { code { (key) } ": " (format!("{outcome:?}").to_lowercase()) }
                } }
            }
            @if let Some(drift) = &i.last_drift {
                p.fail { "Drift in " (drift.ring.as_str()) ": the connector reports "
                    (drift.reported_installed.map(|n| n.to_string()).unwrap_or("no assignment".into())) " installed." }
            }
            @if let Some(rejected) = &i.status_rejected {
                p.fail { "The connector's status answer for " code { (rejected.assignment_id) }
                    " was rejected (" (crate::ui::layout::time(rejected.at)) "): " (rejected.problem)
                    ". Nothing was reported from it." }
            }
        }
    }
}

fn timeline(events: &[StoredEvent]) -> Markup {
    html! {
        section aria-labelledby="timeline" {
            h2 id="timeline" { "Timeline" }
            ol.timeline reversed {
                @for e in events.iter().rev() {
                    @let meta = e.event.meta();
                    li {
                        strong { (e.event.type_name()) } " · " (time(meta.occurred_at))
                        div { (describe::summary(&e.event)) }
                        div.meta { "position " (e.position) " · correlation " code { (meta.correlation_id) }
                            @if let Some(t) = &e.trace_id { " · trace " code { (t) } } }
                    }
                }
            }
        }
    }
}

/// Approve and reject, for a CAB approver who did not request the change; `compact` in a
/// queue's row.
pub fn decide_forms(viewer: &Viewer, i: &IntentState, compact: bool) -> Markup {
    let id = i.id;
    let version = i.stream_version;
    html! {
        form.inline method="post" action={"/ui/changes/" (id) "/approve"} {
            input type="hidden" name="csrf" value=(viewer.csrf);
            input type="hidden" name="version" value=(version);
            label { "Comment" input name="comment" maxlength="2000" size=(if compact { "12" } else { "40" }); }
            button type="submit" { "Approve" }
        }
        form.inline method="post" action={"/ui/changes/" (id) "/reject"} {
            input type="hidden" name="csrf" value=(viewer.csrf);
            input type="hidden" name="version" value=(version);
            label { "Reason" input name="reason" required maxlength="2000" size=(if compact { "12" } else { "40" }); }
            button.danger type="submit" { "Reject" }
        }
    }
}

fn actions(viewer: &Viewer, i: &IntentState) -> Markup {
    let own = viewer.subject() == i.requested_by;
    let decidable = i.status == Status::AwaitingCab || i.retro_approval_pending;
    let open = matches!(i.status, Status::Approved | Status::Deployed);
    let may_deploy = viewer.may(&[Role::Deployer]);
    let may_roll_back = may_deploy || (viewer.role() == Role::Requester && own);
    let form_head = |action: &str| {
        html! {
            input type="hidden" name="csrf" value=(viewer.csrf);
            input type="hidden" name="version" value=(i.stream_version);
            input type="hidden" name="action" value=(action);
        }
    };
    html! {
        section.actions aria-labelledby="actions" {
            h2 id="actions" { "Actions" }
            @if decidable {
                @if own {
                    p.notice.info { "You requested this change: segregation of duties means its requester may not approve or reject it. A CAB approver other than you decides." }
                } @else if viewer.may(&[Role::CabApprover]) {
                    section { h3 { "Decide" } (decide_forms(viewer, i, false)) }
                } @else {
                    p { "A CAB approver decides this change; your role (" (viewer.role().as_str()) ") may not." }
                }
            }
            @if open && may_deploy && !i.rollback_required {
                section { h3 { "Report a rollout in " (i.current_ring.as_str()) }
                    form.inline method="post" action={"/ui/changes/" (i.id) "/report"} {
                        (form_head("report"))
                        input type="hidden" name="ring" value=(i.current_ring.as_str());
                        label { "Target devices" input name="target_devices" inputmode="numeric" required size="8"; }
                        label { "Succeeded" input name="succeeded" inputmode="numeric" required size="8"; }
                        label { "Failed" input name="failed" inputmode="numeric" required size="8" value="0"; }
                        label { "Incidents" input name="incidents" inputmode="numeric" size="6" value="0"; }
                        button type="submit" { "Report" }
                    } }
                @if i.status == Status::Deployed && i.current_ring < i.target_ring {
                    section { h3 { "Promote" }
                        form.inline method="post" action={"/ui/changes/" (i.id) "/promote"} {
                            (form_head("promote"))
                            button type="submit" { "Evaluate the gates and promote" }
                        } }
                }
            }
            @if (open || i.rollback_required) && may_roll_back {
                section { h3 { "Roll back" }
                    form.inline method="post" action={"/ui/changes/" (i.id) "/rollback"} {
                        (form_head("rollback"))
                        label { "Reason" input name="reason" required maxlength="2000" size="40"; }
                        button.danger type="submit" { "Roll back" }
                    } }
            }
            @if !decidable && !open && !i.rollback_required { p { "This change is " (i.status.as_str().replace('_', " ")) ": nothing more can be done." } }
            @if viewer.may(&[Role::Auditor]) {
                p.meta { a href={"/ui/changes/" (i.id) "/evidence"} { "Download this change's evidence bundle" } }
            }
        }
    }
}

/// What an action form sends.
#[derive(Debug, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    version: Option<String>,
    comment: Option<String>,
    reason: Option<String>,
    ring: Option<String>,
    target_devices: Option<String>,
    succeeded: Option<String>,
    failed: Option<String>,
    incidents: Option<String>,
}

fn count(v: &Option<String>, name: &str, default: Option<u64>) -> Result<u64, String> {
    match v.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        Some(text) => text
            .parse()
            .map_err(|_| format!("{name} must be a whole number, not {text:?}")),
        None => default.ok_or(format!("{name} is required")),
    }
}

fn text(v: &Option<String>, name: &str) -> Result<String, String> {
    v.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .ok_or(format!("{name} is required"))
}

impl ActionForm {
    fn action(&self, name: &str) -> Result<Action, String> {
        Ok(match name {
            "approve" => Action::Approve {
                comment: self
                    .comment
                    .as_deref()
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_string),
            },
            "reject" => Action::Reject {
                reason: text(&self.reason, "a reason")?,
            },
            "rollback" => Action::Rollback {
                reason: text(&self.reason, "a reason")?,
            },
            "promote" => Action::Promote,
            "report" => Action::Deploy(RolloutInput {
                ring: Ring::parse(self.ring.as_deref().unwrap_or_default())
                    .ok_or("the report names no ring")?,
                target_devices: count(&self.target_devices, "target devices", None)?,
                succeeded: count(&self.succeeded, "succeeded", None)?,
                failed: count(&self.failed, "failed", Some(0))?,
                incidents: count(&self.incidents, "incidents", Some(0))?,
            }),
            other => return Err(format!("there is no action {other:?}")),
        })
    }
}

/// `POST /ui/changes/{id}/{action}`.
pub async fn act(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((id, name)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(refusal) = viewer.csrf_refusal(&form.csrf) {
        return refusal;
    }
    let show = |notice: (&'static str, String), code: StatusCode| {
        let state = state.clone();
        let viewer = viewer.clone();
        let id = id.clone();
        async move {
            let mut response =
                page_of(&state, &viewer, &id, &ChangeQuery::default(), Some(notice)).await;
            if response.status().is_success() {
                *response.status_mut() = code;
            }
            response
        }
    };
    let Ok(intent) = Uuid::parse_str(&id) else {
        return not_found(&viewer, &format!("{id:?} is not a change id (a UUID)."));
    };
    let action = match form.action(&name) {
        Ok(action) => action,
        Err(problem) => {
            return show(
                ("error", format!("{problem}: nothing was done.")),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
    };
    let Some(version) = form.version.as_deref().and_then(|v| v.parse::<u64>().ok()) else {
        return show(("error", "The form did not say which version of the change it was drawn from: nothing was done.".into()), StatusCode::BAD_REQUEST).await;
    };
    let attempt = Attempt {
        principal: viewer.principal.clone(),
        intent: Some(intent),
        command: action.name(),
    };
    if let Err(e) = attempt.require(&state, action.roles()).await {
        return show(
            (
                "error",
                format!("Refused: {}. Nothing was done.", e.detail()),
            ),
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    state.admit(&action).await;
    let command = Command {
        actor: viewer.actor().clone(),
        correlation_id: crate::http::correlation::current(),
        expected_version: Some(version),
        action,
    };
    match attempt.run(&state, intent, command, None).await {
        Ok(_) => Redirect::to(&format!("/ui/changes/{intent}?done={name}")).into_response(),
        Err(CommandError::Domain(DomainError::VersionMismatch { actual, .. })) => {
            show(
                (
                    "error",
                    format!(
                        "This change moved on since you opened it (it is now at version \
                         {actual}, the page showed {version}): nothing was done. Here it is as it \
                         stands; the timeline says what happened."
                    ),
                ),
                StatusCode::CONFLICT,
            )
            .await
        }
        Err(CommandError::Store(e)) => unavailable(e),
        Err(e) => {
            let e = crate::http::error::ApiError::from(e);
            let code = e.status();
            show(
                (
                    "error",
                    format!("Refused: {}. Nothing was done.", e.detail()),
                ),
                code,
            )
            .await
        }
    }
}
