//! `eucora deployments …`: the operator's client of a running server. Each command is one API
//! call (docs/api.md), printed as a table or key/value lines, or as the server's JSON with `--json`.
//! A refusal (4xx) prints the problem's detail and exits 3; an unreachable server or a 5xx exits
//! 1, so scripts can tell "the server said no" from "it did not answer".

use std::io::Read;
use std::time::Duration;

use eucora_projections::event::DeploymentEvent;
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::{say, table, Failure};
use crate::config::{ClientArgs, CreateArgs, DeploymentsCommand};
use crate::domain::risk::FACTOR_NAMES;
use eucora_projections::describe::{event_line, gate};

pub(super) struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    json: bool,
}

/// An answer the server gave: its status and its JSON (or text) body.
struct Answer {
    status: u16,
    body: Value,
}

impl Client {
    pub(super) fn new(args: &ClientArgs) -> Result<Client, Failure> {
        let token = args.token.clone().filter(|t| !t.trim().is_empty()).ok_or(
            "no token: pass --token or set EUCORA_TOKEN (`eucora token create` makes one)",
        )?;
        let base = args.server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("--server {base:?} is not an http:// or https:// URL").into());
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Client {
            http,
            base,
            token,
            json: args.json,
        })
    }

    /// Sends one request. A 5xx, or no answer at all, is a failure; anything else is returned.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Answer, Failure> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .query(query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot reach the server at {}: {e}", self.base))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| format!("the server's answer was cut off: {e}"))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 500 {
            return Err(format!("the server failed ({status}): {}", problem(&body)).into());
        }
        Ok(Answer { status, body })
    }

    /// Saves what a GET answers to `out`, a new file: a 4xx is a refusal, a 5xx or no answer a
    /// failure, and either leaves no file behind. How many bytes it wrote.
    pub(super) async fn download(
        &self,
        path: &str,
        query: &[(&str, String)],
        out: &std::path::Path,
    ) -> Result<u64, Failure> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .query(query)
            .send()
            .await
            .map_err(|e| format!("cannot reach the server at {}: {e}", self.base))?;
        let status = response.status().as_u16();
        if status >= 400 {
            let text = response.text().await.unwrap_or_default();
            let answer = Answer {
                status,
                body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            };
            if status >= 500 {
                return Err(
                    format!("the server failed ({status}): {}", problem(&answer.body)).into(),
                );
            }
            return Err(refusal(&answer));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("the server's answer was cut off: {e}"))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(out)
            .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
        if let Err(e) = std::io::Write::write_all(&mut file, &bytes) {
            let _ = std::fs::remove_file(out);
            return Err(format!("cannot write {}: {e}", crate::domain::absolute(out)).into());
        }
        Ok(bytes.len() as u64)
    }

    /// [`Client::call`], with a 4xx turned into a refusal.
    pub(super) async fn ok(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let answer = self.call(method, path, query, body).await?;
        if answer.status >= 400 {
            return Err(refusal(&answer));
        }
        Ok(answer.body)
    }

    /// Prints an intent (or, with `--json`, the server's JSON).
    fn print_intent(&self, intent: &Value) -> Result<(), Failure> {
        if self.json {
            return say(format_args!("{intent}"));
        }
        for line in intent_lines(intent) {
            say(format_args!("{line}"))?;
        }
        Ok(())
    }
}

/// `list --status awaiting_cab`: the CAB's queue, with when each change was requested, how long
/// it has waited, its risk and why the CAB must decide.
fn cab_queue(items: &[Value], next: Option<&str>) -> Result<(), Failure> {
    let now = chrono::Utc::now();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            let requested = i["created_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc));
            vec![
                text(&i["id"]),
                format!("{} {}", text(&i["app_name"]), text(&i["version"])),
                requested.map_or("-".into(), crate::evidence::rfc3339),
                requested.map_or("-".into(), |t| waited(now - t)),
                text(&i["risk_score"]),
                text(&i["cab_required_reason"]),
                text(&i["requested_by"]),
            ]
        })
        .collect();
    let header = [
        "ID",
        "APP",
        "REQUESTED",
        "WAITING",
        "RISK",
        "WHY THE CAB DECIDES",
        "REQUESTER",
    ];
    for line in table::render(&header, &rows) {
        say(format_args!("{}", line.trim_end()))?;
    }
    if let Some(next) = next {
        eprintln!("more: add --cursor {next}");
    }
    Ok(())
}

