//! Predictive alerts as code: the Prometheus rules that warn before a limit is passed, and their
//! promtool tests, generated from the policy's `[forecast]` table (`eucora forecast rules`,
//! `eucora forecast tests`) as the SLO rules are from `[slo]`. `prometheus/rules/forecast.yml`
//! and `prometheus/tests/forecast_test.yml` are this module's output for the default policy; a
//! test holds them to it.
//!
//! - `RolloutForecastToMissCompliance`: the projection's own forecast
//!   (`deployment_rollouts_forecast_to_miss`, from each rollout's reports) says a ring will not
//!   be compliant by its deadline.
//! - `CabQueueForecastOverLimit`, `ConnectorOutboxForecastOverLimit`,
//!   `RetroReviewBacklogForecastOverLimit`: a queue's trend over `trend_window`, extrapolated
//!   `horizon` ahead (`predict_linear`), passes its limit.
//! - `SLOErrorBudgetExhaustionForecast`: at the last day's burn rate, what is left of an SLO's
//!   30-day error budget is spent within `budget_horizon`.

use std::fmt::Write;

use crate::domain::policy::duration_text;
use crate::domain::policy::SLO_PERIOD_DAYS as PERIOD_DAYS;
use crate::domain::Policy;
use crate::slo::expected_alert;

/// A queue whose trend is watched.
struct Queue {
    alert: &'static str,
    /// The recorded series the trend is taken of, and how it is recorded (`None`: a rule of
    /// recording.yml).
    series: &'static str,
    record: Option<&'static str>,
    limit: u64,
    what: &'static str,
    /// A raw series the tests feed, which the recorded one is computed from.
    input: &'static str,
}

fn queues(policy: &Policy) -> [Queue; 3] {
    let f = &policy.forecast;
    [
        Queue {
            alert: "CabQueueForecastOverLimit",
            series: "eucora:cab_backlog:sum",
            record: None,
            limit: f.cab_queue_limit,
            what: "intents awaiting a CAB decision",
            input: "deployments_in_state{job=\"eucora\",instance=\"a\",state=\"awaiting_cab\",ring=\"LAB\"}",
        },
        Queue {
            alert: "ConnectorOutboxForecastOverLimit",
            series: "eucora:connector_outbox_backlog:max",
            record: Some("max(connector_outbox_backlog)"),
            limit: f.outbox_limit,
            what: "connector actions queued and not settled",
            input: "connector_outbox_backlog{job=\"eucora\",instance=\"a\"}",
        },
        Queue {
            alert: "RetroReviewBacklogForecastOverLimit",
            series: "eucora:retro_review_backlog:sum",
            record: Some(
                "sum(max without (instance) (emergency_changes_awaiting_retro_approval))",
            ),
            limit: f.retro_backlog_limit,
            what: "emergency changes awaiting their retrospective review",
            input: "emergency_changes_awaiting_retro_approval{job=\"eucora\",instance=\"a\",overdue=\"false\"}",
        },
    ]
}

/// How long a queue's forecast must hold before its alert fires, in minutes.
const QUEUE_FOR_MINUTES: i64 = 15;

fn runbook(out: &mut String, alert: &str, pad: usize) {
    let _ = writeln!(
        out,
        "{}runbook_url: '{{{{ with $externalLabels.runbook_base }}}}{{{{ . }}}}{{{{ else }}}}http://localhost:8000/docs/runbook{{{{ end }}}}#{}'",
        " ".repeat(pad),
        alert.to_lowercase()
    );
}

/// The budget forecast's threshold, remaining < burn rate × horizon ÷ period: the horizon and
/// the period in seconds.
fn budget_share(policy: &Policy) -> (i64, i64) {
    (
        policy.forecast.budget_horizon.num_seconds(),
        i64::from(PERIOD_DAYS) * 86_400,
    )
}

fn queue_text(q: &Queue, policy: &Policy) -> (String, String) {
    let f = &policy.forecast;
    (
        format!(
            "Forecast: {} will pass {} within {}",
            q.what,
            q.limit,
            duration_text(f.horizon)
        ),
        format!(
            "At their trend over the last {}, the {} will pass the limit of {} (policy forecast) within {}.",
            duration_text(f.trend_window),
            q.what,
            q.limit,
            duration_text(f.horizon)
        ),
    )
}

fn rollout_text() -> (&'static str, &'static str) {
    (
        "Rollouts in {{ $labels.ring }} are forecast to miss their time to compliance",
        "Extrapolated at their install rate so far, these rollouts reach the ring's success threshold after their time-to-compliance deadline, or never.",
    )
}

fn budget_text(policy: &Policy) -> (String, String) {
    let h = duration_text(policy.forecast.budget_horizon);
    (
        format!("{{{{ $labels.sloth_slo }}}}: the error budget is forecast to run out within {h}"),
        format!(
            "At the last day's burn rate, what is left of the {PERIOD_DAYS}-day error budget is spent within {h} (policy forecast.budget_horizon)."
        ),
    )
}

