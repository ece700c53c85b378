//! End-to-end: the real binary walks an intent through its lifecycle over HTTP.

use serde_json::json;

use crate::helpers::{intent_body, Backend, Crew, TestApp};

crate::on_both_backends!(
    an_intent_walks_from_cab_approval_to_completion_in_its_target_ring,
    a_blocked_promotion_answers_409_with_every_gate_and_is_recorded,
    the_stream_of_an_intent_lists_events_with_positions_and_replays_as_of_a_time,
    the_list_filters_and_pages_with_a_cursor,
    a_write_against_an_older_version_gets_412,
    health_probes_and_the_openapi_document_answer_without_a_token,
    sigterm_lets_the_server_stop_cleanly,
    a_request_that_runs_past_the_timeout_gets_503,
);

async fn an_intent_walks_from_cab_approval_to_completion_in_its_target_ring(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);

    let created = app
        .create(&crew.requester, intent_body("Firefox", 0.8, "CANARY"))
        .await;
    assert_eq!(created.status, 201, "{created:#?}");
    let id = created.id();
    assert_eq!(
        created.headers["location"],
        format!("/api/v1/deployments/{id}")
    );
    assert_eq!(created.headers["etag"], "\"1\"");
    assert_eq!(created.body["status"], "awaiting_cab");
    assert_eq!(created.body["requires_cab"], true);
    assert_eq!(created.body["risk_model_version"], "risk_model_v1.0");
    assert_eq!(created.body["requested_by"], "alice");

    // Nothing may be deployed before CAB approval.
    app.deploy(&crew.deployer, &id, "LAB", 10, 10)
        .await
        .assert_problem(409);

    let approved = app.approve(&crew.approver, &id).await;
    assert_eq!(approved.status, 200, "{approved:#?}");
    assert_eq!(approved.body["status"], "approved");
    assert_eq!(approved.body["approved_by"], "carol");
    assert_eq!(approved.body["stream_version"], 2);

    let deployed = app.deploy(&crew.deployer, &id, "LAB", 10, 10).await;
    assert_eq!(deployed.body["status"], "deployed");

    let promoted = app.promote(&crew.deployer, &id).await;
    assert_eq!(promoted.status, 200, "{promoted:#?}");
    assert_eq!(promoted.body["current_ring"], "CANARY");
    assert_eq!(promoted.body["status"], "approved");
    assert_eq!(promoted.body["last_promotion"]["passed"], true);
    let gates = promoted.body["last_promotion"]["gates"].as_array().unwrap();
    let names: Vec<&str> = gates.iter().map(|g| g["gate"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "success_rate",
            "time_to_compliance",
            "incidents",
            "bake_time",
            "rollback_plan",
            "cab_approval"
        ]
    );

    let done = app.deploy(&crew.deployer, &id, "CANARY", 100, 99).await;
    assert_eq!(done.body["status"], "completed", "{done:#?}");
    // Created, Approved, Deployed, GateEvaluated, Promoted, Deployed, Completed.
    assert_eq!(done.body["stream_version"], 7);
    assert_eq!(app.intent_event_count().await, 7);

    // A completed intent is terminal.
    app.rollback(&crew.deployer, &id, "late")
        .await
        .assert_problem(409);
    let fetched = app.intent(&crew.auditor, &id).await;
    assert_eq!(fetched.body["status"], "completed");
    assert_eq!(fetched.headers["etag"], "\"7\"");
}

async fn a_blocked_promotion_answers_409_with_every_gate_and_is_recorded(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, intent_body("Zoom", 0.2, "GLOBAL"))
        .await
        .id();
    app.deploy(&crew.deployer, &id, "LAB", 100, 90).await;
    let before = app.event_count().await;

    let blocked = app.promote(&crew.deployer, &id).await;
    blocked.assert_problem(409);
    assert!(blocked.body["detail"]
        .as_str()
        .unwrap()
        .contains("success_rate"));
    let promotion = &blocked.body["promotion"];
    assert_eq!(promotion["passed"], false);
    let rate = promotion["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "success_rate")
        .unwrap();
    assert_eq!(
        (rate["threshold"].as_f64(), rate["measured"].as_f64()),
        (Some(0.95), Some(0.9))
    );
    assert_eq!(rate["passed"], false);
    assert_eq!(blocked.body["intent"]["current_ring"], "LAB");
    // The evaluation is recorded even though the promotion failed.
    assert_eq!(app.event_count().await, before + 1);
    assert_eq!(
        app.intent(&crew.auditor, &id).await.body["current_ring"],
        "LAB"
    );
}