/// A wait in words: `3d 4h`, `2h 05m`, `7m`.
fn waited(d: chrono::Duration) -> String {
    let minutes = d.num_minutes().max(0);
    let (days, hours, minutes) = (minutes / 1440, minutes / 60 % 24, minutes % 60);
    match (days, hours) {
        (0, 0) => format!("{minutes}m"),
        (0, _) => format!("{hours}h {minutes:02}m"),
        _ => format!("{days}d {hours}h"),
    }
}

/// `STATUS TITLE: DETAIL` of a problem+json body.
fn problem(body: &Value) -> String {
    match (body["title"].as_str(), body["detail"].as_str()) {
        (Some(title), Some(detail)) => format!("{title}: {detail}"),
        (None, Some(detail)) => detail.to_string(),
        _ => body.to_string(),
    }
}

fn refusal(answer: &Answer) -> Failure {
    let hint = match answer.status {
        401 => " (is the token right? `eucora token create` makes one)",
        _ => "",
    };
    Failure::Refused(format!("{} {}{hint}", answer.status, problem(&answer.body)))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// An intent as `key: value` lines, the id first.
fn intent_lines(i: &Value) -> Vec<String> {
    let mut lines = vec![
        format!("id:               {}", text(&i["id"])),
        format!(
            "app:              {} {}",
            text(&i["app_name"]),
            text(&i["version"])
        ),
        format!("change ref:       {}", text(&i["change_ref"])),
        format!("status:           {}", text(&i["status"])),
        format!(
            "ring:             {} (target {})",
            text(&i["current_ring"]),
            text(&i["target_ring"])
        ),
        format!(
            "change:           {} via {}, {} sites",
            text(&i["change_type"]),
            text(&i["connector_type"]),
            text(&i["site_class"])
        ),
        format!(
            "risk:             {} ({}; CAB {})",
            text(&i["risk_score"]),
            text(&i["risk_model_version"]),
            if i["requires_cab"] == true {
                "required"
            } else {
                "not required"
            }
        ),
        format!("CAB reason:       {}", text(&i["cab_required_reason"])),
        format!("requested by:     {}", text(&i["requested_by"])),
        format!("approved by:      {}", text(&i["approved_by"])),
    ];
    if let Some(by) = i["rejected_by"].as_str() {
        lines.push(format!(
            "rejected by:      {by}: {}",
            text(&i["rejection_reason"])
        ));
    }
    if i["retro_approval_pending"] == true {
        lines.push(format!(
            "retro approval:   pending{}{}",
            i["retro_approval_due_at"]
                .as_str()
                .map(|due| format!(", due by {due}"))
                .unwrap_or_default(),
            if i["retro_approval_overdue"] == true {
                " (OVERDUE)"
            } else {
                ""
            }
        ));
    }
    if i["rollback_required"] == true {
        lines.push("rollback:         REQUIRED (the CAB rejected it retrospectively)".into());
    }
    if let Some(p) = i["last_promotion"].as_object() {
        lines.push(format!(
            "last promotion:   {} to {} {}",
            text(&p["from_ring"]),
            text(&p["to_ring"]),
            if p["passed"] == true {
                "passed"
            } else {
                "BLOCKED"
            }
        ));
    }
    if let Some(cost) = i["cost"].as_object() {
        let currency = text(&cost["currency"]);
        let parts: Vec<String> = cost["components"]
            .as_object()
            .map(|c| {
                c.iter()
                    .map(|(name, amount)| {
                        format!(
                            "{} {:.2}",
                            name.replace('_', " "),
                            amount.as_f64().unwrap_or(0.0)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        lines.push(format!(
            "cost:             {currency} {:.2}{}",
            cost["total"].as_f64().unwrap_or(0.0),
            if parts.is_empty() {
                String::new()
            } else {
                format!(" ({})", parts.join(", "))
            }
        ));
    }
    if let Some(f) = i["forecast"].as_object() {
        let percent = |v: &serde_json::Value| format!("{:.0} %", v.as_f64().unwrap_or(0.0) * 100.0);
        let due = match f["due_at"].as_str() {
            Some(due) => format!(", due {due}"),
            None => String::new(),
        };
        let outlook = match (f["compliant"] == true, f["expected_compliance_at"].as_str()) {
            (true, Some(at)) => format!("compliant at {at}{due}"),
            (false, Some(at)) => format!("expected compliant at {at}{due}"),
            _ => format!("no progress: not expected to be compliant{due}"),
        };
        lines.push(format!(
            "forecast:         {} {} of {} as of {}; {outlook}{}",
            text(&f["ring"]),
            percent(&f["share"]),
            percent(&f["threshold"]),
            text(&f["as_of"]),
            match (f["will_miss_deadline"] == true, f["compliant"] == true) {
                (true, true) => ": MISSED THE DEADLINE",
                (true, false) => ": WILL MISS THE DEADLINE",
                _ => "",
            }
        ));
    }
    if let Some(r) = i["connector_status_rejected"].as_object() {
        lines.push(format!(
            "connector status: REJECTED in {} at {}: {}",
            text(&r["ring"]),
            text(&r["at"]),
            text(&r["problem"])
        ));
    }
    lines.push(format!(
        "updated:          {} (version {})",
        text(&i["updated_at"]),
        text(&i["stream_version"])
    ));
    lines
}

/// The gate verdicts of a promotion attempt, one per line.
fn gate_lines(promotion: &Value) -> Vec<String> {
    let gates: Vec<eucora_projections::event::GateResult> =
        serde_json::from_value(promotion["gates"].clone()).unwrap_or_default();
    gates.iter().map(|g| format!("  {}", gate(g))).collect()
}

fn checked_id(id: &str) -> Result<&str, Failure> {
    uuid::Uuid::parse_str(id)
        .map(|_| id)
        .map_err(|_| Failure::Message(format!("{id:?} is not a deployment intent id (a UUID)")))
}

/// Runs one `eucora deployments` command.
pub async fn run(command: DeploymentsCommand) -> Result<(), Failure> {
    match command {
        DeploymentsCommand::List {
            client,
            status,
            ring,
            app_name,
            retro_approval,
            change_ref,
            limit,
            cursor,
        } => {
            let client = Client::new(&client)?;
            let queue = status.as_deref() == Some("awaiting_cab");
            let mut query = vec![("limit", limit.to_string())];
            for (name, value) in [
                ("status", status),
                ("ring", ring),
                ("app_name", app_name),
                ("retro_approval", retro_approval),
                ("change_ref", change_ref),
                ("cursor", cursor),
            ] {
                if let Some(v) = value {
                    query.push((name, v));
                }
            }
            let page = client
                .ok(Method::GET, "/api/v1/deployments", &query, None)
                .await?;
            if client.json {
                return say(format_args!("{page}"));
            }
            let items = page["items"].as_array().cloned().unwrap_or_default();
            if queue {
                return cab_queue(&items, page["next_cursor"].as_str());
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|i| {
                    vec![
                        text(&i["id"]),
                        text(&i["app_name"]),
                        text(&i["version"]),
                        text(&i["status"]),
                        format!("{}/{}", text(&i["current_ring"]), text(&i["target_ring"])),
                        text(&i["risk_score"]),
                        if i["rollback_required"] == true {
                            "rollback required".into()
                        } else if i["retro_approval_overdue"] == true
                            && i["retro_approval_pending"] == true
                        {
                            "retro approval OVERDUE".into()
                        } else if i["retro_approval_pending"] == true {
                            "retro approval pending".into()
                        } else {
                            String::new()
                        },
                        text(&i["requested_by"]),
                        text(&i["updated_at"]),
                    ]
                })
                .collect();
            let header = [
                "ID",
                "APP",
                "VERSION",
                "STATUS",
                "RING/TARGET",
                "RISK",
                "NOTE",
                "REQUESTER",
                "UPDATED",
            ];
            for line in table::render(&header, &rows) {
                say(format_args!("{}", line.trim_end()))?;
            }
            if let Some(next) = page["next_cursor"].as_str() {
                eprintln!("more: add --cursor {next}");
            }
            Ok(())
        }
        DeploymentsCommand::Get { client, id } => {
            let client = Client::new(&client)?;
            let path = format!("/api/v1/deployments/{}", checked_id(&id)?);
            let intent = client.ok(Method::GET, &path, &[], None).await?;
            client.print_intent(&intent)
        }
        DeploymentsCommand::History { client, id, as_of } => {
            let client = Client::new(&client)?;
            let path = format!("/api/v1/deployments/{}/events", checked_id(&id)?);
            let query: Vec<(&str, String)> = as_of.into_iter().map(|t| ("as_of", t)).collect();
            let history = client.ok(Method::GET, &path, &query, None).await?;
            if client.json {
                return say(format_args!("{history}"));
            }
            for e in history["events"].as_array().cloned().unwrap_or_default() {
                let sequence = e["sequence"].as_i64().unwrap_or_default();
                match serde_json::from_value::<DeploymentEvent>(e["event"].clone()) {
                    Ok(event) => say(format_args!("{}", event_line(sequence, &event)))?,
                    // A newer server's event type: show it as it came.
                    Err(_) => say(format_args!(
                        "#{sequence:<3} {}  {}",
                        text(&e["event_type"]),
                        e["event"]
                    ))?,
                }
            }
            Ok(())
        }
        DeploymentsCommand::Create(args) => {
            let client = Client::new(&args.client)?;
            let body = create_body(&args)?;
            let intent = client
                .ok(Method::POST, "/api/v1/deployments", &[], Some(body))
                .await?;
            client.print_intent(&intent)
        }
        DeploymentsCommand::Approve {
            client,
            id,
            comment,
        } => {
            let body = match comment {
                Some(c) => json!({ "comment": c }),
                None => json!({}),
            };
            on_intent(&client, &id, "approve", body).await
        }
        DeploymentsCommand::Reject { client, id, reason } => {
            on_intent(&client, &id, "reject", json!({ "reason": reason })).await
        }
        DeploymentsCommand::Rollback { client, id, reason } => {
            on_intent(&client, &id, "rollback", json!({ "reason": reason })).await
        }
        DeploymentsCommand::Report {
            client,
            id,
            ring,
            target_devices,
            succeeded,
            failed,
            incidents,
        } => {
            let body = json!({
                "ring": ring, "target_devices": target_devices, "succeeded": succeeded,
                "failed": failed, "incidents": incidents,
            });
            on_intent(&client, &id, "deploy", body).await
        }
        DeploymentsCommand::Promote { client, id } => {
            let client = Client::new(&client)?;
            let path = format!("/api/v1/deployments/{}/promote", checked_id(&id)?);
            let answer = client
                .call(Method::POST, &path, &[], Some(json!({})))
                .await?;
            let blocked = answer.status == 409 && answer.body["promotion"].is_object();
            if answer.status >= 400 && !blocked {
                return Err(refusal(&answer));
            }
            let (intent, promotion) = if blocked {
                (&answer.body["intent"], &answer.body["promotion"])
            } else {
                (&answer.body, &answer.body["last_promotion"])
            };
            if client.json {
                say(format_args!("{}", answer.body))?;
            } else {
                client.print_intent(intent)?;
                say(format_args!("gates:"))?;
                for line in gate_lines(promotion) {
                    say(format_args!("{line}"))?;
                }
            }
            if blocked {
                return Err(Failure::Refused(format!(
                    "{} {}",
                    answer.status,
                    problem(&answer.body)
                )));
            }
            Ok(())
        }
    }
}

/// A command on one intent that answers with the intent.
async fn on_intent(args: &ClientArgs, id: &str, action: &str, body: Value) -> Result<(), Failure> {
    let client = Client::new(args)?;
    let path = format!("/api/v1/deployments/{}/{action}", checked_id(id)?);
    let intent = client.ok(Method::POST, &path, &[], Some(body)).await?;
    client.print_intent(&intent)
}

/// The create body: the file's JSON (if any), with the flags given laid over it.
fn create_body(args: &CreateArgs) -> Result<Value, Failure> {
    let mut body: Map<String, Value> = match &args.file {
        None => Map::new(),
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| format!("cannot read standard input: {e}"))?;
                text
            } else {
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", crate::domain::absolute(path)))?
            };
            match serde_json::from_str(&text) {
                Ok(Value::Object(map)) => map,
                Ok(_) => {
                    return Err(format!("{} does not hold a JSON object", path.display()).into())
                }
                Err(e) => return Err(format!("{} is not valid JSON: {e}", path.display()).into()),
            }
        }
    };
    for (name, value) in [
        ("app_name", &args.app_name),
        ("version", &args.version),
        ("connector_type", &args.connector_type),
        ("start_ring", &args.start_ring),
        ("target_ring", &args.target_ring),
        ("change_type", &args.change_type),
        ("site_class", &args.site_class),
        ("artifact_sha256", &args.artifact_sha256),
        ("justification", &args.justification),
        ("source_committed_at", &args.source_committed_at),
        ("change_ref", &args.change_ref),
    ] {
        if let Some(v) = value {
            body.insert(name.into(), json!(v));
        }
    }
    if let Some(bytes) = args.artifact_bytes {
        body.insert("artifact_bytes".into(), json!(bytes));
    }
    for (name, set) in [
        ("privileged_tooling", args.privileged_tooling),
        ("critical_infrastructure", args.critical_infrastructure),
        ("rollback_validated", args.rollback_validated),
    ] {
        if set {
            body.insert(name.into(), json!(true));
        }
    }
    if !args.risk_factors.is_empty() || !body.contains_key("risk_factors") {
        let mut factors = match body.remove("risk_factors") {
            Some(Value::Object(map)) => map,
            _ => FACTOR_NAMES
                .iter()
                .map(|f| (f.to_string(), json!(0.0)))
                .collect(),
        };
        for given in &args.risk_factors {
            let (name, value) = given
                .split_once('=')
                .ok_or_else(|| format!("--risk-factor {given:?} is not NAME=VALUE"))?;
            if !FACTOR_NAMES.contains(&name) {
                return Err(format!(
                    "--risk-factor {name:?} is not a risk factor (one of {})",
                    FACTOR_NAMES.join(", ")
                )
                .into());
            }
            let value: f64 = value
                .parse()
                .ok()
                .filter(|v: &f64| (0.0..=1.0).contains(v))
                .ok_or_else(|| {
                    format!("--risk-factor {name}: {value:?} is not a number from 0 to 1")
                })?;
            factors.insert(name.into(), json!(value));
        }
        body.insert("risk_factors".into(), Value::Object(factors));
    }
    for required in ["app_name", "version", "connector_type"] {
        if !body.contains_key(required) {
            return Err(format!(
                "--{} is required (or give it in --file)",
                required.replace('_', "-")
            )
            .into());
        }
    }
    Ok(Value::Object(body))
}
