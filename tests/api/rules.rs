//! The rules an auditor checks, over HTTP: emergency changes owe a retrospective CAB decision
//! whatever state they reach, and a deadline; reports cannot take counts back; nothing leaves LAB
//! without a validated rollback plan.

use serde_json::{json, Value};

use crate::helpers::{intent_body, Backend, Crew, TestApp};
use crate::metrics::metrics_with;

crate::on_both_backends!(
    an_emergency_change_is_capped_and_owes_its_retro_decision_even_when_completed,
    a_retrospective_rejection_allows_only_a_rollback,
    an_overdue_retro_approval_is_recorded_listed_and_counted,
    a_report_that_lowers_a_count_is_refused,
    no_start_past_lab_without_a_validated_rollback_plan,
    critical_infrastructure_goes_to_the_cab_and_a_change_ref_is_recorded_and_found,
);

/// An emergency change in privileged tooling (it needs the CAB whatever its score).
fn emergency(app: &str, start: &str, target: &str) -> Value {
    let mut body = intent_body(app, 0.6, target);
    body["change_type"] = json!("emergency");
    body["privileged_tooling"] = json!(true);
    body["start_ring"] = json!(start);
    body
}

async fn an_emergency_change_is_capped_and_owes_its_retro_decision_even_when_completed(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let before = app.event_count().await;
    let refused = app
        .create(&crew.requester, emergency("Sysmon", "GLOBAL", "GLOBAL"))
        .await;
    refused.assert_problem(422);
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("max_emergency_start_ring") && detail.contains("PILOT"),
        "{detail}"
    );
    assert_eq!(app.event_count().await, before, "a refusal appends nothing");

    let created = app
        .create(&crew.requester, emergency("Sysmon", "LAB", "LAB"))
        .await;
    assert_eq!(created.status, 201, "{created:#?}");
    let id = created.id();
    assert_eq!(created.body["retro_approval_pending"], true);
    assert_eq!(created.body["retro_approval_due_at"], Value::Null);
    let completed = app.deploy(&crew.deployer, &id, "LAB", 10, 10).await;
    assert_eq!(completed.body["status"], "completed", "{completed:#?}");
    assert!(completed.body["retro_approval_due_at"].is_string());

    let approved = app.approve(&crew.approver, &id).await;
    assert_eq!(approved.status, 200, "{approved:#?}");
    assert_eq!(approved.body["retro_approval_pending"], false);
    assert_eq!(approved.body["status"], "completed");
    assert_eq!(approved.body["approved_by"], "carol");
    // Decided once: a second decision is refused.
    app.approve(&crew.approver, &id).await.assert_problem(409);
}

async fn a_retrospective_rejection_allows_only_a_rollback(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, emergency("Sysmon", "LAB", "CANARY"))
        .await
        .id();
    app.deploy(&crew.deployer, &id, "LAB", 10, 10).await;
    let rejected = app.reject(&crew.approver, &id, "not an emergency").await;
    assert_eq!(rejected.status, 200, "{rejected:#?}");
    assert_eq!(rejected.body["rollback_required"], true);
    assert_eq!(rejected.body["status"], "deployed");
    let promote = app.promote(&crew.deployer, &id).await;
    promote.assert_problem(409);
    assert!(promote.body["detail"]
        .as_str()
        .unwrap()
        .contains("must be rolled back"));
    app.deploy(&crew.deployer, &id, "LAB", 10, 10)
        .await
        .assert_problem(409);
    let rolled = app.rollback(&crew.deployer, &id, "CAB rejected it").await;
    assert_eq!(rolled.status, 200, "{rolled:#?}");
    assert_eq!(rolled.body["status"], "rolled_back");
    assert_eq!(rolled.body["rollback_required"], false);
    let history = app
        .get(&format!("/api/v1/deployments/{id}/events"), &crew.auditor)
        .await;
    let rejection = history.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "DeploymentRejected")
        .expect("the rejection is on the record");
    assert_eq!(
        rejection["event"]["DeploymentRejected"]["retrospective"],
        true
    );
}

async fn an_overdue_retro_approval_is_recorded_listed_and_counted(backend: Backend) {
    let app = TestApp::spawn_with_policy(backend, "emergency_retro_window = \"1s\"").await;
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, emergency("Sysmon", "LAB", "CANARY"))
        .await
        .id();
    let on_time = app
        .create(&crew.requester, emergency("Osquery", "LAB", "CANARY"))
        .await
        .id();
    app.deploy(&crew.deployer, &id, "LAB", 10, 10).await;
    app.list_until(&crew.auditor, "?retro_approval=pending", 2)
        .await;
    // The watcher checks every few seconds; the one deployed is overdue a second later.
    let overdue = app
        .list_until(&crew.auditor, "?retro_approval=overdue", 1)
        .await;
    assert_eq!(overdue.body["items"][0]["id"], id.as_str());
    assert_eq!(overdue.body["items"][0]["retro_approval_overdue"], true);
    let text = metrics_with(
        &app,
        "/api/v1/metrics",
        "emergency_changes_awaiting_retro_approval{overdue=\"true\"} 1",
    )
    .await;
    assert!(
        text.contains("emergency_changes_awaiting_retro_approval{overdue=\"false\"} 1"),
        "the one never deployed has no deadline yet:\n{text}"
    );
    let history = app
        .get(&format!("/api/v1/deployments/{id}/events"), &crew.auditor)
        .await;
    let marked: Vec<&Value> = history.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "RetroApprovalOverdue")
        .collect();
    assert_eq!(marked.len(), 1, "recorded once: {history:#?}");
    let actor = &marked[0]["event"]["RetroApprovalOverdue"]["meta"]["actor"];
    assert_eq!(actor["subject"], "system:retro_deadline");
    assert_eq!(actor["role"], "system");

    // A late approval is still taken, and recorded as late; the intent leaves both lists.
    let approved = app.approve(&crew.approver, &id).await;
    assert_eq!(approved.status, 200, "{approved:#?}");
    app.list_until(&crew.auditor, "?retro_approval=overdue", 0)
        .await;
    let pending = app
        .list_until(&crew.auditor, "?retro_approval=pending", 1)
        .await;
    assert_eq!(pending.body["items"][0]["id"], on_time.as_str());
    metrics_with(
        &app,
        "/api/v1/metrics",
        "emergency_changes_awaiting_retro_approval{overdue=\"true\"} 0",
    )
    .await;
    let history = app
        .get(&format!("/api/v1/deployments/{id}/events"), &crew.auditor)
        .await;
    let last = history.body["events"].as_array().unwrap().last().unwrap();
    assert_eq!(
        last["event"]["DeploymentApproved"]["retro_deadline_met"],
        false
    );
}

