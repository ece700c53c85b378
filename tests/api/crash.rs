//! kill -9 under load: every command that was answered 2xx is in the store after a restart, and
//! the metrics the restarted server serves are the stream's, as a replay computes them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;

use crate::helpers::{eucora, intent_body, Backend, Crew, TestApp};

crate::on_both_backends!(
    acknowledged_commands_survive_kill_9,
    keyed_writes_cut_off_by_kill_9_are_answered_once_after_restart,
);

/// Once `answered` shows the load well under way, with requests in flight, kills the server with
/// SIGKILL; then waits for every client to give up (none may hang).
async fn kill_9_under_load(
    app: &TestApp,
    answered: &AtomicUsize,
    clients: Vec<tokio::task::JoinHandle<()>>,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.load(Ordering::SeqCst) < 40 {
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.kill_9();
    for c in clients {
        tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .unwrap()
            .unwrap();
    }
}

async fn acknowledged_commands_survive_kill_9(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let crew = Arc::new(Crew::new(&app));
    // (intent id, stream version the server acknowledged)
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (app, crew, acked, count) =
                (app.clone(), crew.clone(), acked.clone(), count.clone());
            tokio::spawn(async move {
                for n in 0..200 {
                    let body = intent_body(&format!("c{c}-{n}"), 0.2, "GLOBAL").to_string();
                    let created = app
                        .try_send(
                            Method::POST,
                            "/api/v1/deployments",
                            Some(&crew.requester),
                            &[],
                            Some(body),
                        )
                        .await;
                    let Some(created) = created.filter(|r| r.status == 201) else {
                        return;
                    };
                    let id = created.id();
                    acked.lock().unwrap().push((id.clone(), 2));
                    count.fetch_add(1, Ordering::SeqCst);
                    let report = serde_json::json!({
                        "ring": "LAB", "target_devices": 10, "succeeded": 10, "failed": 0
                    });
                    let path = format!("/api/v1/deployments/{id}/deploy");
                    let deployed = app
                        .try_send(
                            Method::POST,
                            &path,
                            Some(&crew.deployer),
                            &[],
                            Some(report.to_string()),
                        )
                        .await;
                    let Some(deployed) = deployed.filter(|r| r.status == 200) else {
                        return;
                    };
                    let version = deployed.body["stream_version"].as_u64().unwrap();
                    acked.lock().unwrap().push((id, version));
                    count.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    kill_9_under_load(&app, &count, clients).await;

    let restarted = app.replica().await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 40);
    for (id, version) in &acked {
        let intent = restarted.intent(&crew.auditor, id).await;
        assert_eq!(
            intent.status, 200,
            "acknowledged intent {id} lost: {intent:#?}"
        );
        let stored = intent.body["stream_version"].as_u64().unwrap();
        assert!(
            stored >= *version,
            "{id}: acknowledged version {version}, stored {stored}"
        );
    }

    // The restarted server's domain metrics are the stream's: a replay computes the same text.
    // eucora_events_total counts every event of every stream (the principals' too).
    let events = restarted.event_count().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let live = loop {
        let reply = restarted
            .send(Method::GET, "/api/v1/metrics", None, &[], None)
            .await;
        let text = reply.body.as_str().unwrap_or_default().to_string();
        let applied: i64 = text
            .lines()
            .filter(|l| l.starts_with("eucora_events_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .sum();
        if applied == events {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never covered all {events} events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let out = restarted.db.dir().join("after-crash.prom");
    let (ok, _, err) = eucora(&[
        "replay",
        "--database-url",
        &restarted.db.url,
        "--metrics-out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let replayed = std::fs::read_to_string(&out).unwrap();
    assert!(
        replayed == crate::metrics::domain_part(&live),
        "replayed metrics differ after the crash"
    );
}

/// Keyed creates under load, kill -9, restart: a retry of every key, answered or not before the
/// kill, gets 201 within seconds, and each key made exactly one intent.
async fn keyed_writes_cut_off_by_kill_9_are_answered_once_after_restart(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let crew = Arc::new(Crew::new(&app));
    // Every key sent, with its body; and how many were answered.
    let sent: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (app, crew, sent, answered) =
                (app.clone(), crew.clone(), sent.clone(), answered.clone());
            tokio::spawn(async move {
                for n in 0..500 {
                    let key = format!("key-{c}-{n}");
                    let body = intent_body(&format!("k{c}-{n}"), 0.2, "GLOBAL").to_string();
                    sent.lock().unwrap().push((key.clone(), body.clone()));
                    let reply = app
                        .try_send(
                            Method::POST,
                            "/api/v1/deployments",
                            Some(&crew.requester),
                            &[("idempotency-key", &key)],
                            Some(body),
                        )
                        .await;
                    if reply.is_none_or(|r| r.status != 201) {
                        return;
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    kill_9_under_load(&app, &answered, clients).await;

    let restarted = app.replica().await;
    let sent = sent.lock().unwrap().clone();
    let started = Instant::now();
    let mut ids = std::collections::HashSet::new();
    for (key, body) in &sent {
        let reply = loop {
            let reply = restarted
                .send(
                    Method::POST,
                    "/api/v1/deployments",
                    Some(&crew.requester),
                    &[("idempotency-key", key)],
                    Some(body.clone()),
                )
                .await;
            if reply.status != 409 {
                break reply;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{key} stayed in flight after the restart: {reply:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(reply.status, 201, "{key}: {reply:#?}");
        assert!(
            ids.insert(reply.id()),
            "{key} answered with another key's intent"
        );
    }
    // One intent per key: a creation and a policy approval each, nothing twice.
    assert_eq!(restarted.intent_event_count().await, 2 * sent.len() as i64);
}
