//! The frame every console page shares: head, navigation by role, the signed-in principal,
//! sign-out, and small pieces of markup (times, states, rings, notices). maud escapes every
//! value it interpolates, so a name, comment or reason is always text, never markup.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use eucora_projections::event::{Ring, Role, Status};
use maud::{html, Markup, DOCTYPE};

use super::session::Viewer;

/// A page of the navigation bar: its path, its name, and who sees it.
struct NavItem {
    path: &'static str,
    name: &'static str,
    roles: Option<&'static [Role]>,
}

const NAV: [NavItem; 6] = [
    NavItem {
        path: "/ui/overview",
        name: "Overview",
        roles: None,
    },
    NavItem {
        path: "/ui/changes",
        name: "Changes",
        roles: None,
    },
    NavItem {
        path: "/ui/cab",
        name: "CAB queue",
        roles: None,
    },
    NavItem {
        path: "/ui/emergency",
        name: "Emergency reviews",
        roles: None,
    },
    NavItem {
        path: "/ui/audit",
        name: "Audit",
        roles: Some(&[Role::Auditor, Role::Admin]),
    },
    NavItem {
        path: "/ui/access",
        name: "Access",
        roles: Some(&[Role::Admin]),
    },
];

/// A store failure as the API answers it: 503 with `Retry-After`, the store did not answer.
pub fn unavailable(e: crate::store::StoreError) -> Response {
    crate::http::error::ApiError::from(e).into_response()
}

/// Security headers every console page carries: no framing, no inline script, nothing cached.
pub fn html_response(markup: Markup) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        markup.into_string(),
    )
        .into_response()
}

/// A whole page: `current` is the navigation path it belongs to.
pub fn page(viewer: Option<&Viewer>, current: &str, title: &str, main: Markup) -> Response {
    html_response(html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · EUCORA" }
                link rel="stylesheet" href="/ui/assets/console.css";
                script src="/ui/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.bar {
                    a.brand href="/ui/overview" { "EUCORA" }
                    @if let Some(viewer) = viewer {
                        nav aria-label="Console" {
                            ul {
                                @for item in &NAV {
                                    @if item.roles.is_none_or(|r| r.contains(&viewer.role())) {
                                        li {
                                            a href=(item.path)
                                                aria-current=[(item.path == current).then_some("page")] {
                                                (item.name)
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        form.signout method="post" action="/ui/sign-out" {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            span.who { (viewer.subject()) " · " (viewer.role().as_str()) }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    (main)
                }
            }
        }
    })
}

/// A time as UTC text in a `<time>` element; the script shows it in the viewer's time zone and
/// keeps UTC on hover.
pub fn time(at: DateTime<Utc>) -> Markup {
    let utc = at.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    html! {
        time datetime=(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)) title=(utc) { (utc) }
    }
}

/// How long ago `at` was, in words (`3 h 12 min`).
pub fn since(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let minutes = (now - at).num_minutes().max(0);
    match minutes {
        0 => "under a minute".into(),
        m if m < 60 => format!("{m} min"),
        m if m < 48 * 60 => format!("{} h {} min", m / 60, m % 60),
        m => format!("{} d {} h", m / 1440, (m % 1440) / 60),
    }
}

pub fn status(s: Status) -> Markup {
    let name = s.as_str();
    html! { span class={"state " (name)} { (name.replace('_', " ")) } }
}

pub fn ring(r: Ring) -> Markup {
    html! { span.ring { (r.as_str()) } }
}

/// A notice at the top of a page: what just happened, or what went wrong.
pub fn notice(kind: &str, text: &str) -> Markup {
    html! { p class={"notice " (kind)} role="status" { (text) } }
}

/// A link that reloads the page: what the live view does by itself when scripts run.
pub fn refresh(href: &str) -> Markup {
    html! { p.refresh { a href=(href) data-live="" { "Refresh" } } }
}
