//! What a change cost: the policy's `[cost]` rates recorded at the request, applied to what its
//! events say, on the intent, the command line and the metrics (docs/observability.md, "Cost").

use serde_json::json;

use crate::helpers::{intent_body, Backend, Crew, TestApp};
use crate::metrics::metrics_with;

crate::on_both_backends!(a_change_costs_its_installs_delivery_and_review_at_its_recorded_rates);

const RATES: &str = "[cost]\ncurrency = \"GBP\"\nper_device_install = 0.5\n\
                     per_gb_delivered = 0.25\nper_cab_review_hour = 100\n";

async fn a_change_costs_its_installs_delivery_and_review_at_its_recorded_rates(backend: Backend) {
    let app = TestApp::spawn_with_policy(backend, RATES).await;
    let crew = Crew::new(&app);
    // Needs the CAB; a 2 GB artifact.
    let mut body = intent_body("Blender", 0.8, "LAB");
    body["artifact_bytes"] = json!(2_000_000_000u64);
    let id = app.create(&crew.requester, body.clone()).await.id();
    assert_eq!(app.approve(&crew.approver, &id).await.status, 200);
    assert_eq!(
        app.deploy(&crew.deployer, &id, "LAB", 10, 10).await.status,
        200
    );
    let intent = app.intent(&crew.auditor, &id).await.body;
    assert_eq!(intent["status"], "completed");
    let cost = &intent["cost"];
    assert_eq!(cost["currency"], "GBP");
    // 10 installs at 0.5; 10 × 2 GB at 0.25 a GB; the CAB's wait (a moment) at 100 an hour.
    assert_eq!(cost["components"]["device_installs"], 5.0);
    assert_eq!(cost["components"]["delivery"], 5.0);
    let review = cost["components"]["cab_review"].as_f64().unwrap();
    assert!(review > 0.0 && review < 10.0, "{cost}");
    assert_eq!(cost["by_ring"]["LAB"]["device_installs"], 5.0);
    let total = cost["total"].as_f64().unwrap();
    assert!((total - (10.0 + review)).abs() < 1e-9, "{cost}");
    // The metrics, per app, currency, ring and component; and the completed change's whole cost.
    metrics_with(
        &app,
        "/api/v1/metrics",
        "deployment_cost_total{app=\"Blender\",currency=\"GBP\",ring=\"LAB\",component=\"device_installs\"} 5",
    )
    .await;
    metrics_with(
        &app,
        "/api/v1/metrics",
        "deployment_cost_per_intent_count{currency=\"GBP\"} 1",
    )
    .await;
    // The command line says it in words.
    let (code, out, err) = crate::cli::client(&app, &crew.auditor, &["get", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("cost:             GBP") && l.contains("device installs 5.00")),
        "{out}"
    );
    // The command line sends the size too.
    let (code, out, err) = crate::cli::client(
        &app,
        &crew.requester,
        &[
            "create",
            "--app-name",
            "Krita",
            "--version",
            "5.2",
            "--connector-type",
            "intune",
            "--rollback-validated",
            "--artifact-bytes",
            "1000000000",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let made: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(made["cost"]["currency"], "GBP", "{made}");
    let events = app
        .get(
            &format!(
                "/api/v1/deployments/{}/events",
                made["id"].as_str().unwrap()
            ),
            &crew.auditor,
        )
        .await
        .body;
    assert_eq!(
        events["events"][0]["event"]["DeploymentCreated"]["artifact_bytes"],
        1_000_000_000u64
    );
    // A size that cannot be is refused in words, and nothing is appended.
    let before = app.event_count().await;
    for bad in [json!(-1), json!(20_000_000_000_000u64), json!("2GB")] {
        body["artifact_bytes"] = bad.clone();
        let refused = app.create(&crew.requester, body.clone()).await;
        refused.assert_problem(422);
        let detail = refused.body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("artifact_bytes") || detail.contains("invalid"),
            "{bad}: {detail}"
        );
    }
    assert_eq!(app.event_count().await, before);
}
