//! Rendering the fold as the Prometheus text exposition format (0.0.4): every family with its
//! help and type, every series sorted, so the same stream always renders the same bytes.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use super::{Gauges, Histogram, Labels, Metrics};
use crate::event::{ConnectorType, Ring, Status};

impl Metrics {
    /// The exposition text (Prometheus text format 0.0.4) of every domain metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let ring = |r: &Ring| r.as_str();
        let deployments = sorted(&self.deployments, |(status, r, app, cab)| {
            vec![
                ("status", *status),
                ("ring", ring(r)),
                ("app_name", &**app),
                ("requires_cab", if *cab { "true" } else { "false" }),
            ]
        });
        counter_family(&mut out, "deployment_total", "Intents entering each status: pending (awaiting CAB), approved, rejected, success (ring compliant), failed (rolled back).", &deployments);
        histogram_family(
            &mut out,
            "deployment_duration_seconds",
            "Ring entry to the ring's outcome (success or failed).",
            &sorted(&self.duration, |(r, status)| {
                vec![("ring", ring(r)), ("status", *status)]
            }),
        );
        histogram_family(
            &mut out,
            "deployment_time_to_compliance_seconds",
            "Ring entry to the first compliant rollout report in that ring.",
            &sorted(&self.time_to_compliance, |(r, site)| {
                vec![("ring", ring(r)), ("site_class", site.as_str())]
            }),
        );
        histogram_family(
            &mut out,
            "cab_approval_wait_seconds",
            "Creation to the CAB decision.",
            &sorted(&self.cab_wait, |decision| vec![("decision", *decision)]),
        );
        histogram_family(
            &mut out,
            "risk_score_distribution",
            "Risk score at creation.",
            &sorted(&self.risk, |cab| {
                vec![("requires_cab", if *cab { "true" } else { "false" })]
            }),
        );
        counter_family(
            &mut out,
            "ring_promotion_total",
            "Promotion attempts by verdict.",
            &sorted(&self.promotions, |(from, to, passed)| {
                let verdict = if *passed { "passed" } else { "blocked" };
                vec![
                    ("from_ring", ring(from)),
                    ("to_ring", ring(to)),
                    ("status", verdict),
                ]
            }),
        );
        counter_family(
            &mut out,
            "promotion_gate_evaluations_total",
            "Gate verdicts recorded in PromotionGateEvaluated.",
            &sorted(&self.gate_evaluations, |(r, gate, passed)| {
                let result = if *passed { "passed" } else { "failed" };
                vec![
                    ("ring", ring(r)),
                    ("gate", gate.as_str()),
                    ("result", result),
                ]
            }),
        );

        header(
            &mut out,
            "promotion_gate_success_rate",
            "Passed / evaluated promotion attempts, per ring.",
            "gauge",
        );
        for (ring, (passed, evaluated)) in &self.attempts {
            let rate = *passed as f64 / *evaluated as f64;
            sample(
                &mut out,
                "promotion_gate_success_rate",
                &[("ring", ring.as_str())],
                None,
                &float(rate),
            );
        }
        counter_family(
            &mut out,
            "deployment_rollbacks_total",
            "DeploymentRolledBack events, per ring.",
            &sorted(&self.rollbacks, |r| vec![("ring", ring(r))]),
        );
        let ring_connector = |(r, connector): &(Ring, ConnectorType)| {
            vec![("ring", ring(r)), ("connector_type", connector.as_str())]
        };
        counter_family(
            &mut out,
            "deployment_drift_total",
            "DeploymentDriftDetected events: an assignment a connector lost, or whose installed count fell.",
            &sorted(&self.drift, ring_connector),
        );
        counter_family(
            &mut out,
            "connector_status_rejected_total",
            "ConnectorStatusRejected events: a connector's status answer that could not be a rollout result (one per distinct problem).",
            &sorted(&self.status_rejected, ring_connector),
        );

        header(
            &mut out,
            "deployment_cost_total",
            "What changes cost, in the currency's units, per app, ring and component (device_installs, delivery, connector_calls, incidents, cab_review, rollback), with the rates recorded at each request.",
            "counter",
        );
        let cost = sorted(&self.cost, |(app, currency, r, component)| {
            vec![
                ("app", &**app),
                ("currency", *currency),
                ("ring", ring(r)),
                ("component", component.as_str()),
            ]
        });
        for (labels, amount) in cost {
            sample(
                &mut out,
                "deployment_cost_total",
                &labels,
                None,
                &float(*amount),
            );
        }
        histogram_family(
            &mut out,
            "deployment_cost_per_intent",
            "A completed change's whole cost at its completion, in its currency's units.",
            &sorted(&self.cost_per_intent, |currency| {
                vec![("currency", *currency)]
            }),
        );

