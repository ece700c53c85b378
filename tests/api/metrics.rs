//! The domain metrics endpoint: a projection of the stream, the same on every replica, and never
//! served half-replayed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eucora::app::serve_runner;
use eucora::domain::{DomainServices, Policy, SystemClock};
use eucora::http::AppState;
use eucora::principals::Principals;
use eucora::read::ReadModel;
use eucora::telemetry::Telemetry;
use eucora::write::Commands;
use reqwest::Method;
use tower::ServiceExt;

use crate::helpers::{intent_body, Backend, Crew, TestApp, TestDb};

crate::on_both_backends!(
    the_metrics_endpoints_serve_the_domain_catalogue_of_the_stream,
    metrics_answer_503_until_the_projection_has_caught_up,
    lead_time_starts_at_the_commit_the_request_names,
);

/// The domain part of an exposition: everything up to the projection's position line.
pub fn domain_part(text: &str) -> &str {
    let marker = "eucora_projection_position{projection=\"metrics\"} ";
    let start = text.find(marker).expect("no domain metrics");
    let end = text[start..]
        .find('\n')
        .map_or(text.len(), |n| start + n + 1);
    &text[..end]
}

/// Polls a server's metrics until `line` is present (the projection tails within a second).
/// Polls `path` until it serves `line`; returns the whole text.
pub(crate) async fn metrics_with(app: &TestApp, path: &str, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = app.send(Method::GET, path, None, &[], None).await;
        if reply.status == 200 {
            let text = reply.body.as_str().unwrap_or_default().to_string();
            if text.lines().any(|l| l == line) {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{path} never showed `{line}`: {reply:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn lead_time_starts_at_the_commit_the_request_names(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    // A commit in the future is refused in our words, and nothing is written.
    let mut body = intent_body("Firefox", 0.2, "CANARY");
    let tomorrow = chrono::Utc::now() + chrono::Duration::days(1);
    body["source_committed_at"] = serde_json::json!(tomorrow.to_rfc3339());
    let refused = app.create(&crew.requester, body.clone()).await;
    refused.assert_problem(422);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("source_committed_at"),
        "{refused:?}"
    );
    assert_eq!(app.intent_event_count().await, 0);
    // Committed two days before the request: its lead time to LAB is two days and seconds.
    let committed = chrono::Utc::now() - chrono::Duration::days(2);
    body["source_committed_at"] = serde_json::json!(committed.to_rfc3339());
    let id = app.create(&crew.requester, body).await.id();
    app.deploy(&crew.deployer, &id, "LAB", 10, 10).await;
    let text = metrics_with(
        &app,
        "/api/v1/metrics",
        "deployment_app_lead_time_seconds_count{app_name=\"Firefox\",ring=\"LAB\"} 1",
    )
    .await;
    for line in [
        "deployment_lead_time_seconds_bucket{ring=\"LAB\",le=\"172800\"} 0",
        "deployment_lead_time_seconds_bucket{ring=\"LAB\",le=\"259200\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}`:\n{text}");
    }
    let history = app
        .get(&format!("/api/v1/deployments/{id}/events"), &crew.auditor)
        .await;
    let stored = &history.body["events"][0]["event"]["DeploymentCreated"]["source_committed_at"];
    let stored: chrono::DateTime<chrono::Utc> = stored.as_str().unwrap().parse().unwrap();
    assert_eq!(stored.timestamp_micros(), committed.timestamp_micros());
}

async fn the_metrics_endpoints_serve_the_domain_catalogue_of_the_stream(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, intent_body("Firefox", 0.8, "CANARY"))
        .await
        .id();
    app.approve(&crew.approver, &id).await;
    app.deploy(&crew.deployer, &id, "LAB", 10, 10).await;
    app.promote(&crew.deployer, &id).await;
    let text = metrics_with(
        &app,
        "/api/v1/metrics",
        "eucora_events_total{event_type=\"RingPromoted\"} 1",
    )
    .await;
    for line in [
        "deployment_total{status=\"pending\",ring=\"LAB\",app_name=\"Firefox\",requires_cab=\"true\"} 1",
        "deployment_total{status=\"approved\",ring=\"CANARY\",app_name=\"Firefox\",requires_cab=\"true\"} 1",
        "deployment_time_to_compliance_seconds_count{ring=\"LAB\",site_class=\"online\"} 1",
        "ring_promotion_total{from_ring=\"LAB\",to_ring=\"CANARY\",status=\"passed\"} 1",
        "promotion_gate_success_rate{ring=\"LAB\"} 1",
        "deployments_in_state{state=\"approved\",ring=\"CANARY\"} 1",
        "cab_approval_wait_seconds_count{decision=\"approved\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}`:\n{text}");
    }
    let reply = app.send(Method::GET, "/metrics", None, &[], None).await;
    assert_eq!(
        reply.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let other = reply.body.as_str().unwrap();
    assert_eq!(
        domain_part(other),
        domain_part(&text),
        "both paths serve the same domain metrics"
    );

    // Process metrics follow: requests by route template, appends, lag, build info.
    let backend_label = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    for needle in [
        "http_server_request_duration_seconds_count{http_request_method=\"POST\",http_response_status_code=\"201\",http_route=\"/api/v1/deployments\"} 1".to_string(),
        "http_route=\"/api/v1/deployments/{id}/approve\"".to_string(),
        format!("eucora_store_append_duration_seconds_count{{backend=\"{backend_label}\",outcome=\"ok\"}} 4"),
        "eucora_projection_lag_events{projection=\"metrics\"}".to_string(),
        format!("eucora_build_info{{backend=\"{backend_label}\",version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(other.contains(&needle), "missing `{needle}` in process metrics");
    }
    assert!(
        !other.contains(&format!("http_route=\"/api/v1/deployments/{id}")),
        "a raw path became a label"
    );
}

async fn metrics_answer_503_until_the_projection_has_caught_up(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn_on_shared(&db).await;
    let crew = Crew::new(&app);
    for n in 0..3 {
        app.create(
            &crew.requester,
            intent_body(&format!("a{n}"), 0.2, "GLOBAL"),
        )
        .await;
    }
    drop(app);

    // A runner that has not yet read the six stored events: driven by hand, no timing.
    let store = db.store().await;
    let (mut runner, metrics, log) = serve_runner(&store, 10);
    let status = runner.status();
    let services = DomainServices::new(Arc::new(SystemClock), Policy::default());
    let telemetry = Arc::new(Telemetry::new(store.backend(), status.clone()).unwrap());
    let state = AppState {
        commands: Arc::new(Commands::new(&store, services)),
        reads: Arc::new(ReadModel::new(store.clone())),
        principals: Arc::new(Principals::new(store.clone(), None, None)),
        metrics: metrics.clone(),
        log,
        integrity: Default::default(),
        signing_key: None,
        runner: status.clone(),
        telemetry,
        instance: Arc::from("test"),
        store,
        dispatch: None,
        admission: None,
        console: Arc::new(eucora::http::ConsoleSettings {
            session_idle: chrono::Duration::minutes(30),
            secure_cookie: false,
        }),
    };
    let limits = eucora::http::Limits {
        body_bytes: 65536,
        request_timeout: Duration::from_secs(5),
    };
    let router = eucora::http::router(state, limits, Default::default());
    let get = |path: &'static str| {
        let router = router.clone();
        async move {
            let request = axum::http::Request::get(path)
                .body(axum::body::Body::empty())
                .unwrap();
            router.oneshot(request).await.unwrap()
        }
    };
    for path in ["/api/v1/metrics", "/metrics", "/health/ready"] {
        let response = get(path).await;
        assert_eq!(response.status(), 503, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert!(response.headers().contains_key("retry-after"));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !status.caught_up() {
        let step = runner.step().await;
        assert!(step.failures.is_empty(), "{:?}", step.failures);
        assert!(Instant::now() < deadline, "never caught up");
    }
    assert_eq!(get("/api/v1/metrics").await.status(), 200);
    assert_eq!(get("/health/ready").await.status(), 200);
    let text = metrics.render().unwrap();
    assert!(
        text.contains("eucora_events_total{event_type=\"DeploymentCreated\"} 3"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgresql_serve_identical_domain_metrics() {
    let first = TestApp::spawn(Backend::Postgres).await;
    let second = first.replica().await;
    let crew = Crew::new(&first);
    for n in 0..4 {
        let risk = if n % 2 == 0 { 0.2 } else { 0.8 };
        let id = first
            .create(
                &crew.requester,
                intent_body(&format!("app{n}"), risk, "GLOBAL"),
            )
            .await
            .id();
        if risk > 0.5 {
            // Decisions through the other replica: both write to one stream.
            second.approve(&crew.approver, &id).await;
        }
        second
            .deploy(&crew.deployer, &id, "LAB", 100, 90 + n as u64)
            .await;
    }
    let done = "eucora_events_total{event_type=\"DeploymentDeployed\"} 4";
    let a = metrics_with(&first, "/api/v1/metrics", done).await;
    let b = metrics_with(&second, "/api/v1/metrics", done).await;
    assert_eq!(domain_part(&a), domain_part(&b));
}
