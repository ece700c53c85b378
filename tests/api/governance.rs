//! Policy and refused decisions on the record: the policy each server starts with, when it
//! differs from the last recorded, is a `PolicyActivated`; every assessment and gate evaluation
//! names the policy it used; a command refused for segregation of duties or a missing role is a
//! `CommandRefused`, counted, and changes nothing on the intent.

use std::sync::Arc;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{eucora_with, intent_body, Backend, Crew, TestApp, TestDb, NO_BAKE_POLICY};

crate::on_both_backends!(
    each_policy_started_with_is_recorded_once_and_names_every_judgement,
    a_refused_command_is_recorded_counted_and_changes_nothing,
);

/// SHA-256 of the text, as the server digests a policy file.
fn digest(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// The global stream's events of `event_type`.
async fn events_of(app: &TestApp, token: &str, event_type: &str) -> Vec<Value> {
    app.global_events(token)
        .await
        .into_iter()
        .filter(|e| e["event_type"] == event_type)
        .collect()
}

/// `eucora_…` sample lines of the process metrics.
async fn metric_lines(app: &TestApp, prefix: &str) -> Vec<String> {
    let reply = app.send(Method::GET, "/metrics", None, &[], None).await;
    reply
        .body
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(String::from)
        .collect()
}

async fn each_policy_started_with_is_recorded_once_and_names_every_judgement(backend: Backend) {
    let db = Arc::new(TestDb::new(backend).await);
    let first = TestApp::spawn_on(db.clone(), &[]).await;
    let auditor = first.token("audrey", "auditor");
    let history = first.get("/api/v1/policies", &auditor).await;
    assert_eq!(history.status, 200, "{:?}", history.body);
    let list = history.body.as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["digest"], digest(NO_BAKE_POLICY));
    assert_eq!(list[0]["previous_digest"], Value::Null);
    assert!(list[0]["source"].as_str().unwrap().ends_with("policy.toml"));
    assert!(list[0]["activated_by"].as_str().unwrap().contains('@'));
    assert!(
        metric_lines(&first, "eucora_policy_info")
            .await
            .contains(&format!(
                "eucora_policy_info{{digest=\"{}\"}} 1",
                digest(NO_BAKE_POLICY)
            )),
        "{:?}",
        metric_lines(&first, "eucora_policy").await
    );
    // The same policy again, on a second replica: nothing new.
    let replica = first.replica().await;
    drop(replica);

    // A restart with lowered thresholds is on the record, with its text and what it replaced.
    drop(first);
    let lowered = NO_BAKE_POLICY.replace(
        "[rings.CANARY]\nmin_bake_time = \"0s\"\n",
        "[rings.CANARY]\nmin_bake_time = \"0s\"\nsuccess_rate = 0.5\n",
    );
    assert_ne!(lowered, NO_BAKE_POLICY);
    let file = db.dir().join("lowered.toml");
    std::fs::write(&file, &lowered).unwrap();
    let app = TestApp::spawn_on(db.clone(), &["--policy", file.to_str().unwrap()]).await;
    let crew = Crew::new(&app);
    let list = app.get("/api/v1/policies", &crew.auditor).await.body;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let new = digest(&lowered);
    assert_eq!(list[1]["digest"], new);
    assert_eq!(list[1]["previous_digest"], digest(NO_BAKE_POLICY));
    assert_eq!(list[1]["source"], file.to_str().unwrap());
    let shown = app
        .get(&format!("/api/v1/policies/{}", &new[..10]), &crew.auditor)
        .await;
    assert_eq!(shown.status, 200);
    assert_eq!(shown.body["policy"], lowered.as_str());
    assert_eq!(
        app.get("/api/v1/policies/0123456789", &crew.auditor)
            .await
            .status,
        404
    );
    assert_eq!(
        app.get("/api/v1/policies/xyz", &crew.auditor).await.status,
        400
    );
    assert_eq!(
        app.get("/api/v1/policies", &crew.deployer).await.status,
        403
    );

    // Every assessment and gate evaluation names the policy it used.
    let id = app
        .create(&crew.requester, intent_body("Firefox", 0.2, "CANARY"))
        .await
        .id();
    app.deploy(&crew.deployer, &id, "LAB", 10, 10).await;
    assert_eq!(app.promote(&crew.deployer, &id).await.status, 200);
    let events = app
        .get(&format!("/api/v1/deployments/{id}/events"), &crew.auditor)
        .await
        .body;
    let text = events.to_string();
    let created = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "DeploymentCreated")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        created["event"]["DeploymentCreated"]["risk"]["policy_digest"], new,
        "{text}"
    );
    let gates = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "PromotionGateEvaluated")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        gates["event"]["PromotionGateEvaluated"]["policy_digest"], new,
        "{text}"
    );

    // The command line: history, show, diff.
    let cli = |args: &[&str]| {
        let mut all = vec!["policy"];
        all.extend_from_slice(args);
        all.extend(["--server", &app.base, "--token", &crew.auditor]);
        eucora_with(None, &all, "")
    };
    let (code, out, err) = cli(&["history"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&new[..12]) && out.contains(&digest(NO_BAKE_POLICY)[..12]),
        "{out}"
    );
    let (code, out, err) = cli(&["show", &new[..12]]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("success_rate = 0.5"), "{out}");
    let (code, out, err) = cli(&["diff", &digest(NO_BAKE_POLICY)[..12], &new[..12]]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l == "+success_rate = 0.5"), "{out}");
    let (code, _, err) = cli(&["show", "nothex!!"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a policy digest"), "{err}");

    // A policy file that does not parse is refused at start, naming where, and records nothing.
    drop(app);
    let before = db.event_count().await;
    let bad = db.dir().join("bad.toml");
    std::fs::write(&bad, "[rings.LAB]\nsuccess_rate = \"high\"\n").unwrap();
    let (code, _, err) = eucora_with(
        None,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
            "--policy",
            bad.to_str().unwrap(),
        ],
        "",
    );
    assert_ne!(code, 0);
    assert!(err.contains("line 2"), "{err}");
    assert_eq!(db.event_count().await, before, "nothing recorded");
}

