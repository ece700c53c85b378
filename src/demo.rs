//! `eucora demo`: seeded, realistic traffic through the real HTTP API, so that the dashboards and
//! alerts have something to show without real connectors.
//!
//! Each worker walks intents through the lifecycle the way a platform team would: requests for
//! real-world apps at low, medium and high risk; CAB approvals and rejections; emergency changes
//! approved retrospectively; cumulative rollout reports ring by ring, some below the ring's success
//! threshold or with incidents; promotions that pass or are blocked (and retried, as an operator
//! would after the bake time); and rollbacks, often followed by an emergency fix of the same app.
//! Most requests say when their change was committed (minutes to days before). The same seed makes the same choices, although the
//! timing, and so the server's interleaving, varies from run to run.

use std::time::Duration;

use eucora_projections::event::{Ring, Role};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::domain::Policy;
use crate::principals::{expiry, issue_token, operator_change, DEFAULT_TOKEN_LIFETIME};
use crate::store::Store;

/// What a demo run is asked to do.
#[derive(Debug, Clone)]
pub struct DemoPlan {
    /// The server's base URL, such as `http://127.0.0.1:8000`.
    pub url: String,
    /// How long to run; `None` runs until the task is dropped (Ctrl-C).
    pub duration: Option<Duration>,
    pub seed: u64,
    /// Intents in flight at once.
    pub concurrency: usize,
    /// Mean pause between two steps of one intent.
    pub pace: Duration,
}

/// What a demo run did, counted from the server's answers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DemoSummary {
    pub created: u64,
    pub approved: u64,
    pub rejected: u64,
    pub reports: u64,
    pub promotions_passed: u64,
    pub promotions_blocked: u64,
    pub rolled_back: u64,
    pub completed: u64,
    /// Requests that failed for a reason other than a domain refusal (the server down, a 5xx).
    pub errors: u64,
    /// Why the run had to stop: the server refused one of the demo's tokens.
    pub refused: Option<String>,
}

impl DemoSummary {
    fn add(&mut self, other: &DemoSummary) {
        self.created += other.created;
        self.approved += other.approved;
        self.rejected += other.rejected;
        self.reports += other.reports;
        self.promotions_passed += other.promotions_passed;
        self.promotions_blocked += other.promotions_blocked;
        self.rolled_back += other.rolled_back;
        self.completed += other.completed;
        self.errors += other.errors;
        if self.refused.is_none() {
            self.refused.clone_from(&other.refused);
        }
    }
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} intents created, {} approved by CAB, {} rejected, {} rollout reports, \
             {} promotions passed, {} blocked, {} rolled back, {} completed, {} request errors",
            self.created,
            self.approved,
            self.rejected,
            self.reports,
            self.promotions_passed,
            self.promotions_blocked,
            self.rolled_back,
            self.completed,
            self.errors
        )
    }
}

/// Apps the demo requests: name, connector, and whether it is privileged tooling (always CAB).
const APPS: &[(&str, &str, bool)] = &[
    ("7-Zip", "intune", false),
    ("Google Chrome", "intune", false),
    ("Microsoft Teams", "intune", false),
    ("Mozilla Firefox", "sccm", false),
    ("Adobe Acrobat Reader", "sccm", false),
    ("Zoom Workplace", "jamf", false),
    ("Slack", "jamf", false),
    ("Visual Studio Code", "landscape", false),
    ("OpenSSL", "ansible", false),
    ("CrowdStrike Falcon Sensor", "intune", true),
    ("Microsoft Defender for Endpoint", "sccm", true),
    ("BeyondTrust Privilege Management", "jamf", true),
];

/// Devices in each ring, before a ±20 % spread.
fn ring_size(ring: Ring) -> f64 {
    match ring {
        Ring::Lab => 25.0,
        Ring::Canary => 250.0,
        Ring::Pilot => 2_500.0,
        Ring::Department => 12_000.0,
        Ring::Global => 60_000.0,
    }
}