/// `prometheus/rules/forecast.yml` for `policy`.
pub fn rules(policy: &Policy) -> String {
    let f = &policy.forecast;
    let mut out = String::new();
    out.push_str(
        "# Generated by `eucora forecast rules` from the policy; do not edit. Regenerate after\n\
         # changing the policy's [forecast] table (docs/observability.md, \"Forecasts\").\n\
         # Reads recording.yml's eucora:cab_backlog:sum and slo.yml's SLO series.\n\
         groups:\n  - name: forecast\n    rules:\n",
    );
    for q in queues(policy) {
        if let Some(expr) = q.record {
            let _ = writeln!(out, "      - record: {}\n        expr: {expr}\n", q.series);
        }
    }
    let (summary, description) = rollout_text();
    out.push_str(
        "      - alert: RolloutForecastToMissCompliance\n        \
         expr: sum by (ring) (max without (instance) (deployment_rollouts_forecast_to_miss)) > 0\n        \
         for: 0m\n        labels:\n          severity: warning\n        annotations:\n",
    );
    let _ = writeln!(out, "          summary: \"{summary}\"");
    let _ = writeln!(out, "          description: \"{description}\"");
    runbook(&mut out, "RolloutForecastToMissCompliance", 10);
    out.push('\n');
    for q in queues(policy) {
        let (summary, description) = queue_text(&q, policy);
        let _ = writeln!(out, "      - alert: {}", q.alert);
        let _ = writeln!(
            out,
            "        expr: predict_linear({}[{}], {}) > {}",
            q.series,
            duration_text(f.trend_window),
            f.horizon.num_seconds(),
            q.limit
        );
        let _ = writeln!(
            out,
            "        for: {QUEUE_FOR_MINUTES}m\n        labels:\n          severity: warning\n        annotations:"
        );
        let _ = writeln!(out, "          summary: \"{summary}\"");
        let _ = writeln!(out, "          description: \"{description}\"");
        runbook(&mut out, q.alert, 10);
        out.push('\n');
    }
    let (summary, description) = budget_text(policy);
    let (horizon, period) = budget_share(policy);
    let on = "on (sloth_id, sloth_slo, sloth_service) group_left";
    let _ = writeln!(
        out,
        "      - alert: SLOErrorBudgetExhaustionForecast\n        expr: |\n          \
         slo:period_error_budget_remaining:ratio\n          <\n          \
         (max without (sloth_window) (slo:sli_error:ratio_rate1d) / {on} slo:error_budget:ratio) * ({horizon} / {period})\n        \
         for: 1h\n        labels:\n          severity: warning\n        annotations:"
    );
    let _ = writeln!(out, "          summary: \"{summary}\"");
    let _ = writeln!(out, "          description: \"{description}\"");
    runbook(&mut out, "SLOErrorBudgetExhaustionForecast", 10);
    out
}