        fn app_ring((app, r): &(Arc<str>, Ring)) -> Labels<'_> {
            vec![("app_name", &**app), ("ring", r.as_str())]
        }
        let by_ring = |r: &Ring| vec![("ring", ring(r))];
        histogram_family(
            &mut out,
            "deployment_lead_time_seconds",
            "Delivery lead time: the change's commit (source_committed_at, else the intent's creation) to its first compliant rollout report in the ring.",
            &sorted(&self.lead_time, by_ring),
        );
        header(
            &mut out,
            "deployment_app_lead_time_seconds",
            "Delivery lead time per app and ring, as a sum and a count (their ratio is the mean).",
            "summary",
        );
        for (labels, (sum, count)) in sorted(&self.app_lead_time, app_ring) {
            sample(
                &mut out,
                "deployment_app_lead_time_seconds_sum",
                &labels,
                None,
                &float(*sum),
            );
            sample(
                &mut out,
                "deployment_app_lead_time_seconds_count",
                &labels,
                None,
                &count.to_string(),
            );
        }
        histogram_family(
            &mut out,
            "deployment_recovery_time_seconds",
            "Failed-deployment recovery time: a rollback in the ring to the next compliant version of the same app there.",
            &sorted(&self.recovery_time, by_ring),
        );
        counter_family(
            &mut out,
            "deployment_change_failures_total",
            "Changes that failed in the ring (rolled back).",
            &sorted(&self.change_failures, app_ring),
        );
        counter_family(
            &mut out,
            "deployment_rework_total",
            "Emergency changes requested while the app had an unrecovered failure, in the ring of that failure.",
            &sorted(&self.rework, app_ring),
        );

        header(
            &mut out,
            "deployments_in_state",
            "Intents currently in each state, per current ring.",
            "gauge",
        );
        // The gauges over every intent, kept as the stream was folded.
        let Gauges {
            in_state,
            awaiting,
            missing,
        } = &self.gauges;
        for status in Status::ALL {
            for ring in Ring::ALL {
                let n = in_state.get(&(status, ring)).copied().unwrap_or(0);
                let labels = [("state", status.as_str()), ("ring", ring.as_str())];
                sample(
                    &mut out,
                    "deployments_in_state",
                    &labels,
                    None,
                    &n.to_string(),
                );
            }
        }
        header(
            &mut out,
            "emergency_changes_awaiting_retro_approval",
            "Emergency changes cleared without the CAB and not yet decided on retrospectively; overdue once their deadline passed (RetroApprovalOverdue).",
            "gauge",
        );
        for (overdue, n) in [("false", awaiting[0]), ("true", awaiting[1])] {
            sample(
                &mut out,
                "emergency_changes_awaiting_retro_approval",
                &[("overdue", overdue)],
                None,
                &n.to_string(),
            );
        }
        header(
            &mut out,
            "deployment_rollouts_forecast_to_miss",
            "Open rollouts whose reports, extrapolated at their install rate, reach the ring's success threshold after its time-to-compliance deadline (or never), per ring.",
            "gauge",
        );
        for ring in Ring::ALL {
            sample(
                &mut out,
                "deployment_rollouts_forecast_to_miss",
                &[("ring", ring.as_str())],
                None,
                &missing[ring.index()].to_string(),
            );
        }
        header(
            &mut out,
            "eucora_events_total",
            "Events applied, of every stream (intents and principals), per event type.",
            "counter",
        );
        for (event_type, n) in &self.events {
            sample(
                &mut out,
                "eucora_events_total",
                &[("event_type", *event_type)],
                None,
                &n.to_string(),
            );
        }
        header(
            &mut out,
            "eucora_projection_position",
            "Global position of the last event applied.",
            "gauge",
        );
        sample(
            &mut out,
            "eucora_projection_position",
            &[("projection", "metrics")],
            None,
            &self.position.to_string(),
        );
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Appends a label value, escaped as the text format requires.
fn push_escaped(out: &mut String, value: &str) {
    if !value.contains(['\\', '"', '\n']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn float(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

/// One sample line, written straight into `out`: the scrape renders tens of thousands.
fn sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    extra: Option<(&str, &str)>,
    value: &str,
) {
    out.push_str(name);
    if !labels.is_empty() || extra.is_some() {
        out.push('{');
        let mut first = true;
        for (k, v) in labels {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(k);
            out.push_str("=\"");
            push_escaped(out, v);
            out.push('"');
        }
        if let Some((k, v)) = extra {
            if !first {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            out.push_str(v);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// A family's series ordered by their labels, which is the order they are rendered in. Label
/// values borrow the keys' names (no label is built as a string of its own); each series' labels
/// differ, so the order is one. A family's series carry the same label names in the same order:
/// only the values are compared.
fn sorted<'a, K, T, S>(
    series: &'a HashMap<K, T, S>,
    labels: impl Fn(&'a K) -> Labels<'a>,
) -> Vec<(Labels<'a>, &'a T)> {
    let mut sorted: Vec<_> = series
        .iter()
        .map(|(key, value)| (labels(key), value))
        .collect();
    sorted
        .sort_unstable_by(|(a, _), (b, _)| a.iter().map(|(_, v)| v).cmp(b.iter().map(|(_, v)| v)));
    sorted
}

fn counter_family(out: &mut String, name: &str, help: &str, series: &[(Labels<'_>, &u64)]) {
    header(out, name, help, "counter");
    for (labels, n) in series {
        sample(out, name, labels, None, &n.to_string());
    }
}

fn histogram_family(out: &mut String, name: &str, help: &str, series: &[(Labels<'_>, &Histogram)]) {
    header(out, name, help, "histogram");
    let (bucket, sum, count) = (
        format!("{name}_bucket"),
        format!("{name}_sum"),
        format!("{name}_count"),
    );
    // Every histogram of a family has the same bounds: written once.
    let mut bounds: Vec<String> = Vec::new();
    for (labels, h) in series {
        if bounds.len() != h.buckets.len() {
            bounds = h.buckets.iter().map(|b| float(*b)).collect();
        }
        for (bound, n) in bounds.iter().zip(&h.counts) {
            sample(out, &bucket, labels, Some(("le", bound)), &n.to_string());
        }
        let total = h.count.to_string();
        sample(out, &bucket, labels, Some(("le", "+Inf")), &total);
        sample(out, &sum, labels, None, &float(h.sum));
        sample(out, &count, labels, None, &total);
    }
}
