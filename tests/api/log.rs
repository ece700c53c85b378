//! The Merkle log as an auditor meets it: signed checkpoints kept in and outside the database,
//! proofs that verify against them, and a rewrite of the database caught.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use eucora::checkpoints::{open_checkpoint, Checkpoint};
use eucora_projections::integrity::leaf_hash;
use eucora_projections::merkle::{self, Hash};
use reqwest::Method;
use serde_json::Value;
use sqlx::Connection;

use crate::helpers::{eucora, intent_body, Backend, Crew, TestApp, TestDb};

crate::on_both_backends!(
    checkpoints_are_signed_kept_outside_and_proofs_verify_against_them,
    a_database_rewritten_by_an_insider_is_caught_at_the_next_start,
    an_event_edited_under_a_running_server_is_caught_by_the_background_check,
    a_store_shorter_than_what_was_read_or_signed_is_an_integrity_failure_not_a_stall,
);

/// A key made by `eucora key generate` in the database's folder; returns the flags that make a
/// server use it and keep checkpoints in `dir`, and the verifier key it printed.
pub(crate) fn key_flags(db: &TestDb, dir: &str) -> (Vec<String>, String) {
    let key = db.dir().join("signing.key");
    if !key.exists() {
        let (ok, out, err) = eucora(&[
            "key",
            "generate",
            "--out",
            key.to_str().unwrap(),
            "--name",
            "audit.test",
        ]);
        assert!(ok, "{err}");
        std::fs::write(db.dir().join("verifier"), out.trim()).unwrap();
    }
    let verifier = std::fs::read_to_string(db.dir().join("verifier")).unwrap();
    let flags = vec![
        "--signing-key-file".into(),
        key.to_str().unwrap().into(),
        "--checkpoint-dir".into(),
        db.dir().join(dir).to_str().unwrap().into(),
        "--checkpoint-interval".into(),
        "1s".into(),
    ];
    (flags, verifier)
}

pub(crate) async fn serve(db: &Arc<TestDb>, flags: &[String]) -> TestApp {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    TestApp::spawn_on(db.clone(), &flags).await
}

fn unb64(text: &str) -> Hash {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
        .try_into()
        .unwrap()
}

