//! Dispatch to connectors through the outbox (docs/connectors.md), against the simulator: what is
//! cleared is published once, what comes back drives the intent, refusals are recorded once,
//! drift is seen, and neither kill -9 nor a second replica makes a side effect twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eucora::connector::idempotency_key;
use eucora::connector::sim::SimConfig;
use eucora_projections::event::{ConnectorAction, Ring};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::connector_sim::Sim;
use crate::helpers::{intent_body, Backend, Crew, TestApp, TestDb};
use crate::metrics::metrics_with;

crate::on_both_backends!(
    ingestion_drives_an_intent_from_approval_to_completion,
    a_rollback_is_remediated_once,
    kill_9_during_a_burst_leaves_every_action_done_once,
    two_replicas_dispatch_each_action_once,
    a_drift_appears_as_an_event_and_a_metric,
    a_busy_intent_gets_its_report_within_a_poll_while_promotion_is_retried,
    a_bad_status_answer_is_recorded_once_per_problem_and_shown,
    a_removed_assignment_is_drift_once_and_read_with_backoff,
    a_slow_call_never_delays_the_others,
    a_connector_pushes_its_results_and_a_bad_push_changes_nothing,
    a_connector_with_batch_status_is_read_a_hundred_at_a_time,
);

/// A simulator whose devices converge in a second.
async fn sim() -> Sim {
    slow_sim(0).await
}

/// [`sim`] answering every call `latency_ms` late.
async fn slow_sim(latency_ms: u64) -> Sim {
    Sim::start(SimConfig {
        converge: Duration::from_secs(1),
        faults: eucora::connector::sim::Faults {
            latency_ms,
            ..Default::default()
        },
        ..SimConfig::default()
    })
    .await
}

/// Writes `text` as the connectors file in the test's directory and returns the serve flags.
fn connectors_toml(db: &TestDb, text: String) -> Vec<String> {
    let path = db.dir().join("connectors.toml");
    std::fs::write(&path, text).unwrap();
    vec!["--connectors".into(), path.display().to_string()]
}

/// Writes a connectors file for `sim` into the test's directory and returns the serve flags.
pub fn connectors(db: &TestDb, sim: &Sim, more: &str) -> Vec<String> {
    connectors_toml(
        db,
        format!(
            "[intune]\nbase_url = \"{}\"\ntimeout = \"2s\"\nretry_min = \"200ms\"\n\
             retry_max = \"1s\"\npoll_interval = \"500ms\"\nreconcile_interval = \"500ms\"\n\
             writes_per_app = \"unlimited\"\nwrites_per_tenant = \"unlimited\"\n{more}",
            sim.base
        ),
    )
}

/// A simulator and a server dispatching to it (with `more` connector settings), and its crew.
async fn started(backend: Backend, more: &str) -> (Sim, TestApp, Crew) {
    let sim = sim().await;
    let db = Arc::new(TestDb::new(backend).await);
    let app = serve(db.clone(), &connectors(&db, &sim, more)).await;
    let crew = Crew::new(&app);
    (sim, app, crew)
}

async fn serve(db: Arc<TestDb>, flags: &[String]) -> TestApp {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    TestApp::spawn_on(db, &flags).await
}

async fn history(app: &TestApp, token: &str, id: &str) -> Vec<Value> {
    let reply = app
        .get(&format!("/api/v1/deployments/{id}/events"), token)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body["events"].as_array().unwrap().clone()
}

fn of_type<'a>(events: &'a [Value], event_type: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event_type"] == event_type)
        .map(|e| &e["event"][event_type])
        .collect()
}

