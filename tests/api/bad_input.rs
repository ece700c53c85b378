//! Bad input gets a clear 4xx problem+json and appends nothing.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{intent_body, Backend, Crew, TestApp};

crate::on_both_backends!(
    every_bad_request_gets_a_4xx_problem_and_appends_nothing,
    the_bearer_scheme_is_case_insensitive_and_takes_no_tabs,
    query_string_errors_are_in_our_own_words,
);

async fn query_string_errors_are_in_our_own_words(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, intent_body("Git", 0.2, "GLOBAL"))
        .await
        .id();
    for (path, says) in [
        // An unencoded + reads as a space.
        (
            format!("/api/v1/deployments/{id}/events?as_of=2026-01-01T00:00:00+00:00"),
            "send the offset as %2B",
        ),
        (
            format!("/api/v1/deployments/{id}/events?as_of=monday"),
            "as_of=\"monday\" is not an RFC 3339 time",
        ),
        (
            "/api/v1/deployments?limit=ten".into(),
            "limit=\"ten\" is not a whole number from 1 to 500",
        ),
        (
            "/api/v1/deployments?colour=red".into(),
            "unknown query parameter \"colour\"",
        ),
        (
            "/api/v1/deployments?ring=LAB&ring=GLOBAL".into(),
            "\"ring\" is given more than once",
        ),
        (
            "/api/v1/deployments?retro_approval=late".into(),
            "is not pending or overdue",
        ),
        (
            "/api/v1/events?after=%FF".into(),
            "after=\"\u{fffd}\" is not a whole number",
        ),
    ] {
        let reply = app.get(&path, &crew.auditor).await;
        reply.assert_problem(400);
        let detail = reply.body["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{path}: {detail}");
        assert!(
            !detail.contains("Failed to deserialize"),
            "{path}: {detail}"
        );
    }
    // Encoded, the same time is read.
    let ok = app
        .get(
            &format!("/api/v1/deployments/{id}/events?as_of=2099-01-01T00:00:00%2B00:00"),
            &crew.auditor,
        )
        .await;
    assert_eq!(ok.status, 200, "{ok:#?}");
    assert_eq!(ok.body["events"].as_array().unwrap().len(), 2);

    // A count written as JSON Schema also counts an integer (10.0) is read; a fraction is not.
    let deploy = format!("/api/v1/deployments/{id}/deploy");
    let half = app
        .post(
            &deploy,
            &crew.deployer,
            json!({"ring": "LAB", "target_devices": 10.5, "succeeded": 1, "failed": 0}),
        )
        .await;
    half.assert_problem(422);
    let detail = half.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("10.5 is not a whole number"), "{detail}");
    let whole = app
        .post(
            &deploy,
            &crew.deployer,
            json!({"ring": "LAB", "target_devices": 10.0, "succeeded": 9.0, "failed": 1.0}),
        )
        .await;
    assert_eq!(whole.status, 200, "{:?}", whole.body);

    // Every endpoint names a query parameter it does not take, rather than ignoring it.
    let admin = app.token("root", "admin");
    let principal = uuid::Uuid::now_v7();
    for (method, path) in [
        (Method::GET, format!("/api/v1/deployments/{id}?colour=red")),
        (Method::GET, "/api/v1/principals?colour=red".to_string()),
        (
            Method::DELETE,
            format!("/api/v1/principals/{principal}?colour=red"),
        ),
        (Method::GET, "/api/v1/checkpoint?colour=red".to_string()),
        (Method::GET, "/api/v1/policies?colour=red".to_string()),
    ] {
        let before = app.event_count().await;
        let reply = app
            .send(method.clone(), &path, Some(&admin), &[], None)
            .await;
        reply.assert_problem(400);
        let detail = reply.body["detail"].as_str().unwrap();
        assert!(
            detail.contains("unknown query parameter \"colour\""),
            "{method} {path}: {detail}"
        );
        assert_eq!(app.event_count().await, before, "{method} {path}");
    }
}