async fn a_report_that_lowers_a_count_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, intent_body("Git", 0.2, "CANARY"))
        .await
        .id();
    let report = |incidents: u64| {
        json!({"ring": "LAB", "target_devices": 10, "succeeded": 10, "failed": 0,
               "incidents": incidents})
    };
    let path = format!("/api/v1/deployments/{id}/deploy");
    let first = app.post(&path, &crew.deployer, report(2)).await;
    assert_eq!(first.status, 200, "{first:#?}");
    let lowered = app.post(&path, &crew.deployer, report(0)).await;
    lowered.assert_problem(422);
    assert!(lowered.body["detail"]
        .as_str()
        .unwrap()
        .contains("incidents: counts are cumulative"));
    // The gate still sees 2 incidents (LAB allows 1): the promotion is blocked.
    let promote = app.promote(&crew.deployer, &id).await;
    promote.assert_problem(409);
    // A problem of its own kind, not a conflict with the intent's state.
    assert_eq!(promote.body["type"], "urn:eucora:problem:promotion-blocked");
    assert_eq!(promote.body["title"], "Promotion blocked by gates");
    assert!(promote.body["detail"]
        .as_str()
        .unwrap()
        .contains("blocked by: incidents"));
    let gates = promote.body["promotion"]["gates"].as_array().unwrap();
    let incidents = gates.iter().find(|g| g["gate"] == "incidents").unwrap();
    assert_eq!(incidents["measured"], 2.0);
    assert_eq!(incidents["passed"], false);
}

async fn no_start_past_lab_without_a_validated_rollback_plan(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let mut body = intent_body("Git", 0.2, "GLOBAL");
    body["start_ring"] = json!("PILOT");
    body["rollback_validated"] = json!(false);
    let refused = app.create(&crew.requester, body.clone()).await;
    refused.assert_problem(422);
    assert!(refused.body["detail"]
        .as_str()
        .unwrap()
        .starts_with("rollback_validated"));
    body["rollback_validated"] = json!(true);
    assert_eq!(app.create(&crew.requester, body).await.status, 201);
}

/// A change to critical infrastructure in GLOBAL that scores 45 (no CAB by score) waits for the
/// CAB under the default policy, and says why; its external reference is recorded, shown,
/// filterable, and refused when malformed with nothing written.
async fn critical_infrastructure_goes_to_the_cab_and_a_change_ref_is_recorded_and_found(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let mut body = intent_body("SCADA gateway", 0.39, "GLOBAL");
    body["critical_infrastructure"] = json!(true);
    body["change_ref"] = json!("CHG0031337");
    let created = app.create(&crew.requester, body.clone()).await;
    assert_eq!(created.status, 201, "{created:#?}");
    assert_eq!(created.body["risk_score"], 45);
    assert_eq!(created.body["status"], "awaiting_cab");
    assert_eq!(
        created.body["cab_required_reason"],
        "critical infrastructure (policy cab.always_for_critical_infrastructure)"
    );
    assert_eq!(created.body["change_ref"], "CHG0031337");
    let id = created.id();
    let found = app
        .list_until(&crew.auditor, "?change_ref=CHG0031337", 1)
        .await;
    assert_eq!(found.body["items"][0]["id"], id.as_str());
    app.list_until(&crew.auditor, "?change_ref=CHG0000000", 0)
        .await;
    let history = app
        .get(&format!("/api/v1/deployments/{id}/events"), &crew.auditor)
        .await;
    let stored = &history.body["events"][0]["event"]["DeploymentCreated"];
    assert_eq!(stored["change_ref"], "CHG0031337");
    assert_eq!(stored["meta"]["schema_version"], 5);

    let before = app.event_count().await;
    for bad in [
        json!("x".repeat(65)),
        json!("CHG\u{7}1"),
        json!(""),
        json!(" CHG1"),
    ] {
        let mut body = body.clone();
        body["change_ref"] = bad.clone();
        let refused = app.create(&crew.requester, body).await;
        refused.assert_problem(422);
        assert!(
            refused.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("change_ref")),
            "{bad}: {refused:#?}"
        );
    }
    assert_eq!(
        app.event_count().await,
        before,
        "a refused create writes nothing"
    );
}
