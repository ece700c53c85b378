//! The console's list pages: the overview, the changes with their filters, the CAB queue and the
//! emergency reviews; and the stream position the live view polls.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use eucora_projections::event::{DeploymentEvent, Ring, Role, Status};
use eucora_projections::intent::IntentState;
use maud::{html, Markup};
use serde::Deserialize;
use uuid::Uuid;

use super::layout::{self, page, refresh, ring, since, status, time, unavailable};
use super::session::Viewer;
use crate::http::AppState;
use crate::read::ListFilter;
use crate::store::RetroApproval;

/// The most rows a queue page shows.
const QUEUE: usize = 100;
/// Rows per page of the changes list.
const PAGE: usize = 50;

/// Intents `filter` keeps, oldest first, at most `limit`.
async fn queue(
    state: &AppState,
    filter: ListFilter,
    limit: usize,
) -> Result<Vec<IntentState>, Response> {
    Ok(state
        .reads
        .list(&filter, 0, limit)
        .await
        .map_err(unavailable)?
        .items)
}

pub async fn overview(State(state): State<AppState>, viewer: Viewer) -> Response {
    let now = Utc::now();
    let counts = match state.store.intent_counts().await {
        Ok(counts) => counts,
        Err(e) => return unavailable(e),
    };
    // The count is the index's; only the oldest is read.
    let oldest = match queue(&state, by_status(Status::AwaitingCab), 1).await {
        Ok(rows) => rows.into_iter().next(),
        Err(e) => return e,
    };
    let retro = match queue(&state, retro_pending(), QUEUE).await {
        Ok(rows) => rows,
        Err(e) => return e,
    };
    let deployed = match queue(&state, by_status(Status::Deployed), QUEUE).await {
        Ok(rows) => rows,
        Err(e) => return e,
    };
    let failing: Vec<&IntentState> = deployed
        .iter()
        .filter(|i| i.last_promotion.as_ref().is_some_and(|p| !p.passed))
        .collect();
    let total = |s: Status| -> i64 { counts.iter().filter(|c| c.0 == s).map(|c| c.2).sum() };
    let connectors = state
        .dispatch
        .as_ref()
        .map(|d| d.connectors())
        .unwrap_or_default();
    page(
        Some(&viewer),
        "/ui/overview",
        "Overview",
        html! {
            (refresh("/ui/overview"))
            section aria-labelledby="by-state" {
                h2 id="by-state" { "Changes by state" }
                div.cards {
                    @for s in Status::ALL {
                        a.card href={"/ui/changes?status=" (s.as_str())} {
                            strong { (total(s)) } (status(s))
                        }
                    }
                }
            }
            section aria-labelledby="by-ring" {
                h2 id="by-ring" { "Open changes by current ring" }
                div.scroll { table {
                    thead { tr { th scope="col" { "Ring" }
                        @for s in [Status::AwaitingCab, Status::Approved, Status::Deployed] { th.num scope="col" { (status(s)) } } } }
                    tbody { @for r in Ring::ALL { tr {
                        th scope="row" { (ring(r)) }
                        @for s in [Status::AwaitingCab, Status::Approved, Status::Deployed] {
                            td.num { (counts.iter().filter(|c| c.0 == s && c.1 == r).map(|c| c.2).sum::<i64>()) }
                        }
                    } } }
                } }
            }
            section aria-labelledby="cab" {
                h2 id="cab" { "Awaiting the CAB" }
                @if let Some(oldest) = &oldest {
                    p { strong { (total(Status::AwaitingCab)) } " changes; the oldest has waited "
                        strong { (since(oldest.created_at, now)) } " ("
                        a href={"/ui/changes/" (oldest.id)} { (oldest.app_name) " " (oldest.version) } ")." }
                    p { a href="/ui/cab" { "Open the CAB queue" } }
                } @else { p { "Nothing awaits the CAB." } }
            }
            section aria-labelledby="retro" {
                h2 id="retro" { "Emergency changes awaiting retrospective review" }
                @if retro.is_empty() { p { "None." } } @else { (retro_table(&sort_retro(retro), now)) }
            }
            section aria-labelledby="gates" {
                h2 id="gates" { "Gates failing" }
                @if failing.is_empty() { p { "No deployed change's last promotion was blocked." } } @else {
                    ul { @for i in &failing { li {
                        a href={"/ui/changes/" (i.id)} { (i.app_name) " " (i.version) } ": blocked by "
                        @if let Some(p) = &i.last_promotion {
                            (p.blocked_by().iter().map(|g| g.as_str()).collect::<Vec<_>>().join(", "))
                            " (" (p.from_ring.as_str()) " → " (p.to_ring.as_str()) ")"
                        }
                    } } }
                }
            }
            section aria-labelledby="connectors" {
                h2 id="connectors" { "Connectors" }
                @if connectors.is_empty() { p { "No connector is configured: rollout results are reported by hand." } } @else {
                    ul { @for c in &connectors { li {
                        code { (c.connector_type) } ": "
                        @if c.healthy { span.pass { "healthy" } } @else { span.fail { "unhealthy" } }
                    } } }
                }
            }
        },
    )
}

