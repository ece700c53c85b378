//! The README's walk-through, run as written: a newcomer's first intent from request to GLOBAL
//! through the command line, against a server on the policy the README names.

use std::process::{Command, Stdio};

use crate::helpers::{binary, Backend, Crew, TestApp};

/// The shell block after the walk-through marker, without its `cargo build` line (the test
/// binary is already built and first on PATH).
fn walkthrough() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (_, after) = readme
        .split_once("<!-- walkthrough: run as written by tests/api/readme.rs -->")
        .expect("the README marks its walk-through");
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a shell block follows the marker")
        .0;
    block
        .lines()
        .filter(|l| !l.starts_with("cargo build"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walks_one_intent_from_request_to_global() {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/demo-policy.toml");
    let app = TestApp::spawn_with(Backend::Sqlite, &["--policy", policy]).await;
    let auditor = Crew::new(&app).auditor;
    let bin_dir = std::path::Path::new(binary()).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (base, db) = (app.base.clone(), app.db.url.clone());
    let script = walkthrough();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            // Not the repository: no ./target/release binary of another build comes first.
            .current_dir(std::env::temp_dir())
            .env("PATH", path)
            .env("EUCORA_SERVER", base)
            // A login shell's: `eucora token create` records who granted each token.
            .env("USER", "readme-reader")
            .env("EUCORA_DATABASE_URL", db)
            .env_remove("EUCORA_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the walk-through failed:\n{out}\n{err}"
    );
    assert!(
        out.contains("approver of record carol, by the CAB"),
        "{out}"
    );
    assert!(
        out.trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.contains("compliant in its target ring GLOBAL")),
        "{out}"
    );
    let listed = app
        .list_until(&auditor, "?status=completed&ring=GLOBAL", 1)
        .await;
    assert_eq!(listed.body["items"][0]["app_name"], "7-Zip");
    assert_eq!(listed.body["items"][0]["requires_cab"], true);
}
