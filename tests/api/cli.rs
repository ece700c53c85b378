//! The command line as an operator uses it.

use serde_json::json;

use crate::helpers::{eucora, eucora_with, intent_body, Backend, Crew, TestApp, TestDb};

crate::on_both_backends!(
    token_create_prints_only_the_token_and_stores_only_its_hash,
    events_prints_an_intents_history_for_people_and_as_json,
    the_operator_client_walks_an_intent_from_request_to_completion,
    create_reads_a_json_file_or_standard_input,
);

async fn token_create_prints_only_the_token_and_stores_only_its_hash(backend: Backend) {
    let db = TestDb::new(backend).await;
    let create = |init: bool| {
        let mut args = vec![
            "token",
            "create",
            "--database-url",
            &db.url,
            "--subject",
            "ops",
            "--role",
            "deployer",
        ];
        if init {
            args.push("--init");
        }
        eucora(&args)
    };
    if backend == Backend::Sqlite {
        // A database that does not exist is not made by accident, and the refusal says where
        // it looked.
        let (ok, out, err) = create(false);
        let path = db.dir().join("eucora.db");
        assert!(!ok && out.is_empty(), "{out}");
        assert!(
            err.contains(&format!("no database at {}", path.display())) && err.contains("--init"),
            "{err}"
        );
        assert!(!path.exists());
    }
    let (ok, out, err) = create(true);
    assert!(ok, "{err}");
    if backend == Backend::Sqlite {
        assert!(err.contains("created a new database at /"), "{err}");
    }
    let token = out.trim_end_matches('\n');
    assert!(
        !token.contains('\n') && token.starts_with("eucora_") && token.len() > 40,
        "{out:?}"
    );
    let store = db.store().await;
    let hash = eucora::principals::sha256_hex(token.as_bytes());
    let (principal, _) = store
        .principal_and_events_by_token_hash(&hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(principal.subject, "ops");
    assert!(
        store
            .principal_and_events_by_token_hash(token)
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
        lines[0].contains("DeploymentCreated")
            && lines[0].contains("requested by alice (requester): Putty 1.0.0")
            && lines[0].contains("risk "),
        "{out}"
    );
    // The approver of record is the policy, not the requester whose request triggered it.
    assert!(
        lines[1].contains("DeploymentApproved")
            && lines[1].contains("approver of record policy:risk_model_v1.0, by policy"),
        "{out}"
    );
    assert!(
        !lines[1].contains("DeploymentApproved     by alice"),
        "{out}"
    );

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
    // The verifier key comes first, then the address.
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    while !line.starts_with("eucora listening") {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
    }
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

#[test]
fn commands_that_read_a_store_refuse_one_that_does_not_exist() {
    let dir = std::env::temp_dir().join(format!("eucora-empty-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let id = uuid::Uuid::now_v7().to_string();
    for args in [
        vec!["events", "--deployment", id.as_str()],
        vec!["replay"],
        vec!["demo", "--duration", "1"],
        // A token made by accident against a database no server uses.
        vec!["token", "create", "--subject", "ops", "--role", "deployer"],
    ] {
        let (code, out, err) = eucora_with(Some(&dir), &args, "");
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        // The relative default, resolved against the folder the command ran in.
        let tried = format!("no database at {}", dir.join("eucora.db").display());
        assert!(err.contains(&tried), "{args:?}: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A file named by a relative path is looked for in the folder the command runs in, and a
/// missing one is named by its absolute path.
#[test]
fn a_missing_file_is_named_by_its_absolute_path() {
    let dir = std::env::temp_dir().join(format!("eucora-paths-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    for (args, file) in [
        (
            vec!["serve", "--policy", "docs/demo-policy.toml"],
            "docs/demo-policy.toml",
        ),
        (
            vec!["evidence", "verify", "q4.tar.gz", "--key", "verifier.txt"],
            "verifier.txt",
        ),
    ] {
        let (code, _, err) = eucora_with(Some(&dir), &args, "");
        assert_eq!(code, 1, "{args:?}: {err}");
        let named = dir.join(file).display().to_string();
        assert!(err.contains(&named), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_address_in_use_is_said_in_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("eucora-bind-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (code, _, err) = eucora_with(Some(&dir), &["serve", "--listen", &addr], "");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 1);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with(&format!("eucora: cannot listen on {addr}:")),
        "{err}"
    );
}

/// `eucora deployments …` against `app`, as `token`.
pub fn client(app: &TestApp, token: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["deployments"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--server", &app.base, "--token", token]);
    eucora_with(None, &all, "")
}

async fn the_operator_client_walks_an_intent_from_request_to_completion(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    // Create from flags (JSON for the script), needing the CAB.
    let (code, out, err) = client(
        &app,
        &crew.requester,
        &[
            "create",
            "--app-name",
            "Firefox",
            "--version",
            "128.0",
            "--connector-type",
            "intune",
            "--target-ring",
            "CANARY",
            "--rollback-validated",
            "--privileged-tooling",
            "--risk-factor",
            "privilege_impact=0.8",
            "--risk-factor",
            "exploitability=0.9",
            "--risk-factor",
            "data_access=0.8",
            "--risk-factor",
            "supply_chain_trust=0.8",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["status"], "awaiting_cab", "{out}");
    let id = created["id"].as_str().unwrap().to_string();

    // The CAB's queue on the command line: when it was asked, how long it has waited, its risk
    // and why the CAB must decide. The list is a projection a moment behind: once it reflects
    // the create (its index, as a fresh read waits for), the queue shows it.
    let index = created["index"]
        .as_i64()
        .expect("a command answers with its index");
    let fresh = app
        .get(
            &format!("/api/v1/deployments?min_index={index}&limit=1"),
            &crew.approver,
        )
        .await;
    assert_eq!(fresh.status, 200, "{:?}", fresh.body);
    let (code, out, err) = client(&app, &crew.approver, &["list", "--status", "awaiting_cab"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    for column in ["REQUESTED", "WAITING", "RISK", "WHY THE CAB DECIDES"] {
        assert!(lines[0].contains(column), "{out}");
    }
    let row = lines
        .iter()
        .find(|l| l.starts_with(&id))
        .expect("the queue lists it");
    let requested = created["created_at"].as_str().unwrap();
    assert!(
        row.contains(&requested[..19]) && row.contains("Z "),
        "{row}"
    );
    assert!(
        row.contains(" 0m ") && row.contains("privileged tooling"),
        "{row}"
    );

    // A refusal: the requester may not approve its own intent (exit 3, the detail on stderr).
    let (code, out, err) = client(&app, &crew.requester, &["approve", &id]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("403") && err.contains("may not"), "{err}");

    let (code, out, err) = client(&app, &crew.approver, &["approve", &id, "--comment", "ok"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("status:           approved"), "{out}");
    assert!(out.contains("approved by:      carol"), "{out}");

    // A promotion before any report is blocked: the gates are printed, and the exit is 3.
    let (code, out, err) = client(
        &app,
        &crew.deployer,
        &[
            "report",
            &id,
            "--ring",
            "LAB",
            "--target-devices",
            "10",
            "--succeeded",
            "5",
            "--failed",
            "0",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out2, err) = client(&app, &crew.deployer, &["promote", &id]);
    assert_eq!(code, 3, "{out}{out2}{err}");
    assert!(out2.contains("success_rate 50 % >= 95 % FAIL"), "{out2}");
    assert!(
        err.contains(
            "409 Promotion blocked by gates: promotion from LAB to CANARY blocked by: success_rate"
        ),
        "{err}"
    );

    for (ring, done) in [("LAB", "deployed"), ("CANARY", "completed")] {
        let (code, out, err) = client(
            &app,
            &crew.deployer,
            &[
                "report",
                &id,
                "--ring",
                ring,
                "--target-devices",
                "10",
                "--succeeded",
                "10",
                "--failed",
                "0",
            ],
        );
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("status:           {done}")), "{out}");
        if ring == "LAB" {
            let (code, out, err) = client(&app, &crew.deployer, &["promote", &id]);
            assert_eq!(code, 0, "{err}");
            assert!(out.contains("ring:             CANARY"), "{out}");
            assert!(out.contains("cab_approval yes (required) pass"), "{out}");
        }
    }

    // Reading: the list as a table and as JSON, one intent, its history.
    app.list_until(&crew.auditor, "?status=completed", 1).await;
    let (code, out, err) = client(&app, &crew.auditor, &["list", "--status", "completed"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("ID ") && lines[0].contains("STATUS"),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&id) && lines[1].contains("completed"),
        "{out}"
    );
    let (code, out, _) = client(&app, &crew.auditor, &["list", "--ring", "LAB", "--json"]);
    assert_eq!(code, 0);
    let page: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "{out}");
    let (code, out, _) = client(&app, &crew.auditor, &["get", &id]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("id:               {id}\n")),
        "{out}"
    );
    let (code, out, err) = client(&app, &crew.auditor, &["history", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("approver of record carol, by the CAB, for LAB; comment: ok"),
        "{out}"
    );
    assert!(out.contains("10 of 10 devices succeeded"), "{out}");
    assert!(out.contains("LAB to CANARY BLOCKED"), "{out}");
    assert!(out.contains("compliant in its target ring CANARY"), "{out}");

    // A rejection shows who rejected it and why.
    let other = app
        .create(&crew.requester, intent_body("Zoom", 0.8, "LAB"))
        .await
        .id();
    let (code, _, err) = client(
        &app,
        &crew.approver,
        &["reject", &other, "--reason", "no rollback tested"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = client(&app, &crew.auditor, &["get", &other]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rejected by:      carol: no rollback tested"),
        "{out}"
    );

    // A ring in lower case is the ring; the server then refuses the start outside LAB for
    // want of a validated rollback, naming the ring as the API does.
    let (code, _, err) = client(
        &app,
        &crew.requester,
        &[
            "create",
            "--app-name",
            "Vim",
            "--version",
            "9.1",
            "--connector-type",
            "intune",
            "--start-ring",
            "canary",
        ],
    );
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("must be true to start in CANARY") && !err.contains("column"),
        "{err}"
    );

    // Bad input is said in our words and sends nothing; an unreachable server is a failure (1).
    let (code, _, err) = client(&app, &crew.auditor, &["get", "not-an-id"]);
    assert_eq!(
        (code, err.contains("is not a deployment intent id")),
        (1, true),
        "{err}"
    );
    let (code, _, err) = client(&app, &crew.auditor, &["list", "--status", "paused"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("status must be one of awaiting_cab, approved, deployed, completed, rejected, rolled_back (got `paused`)"),
        "{err}"
    );
    let (code, _, err) = eucora_with(
        None,
        &[
            "deployments",
            "list",
            "--server",
            "http://127.0.0.1:9",
            "--token",
            "x",
        ],
        "",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot reach the server at http://127.0.0.1:9"),
        "{err}"
    );
    let (code, _, err) = eucora_with(None, &["deployments", "list", "--server", &app.base], "");
    assert_eq!(code, 1);
    assert!(err.contains("no token"), "{err}");
    assert!(!err.contains(&crew.auditor));
}

async fn create_reads_a_json_file_or_standard_input(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crew = Crew::new(&app);
    let body = intent_body("Notepad++", 0.2, "PILOT").to_string();
    // `deployments create --file -` with these flags, reading `stdin`.
    let create = |flags: &[&str], stdin: &str| {
        let mut args = vec!["deployments", "create", "--file", "-"];
        args.extend_from_slice(flags);
        args.extend(["--server", &app.base, "--token", &crew.requester]);
        eucora_with(None, &args, stdin)
    };
    let (code, out, err) = create(&["--version", "8.7", "--json"], &body);
    assert_eq!(code, 0, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (created["app_name"].as_str(), created["version"].as_str()),
        (Some("Notepad++"), Some("8.7")),
        "a flag overrides the file"
    );
    assert_eq!(created["status"], "approved");
    // Rings, change types and site classes in any case: unambiguous, so the command line sends
    // the names the API takes.
    let flags = [
        "--target-ring",
        "canary",
        "--change-type",
        "NORMAL",
        "--site-class",
        "Air_Gapped",
        "--json",
    ];
    let (code, out, err) = create(&flags, &body);
    assert_eq!(code, 0, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            &created["target_ring"],
            &created["change_type"],
            &created["site_class"]
        ),
        (&json!("CANARY"), &json!("normal"), &json!("air_gapped"))
    );
    // A name that is none of them is refused in our words before anything is sent.
    let before = app.intent_event_count().await;
    let (code, out, err) = create(&["--target-ring", "canry"], &body);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("ring must be one of LAB, CANARY, PILOT, DEPARTMENT, GLOBAL (got `canry`)"),
        "{err}"
    );
    assert_eq!(app.intent_event_count().await, before);
    let (code, _, err) = create(&[], "{not json");
    assert_eq!(code, 1);
    assert!(err.contains("is not valid JSON"), "{err}");
}

/// `--help` describes every option of every command, and shows an example of each command that
/// does something (issue: "Most CLI options have no description").
#[test]
fn every_command_explains_each_option_and_shows_an_example() {
    fn walk(path: &mut Vec<String>, gaps: &mut Vec<String>) {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let (ok, help, err) = eucora(&args);
        assert!(ok, "{args:?}: {err}");
        let section = |name: &str| -> Vec<String> {
            help.split(name)
                .nth(1)
                .map(|rest| {
                    rest.lines()
                        .skip(1)
                        .take_while(|l| l.is_empty() || l.starts_with(' '))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let commands: Vec<String> = section("Commands:")
            .iter()
            .filter_map(|l| {
                l.strip_prefix("  ")?
                    .split_whitespace()
                    .next()
                    .map(str::to_string)
            })
            .filter(|c| c != "help")
            .collect();
        if !commands.is_empty() {
            for c in commands {
                path.push(c);
                walk(path, gaps);
                path.pop();
            }
            return;
        }
        let name = path.join(" ");
        if !help.contains("Example: eucora ") {
            gaps.push(format!("{name}: no example"));
        }
        let options = section("Options:");
        for (i, line) in options.iter().enumerate() {
            let trimmed = line.trim_start();
            if !trimmed.starts_with('-') || trimmed.starts_with("-h, --help") {
                continue;
            }
            // The description follows on the same line after a gap, or on the next line.
            let same_line = trimmed.contains("  ");
            let next_line = options
                .get(i + 1)
                .is_some_and(|n| !n.trim().is_empty() && !n.trim_start().starts_with('-'));
            if !same_line && !next_line {
                gaps.push(format!("{name}: {trimmed} has no description"));
            }
        }
    }
    let mut gaps = Vec::new();
    walk(&mut Vec::new(), &mut gaps);
    assert!(gaps.is_empty(), "{gaps:#?}");
}