fn by_status(s: Status) -> ListFilter {
    ListFilter {
        status: Some(s),
        ..ListFilter::default()
    }
}

fn retro_pending() -> ListFilter {
    ListFilter {
        retro_approval: Some(RetroApproval::Pending),
        ..ListFilter::default()
    }
}

/// Overdue first, then by due time.
fn sort_retro(mut rows: Vec<IntentState>) -> Vec<IntentState> {
    rows.sort_by_key(|i| (!i.retro_approval_overdue, i.retro_approval_due_at));
    rows
}

fn retro_table(rows: &[IntentState], now: DateTime<Utc>) -> Markup {
    html! {
        div.scroll { table {
            thead { tr { th scope="col" { "Change" } th scope="col" { "State" } th scope="col" { "Due" } th scope="col" { "Requested by" } } }
            tbody { @for i in rows { tr {
                td { a href={"/ui/changes/" (i.id)} { (i.app_name) " " (i.version) } }
                td { (status(i.status)) " in " (ring(i.current_ring)) }
                td {
                    @match i.retro_approval_due_at {
                        Some(due) => {
                            (time(due))
                            @if i.retro_approval_overdue || due < now { " " span.overdue { "overdue" } }
                        }
                        None => { "from its first rollout report" }
                    }
                }
                td { (i.requested_by) }
            } } }
        } }
    }
}

/// The changes list's filters, as the form sends them (empty fields mean no filter).
#[derive(Debug, Default, Deserialize)]
pub struct ChangesQuery {
    status: Option<String>,
    app: Option<String>,
    ring: Option<String>,
    requester: Option<String>,
    change_ref: Option<String>,
    risk_above: Option<String>,
    from: Option<String>,
    to: Option<String>,
    before: Option<String>,
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl ChangesQuery {
    /// The filter, or what is wrong with the form, in words.
    fn filter(&self) -> Result<(ListFilter, i64), String> {
        let date = |v: &Option<String>, name: &str| {
            given(v)
                .map(|d| {
                    NaiveDate::parse_from_str(d, "%Y-%m-%d")
                        .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
                        .map_err(|_| format!("{name} must be a date like 2026-12-31"))
                })
                .transpose()
        };
        let filter = ListFilter {
            status: given(&self.status)
                .map(|s| Status::parse(s).ok_or(format!("no state is called {s:?}")))
                .transpose()?,
            ring: given(&self.ring)
                .map(|r| Ring::parse(r).ok_or(format!("no ring is called {r:?}")))
                .transpose()?,
            app_name: given(&self.app).map(str::to_string),
            requested_by: given(&self.requester).map(str::to_string),
            change_ref: given(&self.change_ref).map(str::to_string),
            risk_above: given(&self.risk_above)
                .map(|r| {
                    r.parse::<u32>().ok().filter(|r| *r <= 100).ok_or(format!(
                        "risk above must be a whole number from 0 to 100, not {r:?}"
                    ))
                })
                .transpose()?,
            created_from: date(&self.from, "created from")?,
            // The whole "to" day is included.
            created_before: date(&self.to, "created to")?.map(|d| d + chrono::Duration::days(1)),
            newest_first: true,
            ..ListFilter::default()
        };
        let before = given(&self.before)
            .map(|b| {
                b.parse::<i64>()
                    .map_err(|_| "that page link is malformed".to_string())
            })
            .transpose()?
            .unwrap_or(i64::MAX);
        Ok((filter, before))
    }

    /// This query's link with `before` moved to the next page.
    fn next(&self, before: i64) -> String {
        let mut link = form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("status", &self.status),
            ("app", &self.app),
            ("ring", &self.ring),
            ("requester", &self.requester),
            ("change_ref", &self.change_ref),
            ("risk_above", &self.risk_above),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if let Some(v) = given(value) {
                link.append_pair(name, v);
            }
        }
        link.append_pair("before", &before.to_string());
        format!("/ui/changes?{}", link.finish())
    }
}