/// The principals a demo acts as. They are created in the store the server uses, as
/// `eucora token create` would, with subjects that say they belong to the demo.
#[derive(Clone)]
pub struct DemoCrew {
    pub requester: String,
    pub approver: String,
    pub deployer: String,
}

impl DemoCrew {
    pub async fn issue(store: &Store) -> Result<DemoCrew, String> {
        let issue = |subject: &'static str, role| async move {
            // The login running the demo, or the demo itself when none is known.
            let change = operator_change(None).or_else(|_| operator_change(Some("eucora-demo")))?;
            let expires_at = expiry(change.at, DEFAULT_TOKEN_LIFETIME)?;
            issue_token(store, subject, role, expires_at, &change, None)
                .await
                .map(|(_, token)| token)
                .map_err(|e| format!("cannot create the demo principal {subject}: {e}"))
        };
        Ok(DemoCrew {
            requester: issue("demo-requester", Role::Requester).await?,
            approver: issue("demo-cab", Role::CabApprover).await?,
            deployer: issue("demo-deployer", Role::Deployer).await?,
        })
    }
}

/// Runs the plan's workers to the end of its duration and adds up what they did.
pub async fn run(plan: &DemoPlan, crew: &DemoCrew) -> Result<DemoSummary, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let ready = client
        .get(format!("{}/health/ready", plan.url))
        .send()
        .await
        .map_err(|e| format!("the server at {} does not answer: {e}", plan.url))?;
    if !ready.status().is_success() {
        return Err(format!(
            "the server at {} is not ready ({}); try again once /health/ready answers 200",
            plan.url,
            ready.status()
        ));
    }
    let deadline = plan.duration.map(|d| Instant::now() + d);
    let mut workers = tokio::task::JoinSet::new();
    for index in 0..plan.concurrency.max(1) {
        let worker = Worker {
            api: Api {
                client: client.clone(),
                base: plan.url.trim_end_matches('/').to_string(),
                crew: crew.clone(),
            },
            rng: StdRng::seed_from_u64(plan.seed.wrapping_add(index as u64)),
            pace: plan.pace,
            deadline,
            done: DemoSummary::default(),
            hotfix: None,
        };
        workers.spawn(worker.run());
    }
    let mut summary = DemoSummary::default();
    while let Some(done) = workers.join_next().await {
        summary.add(&done.map_err(|e| format!("a demo worker failed: {e}"))?);
    }
    if let Some(why) = &summary.refused {
        return Err(format!("{why}; stopped after: {summary}"));
    }
    if summary.created == 0 {
        return Err(format!("the demo achieved nothing: {summary}"));
    }
    Ok(summary)
}

struct Api {
    client: reqwest::Client,
    base: String,
    crew: DemoCrew,
}

/// An answer from the server, or `None` when the request itself failed.
type Answer = Option<(u16, Value)>;

impl Api {
    async fn post(&self, token: &str, path: &str, body: Value) -> Answer {
        let sent = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.json().await.unwrap_or(Value::Null);
                Some((status, body))
            }
            Err(e) => {
                tracing::warn!(error = %e, path, "demo request failed");
                None
            }
        }
    }
}

/// Why one intent's walk ended early: the run's time is up, the server failed a request, or it
/// refused one of the demo's tokens (which ends the run: nothing would work).
enum Stop {
    Deadline,
    Error,
    Refused(String),
}

struct Worker {
    api: Api,
    rng: StdRng,
    pace: Duration,
    deadline: Option<Instant>,
    done: DemoSummary,
    /// After a rollback, often an emergency change of the same app follows: (app, ring failed in).
    hotfix: Option<(usize, Ring)>,
}

impl Worker {
    async fn run(mut self) -> DemoSummary {
        loop {
            match self.intent().await {
                Ok(()) => {}
                Err(Stop::Deadline) => break,
                Err(Stop::Refused(why)) => {
                    self.done.refused = Some(why);
                    break;
                }
                Err(Stop::Error) => {
                    self.done.errors += 1;
                    // The server may be restarting: back off rather than spin.
                    if self.pause_for(Duration::from_secs(1)).await.is_err() {
                        break;
                    }
                }
            }
        }
        self.done
    }

