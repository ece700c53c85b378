//! SLOs as code: the Prometheus recording rules, burn-rate alerts and their promtool tests,
//! generated from the policy (`eucora slo rules`, `eucora slo tests`), so that no threshold is
//! copied into YAML by hand. `prometheus/rules/slo.yml` and `prometheus/tests/slo_test.yml` are
//! this module's output for the default policy; a test holds them to it.
//!
//! Three SLOs over a 30-day window: API availability (no 5xx), API latency (answered within the
//! policy's `slo.api_latency`), and ring time to compliance (compliant within the ring's and site
//! class's `time_to_compliance`), the last per ring and site class.
//!
//! Names follow Sloth's convention: `slo:sli_error:ratio_rate<window>` (the share of bad events
//! over the window), `slo:objective:ratio`, `slo:error_budget:ratio`, `slo:time_period:days`,
//! `slo:current_burn_rate:ratio`, `slo:period_burn_rate:ratio` and
//! `slo:period_error_budget_remaining:ratio`, labelled `sloth_service`, `sloth_slo`, `sloth_id`
//! (and `sloth_window` on the ratios), so Sloth's own dashboards read them too.
//!
//! Alerts are the SRE workbook's multi-window, multi-burn-rate recipe: a page when 2 % of the
//! budget burns in 1 h (checked over 5 m as well) or 5 % in 6 h (and 30 m); a ticket when 10 %
//! burns in 1 d (and 2 h) or in 3 d (and 6 h).

use std::fmt::Write;

use eucora_projections::event::{Ring, SiteClass};
use eucora_projections::metrics::DURATION_BUCKETS;

use crate::domain::Policy;
use crate::telemetry::HTTP_BUCKETS;

/// The days an objective is measured over.
pub use crate::domain::policy::SLO_PERIOD_DAYS as PERIOD_DAYS;

/// One burn-rate condition: the share of the period's budget that may burn in the long window,
/// the long and short windows, and the burn rate that spends it (share × period ÷ long window).
pub struct Burn {
    pub severity: &'static str,
    pub budget_share: f64,
    pub long: &'static str,
    pub long_minutes: u32,
    pub short: &'static str,
    pub short_minutes: u32,
    pub factor: f64,
}

/// The workbook's four conditions; `factor` is written out and checked against the others in a
/// test, so the YAML shows 14.4 rather than 14.399999999999999.
pub const BURNS: [Burn; 4] = [
    Burn {
        severity: "page",
        budget_share: 0.02,
        long: "1h",
        long_minutes: 60,
        short: "5m",
        short_minutes: 5,
        factor: 14.4,
    },
    Burn {
        severity: "page",
        budget_share: 0.05,
        long: "6h",
        long_minutes: 360,
        short: "30m",
        short_minutes: 30,
        factor: 6.0,
    },
    Burn {
        severity: "ticket",
        budget_share: 0.10,
        long: "1d",
        long_minutes: 1440,
        short: "2h",
        short_minutes: 120,
        factor: 3.0,
    },
    Burn {
        severity: "ticket",
        budget_share: 0.10,
        long: "3d",
        long_minutes: 4320,
        short: "6h",
        short_minutes: 360,
        factor: 1.0,
    },
];

/// Every window a ratio is recorded over: the alerts' and the period's.
const WINDOWS: [&str; 8] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"];

/// One SLO and how its bad-event ratio is computed.
struct Slo {
    /// `sloth_slo`.
    name: &'static str,
    /// The alerts' name stem: `SLO<stem>Page`, `SLO<stem>Ticket`.
    stem: &'static str,
    title: &'static str,
    objective: f64,
    /// What a good event is, for the alerts' descriptions.
    good: String,
    /// The ratio of bad events over a window (`{W}` stands for it).
    errors: String,
    /// Labels the SLO is split by, besides its own.
    by: &'static [&'static str],
    /// What the tests feed the rules: a counter of good events, a second counter (series
    /// selectors with labels), and the labels an alert of them carries.
    good_series: String,
    second_series: (Second, String),
    alert_labels: Vec<(&'static str, String)>,
}