/// Waits for a signed checkpoint of at least `size` leaves; returns it opened, and its note.
pub(crate) async fn checkpoint_of(
    app: &TestApp,
    token: &str,
    verifier: &str,
    size: u64,
) -> (Checkpoint, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = app.get("/api/v1/checkpoint", token).await;
        if reply.status == 200 {
            let note = reply.body.as_str().unwrap().to_string();
            let opened = open_checkpoint(&note, verifier).expect("the served checkpoint verifies");
            if opened.size >= size {
                return (opened, note);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of {size} leaves: {reply:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn traffic(app: &TestApp, crew: &Crew, n: usize, prefix: &str) {
    for i in 0..n {
        app.create(
            &crew.requester,
            intent_body(&format!("{prefix}{i}"), 0.2, "GLOBAL"),
        )
        .await;
    }
}

async fn checkpoints_are_signed_kept_outside_and_proofs_verify_against_them(backend: Backend) {
    let db = Arc::new(TestDb::new(backend).await);
    let (flags, verifier) = key_flags(&db, "checkpoints");
    let app = serve(&db, &flags).await;
    let crew = Crew::new(&app);
    traffic(&app, &crew, 5, "a").await;
    let (first, _) = checkpoint_of(&app, &crew.auditor, &verifier, 10).await;
    assert_eq!(first.origin, "audit.test");

    // Every stored event is a leaf of the signed tree, by its inclusion proof.
    let store = db.store().await;
    let rows = store
        .read_global(None, 1000, eucora::store::Columns::Stored)
        .await
        .unwrap();
    for (index, row) in rows.iter().take(first.size as usize).enumerate() {
        let proof = app
            .get(
                &format!(
                    "/api/v1/proofs/inclusion?index={index}&tree_size={}",
                    first.size
                ),
                &crew.auditor,
            )
            .await;
        assert_eq!(proof.status, 200, "{proof:#?}");
        let leaf = leaf_hash(&row.row().unwrap());
        assert_eq!(unb64(proof.body["leaf_hash"].as_str().unwrap()), leaf);
        assert_eq!(proof.body["position"], row.position);
        let hashes: Vec<Hash> = proof.body["hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| unb64(h.as_str().unwrap()))
            .collect();
        merkle::verify_inclusion(index as u64, first.size, &leaf, &hashes, &first.root).unwrap();
    }

    // A later checkpoint extends the first: the consistency proof verifies.
    traffic(&app, &crew, 3, "b").await;
    let (later, note) = checkpoint_of(&app, &crew.auditor, &verifier, first.size + 6).await;
    let proof = app
        .get(
            &format!(
                "/api/v1/proofs/consistency?from={}&to={}",
                first.size, later.size
            ),
            &crew.auditor,
        )
        .await;
    assert_eq!(proof.status, 200, "{proof:#?}");
    let hashes: Vec<Hash> = proof.body["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| unb64(h.as_str().unwrap()))
        .collect();
    merkle::verify_consistency(first.size, later.size, &first.root, &later.root, &hashes).unwrap();

    // The latest is also kept outside the database.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let kept =
            std::fs::read_to_string(db.dir().join("checkpoints/checkpoint")).unwrap_or_default();
        if kept == note || open_checkpoint(&kept, &verifier).is_ok_and(|c| c.size > later.size) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the directory never held the latest checkpoint"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Roles, and bounds in our words.
    app.get("/api/v1/checkpoint", &crew.requester)
        .await
        .assert_problem(403);
    let past = app
        .get(
            "/api/v1/proofs/inclusion?index=0&tree_size=999999",
            &crew.auditor,
        )
        .await;
    past.assert_problem(404);
    assert!(past.body["detail"]
        .as_str()
        .unwrap()
        .contains("no tree of 999999 leaves yet"));
    app.get("/api/v1/proofs/consistency?from=5&to=2", &crew.auditor)
        .await
        .assert_problem(422);
    let metrics = app.send(Method::GET, "/metrics", None, &[], None).await;
    let text = metrics.body.as_str().unwrap();
    assert!(text.contains("eucora_integrity_failures_total 0"), "{text}");

    if backend == Backend::Postgres {
        // A second replica with the same key signs too; no two checkpoints of one size differ,
        // and every one extends the one before it.
        let (replica_flags, _) = key_flags(&db, "replica-checkpoints");
        let replica = serve(&db, &replica_flags).await;
        traffic(&replica, &crew, 4, "c").await;
        traffic(&app, &crew, 4, "d").await;
        checkpoint_of(&replica, &crew.auditor, &verifier, later.size + 16).await;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let notes: Vec<(i64, String)> =
            sqlx::query_as("SELECT tree_size, note FROM log_checkpoints ORDER BY tree_size")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert!(notes.len() >= 3, "{notes:?}");
        let opened: Vec<Checkpoint> = notes
            .iter()
            .map(|(size, note)| {
                let c = open_checkpoint(note, &verifier).unwrap();
                assert_eq!(c.size as i64, *size);
                c
            })
            .collect();
        for pair in opened.windows(2) {
            let proof: Value = app
                .get(
                    &format!(
                        "/api/v1/proofs/consistency?from={}&to={}",
                        pair[0].size, pair[1].size
                    ),
                    &crew.auditor,
                )
                .await
                .body;
            let hashes: Vec<Hash> = proof["hashes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| unb64(h.as_str().unwrap()))
                .collect();
            merkle::verify_consistency(
                pair[0].size,
                pair[1].size,
                &pair[0].root,
                &pair[1].root,
                &hashes,
            )
            .unwrap();
        }
    }
}

/// SQL run as an insider with full access: the append-only triggers out of the way.
pub(crate) async fn as_insider(db: &TestDb, backend: Backend, statements: &[&str]) {
    match backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            for s in [
                "DROP TRIGGER IF EXISTS events_refuse_update",
                "DROP TRIGGER IF EXISTS log_tiles_refuse_delete",
            ]
            .iter()
            .chain(statements)
            {
                sqlx::query(s).execute(&mut conn).await.unwrap();
            }
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            for s in [
                "ALTER TABLE events DISABLE TRIGGER USER",
                "ALTER TABLE log_tiles DISABLE TRIGGER USER",
            ]
            .iter()
            .chain(statements)
            {
                sqlx::query(s).execute(&mut conn).await.unwrap();
            }
        }
    }
}

/// Edits the payload of the first creation: another app name.
pub(crate) fn edit(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "UPDATE events SET payload = replace(payload, '\"app_name\":\"a0\"', '\"app_name\":\"zz\"') \
             WHERE position = (SELECT MIN(position) FROM events WHERE aggregate_type = 'deployment')"
        }
        Backend::Postgres => {
            "UPDATE events SET payload = replace(payload::text, '\"app_name\":\"a0\"', '\"app_name\":\"zz\"')::json \
             WHERE position = (SELECT MIN(position) FROM events WHERE aggregate_type = 'deployment')"
        }
    }
}

pub(crate) async fn ready_fails_with(app: &TestApp, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = app
            .send(Method::GET, "/health/ready", None, &[], None)
            .await;
        if ready.status == 503
            && ready.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains(what))
        {
            let metrics = app.send(Method::GET, "/metrics", None, &[], None).await;
            let text = metrics.body.as_str().unwrap_or_default();
            assert!(
                !text.contains("eucora_integrity_failures_total 0"),
                "{text}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never reported {what:?}: {ready:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_database_rewritten_by_an_insider_is_caught_at_the_next_start(backend: Backend) {
    let db = Arc::new(TestDb::new(backend).await);
    let (flags, verifier) = key_flags(&db, "checkpoints");
    // The policy the server started with, the crew's four principals' events and the traffic's
    // six.
    let signed = 11;
    {
        let app = serve(&db, &flags).await;
        let crew = Crew::new(&app);
        traffic(&app, &crew, 3, "a").await;
        assert_eq!(app.event_count().await, signed as i64);
        checkpoint_of(&app, &crew.auditor, &verifier, signed).await;
    }
    // The insider edits an event and rebuilds the log to match (drops the tiles; replay logs
    // the stream afresh), so the database agrees with itself.
    as_insider(&db, backend, &[edit(backend), "DELETE FROM log_tiles"]).await;
    // Replay logs the stream afresh, but the signed checkpoints kept in the database contradict
    // it.
    let (ok, out, err) = eucora(&["replay", "--database-url", &db.url]);
    assert!(
        !ok && err.contains("the history was rewritten after it was signed"),
        "{out}{err}"
    );
    // The checkpoint kept outside the database does not match it any more.
    let app = serve(&db, &flags).await;
    ready_fails_with(
        &app,
        "does not extend the checkpoint kept outside the database",
    )
    .await;
    // And no checkpoint is signed over the rewritten history.
    let crew = Crew::new(&app);
    let served = app.get("/api/v1/checkpoint", &crew.auditor).await.body;
    assert_eq!(
        open_checkpoint(served.as_str().unwrap(), &verifier)
            .unwrap()
            .size,
        signed
    );
}

async fn an_event_edited_under_a_running_server_is_caught_by_the_background_check(
    backend: Backend,
) {
    let db = Arc::new(TestDb::new(backend).await);
    let (flags, verifier) = key_flags(&db, "checkpoints");
    let app = serve(&db, &flags).await;
    let crew = Crew::new(&app);
    traffic(&app, &crew, 3, "a").await;
    checkpoint_of(&app, &crew.auditor, &verifier, 6).await;
    as_insider(&db, backend, &[edit(backend)]).await;
    ready_fails_with(&app, "edited").await;
}

/// PostgreSQL without a signing key: the server still runs, but says at every evidence endpoint
/// (503, naming the fix, no Retry-After: waiting will not help) and in its metrics that it signs
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_signing_key_says_so_and_names_the_fix() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, intent_body("7-Zip", 0.2, "LAB"))
        .await
        .id();
    for path in [
        "/api/v1/checkpoint".to_string(),
        "/api/v1/evidence?from=2020-01-01T00:00:00Z&to=2099-01-01T00:00:00Z".to_string(),
        format!("/api/v1/deployments/{id}/evidence"),
    ] {
        let reply = app.get(&path, &crew.auditor).await;
        reply.assert_problem(503);
        assert_eq!(
            reply.body["type"], "urn:eucora:problem:not-configured",
            "{path}: {reply:#?}"
        );
        let detail = reply.body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("eucora key generate") && detail.contains("--signing-key-file"),
            "{path}: {detail}"
        );
        assert!(reply.headers.get("retry-after").is_none(), "{path}");
    }
    let metrics = app
        .send(Method::GET, "/api/v1/metrics", None, &[], None)
        .await;
    let text = metrics.body.as_str().unwrap_or_default();
    assert!(
        text.lines()
            .any(|l| l.starts_with("eucora_evidence_signing_enabled") && l.ends_with(" 0")),
        "{text}"
    );
}

/// The events' JSON Schema is served, generated from the same types as docs/events.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_json_schema_is_served() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let reply = app
        .send(Method::GET, "/api/v1/schemas/events", None, &[], None)
        .await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    let names = |stream: &str| -> Vec<String> {
        reply.body[stream]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|m| m["properties"].as_object().unwrap().keys().cloned())
            .collect()
    };
    assert!(names("deployment").contains(&"DeploymentCreated".to_string()));
    assert_eq!(
        names("access"),
        [
            "PrincipalCreated",
            "PrincipalTokenRotated",
            "PrincipalRevoked"
        ]
    );
    assert!(reply.body["deployment"]["$defs"]["Created"]["properties"]["change_ref"].is_object());
}

