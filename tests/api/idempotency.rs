//! `Idempotency-Key`: a retry gets the original answer and appends nothing.

use std::time::{Duration, Instant};

use reqwest::Method;
use sqlx::Connection;

use crate::helpers::{intent_body, Backend, Crew, TestApp};

crate::on_both_backends!(
    a_retried_create_returns_the_original_response_and_creates_one_intent,
    a_key_reused_for_another_request_is_refused,
    a_failed_request_frees_its_key_for_a_corrected_retry,
    a_retried_blocked_promotion_is_not_evaluated_twice,
    a_key_whose_server_died_is_taken_over_within_seconds,
    a_report_repeated_exactly_without_a_key_appends_nothing,
);

async fn post_with_key(
    app: &TestApp,
    token: &str,
    path: &str,
    key: &str,
    body: String,
) -> crate::helpers::Reply {
    app.send(
        Method::POST,
        path,
        Some(token),
        &[("idempotency-key", key)],
        Some(body),
    )
    .await
}

async fn a_retried_create_returns_the_original_response_and_creates_one_intent(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let body = intent_body("Notepad++", 0.2, "GLOBAL").to_string();
    let first = post_with_key(
        &app,
        &crew.requester,
        "/api/v1/deployments",
        "req-1",
        body.clone(),
    )
    .await;
    assert_eq!(first.status, 201);
    let retry = post_with_key(&app, &crew.requester, "/api/v1/deployments", "req-1", body).await;
    assert_eq!(retry.status, 201);
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.headers["location"], first.headers["location"]);
    assert_eq!(retry.headers["etag"], first.headers["etag"]);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(app.intent_event_count().await, 2);
    app.list_until(&crew.auditor, "", 1).await;
}

async fn a_key_reused_for_another_request_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let a = intent_body("A", 0.2, "GLOBAL").to_string();
    let b = intent_body("B", 0.2, "GLOBAL").to_string();
    post_with_key(&app, &crew.requester, "/api/v1/deployments", "k", a).await;
    let reused = post_with_key(&app, &crew.requester, "/api/v1/deployments", "k", b).await;
    reused.assert_problem(422);
    assert_eq!(app.intent_event_count().await, 2);
}

async fn a_failed_request_frees_its_key_for_a_corrected_retry(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let mut bad = intent_body("C", 0.2, "GLOBAL");
    bad["risk_factors"]["history"] = serde_json::json!(2.0);
    let failed = post_with_key(
        &app,
        &crew.requester,
        "/api/v1/deployments",
        "k",
        bad.to_string(),
    )
    .await;
    failed.assert_problem(422);
    let good = intent_body("C", 0.2, "GLOBAL").to_string();
    let fixed = post_with_key(&app, &crew.requester, "/api/v1/deployments", "k", good).await;
    assert_eq!(fixed.status, 201, "{fixed:#?}");
}

async fn a_retried_blocked_promotion_is_not_evaluated_twice(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, intent_body("D", 0.2, "GLOBAL"))
        .await
        .id();
    app.deploy(&crew.deployer, &id, "LAB", 10, 5).await;
    let path = format!("/api/v1/deployments/{id}/promote");
    let first = post_with_key(&app, &crew.deployer, &path, "p1", "{}".into()).await;
    first.assert_problem(409);
    let count = app.event_count().await;
    let retry = post_with_key(&app, &crew.deployer, &path, "p1", "{}".into()).await;
    assert_eq!(retry.status, 409);
    assert_eq!(retry.body["promotion"], first.body["promotion"]);
    assert_eq!(app.event_count().await, count);
}