pub async fn changes(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<ChangesQuery>,
) -> Response {
    let (rows, next, problem) = match q.filter() {
        Ok((filter, before)) => match state.reads.list(&filter, before, PAGE).await {
            Ok(page) => (page.items, page.next_cursor, None),
            Err(e) => return unavailable(e),
        },
        Err(problem) => (vec![], None, Some(problem)),
    };
    let value = |v: &Option<String>| given(v).unwrap_or_default().to_string();
    let mut response = page(
        Some(&viewer),
        "/ui/changes",
        "Changes",
        html! {
            form.filters method="get" action="/ui/changes" {
                div { label for="f-status" { "State" }
                    select id="f-status" name="status" {
                        option value="" { "any" }
                        @for s in Status::ALL { option value=(s.as_str()) selected[given(&q.status) == Some(s.as_str())] { (s.as_str().replace('_', " ")) } }
                    } }
                div { label for="f-ring" { "Ring" }
                    select id="f-ring" name="ring" {
                        option value="" { "any" }
                        @for r in Ring::ALL { option value=(r.as_str()) selected[given(&q.ring) == Some(r.as_str())] { (r.as_str()) } }
                    } }
                div { label for="f-app" { "App" } input id="f-app" name="app" value=(value(&q.app)); }
                div { label for="f-req" { "Requester" } input id="f-req" name="requester" value=(value(&q.requester)); }
                div { label for="f-ref" { "Change ref" } input id="f-ref" name="change_ref" value=(value(&q.change_ref)); }
                div { label for="f-risk" { "Risk above" } input id="f-risk" name="risk_above" inputmode="numeric" size="4" value=(value(&q.risk_above)); }
                div { label for="f-from" { "Created from" } input id="f-from" type="date" name="from" value=(value(&q.from)); }
                div { label for="f-to" { "to" } input id="f-to" type="date" name="to" value=(value(&q.to)); }
                button type="submit" { "Filter" }
                a href="/ui/changes" { "Clear" }
            }
            @if let Some(problem) = &problem { (layout::notice("error", problem)) }
            (refresh("/ui/changes"))
            (change_table(&rows))
            @if let Some(next) = next { p { a href=(q.next(next)) rel="next" { "Older changes" } } }
        },
    );
    if problem.is_some() {
        *response.status_mut() = axum::http::StatusCode::BAD_REQUEST;
    }
    response
}