async fn a_refused_command_is_recorded_counted_and_changes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    // An admin may call every command, so only segregation of duties stops it deciding on a
    // change it requested.
    let admin = app.token("root", "admin");
    let id = app
        .create(&admin, intent_body("Firefox", 0.8, "CANARY"))
        .await
        .id();
    let before = app.intent(&crew.auditor, &id).await.body;

    // The requester approving their own change: segregation of duties.
    let refused = app.approve(&admin, &id).await;
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    // A deployer deciding for the CAB: a missing role.
    let refused = app.approve(&crew.deployer, &id).await;
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    // No token at all: counted, not recorded.
    let anonymous = app
        .send(
            Method::POST,
            &format!("/api/v1/deployments/{id}/approve"),
            None,
            &[("content-type", "application/json")],
            Some(json!({}).to_string()),
        )
        .await;
    assert_eq!(anonymous.status, 401);

    let after = app.intent(&crew.auditor, &id).await.body;
    assert_eq!(
        after["version"], before["version"],
        "the intent is unchanged"
    );
    assert_eq!(after["status"], "awaiting_cab");

    let refusals = events_of(&app, &crew.auditor, "CommandRefused").await;
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    let reasons: Vec<(&str, &str, &str)> = refusals
        .iter()
        .map(|e| {
            let r = &e["event"]["CommandRefused"];
            (
                r["subject"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
                r["command"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("root", "segregation_of_duties", "approve"),
            ("ops-bot", "missing_role", "approve")
        ]
    );
    for e in &refusals {
        assert_eq!(e["stream"], "access");
        assert_eq!(e["event"]["CommandRefused"]["intent"], id.as_str());
        assert!(e["event"]["CommandRefused"]["meta"]["correlation_id"].is_string());
    }
    let counted = metric_lines(&app, "eucora_commands_refused_total").await;
    for line in [
        "eucora_commands_refused_total{reason=\"segregation_of_duties\"} 1",
        "eucora_commands_refused_total{reason=\"missing_role\"} 1",
        "eucora_commands_refused_total{reason=\"unauthenticated\"} 1",
        "eucora_commands_refused_total{reason=\"not_own_intent\"} 0",
    ] {
        assert!(counted.iter().any(|l| l == line), "{line}: {counted:?}");
    }
}
