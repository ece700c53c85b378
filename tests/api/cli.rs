//! The command line as an operator uses it.

use crate::helpers::{eucora, intent_body, Backend, Crew, TestApp, TestDb};

crate::on_both_backends!(
    token_create_prints_only_the_token_and_stores_only_its_hash,
    events_prints_an_intents_history_for_people_and_as_json,
);

async fn token_create_prints_only_the_token_and_stores_only_its_hash(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (ok, out, _) = eucora(&[
        "token",
        "create",
        "--database-url",
        &db.url,
        "--subject",
        "ops",
        "--role",
        "deployer",
    ]);
    assert!(ok);
    let token = out.trim_end_matches('\n');
    assert!(
        !token.contains('\n') && token.starts_with("eucora_") && token.len() > 40,
        "{out:?}"
    );
    let store = db.store().await;
    let hash = eucora::principals::sha256_hex(token.as_bytes());
    let principal = store.principal_by_token_hash(&hash).await.unwrap().unwrap();
    assert_eq!(principal.subject, "ops");
    assert!(
        store
            .principal_by_token_hash(token)
            .await
            .unwrap()
            .is_none(),
        "the token itself is not stored"
    );

    let (ok, out, err) = eucora(&[
        "token",
        "create",
        "--database-url",
        &db.url,
        "--subject",
        "x",
        "--role",
        "root",
    ]);
    assert!(!ok && out.is_empty());
    assert!(err.contains("unknown role"), "{err}");
}

async fn events_prints_an_intents_history_for_people_and_as_json(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, intent_body("Putty", 0.2, "GLOBAL"))
        .await
        .id();
    let (ok, out, err) = eucora(&["events", "--database-url", &app.db.url, "--deployment", &id]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].contains("DeploymentCreated") && lines[0].contains("alice (requester)"),
        "{out}"
    );
    assert!(lines[1].contains("DeploymentApproved"));

    let (ok, out, _) = eucora(&[
        "events",
        "--database-url",
        &app.db.url,
        "--deployment",
        &id,
        "--json",
    ]);
    assert!(ok);
    let parsed: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed[1]["event_type"], "DeploymentApproved");
    assert_eq!(
        parsed[1]["event"]["DeploymentApproved"]["approver"],
        "policy:risk_model_v1.0"
    );

    let missing = uuid::Uuid::now_v7().to_string();
    let (ok, _, err) = eucora(&[
        "events",
        "--database-url",
        &app.db.url,
        "--deployment",
        &missing,
    ]);
    assert!(!ok && err.contains("no deployment intent"));
}

#[test]
fn help_explains_every_flag_and_its_environment_variable() {
    let (ok, out, _) = eucora(&["serve", "--help"]);
    assert!(ok);
    for flag in [
        "--database-url",
        "--listen",
        "--policy",
        "--body-limit",
        "--request-timeout",
        "--log-format",
    ] {
        assert!(out.contains(flag), "{flag} missing from serve --help");
    }
    for var in ["EUCORA_DATABASE_URL", "EUCORA_LISTEN", "EUCORA_POLICY"] {
        assert!(out.contains(var), "{var} missing from serve --help");
    }
    let (ok, out, _) = eucora(&["--help"]);
    assert!(ok);
    for sub in ["serve", "migrate", "token", "events"] {
        assert!(out.contains(sub));
    }
}

/// `eucora serve` with stderr going to a pipe (as to a log file): the address it listens on, a
/// host name accepted; the first log lines, without colour codes. The server is killed after.
fn serve_logs(listen: &str) -> (String, String) {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("eucora-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = std::process::Command::new(crate::helpers::binary());
    command
        .args(["serve", "--listen", listen, "--database-url"])
        .arg(format!("sqlite://{}", dir.join("e.db").display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut logs = String::new();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    while !logs.contains("projections caught up") {
        if stderr.read_line(&mut logs).unwrap() == 0 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    (line, logs)
}

#[test]
fn serve_takes_a_host_name_and_writes_no_colour_codes_to_a_log() {
    let (line, logs) = serve_logs("localhost:0");
    assert!(line.starts_with("eucora listening on http://"), "{line:?}");
    assert!(logs.contains("serving"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "colour codes in a log: {logs:?}");
    let (ip, _) = serve_logs("127.0.0.1:0");
    assert!(
        ip.starts_with("eucora listening on http://127.0.0.1:"),
        "{ip:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_with_a_trailing_slash_are_the_same_paths() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let crew = Crew::new(&app);
    let metrics = app
        .send(reqwest::Method::GET, "/api/v1/metrics/", None, &[], None)
        .await;
    assert_eq!(metrics.status, 200, "{metrics:#?}");
    let created = app
        .send(
            reqwest::Method::POST,
            "/api/v1/deployments/",
            Some(&crew.requester),
            &[],
            Some(intent_body("Slash", 0.2, "GLOBAL").to_string()),
        )
        .await;
    assert_eq!(created.status, 201, "{created:#?}");
    let id = created.id();
    let one = app
        .get(&format!("/api/v1/deployments/{id}/"), &crew.auditor)
        .await;
    assert_eq!(one.status, 200, "{one:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_closes_the_pipe_ends_a_command_quietly() {
    let db = TestDb::new(Backend::Sqlite).await;
    let id = {
        let app = TestApp::spawn_on_shared(&db).await;
        let crew = Crew::new(&app);
        app.create(&crew.requester, intent_body("Pipe", 0.2, "GLOBAL"))
            .await
            .id()
    };
    // `eucora events --json | head -0`: the reader is gone before the first line is written.
    let mut child = std::process::Command::new(crate::helpers::binary())
        .args([
            "events",
            "--json",
            "--database-url",
            &db.url,
            "--deployment",
            &id,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
}
