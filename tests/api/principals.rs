//! The access lifecycle as an admin and an operator use it: tokens expire, are listed, rotated
//! and revoked (at once, on every replica), every change is an event, a principal's requests are
//! rate limited, and refused credentials are counted.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{eucora, intent_body, Backend, TestApp};

crate::on_both_backends!(
    an_access_change_needs_an_author_and_the_list_shows_each_grantor,
    a_revoked_or_rotated_token_stops_working_on_every_replica_at_once,
    tokens_expire_and_every_access_change_is_an_event,
    a_principal_past_its_rate_limit_gets_429_with_retry_after,
    a_principal_made_or_raised_by_hand_is_refused_and_named,
);

fn token_cli(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["token"];
    all.extend_from_slice(&args[..1]);
    all.extend_from_slice(&["--database-url", &app.db.url]);
    all.extend_from_slice(&args[1..]);
    eucora(&all)
}

/// The `id` of the principal whose subject is `subject`, from `eucora token list --json`.
fn listed(app: &TestApp, subject: &str) -> Value {
    let (ok, out, err) = token_cli(app, &["list", "--json"]);
    assert!(ok, "{err}");
    out.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|p| p["subject"] == subject)
        .unwrap_or_else(|| panic!("{subject} not in {out}"))
}

async fn metric(app: &TestApp, reason: &str) -> f64 {
    let text = reqwest::get(format!("{}/api/v1/metrics", app.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| {
            l.starts_with("eucora_authentication_failures_total{")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

async fn a_revoked_or_rotated_token_stops_working_on_every_replica_at_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let replica = app.replica().await;
    let admin = app.token("root", "admin");
    let ops = app.token("ops", "deployer");
    let requester = app.token("alice", "requester");
    for server in [&app, &replica] {
        assert_eq!(server.get("/api/v1/deployments", &ops).await.status, 200);
    }

    // Only an admin reviews access; no listing carries a token or its hash.
    app.get("/api/v1/principals", &ops)
        .await
        .assert_problem(403);
    let all = app.get("/api/v1/principals", &admin).await;
    assert_eq!(all.status, 200, "{all:?}");
    let ops_id = all
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["subject"] == "ops")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(all.body.as_array().unwrap().len(), 3);
    assert!(!all.body.to_string().contains(&ops[7..20]));
    assert_eq!(listed(&app, "ops")["state"], "active");

    // Revoked through one replica, refused by the other on its very next request.
    let revoke = |id: String| {
        let (app, admin) = (&app, &admin);
        async move {
            app.send(
                Method::DELETE,
                &format!("/api/v1/principals/{id}"),
                Some(admin),
                &[],
                None,
            )
            .await
        }
    };
    let before = app.event_count().await;
    let revoked = revoke(ops_id.clone()).await;
    assert_eq!(app.event_count().await, before + 1, "one PrincipalRevoked");
    assert_eq!(revoked.status, 200, "{revoked:?}");
    assert_eq!(revoked.body["state"], "revoked");
    let refused = replica.get("/api/v1/deployments", &ops).await;
    refused.assert_problem(401);
    assert_eq!(
        refused.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert!(refused.body["detail"].as_str().unwrap().contains("revoked"));
    assert_eq!(listed(&app, "ops")["state"], "revoked");
    assert!(metric(&replica, "revoked").await >= 1.0);
    // Again: the same answer, nothing new. Bad ids are named; unknown ones are 404.
    let again = revoke(ops_id.clone()).await;
    assert_eq!(app.event_count().await, before + 1, "no second event");
    assert_eq!(
        (again.status.as_u16(), &again.body["revoked_at"]),
        (200, &revoked.body["revoked_at"])
    );
    revoke("nope".into()).await.assert_problem(400);
    revoke(uuid::Uuid::now_v7().to_string())
        .await
        .assert_problem(404);

    // Rotated at the command line: the old token stops, the new one works, everywhere.
    let alice_id = listed(&app, "alice")["id"].as_str().unwrap().to_string();
    let (ok, out, err) = token_cli(&app, &["rotate", &alice_id, "--expires-in", "7d"]);
    assert!(ok, "{err}");
    let fresh = out.trim();
    assert!(
        fresh.starts_with("eucora_") && !err.contains(fresh),
        "{err}"
    );
    replica
        .get("/api/v1/deployments", &requester)
        .await
        .assert_problem(401);
    for server in [&app, &replica] {
        let created = server.create(fresh, intent_body("VLC", 0.2, "LAB")).await;
        assert_eq!(created.status, 201, "{created:?}");
    }
    // A revoked principal gets no new token.
    let (ok, _, err) = token_cli(&app, &["rotate", &ops_id]);
    assert!(!ok && err.contains("is revoked"), "{err}");
    let (ok, _, err) = token_cli(&app, &["revoke", "not-a-uuid"]);
    assert!(!ok && err.contains("invalid"), "{err}");
}

async fn tokens_expire_and_every_access_change_is_an_event(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let auditor = app.token("audit", "auditor");
    let (ok, out, err) = token_cli(
        &app,
        &[
            "create",
            "--subject",
            "short",
            "--role",
            "deployer",
            "--expires-in",
            "2s",
        ],
    );
    assert!(ok, "{err}");
    let short = out.trim().to_string();
    // The expiry in RFC 3339 to the second: `expires 2026-12-06T07:45:02Z`.
    let expiry = err
        .split("expires ")
        .nth(1)
        .map(|t| t.trim())
        .unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(expiry).is_ok()
            && expiry.ends_with('Z')
            && !expiry.contains('.'),
        "{err}"
    );
    assert_eq!(app.get("/api/v1/deployments", &short).await.status, 200);
    for bad in ["0s", "5y", "forever", "4000d"] {
        let (ok, _, err) = token_cli(
            &app,
            &[
                "create",
                "--subject",
                "x",
                "--role",
                "deployer",
                "--expires-in",
                bad,
            ],
        );
        assert!(!ok, "--expires-in {bad} was taken");
        assert!(
            err.contains("expires-in") || err.contains("duration"),
            "{err}"
        );
    }
    let before = metric(&app, "expired").await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let refused = app.get("/api/v1/deployments", &short).await;
    refused.assert_problem(401);
    assert!(refused.body["detail"].as_str().unwrap().contains("expired"));
    assert_eq!(metric(&app, "expired").await, before + 1.0);
    assert_eq!(listed(&app, "short")["state"], "expired");
    let short_id = listed(&app, "short")["id"].as_str().unwrap().to_string();
    let (ok, _, err) = token_cli(&app, &["revoke", &short_id]);
    assert!(ok, "{err}");
    let (ok, table, _) = token_cli(&app, &["list"]);
    assert!(ok);
    assert!(
        table.starts_with("ID") && table.contains("revoked"),
        "{table}"
    );
    // No token and a wrong token are counted too.
    let before = (metric(&app, "missing").await, metric(&app, "unknown").await);
    app.send(Method::GET, "/api/v1/deployments", None, &[], None)
        .await
        .assert_problem(401);
    app.get("/api/v1/deployments", "eucora_nope")
        .await
        .assert_problem(401);
    assert_eq!(
        (metric(&app, "missing").await, metric(&app, "unknown").await),
        (before.0 + 1.0, before.1 + 1.0)
    );

    // The auditor's view: each change is an event of the principal's stream, in the global
    // stream (and so in the Merkle log), with who made it; never a token or its hash.
    let mut events = Vec::new();
    for _ in 0..50 {
        let page = app.get("/api/v1/events?limit=1000", &auditor).await;
        events = page.body["events"].as_array().unwrap().clone();
        if events.len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let of_short: Vec<&Value> = events
        .iter()
        .filter(|e| e["principal_id"] == short_id.as_str())
        .collect();
    let types: Vec<&str> = of_short
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["PrincipalCreated", "PrincipalRevoked"],
        "{events:#?}"
    );
    assert!(of_short
        .iter()
        .all(|e| e["stream"] == "principal" && e.get("deployment_id").is_none()));
    let created = &of_short[0]["event"]["PrincipalCreated"];
    assert_eq!(
        (created["subject"].as_str(), created["role"].as_str()),
        (Some("short"), Some("deployer"))
    );
    assert!(created["meta"]["actor"]["subject"]
        .as_str()
        .unwrap()
        .starts_with("cli:"));
    assert!(!serde_json::to_string(&events)
        .unwrap()
        .contains(&short[7..20]));
}

async fn a_principal_past_its_rate_limit_gets_429_with_retry_after(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--rate-limit", "5"]).await;
    let (alice, bob) = (
        app.token("alice", "requester"),
        app.token("bob", "requester"),
    );
    for _ in 0..5 {
        assert_eq!(app.get("/api/v1/deployments", &alice).await.status, 200);
    }
    let limited = app.get("/api/v1/deployments", &alice).await;
    limited.assert_problem(429);
    let wait: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Five a minute: the next request is due in about 12 s.
    assert!((1..=12).contains(&wait), "Retry-After {wait}");
    // Another principal has an allowance of its own.
    assert_eq!(app.get("/api/v1/deployments", &bob).await.status, 200);
}

/// Who granted, rotated or revoked a token is always on the record: `--by NAME`, else the login
/// running the command; with neither it is refused and nothing is written. `token list` (and the
/// API's list) shows each principal's grantor.
async fn an_access_change_needs_an_author_and_the_list_shows_each_grantor(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let before = app.event_count().await;
    let anonymous = std::process::Command::new(env!("CARGO_BIN_EXE_eucora"))
        .args([
            "token",
            "create",
            "--database-url",
            &app.db.url,
            "--subject",
            "carol",
            "--role",
            "cab_approver",
        ])
        .env_remove("USER")
        .env_remove("LOGNAME")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&anonymous.stderr);
    assert!(
        !anonymous.status.success() && anonymous.stdout.is_empty(),
        "{err}"
    );
    assert!(err.contains("--by NAME"), "{err}");
    assert_eq!(app.event_count().await, before, "nothing written");

    let (ok, _, err) = token_cli(
        &app,
        &[
            "create",
            "--subject",
            "carol",
            "--role",
            "cab_approver",
            "--by",
            "ops-lead",
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = token_cli(&app, &["create", "--subject", "dave", "--role", "auditor"]);
    assert!(ok, "{err}");
    assert_eq!(listed(&app, "carol")["granted_by"], "cli:ops-lead");
    assert_eq!(
        listed(&app, "dave")["granted_by"],
        format!("cli:{}", crate::helpers::OPERATOR)
    );
    let (ok, table, err) = token_cli(&app, &["list"]);
    assert!(ok, "{err}");
    assert!(
        table.lines().next().unwrap().contains("GRANTED BY"),
        "{table}"
    );
    let carol = table.lines().find(|l| l.contains("carol")).unwrap();
    assert!(carol.ends_with("cli:ops-lead"), "{table}");
    let (ok, _, err) = token_cli(
        &app,
        &["create", "--subject", "x", "--role", "auditor", "--by", " "],
    );
    assert!(!ok && err.contains("--by must be"), "{err}");

    // The server's own subjects are nobody's: a person cannot act, or be recorded, as a
    // connector, a job, an operator or the policy.
    let before = app.event_count().await;
    for reserved in [
        "connector:jamf",
        "system:dispatcher",
        "CLI:root",
        "policy:risk_model_v1.0",
    ] {
        let (ok, out, err) = token_cli(
            &app,
            &["create", "--subject", reserved, "--role", "deployer"],
        );
        assert!(!ok && out.is_empty(), "{reserved}: {out}");
        assert!(err.contains("is reserved"), "{err}");
    }
    // A connector's own principal is connector:<its name>, and nothing else is a connector.
    for subject in ["jamf-bridge", "connector:", "connector:Jamf", "system:x"] {
        let (ok, out, err) = token_cli(
            &app,
            &["create", "--subject", subject, "--role", "connector"],
        );
        assert!(!ok && out.is_empty(), "{subject}: {out}");
        assert!(err.contains("connector:<its name>"), "{subject}: {err}");
    }
    assert_eq!(app.event_count().await, before, "nothing written");
    let (ok, out, err) = token_cli(
        &app,
        &[
            "create",
            "--subject",
            "connector:jamf",
            "--role",
            "connector",
        ],
    );
    assert!(ok && !out.trim().is_empty(), "{err}");

    // A subject who decides on the CAB may not also request, unless a reason is recorded.
    let before = app.event_count().await;
    let (ok, out, err) = token_cli(
        &app,
        &["create", "--subject", "carol", "--role", "requester"],
    );
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains("carol already holds cab_approver") && err.contains("--allow-conflict"),
        "{err}"
    );
    assert_eq!(app.event_count().await, before, "nothing written");
    let (ok, _, err) = token_cli(
        &app,
        &[
            "create",
            "--subject",
            "carol",
            "--role",
            "requester",
            "--allow-conflict",
            " ",
        ],
    );
    assert!(
        !ok && err.contains("--allow-conflict needs a reason"),
        "{err}"
    );
    let (ok, _, err) = token_cli(
        &app,
        &[
            "create",
            "--subject",
            "carol",
            "--role",
            "requester",
            "--allow-conflict",
            "two-person team until January: CAB decisions by dave",
        ],
    );
    assert!(ok, "{err}");
    let auditor = app.token("audrey", "auditor");
    let events = app.global_events(&auditor).await;
    let grants: Vec<&Value> = events
        .iter()
        .filter_map(|e| e["event"].get("PrincipalCreated"))
        .filter(|p| p["subject"] == "carol")
        .collect();
    assert_eq!(grants.len(), 2, "{events:#?}");
    assert_eq!(grants[0]["conflict_allowed"], Value::Null);
    assert_eq!(
        grants[1]["conflict_allowed"],
        "two-person team until January: CAB decisions by dave"
    );
    assert_eq!(grants[1]["meta"]["schema_version"], 2);
}

async fn a_principal_made_or_raised_by_hand_is_refused_and_named(backend: Backend) {
    use sha2::Digest;
    let app = TestApp::spawn(backend).await;
    let requester = app.token("bob", "requester");
    let forged = "eucora_forged-by-an-insider";
    let hash = hex::encode(sha2::Sha256::digest(forged.as_bytes()));
    // An admin inserted by SQL, with no event behind it; and a requester raised to admin.
    crate::log::as_insider(
        &app.db,
        backend,
        &[
            &format!(
                "INSERT INTO principals (id, subject, role, token_hash, created_at, expires_at, revoked_at) \
                 SELECT '{}', 'mallory', 'admin', '{hash}', created_at, expires_at, NULL \
                 FROM principals LIMIT 1",
                uuid::Uuid::now_v7()
            ),
            "UPDATE principals SET role = 'admin' WHERE subject = 'bob'",
        ],
    )
    .await;
    for token in [forged, requester.as_str()] {
        let reply = app.get("/api/v1/principals", token).await;
        reply.assert_problem(401);
        let detail = reply.body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("does not match its recorded access events"),
            "{detail}"
        );
    }
    let metrics = app.send(Method::GET, "/metrics", None, &[], None).await;
    assert!(
        metrics
            .body
            .as_str()
            .unwrap_or_default()
            .lines()
            .any(|l| l == "eucora_authentication_failures_total{reason=\"unrecorded\"} 2"),
        "{:?}",
        metrics.body
    );
    let db = app.db.clone();
    drop(app);
    // Replay names it, and a server started on it is not ready, naming it.
    let (ok, out, err) = eucora(&["replay", "--database-url", &db.url]);
    assert!(!ok && err.contains("by hand in the database"), "{out}{err}");
    let app = TestApp::start(db, &[], &[], None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ready = app
            .send(Method::GET, "/health/ready", None, &[], None)
            .await;
        let detail = ready.body["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if ready.status == 503 && detail.contains("by hand in the database") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{ready:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