async fn a_store_shorter_than_what_was_read_or_signed_is_an_integrity_failure_not_a_stall(
    backend: Backend,
) {
    let db = Arc::new(TestDb::new(backend).await);
    let (flags, verifier) = key_flags(&db, "checkpoints");
    let signed = 11;
    let auditor = {
        let app = serve(&db, &flags).await;
        let crew = Crew::new(&app);
        traffic(&app, &crew, 3, "a").await;
        checkpoint_of(&app, &crew.auditor, &verifier, signed).await;
        crew.auditor
    };
    // The insider deletes the last event while the server is down.
    let delete_last = "DELETE FROM events WHERE position = (SELECT MAX(position) FROM events)";
    let statements: &[&str] = match backend {
        Backend::Sqlite => &["DROP TRIGGER IF EXISTS events_refuse_delete", delete_last],
        Backend::Postgres => &[delete_last],
    };
    as_insider(&db, backend, statements).await;
    {
        // Not "catching up" for ever: an integrity failure, named, counted.
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let app = TestApp::start(db.clone(), &flags, &[], None);
        ready_fails_with(&app, "events were deleted").await;
        // Its evidence is refused at once, naming the failure.
        let reply = app
            .get(
                "/api/v1/evidence?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
                &auditor,
            )
            .await;
        assert_eq!(reply.status, 503);
        assert!(
            reply.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("events were deleted")),
            "{:?}",
            reply.body
        );
    }
    // So is an export from the database, instead of waiting on events that are gone.
    let out = db.dir().join("bundle.tar.gz");
    let (ok, _, err) = eucora(&[
        "evidence",
        "export",
        "--database-url",
        &db.url,
        "--signing-key-file",
        &flags[1],
        "--from",
        "2000-01-01T00:00:00Z",
        "--to",
        "2100-01-01T00:00:00Z",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("events were deleted"), "{err}");
    assert!(!out.exists(), "nothing written");
    // Replay names it too, from the log; and with the log rebuilt to match the shortened
    // stream, from the signed checkpoints kept in the database.
    let (ok, out, err) = eucora(&["replay", "--database-url", &db.url]);
    assert!(!ok && err.contains("missing (deleted)"), "{out}{err}");
    as_insider(&db, backend, &["DELETE FROM log_tiles"]).await;
    let (ok, out, err) = eucora(&["replay", "--database-url", &db.url]);
    assert!(
        !ok && err.contains("events were deleted after it was signed"),
        "{out}{err}"
    );

    // A projection's checkpoint moved past the stream's end, on a store with nothing signed.
    let db = Arc::new(TestDb::new(backend).await);
    {
        let app = TestApp::spawn_on(db.clone(), &[]).await;
        let crew = Crew::new(&app);
        traffic(&app, &crew, 1, "b").await;
        app.list_until(&crew.auditor, "", 1).await;
    }
    as_insider(
        &db,
        backend,
        &["UPDATE projection_checkpoints SET ordinal = ordinal + 5"],
    )
    .await;
    let app = TestApp::start(db.clone(), &[], &[], None);
    ready_fails_with(&app, "events were deleted").await;
}
