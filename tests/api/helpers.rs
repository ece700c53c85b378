//! One helper owns databases, ports and processes: `TestDb` gives each test a fresh database
//! (a temporary SQLite file, or a new PostgreSQL database under `EUCORA_TEST_DATABASE_URL`), and
//! `TestApp` runs the real binary on an ephemeral port with one typed method per endpoint.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use eucora::store::Store;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;

/// Generates `mod sqlite { … }` and `mod postgres { … }` running each named test body
/// `async fn name(backend: Backend)` on that backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of its own for one test, removed when dropped.
pub struct TestDb {
    pub url: String,
    dir: PathBuf,
    pg: Option<(String, String)>,
}

fn admin_url() -> String {
    std::env::var("EUCORA_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "EUCORA_TEST_DATABASE_URL is not set: the PostgreSQL half of the suite needs a server \
             (for example postgres://postgres@127.0.0.1:5432/postgres); it never skips"
        )
    })
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let name = format!("eucora_test_{}", uuid::Uuid::new_v4().simple());
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("temp dir");
        match backend {
            Backend::Sqlite => TestDb {
                url: format!("sqlite://{}", dir.join("eucora.db").display()),
                dir,
                pg: None,
            },
            Backend::Postgres => {
                let admin = admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("PostgreSQL at EUCORA_TEST_DATABASE_URL did not answer: {e}")
                    });
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let base = admin.split('?').next().unwrap();
                let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
                TestDb {
                    url,
                    dir,
                    pg: Some((admin, name)),
                }
            }
        }
    }

    /// Runs one SQL statement on this database over a connection of its own, as someone with a
    /// database client would, around the service.
    pub async fn execute(&self, sql: &str) {
        if self.url.starts_with("postgres") {
            let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }

    /// Replaces the database with a new, empty one at the same URL, as an insider rewriting the
    /// whole history would start (every server on it must be stopped).
    pub async fn recreate(&self) {
        match &self.pg {
            None => {
                let file = self.url.trim_start_matches("sqlite://");
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{file}{suffix}"));
                }
            }
            Some((admin, name)) => {
                let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
                for sql in [
                    format!("DROP DATABASE {name} WITH (FORCE)"),
                    format!("CREATE DATABASE {name}"),
                ] {
                    sqlx::query(&sql).execute(&mut conn).await.unwrap();
                }
            }
        }
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }

    pub async fn store(&self) -> Store {
        let store = Store::connect(&self.url, 8).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }

    pub async fn event_count(&self) -> i64 {
        Store::connect(&self.url, 1)
            .await
            .unwrap()
            .event_count()
            .await
            .unwrap()
    }

    /// Events of deployment intents' streams (the tokens a test makes add principals' events).
    pub async fn intent_event_count(&self) -> i64 {
        let sql = "SELECT COUNT(*) FROM events WHERE aggregate_type = 'deployment'";
        if self.url.starts_with("postgres") {
            let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some((admin, name)) = self.pg.take() {
            // Drop runs inside the test's runtime: use a thread with its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut conn)
                                .await;
                    }
                })
            })
            .join();
        }
    }
}

/// The policy the HTTP tests run under: the built-in thresholds, but no bake time, so a walk
/// through every ring needs no waiting. Gate timing itself is tested with a fake clock.
pub const NO_BAKE_POLICY: &str = r#"
[rings.LAB]
min_bake_time = "0s"
[rings.CANARY]
min_bake_time = "0s"
[rings.PILOT]
min_bake_time = "0s"
[rings.DEPARTMENT]
min_bake_time = "0s"
"#;

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_eucora")
}

/// Runs `eucora` with arguments and returns (exit success, stdout, stderr).
/// The login name the command line runs under in tests (`cli:eucora-operator` on access events).
pub const OPERATOR: &str = "eucora-operator";

