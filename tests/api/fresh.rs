//! Fresh reads: a command's answer carries its index, and a read given `?min_index` reflects
//! that command or says it could not in time (docs/api.md, "Fresh reads").

use std::time::{Duration, Instant};

use crate::helpers::{intent_body, Backend, Crew, TestApp};

crate::on_both_backends!(a_read_given_a_commands_index_reflects_that_command);

async fn a_read_given_a_commands_index_reflects_that_command(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let created = app
        .create(&crew.requester, intent_body("Gimp", 0.1, "CANARY"))
        .await;
    let id = created.id();
    let index: i64 = created.headers["eucora-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        created.body["index"], index,
        "the header and the body agree"
    );
    // Each command answers with a later index; the intent's own view takes one and answers.
    let reported = app.deploy(&crew.deployer, &id, "LAB", 10, 4).await;
    let later: i64 = reported.headers["eucora-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(later > index, "{index} then {later}");
    let own = app
        .get(
            &format!("/api/v1/deployments/{id}?min_index={later}"),
            &crew.auditor,
        )
        .await;
    assert_eq!(own.status, 200);
    assert!(own.body.get("index").is_none(), "a read carries no index");

    // The list, the global stream and the metrics, each as of the report at least, at once.
    let list = app
        .get(
            &format!("/api/v1/deployments?min_index={later}&app_name=Gimp"),
            &crew.auditor,
        )
        .await;
    assert_eq!(list.status, 200, "{:?}", list.body);
    assert_eq!(
        list.body["items"][0]["status"], "deployed",
        "{:?}",
        list.body
    );
    let stream = app
        .get(
            &format!("/api/v1/events?min_index={later}&limit=1000"),
            &crew.auditor,
        )
        .await;
    assert_eq!(stream.status, 200, "{:?}", stream.body);
    let positions: Vec<i64> = stream.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert!(positions.contains(&later), "{positions:?}");
    let metrics = app
        .send(
            reqwest::Method::GET,
            &format!("/api/v1/metrics?min_index={later}"),
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(metrics.status, 200);
    let text = metrics.body.as_str().unwrap_or_default();
    assert!(
        text.lines().any(|l| l
            .starts_with("deployments_in_state{state=\"deployed\",ring=\"LAB\"} ")
            && !l.ends_with(" 0")),
        "the metrics reflect the report"
    );

    // An index no event has: 404 at once.
    let started = Instant::now();
    let ahead = app
        .get(
            &format!("/api/v1/deployments?min_index={}", later + 1_000_000),
            &crew.auditor,
        )
        .await;
    ahead.assert_problem(404);
    assert!(started.elapsed() < Duration::from_millis(900));
    assert!(ahead.body["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("no event has index"));

    // A transaction still open before a command's commit holds every reader back (PostgreSQL's
    // global stream is read in transaction order): the read waits a second, then 503 with
    // Retry-After; once that transaction ends, the same read answers.
    if backend == Backend::Postgres {
        use sqlx::Connection;
        let mut held = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
        let mut open = held.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             VALUES ('deployment', 'held-open', 1, 'Nothing', '1', '{}', '{}')",
        )
        .execute(&mut *open)
        .await
        .unwrap();
        let report = app.deploy(&crew.deployer, &id, "LAB", 10, 6).await;
        let behind = report.headers["eucora-index"].to_str().unwrap().to_string();
        let path = format!("/api/v1/deployments?min_index={behind}");
        let started = Instant::now();
        let waited = app.get(&path, &crew.auditor).await;
        let took = started.elapsed();
        waited.assert_problem(503);
        assert!(
            waited.headers.contains_key("retry-after"),
            "{:?}",
            waited.headers
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{took:?}"
        );
        open.rollback().await.unwrap();
        assert_eq!(app.get(&path, &crew.auditor).await.status, 200);
    }

    // Not an index: refused in our words.
    for bad in ["0", "-3", "soon"] {
        let refused = app
            .get(
                &format!("/api/v1/deployments?min_index={bad}"),
                &crew.auditor,
            )
            .await;
        refused.assert_problem(400);
        let detail = refused.body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("min_index") && detail.contains("whole number from 1"),
            "{detail}"
        );
    }

    // A repeated keyed command answers with the index it first answered with.
    let key = [("idempotency-key", "fresh-1")];
    let body = serde_json::json!({"reason": "not today"});
    let path = format!("/api/v1/deployments/{id}/rollback");
    let send = || {
        app.send(
            reqwest::Method::POST,
            &path,
            Some(&crew.deployer),
            &key,
            Some(body.to_string()),
        )
    };
    let first = send().await;
    let again = send().await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(first.headers["eucora-index"], again.headers["eucora-index"]);
}
