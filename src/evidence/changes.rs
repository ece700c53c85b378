//! `changes.csv`: one row per change of the population, with the columns an auditor samples from
//! (who asked, who decided and when, the retrospective review, the rollout, the rollback, the
//! outcome), each documented in docs/evidence.md. RFC 4180: fields quoted when they must be,
//! lines ended by CRLF; times RFC 3339 in UTC to the second.

use chrono::{DateTime, Utc};
use eucora_projections::event::{ApprovalBasis, DeploymentEvent, Ring, Status};
use eucora_projections::intent::IntentState;

use eucora_projections::cost::amount;

use super::controls::{retro_due_at, rfc3339};
use super::format::Format;

/// The header, in column order.
pub const COLUMNS: [&str; 39] = [
    "deployment_id",
    "change_ref",
    "app_name",
    "version",
    "change_type",
    "requester",
    "requested_at",
    "risk_score",
    "cab_required",
    "cab_required_reason",
    "cab_decision",
    "cab_decided_by",
    "cab_decided_at",
    "cab_comment",
    "cab_wait_seconds",
    "approvals",
    "emergency",
    "retro_due_at",
    "retro_decided_at",
    "retro_decision",
    "retro_late",
    "first_deployed_lab",
    "first_deployed_canary",
    "first_deployed_pilot",
    "first_deployed_department",
    "first_deployed_global",
    "last_ring",
    "last_report",
    "rolled_back_at",
    "rolled_back_by",
    "rollback_reason",
    "outcome",
    "completed_at",
    "lead_time_seconds",
    "time_to_compliance_seconds",
    "events",
    "leaves",
    "cost_currency",
    "cost_total",
];
/// How many of them an evidence/v2 bundle's `changes.csv` has: all but the cost.
const COLUMNS_V2: usize = 37;

/// RFC 4180: quoted when it holds a comma, a quote or a line break; quotes doubled.
pub(super) fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

/// One line of fields, ended by CRLF.
fn push_line(out: &mut String, fields: &[String]) {
    let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
    out.push_str(&line.join(","));
    out.push_str("\r\n");
}

/// Whole seconds from `from` to `to`, as text.
fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    (to - from).num_seconds().to_string()
}

/// What became of a change: `compliant` (completed), `rolled_back`, `rejected`, `stalled` (open,
/// but held: a rollback the CAB required not done, a retrospective review overdue, or its last
/// promotion blocked by a gate), or `in_progress`.
pub fn outcome(state: &IntentState) -> &'static str {
    match state.status {
        Status::Completed => "compliant",
        Status::RolledBack => "rolled_back",
        Status::Rejected => "rejected",
        _ if state.rollback_required
            || state.retro_approval_overdue
            || state.last_promotion.as_ref().is_some_and(|p| !p.passed) =>
        {
            "stalled"
        }
        _ => "in_progress",
    }
}

/// `changes.csv` of a bundle of `format`, of the rows given (each a change's fields in
/// [`COLUMNS`] order), the header first. An evidence/v2 bundle's has no cost columns.
pub fn changes_csv<'a>(rows: impl Iterator<Item = &'a Vec<String>>, format: Format) -> String {
    let width = if format >= Format::V3 {
        COLUMNS.len()
    } else {
        COLUMNS_V2
    };
    // About 400 bytes a row: sized at once with room to spare, as in `ControlsFile::json`
    // (capacity never written is never touched).
    let mut out = String::with_capacity(1024 + rows.size_hint().0 * 640);
    let header: Vec<String> = COLUMNS[..width].iter().map(|c| c.to_string()).collect();
    push_line(&mut out, &header);
    for row in rows {
        push_line(&mut out, &row[..width.min(row.len())]);
    }
    out
}

/// The field `name` of a row in [`COLUMNS`] order ("" for a name not in it).
pub fn column<'a>(row: &'a [String], name: &str) -> &'a str {
    COLUMNS
        .iter()
        .position(|c| *c == name)
        .and_then(|i| row.get(i))
        .map_or("", String::as_str)
}

