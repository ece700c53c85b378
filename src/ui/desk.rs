//! The auditor's and the administrator's desks: the global stream, evidence bundles (the ones
//! the API serves) with the checkpoint and verifier key to check them, and the access review.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{NaiveDate, Utc};
use eucora_projections::decode::StreamEvent;
use eucora_projections::describe;
use eucora_projections::event::Role;
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, page, refresh, time, unavailable};
use super::session::{CsrfForm, Viewer};
use crate::evidence::Scope;
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::principals::PrincipalOut;

/// Events per page of the audit view.
const EVENTS: u64 = 100;

/// A page saying the viewer's role may not see this, answered 403.
fn forbidden(viewer: &Viewer, current: &str, allowed: &str) -> Response {
    let mut response = page(
        Some(viewer),
        current,
        "Not for your role",
        layout::notice(
            "error",
            &format!(
                "Your role ({}) may not open this page: {allowed}.",
                viewer.role().as_str()
            ),
        ),
    );
    *response.status_mut() = StatusCode::FORBIDDEN;
    response
}

/// An API error as a console page.
fn failed(viewer: &Viewer, current: &str, e: ApiError) -> Response {
    let status = e.status();
    let mut response = page(
        Some(viewer),
        current,
        "Not done",
        layout::notice("error", &e.detail()),
    );
    *response.status_mut() = status;
    response
}

#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    after: Option<String>,
    stream: Option<String>,
}

fn stream_of(event: &StreamEvent) -> &'static str {
    match event {
        StreamEvent::Deployment(_) => "deployment",
        StreamEvent::Access(_) => "principal",
        StreamEvent::Governance(_) => "governance",
    }
}

pub async fn audit(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<AuditQuery>,
) -> Response {
    if !viewer.may(&[Role::Auditor]) {
        return forbidden(&viewer, "/ui/audit", "auditors and admins");
    }
    let Ok(after) = q.after.as_deref().unwrap_or("0").parse::<u64>() else {
        return failed(
            &viewer,
            "/ui/audit",
            ApiError::BadRequest("that page link is malformed".into()),
        );
    };
    let stream = q.stream.as_deref().filter(|s| !s.is_empty());
    let events = match crate::http::events::global_page(&state, after, EVENTS).await {
        Ok(events) => events,
        Err(e) => return failed(&viewer, "/ui/audit", e),
    };
    let checkpoint = match state.store.latest_checkpoint().await {
        Ok(c) => c,
        Err(e) => return unavailable(e),
    };
    let today = Utc::now().date_naive();
    let month_ago = today - chrono::Duration::days(30);
    let link = |after: i64| {
        let mut link = format!("/ui/audit?after={after}");
        if let Some(s) = stream {
            link.push_str(&format!("&stream={s}"));
        }
        link
    };
    page(
        Some(&viewer),
        "/ui/audit",
        "Audit",
        html! {
            section aria-labelledby="evidence" {
                h2 id="evidence" { "Evidence" }
                @match (&state.signing_key, &checkpoint) {
                    (Some(key), Some(c)) => {
                        p { "The latest signed checkpoint covers " strong { (c.tree_size) } " events. Check a bundle with "
                            code { "eucora evidence verify BUNDLE --verifier-key KEY" } ", the key being:" }
                        p { code { (key.verifier_key()) } }
                        details { summary { "The checkpoint" } pre { code { (c.note) } } }
                    }
                    (Some(_), None) => { p { "No checkpoint has been signed yet." } }
                    (None, _) => { (layout::notice("error", crate::http::evidence::NO_SIGNING_KEY)) }
                }
                form.filters method="get" action="/ui/evidence" {
                    div { label for="e-from" { "From" } input id="e-from" type="date" name="from" required value=(month_ago.to_string()); }
                    div { label for="e-to" { "To (inclusive)" } input id="e-to" type="date" name="to" required value=(today.to_string()); }
                    button type="submit" { "Download the period's bundle" }
                }
                p.meta { "A change's own bundle is on its page." }
            }
            section aria-labelledby="stream" {
                h2 id="stream" { "The global stream" }
                form.filters method="get" action="/ui/audit" {
                    input type="hidden" name="after" value=(after);
                    div { label for="a-stream" { "Stream" }
                        select id="a-stream" name="stream" {
                            option value="" { "all" }
                            @for s in ["deployment", "principal", "governance"] { option value=(s) selected[stream == Some(s)] { (s) } }
                        } }
                    button.secondary type="submit" { "Show" }
                }
                (refresh(&link(after as i64)))
                div.scroll { table {
                    thead { tr { th.num scope="col" { "Index" } th scope="col" { "Time" } th scope="col" { "Stream" } th scope="col" { "Event" } th scope="col" { "What" } } }
                    tbody { @for e in events.events.iter().filter(|e| stream.is_none_or(|s| stream_of(&e.event) == s)) { tr {
                        td.num { (e.index) }
                        td { (time(e.event.occurred_at())) }
                        td { (stream_of(&e.event)) }
                        td { @if let Some(id) = &e.deployment_id { a href={"/ui/changes/" (id)} { (e.event_type) } } @else { (e.event_type) } }
                        td { (summary(&e.event)) div.meta { "position " (e.position) } }
                    } } }
                } }
                p { @if after > 0 { a href=(link(after.saturating_sub(EVENTS) as i64)) { "Earlier events" } " " }
                    @if let Some(next) = events.next_after { a href=(link(next)) rel="next" { "Later events" } } }
            }
        },
    )
}

