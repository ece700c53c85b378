//! Schema evolution: events stored as an older version are read as the current one by every
//! reader (history, `as_of`, the list, the audit stream, the metrics, the write side and replay),
//! while their stored bytes and their leaves in the Merkle log stay exactly as they were.

use serde_json::{json, Value};
use sqlx::Connection;

use crate::helpers::{eucora, intent_body, Backend, Crew, TestApp, TestDb};

crate::on_both_backends!(version_1_rejections_are_read_as_version_2_everywhere,);

/// The stored form of each event of one intent: (event_version, payload text).
async fn stored_rows(db: &TestDb, id: &str) -> Vec<(String, String)> {
    let sql = "SELECT event_version, CAST(payload AS TEXT) FROM events
                WHERE aggregate_id = $1 ORDER BY sequence";
    if db.url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query_as(sql)
            .bind(id)
            .fetch_all(&mut conn)
            .await
            .unwrap()
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query_as(sql)
            .bind(id)
            .fetch_all(&mut conn)
            .await
            .unwrap()
    }
}

/// The stored log, once it holds `n` leaves.
async fn logged(db: &TestDb, n: u64) -> Vec<eucora::store::LogTile> {
    let store = db.store().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.log_size().await.unwrap() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the log never held {n} leaves"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store.log_tiles(0, i64::MAX).await.unwrap()
}

/// Appends a CAB rejection as version 1 wrote it (before `retrospective` existed), the way an
/// older build left it in the store.
async fn store_version_1_rejection(db: &TestDb, id: &str) {
    let payload = json!({ "DeploymentRejected": {
        "meta": {
            "event_id": "0190f5c2-0000-7000-8000-000000000001",
            "deployment_id": id,
            "correlation_id": "legacy-1",
            "actor": { "subject": "carol", "role": "cab_approver" },
            "occurred_at": "2026-01-02T03:04:05Z",
            "schema_version": 1
        },
        "ring": "LAB",
        "reason": "rejected by an older build"
    }})
    .to_string();
    let insert = |cast: &str| {
        format!(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ('deployment', $1, 2, 'DeploymentRejected', '1', $2{cast}, '{{}}'{cast})"
        )
    };
    if db.url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query(&insert("::json"))
            .bind(id)
            .bind(payload)
            .execute(&mut conn)
            .await
            .unwrap();
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query(&insert(""))
            .bind(id)
            .bind(payload)
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

fn assert_read_as_version_2(event: &Value) {
    let rejected = &event["DeploymentRejected"];
    assert_eq!(rejected["retrospective"], false, "{event}");
    assert_eq!(rejected["meta"]["schema_version"], 2, "{event}");
    assert_eq!(rejected["reason"], "rejected by an older build");
}

async fn version_1_rejections_are_read_as_version_2_everywhere(backend: Backend) {
    let db = TestDb::new(backend).await;
    let id = {
        let app = TestApp::spawn_on_shared(&db).await;
        let crew = Crew::new(&app);
        app.create(&crew.requester, intent_body("legacy", 0.8, "GLOBAL"))
            .await
            .id()
    };
    store_version_1_rejection(&db, &id).await;
    let before = stored_rows(&db, &id).await;
    assert_eq!(before[1].0, "1");

    let app = TestApp::spawn_on_shared(&db).await;
    let crew = Crew::new(&app);
    // History, and the state it folds to.
    let history = app
        .get(&format!("/api/v1/deployments/{id}/events"), &crew.auditor)
        .await;
    assert_eq!(history.status, 200, "{history:#?}");
    assert_eq!(
        history.body["events"][1]["event_type"],
        "DeploymentRejected"
    );
    assert_read_as_version_2(&history.body["events"][1]["event"]);
    assert_eq!(history.body["state"]["status"], "rejected");
    let as_of = app
        .get(
            &format!("/api/v1/deployments/{id}/events?as_of=2099-01-01T00:00:00Z"),
            &crew.auditor,
        )
        .await;
    assert_read_as_version_2(&as_of.body["events"][1]["event"]);
    // The list, from the persisted read model.
    let list = app.list_until(&crew.auditor, "?status=rejected", 1).await;
    assert_eq!(list.body["items"][0]["id"], id.as_str());
    // The audit stream.
    let stream = app.get("/api/v1/events", &crew.auditor).await;
    assert_eq!(stream.status, 200, "{stream:#?}");
    let of_intents: Vec<&Value> = stream.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["stream"] == "deployment")
        .collect();
    assert_read_as_version_2(&of_intents[1]["event"]);
    // The metrics, once they count every event: the tokens were made by another process, whose
    // commits the runner finds by polling, after the rejection.
    let principals = db.store().await.principals().await.unwrap().len();
    let live = crate::metrics::metrics_with(
        &app,
        "/api/v1/metrics",
        &format!("eucora_events_total{{event_type=\"PrincipalCreated\"}} {principals}"),
    )
    .await;
    assert!(live.contains("eucora_events_total{event_type=\"DeploymentRejected\"} 1"));
    // The write side loads the old event too: the intent is rejected, so a rollback is refused
    // as not allowed in that state (not a failure to read the stream).
    let refused = app
        .post(
            &format!("/api/v1/deployments/{id}/rollback"),
            &crew.deployer,
            json!({ "reason": "too late" }),
        )
        .await;
    refused.assert_problem(409);
    // The server logs both events, the old one included.
    let log = logged(&db, db.event_count().await as u64).await;
    drop(app);

    // Replay reads it as version 2 as well, verifies every leaf, and rebuilds the same metrics.
    let out_file = db.dir().join("replayed.prom");
    let (ok, out, err) = eucora(&[
        "replay",
        "--database-url",
        &db.url,
        "--metrics-out",
        out_file.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!(
            "{} verified against the log, 0 newly logged",
            db.event_count().await
        )),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        crate::metrics::domain_part(&live)
    );
    // Nothing was rewritten: the stored bytes and their leaves are as they were.
    assert_eq!(stored_rows(&db, &id).await, before);
    assert_eq!(logged(&db, db.event_count().await as u64).await, log);
}