/// Polls until `done` holds of the intent's events, with a deadline.
async fn until(
    app: &TestApp,
    token: &str,
    id: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let events = history(app, token, id).await;
        if done(&events) {
            return events;
        }
        assert!(Instant::now() < deadline, "never saw {what}: {events:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the intent's LAB report counts all ten devices installed.
async fn lab_result(app: &TestApp, crew: &Crew, id: &str) {
    until(app, &crew.auditor, id, "the LAB result", |e| {
        of_type(e, "DeploymentDeployed")
            .last()
            .is_some_and(|d| d["succeeded"] == 10)
    })
    .await;
}

fn key(id: &str, ring: Ring, action: ConnectorAction) -> String {
    idempotency_key(Uuid::parse_str(id).unwrap(), ring, action)
}

async fn ingestion_drives_an_intent_from_approval_to_completion(backend: Backend) {
    let (sim, app, crew) = started(backend, "").await;
    // Approved by policy at creation; nobody reports anything by hand.
    let id = app
        .create(&crew.requester, intent_body("7zip", 0.2, "LAB"))
        .await
        .id();
    let events = until(&app, &crew.auditor, &id, "completion", |e| {
        !of_type(e, "DeploymentCompleted").is_empty()
    })
    .await;
    let dispatched = of_type(&events, "ConnectorDispatched");
    assert_eq!(dispatched.len(), 1, "{events:#?}");
    assert_eq!(dispatched[0]["action"], "publish");
    assert_eq!(dispatched[0]["ring"], "LAB");
    assert_eq!(
        dispatched[0]["meta"]["actor"]["subject"],
        "system:dispatcher"
    );
    // The approval's correlation id follows the action onto its event.
    assert_eq!(
        dispatched[0]["meta"]["correlation_id"],
        of_type(&events, "DeploymentCreated")[0]["meta"]["correlation_id"]
    );
    let reports = of_type(&events, "DeploymentDeployed");
    assert!(!reports.is_empty());
    for report in &reports {
        assert_eq!(report["meta"]["actor"]["subject"], "connector:intune");
        assert_eq!(report["meta"]["actor"]["role"], "connector");
    }
    let last = reports.last().unwrap();
    assert_eq!(
        (&last["target_devices"], &last["succeeded"]),
        (&json!(10), &json!(10))
    );
    let intent = app.intent(&crew.auditor, &id).await;
    assert_eq!(intent.body["status"], "completed");
    assert_eq!(
        intent.body["connector_actions"],
        json!({ key(&id, Ring::Lab, ConnectorAction::Publish): "dispatched" })
    );
    let counts = sim.side_effects().await;
    let publish = key(&id, Ring::Lab, ConnectorAction::Publish);
    assert_eq!(counts["keys"][&publish]["effects"], 1, "{counts}");
    // The connector's metrics are on the process endpoint.
    metrics_with(
        &app,
        "/metrics",
        "circuit_breaker_state{connector_type=\"intune\"} 0",
    )
    .await;
    metrics_with(
        &app,
        "/metrics",
        "connector_health{connector_type=\"intune\"} 1",
    )
    .await;
    let text = metrics_with(&app, "/metrics", "connector_outbox_backlog 0").await;
    assert!(
        text.contains("connector_requests_total{connector_type=\"intune\",operation=\"publish\",outcome=\"ok\"} 1"),
        "{text}"
    );
}

async fn a_rollback_is_remediated_once(backend: Backend) {
    let (sim, app, crew) = started(backend, "").await;
    let id = app
        .create(&crew.requester, intent_body("vlc", 0.2, "CANARY"))
        .await
        .id();
    until(&app, &crew.auditor, &id, "the publication", |e| {
        !of_type(e, "ConnectorDispatched").is_empty()
    })
    .await;
    assert_eq!(
        app.rollback(&crew.deployer, &id, "vendor recall")
            .await
            .status,
        200
    );
    let events = until(&app, &crew.auditor, &id, "the remediation", |e| {
        of_type(e, "ConnectorDispatched").len() == 2
    })
    .await;
    assert_eq!(
        of_type(&events, "ConnectorDispatched")[1]["action"],
        "rollback"
    );
    let counts = sim.side_effects().await;
    assert_eq!(
        counts["keys"][key(&id, Ring::Lab, ConnectorAction::Rollback)]["effects"],
        1
    );
    let status = sim.status(Uuid::parse_str(&id).unwrap(), Ring::Lab).await.1;
    assert_eq!(
        (&status["state"], &status["installed"]),
        (&json!("rollback"), &json!(0))
    );
    // An intent rolled back before it was published has nothing to undo: nothing is sent.
    let held = app
        .create(&crew.requester, intent_body("gimp", 0.8, "CANARY"))
        .await
        .id();
    app.rollback(&crew.requester, &held, "withdrawn").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = history(&app, &crew.auditor, &held).await;
    assert!(
        of_type(&events, "ConnectorDispatched").is_empty(),
        "{events:#?}"
    );
    let sent = sim.side_effects().await;
    assert!(
        !sent["keys"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with(&held)),
        "{sent}"
    );
}

/// With the dispatcher allowed almost no lag, creates are held while it catches up: the hold is
/// counted on the process metrics, every create still succeeds, and every action is sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_are_held_while_the_dispatcher_is_behind_and_all_are_sent_once() {
    // Slow answers: a claim that shows the dispatcher behind stands until its next claim.
    let sim = slow_sim(100).await;
    let db = Arc::new(TestDb::new(Backend::Sqlite).await);
    let mut flags = connectors(&db, &sim, "");
    flags.extend(["--dispatch-max-lag".to_string(), "1ms".to_string()]);
    let app = serve(db, &flags).await;
    let crew = Crew::new(&app);
    // A create right after the dispatcher took the one before it (at least a millisecond after
    // its commit) waits for the dispatcher's next claim. How soon the dispatcher claims is the
    // runner's pace, so a few tries may pass before one lands in that window.
    let mut ids = Vec::new();
    let held = loop {
        let create = app.create(
            &crew.requester,
            intent_body(&format!("app-{}", ids.len()), 0.2, "LAB"),
        );
        ids.push(create.await.id());
        let text = app
            .send(reqwest::Method::GET, "/metrics", None, &[], None)
            .await;
        let text = text.body.as_str().unwrap_or_default().to_string();
        if let Some(line) = text
            .lines()
            .find(|l| l.starts_with("connector_admission_held_total"))
        {
            break (line.to_string(), text);
        }
        assert!(
            ids.len() < 40,
            "no create was held in {} tries:\n{text}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    let (count, text) = held;
    // Each create is held once at most.
    let count: u64 = count.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        count >= 1 && count <= ids.len() as u64,
        "{count} of {}",
        ids.len()
    );
    let seconds = text
        .lines()
        .find_map(|l| l.strip_prefix("connector_admission_held_seconds_total "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no held seconds: {text}"));
    assert!(
        seconds > 0.0 && seconds <= 2.0 * ids.len() as f64,
        "{seconds}"
    );
    each_published_once(&app, &sim, &crew.auditor, &ids, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_is_recorded_once_and_not_retried() {
    let (sim, app, crew) = started(Backend::Sqlite, "").await;
    // Awaiting CAB, so nothing is sent yet; meanwhile someone else publishes the same
    // assignment under another key, and the connector will refuse ours (409).
    let id = app
        .create(&crew.requester, intent_body("putty", 0.8, "LAB"))
        .await
        .id();
    let uuid = Uuid::parse_str(&id).unwrap();
    assert_eq!(sim.publish(uuid, Ring::Lab, Some("by-hand")).await.0, 201);
    assert_eq!(app.approve(&crew.approver, &id).await.status, 200);
    let events = until(&app, &crew.auditor, &id, "the refusal", |e| {
        !of_type(e, "ConnectorDispatchFailed").is_empty()
    })
    .await;
    let failed = of_type(&events, "ConnectorDispatchFailed");
    assert_eq!(
        (&failed[0]["class"], &failed[0]["status"]),
        (&json!("permanent"), &json!(409))
    );
    assert_eq!(failed[0]["attempts"], 1);
    // Not retried: one call, and it stays one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let publish = key(&id, Ring::Lab, ConnectorAction::Publish);
    assert_eq!(sim.side_effects().await["keys"][&publish]["calls"], 1);
    let events = history(&app, &crew.auditor, &id).await;
    assert_eq!(of_type(&events, "ConnectorDispatchFailed").len(), 1);
    assert!(of_type(&events, "ConnectorDispatched").is_empty());
    // The intent says so too.
    assert_eq!(
        app.intent(&crew.auditor, &id).await.body["connector_actions"][&publish],
        "failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_refusal_is_recorded_and_not_retried() {
    let sim = Sim::start(SimConfig {
        token: Some("the-right-token".into()),
        ..SimConfig::default()
    })
    .await;
    let db = Arc::new(TestDb::new(Backend::Sqlite).await);
    let token = db.dir().join("intune.token");
    std::fs::write(&token, "a-wrong-token\n").unwrap();
    let flags = connectors(
        &db,
        &sim,
        &format!("token_file = \"{}\"\n", token.display()),
    );
    let app = serve(db.clone(), &flags).await;
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, intent_body("keepass", 0.2, "LAB"))
        .await
        .id();
    let events = until(&app, &crew.auditor, &id, "the refusal", |e| {
        !of_type(e, "ConnectorDispatchFailed").is_empty()
    })
    .await;
    let failed = &of_type(&events, "ConnectorDispatchFailed")[0];
    assert_eq!(
        (&failed["class"], &failed["status"]),
        (&json!("policy"), &json!(403))
    );
    assert!(!failed.to_string().contains("a-wrong-token"), "{failed}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Refused calls never reach the counts (the simulator refuses before counting a key); the
    // outbox shows one call made.
    let rows = app.db.store().await.outbox_rows().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].state.as_str(), rows[0].attempts), ("failed", 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_connector_nothing_is_dispatched_and_reports_work_by_hand() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, intent_body("notepad++", 0.2, "LAB"))
        .await
        .id();
    assert_eq!(
        app.deploy(&crew.deployer, &id, "LAB", 10, 10).await.status,
        200
    );
    assert_eq!(
        app.intent(&crew.auditor, &id).await.body["status"],
        "completed"
    );
    let events = history(&app, &crew.auditor, &id).await;
    assert!(of_type(&events, "ConnectorDispatched").is_empty());
    assert!(app.db.store().await.outbox_rows().await.unwrap().is_empty());
}

/// Creates `n` intents cleared for LAB, eight at a time; returns their ids.
async fn burst(app: &TestApp, token: &str, n: usize) -> Vec<String> {
    use futures_util::StreamExt;
    futures_util::stream::iter(0..n)
        .map(|i| async move {
            app.create(token, intent_body(&format!("app-{i}"), 0.2, "CANARY"))
                .await
                .id()
        })
        .buffered(8)
        .collect()
        .await
}

/// Waits until every id's publication is recorded; then checks each was made once on the
/// simulator and recorded once on its intent, and, with `one_call`, sent once.
async fn each_published_once(
    app: &TestApp,
    sim: &Sim,
    token: &str,
    ids: &[String],
    one_call: bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = app.db.store().await.outbox_rows().await.unwrap();
        let settled = rows.iter().filter(|r| r.state == "done").count();
        if settled == ids.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{settled} of {} settled: {rows:#?}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counts = sim.side_effects().await;
    for id in ids {
        let publish = key(id, Ring::Lab, ConnectorAction::Publish);
        let this = &counts["keys"][&publish];
        assert_eq!(this["effects"], 1, "{id}: {this}");
        if one_call {
            assert_eq!(this["calls"], 1, "{id}: {this}");
        }
        let events = history(app, token, id).await;
        assert_eq!(of_type(&events, "ConnectorDispatched").len(), 1, "{id}");
    }
    let effects: u64 = counts["actions"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(effects, ids.len() as u64, "side effects beyond the burst's");
}

async fn kill_9_during_a_burst_leaves_every_action_done_once(backend: Backend) {
    // Slow answers, so the kill lands with calls in flight and actions claimed.
    let sim = slow_sim(400).await;
    let db = Arc::new(TestDb::new(backend).await);
    let flags = connectors(&db, &sim, "");
    let mut app = serve(db.clone(), &flags).await;
    let crew = Crew::new(&app);
    let ids = burst(&app, &crew.requester, 40).await;
    // Wait for the first calls, then kill with the rest claimed or queued.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.side_effects().await["requests"].as_u64().unwrap() < 3 {
        assert!(Instant::now() < deadline, "no call reached the simulator");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.kill_9();
    app.wait_exit(Duration::from_secs(10))
        .expect("the server did not die");
    let before = app.db.store().await.outbox_rows().await.unwrap();
    assert!(
        before.iter().any(|r| r.state == "pending"),
        "the kill came too late to test anything: {before:#?}"
    );
    let app = serve(db.clone(), &flags).await;
    each_published_once(&app, &sim, &crew.auditor, &ids, false).await;
}

async fn two_replicas_dispatch_each_action_once(backend: Backend) {
    let sim = slow_sim(20).await;
    let db = Arc::new(TestDb::new(backend).await);
    let flags = connectors(&db, &sim, "");
    let first = serve(db.clone(), &flags).await;
    let second = serve(db.clone(), &flags).await;
    let crew = Crew::new(&first);
    let (a, b) = tokio::join!(
        burst(&first, &crew.requester, 30),
        burst(&second, &crew.requester, 30)
    );
    let ids: Vec<String> = a.into_iter().chain(b).collect();
    // No call is made twice: a claim holds an action from the other replica.
    each_published_once(&first, &sim, &crew.auditor, &ids, true).await;
}

async fn a_drift_appears_as_an_event_and_a_metric(backend: Backend) {
    let (sim, app, crew) = started(backend, "").await;
    let id = app
        .create(&crew.requester, intent_body("slack", 0.2, "LAB"))
        .await
        .id();
    until(&app, &crew.auditor, &id, "completion", |e| {
        !of_type(e, "DeploymentCompleted").is_empty()
    })
    .await;
    let assignment = format!("{id}.lab");
    let lost = sim
        .post(
            "/sim/drift",
            json!({"assignment_id": assignment, "lose_devices": 3}),
            None,
        )
        .await;
    assert_eq!(lost.status(), 204);
    let events = until(&app, &crew.auditor, &id, "the drift", |e| {
        !of_type(e, "DeploymentDriftDetected").is_empty()
    })
    .await;
    let drift = &of_type(&events, "DeploymentDriftDetected")[0];
    // Expected: what the last rollout report before the drift said (the stream's, even when the
    // reconciler read an older one from a view behind it). It may have been made while the
    // simulator's installs were still converging (the ring completes at its threshold), so it is
    // read from the events, not assumed to be all ten; the simulator has converged to ten since,
    // less the three lost.
    let before = events
        .iter()
        .position(|e| e["event_type"] == "DeploymentDriftDetected")
        .unwrap();
    let reports = of_type(&events[..before], "DeploymentDeployed");
    let last_report = &reports.last().expect("a rollout report")["succeeded"];
    assert!(last_report.as_u64().is_some_and(|n| n > 7), "{last_report}");
    assert_eq!(
        (&drift["expected_installed"], &drift["reported_installed"]),
        (last_report, &json!(7))
    );
    metrics_with(
        &app,
        "/metrics",
        "deployment_drift_total{ring=\"LAB\",connector_type=\"intune\"} 1",
    )
    .await;
    // The same drift is recorded once; the assignment vanishing is a new one.
    sim.post(
        "/sim/drift",
        json!({"assignment_id": assignment, "remove": true}),
        None,
    )
    .await;
    let events = until(&app, &crew.auditor, &id, "the second drift", |e| {
        of_type(e, "DeploymentDriftDetected").len() >= 2
    })
    .await;
    let drifts = of_type(&events, "DeploymentDriftDetected");
    assert_eq!(drifts.len(), 2, "{events:#?}");
    assert_eq!(drifts[1]["reported_installed"], Value::Null);
    metrics_with(
        &app,
        "/metrics",
        "deployment_drift_total{ring=\"LAB\",connector_type=\"intune\"} 2",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_connectors_file_stops_the_server_with_our_words() {
    let db = TestDb::new(Backend::Sqlite).await;
    let missing = db.dir().join("nowhere.toml");
    let bad = db.dir().join("bad.toml");
    std::fs::write(
        &bad,
        "[intune]\nbase_url = \"http://user:hunter2@bridge\"\n",
    )
    .unwrap();
    for (file, says) in [
        (&missing, "cannot read the connectors file"),
        (&bad, "put credentials in token_file or token_env"),
    ] {
        let (ok, _, err) = crate::helpers::eucora(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
            "--connectors",
            file.to_str().unwrap(),
        ]);
        assert!(!ok, "{err}");
        assert!(err.contains(says), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_opens_the_breaker_and_actions_wait_for_the_trial_that_closes_it() {
    let sim = sim().await;
    let db = Arc::new(TestDb::new(Backend::Sqlite).await);
    let flags = connectors(&db, &sim, "breaker_failures = 2\nbreaker_open = \"2s\"\n");
    let app = serve(db.clone(), &flags).await;
    let crew = Crew::new(&app);
    // Every call fails for 8 s.
    sim.faults(json!({"outage_seconds": 8.0})).await;
    let outage = Instant::now();
    let ids = burst(&app, &crew.requester, 3).await;
    metrics_with(
        &app,
        "/metrics",
        "circuit_breaker_state{connector_type=\"intune\"} 1",
    )
    .await;
    metrics_with(
        &app,
        "/metrics",
        "connector_health{connector_type=\"intune\"} 0",
    )
    .await;
    // While it is open no call is made: over the outage, the two failures that opened it and
    // one trial every 2 s, not three actions retried every few hundred milliseconds.
    while outage.elapsed() < Duration::from_secs(7) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = sim.side_effects().await["requests"].as_u64().unwrap();
    assert!(
        during <= 8,
        "{during} calls reached the connector during its outage"
    );
    // The first trial after the outage closes it, and every action is then sent, once.
    each_published_once(&app, &sim, &crew.auditor, &ids, true).await;
    metrics_with(
        &app,
        "/metrics",
        "circuit_breaker_state{connector_type=\"intune\"} 0",
    )
    .await;
    let text = metrics_with(
        &app,
        "/metrics",
        "connector_health{connector_type=\"intune\"} 1",
    )
    .await;
    assert!(
        text.contains("connector_requests_total{connector_type=\"intune\",operation=\"publish\",outcome=\"transient\"}"),
        "{text}"
    );
    // A retry is a call that repeats a failed one: every publish call but each action's first,
    // and none for the turns skipped while the breaker was open.
    let sum = |prefix: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let calls = sum("connector_requests_total{connector_type=\"intune\",operation=\"publish\"");
    let retries = sum("connector_retries_total{connector_type=\"intune\",operation=\"publish\"");
    assert_eq!(retries, calls - ids.len() as u64, "{text}");
}

/// A deployer retrying promotion as fast as it can appends an evaluation each time; the connector's
/// report must still land within a poll interval (and a retry) of the devices converging.
async fn a_busy_intent_gets_its_report_within_a_poll_while_promotion_is_retried(backend: Backend) {
    let sim = sim().await;
    let db = Arc::new(TestDb::new(backend).await);
    let policy = db.dir().join("baking.toml");
    std::fs::write(&policy, "[rings.LAB]\nmin_bake_time = \"1h\"\n").unwrap();
    let mut flags = connectors(&db, &sim, "");
    flags.extend(["--policy".into(), policy.to_str().unwrap().into()]);
    let app = serve(db.clone(), &flags).await;
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, intent_body("Audacity", 0.2, "CANARY"))
        .await
        .id();
    // The first report makes the intent deployed; from then on every promotion is evaluated
    // (blocked by the hour's bake time) and recorded.
    until(&app, &crew.auditor, &id, "a first report", |e| {
        !of_type(e, "DeploymentDeployed").is_empty()
    })
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spam = {
        let (base, token, id, stop) = (
            app.base.clone(),
            crew.deployer.clone(),
            id.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = client
                    .post(format!("{base}/api/v1/deployments/{id}/promote"))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body("{}")
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let events = until(&app, &crew.auditor, &id, "the full report", |e| {
        of_type(e, "DeploymentDeployed")
            .iter()
            .any(|r| r["succeeded"] == r["target_devices"])
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    spam.await.unwrap();
    let at = |e: &Value| {
        chrono::DateTime::parse_from_rfc3339(e["meta"]["occurred_at"].as_str().unwrap()).unwrap()
    };
    let published = at(of_type(&events, "ConnectorDispatched")[0]);
    let full = of_type(&events, "DeploymentDeployed")
        .into_iter()
        .find(|r| r["succeeded"] == r["target_devices"])
        .map(at)
        .unwrap();
    assert!(
        of_type(&events, "PromotionGateEvaluated").len() >= 3,
        "the promotions were evaluated meanwhile: {events:#?}"
    );
    // Devices converge 1 s after the publish; a poll every 500 ms; a retry at most 1 s.
    let late = (full - published).to_std().unwrap();
    assert!(
        late <= Duration::from_millis(3500),
        "the full report came {late:?} after the publish"
    );
}

/// Sets the simulator's status answer for an assignment (`None`: its own again).
async fn answer(sim: &Sim, assignment: &str, body: Option<String>) {
    let reply = sim
        .post(
            "/sim/answer",
            json!({"assignment_id": assignment, "body": body}),
            None,
        )
        .await;
    assert_eq!(reply.status(), 204);
}

async fn a_bad_status_answer_is_recorded_once_per_problem_and_shown(backend: Backend) {
    let (sim, app, crew) = started(backend, "").await;
    // Awaiting CAB, so the bad answers are in place before the first poll.
    let id = app
        .create(&crew.requester, intent_body("zoom", 0.8, "LAB"))
        .await
        .id();
    let assignment = format!("{id}.lab");
    answer(&sim, &assignment, Some("not json".into())).await;
    assert_eq!(app.approve(&crew.approver, &id).await.status, 200);
    let rejected = |n: usize| move |e: &[Value]| of_type(e, "ConnectorStatusRejected").len() >= n;
    let events = until(&app, &crew.auditor, &id, "a rejection", rejected(1)).await;
    let first = of_type(&events, "ConnectorStatusRejected")[0].clone();
    assert_eq!(first["assignment_id"], assignment.as_str());
    assert_eq!(
        (&first["ring"], &first["connector_type"]),
        (&json!("LAB"), &json!("intune"))
    );
    assert!(
        first["problem"]
            .as_str()
            .unwrap()
            .contains("not an assignment status"),
        "{first}"
    );
    assert_eq!(first["meta"]["actor"]["subject"], "system:dispatcher");
    // Polled every 500 ms: the same problem is recorded once.
    let before = reads_of(&sim, &assignment).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(reads_of(&sim, &assignment).await >= before + 2);
    let events = history(&app, &crew.auditor, &id).await;
    assert_eq!(
        of_type(&events, "ConnectorStatusRejected").len(),
        1,
        "{events:#?}"
    );
    // Counts the rules refuse are a new problem, with the counts.
    let status = |about: &str, installed: u64| {
        json!({"assignment_id": about, "state": "active", "targeted": 10,
               "installed": installed, "failed": 0, "pending": 0, "incidents": 0})
        .to_string()
    };
    answer(&sim, &assignment, Some(status(&assignment, 12))).await;
    let events = until(&app, &crew.auditor, &id, "a second rejection", rejected(2)).await;
    let second = of_type(&events, "ConnectorStatusRejected")[1];
    let problem = second["problem"].as_str().unwrap();
    assert!(
        problem.contains("must not exceed target_devices") && problem.contains("installed 12"),
        "{problem}"
    );
    // An answer about another assignment is rejected, not reported.
    answer(&sim, &assignment, Some(status(&format!("{id}.pilot"), 5))).await;
    let events = until(&app, &crew.auditor, &id, "a third rejection", rejected(3)).await;
    let third = of_type(&events, "ConnectorStatusRejected")[2];
    assert!(
        third["problem"]
            .as_str()
            .unwrap()
            .contains("is about assignment"),
        "{third}"
    );
    assert!(of_type(&events, "DeploymentDeployed").is_empty());
    // The intent shows the last one; the metric counts them; the status is still approved.
    let intent = app.intent(&crew.auditor, &id).await;
    assert_eq!(intent.body["status"], "approved");
    assert_eq!(
        intent.body["connector_status_rejected"]["problem"],
        third["problem"]
    );
    assert_eq!(intent.body["connector_status_rejected"]["ring"], "LAB");
    let (code, out, err) = crate::cli::client(&app, &crew.auditor, &["get", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("connector status: REJECTED in LAB")
                && l.contains("is about assignment")),
        "{out}"
    );
    metrics_with(
        &app,
        "/metrics",
        "connector_status_rejected_total{ring=\"LAB\",connector_type=\"intune\"} 3",
    )
    .await;
    // The console's page of the change says so, in words.
    let cookie = crate::console::session_of(&app, &crew.auditor).await;
    let page = crate::console::page_text(&app, &cookie, &format!("/ui/changes/{id}")).await;
    assert!(
        page.contains("status answer for <code>")
            && page.contains(&assignment)
            && page.contains("is about assignment"),
        "{page}"
    );
    // A proper answer again: the result is reported and the rejection is cleared.
    answer(&sim, &assignment, None).await;
    until(&app, &crew.auditor, &id, "completion", |e| {
        !of_type(e, "DeploymentCompleted").is_empty()
    })
    .await;
    let intent = app.intent(&crew.auditor, &id).await;
    assert_eq!(intent.body["connector_status_rejected"], Value::Null);
}

async fn a_removed_assignment_is_drift_once_and_read_with_backoff(backend: Backend) {
    let (sim, app, crew) = started(backend, "").await;
    // Bound for PILOT: deployed in LAB, it stays live (nobody promotes it).
    let id = app
        .create(&crew.requester, intent_body("teams", 0.2, "PILOT"))
        .await
        .id();
    lab_result(&app, &crew, &id).await;
    let assignment = format!("{id}.lab");
    let removed = sim
        .post(
            "/sim/drift",
            json!({"assignment_id": assignment, "remove": true}),
            None,
        )
        .await;
    assert_eq!(removed.status(), 204);
    let events = until(&app, &crew.auditor, &id, "the drift", |e| {
        !of_type(e, "DeploymentDriftDetected").is_empty()
    })
    .await;
    assert_eq!(
        of_type(&events, "DeploymentDriftDetected")[0]["reported_installed"],
        Value::Null
    );
    // Polled (500 ms) and reconciled (500 ms), it would be read 12 times in 3 s; with the
    // backoff (1 s, 2 s, 4 s, ...) at most 3.
    let before = reads_of(&sim, &assignment).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = reads_of(&sim, &assignment).await - before;
    assert!(during <= 3, "{during} reads of a removed assignment in 3 s");
    let events = history(&app, &crew.auditor, &id).await;
    assert_eq!(
        of_type(&events, "DeploymentDriftDetected").len(),
        1,
        "{events:#?}"
    );
    // Once the intent has ended, a removed assignment is not read at all (a completed intent's
    // is read by reconciliation until then).
    let done = app
        .create(&crew.requester, intent_body("webex", 0.2, "LAB"))
        .await
        .id();
    until(&app, &crew.auditor, &done, "completion", |e| {
        !of_type(e, "DeploymentCompleted").is_empty()
    })
    .await;
    let gone = format!("{done}.lab");
    let read_while_live = reads_of(&sim, &gone).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(reads_of(&sim, &gone).await > read_while_live, "reconciled");
    sim.post(
        "/sim/drift",
        json!({"assignment_id": gone, "remove": true}),
        None,
    )
    .await;
    until(&app, &crew.auditor, &done, "the drift", |e| {
        !of_type(e, "DeploymentDriftDetected").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = reads_of(&sim, &gone).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reads_of(&sim, &gone).await, after);
}

async fn reads_of(sim: &Sim, assignment: &str) -> u64 {
    sim.side_effects().await["reads"][assignment]
        .as_u64()
        .unwrap_or(0)
}

/// When `id`'s publication was recorded (its `ConnectorDispatched`).
async fn dispatched_at(app: &TestApp, token: &str, id: &str) -> chrono::DateTime<chrono::Utc> {
    let events = until(app, token, id, "the publication", |e| {
        !of_type(e, "ConnectorDispatched").is_empty()
    })
    .await;
    let at = &of_type(&events, "ConnectorDispatched")[0]["meta"]["occurred_at"];
    serde_json::from_value(at.clone()).unwrap()
}

async fn a_slow_call_never_delays_the_others(backend: Backend) {
    let sim = sim().await;
    let db = Arc::new(TestDb::new(backend).await);
    let flags = connectors_toml(
        &db,
        format!(
            "[intune]\nbase_url = \"{}\"\ntimeout = \"10s\"\nmax_in_flight = 4\n\
             writes_per_app = \"unlimited\"\nwrites_per_tenant = \"unlimited\"\n\
             poll_interval = \"500ms\"\n",
            sim.base
        ),
    );
    let app = serve(db.clone(), &flags).await;
    let crew = Crew::new(&app);
    // One publication takes 4 s to answer.
    let slow = app
        .create(&crew.requester, intent_body("cad-suite", 0.8, "LAB"))
        .await
        .id();
    sim.faults(json!({"slow": {format!("{slow}.lab"): 4000}}))
        .await;
    assert_eq!(app.approve(&crew.approver, &slow).await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Cleared while it is in flight, the others are sent and recorded at once, not after it.
    let quick = burst(&app, &crew.requester, 3).await;
    let slow_at = dispatched_at(&app, &crew.auditor, &slow).await;
    for id in &quick {
        let at = dispatched_at(&app, &crew.auditor, id).await;
        assert!(
            at < slow_at,
            "{id} was recorded at {at}, after the slow call's {slow_at}"
        );
    }
    // And never more than max_in_flight calls at once.
    let most = sim.side_effects().await["max_in_flight"].as_u64().unwrap();
    assert!((2..=4).contains(&most), "{most} calls at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_connector_stay_within_max_in_flight() {
    let sim = Sim::start(SimConfig {
        converge: Duration::from_secs(1),
        faults: eucora::connector::sim::Faults {
            latency_ms: 800,
            ..Default::default()
        },
        // Down while the burst is cleared: the publishes are all owed when it comes back.
        outages: vec![(Duration::ZERO, Duration::from_secs(4))],
        ..SimConfig::default()
    })
    .await;
    let db = Arc::new(TestDb::new(Backend::Sqlite).await);
    let app = serve(
        db.clone(),
        &connectors(&db, &sim, "max_in_flight = 2\nbreaker_failures = 1000\n"),
    )
    .await;
    let crew = Crew::new(&app);
    // Without the bound, most of them would be in flight at once.
    let ids = burst(&app, &crew.requester, 8).await;
    each_published_once(&app, &sim, &crew.auditor, &ids, false).await;
    // Sends and status reads alike: two at a time, and two at once (not one by one).
    let most = sim.side_effects().await["max_in_flight"].as_u64().unwrap();
    assert_eq!(most, 2, "{:#}", sim.side_effects().await);
}

/// A pushed result: `installed` of 10 devices.
fn pushed(assignment: &str, sequence: u64, installed: u64) -> Value {
    json!({"assignment_id": assignment, "sequence": sequence, "state": "active", "targeted": 10,
           "installed": installed, "failed": 0, "pending": 10 - installed.min(10), "incidents": 0})
}

async fn a_connector_pushes_its_results_and_a_bad_push_changes_nothing(backend: Backend) {
    let (sim, app, crew) = started(backend, "mode = \"push\"\n").await;
    let intune = app.token("connector:intune", "connector");
    let id = app
        .create(&crew.requester, intent_body("notepad", 0.2, "LAB"))
        .await
        .id();
    until(&app, &crew.auditor, &id, "the publication", |e| {
        !of_type(e, "ConnectorDispatched").is_empty()
    })
    .await;
    let assignment = format!("{id}.lab");
    let results = "/api/v1/connectors/intune/results";
    // Pushed, not polled: nothing reads the assignment.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(reads_of(&sim, &assignment).await, 0);
    let first = app.post(results, &intune, pushed(&assignment, 1, 4)).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body["status"], "deployed");
    let deployed = |events: &[Value]| {
        of_type(events, "DeploymentDeployed")
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()
    };
    let events = history(&app, &crew.auditor, &id).await;
    let reports = deployed(&events);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["sequence"], 1);
    assert_eq!(reports[0]["meta"]["actor"]["subject"], "connector:intune");
    assert_eq!(reports[0]["meta"]["actor"]["role"], "connector");
    // The same sequence again: answered, applied once.
    let again = app.post(results, &intune, pushed(&assignment, 1, 4)).await;
    assert_eq!(again.status, 200, "{again:?}");
    // Bad pushes: a clear 4xx in our words, nothing appended.
    let jamf = app.token("connector:jamf", "connector");
    let other_ring = format!("{id}.pilot");
    for (token, path, body, status, says) in [
        (
            &intune,
            results,
            pushed(&assignment, 1, 6),
            409,
            "other counts",
        ),
        (
            &intune,
            results,
            pushed(&assignment, 0, 6),
            409,
            "before sequence 1",
        ),
        (
            &intune,
            results,
            pushed(&assignment, 2, 11),
            422,
            "must not exceed target_devices",
        ),
        (
            &intune,
            results,
            pushed(&other_ring, 2, 5),
            404,
            "never sent assignment",
        ),
        (
            &intune,
            results,
            pushed("not-an-assignment", 2, 5),
            422,
            "is not an assignment",
        ),
        (
            &intune,
            results,
            json!({"assignment_id": assignment, "sequence": -1}),
            422,
            "not a whole number",
        ),
        (
            &jamf,
            "/api/v1/connectors/jamf/results",
            pushed(&assignment, 2, 5),
            403,
            "connector intune's",
        ),
        (
            &jamf,
            results,
            pushed(&assignment, 2, 5),
            403,
            "its own token",
        ),
        (
            &crew.deployer,
            results,
            pushed(&assignment, 2, 5),
            403,
            "role deployer",
        ),
    ] {
        let reply = app.post(path, token, body.clone()).await;
        reply.assert_problem(status);
        let detail = reply.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{body}: {detail}");
    }
    let events = history(&app, &crew.auditor, &id).await;
    assert_eq!(deployed(&events).len(), 1, "{events:#?}");
    // A connector pushing for another's assignment is on the record.
    let refused: Vec<Value> = app
        .global_events(&crew.auditor)
        .await
        .into_iter()
        .filter(|e| e["event_type"] == "CommandRefused")
        .map(|e| e["event"]["CommandRefused"].clone())
        .filter(|r| r["reason"] == "not_own_assignment")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.iter().all(|r| r["subject"] == "connector:jamf"));
    // The next sequence completes the ring.
    let done = app.post(results, &intune, pushed(&assignment, 2, 10)).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(done.body["status"], "completed");
}

async fn a_connector_with_batch_status_is_read_a_hundred_at_a_time(backend: Backend) {
    let (sim, app, crew) = started(backend, "batch_status = true\n").await;
    let ids = burst(&app, &crew.requester, 5).await;
    for id in &ids {
        lab_result(&app, &crew, id).await;
    }
    // Five assignments read in batches: far fewer calls than reads.
    let counts = sim.side_effects().await;
    let batches = counts["batches"].as_u64().unwrap();
    let reads: u64 = ids
        .iter()
        .map(|id| counts["reads"][format!("{id}.lab")].as_u64().unwrap_or(0))
        .sum();
    assert!(batches > 0, "{counts}");
    assert!(
        reads >= 2 * batches,
        "{reads} reads in {batches} batches: {counts}"
    );
    // A gone assignment is left out of the answer: drift, as with a 404.
    let gone = format!("{}.lab", ids[0]);
    sim.post(
        "/sim/drift",
        json!({"assignment_id": gone, "remove": true}),
        None,
    )
    .await;
    let events = until(&app, &crew.auditor, &ids[0], "the drift", |e| {
        !of_type(e, "DeploymentDriftDetected").is_empty()
    })
    .await;
    assert_eq!(
        of_type(&events, "DeploymentDriftDetected")[0]["reported_installed"],
        Value::Null
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_connector_is_known_by_its_own_name_everywhere() {
    let sim = sim().await;
    let db = Arc::new(TestDb::new(Backend::Sqlite).await);
    let flags = connectors_toml(
        &db,
        format!(
            "[connectors.acme-mdm]\ntype = \"custom\"\nbase_url = \"{}\"\n\
             poll_interval = \"500ms\"\nreconcile_interval = \"500ms\"\n",
            sim.base
        ),
    );
    let app = serve(db.clone(), &flags).await;
    let crew = Crew::new(&app);
    let mut body = intent_body("vlc", 0.2, "LAB");
    body["connector_type"] = json!("acme-mdm");
    let created = app.create(&crew.requester, body.clone()).await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body["connector_type"], "acme-mdm");
    let id = created.id();
    let events = until(&app, &crew.auditor, &id, "completion", |e| {
        !of_type(e, "DeploymentCompleted").is_empty()
    })
    .await;
    assert_eq!(
        of_type(&events, "ConnectorDispatched")[0]["connector_type"],
        "acme-mdm"
    );
    let reports = of_type(&events, "DeploymentDeployed");
    assert_eq!(reports[0]["meta"]["actor"]["subject"], "connector:acme-mdm");
    // Its name is its label: it does not pose as Intune.
    let text = metrics_with(
        &app,
        "/metrics",
        "connector_health{connector_type=\"acme-mdm\"} 1",
    )
    .await;
    assert!(!text.contains("connector_type=\"intune\""), "{text}");
    // A connector this server does not have is refused in words, and nothing is created.
    let before = app.event_count().await;
    body["connector_type"] = json!("nobody");
    let refused = app.create(&crew.requester, body).await;
    refused.assert_problem(422);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("a custom connector configured on this server"),
        "{refused:?}"
    );
    assert_eq!(app.event_count().await, before);
}