/// `prometheus/tests/forecast_test.yml` for `policy`: each alert just inside (fires) and just
/// outside (does not) its threshold.
pub fn tests(policy: &Policy) -> String {
    let f = &policy.forecast;
    let mut out = String::new();
    out.push_str(
        "# Generated by `eucora forecast tests` from the policy; do not edit.\n\
         # `promtool test rules prometheus/tests/forecast_test.yml`: every predictive alert just\n\
         # inside (fires) and just outside (does not) its threshold.\n\
         rule_files:\n  - ../rules/recording.yml\n  - ../rules/slo.yml\n  - ../rules/forecast.yml\n\n\
         # Every five minutes: the budget's rules read 30-day windows, which makes each step\n\
         # costly; the queues' windows hold enough samples at that step for an exact trend.\n\
         evaluation_interval: 5m\n\ntests:\n",
    );
    let expected = |out: &mut String,
                    alert: &str,
                    labels: &[(&str, String)],
                    summary: &str,
                    description: &str| {
        let mut lines = String::from("              severity: warning\n");
        for (k, v) in labels {
            let _ = writeln!(lines, "              {k}: {v}");
        }
        expected_alert(out, alert, &lines, summary, description);
    };

    // The projection's forecast: two replicas say the same; an hour of none, then two.
    let (summary, description) = rollout_text();
    out.push_str(
        "  - name: \"rollouts forecast to miss: none, then two in CANARY (counted once across replicas)\"\n    \
         interval: 1m\n    input_series:\n",
    );
    for instance in ["a", "b"] {
        let _ = writeln!(
            out,
            "      - series: 'deployment_rollouts_forecast_to_miss{{job=\"eucora\",instance=\"{instance}\",ring=\"CANARY\"}}'\n        values: \"0x30 2x30\""
        );
    }
    out.push_str("    alert_rule_test:\n");
    out.push_str("      - alertname: RolloutForecastToMissCompliance\n        eval_time: 20m\n        exp_alerts: []\n");
    out.push_str("      - alertname: RolloutForecastToMissCompliance\n        eval_time: 45m\n");
    expected(
        &mut out,
        "RolloutForecastToMissCompliance",
        &[("ring", "CANARY".into())],
        &summary.replace("{{ $labels.ring }}", "CANARY"),
        description,
    );
    out.push('\n');

    // Each queue rises steadily from 0, so that `horizon` ahead it stands at 110 % of its limit
    // (fires) or 90 % (does not), read once the window is full and the alert has held its time.
    let window = f.trend_window.num_minutes();
    let ahead = f.horizon.num_minutes();
    let at = window + QUEUE_FOR_MINUTES + 180;
    for q in queues(policy) {
        for (inside, scale) in [(true, 1.1), (false, 0.9)] {
            let slope = q.limit as f64 * scale / (at + ahead) as f64;
            let _ = writeln!(
                out,
                "  - name: \"{}: {} % of the limit {} ahead: {}\"",
                q.alert,
                (scale * 100.0).round(),
                duration_text(f.horizon),
                if inside { "fires" } else { "does not fire" }
            );
            out.push_str("    interval: 1m\n    input_series:\n");
            let _ = writeln!(
                out,
                "      - series: '{}'\n        values: \"0+{slope}x{at}\"",
                q.input
            );
            out.push_str("    alert_rule_test:\n");
            let _ = writeln!(
                out,
                "      - alertname: {}\n        eval_time: {at}m",
                q.alert
            );
            if inside {
                let (summary, description) = queue_text(&q, policy);
                expected(&mut out, q.alert, &[], &summary, &description);
            } else {
                out.push_str("        exp_alerts: []\n");
            }
            out.push('\n');
        }
    }

    // The budget: a steady share of bad API responses for a day and two hours, at a burn rate
    // 2 % above (fires) or below (does not) the one that spends what is left within the horizon:
    // remaining = 1 - b, spent in the horizon = b × share, so b = 1 / (1 + share).
    let objective = policy.slo.api_availability;
    let (horizon, period) = budget_share(policy);
    let threshold = 1.0 / (1.0 + horizon as f64 / period as f64);
    let minutes = 26 * 60;
    let (summary, description) = budget_text(policy);
    for (inside, scale) in [(true, 1.02), (false, 0.98)] {
        let bad = 1000.0 * threshold * scale * (1.0 - objective);
        let _ = writeln!(
            out,
            "  - name: \"SLOErrorBudgetExhaustionForecast: api-availability burning at {} % of the rate that spends the rest within {}: {}\"",
            (scale * 100.0).round(),
            duration_text(f.budget_horizon),
            if inside { "fires" } else { "does not fire" }
        );
        out.push_str("    interval: 1m\n    input_series:\n");
        let route = "job=\"eucora\",instance=\"a\",http_request_method=\"GET\",http_route=\"/api/v1/deployments\"";
        let _ = writeln!(
            out,
            "      - series: 'http_server_request_duration_seconds_count{{{route},http_response_status_code=\"200\"}}'\n        values: \"0+{}x{minutes}\"",
            1000.0 - bad
        );
        let _ = writeln!(
            out,
            "      - series: 'http_server_request_duration_seconds_count{{{route},http_response_status_code=\"503\"}}'\n        values: \"0+{bad}x{minutes}\""
        );
        out.push_str("    alert_rule_test:\n");
        let _ = writeln!(
            out,
            "      - alertname: SLOErrorBudgetExhaustionForecast\n        eval_time: {minutes}m"
        );
        if inside {
            expected(
                &mut out,
                "SLOErrorBudgetExhaustionForecast",
                &[
                    ("sloth_id", "eucora-api-availability".into()),
                    ("sloth_service", "eucora".into()),
                    ("sloth_slo", "api-availability".into()),
                ],
                &summary.replace("{{ $labels.sloth_slo }}", "api-availability"),
                &description,
            );
        } else {
            out.push_str("        exp_alerts: []\n");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_horizons_follow_the_policy_file() {
        let policy = Policy::from_toml(
            "[forecast]\ntrend_window = \"2h\"\nhorizon = \"90m\"\ncab_queue_limit = 7\nbudget_horizon = \"3d\"",
        )
        .unwrap();
        let yaml = rules(&policy);
        assert!(
            yaml.contains("predict_linear(eucora:cab_backlog:sum[2h], 5400) > 7"),
            "{yaml}"
        );
        assert!(
            yaml.contains("slo:error_budget:ratio) * (259200 / 2592000)\n"),
            "{yaml}"
        );
        assert!(yaml.contains("within 90m"));
        let tests = tests(&policy);
        assert!(tests.contains("eval_time: 315m"), "{tests}");
    }
}