async fn the_stream_of_an_intent_lists_events_with_positions_and_replays_as_of_a_time(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let created = app
        .send(
            reqwest::Method::POST,
            "/api/v1/deployments",
            Some(&crew.requester),
            &[("x-correlation-id", "change-4711")],
            Some(intent_body("Teams", 0.2, "GLOBAL").to_string()),
        )
        .await;
    assert_eq!(created.headers["x-correlation-id"], "change-4711");
    let id = created.id();
    let first = app
        .get(&format!("/api/v1/deployments/{id}/events"), &crew.auditor)
        .await;
    let created_at = first.body["events"][1]["event"]["DeploymentApproved"]["meta"]["occurred_at"]
        .as_str()
        .unwrap()
        .to_string();
    app.rollback(&crew.deployer, &id, "vendor recall").await;

    let history = app
        .get(&format!("/api/v1/deployments/{id}/events"), &crew.auditor)
        .await;
    assert_eq!(history.status, 200);
    let events = history.body["events"].as_array().unwrap();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "DeploymentCreated",
            "DeploymentApproved",
            "DeploymentRolledBack"
        ]
    );
    let positions: Vec<i64> = events
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let meta = &events[0]["event"]["DeploymentCreated"]["meta"];
    assert_eq!(meta["correlation_id"], "change-4711");
    assert_eq!(
        meta["actor"],
        json!({ "subject": "alice", "role": "requester" })
    );
    assert_eq!(meta["schema_version"], 5);
    assert_eq!(history.body["state"]["status"], "rolled_back");

    let then = app
        .get(
            &format!("/api/v1/deployments/{id}/events?as_of={created_at}"),
            &crew.auditor,
        )
        .await;
    assert_eq!(then.body["events"].as_array().unwrap().len(), 2);
    assert_eq!(then.body["state"]["status"], "approved");
}

async fn the_list_filters_and_pages_with_a_cursor(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let mut ids = vec![];
    for n in 0..5 {
        let risk = if n % 2 == 0 { 0.2 } else { 0.8 };
        ids.push(
            app.create(
                &crew.requester,
                intent_body(&format!("app-{n}"), risk, "GLOBAL"),
            )
            .await
            .id(),
        );
    }
    app.list_until(&crew.auditor, "?limit=500", 5).await;
    let page1 = app.get("/api/v1/deployments?limit=2", &crew.auditor).await;
    let listed: Vec<&str> = page1.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[0].as_str(), ids[1].as_str()]);
    let cursor = page1.body["next_cursor"].as_str().unwrap();
    let page2 = app
        .get(
            &format!("/api/v1/deployments?limit=2&cursor={cursor}"),
            &crew.auditor,
        )
        .await;
    let listed: Vec<&str> = page2.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[3].as_str()]);

    let waiting = app
        .get("/api/v1/deployments?status=awaiting_cab", &crew.auditor)
        .await;
    let listed: Vec<&str> = waiting.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[1].as_str(), ids[3].as_str()]);
    assert!(waiting.body["next_cursor"].is_null());
    let by_app = app
        .get("/api/v1/deployments?app_name=app-4&ring=LAB", &crew.auditor)
        .await;
    assert_eq!(by_app.body["items"].as_array().unwrap().len(), 1);
    let none = app
        .get("/api/v1/deployments?ring=GLOBAL", &crew.auditor)
        .await;
    assert_eq!(none.body["items"].as_array().unwrap().len(), 0);
}

