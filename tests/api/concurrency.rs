//! Clients racing on one intent: one winner per version, nothing lost or duplicated.

use futures_util_free::join_all;
use serde_json::json;

use crate::helpers::{intent_body, Backend, Crew, TestApp};

crate::on_both_backends!(
    sixteen_approvers_racing_get_one_approval_and_fifteen_conflicts,
    sixteen_rollout_reports_racing_are_each_stored_once,
);

/// `join_all` without a futures dependency: spawn each and await in order.
mod futures_util_free {
    pub async fn join_all<T: Send + 'static>(
        tasks: Vec<impl std::future::Future<Output = T> + Send + 'static>,
    ) -> Vec<T> {
        let handles: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.expect("task"));
        }
        out
    }
}

async fn sixteen_approvers_racing_get_one_approval_and_fifteen_conflicts(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::spawn(backend).await);
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, intent_body("Office", 0.8, "GLOBAL"))
        .await
        .id();
    let approvers: Vec<String> = (0..16)
        .map(|n| app.token(&format!("cab-{n}"), "cab_approver"))
        .collect();
    let tasks = approvers
        .into_iter()
        .map(|token| {
            let (app, id) = (app.clone(), id.clone());
            async move { app.approve(&token, &id).await.status.as_u16() }
        })
        .collect();
    let statuses = join_all(tasks).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        15,
        "{statuses:?}"
    );
    assert_eq!(
        app.intent_event_count().await,
        2,
        "one Created, one Approved"
    );
}

async fn sixteen_rollout_reports_racing_are_each_stored_once(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::spawn(backend).await);
    let crew = Crew::new(&app);
    let id = app
        .create(&crew.requester, intent_body("Office", 0.2, "GLOBAL"))
        .await
        .id();
    let tasks = (0..16u64)
        .map(|n| {
            let (app, id, token) = (app.clone(), id.clone(), crew.deployer.clone());
            // Counts that may not fall are the same in every report; `failed` (which may fall: a
            // failed device may succeed on retry) tells the reports apart.
            async move {
                let body = json!({"ring": "LAB", "target_devices": 100, "succeeded": 80,
                                  "failed": n});
                app.post(&format!("/api/v1/deployments/{id}/deploy"), &token, body)
                    .await
                    .status
                    .as_u16()
            }
        })
        .collect();
    let statuses = join_all(tasks).await;
    let applied = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    assert!(applied >= 1);
    let history = app
        .get(&format!("/api/v1/deployments/{id}/events"), &crew.auditor)
        .await;
    let events = history.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 2 + applied, "{statuses:?}");
    let sequences: Vec<i64> = events
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences, (1..=events.len() as i64).collect::<Vec<_>>());
    let mut reported: Vec<u64> = events[2..]
        .iter()
        .map(|e| e["event"]["DeploymentDeployed"]["failed"].as_u64().unwrap())
        .collect();
    reported.sort();
    reported.dedup();
    assert_eq!(reported.len(), applied, "no report stored twice");
}