fn summary(event: &StreamEvent) -> Markup {
    match event.deployment() {
        Some(e) => html! { (describe::summary(e)) },
        None => html! { (event.type_name()) },
    }
}

#[derive(Debug, Deserialize)]
pub struct PeriodForm {
    from: String,
    to: String,
}

/// The evidence bundle of a period, whole days in UTC, `to` included.
pub async fn period_evidence(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<PeriodForm>,
) -> Response {
    if !viewer.may(&[Role::Auditor]) {
        return forbidden(&viewer, "/ui/audit", "auditors and admins");
    }
    let day = |d: &str| NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d").ok();
    let (Some(from), Some(to)) = (day(&q.from), day(&q.to)) else {
        return failed(
            &viewer,
            "/ui/audit",
            ApiError::BadRequest("from and to must be dates like 2026-12-31".into()),
        );
    };
    let from = from.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
    let to = to.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc() + chrono::Duration::days(1);
    if from >= to {
        return failed(
            &viewer,
            "/ui/audit",
            ApiError::Unprocessable("from must not be after to".into()),
        );
    }
    let name = format!(
        "eucora-evidence-{}-{}.tar.gz",
        from.format("%Y%m%dT%H%M%SZ"),
        to.format("%Y%m%dT%H%M%SZ")
    );
    match crate::http::evidence::bundle(&state, Scope::Period { from, to }, None, name).await {
        Ok(response) => response,
        Err(e) => failed(&viewer, "/ui/audit", e),
    }
}

/// The evidence bundle of one change's whole history.
pub async fn change_evidence(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    if !viewer.may(&[Role::Auditor]) {
        return forbidden(&viewer, "/ui/changes", "auditors and admins");
    }
    let Ok(id) = uuid::Uuid::parse_str(&id) else {
        return failed(
            &viewer,
            "/ui/changes",
            ApiError::BadRequest(format!("{id:?} is not a change id (a UUID)")),
        );
    };
    let name = format!("eucora-evidence-{id}.tar.gz");
    match crate::http::evidence::bundle(&state, Scope::Deployment(id), None, name).await {
        Ok(response) => response,
        Err(e) => failed(&viewer, "/ui/changes", e),
    }
}