async fn every_bad_request_gets_a_4xx_problem_and_appends_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, intent_body("Git", 0.2, "GLOBAL"))
        .await
        .id();
    let deploy = format!("/api/v1/deployments/{id}/deploy");
    let create = "/api/v1/deployments".to_string();
    let mut critical = intent_body("Git", 0.2, "GLOBAL");
    critical["risk_factors"]["sbom_vulnerability"] = json!(1.0);
    let mut out_of_range = intent_body("Git", 0.2, "GLOBAL");
    out_of_range["risk_factors"]["history"] = json!(1.5);
    let mut unknown_field = intent_body("Git", 0.2, "GLOBAL");
    unknown_field["owner"] = json!("mallory");
    let mut unknown_ring = intent_body("Git", 0.2, "GLOBAL");
    unknown_ring["target_ring"] = json!("MOON");
    let mut inverted = intent_body("Git", 0.2, "CANARY");
    inverted["start_ring"] = json!("PILOT");
    let oversize = json!({ "app_name": "x".repeat(70 * 1024) }).to_string();
    let mut positional = intent_body("Git", 0.2, "GLOBAL");
    positional["risk_factors"] = json!([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]);
    let max = u64::MAX;
    let saturated = json!({ "ring": "LAB", "target_devices": max, "succeeded": max,
                            "failed": max, "incidents": max })
    .to_string();
    let huge_incidents = json!({ "ring": "LAB", "target_devices": 10, "succeeded": 10,
                                 "failed": 0, "incidents": 1u64 << 63 })
    .to_string();
    let past_u64 =
        r#"{"ring":"LAB","target_devices":18446744073709551616,"succeeded":1,"failed":0}"#;
    let filler = "x".repeat(9 * 1024);
    let d = &crew.deployer;
    let r = &crew.requester;

    // (what, method, path, token, headers, body, expected status)
    type Case<'a> = (
        &'a str,
        Method,
        String,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Option<String>,
        u16,
    );
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            Method::POST,
            create.clone(),
            r,
            vec![],
            Some("{\"app_name\":".into()),
            400,
        ),
        (
            "not UTF-8",
            Method::POST,
            create.clone(),
            r,
            vec![],
            Some(String::from_utf8_lossy(&[0xff, 0xfe]).into()),
            400,
        ),
        (
            "unknown field",
            Method::POST,
            create.clone(),
            r,
            vec![],
            Some(unknown_field.to_string()),
            422,
        ),
        (
            "missing fields",
            Method::POST,
            create.clone(),
            r,
            vec![],
            Some("{}".into()),
            422,
        ),
        (
            "array body",
            Method::POST,
            create.clone(),
            r,
            vec![],
            Some("[]".into()),
            422,
        ),
        (
            "factor out of range",
            Method::POST,
            create.clone(),
            r,
            vec![],
            Some(out_of_range.to_string()),
            422,
        ),
        (
            "critical SBOM",
            Method::POST,
            create.clone(),
            r,
            vec![],
            Some(critical.to_string()),
            422,
        ),
        (
            "unknown ring",
            Method::POST,
            create.clone(),
            r,
            vec![],
            Some(unknown_ring.to_string()),
            422,
        ),
        (
            "start past target",
            Method::POST,
            create.clone(),
            r,
            vec![],
            Some(inverted.to_string()),
            422,
        ),
        (
            "oversize body",
            Method::POST,
            create.clone(),
            r,
            vec![],
            Some(oversize),
            413,
        ),
        (
            "wrong type",
            Method::POST,
            deploy.clone(),
            d,
            vec![],
            Some(
                json!({"ring": "LAB", "target_devices": "ten", "succeeded": 1, "failed": 0})
                    .to_string(),
            ),
            422,
        ),
        (
            "negative count",
            Method::POST,
            deploy.clone(),
            d,
            vec![],
            Some(
                json!({"ring": "LAB", "target_devices": 10, "succeeded": -1, "failed": 0})
                    .to_string(),
            ),
            422,
        ),
        (
            "huge number",
            Method::POST,
            deploy.clone(),
            d,
            vec![],
            Some("{\"ring\":\"LAB\",\"target_devices\":1e400,\"succeeded\":1,\"failed\":0}".into()),
            400,
        ),
        (
            "more devices than targeted",
            Method::POST,
            deploy.clone(),
            d,
            vec![],
            Some(
                json!({"ring": "LAB", "target_devices": 10, "succeeded": 9, "failed": 2})
                    .to_string(),
            ),
            422,
        ),
        (
            "other ring's report",
            Method::POST,
            deploy.clone(),
            d,
            vec![],
            Some(
                json!({"ring": "PILOT", "target_devices": 10, "succeeded": 10, "failed": 0})
                    .to_string(),
            ),
            409,
        ),
        (
            "illegal transition",
            Method::POST,
            format!("/api/v1/deployments/{id}/promote"),
            d,
            vec![],
            Some("{}".into()),
            409,
        ),
        (
            "missing reason",
            Method::POST,
            format!("/api/v1/deployments/{id}/rollback"),
            d,
            vec![],
            Some("{}".into()),
            422,
        ),
        (
            "blank reason",
            Method::POST,
            format!("/api/v1/deployments/{id}/rollback"),
            d,
            vec![],
            Some("{\"reason\":\"  \"}".into()),
            422,
        ),
        (
            "bad UUID",
            Method::POST,
            "/api/v1/deployments/not-a-uuid/promote".into(),
            d,
            vec![],
            Some("{}".into()),
            400,
        ),
        (
            "unknown intent",
            Method::POST,
            format!("/api/v1/deployments/{}/promote", uuid::Uuid::now_v7()),
            d,
            vec![],
            Some("{}".into()),
            404,
        ),
        (
            "bad If-Match",
            Method::POST,
            deploy.clone(),
            d,
            vec![("if-match", "yesterday")],
            Some(
                json!({"ring": "LAB", "target_devices": 10, "succeeded": 10, "failed": 0})
                    .to_string(),
            ),
            400,
        ),
        (
            "bad Idempotency-Key",
            Method::POST,
            deploy.clone(),
            d,
            vec![("idempotency-key", "")],
            Some(
                json!({"ring": "LAB", "target_devices": 10, "succeeded": 10, "failed": 0})
                    .to_string(),
            ),
            400,
        ),
        (
            "bad cursor",
            Method::GET,
            "/api/v1/deployments?cursor=abc".into(),
            r,
            vec![],
            None,
            400,
        ),
        (
            "limit out of range",
            Method::GET,
            "/api/v1/deployments?limit=501".into(),
            r,
            vec![],
            None,
            400,
        ),
        (
            "unknown filter value",
            Method::GET,
            "/api/v1/deployments?status=paused".into(),
            r,
            vec![],
            None,
            400,
        ),
        (
            "unknown query parameter",
            Method::GET,
            "/api/v1/deployments?colour=red".into(),
            r,
            vec![],
            None,
            400,
        ),
        (
            "bad as_of",
            Method::GET,
            format!("/api/v1/deployments/{id}/events?as_of=monday"),
            r,
            vec![],
            None,
            400,
        ),
        (
            "risk factors as an array",
            Method::POST,
            create.clone(),
            r,
            vec![],
            Some(positional.to_string()),
            422,
        ),
        (
            "every device count at u64::MAX",
            Method::POST,
            deploy.clone(),
            d,
            vec![],
            Some(saturated),
            422,
        ),
        (
            "incidents at 2^63",
            Method::POST,
            deploy.clone(),
            d,
            vec![],
            Some(huge_incidents),
            422,
        ),
        (
            "a count past u64",
            Method::POST,
            deploy.clone(),
            d,
            vec![],
            Some(past_u64.into()),
            422,
        ),
        (
            "a 9 KiB header",
            Method::GET,
            create.clone(),
            r,
            vec![("x-filler", filler.as_str())],
            None,
            431,
        ),
        (
            "unknown route",
            Method::GET,
            "/api/v1/nothing".into(),
            r,
            vec![],
            None,
            404,
        ),
        (
            "wrong method",
            Method::DELETE,
            format!("/api/v1/deployments/{id}"),
            r,
            vec![],
            None,
            405,
        ),
    ];
    let before = app.event_count().await;
    for (what, method, path, token, headers, body, expected) in cases {
        let reply = app.send(method, &path, Some(token), &headers, body).await;
        assert_eq!(reply.status.as_u16(), expected, "{what}: {reply:#?}");
        reply.assert_problem(expected);
        assert_eq!(app.event_count().await, before, "{what} appended an event");
    }

    let text = app
        .send(
            Method::POST,
            &create,
            Some(r),
            &[("content-type", "text/plain")],
            None,
        )
        .await;
    text.assert_problem(415);
    // A request the server cannot read still gets its correlation id back.
    let junk_id = app
        .send(
            Method::GET,
            "/api/v1/deployments/x",
            Some(r),
            &[("x-correlation-id", "bad id with spaces")],
            None,
        )
        .await;
    junk_id.assert_problem(400);
    assert_ne!(junk_id.headers["x-correlation-id"], "bad id with spaces");
    assert_eq!(app.event_count().await, before);

    // Many headers, each under the limit, over it together.
    let many: Vec<(String, String)> = (0..40)
        .map(|n| (format!("x-filler-{n}"), "y".repeat(1000)))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    app.send(Method::GET, &create, Some(r), &many, None)
        .await
        .assert_problem(431);
}

async fn the_bearer_scheme_is_case_insensitive_and_takes_no_tabs(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("audrey", "auditor");
    let list = "/api/v1/deployments";
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let value = format!("{scheme} {token}");
        let reply = app
            .send(Method::GET, list, None, &[("authorization", &value)], None)
            .await;
        assert_eq!(reply.status, 200, "{value}: {reply:#?}");
    }
    for value in [
        format!("Bearer\t{token}"),
        format!("Bearer \t{token}"),
        format!("Bearer{token}"),
    ] {
        app.send(Method::GET, list, None, &[("authorization", &value)], None)
            .await
            .assert_problem(401);
    }
}
