//! The observability stack, proven against the real thing: the dashboards' conventions, promtool
//! on the Prometheus configuration and rules, and every dashboard query, recording rule and alert
//! evaluated by a real Prometheus scraping a real server that `eucora demo` drives.
//!
//! Prometheus comes from Debian's `prometheus` package (`.ci/setup` installs it). These tests
//! fail, never skip, when it is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{eucora, Backend, TestApp};

/// Every rule file of prometheus/rules, as prometheus.yml loads them.
const RULE_FILES: [&str; 4] = ["recording.yml", "alerts.yml", "slo.yml", "forecast.yml"];

/// The dashboards the issues ask for: file, uid and title.
const DASHBOARDS: [(&str, &str, &str); 9] = [
    (
        "operations.json",
        "eucora-operations",
        "EUCORA Control Plane - Operations",
    ),
    (
        "deployments.json",
        "eucora-deployments",
        "Deployment Metrics",
    ),
    (
        "ring-rollout.json",
        "eucora-rollout",
        "Ring Rollout Progress",
    ),
    ("cab-approval.json", "eucora-cab", "CAB Approval Pipeline"),
    (
        "connector-health.json",
        "eucora-connectors",
        "Connector Health",
    ),
    (
        "circuit-breakers.json",
        "eucora-breakers",
        "Circuit Breaker Status",
    ),
    (
        "delivery-performance.json",
        "eucora-delivery",
        "Delivery Performance",
    ),
    ("slo.json", "eucora-slo", "Service Level Objectives"),
    ("cost.json", "eucora-cost", "Deployment Cost"),
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!(
        "`{name}` is not installed: these tests need Debian's `prometheus` package \
         (`.ci/setup` installs it: apt-get install prometheus)"
    )
}

fn dashboard(file: &str) -> Value {
    let text = std::fs::read_to_string(repo("grafana/dashboards").join(file))
        .unwrap_or_else(|e| panic!("grafana/dashboards/{file}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("grafana/dashboards/{file}: {e}"))
}

/// Every panel of a dashboard, with panels nested in rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out.into_iter().filter(|p| p["type"] != "row").collect()
}

/// Every query of every dashboard: (where, expression as written).
fn dashboard_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (file, _, _) in DASHBOARDS {
        let d = dashboard(file);
        for panel in panels(&d) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default().to_string();
                out.push((format!("{file}: {}", panel["title"]), expr));
            }
        }
    }
    out
}

