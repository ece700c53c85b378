//! A rollout's compliance forecast: its reports extrapolated to the ring's success threshold,
//! against the deadline recorded with them, on the intent, the command line and the metrics
//! (docs/observability.md, "Forecasts").

use chrono::{DateTime, Utc};

use crate::helpers::{intent_body, Backend, Crew, TestApp};
use crate::metrics::metrics_with;

crate::on_both_backends!(a_rollout_that_stops_gaining_is_forecast_to_miss_its_deadline);

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{v}: {e}"))
        .with_timezone(&Utc)
}

async fn a_rollout_that_stops_gaining_is_forecast_to_miss_its_deadline(backend: Backend) {
    // LAB's online sites must be compliant within 4 hours of ring entry (the default policy).
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, intent_body("Inkscape", 0.1, "CANARY"))
        .await
        .id();
    let entered = time(&app.intent(&crew.auditor, &id).await.body["updated_at"]);
    let forecast = |body: &serde_json::Value| body["forecast"].clone();
    assert!(
        app.intent(&crew.auditor, &id).await.body["forecast"].is_null(),
        "no report, no forecast"
    );

    // 2 of 10: gaining, expected long before the deadline.
    assert_eq!(
        app.deploy(&crew.deployer, &id, "LAB", 10, 2).await.status,
        200
    );
    let f = forecast(&app.intent(&crew.auditor, &id).await.body);
    assert_eq!(
        (f["ring"].as_str(), f["share"].as_f64()),
        (Some("LAB"), Some(0.2))
    );
    assert_eq!(f["threshold"], 0.95);
    let due = time(&f["due_at"]);
    assert_eq!(due - entered, chrono::Duration::hours(4), "{f}");
    let expected = time(&f["expected_compliance_at"]);
    assert!(expected > time(&f["as_of"]) && expected < due, "{f}");
    assert_eq!(
        (f["compliant"].as_bool(), f["will_miss_deadline"].as_bool()),
        (Some(false), Some(false))
    );
    metrics_with(
        &app,
        "/api/v1/metrics",
        "deployment_rollouts_forecast_to_miss{ring=\"LAB\"} 0",
    )
    .await;

    // Still 2 (a device failed meanwhile): nothing gained, so never compliant at this rate.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let still = serde_json::json!({"ring": "LAB", "target_devices": 10, "succeeded": 2, "failed": 1, "incidents": 0});
    let path = format!("/api/v1/deployments/{id}/deploy");
    assert_eq!(app.post(&path, &crew.deployer, still).await.status, 200);
    let f = forecast(&app.intent(&crew.auditor, &id).await.body);
    assert!(f["expected_compliance_at"].is_null(), "{f}");
    assert_eq!(f["will_miss_deadline"], true, "{f}");
    metrics_with(
        &app,
        "/api/v1/metrics",
        "deployment_rollouts_forecast_to_miss{ring=\"LAB\"} 1",
    )
    .await;
    let (code, out, err) = crate::cli::client(&app, &crew.auditor, &["get", &id]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("forecast:"))
        .unwrap_or_default();
    assert!(
        line.contains("LAB 20 % of 95 %") && line.ends_with("WILL MISS THE DEADLINE"),
        "{out}"
    );

    // Compliant: the forecast says when, and the rollout leaves the gauge.
    assert_eq!(
        app.deploy(&crew.deployer, &id, "LAB", 10, 10).await.status,
        200
    );
    let f = forecast(&app.intent(&crew.auditor, &id).await.body);
    assert_eq!(
        (f["compliant"].as_bool(), f["will_miss_deadline"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(f["expected_compliance_at"], f["as_of"]);
    metrics_with(
        &app,
        "/api/v1/metrics",
        "deployment_rollouts_forecast_to_miss{ring=\"LAB\"} 0",
    )
    .await;
}