pub fn eucora(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary())
        .args(args)
        // As from an operator's login shell: access changes record who made them.
        .env("USER", OPERATOR)
        .output()
        .expect("run eucora");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `eucora` with arguments and standard input, in `dir` (or here); returns (exit code,
/// stdout, stderr).
pub fn eucora_with(
    dir: Option<&std::path::Path>,
    args: &[&str],
    stdin: &str,
) -> (i32, String, String) {
    use std::io::Write;
    let mut command = Command::new(binary());
    command
        .args(args)
        .env_remove("EUCORA_TOKEN")
        .env_remove("EUCORA_SERVER")
        .env("USER", OPERATOR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = command.spawn().expect("run eucora");
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().expect("run eucora");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A response as a test reads it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn id(&self) -> String {
        self.body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {self:?}"))
            .to_string()
    }

    /// Asserts a problem+json answer with this status, carrying the correlation id.
    pub fn assert_problem(&self, status: u16) {
        assert_eq!(self.status.as_u16(), status, "{self:#?}");
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "{self:#?}"
        );
        assert_eq!(self.body["status"], status);
        for member in ["type", "title", "detail", "correlation_id"] {
            assert!(
                self.body[member].is_string(),
                "problem without {member}: {self:#?}"
            );
        }
        assert_eq!(
            self.body["correlation_id"].as_str().unwrap(),
            self.headers["x-correlation-id"].to_str().unwrap()
        );
    }
}

/// The real binary, serving on an ephemeral port, with its own database.
pub struct TestApp {
    pub base: String,
    /// Shared by every server started on the same database; dropped with the last.
    pub db: std::sync::Arc<TestDb>,
    child: Child,
    client: reqwest::Client,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        TestApp::spawn_with(backend, &[]).await
    }

    pub async fn spawn_with(backend: Backend, extra: &[&str]) -> TestApp {
        TestApp::spawn_on(std::sync::Arc::new(TestDb::new(backend).await), extra).await
    }

    /// A server whose policy is [`NO_BAKE_POLICY`] with `more` TOML before it (top-level keys).
    pub async fn spawn_with_policy(backend: Backend, more: &str) -> TestApp {
        let db = std::sync::Arc::new(TestDb::new(backend).await);
        let policy = db.dir().join("policy.toml");
        std::fs::write(&policy, format!("{more}\n{NO_BAKE_POLICY}")).unwrap();
        TestApp::spawn_on(db, &["--policy", policy.to_str().unwrap()]).await
    }

    /// A server on a database the test keeps (to inspect it after the server is gone).
    pub async fn spawn_on_shared(db: &TestDb) -> TestApp {
        TestApp::spawn_on_shared_via(db, &db.url).await
    }

    /// As [`TestApp::spawn_on_shared`], reaching the database at `url` (a proxy in front of it).
    pub async fn spawn_on_shared_via(db: &TestDb, url: &str) -> TestApp {
        let borrowed = TestDb {
            url: url.to_string(),
            dir: db.dir.join("server"),
            pg: None,
        };
        std::fs::create_dir_all(&borrowed.dir).unwrap();
        TestApp::spawn_on(std::sync::Arc::new(borrowed), &[]).await
    }

    /// Another server process on this one's database, as a second replica.
    pub async fn replica(&self) -> TestApp {
        TestApp::spawn_on(self.db.clone(), &[]).await
    }

    pub async fn spawn_on(db: std::sync::Arc<TestDb>, extra: &[&str]) -> TestApp {
        TestApp::spawn_configured(db, extra, &[], None).await
    }

    /// [`TestApp::spawn_on`] with these environment variables, and its standard error written to
    /// `stderr` (else discarded).
    pub async fn spawn_configured(
        db: std::sync::Arc<TestDb>,
        extra: &[&str],
        env: &[(&str, &str)],
        stderr: Option<&std::path::Path>,
    ) -> TestApp {
        let app = TestApp::start(db, extra, env, stderr);
        // Like an orchestrator, wait until the server says it is ready.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while app
            .send(reqwest::Method::GET, "/health/ready", None, &[], None)
            .await
            .status
            != 200
        {
            assert!(
                std::time::Instant::now() < deadline,
                "eucora serve never became ready"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        app
    }

    /// A server started and listening, not waited on to be ready (one that never will be).
    pub fn start(
        db: std::sync::Arc<TestDb>,
        extra: &[&str],
        env: &[(&str, &str)],
        stderr: Option<&std::path::Path>,
    ) -> TestApp {
        let policy = db.dir().join("policy.toml");
        if !policy.exists() {
            std::fs::write(&policy, NO_BAKE_POLICY).unwrap();
        }
        let has_policy = extra.contains(&"--policy");
        let mut child = Command::new(binary())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                &db.url,
            ])
            .args(if has_policy {
                vec![]
            } else {
                vec!["--policy", policy.to_str().unwrap()]
            })
            .args(extra)
            // The default checkpoint directory is the user's state directory: the test's own.
            .env("XDG_STATE_HOME", db.dir().join("state"))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(match stderr {
                Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
                None => Stdio::null(),
            })
            .spawn()
            .expect("start eucora serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("eucora listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("eucora serve did not report its address");
        TestApp {
            base,
            db,
            child,
            client: reqwest::Client::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server with SIGKILL, as a power cut or the OOM killer would.
    pub fn kill_9(&self) {
        let killed = Command::new("kill")
            .args(["-KILL", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success());
    }

    /// Waits for the server process to exit (after a signal), with a deadline.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Creates a principal with the real CLI and returns its token.
    pub fn token(&self, subject: &str, role: &str) -> String {
        let (ok, out, err) = eucora(&[
            "token",
            "create",
            "--database-url",
            &self.db.url,
            "--subject",
            subject,
            "--role",
            role,
        ]);
        assert!(ok, "token create failed: {err}");
        out.trim().to_string()
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Reply {
        self.try_send(method, path, token, headers, body)
            .await
            .unwrap_or_else(|| panic!("no answer from the server for {path}"))
    }

    /// Like `send`, but `None` when the server does not answer (it died, say).
    pub async fn try_send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Option<Reply> {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.ok()?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.ok()?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Some(Reply {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send(reqwest::Method::GET, path, Some(token), &[], None)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send(
            reqwest::Method::POST,
            path,
            Some(token),
            &[],
            Some(body.to_string()),
        )
        .await
    }

    pub async fn create(&self, token: &str, body: Value) -> Reply {
        self.post("/api/v1/deployments", token, body).await
    }

    pub async fn approve(&self, token: &str, id: &str) -> Reply {
        self.post(
            &format!("/api/v1/deployments/{id}/approve"),
            token,
            json!({}),
        )
        .await
    }

    pub async fn reject(&self, token: &str, id: &str, reason: &str) -> Reply {
        self.post(
            &format!("/api/v1/deployments/{id}/reject"),
            token,
            json!({ "reason": reason }),
        )
        .await
    }

    pub async fn deploy(&self, token: &str, id: &str, ring: &str, target: u64, ok: u64) -> Reply {
        let body = json!({ "ring": ring, "target_devices": target, "succeeded": ok, "failed": target - ok, "incidents": 0 });
        self.post(&format!("/api/v1/deployments/{id}/deploy"), token, body)
            .await
    }

    pub async fn promote(&self, token: &str, id: &str) -> Reply {
        self.post(
            &format!("/api/v1/deployments/{id}/promote"),
            token,
            json!({}),
        )
        .await
    }

    pub async fn rollback(&self, token: &str, id: &str, reason: &str) -> Reply {
        self.post(
            &format!("/api/v1/deployments/{id}/rollback"),
            token,
            json!({ "reason": reason }),
        )
        .await
    }

    pub async fn intent(&self, token: &str, id: &str) -> Reply {
        self.get(&format!("/api/v1/deployments/{id}"), token).await
    }

    pub async fn event_count(&self) -> i64 {
        self.db.event_count().await
    }

    pub async fn intent_event_count(&self) -> i64 {
        self.db.intent_event_count().await
    }

    /// The whole global stream (up to 1000 events) as `GET /api/v1/events` serves it, read until
    /// it shows every event written: PostgreSQL shows a commit once every older transaction has
    /// ended.
    pub async fn global_events(&self, token: &str) -> Vec<Value> {
        let written = self.event_count().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let page = self.get("/api/v1/events?limit=1000", token).await.body;
            let events = page["events"].as_array().cloned().unwrap_or_default();
            if events.len() as i64 >= written || std::time::Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Lists come from the read model, which follows the store within a second: poll a list
    /// until it holds `n` items.
    pub async fn list_until(&self, token: &str, query: &str, n: usize) -> Reply {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let reply = self
                .get(&format!("/api/v1/deployments{query}"), token)
                .await;
            if reply.body["items"].as_array().map_or(0, Vec::len) == n {
                return reply;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the list never held {n} items: {reply:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A create body: `risk` sets every requester factor (0.2 is approved by policy, 0.8 needs CAB).
pub fn intent_body(app: &str, risk: f64, target: &str) -> Value {
    json!({
        "app_name": app,
        "version": "1.0.0",
        "connector_type": "intune",
        "target_ring": target,
        "rollback_validated": true,
        "risk_factors": {
            "privilege_impact": risk, "supply_chain_trust": risk, "exploitability": risk,
            "data_access": risk, "sbom_vulnerability": risk, "operational_complexity": risk,
            "history": risk
        }
    })
}

/// The four principals most tests need.
pub struct Crew {
    pub requester: String,
    pub approver: String,
    pub deployer: String,
    pub auditor: String,
}

impl Crew {
    pub fn new(app: &TestApp) -> Crew {
        Crew {
            requester: app.token("alice", "requester"),
            approver: app.token("carol", "cab_approver"),
            deployer: app.token("ops-bot", "deployer"),
            auditor: app.token("audrey", "auditor"),
        }
    }
}