#[test]
fn dashboards_follow_the_conventions() {
    let mut files: Vec<String> = std::fs::read_dir(repo("grafana/dashboards"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected: Vec<String> = DASHBOARDS.iter().map(|(f, _, _)| f.to_string()).collect();
    expected.sort();
    assert_eq!(files, expected, "grafana/dashboards holds exactly these");

    for (file, uid, title) in DASHBOARDS {
        let d = dashboard(file);
        assert_eq!(d["uid"], uid, "{file}: stable uid");
        assert_eq!(d["title"], title, "{file}");
        let variables = d["templating"]["list"].as_array().expect("templating");
        assert!(
            variables.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{file}: a $datasource variable of type datasource"
        );
        let panels = panels(&d);
        assert!(!panels.is_empty(), "{file}: no panels");
        let mut ids = BTreeSet::new();
        for panel in panels {
            let name = format!("{file}: panel {}", panel["title"]);
            assert!(ids.insert(panel["id"].to_string()), "{name}: duplicate id");
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{name}");
            let unit = panel["fieldConfig"]["defaults"]["unit"].as_str();
            assert!(
                unit.is_some_and(|u| !u.is_empty()),
                "{name}: every panel states its unit"
            );
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{name}: no query");
            for target in targets {
                assert_eq!(target["datasource"]["uid"], "${datasource}", "{name}");
                let expr = target["expr"].as_str().expect("expr");
                // A stat sums up the dashboard's range; a graph, each interval.
                let window = if panel["type"] == "stat" {
                    "$__range"
                } else {
                    "$__rate_interval"
                };
                for range in ranges(expr) {
                    assert!(
                        range == "$__rate_interval" || range == window,
                        "{name}: rates over $__rate_interval (or a stat over $__range), not a \
                         fixed window, in {expr}"
                    );
                }
            }
        }
    }
}

/// The contents of every `[...]` range in a query.
fn ranges(expr: &str) -> Vec<&str> {
    expr.split('[')
        .skip(1)
        .filter_map(|rest| rest.split(']').next())
        .collect()
}

#[test]
fn promtool_accepts_the_configuration_and_every_alert_test_passes() {
    let promtool = tool("promtool");
    let run = |args: &[&str]| {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(repo("."))
            .output()
            .expect("run promtool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
        text
    };
    run(&["check", "config", "prometheus/prometheus.yml"]);
    run(&[
        "check",
        "rules",
        "prometheus/rules/recording.yml",
        "prometheus/rules/alerts.yml",
        "prometheus/rules/slo.yml",
        "prometheus/rules/forecast.yml",
    ]);
    for file in [
        "prometheus/tests/alerts_test.yml",
        "prometheus/tests/slo_test.yml",
        "prometheus/tests/forecast_test.yml",
    ] {
        let tested = run(&["test", "rules", file]);
        assert!(tested.contains("SUCCESS"), "{tested}");
    }

    // Every alert is tested firing and not firing.
    let tests = std::fs::read_to_string(repo("prometheus/tests/alerts_test.yml")).unwrap()
        + &std::fs::read_to_string(repo("prometheus/tests/slo_test.yml")).unwrap()
        + &std::fs::read_to_string(repo("prometheus/tests/forecast_test.yml")).unwrap();
    let alerts = RULE_FILES
        .iter()
        .map(|f| std::fs::read_to_string(repo("prometheus/rules").join(f)).unwrap())
        .collect::<String>();
    let names: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(names.len(), 19 + 6 + 5, "{names:?}");
    for name in names {
        let cases: Vec<&str> = tests
            .split("- alertname: ")
            .skip(1)
            .filter(|case| case.starts_with(name))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{name}: no not-firing test"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_labels:")),
            "{name}: no firing test"
        );
    }
}

/// Each committed file of `eucora <generator> rules|tests` is what the default policy generates.
fn committed_files_are_generated(generator: &str) {
    for (command, file) in [
        ("rules", format!("prometheus/rules/{generator}.yml")),
        ("tests", format!("prometheus/tests/{generator}_test.yml")),
    ] {
        let out = Command::new(crate::helpers::binary())
            .args([generator, command])
            .env_remove("EUCORA_POLICY")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let committed = std::fs::read_to_string(repo(&file)).unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout) == committed,
            "{file} is not what `eucora {generator} {command}` prints: regenerate it \
             (eucora {generator} {command} > {file})"
        );
    }
}

