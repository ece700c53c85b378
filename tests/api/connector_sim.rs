//! `eucora connector-sim`: the connector protocol as a connector answers it (docs/connectors.md),
//! with the faults and drift the dispatcher must live with, and the side-effect counts that
//! prove a repeated call changed nothing more.

use std::time::Duration;

use eucora::connector::sim::{router, SimConfig};
use eucora::connector::{assignment_id, idempotency_key, Action};
use eucora_projections::event::Ring;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::eucora;

pub struct Sim {
    pub base: String,
    http: reqwest::Client,
}

impl Sim {
    pub async fn start(config: SimConfig) -> Sim {
        Sim::serve(router(config)).await
    }

    /// Serves the simulator's `router` (with a test's own layers, say).
    pub async fn serve(router: axum::Router) -> Sim {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Sim {
            base,
            http: reqwest::Client::new(),
        }
    }

    pub async fn publish(&self, id: Uuid, ring: Ring, key: Option<&str>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .put(format!(
                "{}/v1/assignments/{}",
                self.base,
                assignment_id(id, ring)
            ))
            .json(
                &json!({"deployment_id": id, "app_name": "7zip", "version": "24.08",
                          "ring": ring.as_str(), "artifact_sha256": null}),
            );
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let reply = request.send().await.unwrap();
        (reply.status(), reply.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    pub async fn status(&self, id: Uuid, ring: Ring) -> (StatusCode, Value) {
        let reply = self
            .get(&format!("/v1/assignments/{}", assignment_id(id, ring)))
            .await;
        (reply.status(), reply.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value, key: Option<&str>) -> reqwest::Response {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }

    pub async fn faults(&self, faults: Value) {
        let reply = self
            .http
            .put(format!("{}/sim/faults", self.base))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 204);
    }

    pub async fn side_effects(&self) -> Value {
        self.get("/sim/side-effects").await.json().await.unwrap()
    }
}

fn quick() -> SimConfig {
    SimConfig {
        converge: Duration::from_millis(300),
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn a_publication_converges_and_a_repeat_changes_nothing_more() {
    let sim = Sim::start(SimConfig {
        device_failure_rate: 0.2,
        ..quick()
    })
    .await;
    let id = Uuid::new_v4();
    let key = idempotency_key(id, Ring::Lab, Action::Publish);
    let (status, first) = sim.publish(id, Ring::Lab, Some(&key)).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["targeted"], 10);
    assert_eq!(first["state"], "active");
    // The same call again: answered, not done again.
    let (status, _) = sim.publish(id, Ring::Lab, Some(&key)).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, done) = sim.status(id, Ring::Lab).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&done["installed"], &done["failed"], &done["pending"]),
        (&json!(8), &json!(2), &json!(0)),
        "{done}"
    );
    let counts = sim.side_effects().await;
    assert_eq!(counts["keys"][&key], json!({"calls": 2, "effects": 1}));
    assert_eq!(
        counts["actions"][format!("{}/publish", assignment_id(id, Ring::Lab))],
        1
    );
    // The same assignment under another key, or without one: refused, nothing done.
    let (status, body) = sim.publish(id, Ring::Lab, Some("another")).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = sim.publish(id, Ring::Canary, None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("Idempotency-Key"));
    assert_eq!(sim.status(id, Ring::Canary).await.0, 404);
    assert_eq!(
        sim.side_effects().await["actions"]
            .as_object()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn throttling_outages_and_failures_answer_as_a_connector_would() {
    let sim = Sim::start(quick()).await;
    let id = Uuid::new_v4();
    let key = idempotency_key(id, Ring::Lab, Action::Publish);
    sim.faults(json!({"throttle_rate": 1.0, "retry_after_seconds": 7}))
        .await;
    let reply = sim.get("/v1/assignments/x.lab").await;
    assert_eq!(reply.status(), 429);
    assert_eq!(reply.headers()["retry-after"], "7");
    sim.faults(json!({"failure_rate": 1.0})).await;
    assert_eq!(sim.publish(id, Ring::Lab, Some(&key)).await.0, 503);
    sim.faults(json!({"outage_seconds": 1.0})).await;
    assert_eq!(sim.publish(id, Ring::Lab, Some(&key)).await.0, 503);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(sim.publish(id, Ring::Lab, Some(&key)).await.0, 201);
    // A refused call caused nothing and is not counted as a call that reached the connector.
    assert_eq!(
        sim.side_effects().await["keys"][&key],
        json!({"calls": 1, "effects": 1})
    );
    // Faults in our words.
    let reply = sim
        .http
        .put(format!("{}/sim/faults", sim.base))
        .json(&json!({"failure_rate": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 422);
}

#[tokio::test]
async fn drift_and_remediation_show_in_the_status() {
    let sim = Sim::start(SimConfig {
        converge: Duration::ZERO,
        ..SimConfig::default()
    })
    .await;
    let id = Uuid::new_v4();
    let assignment = assignment_id(id, Ring::Pilot);
    sim.publish(
        id,
        Ring::Pilot,
        Some(&idempotency_key(id, Ring::Pilot, Action::Publish)),
    )
    .await;
    assert_eq!(sim.status(id, Ring::Pilot).await.1["installed"], 200);
    let drift = sim
        .post(
            "/sim/drift",
            json!({"assignment_id": assignment, "lose_devices": 30}),
            None,
        )
        .await;
    assert_eq!(drift.status(), 204);
    assert_eq!(sim.status(id, Ring::Pilot).await.1["installed"], 170);
    // A rollback takes it off every device, once however often it is sent.
    let key = idempotency_key(id, Ring::Pilot, Action::Rollback);
    for _ in 0..3 {
        let reply = sim
            .post(
                &format!("/v1/assignments/{assignment}/remediations"),
                json!({"action": "rollback"}),
                Some(&key),
            )
            .await;
        assert_eq!(reply.status(), 202);
    }
    let (_, rolled_back) = sim.status(id, Ring::Pilot).await;
    assert_eq!(
        (&rolled_back["state"], &rolled_back["installed"]),
        (&json!("rollback"), &json!(0))
    );
    assert_eq!(
        sim.side_effects().await["keys"][&key],
        json!({"calls": 3, "effects": 1})
    );
    // The assignment disappears.
    sim.post(
        "/sim/drift",
        json!({"assignment_id": assignment, "remove": true}),
        None,
    )
    .await;
    assert_eq!(sim.status(id, Ring::Pilot).await.0, 404);
}

#[tokio::test]
async fn the_protocol_is_served_in_openapi_form() {
    let sim = Sim::start(quick()).await;
    let doc: Value = sim.get("/v1/openapi.json").await.json().await.unwrap();
    let paths = &doc["paths"];
    let item = &paths["/v1/assignments/{assignment_id}"];
    for (operation, header) in [
        (&item["put"], true),
        (&item["get"], false),
        (
            &paths["/v1/assignments/{assignment_id}/remediations"]["post"],
            true,
        ),
    ] {
        assert!(operation.is_object(), "{doc:#}");
        let takes_key = operation["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header");
        assert_eq!(takes_key, header, "{operation:#}");
    }
    for schema in ["Assignment", "AssignmentStatus", "Remediation"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}

/// The command as an operator runs it: says where it listens, serves the protocol with its
/// flags applied, and stops cleanly on SIGTERM.
#[tokio::test]
async fn the_command_serves_the_protocol_and_stops_on_sigterm() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(crate::helpers::binary())
        .args([
            "connector-sim",
            "--listen",
            "127.0.0.1:0",
            "--devices",
            "7,50,200,1000,5000",
            "--converge",
            "1s",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("eucora connector-sim listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    let sim = Sim {
        base,
        http: reqwest::Client::new(),
    };
    let id = Uuid::new_v4();
    let (status, published) = sim
        .publish(
            id,
            Ring::Lab,
            Some(&idempotency_key(id, Ring::Lab, Action::Publish)),
        )
        .await;
    assert_eq!(status, 201, "{published}");
    assert_eq!(published["targeted"], 7, "--devices was not applied");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn bad_flags_are_refused_in_our_words() {
    for (flags, says) in [
        (&["--devices", "1,2"][..], "five counts"),
        (&["--devices", "1,2,x,4,5"][..], "whole number"),
        (&["--failure-rate", "1.5"][..], "between 0 and 1"),
        (&["--outage", "30s"][..], "AFTER+FOR"),
        (&["--converge", "soon"][..], "not a duration"),
    ] {
        let mut args = vec!["connector-sim", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        let (ok, _, err) = eucora(&args);
        assert!(!ok, "{flags:?} was taken");
        assert!(err.contains(says), "{flags:?}: {err}");
    }
}

// ---- the client of the protocol, against the simulator -----------------------------------

mod client {
    use super::*;
    use eucora::connector::client::{parse, BreakerState, CallError, Connector};
    use eucora::connector::Assignment;
    use eucora_projections::event::ConnectorType;

    fn connector(sim: &Sim, extra: &str) -> Connector {
        let file = format!(
            "[intune]\nbase_url = \"{}/\"\ntimeout = \"2s\"\nretry_min = \"10ms\"\nretry_max = \"50ms\"\n{extra}",
            sim.base
        );
        let mut settings = parse(&file, &|_| None).unwrap();
        Connector::new(
            ConnectorType::Intune,
            settings.remove(&ConnectorType::Intune).unwrap(),
        )
        .unwrap()
    }

    fn assignment(id: Uuid) -> Assignment {
        Assignment {
            deployment_id: id,
            app_name: "7zip".into(),
            version: "24.08".into(),
            ring: Ring::Lab,
            artifact_sha256: None,
        }
    }

    async fn requests(sim: &Sim) -> u64 {
        sim.side_effects().await["requests"].as_u64().unwrap()
    }

    #[tokio::test]
    async fn an_outage_opens_the_breaker_no_call_is_made_while_open_and_a_trial_closes_it() {
        let sim = Sim::start(quick()).await;
        let connector = connector(
            &sim,
            "retry_attempts = 1\nbreaker_failures = 5\nbreaker_open = \"1s\"\n",
        );
        sim.faults(json!({"outage_seconds": 1.0})).await;
        for _ in 0..5 {
            let failed = connector.publish(&assignment(Uuid::new_v4())).await;
            assert!(
                matches!(failed, Err(CallError::Transient { .. })),
                "{failed:?}"
            );
        }
        assert_eq!(connector.breaker_state(), BreakerState::Open);
        let before = requests(&sim).await;
        for _ in 0..3 {
            assert_eq!(
                connector.publish(&assignment(Uuid::new_v4())).await,
                Err(CallError::BreakerOpen)
            );
        }
        assert_eq!(requests(&sim).await, before, "a call went out while open");
        // The outage ends, the open time passes: one trial call (a second, made while the slow
        // trial is out, is not let through), and the trial's success closes the breaker.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        sim.faults(json!({"latency_ms": 500})).await;
        let (id, other) = (Uuid::new_v4(), Uuid::new_v4());
        let (first, later) = (assignment(id), assignment(other));
        let (trial, second) = tokio::join!(connector.publish(&first), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            connector.publish(&later).await
        });
        assert_eq!(trial.unwrap().assignment_id, assignment_id(id, Ring::Lab));
        assert_eq!(second, Err(CallError::BreakerOpen));
        assert_eq!(connector.breaker_state(), BreakerState::Closed);
        assert_eq!(requests(&sim).await, before + 1);
    }

    #[tokio::test]
    async fn a_429_with_retry_after_is_waited_out() {
        let sim = Sim::start(quick()).await;
        let connector = connector(&sim, "");
        sim.faults(json!({"throttle_rate": 1.0, "retry_after_seconds": 1}))
            .await;
        let started = std::time::Instant::now();
        let id = Uuid::new_v4();
        let call = tokio::spawn(async move { connector.publish(&assignment(id)).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        sim.faults(json!({})).await;
        let published = call.await.unwrap();
        assert!(published.is_ok(), "{published:?}");
        // Backoff alone would have called again within 50 ms; Retry-After said 1 s.
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert_eq!(requests(&sim).await, 2, "called again before Retry-After");
    }

    #[tokio::test]
    async fn writes_wait_their_turn_under_the_per_app_limit_and_other_apps_do_not() {
        let sim = Sim::start(quick()).await;
        // At most 3 writes in any 2 s: one a second, spread evenly.
        let connector = connector(
            &sim,
            "writes_per_app = \"3/2s\"\nwrites_per_tenant = \"100/1s\"\n",
        );
        let started = std::time::Instant::now();
        connector
            .publish(&assignment(Uuid::new_v4()))
            .await
            .unwrap();
        // Another app has its own allowance: not held up by the first one's.
        let mut other = assignment(Uuid::new_v4());
        other.app_name = "notepad++".into();
        connector.publish(&other).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        // The first app's second and third writes wait their turn: a second apart.
        for _ in 0..2 {
            connector
                .publish(&assignment(Uuid::new_v4()))
                .await
                .unwrap();
        }
        assert!(
            started.elapsed() >= Duration::from_millis(1900),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(requests(&sim).await, 4, "a write was refused or repeated");
    }

    #[tokio::test]
    async fn the_credential_is_sent_and_a_refusal_is_policy_not_retried() {
        let sim = Sim::start(SimConfig {
            token: Some("bridge-secret".into()),
            ..quick()
        })
        .await;
        let token_file = std::env::temp_dir().join(format!("eucora-bridge-{}", Uuid::new_v4()));
        std::fs::write(&token_file, "bridge-secret\n").unwrap();
        let right = connector(&sim, &format!("token_file = {:?}\n", token_file));
        right.publish(&assignment(Uuid::new_v4())).await.unwrap();
        std::fs::remove_file(&token_file).unwrap();
        for (extra, status) in [("", 401), ("token_env = \"WRONG\"\n", 403)] {
            let file = format!(
                "[intune]\nbase_url = \"{}\"\nretry_min = \"10ms\"\nretry_max = \"50ms\"\n{extra}",
                sim.base
            );
            let mut settings = parse(&file, &|_| Some("not-it".into())).unwrap();
            let wrong = Connector::new(
                ConnectorType::Intune,
                settings.remove(&ConnectorType::Intune).unwrap(),
            )
            .unwrap();
            let before = requests(&sim).await;
            let refused = wrong.publish(&assignment(Uuid::new_v4())).await;
            assert!(
                matches!(&refused, Err(CallError::Policy { status: s, .. }) if *s == status),
                "{refused:?}"
            );
            assert!(!format!("{refused:?}").contains("not-it"));
            assert_eq!(
                requests(&sim).await,
                before + 1,
                "a policy refusal was retried"
            );
            assert_eq!(wrong.breaker_state(), BreakerState::Closed);
        }
    }

    #[tokio::test]
    async fn a_permanent_error_is_returned_once_and_not_retried() {
        let sim = Sim::start(quick()).await;
        let connector = connector(&sim, "");
        let id = Uuid::new_v4();
        connector.publish(&assignment(id)).await.unwrap();
        let mut changed = assignment(id);
        changed.version = "25.01".into();
        let refused = connector.publish(&changed).await;
        assert!(
            matches!(refused, Err(CallError::Permanent { status: 409, .. })),
            "{refused:?}"
        );
        assert_eq!(requests(&sim).await, 2);
        assert_eq!(connector.breaker_state(), BreakerState::Closed);
        // Status of an assignment the connector does not have: none, not an error.
        assert_eq!(connector.status(Uuid::new_v4(), Ring::Lab).await, Ok(None));
    }
}