    /// Sleeps for about the pace (half to one and a half times it), unless the run ends first.
    async fn pause(&mut self) -> Result<(), Stop> {
        let pace = self.pace.as_secs_f64() * self.rng.gen_range(0.5..1.5);
        self.pause_for(Duration::from_secs_f64(pace)).await
    }

    async fn pause_for(&mut self, wait: Duration) -> Result<(), Stop> {
        let until = Instant::now() + wait;
        match self.deadline {
            Some(deadline) if until >= deadline => {
                tokio::time::sleep_until(deadline).await;
                Err(Stop::Deadline)
            }
            _ => {
                tokio::time::sleep_until(until).await;
                Ok(())
            }
        }
    }

    /// Sends one request and sorts its answer: a success or a domain refusal (4xx) is the
    /// caller's to read, anything else ends this intent's walk.
    async fn send(&mut self, token: Who, path: &str, body: Value) -> Result<(u16, Value), Stop> {
        let role = match token {
            Who::Requester => "requester",
            Who::Approver => "CAB approver",
            Who::Deployer => "deployer",
        };
        let token = match token {
            Who::Requester => &self.api.crew.requester,
            Who::Approver => &self.api.crew.approver,
            Who::Deployer => &self.api.crew.deployer,
        };
        match self.api.post(token, path, body).await {
            Some((status @ (401 | 403), body)) => Err(Stop::Refused(format!(
                "the server refused the demo's {role} token ({status}: {})",
                body["detail"].as_str().unwrap_or("no detail")
            ))),
            Some((status, body)) if status < 500 => Ok((status, body)),
            Some((status, body)) => {
                tracing::warn!(status, %body, path, "the server failed a demo request");
                Err(Stop::Error)
            }
            None => Err(Stop::Error),
        }
    }

