//! The API fuzzed from its own OpenAPI document with Schemathesis (installed by `.ci/setup`),
//! with a bounded budget and a fixed seed, so a run is repeatable: every answer is documented,
//! schema-invalid requests are refused, schema-valid ones are not refused as malformed, and
//! nothing answers 5xx.

use std::path::Path;
use std::process::Command;

use crate::helpers::{Backend, TestApp};

/// Where `.ci/setup` installs Schemathesis; `EUCORA_SCHEMATHESIS` names another `st`.
const ST: &str = "/opt/eucora-schemathesis/bin/st";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_the_openapi_document_does_not_say() {
    let st = std::env::var("EUCORA_SCHEMATHESIS").unwrap_or_else(|_| ST.to_string());
    assert!(
        Path::new(&st).exists(),
        "Schemathesis is not installed at {st}: run .ci/setup (it installs it from PyPI)"
    );
    // The fuzzer sends hundreds of requests without a valid token from one address: the limit on
    // failed authentications (tests/api/contract.rs) would answer them 429.
    let app = TestApp::spawn_with(Backend::Sqlite, &["--auth-failure-limit", "0"]).await;
    let token = app.token("fuzzer", "admin");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api/schemathesis.toml");
    let seed = std::env::var("EUCORA_FUZZ_SEED").unwrap_or_else(|_| "20261130".into());
    let base = app.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .current_dir(std::env::temp_dir())
            .arg("--config-file")
            .arg(config)
            .args(["run", &format!("{base}/api/v1/openapi.json")])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--checks", "all", "--max-examples", "40", "--seed", &seed])
            .args(["--no-color", "--request-timeout", "10"])
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .expect("run Schemathesis")
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Schemathesis found problems:\n{out}\n{err}"
    );
    let doc = app
        .send(
            reqwest::Method::GET,
            "/api/v1/openapi.json",
            None,
            &[],
            None,
        )
        .await;
    let operations: usize = doc.body["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert!(operations >= 15, "{operations} operations documented");
    assert!(
        out.contains(&format!("Tested: {operations}\n")),
        "not every one of the {operations} operations was fuzzed:\n{out}"
    );
}