pub async fn access(State(state): State<AppState>, viewer: Viewer) -> Response {
    if !viewer.may(&[Role::Admin]) {
        return forbidden(&viewer, "/ui/access", "admins");
    }
    let now = Utc::now();
    let (records, grantors) = match (
        state.store.principals().await,
        state.store.principal_grantors().await,
    ) {
        (Ok(r), Ok(g)) => (r, g),
        (Err(e), _) | (_, Err(e)) => return unavailable(e),
    };
    let rows: Vec<PrincipalOut> = records
        .into_iter()
        .map(|p| PrincipalOut::new(p, now, &grantors))
        .collect();
    page(
        Some(&viewer),
        "/ui/access",
        "Access",
        html! {
            p { "Every principal, oldest first. A revoked token stops working, and its console sessions end, on every server at once. "
                "Rotating gives a new token, shown once, for " (crate::principals::DEFAULT_TOKEN_LIFETIME.as_secs() / 86_400) " days; the old one and its sessions stop at once. "
                "New principals are made at the command line (" code { "eucora token create" } ")." }
            div.scroll { table {
                thead { tr { th scope="col" { "Subject" } th scope="col" { "Role" } th scope="col" { "State" } th scope="col" { "Expires" }
                    th scope="col" { "Granted by" } th scope="col" { "Token" } } }
                tbody { @for p in &rows { tr {
                    td { (p.subject) div.meta { code { (p.id) } } }
                    td { (p.role.as_str()) }
                    td { (p.state) }
                    td { (time(p.expires_at)) }
                    td { (p.granted_by.as_deref().unwrap_or("—")) }
                    td { @if p.state != "revoked" {
                        form.inline method="post" action={"/ui/access/" (p.id) "/rotate"} {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            button.secondary type="submit" aria-label={"Rotate the token of " (p.subject)} { "Rotate" }
                        }
                        form.inline method="post" action={"/ui/access/" (p.id) "/revoke"} {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            button.danger type="submit" aria-label={"Revoke " (p.subject)} { "Revoke" }
                        }
                    } }
                } } }
            } }
        },
    )
}

pub async fn revoke(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(refusal) = viewer.csrf_refusal(&form.csrf) {
        return refusal;
    }
    match crate::http::principals::revoke_as(&state, viewer.principal.clone(), &id).await {
        Ok(_) => Redirect::to("/ui/access").into_response(),
        Err(e) => failed(&viewer, "/ui/access", e),
    }
}

/// Gives a principal a new token (the old one, and its console sessions, stop at once) and shows
/// it once, as `eucora token rotate` prints it once.
pub async fn rotate(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(refusal) = viewer.csrf_refusal(&form.csrf) {
        return refusal;
    }
    let attempt = crate::http::refusals::Attempt {
        principal: viewer.principal.clone(),
        intent: None,
        command: "rotate_principal",
    };
    if let Err(e) = attempt.require(&state, &[Role::Admin]).await {
        return failed(&viewer, "/ui/access", e);
    }
    let Ok(id) = uuid::Uuid::parse_str(&id) else {
        return failed(
            &viewer,
            "/ui/access",
            ApiError::BadRequest(format!("{id:?} is not a principal id")),
        );
    };
    let now = Utc::now();
    let Ok(expires_at) = crate::principals::expiry(now, crate::principals::DEFAULT_TOKEN_LIFETIME)
    else {
        return failed(
            &viewer,
            "/ui/access",
            ApiError::Internal("no expiry for the new token".into()),
        );
    };
    let change = crate::store::AccessChange {
        actor: viewer.actor().clone(),
        correlation_id: crate::http::correlation::current(),
        at: now,
    };
    match crate::principals::rotate_token(&state.store, id, expires_at, &change).await {
        Ok(Ok((record, token))) => {
            tracing::info!(principal_id = %id, subject = %record.subject,
                by = %change.actor.subject, "principal's token rotated");
            page(
                Some(&viewer),
                "/ui/access",
                "New token",
                html! {
                    (layout::notice("done", &format!("The token of {} ({}) was rotated: the old one no longer works.", record.subject, record.role.as_str())))
                    p { "Give this token to its holder now: it is shown once, and only its hash is kept. It expires " (time(record.expires_at)) "." }
                    p { code.secret { (token) } }
                    p { a href="/ui/access" { "Back to Access" } }
                },
            )
        }
        Ok(Err(refused)) => failed(
            &viewer,
            "/ui/access",
            ApiError::Conflict {
                detail: refused.to_string(),
                extra: None,
            },
        ),
        Err(e) => unavailable(e),
    }
}
