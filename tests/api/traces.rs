//! Traces (docs/observability.md, "Traces") as an operator's collector receives them: an OTLP/HTTP
//! receiver of the test's own decodes every span the server exports, and one caller's trace is
//! followed from its `traceparent` through the request, the command and the append, onto the
//! event's metadata and the JSON log; the dispatcher's call to a connector carries its own
//! `traceparent`. An unreachable collector fails no request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use eucora::connector::sim::{router, SimConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use serde_json::Value;
use uuid::Uuid;

use crate::connector_sim::Sim;
use crate::dispatch::connectors;
use crate::helpers::{eucora, intent_body, Backend, Crew, Reply, TestApp, TestDb};

crate::on_both_backends!(
    one_trace_joins_the_callers_request_command_append_event_and_log,
    an_unreachable_collector_fails_no_request,
);

/// One span as the collector received it; ids in lowercase hex, as `traceparent` writes them.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    /// OTLP's `SpanKind`: 2 server, 3 client.
    kind: i32,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP trace receiver (`POST /v1/traces`, protobuf), keeping every span it decodes.
struct Collector {
    endpoint: String,
    spans: Arc<Mutex<Vec<Received>>>,
}

fn text(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Any::StringValue(s)) => s.clone(),
                Some(Any::IntValue(i)) => i.to_string(),
                Some(Any::BoolValue(b)) => b.to_string(),
                Some(Any::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

async fn receive(State(spans): State<Arc<Mutex<Vec<Received>>>>, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut spans = spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .map(|r| text(&r.attributes))
            .and_then(|a| a.get("service.name").cloned())
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(Received {
                    service: service.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent: hex::encode(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: span.kind,
                    attributes: text(&span.attributes),
                });
            }
        }
    }
    StatusCode::OK
}

impl Collector {
    async fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(receive))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { endpoint, spans }
    }

    /// Waits until the spans of `trace` include one of each of `names`, and returns them all. A
    /// child ends, and may be exported, before its parent: each is waited for.
    async fn until(&self, trace: &str, names: &[&str]) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans: Vec<Received> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace)
                .cloned()
                .collect();
            if names
                .iter()
                .all(|name| spans.iter().any(|s| s.name == *name))
            {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "not every span of {names:?} of trace {trace} arrived; the trace has {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn named<'a>(spans: &'a [Received], name: &str) -> &'a Received {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

/// A caller's trace context: (traceparent, trace id, span id).
fn caller() -> (String, String, String) {
    let trace = Uuid::new_v4().simple().to_string();
    let span = Uuid::new_v4().simple().to_string()[..16].to_string();
    (format!("00-{trace}-{span}-01"), trace, span)
}

/// Creates a low-risk intent for `app` in the caller's trace `traceparent`.
async fn create_in(app: &TestApp, requester: &str, traceparent: &str, name: &str) -> Reply {
    app.send(
        reqwest::Method::POST,
        "/api/v1/deployments",
        Some(requester),
        &[("traceparent", traceparent)],
        Some(intent_body(name, 0.2, "LAB").to_string()),
    )
    .await
}

/// The settings of a server exporting to `endpoint`, flushing spans every 100 ms.
fn exporting_to(endpoint: &str) -> [(&str, &str); 2] {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]
}