pub(super) fn row(id: &str, events: &[(u64, DeploymentEvent)]) -> Vec<String> {
    let created = events.iter().find_map(|(_, e)| match e {
        DeploymentEvent::DeploymentCreated(c) => Some(c),
        _ => None,
    });
    let state = IntentState::replay(events.iter().map(|(_, e)| e));
    let requested_at = created.map(|c| c.meta.occurred_at);
    // The CAB's decision on the request (a retrospective one is the review's, below).
    let cab = events.iter().find_map(|(_, e)| match e {
        DeploymentEvent::DeploymentApproved(a) if a.basis == ApprovalBasis::Cab => Some((
            "approved",
            a.approver.clone(),
            a.meta.occurred_at,
            a.comment.clone().unwrap_or_default(),
        )),
        DeploymentEvent::DeploymentRejected(r) if !r.retrospective => Some((
            "rejected",
            r.meta.actor.subject.clone(),
            r.meta.occurred_at,
            r.reason.clone(),
        )),
        _ => None,
    });
    let retro = events.iter().find_map(|(_, e)| match e {
        DeploymentEvent::DeploymentApproved(a) if a.basis == ApprovalBasis::CabRetrospective => {
            Some(("approved", a.meta.occurred_at))
        }
        DeploymentEvent::DeploymentRejected(r) if r.retrospective => {
            Some(("rejected", r.meta.occurred_at))
        }
        _ => None,
    });
    let emergency = events.iter().any(|(_, e)| {
        matches!(e, DeploymentEvent::DeploymentApproved(a) if a.basis == ApprovalBasis::EmergencyProvisional)
    });
    let due = emergency.then(|| retro_due_at(events)).flatten();
    let approvals: Vec<String> = events
        .iter()
        .filter_map(|(_, e)| match e {
            DeploymentEvent::DeploymentApproved(a) => {
                Some(format!("{}@{}", a.approver, rfc3339(a.meta.occurred_at)))
            }
            _ => None,
        })
        .collect();
    let first_in = |ring: Ring| {
        events
            .iter()
            .find_map(|(_, e)| match e {
                DeploymentEvent::DeploymentDeployed(d) if d.ring == ring => {
                    Some(rfc3339(d.meta.occurred_at))
                }
                _ => None,
            })
            .unwrap_or_default()
    };
    let first_report = events.iter().find_map(|(_, e)| match e {
        DeploymentEvent::DeploymentDeployed(d) => Some(d.meta.occurred_at),
        _ => None,
    });
    let last_report = events.iter().rev().find_map(|(_, e)| match e {
        DeploymentEvent::DeploymentDeployed(d) => Some(d),
        _ => None,
    });
    let rollback = events.iter().find_map(|(_, e)| match e {
        DeploymentEvent::DeploymentRolledBack(r) => Some(r),
        _ => None,
    });
    let completed_at = events.iter().find_map(|(_, e)| match e {
        DeploymentEvent::DeploymentCompleted(c) => Some(c.meta.occurred_at),
        _ => None,
    });
    let lead_from = created.map(|c| c.source_committed_at.unwrap_or(c.meta.occurred_at));
    let text = |v: Option<String>| v.unwrap_or_default();
    vec![
        id.to_string(),
        text(created.and_then(|c| c.change_ref.clone())),
        text(created.map(|c| c.app_name.clone())),
        text(created.map(|c| c.version.clone())),
        text(created.map(|c| c.change_type.as_str().to_string())),
        text(created.map(|c| c.meta.actor.subject.clone())),
        text(requested_at.map(rfc3339)),
        text(created.map(|c| c.risk.score.to_string())),
        text(state.as_ref().map(|s| s.requires_cab.to_string())),
        text(state.as_ref().and_then(IntentState::cab_reason)),
        text(cab.as_ref().map(|c| c.0.to_string())),
        text(cab.as_ref().map(|c| c.1.clone())),
        text(cab.as_ref().map(|c| rfc3339(c.2))),
        text(cab.as_ref().map(|c| c.3.clone())),
        text(
            cab.as_ref()
                .zip(requested_at)
                .map(|(c, at)| seconds(at, c.2)),
        ),
        approvals.join(";"),
        emergency.to_string(),
        text(due.map(rfc3339)),
        text(retro.map(|r| rfc3339(r.1))),
        text(retro.map(|r| r.0.to_string())),
        text(due.zip(retro).map(|(due, (_, at))| (at > due).to_string())),
        first_in(Ring::Lab),
        first_in(Ring::Canary),
        first_in(Ring::Pilot),
        first_in(Ring::Department),
        first_in(Ring::Global),
        text(last_report.map(|d| d.ring.as_str().to_string())),
        text(last_report.map(|d| format!("{}/{}/{}", d.target_devices, d.succeeded, d.failed))),
        text(rollback.map(|r| rfc3339(r.meta.occurred_at))),
        text(rollback.map(|r| r.meta.actor.subject.clone())),
        text(rollback.map(|r| r.reason.clone())),
        text(state.as_ref().map(|s| outcome(s).to_string())),
        text(completed_at.map(rfc3339)),
        text(
            lead_from
                .zip(completed_at)
                .map(|(from, to)| seconds(from, to)),
        ),
        text(
            first_report
                .zip(completed_at)
                .map(|(from, to)| seconds(from, to)),
        ),
        events.len().to_string(),
        events
            .iter()
            .map(|(i, _)| i.to_string())
            .collect::<Vec<_>>()
            .join(";"),
        text(
            state
                .as_ref()
                .and_then(|s| s.cost.currency().map(str::to_string)),
        ),
        text(
            state
                .as_ref()
                .filter(|s| s.cost.currency().is_some())
                .map(|s| amount(s.cost.total())),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use eucora_projections::event::ApprovalBasis as B;
    use eucora_projections::fixtures::Script;

    #[test]
    fn csv_fields_with_commas_or_quotes_are_quoted() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }

    /// The row of one intent, by column name.
    fn columns(events: Vec<DeploymentEvent>) -> std::collections::BTreeMap<&'static str, String> {
        let numbered: Vec<(u64, DeploymentEvent)> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| (i as u64, e))
            .collect();
        COLUMNS.into_iter().zip(row("x", &numbered)).collect()
    }

    #[test]
    fn a_rejection_says_who_why_and_how_long_it_waited() {
        let mut x = Script::new(1);
        let c = columns(vec![x.created("app", true), x.rejected(2.0)]);
        assert_eq!(c["cab_decision"], "rejected");
        assert_eq!(c["cab_decided_at"], "2026-01-01T02:00:00Z");
        assert_eq!(c["cab_wait_seconds"], "7200");
        assert!(!c["cab_comment"].is_empty(), "the rejection's reason");
        assert_eq!(c["outcome"], "rejected");
        assert_eq!(c["requested_at"], "2026-01-01T00:00:00Z");
        assert_eq!(
            c["cab_required_reason"],
            "risk score 70 is above the CAB threshold 50"
        );
    }

    #[test]
    fn an_emergency_change_shows_its_review_and_a_rollback_its_author() {
        let mut x = Script::new(1);
        let c = columns(vec![
            x.created("app", true),
            x.approved(0.0, B::EmergencyProvisional, "policy:emergency_change"),
            x.deployed(1.0, Ring::Lab, 10, false),
            x.approved(50.0, B::CabRetrospective, "carol"),
            x.rolled_back(51.0, Ring::Lab, Status::Deployed),
        ]);
        assert_eq!(c["emergency"], "true");
        assert_eq!(c["retro_due_at"], "2026-01-03T01:00:00Z");
        assert_eq!(
            (c["retro_decision"].as_str(), c["retro_late"].as_str()),
            ("approved", "true")
        );
        assert_eq!(
            c["cab_decision"], "",
            "the review is not the request's decision"
        );
        assert_eq!(c["last_ring"], "LAB");
        assert_eq!(c["rolled_back_at"], "2026-01-03T03:00:00Z");
        assert!(!c["rolled_back_by"].is_empty() && !c["rollback_reason"].is_empty());
        assert_eq!(c["outcome"], "rolled_back");
        assert_eq!(c["events"], "5");
    }

    #[test]
    fn lines_end_in_crlf_and_every_row_has_every_column() {
        let mut x = Script::new(1);
        let events: Vec<(u64, DeploymentEvent)> = vec![(0, x.created("a,b", false))];
        let text = changes_csv(std::iter::once(&row("x", &events)), Format::CURRENT);
        assert!(text.ends_with("\r\n") && !text.replace("\r\n", "").contains('\n'));
        let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
        assert_eq!(lines[0].split(',').count(), COLUMNS.len());
        assert!(lines[1].contains("\"a,b\""), "{}", lines[1]);
        // An evidence/v2 bundle's ends at `leaves`, as that release wrote it.
        let v2 = changes_csv(std::iter::once(&row("x", &events)), Format::V2);
        assert!(v2.starts_with("deployment_id,") && v2.contains(",events,leaves\r\n"));
        assert_eq!(v2.lines().nth(1).map(|l| l.split(',').count()), Some(38));
    }

    #[test]
    fn a_change_costs_its_total_in_its_currency_and_an_old_one_nothing() {
        let mut x = Script::new(1);
        let mut created = x.created("app", true);
        if let DeploymentEvent::DeploymentCreated(c) = &mut created {
            c.cost_rates = Some(Box::default());
        }
        let c = columns(vec![
            created,
            x.approved(3.0, B::Cab, "carol"),
            x.deployed(4.0, Ring::Lab, 10, true),
        ]);
        // Three hours of CAB review at 80, ten installs at 0.05.
        assert_eq!(
            (c["cost_currency"].as_str(), c["cost_total"].as_str()),
            ("EUR", "240.5")
        );
        let mut y = Script::new(2);
        let old = columns(vec![y.created("app", false)]);
        assert_eq!(
            (old["cost_currency"].as_str(), old["cost_total"].as_str()),
            ("", "")
        );
    }
}