/// What a test's second counter counts beside the good events.
enum Second {
    /// The bad events (5xx responses, a series of their own).
    Bad,
    /// Every event (a histogram's `_count`).
    Total,
}

/// `{v}` with no trailing zeros, as Prometheus writes a bucket bound (`0.5`, `14400`).
fn number(v: f64) -> String {
    format!("{v}")
}

/// The bucket of `buckets` at or below `seconds`, if any.
fn bucket_at_or_below(buckets: &[f64], seconds: f64) -> Option<f64> {
    buckets.iter().rev().find(|b| **b <= seconds).copied()
}

fn slos(policy: &Policy) -> Result<(Vec<Slo>, Vec<String>), String> {
    let mut notes = Vec::new();
    let latency = policy.slo.api_latency.num_milliseconds() as f64 / 1000.0;
    if !HTTP_BUCKETS.contains(&latency) {
        return Err(format!(
            "slo.api_latency {} s is not a bucket bound of http_server_request_duration_seconds \
             ({} s): choose one of them",
            number(latency),
            HTTP_BUCKETS
                .iter()
                .map(|b| number(*b))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let requests = "http_server_request_duration_seconds";
    let availability = Slo {
        name: "api-availability",
        stem: "ApiAvailability",
        title: "API availability",
        objective: policy.slo.api_availability,
        good: "API requests answered without a 5xx".into(),
        errors: format!(
            "(\n    sum(rate({requests}_count{{http_response_status_code=~\"5..\"}}[{{W}}]))\n  or\n    sum(rate({requests}_count[{{W}}])) * 0\n)\n/\nsum(rate({requests}_count[{{W}}]))"
        ),
        by: &[],
        good_series: format!(
            "{requests}_count{{job=\"eucora\",instance=\"a\",http_request_method=\"GET\",http_route=\"/api/v1/deployments\",http_response_status_code=\"200\"}}"
        ),
        second_series: (
            Second::Bad,
            format!(
                "{requests}_count{{job=\"eucora\",instance=\"a\",http_request_method=\"GET\",http_route=\"/api/v1/deployments\",http_response_status_code=\"503\"}}"
            ),
        ),
        alert_labels: vec![],
    };
    let le = number(latency);
    let fast = Slo {
        name: "api-latency",
        stem: "ApiLatency",
        title: "API latency",
        objective: policy.slo.api_latency_objective,
        good: format!("API requests answered within {le} s"),
        errors: format!(
            "1 - (\n    sum(rate({requests}_bucket{{le=\"{le}\"}}[{{W}}]))\n  /\n    sum(rate({requests}_count[{{W}}]))\n)"
        ),
        by: &[],
        good_series: format!(
            "{requests}_bucket{{job=\"eucora\",instance=\"a\",http_request_method=\"GET\",http_route=\"/api/v1/deployments\",http_response_status_code=\"200\",le=\"{le}\"}}"
        ),
        second_series: (Second::Total, format!(
            "{requests}_count{{job=\"eucora\",instance=\"a\",http_request_method=\"GET\",http_route=\"/api/v1/deployments\",http_response_status_code=\"200\"}}"
        )),
        alert_labels: vec![],
    };
    let ttc = "deployment_time_to_compliance_seconds";
    let mut within = Vec::new();
    for ring in Ring::ALL {
        for site in [
            SiteClass::Online,
            SiteClass::Intermittent,
            SiteClass::AirGapped,
        ] {
            let bound = policy.ring(ring).time_to_compliance(site).num_seconds() as f64;
            let bucket = bucket_at_or_below(DURATION_BUCKETS, bound).ok_or_else(|| {
                format!(
                    "rings.{}.time_to_compliance.{} is {bound} s, below the smallest bucket of \
                     {ttc} ({} s)",
                    ring.as_str(),
                    site.as_str(),
                    number(DURATION_BUCKETS[0])
                )
            })?;
            if bucket != bound {
                notes.push(format!(
                    "{} {}: the policy's {bound} s is measured at the bucket below it, {} s \
                     (stricter)",
                    ring.as_str(),
                    site.as_str(),
                    number(bucket)
                ));
            }
            within.push(format!(
                "sum by (ring, site_class) (max without (instance) (rate({ttc}_bucket{{ring=\"{}\", site_class=\"{}\", le=\"{}\"}}[{{W}}])))",
                ring.as_str(),
                site.as_str(),
                number(bucket)
            ));
        }
    }
    let lab_online = number(
        bucket_at_or_below(
            DURATION_BUCKETS,
            policy
                .ring(Ring::Lab)
                .time_to_compliance(SiteClass::Online)
                .num_seconds() as f64,
        )
        .unwrap_or(DURATION_BUCKETS[0]),
    );
    let compliance = Slo {
        name: "time-to-compliance",
        stem: "TimeToCompliance",
        title: "Ring time to compliance",
        objective: policy.slo.time_to_compliance_objective,
        good: "rollouts compliant within their ring's and site class's time to compliance".into(),
        errors: format!(
            "1 - (\n    (\n        {}\n    )\n  /\n    sum by (ring, site_class) (max without (instance) (rate({ttc}_count[{{W}}])))\n)",
            within.join("\n      or\n        ")
        ),
        by: &["ring", "site_class"],
        good_series: format!(
            "{ttc}_bucket{{job=\"eucora\",instance=\"a\",ring=\"LAB\",site_class=\"online\",le=\"{lab_online}\"}}"
        ),
        second_series: (Second::Total, format!(
            "{ttc}_count{{job=\"eucora\",instance=\"a\",ring=\"LAB\",site_class=\"online\"}}"
        )),
        alert_labels: vec![("ring", "LAB".into()), ("site_class", "online".into())],
    };
    Ok((vec![availability, fast, compliance], notes))
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|l| format!("{pad}{l}\n"))
        .collect::<String>()
}

fn sloth_labels(out: &mut String, slo: &Slo, pad: usize) {
    let p = " ".repeat(pad);
    let _ = writeln!(out, "{p}sloth_service: eucora");
    let _ = writeln!(out, "{p}sloth_slo: {}", slo.name);
    let _ = writeln!(out, "{p}sloth_id: eucora-{}", slo.name);
}

/// The error budget, as PromQL computes it from the objective.
fn budget(slo: &Slo) -> String {
    format!("(1 - {})", number(slo.objective))
}

/// `prometheus/rules/slo.yml` for `policy`.
pub fn rules(policy: &Policy) -> Result<String, String> {
    let (slos, notes) = slos(policy)?;
    let mut out = String::new();
    out.push_str(
        "# Generated by `eucora slo rules` from the policy; do not edit. Regenerate after changing\n\
         # the policy's [slo] table or a ring's time_to_compliance (docs/observability.md, \"SLOs\").\n\
         #\n\
         # Sloth's names: slo:sli_error:ratio_rate<window> is the share of bad events over the\n\
         # window; the burn rate is that over the error budget (1 - objective), over 30 days.\n\
         # Alerts: the SRE workbook's multi-window, multi-burn-rate recipe.\n",
    );
    for note in &notes {
        let _ = writeln!(out, "# {note}");
    }
    out.push_str("groups:\n");
    for slo in &slos {
        let id = format!("eucora-{}", slo.name);
        let _ = writeln!(out, "  - name: slo-{}", slo.name);
        out.push_str("    rules:\n");
        let _ = writeln!(
            out,
            "      # {}: {} of {} over {PERIOD_DAYS} days.",
            slo.title,
            number(slo.objective),
            slo.good
        );
        for window in WINDOWS {
            let _ = writeln!(out, "      - record: slo:sli_error:ratio_rate{window}");
            out.push_str("        expr: |\n");
            out.push_str(&indent(&slo.errors.replace("{W}", window), 10));
            out.push_str("        labels:\n");
            sloth_labels(&mut out, slo, 10);
            let _ = writeln!(out, "          sloth_window: {window}");
        }
        let meta = [
            (
                "slo:objective:ratio",
                format!("vector({})", number(slo.objective)),
            ),
            ("slo:error_budget:ratio", format!("vector{}", budget(slo))),
            ("slo:time_period:days", format!("vector({PERIOD_DAYS})")),
        ];
        for (record, expr) in meta {
            let _ = writeln!(out, "      - record: {record}");
            let _ = writeln!(out, "        expr: {expr}");
            out.push_str("        labels:\n");
            sloth_labels(&mut out, slo, 10);
        }
        let on = "on (sloth_id, sloth_slo, sloth_service) group_left";
        for (record, window) in [
            ("slo:current_burn_rate:ratio", "5m"),
            ("slo:period_burn_rate:ratio", "30d"),
        ] {
            let _ = writeln!(out, "      - record: {record}");
            let _ = writeln!(
                out,
                "        expr: max without (sloth_window) (slo:sli_error:ratio_rate{window}{{sloth_id=\"{id}\"}}) / {on} slo:error_budget:ratio{{sloth_id=\"{id}\"}}"
            );
            out.push_str("        labels:\n");
            sloth_labels(&mut out, slo, 10);
        }
        out.push_str("      - record: slo:period_error_budget_remaining:ratio\n");
        let _ = writeln!(
            out,
            "        expr: 1 - slo:period_burn_rate:ratio{{sloth_id=\"{id}\"}}"
        );
        out.push_str("        labels:\n");
        sloth_labels(&mut out, slo, 10);
        // The alerts.
        for severity in ["page", "ticket"] {
            let name = alert_name(slo, severity);
            let burns = burns_of(severity);
            let _ = writeln!(out, "      - alert: {name}");
            out.push_str("        expr: |\n");
            let conditions: Vec<String> = burns
                .iter()
                .map(|b| {
                    let limit = format!("({} * {})", number(b.factor), budget(slo));
                    format!(
                        "(\n    max without (sloth_window) (slo:sli_error:ratio_rate{}{{sloth_id=\"{id}\"}} > {limit})\n  and\n    max without (sloth_window) (slo:sli_error:ratio_rate{}{{sloth_id=\"{id}\"}} > {limit})\n)",
                        b.long, b.short
                    )
                })
                .collect();
            out.push_str(&indent(&conditions.join("\nor\n"), 10));
            out.push_str("        labels:\n");
            severity_labels(&mut out, severity, 10);
            out.push_str("        annotations:\n");
            let (summary, description) = alert_text(slo, severity, &burns);
            let _ = writeln!(out, "          summary: \"{summary}\"");
            let _ = writeln!(out, "          description: \"{description}\"");
            let _ = writeln!(
                out,
                "          runbook_url: '{{{{ with $externalLabels.runbook_base }}}}{{{{ . }}}}{{{{ else }}}}http://localhost:8000/docs/runbook{{{{ end }}}}#{}'",
                name.to_lowercase()
            );
        }
    }
    Ok(out)
}

/// The burn-rate conditions of one alert: `page` or `ticket`.
fn burns_of(severity: &str) -> Vec<&'static Burn> {
    BURNS.iter().filter(|b| b.severity == severity).collect()
}

/// An alert's `severity` (critical for a page, warning for a ticket) and `sloth_severity`.
fn severity_labels(out: &mut String, severity: &str, pad: usize) {
    let p = " ".repeat(pad);
    let level = if severity == "page" {
        "critical"
    } else {
        "warning"
    };
    let _ = writeln!(out, "{p}severity: {level}");
    let _ = writeln!(out, "{p}sloth_severity: {severity}");
}

fn alert_name(slo: &Slo, severity: &str) -> String {
    let severity = if severity == "page" { "Page" } else { "Ticket" };
    format!("SLO{}{severity}", slo.stem)
}

/// An alert's summary and description; without `$value`, so the tests can say them.
fn alert_text(slo: &Slo, severity: &str, burns: &[&Burn]) -> (String, String) {
    let scope = if slo.by.is_empty() {
        String::new()
    } else {
        " in {{ $labels.ring }} ({{ $labels.site_class }} sites)".to_string()
    };
    let summary = format!(
        "{}{scope}: the {PERIOD_DAYS}-day error budget is burning too fast ({severity})",
        slo.title
    );
    let how: Vec<String> = burns
        .iter()
        .map(|b| {
            format!(
                "{} % of it in {} (burn rate {}, also over {})",
                number(b.budget_share * 100.0),
                b.long,
                number(b.factor),
                b.short
            )
        })
        .collect();
    let description = format!(
        "The objective is {} % of {} over {PERIOD_DAYS} days; at the current rate of bad events the budget would lose {}.",
        number(slo.objective * 100.0),
        slo.good,
        how.join(" or ")
    );
    (summary, description)
}

/// The minutes of history each test feeds: three days and two hours, a whole number of the
/// tests' one-hour evaluation interval.
const HISTORY_MINUTES: u32 = 74 * 60;

/// `prometheus/tests/slo_test.yml` for `policy`: for every SLO and every burn-rate condition, a
/// burst of bad events just long enough to fill the condition's long window, at a ratio 2 %
/// above its threshold (the alert fires) and 2 % below it (it does not). Each burst is short
/// enough that the other conditions stay quiet.
pub fn tests(policy: &Policy) -> Result<String, String> {
    let (slos, _) = slos(policy)?;
    let mut out = String::new();
    out.push_str(
        "# Generated by `eucora slo tests` from the policy; do not edit.\n\
         # `promtool test rules prometheus/tests/slo_test.yml`: every burn-rate condition of every\n\
         # SLO just inside (fires) and just outside (does not) its threshold.\n\
         rule_files:\n  - ../rules/slo.yml\n\n\
         # Hourly: the rules' longest windows make each step costly, and every alert is read at the\n\
         # end of its history.\n\
         evaluation_interval: 1h\n\ntests:\n",
    );
    const RATE: f64 = 1000.0;
    let n = HISTORY_MINUTES;
    for slo in &slos {
        for burn in &BURNS {
            for (inside, scale) in [(true, 1.02), (false, 0.98)] {
                let ratio = burn.factor * (1.0 - slo.objective) * scale;
                // Bad events for the last `m` minutes: the long window and two minutes.
                let m = (burn.long_minutes + 2).min(n);
                let k = n - m;
                let bad = RATE * ratio;
                let good = RATE - bad;
                // A counter rising by `rate_before` a minute, then by `rate_during` (m >= 62).
                let series = |rate_before: f64, rate_during: f64| {
                    format!(
                        "0+{}x{k} {}+{}x{}",
                        number(rate_before),
                        number(rate_before * k as f64 + rate_during),
                        number(rate_during),
                        m - 1
                    )
                };
                let _ = writeln!(
                    out,
                    "  - name: \"{}: bad events at {} % of the {}/{} threshold (burn rate {}) for {m} min: the {} {}\"",
                    slo.name,
                    number((scale * 100.0_f64).round()),
                    burn.long,
                    burn.short,
                    number(burn.factor),
                    burn.severity,
                    if inside { "fires" } else { "does not fire" }
                );
                out.push_str("    interval: 1m\n    input_series:\n");
                let (second, second_series) = &slo.second_series;
                let second_values = match second {
                    Second::Bad => series(0.0, bad),
                    Second::Total => series(RATE, RATE),
                };
                let mut input = vec![
                    (slo.good_series.clone(), series(RATE, good)),
                    (second_series.clone(), second_values),
                ];
                // Domain series come from two replicas alike; the rules must not count them twice.
                if !slo.by.is_empty() {
                    let twins: Vec<(String, String)> = input
                        .iter()
                        .map(|(s, v)| (s.replace("instance=\"a\"", "instance=\"b\""), v.clone()))
                        .collect();
                    input.extend(twins);
                }
                for (s, values) in input {
                    let _ = writeln!(out, "      - series: '{s}'");
                    let _ = writeln!(out, "        values: \"{values}\"");
                }
                out.push_str("    alert_rule_test:\n");
                for severity in ["page", "ticket"] {
                    let name = alert_name(slo, severity);
                    let _ = writeln!(out, "      - alertname: {name}");
                    let _ = writeln!(out, "        eval_time: {}m", n);
                    if inside && burn.severity == severity {
                        let (summary, description) = alert_text(slo, severity, &burns_of(severity));
                        let summary = summary
                            .replace("{{ $labels.ring }}", "LAB")
                            .replace("{{ $labels.site_class }}", "online");
                        let mut labels = String::new();
                        severity_labels(&mut labels, severity, 14);
                        sloth_labels(&mut labels, slo, 14);
                        for (k, v) in &slo.alert_labels {
                            let _ = writeln!(labels, "              {k}: {v}");
                        }
                        expected_alert(&mut out, &name, &labels, &summary, &description);
                    } else {
                        out.push_str("        exp_alerts: []\n");
                    }
                }
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// A firing alert as a promtool test expects it: its label lines (`labels`, indented 14) and
/// its annotations, with the runbook link the default base gives.
pub fn expected_alert(
    out: &mut String,
    alert: &str,
    labels: &str,
    summary: &str,
    description: &str,
) {
    out.push_str("        exp_alerts:\n          - exp_labels:\n");
    out.push_str(labels);
    out.push_str("            exp_annotations:\n");
    let _ = writeln!(out, "              summary: \"{summary}\"");
    let _ = writeln!(out, "              description: \"{description}\"");
    let _ = writeln!(
        out,
        "              runbook_url: \"http://localhost:8000/docs/runbook#{}\"",
        alert.to_lowercase()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_burn_rate_spends_its_share_of_the_budget_in_its_long_window() {
        let period_minutes = f64::from(PERIOD_DAYS) * 24.0 * 60.0;
        for b in &BURNS {
            let spent = b.budget_share * period_minutes / f64::from(b.long_minutes);
            assert!((spent - b.factor).abs() < 1e-9, "{} {}", b.long, b.factor);
            assert!(b.short_minutes * 12 == b.long_minutes, "short = long / 12");
        }
    }

    #[test]
    fn thresholds_follow_the_policy_file() {
        let policy = Policy::from_toml(
            "[slo]\napi_availability = 0.99\napi_latency = \"250ms\"\n\
             [rings.LAB]\ntime_to_compliance = { online = \"8h\" }",
        )
        .unwrap();
        let yaml = rules(&policy).unwrap();
        assert!(yaml.contains("(14.4 * (1 - 0.99))"), "{yaml}");
        assert!(yaml.contains("le=\"0.25\""));
        assert!(yaml.contains("ring=\"LAB\", site_class=\"online\", le=\"28800\""));
        assert!(!yaml.contains("le=\"0.5\""));
    }

    #[test]
    fn bounds_between_buckets_are_measured_at_the_bucket_below_and_said_so() {
        let policy =
            Policy::from_toml("[rings.LAB]\ntime_to_compliance = { online = \"5h\" }").unwrap();
        let yaml = rules(&policy).unwrap();
        assert!(yaml.contains("ring=\"LAB\", site_class=\"online\", le=\"14400\""));
        assert!(yaml.contains(
            "# LAB online: the policy's 18000 s is measured at the bucket below it, 14400 s"
        ));
        let latency = Policy::from_toml("[slo]\napi_latency = \"300ms\"").unwrap();
        let err = rules(&latency).unwrap_err();
        assert!(
            err.contains("slo.api_latency 0.3 s is not a bucket bound"),
            "{err}"
        );
        let tiny =
            Policy::from_toml("[rings.LAB]\ntime_to_compliance = { online = \"30s\" }").unwrap();
        assert!(rules(&tiny)
            .unwrap_err()
            .contains("below the smallest bucket"));
    }
}