/// A write cut off by the time limit still finishes and answers its key: here the database holds
/// the append past the limit, and a retry with the same key gets the one intent it created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_timed_out_write_learns_its_outcome() {
    use sqlx::Connection;
    let app = TestApp::spawn_with(Backend::Postgres, &["--request-timeout", "1"]).await;
    let crew = Crew::new(&app);
    let mut blocker = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let mut tx = blocker.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();

    let body = intent_body("Slow", 0.2, "GLOBAL").to_string();
    let first = post_with_key(
        &app,
        &crew.requester,
        "/api/v1/deployments",
        "slow-1",
        body.clone(),
    )
    .await;
    first.assert_problem(503);
    tx.commit().await.unwrap();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let retry = loop {
        let retry = post_with_key(
            &app,
            &crew.requester,
            "/api/v1/deployments",
            "slow-1",
            body.clone(),
        )
        .await;
        if retry.status != 409 {
            break retry;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the key stayed in flight: {retry:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(retry.status, 201, "{retry:#?}");
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(
        app.intent_event_count().await,
        2,
        "one intent: created and approved by policy"
    );
}

async fn stored_hash(app: &TestApp, key: &str) -> String {
    let sql = "SELECT request_hash FROM idempotency_keys WHERE key = $1";
    if app.db.url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
        sqlx::query_scalar(sql)
            .bind(key)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
        sqlx::query_scalar(sql)
            .bind(key)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Retries until the key is no longer in flight; returns the answer and how long it took.
async fn retry_until_answered(
    app: &TestApp,
    token: &str,
    key: &str,
    body: &str,
) -> (crate::helpers::Reply, Duration) {
    let started = Instant::now();
    loop {
        let reply = post_with_key(app, token, "/api/v1/deployments", key, body.into()).await;
        if reply.status != 409 {
            return (reply, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the key stayed in flight: {reply:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server that died holding a key (kill -9 between reserving it and storing the answer) is
/// simulated by the row it would leave: in flight, held by a process that renews nothing.
async fn a_key_whose_server_died_is_taken_over_within_seconds(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);

    // The dead server's write had committed: the retry answers with what it wrote.
    let body = intent_body("Committed", 0.2, "GLOBAL").to_string();
    let first = post_with_key(
        &app,
        &crew.requester,
        "/api/v1/deployments",
        "k1",
        body.clone(),
    )
    .await;
    assert_eq!(first.status, 201);
    let lease_until = now_ms() + 2_000;
    app.db
        .execute(&format!(
            "UPDATE idempotency_keys SET status = NULL, response = NULL, holder = 'dead', \
             lease_until = {lease_until} WHERE key = 'k1'"
        ))
        .await;
    let events = app.event_count().await;
    let early = post_with_key(
        &app,
        &crew.requester,
        "/api/v1/deployments",
        "k1",
        body.clone(),
    )
    .await;
    early.assert_problem(409);
    let (recovered, waited) = retry_until_answered(&app, &crew.requester, "k1", &body).await;
    assert_eq!(recovered.status, 201, "{recovered:#?}");
    assert_eq!(recovered.body, first.body, "the original answer");
    assert_eq!(recovered.headers["location"], first.headers["location"]);
    assert_eq!(app.event_count().await, events, "nothing written again");
    assert!(waited < Duration::from_secs(10), "took {waited:?}");

    // The dead server's write had not committed: the retry runs it, on the id it had been given.
    let body = intent_body("Lost", 0.2, "GLOBAL").to_string();
    // The request's fingerprint as the server takes it, from a first use of the same request.
    post_with_key(
        &app,
        &crew.requester,
        "/api/v1/deployments",
        "probe",
        body.clone(),
    )
    .await;
    let events = app.event_count().await;
    let hash = stored_hash(&app, "probe").await;
    let reserved_id = uuid::Uuid::now_v7();
    let created_at = match backend {
        Backend::Sqlite => "'2026-01-01T00:00:00Z'",
        Backend::Postgres => "now()",
    };
    app.db
        .execute(&format!(
            "INSERT INTO idempotency_keys (subject, key, request_hash, created_at, holder, \
             lease_until, intent_id) VALUES ('alice', 'k2', '{hash}', {created_at}, 'dead', \
             {}, '{reserved_id}')",
            now_ms() - 1
        ))
        .await;
    let (ran, _) = retry_until_answered(&app, &crew.requester, "k2", &body).await;
    assert_eq!(ran.status, 201, "{ran:#?}");
    assert_eq!(ran.id(), reserved_id.to_string());
    assert_eq!(app.event_count().await, events + 2, "created once");
    let again = post_with_key(&app, &crew.requester, "/api/v1/deployments", "k2", body).await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body, ran.body);
    assert_eq!(app.event_count().await, events + 2);
}

async fn a_report_repeated_exactly_without_a_key_appends_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, intent_body("Slack", 0.1, "CANARY"))
        .await
        .id();
    let first = app.deploy(&crew.deployer, &id, "LAB", 50, 40).await;
    assert_eq!(first.status, 200, "{first:?}");
    let events = app.intent_event_count().await;
    // The same counts again, twice, without an Idempotency-Key: the intent as it stands.
    for _ in 0..2 {
        let again = app.deploy(&crew.deployer, &id, "LAB", 50, 40).await;
        assert_eq!(again.status, 200, "{again:?}");
        assert_eq!(
            again.body, first.body,
            "the answer is the intent as it stands"
        );
        assert_eq!(app.intent_event_count().await, events);
    }
    // A report that differs in any count is a new report.
    let moved = app.deploy(&crew.deployer, &id, "LAB", 50, 45).await;
    assert_eq!(moved.status, 200, "{moved:?}");
    assert_eq!(app.intent_event_count().await, events + 1);
    // A repeat is still checked: a report for another ring is refused, not ignored.
    let elsewhere = app.deploy(&crew.deployer, &id, "CANARY", 50, 45).await;
    elsewhere.assert_problem(409);
}
