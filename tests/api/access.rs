//! Every endpoint × every role × no token or a bad token.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{intent_body, Backend, Crew, TestApp};

crate::on_both_backends!(
    each_endpoint_admits_exactly_its_roles,
    segregation_of_duties_binds_admins_and_requesters,
);

async fn each_endpoint_admits_exactly_its_roles(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let tokens = [
        ("requester", crew.requester.clone()),
        ("cab_approver", crew.approver.clone()),
        ("deployer", crew.deployer.clone()),
        ("auditor", crew.auditor.clone()),
        ("admin", app.token("root", "admin")),
    ];
    let id = app
        .create(&crew.requester, intent_body("VLC", 0.8, "GLOBAL"))
        .await
        .id();
    let report = json!({"ring": "LAB", "target_devices": 10, "succeeded": 10, "failed": 0});
    let endpoints: Vec<(Method, String, Option<serde_json::Value>, &[&str])> = vec![
        (
            Method::POST,
            "/api/v1/deployments".into(),
            Some(intent_body("VLC", 0.2, "GLOBAL")),
            &["requester", "admin"],
        ),
        (
            Method::GET,
            "/api/v1/deployments".into(),
            None,
            &["requester", "cab_approver", "deployer", "auditor", "admin"],
        ),
        (
            Method::GET,
            format!("/api/v1/deployments/{id}"),
            None,
            &["requester", "cab_approver", "deployer", "auditor", "admin"],
        ),
        (
            Method::GET,
            format!("/api/v1/deployments/{id}/events"),
            None,
            &["requester", "cab_approver", "deployer", "auditor", "admin"],
        ),
        (
            Method::POST,
            format!("/api/v1/deployments/{id}/approve"),
            Some(json!({})),
            &["cab_approver", "admin"],
        ),
        (
            Method::POST,
            format!("/api/v1/deployments/{id}/reject"),
            Some(json!({"reason": "r"})),
            &["cab_approver", "admin"],
        ),
        (
            Method::POST,
            format!("/api/v1/deployments/{id}/deploy"),
            Some(report),
            &["deployer", "admin"],
        ),
        (
            Method::POST,
            format!("/api/v1/deployments/{id}/promote"),
            Some(json!({})),
            &["deployer", "admin"],
        ),
        (
            Method::POST,
            format!("/api/v1/deployments/{id}/rollback"),
            Some(json!({"reason": "r"})),
            &["deployer", "requester", "admin"],
        ),
        (Method::GET, "/api/v1/principals".into(), None, &["admin"]),
        (
            Method::DELETE,
            format!("/api/v1/principals/{}", uuid::Uuid::now_v7()),
            None,
            &["admin"],
        ),
    ];
    for (method, path, body, allowed) in &endpoints {
        let body = body.as_ref().map(|b| b.to_string());
        for token in [None, Some("eucora_not-a-real-token")] {
            let before = app.event_count().await;
            let reply = app
                .send(method.clone(), path, token, &[], body.clone())
                .await;
            reply.assert_problem(401);
            // RFC 6750 section 3.1: a token that was sent and is no good says so.
            let challenge = match token {
                None => "Bearer",
                Some(_) => "Bearer error=\"invalid_token\"",
            };
            assert_eq!(reply.headers["www-authenticate"], challenge);
            assert_eq!(app.event_count().await, before);
        }
        for (role, token) in &tokens {
            let (before, intents) = (app.event_count().await, app.intent_event_count().await);
            let reply = app
                .send(method.clone(), path, Some(token), &[], body.clone())
                .await;
            if allowed.contains(role) {
                assert!(
                    ![401, 403].contains(&reply.status.as_u16()),
                    "{role} refused at {method} {path}: {reply:#?}"
                );
            } else {
                reply.assert_problem(403);
                // A refused command is recorded (one CommandRefused) and changes nothing else;
                // a refused read records nothing.
                let command = *method != Method::GET;
                assert_eq!(
                    app.event_count().await,
                    before + i64::from(command),
                    "{role} at {method} {path}"
                );
                assert_eq!(
                    app.intent_event_count().await,
                    intents,
                    "{role} at {method} {path} appended to an intent"
                );
            }
        }
    }
    // Probes, metrics and the API description need no token.
    for path in ["/health/live", "/health/ready", "/api/v1/openapi.json"] {
        let reply = app.send(Method::GET, path, None, &[], None).await;
        assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
    }
}

async fn segregation_of_duties_binds_admins_and_requesters(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let alice_admin = app.token("alice", "admin");
    let bob = app.token("bob", "requester");
    let id = app
        .create(&crew.requester, intent_body("Chrome", 0.8, "GLOBAL"))
        .await
        .id();
    let (before, intents) = (app.event_count().await, app.intent_event_count().await);
    app.approve(&alice_admin, &id).await.assert_problem(403);
    app.reject(&alice_admin, &id, "mine")
        .await
        .assert_problem(403);
    app.rollback(&bob, &id, "not mine")
        .await
        .assert_problem(403);
    // Three refusals on the record, none on the intent.
    assert_eq!(app.event_count().await, before + 3);
    assert_eq!(app.intent_event_count().await, intents);
    assert_eq!(
        app.rollback(&crew.requester, &id, "withdrawn").await.status,
        200
    );
}