    fn pick<'a, T>(&mut self, weighted: &'a [(T, u32)]) -> &'a T {
        let total: u32 = weighted.iter().map(|(_, w)| w).sum();
        let mut roll = self.rng.gen_range(0..total);
        for (item, weight) in weighted {
            if roll < *weight {
                return item;
            }
            roll -= weight;
        }
        &weighted[weighted.len() - 1].0
    }

    /// The next request, and the index of its app in [`APPS`].
    fn create_body(&mut self) -> (Value, usize) {
        if let Some((app, failed_in)) = self.hotfix.take() {
            return (self.hotfix_body(app, failed_in), app);
        }
        let index = self.rng.gen_range(0..APPS.len());
        let (app, connector, privileged) = APPS[index];
        let change_type = *self.pick(&[("normal", 80), ("standard", 12), ("emergency", 8)]);
        let site_class = *self.pick(&[("online", 70), ("intermittent", 20), ("air_gapped", 10)]);
        let target = *self.pick(&[
            ("CANARY", 20),
            ("PILOT", 30),
            ("DEPARTMENT", 20),
            ("GLOBAL", 30),
        ]);
        let level = *self.pick(&[((0.05, 0.3), 55), ((0.3, 0.6), 30), ((0.6, 0.9), 15)]);
        let mut factor = || self.rng.gen_range(level.0..level.1);
        let risk_factors = json!({
            "privilege_impact": factor(), "supply_chain_trust": factor(),
            "exploitability": factor(), "data_access": factor(),
            "sbom_vulnerability": factor(), "operational_complexity": factor(),
            "history": factor(),
        });
        let body = json!({
            "app_name": app,
            "version": format!("{}.{}.{}", self.rng.gen_range(1..30), self.rng.gen_range(0..12), self.rng.gen_range(0..100)),
            "connector_type": connector,
            "target_ring": target,
            "change_type": change_type,
            "site_class": site_class,
            "privileged_tooling": privileged,
            "critical_infrastructure": self.rng.gen_bool(0.1),
            "rollback_validated": self.rng.gen_bool(0.95),
            "risk_factors": risk_factors,
            "justification": "demo traffic",
            "source_committed_at": self.committed(),
        });
        (body, index)
    }

    /// When most requests' changes were committed (minutes to days before); some do not say.
    fn committed(&mut self) -> Value {
        if self.rng.gen_bool(0.7) {
            let before = chrono::Duration::minutes(self.rng.gen_range(10..4320));
            json!((chrono::Utc::now() - before).to_rfc3339())
        } else {
            Value::Null
        }
    }

    /// An emergency fix of `app` after a rollback in `failed_in`, starting as far out as the
    /// policy lets an emergency change start.
    fn hotfix_body(&mut self, app: usize, failed_in: Ring) -> Value {
        let (name, connector, privileged) = APPS[app];
        let start = failed_in.min(Policy::default().max_emergency_start_ring);
        json!({
            "app_name": name,
            "version": format!("{}.{}.{}", self.rng.gen_range(1..30), self.rng.gen_range(0..12), self.rng.gen_range(100..200)),
            "connector_type": connector,
            "start_ring": start.as_str(),
            "target_ring": failed_in.max(Ring::Canary).as_str(),
            "change_type": "emergency",
            "site_class": "online",
            "privileged_tooling": privileged,
            "rollback_validated": true,
            "risk_factors": {
                "privilege_impact": 0.4, "supply_chain_trust": 0.2, "exploitability": 0.3,
                "data_access": 0.2, "sbom_vulnerability": 0.2, "operational_complexity": 0.3,
                "history": 0.4,
            },
            "justification": "demo traffic: a fix after a rollback",
            "source_committed_at": self.committed(),
        })
    }

    /// Walks one intent from its request to an end: rejected, rolled back, completed, or left
    /// where it stands when its promotions keep being blocked.
    async fn intent(&mut self) -> Result<(), Stop> {
        let (body, app) = self.create_body();
        let (status, intent) = self
            .send(Who::Requester, "/api/v1/deployments", body)
            .await?;
        if status != 201 {
            tracing::warn!(status, %intent, "the demo's create was refused");
            return Err(Stop::Error);
        }
        self.done.created += 1;
        let id = intent["id"].as_str().unwrap_or_default().to_string();
        let path = |action: &str| format!("/api/v1/deployments/{id}/{action}");
        let mut ring =
            Ring::parse(intent["current_ring"].as_str().unwrap_or("LAB")).unwrap_or(Ring::Lab);
        let target =
            Ring::parse(intent["target_ring"].as_str().unwrap_or("GLOBAL")).unwrap_or(Ring::Global);
        let mut retro_pending = intent["retro_approval_pending"].as_bool().unwrap_or(false);

        if intent["status"] == "awaiting_cab" {
            self.pause().await?;
            if self.rng.gen_bool(0.85) {
                self.send(
                    Who::Approver,
                    &path("approve"),
                    json!({"comment": "CAB: approved"}),
                )
                .await?;
                self.done.approved += 1;
            } else {
                self.send(
                    Who::Approver,
                    &path("reject"),
                    json!({"reason": "CAB: risk not justified"}),
                )
                .await?;
                self.done.rejected += 1;
                return Ok(());
            }
        }

        loop {
            let devices = (ring_size(ring) * self.rng.gen_range(0.8..1.2)).round() as u64;
            // A first, partial report while the rollout is under way.
            self.pause().await?;
            let partial = (devices as f64 * self.rng.gen_range(0.3..0.7)) as u64;
            self.report(&path("deploy"), ring, devices, partial, 0)
                .await?;
            if retro_pending && self.rng.gen_bool(0.7) {
                self.pause().await?;
                self.approve_retrospectively(&path("approve")).await?;
                retro_pending = false;
            }
            if self.rng.gen_bool(0.04) {
                return self
                    .rollback(
                        &path("rollback"),
                        "crash on launch reported by the service desk",
                        (app, ring),
                    )
                    .await;
            }
            // The final report: usually at or above the ring's threshold, sometimes short of it,
            // now and then with an incident.
            self.pause().await?;
            // The built-in policy's default threshold, which the demo aims at (and sometimes misses).
            let threshold = Policy::default().ring(ring).success_rate;
            let rate = if self.rng.gen_bool(0.85) {
                self.rng.gen_range(threshold..=1.0)
            } else {
                self.rng.gen_range(threshold - 0.05..threshold)
            };
            let incidents = u64::from(self.rng.gen_bool(0.05));
            let succeeded = (devices as f64 * rate).floor() as u64;
            self.report(&path("deploy"), ring, devices, succeeded, incidents)
                .await?;
            if ring == target {
                if (succeeded as f64) < threshold * devices as f64 {
                    // Finish the stragglers: compliance in the target ring completes the intent.
                    self.pause().await?;
                    self.report(&path("deploy"), ring, devices, devices, incidents)
                        .await?;
                }
                self.done.completed += 1;
                return Ok(());
            }
            let mut promoted = false;
            for attempt in 0..6 {
                self.pause().await?;
                let (status, answer) = self
                    .send(Who::Deployer, &path("promote"), json!({}))
                    .await?;
                if status == 200 {
                    self.done.promotions_passed += 1;
                    promoted = true;
                    break;
                }
                self.done.promotions_blocked += 1;
                let failed_gate = |gate: &str| {
                    answer["promotion"]["gates"]
                        .as_array()
                        .is_some_and(|gates| {
                            gates
                                .iter()
                                .any(|g| g["gate"] == gate && g["passed"] == false)
                        })
                };
                if failed_gate("incidents") || failed_gate("rollback_plan") {
                    break;
                }
                if failed_gate("cab_approval") {
                    // An emergency change must be approved retrospectively before it moves on.
                    self.approve_retrospectively(&path("approve")).await?;
                    retro_pending = false;
                }
                // Not compliant yet (which also fails the time-to-compliance gate): on a
                // second blocked attempt, the stragglers are remediated and report in.
                if failed_gate("success_rate") && attempt >= 1 {
                    self.report(&path("deploy"), ring, devices, devices, incidents)
                        .await?;
                }
                // Otherwise the bake time has not run out yet: wait and try again.
                let bake_wait = self.pace * 4;
                self.pause_for(bake_wait).await?;
            }
            if !promoted {
                if self.rng.gen_bool(0.6) {
                    return self
                        .rollback(
                            &path("rollback"),
                            "promotion blocked; rolling back",
                            (app, ring),
                        )
                        .await;
                }
                return Ok(());
            }
            ring = ring.next().unwrap_or(target);
        }
    }

    async fn report(
        &mut self,
        path: &str,
        ring: Ring,
        devices: u64,
        succeeded: u64,
        incidents: u64,
    ) -> Result<(), Stop> {
        let failed = (devices - succeeded.min(devices)) / 3;
        let body = json!({
            "ring": ring.as_str(), "target_devices": devices,
            "succeeded": succeeded.min(devices), "failed": failed, "incidents": incidents,
        });
        let (status, answer) = self.send(Who::Deployer, path, body).await?;
        if status != 200 {
            tracing::warn!(status, %answer, "the demo's rollout report was refused");
            return Err(Stop::Error);
        }
        self.done.reports += 1;
        Ok(())
    }

    async fn approve_retrospectively(&mut self, path: &str) -> Result<(), Stop> {
        let comment = json!({"comment": "CAB: retrospective"});
        self.send(Who::Approver, path, comment).await?;
        self.done.approved += 1;
        Ok(())
    }

    /// Rolls back the intent of `failed`'s app in its ring; often a fix follows.
    async fn rollback(
        &mut self,
        path: &str,
        reason: &str,
        failed: (usize, Ring),
    ) -> Result<(), Stop> {
        self.pause().await?;
        let (status, _) = self
            .send(Who::Deployer, path, json!({ "reason": reason }))
            .await?;
        if status == 200 {
            self.done.rolled_back += 1;
            if self.rng.gen_bool(0.6) {
                self.hotfix = Some(failed);
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Who {
    Requester,
    Approver,
    Deployer,
}