#[test]
fn the_slo_rules_and_their_tests_are_what_the_default_policy_generates() {
    committed_files_are_generated("slo");
    // Another policy, other thresholds; a bad one is refused in our words.
    let dir = std::env::temp_dir().join(format!("eucora-slo-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, "[slo]\napi_availability = 0.995\n").unwrap();
    let out = Command::new(crate::helpers::binary())
        .args(["slo", "rules", "--policy", policy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("(14.4 * (1 - 0.995))"));
    std::fs::write(&policy, "[slo]\napi_latency = \"300ms\"\n").unwrap();
    let out = Command::new(crate::helpers::binary())
        .args(["slo", "rules", "--policy", policy.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a bucket bound"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_forecast_rules_and_their_tests_are_what_the_default_policy_generates() {
    committed_files_are_generated("forecast");
    // Another policy, other limits; a horizon of zero is refused in our words, at once.
    let dir = std::env::temp_dir().join(format!("eucora-forecast-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, "[forecast]\noutbox_limit = 40\n").unwrap();
    let run = |args: &[&str]| {
        Command::new(crate::helpers::binary())
            .args(args)
            .args(["--policy", policy.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = run(&["forecast", "rules"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("[6h], 14400) > 40"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::write(&policy, "[forecast]\nhorizon = \"0h\"\n").unwrap();
    // The server reads the policy the same way (Policy::load), and stops there.
    let out = run(&["forecast", "rules"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("forecast.horizon must be at least 1m"),
        "{said}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_alert_links_a_runbook_entry_that_exists() {
    let runbook = std::fs::read_to_string(repo("docs/runbook.md")).unwrap();
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| eucora::http::ops::heading_anchor(l.trim_start_matches('#')))
        .collect();
    let alerts = RULE_FILES
        .iter()
        .map(|f| std::fs::read_to_string(repo("prometheus/rules").join(f)).unwrap())
        .collect::<String>();
    let mut links = 0;
    for line in alerts.lines() {
        if let Some(url) = line.trim().strip_prefix("runbook_url: ") {
            let (base, anchor) = url.trim_matches('\'').split_once('#').expect("an anchor");
            assert!(
                base.contains("$externalLabels.runbook_base")
                    && base.contains("{{ else }}http://localhost:8000/docs/runbook{{ end }}"),
                "{url}: not the configurable absolute base"
            );
            assert!(
                anchors.contains(anchor),
                "{url}: docs/runbook.md has no heading #{anchor}"
            );
            links += 1;
        }
    }
    for key in ["severity: ", "summary: ", "description: "] {
        assert_eq!(
            alerts
                .lines()
                .filter(|l| l.trim_start().starts_with(key))
                .count(),
            links,
            "every alert has a {key}and a runbook link"
        );
    }
    assert_eq!(links, 19 + 6 + 5);
}

#[test]
fn demo_without_a_server_says_so_and_fails() {
    let (ok, _, err) = eucora(&[
        "demo",
        "--requester-token",
        "a",
        "--approver-token",
        "b",
        "--deployer-token",
        "c",
        "--url",
        "http://127.0.0.1:9",
        "--duration",
        "1",
    ]);
    assert!(!ok);
    assert!(
        err.contains("the server at http://127.0.0.1:9 does not answer"),
        "{err}"
    );
}

/// A Prometheus of our own on loopback, stopped when dropped.
struct Prometheus {
    child: Child,
    base: String,
    client: reqwest::Client,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus with our `prometheus.yml` and rules, changed only to scrape `target`
    /// every second and evaluate rules every second.
    async fn start(target: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("eucora_prom_{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("rules")).unwrap();
        for rules in RULE_FILES {
            std::fs::copy(
                repo("prometheus/rules").join(rules),
                dir.join("rules").join(rules),
            )
            .unwrap();
        }
        let config = std::fs::read_to_string(repo("prometheus/prometheus.yml")).unwrap();
        for from in [
            "eucora:8000",
            "scrape_interval: 15s",
            "evaluation_interval: 15s",
        ] {
            assert!(config.contains(from), "prometheus.yml no longer has {from}");
        }
        let config = config
            .replace("eucora:8000", target)
            .replace("scrape_interval: 15s", "scrape_interval: 1s")
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            _dir: TempDir(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = prometheus
                .client
                .get(format!("{}/-/ready", prometheus.base))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "prometheus never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let body: Value = self
            .client
            .get(format!("{}/api/v1/{path}", self.base))
            .query(query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body
    }

    /// Evaluates a query now; `Err` carries Prometheus's error (a query that does not parse).
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let body = self.api("query", &[("query", expr)]).await;
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Evaluates a query until it returns data, or gives up after `patience`.
    async fn query_until_data(&self, expr: &str, patience: Duration) -> Result<Vec<Value>, String> {
        let deadline = Instant::now() + patience;
        loop {
            let result = self.query(expr).await?;
            if !result.is_empty() || Instant::now() >= deadline {
                return Ok(result);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// What a PromQL expression refers to.
#[derive(Debug, Default)]
struct References {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
    /// `label="value"` matchers, whose values must exist.
    equal_matchers: BTreeSet<(String, String)>,
}

/// A small PromQL scanner: enough to find metric names, label names and equality matchers.
fn references(expr: &str) -> References {
    const KEYWORDS: [&str; 19] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan", // operators and literals
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count", // aggregations, which
        "count_values",
        "bottomk",
        "topk",
        "quantile", // may be followed by `by (...)`
    ];
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut refs = References::default();
    let mut i = 0;
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let read_ident = |i: &mut usize| {
        let start = *i;
        while *i < chars.len() && ident_char(chars[*i]) {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    let read_string = |i: &mut usize| {
        let quote = chars[*i];
        *i += 1;
        let mut s = String::new();
        while *i < chars.len() && chars[*i] != quote {
            if chars[*i] == '\\' {
                *i += 1;
            }
            s.push(chars[*i]);
            *i += 1;
        }
        *i += 1;
        s
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            read_string(&mut i);
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
        } else if c == '{' {
            i += 1;
            loop {
                while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
                    i += 1;
                }
                if i >= chars.len() || chars[i] == '}' {
                    i += 1;
                    break;
                }
                let label = read_ident(&mut i);
                skip_ws(&mut i);
                let start = i;
                while i < chars.len() && matches!(chars[i], '=' | '!' | '~') {
                    i += 1;
                }
                let op: String = chars[start..i].iter().collect();
                skip_ws(&mut i);
                let value = read_string(&mut i);
                if op == "=" {
                    refs.equal_matchers.insert((label.clone(), value));
                }
                refs.labels.insert(label);
            }
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if ident_start(c) {
            let ident = read_ident(&mut i);
            let mut j = i;
            skip_ws(&mut j);
            let call = j < chars.len() && chars[j] == '(';
            if GROUPING.contains(&ident.as_str()) {
                if call {
                    i = j + 1;
                    while i < chars.len() && chars[i] != ')' {
                        if ident_start(chars[i]) {
                            refs.labels.insert(read_ident(&mut i));
                        } else {
                            i += 1;
                        }
                    }
                }
            } else if !call && !KEYWORDS.contains(&ident.to_lowercase().as_str()) {
                refs.metrics.insert(ident);
            }
        } else {
            i += 1;
        }
    }
    refs
}

#[test]
fn the_promql_scanner_finds_metrics_labels_and_matchers() {
    let refs = references(
        r#"histogram_quantile(0.95, sum by (le, ring) (max without (instance) (rate(deployment_duration_seconds_bucket{status="success", ring=~"LAB|CANARY"}[5m])))) > bool 1 or absent(up{job="eucora"}) offset 5m"#,
    );
    assert_eq!(
        refs.metrics.into_iter().collect::<Vec<_>>(),
        ["deployment_duration_seconds_bucket", "up"]
    );
    assert_eq!(
        refs.labels.into_iter().collect::<Vec<_>>(),
        ["instance", "job", "le", "ring", "status"]
    );
    assert_eq!(
        refs.equal_matchers.into_iter().collect::<Vec<_>>(),
        [
            ("job".to_string(), "eucora".to_string()),
            ("status".to_string(), "success".to_string())
        ]
    );
}

/// The catalogue as the server serves it: metric names (histograms with their `_bucket`, `_sum`
/// and `_count` series, summaries with their `_sum` and `_count`) and the label names on its samples.
fn catalogue(exposition: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    metrics.insert(format!("{name}{suffix}"));
                }
            } else if kind == "summary" {
                for suffix in ["_sum", "_count"] {
                    metrics.insert(format!("{name}{suffix}"));
                }
            } else {
                metrics.insert(name.to_string());
            }
        } else if !line.starts_with('#') {
            if let Some((_, rest)) = line.split_once('{') {
                for pair in rest.split("\",") {
                    if let Some((label, _)) = pair.split_once('=') {
                        labels.insert(label.trim().to_string());
                    }
                }
            }
        }
    }
    (metrics, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_rule_returns_data_on_a_real_prometheus() {
    // A server dispatching every connector type to the simulator, which fails 5 % of calls.
    let sim = crate::connector_sim::Sim::start(eucora::connector::sim::SimConfig {
        converge: Duration::from_secs(2),
        faults: eucora::connector::sim::Faults {
            failure_rate: 0.05,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let db = std::sync::Arc::new(crate::helpers::TestDb::new(Backend::Sqlite).await);
    let connectors = db.dir().join("connectors.toml");
    let tables: String = ["intune", "jamf", "sccm", "landscape", "ansible"]
        .iter()
        .map(|kind| {
            format!(
                "[{kind}]\nbase_url = \"{}\"\nretry_min = \"200ms\"\nretry_max = \"1s\"\n\
                 poll_interval = \"1s\"\nreconcile_interval = \"1s\"\n",
                sim.base
            )
        })
        .collect();
    std::fs::write(&connectors, tables).unwrap();
    let app = TestApp::spawn_on(db, &["--connectors", connectors.to_str().unwrap()]).await;
    let target = app.base.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&target).await;

    // Demo traffic through the real API while Prometheus scrapes every second.
    let demo = Command::new(crate::helpers::binary())
        .args(["demo", "--database-url", &app.db.url, "--url", &app.base])
        .args(["--duration", "20", "--pace-ms", "150", "--seed", "7"])
        .output()
        .expect("run eucora demo");
    let summary = String::from_utf8_lossy(&demo.stdout);
    assert!(
        demo.status.success(),
        "eucora demo failed: {}",
        String::from_utf8_lossy(&demo.stderr)
    );
    assert!(summary.contains(" 0 request errors"), "{summary}");
    // Some of what the connector installed goes missing: reconciliation finds drift.
    let sent = sim.side_effects().await;
    for assignment in sent["actions"].as_object().unwrap().keys() {
        if let Some(id) = assignment.strip_suffix("/publish") {
            sim.post(
                "/sim/drift",
                serde_json::json!({"assignment_id": id, "lose_devices": 1}),
                None,
            )
            .await;
        }
    }
    // And one answers its status reads with something that is not a status.
    let first = sent["actions"].as_object().unwrap().keys().next().unwrap();
    let garbled = sim
        .post(
            "/sim/answer",
            serde_json::json!({"assignment_id": first.split('/').next().unwrap(), "body": "not json"}),
            None,
        )
        .await;
    assert_eq!(garbled.status(), 204);

    // The catalogue: what the server exports, what the rules record, and Prometheus's own `up`.
    let exposition = reqwest::get(format!("{}/api/v1/metrics", app.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (mut metrics, mut labels) = catalogue(&exposition);
    let rules = prometheus.api("rules", &[]).await;
    let mut recording = Vec::new();
    let mut alerting = Vec::new();
    for group in rules["data"]["groups"].as_array().expect("rule groups") {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["name"].as_str().unwrap().to_string();
            let query = rule["query"].as_str().unwrap().to_string();
            if rule["type"] == "recording" {
                metrics.insert(name.clone());
                // A rule's own labels (the SLOs' sloth_*) are series labels like any other.
                if let Some(own) = rule["labels"].as_object() {
                    labels.extend(own.keys().cloned());
                }
                recording.push((name, query));
            } else {
                alerting.push((name, query));
            }
        }
    }
    assert_eq!(
        (recording.len(), alerting.len()),
        (12 + 3 * 14 + 2, 19 + 6 + 5),
        "rules loaded"
    );
    metrics.insert("up".into());
    labels.extend(["le", "instance", "job"].map(String::from));

    let mut failures = Vec::new();
    let check_references = |what: &str, expr: &str, failures: &mut Vec<String>| {
        let refs = references(expr);
        for metric in &refs.metrics {
            if !metrics.contains(metric) {
                failures.push(format!("{what}: {metric} is not in the catalogue"));
            }
        }
        for label in &refs.labels {
            if !labels.contains(label) {
                failures.push(format!("{what}: label {label} is not in the catalogue"));
            }
        }
        refs.equal_matchers
    };

    // Recording rules first: once they hold data, the rule evaluations have caught up.
    let patience = Duration::from_secs(30);
    let mut matchers = BTreeSet::new();
    for (name, query) in &recording {
        matchers.extend(check_references(name, query, &mut failures));
        match prometheus.query_until_data(name, patience).await {
            Ok(result) if result.is_empty() => {
                failures.push(format!("recording rule {name} recorded no data"))
            }
            Ok(_) => {}
            Err(e) => failures.push(format!("recording rule {name}: {e}")),
        }
    }
    for (name, query) in &alerting {
        matchers.extend(check_references(name, query, &mut failures));
        if let Err(e) = prometheus.query(query).await {
            failures.push(format!("alert {name} does not evaluate: {e}"));
        }
    }
    for (what, expr) in dashboard_queries() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1m");
        matchers.extend(check_references(&what, &expr, &mut failures));
        match prometheus.query_until_data(&expr, patience).await {
            Ok(result) if result.is_empty() => failures.push(format!("{what}: no data for {expr}")),
            Ok(_) => {}
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    // Every `label="value"` names a value the traffic produced (no misspelt states or rings).
    let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (label, value) in matchers {
        if !values.contains_key(&label) {
            let found = prometheus.api(&format!("label/{label}/values"), &[]).await;
            let found = found["data"].as_array().cloned().unwrap_or_default();
            values.insert(
                label.clone(),
                found
                    .iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect(),
            );
        }
        if !values[&label].contains(&value) {
            failures.push(format!("{label}=\"{value}\" matches no series"));
        }
    }
    // Every rule evaluated without error on the live data.
    let rules = prometheus.api("rules", &[]).await;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            if rule["health"] != "ok" {
                failures.push(format!("rule {} is unhealthy: {}", rule["name"], rule));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}\n(demo: {summary})",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_compose_stack_is_wired_by_service_name() {
    let compose = std::fs::read_to_string(repo("docker-compose.yml")).unwrap();
    let services: BTreeSet<&str> = compose
        .split("\nservices:\n")
        .nth(1)
        .expect("services")
        .lines()
        .take_while(|l| !l.starts_with(|c: char| c.is_ascii_alphabetic()))
        .filter_map(|l| l.strip_prefix("  ")?.strip_suffix(':'))
        .filter(|name| !name.starts_with(' '))
        .collect();
    for service in [
        "postgres",
        "eucora",
        "connector-sim",
        "demo",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains(service), "no {service} in {services:?}");
    }
    assert_eq!(
        compose.matches("healthcheck:").count(),
        5,
        "every long-running service has a health check"
    );
    // Every file or folder the stack mounts is in the repository.
    for line in compose.lines() {
        if let Some(mount) = line.trim().strip_prefix("- ./") {
            let host = mount.split(':').next().unwrap();
            assert!(repo(host).exists(), "{host} is mounted but does not exist");
        }
    }
    // Prometheus scrapes the eucora service on the port it listens on; Grafana reads the
    // Prometheus service; the dashboard provider reads where the dashboards are mounted.
    let prometheus = std::fs::read_to_string(repo("prometheus/prometheus.yml")).unwrap();
    assert!(prometheus.contains("targets: [\"eucora:8000\"]"));
    assert!(prometheus.contains("metrics_path: /api/v1/metrics"));
    assert!(compose.contains("EUCORA_LISTEN: 0.0.0.0:8000"));
    let datasource =
        std::fs::read_to_string(repo("grafana/provisioning/datasources/prometheus.yml")).unwrap();
    assert!(datasource.contains("url: http://prometheus:9090"));
    let provider =
        std::fs::read_to_string(repo("grafana/provisioning/dashboards/eucora.yml")).unwrap();
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
    assert!(compose.contains("- ./grafana/dashboards:/var/lib/grafana/dashboards:ro"));
    assert!(compose.contains("- ./prometheus:/etc/prometheus:ro"));
    // The control plane dispatches every connector type to the simulator service.
    assert!(compose.contains("EUCORA_CONNECTORS: /etc/eucora/connectors.toml"));
    assert!(compose.contains("- ./docs/demo-connectors.toml:/etc/eucora/connectors.toml:ro"));
    assert!(compose.contains("\"--listen\", \"0.0.0.0:9100\""));
    let connectors = std::fs::read_to_string(repo("docs/demo-connectors.toml")).unwrap();
    let parsed = eucora::connector::client::parse(&connectors, &|_| None).expect("connectors");
    assert_eq!(parsed.len(), 5);
    assert!(parsed
        .values()
        .all(|c| c.base_url.as_str() == "http://connector-sim:9100/"));
}
