//! The OpenAPI document held against the running router: every status that the middleware can
//! draw from an operation (an unknown query parameter, headers too large, no token, a body too
//! large, a spent rate limit) is one that operation documents; and guessing tokens earns 429s,
//! keyed by the client's address.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{Backend, TestApp};

crate::on_both_backends!(
    every_status_an_operation_answers_is_documented,
    guessing_tokens_earns_429s_from_one_address,
);

/// Each documented operation: method, path with its parameters filled in, whether it takes a
/// token and a body, and the statuses it documents.
struct Operation {
    method: Method,
    path: String,
    secured: bool,
    has_body: bool,
    documented: Vec<u16>,
}

async fn operations(app: &TestApp) -> Vec<Operation> {
    let doc = app
        .send(Method::GET, "/api/v1/openapi.json", None, &[], None)
        .await
        .body;
    let mut all = vec![];
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let path = template
                .replace("{id}", &uuid::Uuid::new_v4().to_string())
                .replace("{digest}", &"ab".repeat(32))
                .replace("{name}", "intune");
            assert!(
                !path.contains('{'),
                "a path parameter left unfilled: {path}"
            );
            all.push(Operation {
                method: method.to_uppercase().parse().unwrap(),
                path,
                secured: op["security"].as_array().is_some_and(|s| !s.is_empty()),
                has_body: op.get("requestBody").is_some(),
                documented: op["responses"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|s| s.parse().unwrap())
                    .collect(),
            });
        }
    }
    all
}

fn assert_documented(op: &Operation, status: u16, why: &str, body: &Value) {
    assert!(
        op.documented.contains(&status),
        "{} {} answered {status} ({why}: {body}) but documents only {:?}",
        op.method,
        op.path,
        op.documented
    );
}

async fn every_status_an_operation_answers_is_documented(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.token("contract-admin", "admin");
    let ops = operations(&app).await;
    assert!(ops.len() >= 20, "{} operations documented", ops.len());
    let big = "x".repeat(9 * 1024);
    for op in &ops {
        let token = op.secured.then_some(admin.as_str());
        // An unknown query parameter: 400 on every operation, before anything else is read.
        let unknown = format!("{}?colour=red", op.path);
        let reply = app
            .send(op.method.clone(), &unknown, token, &[], None)
            .await;
        assert_eq!(reply.status, 400, "{} {unknown}: {reply:?}", op.method);
        assert!(
            reply.body["detail"]
                .as_str()
                .unwrap()
                .contains("unknown query parameter \"colour\""),
            "{reply:?}"
        );
        assert_documented(op, 400, "unknown query parameter", &reply.body);
        // A header value past 8 KiB.
        let reply = app
            .send(
                op.method.clone(),
                &op.path,
                token,
                &[("x-filler", &big)],
                None,
            )
            .await;
        assert_eq!(reply.status, 431, "{} {}: {reply:?}", op.method, op.path);
        assert_documented(op, 431, "headers too large", &reply.body);
        if op.secured {
            let reply = app.send(op.method.clone(), &op.path, None, &[], None).await;
            assert_eq!(reply.status, 401, "{} {}: {reply:?}", op.method, op.path);
            assert_documented(op, 401, "no token", &reply.body);
        }
        if op.has_body {
            let body = format!("{{\"filler\": \"{}\"}}", "x".repeat(65 * 1024));
            let reply = app
                .send(op.method.clone(), &op.path, token, &[], Some(body))
                .await;
            assert_eq!(reply.status, 413, "{} {}: {reply:?}", op.method, op.path);
            assert_documented(op, 413, "body too large", &reply.body);
        }
        // What the operation answers to an ordinary request is documented too.
        let reply = app
            .send(op.method.clone(), &op.path, token, &[], None)
            .await;
        assert_documented(op, reply.status.as_u16(), "a plain request", &reply.body);
    }
    // Guessing tokens spends this address's allowance; then every operation that takes a token
    // answers 429, which each documents. The allowance refills one failure a second, so it is
    // spent again before each operation, and again if it refilled between the last guess and the
    // operation's request (a gap of milliseconds, which a loaded machine stretches): one refill
    // in a row can happen, three cannot.
    for op in ops.iter().filter(|op| op.secured) {
        let mut replies = vec![];
        let limited = loop {
            spend_the_allowance(&app).await;
            let reply = app
                .send(op.method.clone(), &op.path, Some(&admin), &[], None)
                .await;
            if reply.status == 429 {
                break reply;
            }
            replies.push(reply.status);
            assert!(
                replies.len() < 3,
                "{} {} was not rate limited with the allowance spent: {replies:?}",
                op.method,
                op.path
            );
        };
        assert_documented(op, 429, "rate limited", &limited.body);
    }
}

/// Guesses tokens from the test's address until the server answers 429.
async fn spend_the_allowance(app: &TestApp) {
    let mut guesses = 0;
    loop {
        let reply = app
            .get("/api/v1/deployments", &uuid::Uuid::new_v4().to_string())
            .await;
        guesses += 1;
        if reply.status == 429 {
            return;
        }
        assert_eq!(reply.status, 401, "{reply:?}");
        assert!(guesses <= 100, "no 429 after {guesses} guesses");
    }
}

async fn guessing_tokens_earns_429s_from_one_address(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--auth-failure-limit", "5"]).await;
    let admin = app.token("guarded-admin", "admin");
    let mut statuses = vec![];
    for _ in 0..40 {
        let guess = format!("eucora_{}", uuid::Uuid::new_v4().simple());
        statuses.push(app.get("/api/v1/deployments", &guess).await);
    }
    let unauthorized = statuses.iter().filter(|r| r.status == 401).count();
    let limited: Vec<_> = statuses.iter().filter(|r| r.status == 429).collect();
    assert_eq!(unauthorized, 5, "the allowance is 5 failures: {statuses:?}");
    assert_eq!(limited.len(), 35, "{statuses:?}");
    let last = limited.last().unwrap();
    last.assert_problem(429);
    let wait: u64 = last.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert!(
        last.body["detail"]
            .as_str()
            .unwrap()
            .contains("this client address's failed authentications"),
        "{last:?}"
    );
    // While refused, a right token is refused too: a guess that hits cannot be told apart.
    app.get("/api/v1/deployments", &admin)
        .await
        .assert_problem(429);
    // What takes no token still answers.
    let live = app.send(Method::GET, "/health/live", None, &[], None).await;
    assert_eq!(live.status, 200);

    // With the limit off, guessing is answered 401 every time.
    let open = TestApp::spawn_with(backend, &["--auth-failure-limit", "0"]).await;
    for _ in 0..40 {
        let guess = format!("eucora_{}", uuid::Uuid::new_v4().simple());
        assert_eq!(open.get("/api/v1/deployments", &guess).await.status, 401);
    }
}