async fn one_trace_joins_the_callers_request_command_append_event_and_log(backend: Backend) {
    let collector = Collector::start().await;
    // The connector records the trace context of every call it gets.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let recording = seen.clone();
    let sim = Sim::serve(
        router(SimConfig::default()).layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let recording = recording.clone();
                async move {
                    if let Some(tp) = request.headers().get("traceparent") {
                        recording
                            .lock()
                            .unwrap()
                            .push(tp.to_str().unwrap().to_string());
                    }
                    let response: Response = next.run(request).await;
                    response
                }
            },
        )),
    )
    .await;
    let db = Arc::new(TestDb::new(backend).await);
    let log = db.dir().join("server.log");
    let mut flags = connectors(&db, &sim, "");
    flags.extend(["--log-format".into(), "json".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let app = TestApp::spawn_configured(
        db.clone(),
        &flags,
        &exporting_to(&collector.endpoint),
        Some(&log),
    )
    .await;
    let crew = Crew::new(&app);

    // A caller's request, in the caller's trace.
    let (traceparent, trace, parent) = caller();
    let created = create_in(&app, &crew.requester, &traceparent, "7zip").await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.id();

    // Request, command and append are one trace, each the child of the one before, under the
    // caller's span.
    let spans = collector
        .until(
            &trace,
            &["POST /api/v1/deployments", "command create", "store.append"],
        )
        .await;
    let request = named(&spans, "POST /api/v1/deployments");
    assert_eq!(request.service, "eucora");
    assert_eq!(
        request.parent, parent,
        "the request continues the caller's span"
    );
    assert_eq!(request.kind, 2, "a server span");
    assert_eq!(request.attributes["http.route"], "/api/v1/deployments");
    assert_eq!(request.attributes["http.response.status_code"], "201");
    let command = named(&spans, "command create");
    assert_eq!(command.parent, request.span_id);
    assert_eq!(command.attributes["deployment_id"], id);
    let append = named(&spans, "store.append");
    assert_eq!(append.parent, command.span_id);
    assert_eq!(append.kind, 3, "a client span");
    assert_eq!(append.attributes["outcome"], "ok");

    // From the event to its trace: the trace id is in its metadata, as the API serves it.
    let history = app
        .get(&format!("/api/v1/deployments/{id}/events"), &crew.auditor)
        .await;
    let events = history.body["events"].as_array().unwrap();
    assert_eq!(events[0]["event_type"], "DeploymentCreated");
    assert_eq!(events[0]["trace_id"], trace.as_str());
    let created_row = in_stream(&app, &crew.auditor, |e| e["deployment_id"] == id.as_str()).await;
    assert_eq!(created_row["trace_id"], trace.as_str());
    // The command line prints it too.
    let (ok, out, err) = eucora(&["events", "--deployment", &id, "--database-url", &db.url]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .next()
            .unwrap()
            .contains(&format!("trace {trace}")),
        "{out}"
    );

    // The dispatcher publishes the approved intent in the caller's trace too: the dispatch is the
    // command's child (through the traceparent in the event's metadata and the outbox), each
    // call to the connector the dispatch's child, and the connector received the call's context.
    let command_span = command.span_id.clone();
    let spans = collector
        .until(&trace, &["dispatch publish", "intune publish"])
        .await;
    let dispatch = named(&spans, "dispatch publish");
    assert_eq!(
        dispatch.parent, command_span,
        "the dispatch continues the command"
    );
    let call = named(&spans, "intune publish");
    assert_eq!(
        call.parent, dispatch.span_id,
        "the call is the dispatch's child"
    );
    assert_eq!(call.kind, 3, "a client span");
    assert_eq!(call.attributes["connector_type"], "intune");
    assert!(
        seen.lock()
            .unwrap()
            .contains(&format!("00-{}-{}-01", call.trace_id, call.span_id)),
        "the connector never got the call's traceparent: {:?}",
        seen.lock().unwrap()
    );

    // A log line inside a request carries the trace id beside the correlation id.
    let admin = app.token("root", "admin");
    let victim = app.token("mallory", "requester");
    let listed = app.get("/api/v1/principals", &admin).await;
    let victim_id = listed.body["principals"]
        .as_array()
        .or_else(|| listed.body.as_array())
        .unwrap()
        .iter()
        .find(|p| p["subject"] == "mallory")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (traceparent, trace, _) = caller();
    let revoked = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/principals/{victim_id}"),
            Some(&admin),
            &[
                ("traceparent", &traceparent),
                ("x-correlation-id", "revoke-mallory"),
            ],
            None,
        )
        .await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    assert_eq!(
        app.get("/api/v1/deployments", &victim).await.status,
        401,
        "revoked"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["fields"]["message"] == "principal revoked");
        if let Some(line) = found {
            break line;
        }
        assert!(Instant::now() < deadline, "no revocation logged:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["span"]["correlation_id"], "revoke-mallory", "{line}");
    assert_eq!(line["span"]["trace_id"], trace.as_str(), "{line}");
    // And the access event records the same trace, once the log has taken it.
    let revocation = in_stream(&app, &crew.auditor, |e| {
        e["event_type"] == "PrincipalRevoked"
    })
    .await;
    assert_eq!(revocation["trace_id"], trace.as_str());
}

/// The first event of `GET /api/v1/events` that `wanted` picks, once the log has taken it.
async fn in_stream(app: &TestApp, auditor: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let global = app.get("/api/v1/events?limit=1000", auditor).await;
        let events = global.body["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(event) = events.into_iter().find(|e| wanted(e)) {
            return event;
        }
        assert!(Instant::now() < deadline, "not in the stream: {global:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn an_unreachable_collector_fails_no_request(backend: Backend) {
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let db = Arc::new(TestDb::new(backend).await);
    let app = TestApp::spawn_configured(db, &[], &exporting_to(&closed), None).await;
    let crew = Crew::new(&app);
    let mut ids = Vec::new();
    for n in 0..30 {
        let (traceparent, _, _) = caller();
        let reply = create_in(&app, &crew.requester, &traceparent, &format!("app-{n}")).await;
        assert_eq!(reply.status, 201, "{reply:?}");
        ids.push(reply.id());
    }
    for id in ids {
        assert_eq!(app.intent(&crew.auditor, &id).await.status, 200);
    }
}

#[test]
fn an_unsupported_otlp_protocol_is_refused_in_our_words() {
    let dir = std::env::temp_dir().join(format!("eucora-otlp-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("eucora.db").display());
    let mut child = std::process::Command::new(crate::helpers::binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("eucora serve started with an unsupported OTLP protocol");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported"),
        "{err}"
    );
}
