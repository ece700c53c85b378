//! Rows written into the events table by hand that no projection can read: the service names
//! them (log, metric, readiness; on SQLite, where the row lands before the logged history, the
//! integrity check) and keeps working; `eucora replay` names them and finishes.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use sqlx::Connection;

use crate::helpers::{eucora, intent_body, Backend, Crew, TestApp, TestDb};

crate::on_both_backends!(a_malformed_row_at_position_0_is_named_and_wedges_nothing,);

/// Polls `/health/ready` until it lists an unreadable event; returns the body.
async fn ready_naming_unreadable(app: &TestApp) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = app
            .send(Method::GET, "/health/ready", None, &[], None)
            .await;
        if reply.status == 200 && reply.body["unreadable_events"].is_array() {
            return reply.body;
        }
        assert!(
            Instant::now() < deadline,
            "never ready with the unreadable row named: {reply:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_malformed_row_at_position_0_is_named_and_wedges_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    {
        let app = TestApp::spawn_on_shared(&db).await;
        let crew = Crew::new(&app);
        app.create(&crew.requester, intent_body("before", 0.2, "GLOBAL"))
            .await;
        // The persisted projections have moved past both events before the forged row arrives
        // behind them.
        let store = db.store().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while store.log_size().await.unwrap() < 2
            || store.checkpoint("intents").await.unwrap().ordinal < 2
        {
            assert!(
                Instant::now() < deadline,
                "the server never logged its events"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A plain INSERT, triggers on, at position 0, of something that is no event.
    let forged = match backend {
        Backend::Sqlite => {
            "INSERT INTO events (position, aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata) VALUES (0, 'deployment', 'forged', 1, \
             'DeploymentCreated', '1', '{\"not\":\"an event\"}', '{}')"
        }
        Backend::Postgres => {
            "INSERT INTO events (position, aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata) OVERRIDING SYSTEM VALUE VALUES (0, 'deployment', \
             'forged', 1, 'DeploymentCreated', '1', '{\"not\":\"an event\"}', '{}')"
        }
    };
    db.execute(forged).await;

    let app = TestApp::spawn_on_shared(&db).await;
    let crew = Crew::new(&app);
    match backend {
        // PostgreSQL reads the row after everything committed before it: an event the log
        // appends, that no projection can read.
        Backend::Postgres => {
            let ready = ready_naming_unreadable(&app).await;
            assert_eq!(ready["unreadable_events"][0]["position"], 0, "{ready}");
            assert!(
                ready["unreadable_events"][0]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("not a valid DeploymentCreated"),
                "{ready}"
            );
        }
        // SQLite reads in position order: the row sits before the logged events, a history
        // rewritten under the log, and the integrity check says so (not ready).
        Backend::Sqlite => {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let reply = app
                    .send(Method::GET, "/health/ready", None, &[], None)
                    .await;
                let detail = reply.body["detail"].as_str().unwrap_or_default();
                if reply.status == 503 && detail.contains("integrity check failed") {
                    assert!(
                        detail.contains("at position 0") && detail.contains("inserted"),
                        "{detail}"
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the inserted row was never caught: {reply:#?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Metrics are served, the row is counted, and the runner keeps going.
    let metrics = crate::metrics::metrics_with(
        &app,
        "/api/v1/metrics",
        "eucora_events_total{event_type=\"DeploymentCreated\"} 1",
    )
    .await;
    assert!(
        metrics.contains("eucora_stream_unreadable_events 1"),
        "{metrics}"
    );
    app.create(&crew.requester, intent_body("after", 0.2, "GLOBAL"))
        .await;
    let list = app.list_until(&crew.auditor, "", 2).await;
    assert_eq!(list.body["items"][1]["app_name"], "after");
    crate::metrics::metrics_with(
        &app,
        "/api/v1/metrics",
        "eucora_events_total{event_type=\"DeploymentCreated\"} 2",
    )
    .await;
    drop(app);

    // Replay names it and finishes.
    let started = Instant::now();
    let (ok, out, err) = eucora(&["replay", "--database-url", &db.url]);
    assert!(!ok, "replay passed a stream with a forged row: {out}");
    assert!(err.contains("at position 0"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "replay took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_from_a_future_transaction_is_named_not_waited_for() {
    let db = TestDb::new(Backend::Postgres).await;
    {
        let app = TestApp::spawn_on_shared(&db).await;
        let crew = Crew::new(&app);
        app.create(&crew.requester, intent_body("before", 0.2, "GLOBAL"))
            .await;
    }
    // A transaction id a million ahead of the server's: no snapshot reaches it.
    db.execute(
        "INSERT INTO events (xact_id, aggregate_type, aggregate_id, sequence, event_type, \
         event_version, payload, metadata) \
         SELECT (pg_current_xact_id()::text::bigint + 1000000)::text::xid8, aggregate_type, \
                'forged', sequence, event_type, event_version, payload, metadata \
           FROM events ORDER BY position LIMIT 1",
    )
    .await;
    let position: i64 = {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query_scalar("SELECT position FROM events WHERE aggregate_id = 'forged'")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    let app = TestApp::spawn_on_shared(&db).await;
    let ready = ready_naming_unreadable(&app).await;
    assert_eq!(
        ready["unreadable_events"][0]["position"], position,
        "{ready}"
    );
    drop(app);
    let started = Instant::now();
    let (ok, out, err) = eucora(&["replay", "--database-url", &db.url]);
    assert!(!ok, "{out}");
    assert!(
        err.contains(&format!("at position {position}")) && err.contains("transaction id"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "replay took {:?}",
        started.elapsed()
    );
}