async fn a_write_against_an_older_version_gets_412(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, intent_body("Slack", 0.2, "GLOBAL"))
        .await
        .id();
    let report =
        json!({ "ring": "LAB", "target_devices": 10, "succeeded": 10, "failed": 0 }).to_string();
    let path = format!("/api/v1/deployments/{id}/deploy");
    let stale = app
        .send(
            reqwest::Method::POST,
            &path,
            Some(&crew.deployer),
            &[("if-match", "\"1\"")],
            Some(report.clone()),
        )
        .await;
    stale.assert_problem(412);
    assert_eq!(app.intent_event_count().await, 2);
    let current = app
        .send(
            reqwest::Method::POST,
            &path,
            Some(&crew.deployer),
            &[("if-match", "\"2\"")],
            Some(report),
        )
        .await;
    assert_eq!(current.status, 200);
    assert_eq!(current.headers["etag"], "\"3\"");
}

async fn health_probes_and_the_openapi_document_answer_without_a_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let live = app
        .send(reqwest::Method::GET, "/health/live", None, &[], None)
        .await;
    assert_eq!(live.status, 200);
    let ready = app
        .send(reqwest::Method::GET, "/health/ready", None, &[], None)
        .await;
    assert_eq!(ready.status, 200);
    let expected = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(ready.body["backend"], expected);
    let doc = app
        .send(
            reqwest::Method::GET,
            "/api/v1/openapi.json",
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(doc.body["openapi"], "3.1.0");
    let paths = doc.body["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/deployments", "post"),
        ("/api/v1/deployments", "get"),
        ("/api/v1/deployments/{id}", "get"),
        ("/api/v1/deployments/{id}/events", "get"),
        ("/api/v1/deployments/{id}/approve", "post"),
        ("/api/v1/deployments/{id}/reject", "post"),
        ("/api/v1/deployments/{id}/deploy", "post"),
        ("/api/v1/deployments/{id}/promote", "post"),
        ("/api/v1/deployments/{id}/rollback", "post"),
        ("/api/v1/events", "get"),
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/api/v1/metrics", "get"),
        ("/metrics", "get"),
        ("/docs/runbook", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} undocumented"
        );
    }
    let schemas = doc.body["components"]["schemas"].as_object().unwrap();
    assert!(schemas["CreateRequest"]["properties"]["risk_factors"].is_object());

    // The runbook every alert links to, with an anchor for each alert.
    let runbook = app
        .send(reqwest::Method::GET, "/docs/runbook", None, &[], None)
        .await;
    assert_eq!(runbook.status, 200);
    assert!(runbook.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = runbook.body.as_str().unwrap();
    let alerts = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("prometheus/rules/alerts.yml"),
    )
    .unwrap();
    for name in alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let anchor = format!("id=\"{}\"", name.to_lowercase());
        assert!(page.contains(&anchor), "no {anchor} in the served runbook");
    }
}

async fn sigterm_lets_the_server_stop_cleanly(backend: Backend) {
    let db = std::sync::Arc::new(crate::helpers::TestDb::new(backend).await);
    let log = db.dir().join("server.log");
    let mut app = TestApp::spawn_configured(db, &[], &[], Some(&log)).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &app.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = app
        .wait_exit(std::time::Duration::from_secs(20))
        .expect("server still running 20 s after SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
    // SQLite's write-ahead log is checkpointed: only the database file is left.
    if backend == Backend::Sqlite {
        for leftover in ["eucora.db-wal", "eucora.db-shm"] {
            assert!(
                !app.db.dir().join(leftover).exists(),
                "{leftover} left behind after a clean stop; the server said:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(app.db.dir().join("eucora.db").exists());
    }
}

async fn a_request_that_runs_past_the_timeout_gets_503(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(backend, &["--request-timeout", "1"]).await;
    let crew = Crew::new(&app);
    // A client that announces a body and then stalls, past the one-second limit.
    let mut stream = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /api/v1/deployments HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{",
        crew.requester
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_string(&mut answer),
    );
    let _ = read.await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // The timed-out request is counted under its route, as a 503.
    let metrics = app
        .send(reqwest::Method::GET, "/api/v1/metrics", None, &[], None)
        .await;
    let text = metrics.body.as_str().unwrap_or_default();
    let counted = "http_server_request_duration_seconds_count{http_request_method=\"POST\",\
                   http_response_status_code=\"503\",http_route=\"/api/v1/deployments\"} 1";
    assert!(text.contains(counted), "{text}");
    assert!(
        answer.contains("application/problem+json") && answer.contains("retry-after"),
        "{answer}"
    );
    assert_eq!(app.intent_event_count().await, 0);
}