fn change_table(rows: &[IntentState]) -> Markup {
    html! {
        @if rows.is_empty() { p { "No change matches." } } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Change" } th scope="col" { "State" } th scope="col" { "Ring" }
                    th.num scope="col" { "Risk" } th scope="col" { "Requested by" } th scope="col" { "Created" } th scope="col" { "Change ref" } } }
                tbody { @for i in rows { tr {
                    td { a href={"/ui/changes/" (i.id)} { (i.app_name) " " (i.version) } }
                    td { (status(i.status)) }
                    td { (ring(i.current_ring)) " → " (ring(i.target_ring)) }
                    td.num { (i.risk_score) }
                    td { (i.requested_by) }
                    td { (time(i.created_at)) }
                    td { @if let Some(r) = &i.change_ref { code { (r) } } }
                } } }
            } }
        }
    }
}

pub async fn cab(State(state): State<AppState>, viewer: Viewer) -> Response {
    let now = Utc::now();
    let rows = match queue(&state, by_status(Status::AwaitingCab), QUEUE).await {
        Ok(rows) => rows,
        Err(e) => return e,
    };
    let ids: Vec<Uuid> = rows.iter().map(|i| i.id).collect();
    let created: HashMap<Uuid, DeploymentEvent> = match state.store.creation_events(&ids).await {
        Ok(created) => created,
        Err(e) => return unavailable(e),
    };
    let decides = viewer.may(&[Role::CabApprover]);
    page(
        Some(&viewer),
        "/ui/cab",
        "CAB queue",
        html! {
            p { "Changes awaiting the CAB, the longest waiting first." }
            @if rows.len() == QUEUE {
                p.meta { "The " (QUEUE) " longest waiting are shown; the rest are on "
                    a href="/ui/changes?status=awaiting_cab" { "Changes" } "." }
            }
            (refresh("/ui/cab"))
            @if rows.is_empty() { p { "Nothing awaits the CAB." } } @else {
                div.scroll { table {
                    thead { tr { th scope="col" { "Change" } th scope="col" { "Waiting" } th.num scope="col" { "Risk" }
                        th scope="col" { "Why the CAB" } th scope="col" { "Top factors" }
                        @if decides { th scope="col" { "Decide" } } } }
                    tbody { @for i in &rows { tr {
                        td { a href={"/ui/changes/" (i.id)} { (i.app_name) " " (i.version) }
                            div.meta { "by " (i.requested_by) } }
                        td { (since(i.created_at, now)) div.meta { (time(i.created_at)) } }
                        td.num { (i.risk_score) div.meta { (i.risk_threshold.words()) } }
                        td { (i.cab_required_reason.as_deref().unwrap_or("—")) }
                        td { (top_factors(created.get(&i.id))) }
                        @if decides { td { (super::change::decide_forms(&viewer, i, true)) } }
                    } } }
                } }
            }
        },
    )
}

/// The three factors that contributed most to the risk score.
fn top_factors(created: Option<&DeploymentEvent>) -> Markup {
    let Some(DeploymentEvent::DeploymentCreated(c)) = created else {
        return html! { "—" };
    };
    let mut factors: Vec<_> = c.risk.factors.iter().collect();
    factors.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
    html! {
        ul { @for f in factors.iter().take(3) {
            li { code { (f.factor) } " " (format!("{:.1}", f.contribution)) }
        } }
    }
}

pub async fn emergency(State(state): State<AppState>, viewer: Viewer) -> Response {
    let rows = match queue(&state, retro_pending(), QUEUE).await {
        Ok(rows) => sort_retro(rows),
        Err(e) => return e,
    };
    page(
        Some(&viewer),
        "/ui/emergency",
        "Emergency reviews",
        html! {
            p { "Emergency changes cleared to deploy before the CAB decided, awaiting its retrospective decision; overdue ones first." }
            (refresh("/ui/emergency"))
            @if rows.is_empty() { p { "None awaits review." } } @else { (retro_table(&rows, Utc::now())) }
        },
    )
}

/// How many events the Merkle log has taken (within a second of their commit): the live view
/// redraws a page when it moves. Read from memory, so a page polling every second costs the
/// store nothing beyond its session's lookup.
pub async fn live(State(state): State<AppState>, _viewer: Viewer) -> Response {
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        state.log.size().to_string(),
    )
        .into_response()
}
