//! Compliance evidence as an auditor takes it away: a bundle from the API or the command line,
//! verified offline, and every way of tampering with it refused with its own reason.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use eucora::checkpoints::SigningKey;
use eucora::evidence::{pae, verify, EventRecord, Format, FILES, MANIFEST};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{eucora, eucora_with, intent_body, Backend, Crew, TestApp, TestDb};

crate::on_both_backends!(
    a_period_bundle_verifies_and_every_tampering_is_refused_with_its_own_reason,
    a_deployment_bundle_from_the_command_line_verifies_offline,
    a_period_judges_changes_carried_over_into_it_on_their_whole_history,
    an_intact_bundle_whose_controls_fail_verifies_with_exit_status_3,
    an_auditor_fetches_over_the_api_and_checks_against_a_checkpoint_they_kept,
    a_deployment_bundle_proves_it_holds_every_event_and_an_unknown_id_is_proved_absent,
    a_periods_bundle_shows_the_policy_in_force_and_every_refused_command,
    a_deployment_whose_events_lie_tiles_apart_exports_from_its_own_events,
);

/// A server on the embedded default (SQLite: a key beside the file) or with a key made by
/// `eucora key generate` (PostgreSQL); returns it, the key file and the verifier key.
async fn server(backend: Backend) -> (TestApp, std::path::PathBuf, String) {
    server_with(backend, &[]).await
}

/// [`server`] with more arguments for `eucora serve`.
async fn server_with(backend: Backend, more: &[&str]) -> (TestApp, std::path::PathBuf, String) {
    let db = Arc::new(TestDb::new(backend).await);
    let key = db.dir().join("log.key");
    let (ok, out, err) = eucora(&["key", "generate", "--out", key.to_str().unwrap()]);
    assert!(ok, "{err}");
    let dir = db.dir().join("checkpoints");
    let mut args = vec![
        "--signing-key-file",
        key.to_str().unwrap(),
        "--checkpoint-dir",
        dir.to_str().unwrap(),
        "--checkpoint-interval",
        "1s",
    ];
    args.extend_from_slice(more);
    let app = TestApp::spawn_on(db.clone(), &args).await;
    (app, key, out.trim().to_string())
}

/// Traffic that exercises the controls: a CAB approval and a promotion, an emergency change.
async fn traffic(app: &TestApp, crew: &Crew) -> String {
    let id = app
        .create(&crew.requester, intent_body("Firefox", 0.8, "CANARY"))
        .await
        .id();
    app.approve(&crew.approver, &id).await;
    app.deploy(&crew.deployer, &id, "LAB", 10, 10).await;
    assert_eq!(app.promote(&crew.deployer, &id).await.status, 200);
    app.deploy(&crew.deployer, &id, "CANARY", 10, 10).await;
    let mut emergency = intent_body("Sysmon", 0.6, "CANARY");
    emergency["change_type"] = json!("emergency");
    emergency["privileged_tooling"] = json!(true);
    let e = app.create(&crew.requester, emergency).await.id();
    app.deploy(&crew.deployer, &e, "LAB", 10, 10).await;
    app.create(&crew.requester, intent_body("7-Zip", 0.2, "GLOBAL"))
        .await;
    id
}

/// Waits until the served checkpoint covers every stored event.
async fn signed_through(app: &TestApp, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = app.event_count().await;
        let reply = app.get("/api/v1/checkpoint", token).await;
        if let Some(size) = reply
            .body
            .as_str()
            .and_then(|n| n.lines().nth(1))
            .and_then(|l| l.parse::<i64>().ok())
        {
            if size == events {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the checkpoint never covered the {events} events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A bundle from the API, as the auditor downloads it (checks the media type).
async fn fetch(app: &TestApp, path: &str, token: &str) -> Vec<u8> {
    let reply = reqwest::Client::new()
        .get(format!("{}{path}", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200, "{path}");
    assert_eq!(reply.headers()["content-type"], "application/gzip");
    reply.bytes().await.unwrap().to_vec()
}

/// One deployment's evidence bundle, as `token` downloads it.
async fn deployment_bundle(app: &TestApp, id: &str, token: &str) -> Vec<u8> {
    fetch(app, &format!("/api/v1/deployments/{id}/evidence"), token).await
}

fn unpack(bundle: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(bundle));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

/// Packs files into a bundle; with a key, writes a fresh manifest over them first (as an insider
/// holding the key would, counting the events it holds), so the checks behind the manifest are
/// reached.
fn repack(files: BTreeMap<String, Vec<u8>>, resign: Option<&SigningKey>) -> Vec<u8> {
    let held = lines(&files["events.jsonl"]).len();
    repack_with(files, resign, |statement| {
        statement["predicate"]["events"] = json!(held)
    })
}

/// [`repack`], changing the signed statement as `edit` says.
fn repack_with(
    mut files: BTreeMap<String, Vec<u8>>,
    resign: Option<&SigningKey>,
    edit: impl FnOnce(&mut Value),
) -> Vec<u8> {
    if let Some(key) = resign {
        let subjects: Vec<Value> = FILES
            .iter()
            .map(|n| json!({"name": n, "digest": {"sha256": hex::encode(Sha256::digest(&files[*n]))}}))
            .collect();
        let manifest: Value = serde_json::from_slice(&files[MANIFEST]).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut statement: Value =
            serde_json::from_slice(&b64.decode(manifest["payload"].as_str().unwrap()).unwrap())
                .unwrap();
        statement["subject"] = Value::Array(subjects);
        edit(&mut statement);
        let payload = serde_json::to_vec(&statement).unwrap();
        let sig = key
            .sign(&pae("application/vnd.in-toto+json", &payload))
            .unwrap();
        let envelope = json!({
            "payloadType": "application/vnd.in-toto+json",
            "payload": b64.encode(&payload),
            "signatures": [{"keyid": key.verifier_key(), "sig": b64.encode(sig)}],
        });
        files.insert(MANIFEST.into(), serde_json::to_vec(&envelope).unwrap());
    }
    let mut out = Vec::new();
    {
        let gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, data) in &files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, &data[..]).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }
    out
}

/// What an insider holding the key recomputes after editing a bundle's events: the controls,
/// the population and the report, from the events left (as the exporter would have written them).
fn rederive(files: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    rederive_as(files, Format::CURRENT)
}

/// [`rederive`], as a release writing `format` would have.
fn rederive_as(mut files: BTreeMap<String, Vec<u8>>, format: Format) -> BTreeMap<String, Vec<u8>> {
    let bundle = eucora::evidence::read_bundle(&repack(files.clone(), None)[..]).unwrap();
    let claims = bundle.claims().unwrap();
    let derived = eucora::evidence::derive(
        format,
        &claims.scope,
        claims.as_of.unwrap(),
        claims.tree_size,
        bundle.population(),
    )
    .unwrap();
    files.insert("controls.json".into(), derived.controls_json);
    files.insert("changes.csv".into(), derived.changes_csv);
    files.insert("REPORT.html".into(), derived.report_html);
    files
}

/// `eucora evidence verify FILE --key KEY [--previous-checkpoint PREVIOUS]`, as an auditor runs
/// it: (exit code, stdout, stderr).
fn verify_cli(
    file: &std::path::Path,
    key: &std::path::Path,
    previous: Option<&std::path::Path>,
) -> (i32, String, String) {
    let mut args = vec![
        "evidence",
        "verify",
        file.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    if let Some(previous) = previous {
        args.extend(["--previous-checkpoint", previous.to_str().unwrap()]);
    }
    eucora_with(None, &args, "")
}

fn lines(data: &[u8]) -> Vec<String> {
    String::from_utf8(data.to_vec())
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn joined(lines: &[String]) -> Vec<u8> {
    let mut out = lines.join("\n").into_bytes();
    out.push(b'\n');
    out
}

async fn a_period_bundle_verifies_and_every_tampering_is_refused_with_its_own_reason(
    backend: Backend,
) {
    let (app, key_file, verifier) = server(backend).await;
    let crew = Crew::new(&app);
    let firefox_id = traffic(&app, &crew).await;
    signed_through(&app, &crew.auditor).await;
    let period = "/api/v1/evidence?from=2020-01-01T00:00:00Z&to=2099-01-01T00:00:00Z";
    app.get(period, &crew.requester).await.assert_problem(403);
    let bundle = fetch(&app, period, &crew.auditor).await;

    // As exported, it verifies, with the controls it claims.
    let verified = verify(&bundle[..], &verifier, None).unwrap();
    assert_eq!(verified.events as i64, app.event_count().await);
    assert_eq!(verified.intents, 3);
    let files = unpack(&bundle);
    // Every entry is dated when the bundle was written, not 1970, and they come in the
    // documented order (each compressed apart, two at a time, then joined in order).
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(&bundle[..]));
    let now = chrono::Utc::now().timestamp() as u64;
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let mtime = entry.header().mtime().unwrap();
        assert!(
            now.abs_diff(mtime) < 120,
            "an entry dated {mtime}, now is {now}"
        );
        names.push(entry.path().unwrap().to_string_lossy().into_owned());
    }
    let documented: Vec<&str> = eucora::evidence::FILES
        .into_iter()
        .chain([eucora::evidence::MANIFEST])
        .collect();
    assert_eq!(names, documented);
    let controls: Value = serde_json::from_slice(&files["controls.json"]).unwrap();
    // Each intent's verdicts, by app: the CAB-approved, promoted, completed Firefox passes every
    // control that applies to it; the emergency change deployed without a retrospective review
    // is open: its 48-hour review window has not passed (a failure only once it has).
    let verdicts: BTreeMap<String, BTreeMap<String, String>> = controls["intents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let id = i["deployment_id"].as_str().unwrap().to_string();
            let by_control = i["controls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["control"].as_str().unwrap().into(),
                        c["verdict"].as_str().unwrap().into(),
                    )
                })
                .collect();
            (id, by_control)
        })
        .collect();
    let firefox = &verdicts[&firefox_id];
    assert!(
        firefox
            .values()
            .all(|v| v == "pass" || v == "not_applicable")
            && firefox["promotion_after_passed_gates"] == "pass"
            && firefox["cab_approval_where_required"] == "pass",
        "{firefox:?}"
    );
    let emergency = verdicts
        .values()
        .find(|v| v["emergency_retro_review"] != "not_applicable")
        .expect("the emergency change is in the population");
    assert_eq!(emergency["emergency_retro_review"], "open", "{emergency:?}");
    assert_eq!(
        emergency["cab_approval_where_required"], "open",
        "{emergency:?}"
    );
    assert_eq!(controls["population_complete"]["verdict"], "pass");
    let csv = String::from_utf8(files["changes.csv"].clone()).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(
        csv.contains(",Firefox,") && csv.contains(",compliant,"),
        "{csv}"
    );

    let key = SigningKey::load(&key_file).unwrap();
    let events = lines(&files["events.jsonl"]);
    let refused = |changed: BTreeMap<String, Vec<u8>>, resign: bool| -> String {
        verify(
            &repack(changed, resign.then_some(&key))[..],
            &verifier,
            None,
        )
        .unwrap_err()
        .to_string()
    };
    let with = |name: &str, data: Vec<u8>| {
        let mut f = files.clone();
        f.insert(name.into(), data);
        f
    };

    // What each change cost ends its row (evidence/v3), in the policy's currency.
    let header = csv.lines().next().unwrap();
    assert!(
        header.ends_with(",leaves,cost_currency,cost_total"),
        "{header}"
    );
    let firefox = csv.lines().find(|l| l.contains(",Firefox,")).unwrap();
    let total: f64 = firefox.rsplit(',').next().unwrap().parse().unwrap();
    assert!(firefox.contains(",EUR,") && total > 0.0, "{firefox}");
    // A bundle of the release before (evidence/v2: no cost columns) still verifies as written;
    // the same changes.csv under today's predicate is refused.
    let without_cost: String = csv
        .lines()
        .map(|l| format!("{}\r\n", l.rsplitn(3, ',').nth(2).unwrap()))
        .collect();
    // Before evidence/v4, events.jsonl held the stored texts as strings.
    let as_strings = |lines: &[String]| -> Vec<u8> {
        let records = lines.iter().map(|l| EventRecord::from_line(l).unwrap());
        joined(
            &records
                .map(|r| serde_json::to_string(&r).unwrap())
                .collect::<Vec<_>>(),
        )
    };
    let mut old = with("changes.csv", without_cost.into_bytes());
    old.insert("events.jsonl".into(), as_strings(&events));
    // As that release wrote it: the same changes.csv, its report of every change.
    let v2_files = rederive_as(old.clone(), Format::V2);
    assert_eq!(v2_files["changes.csv"], old["changes.csv"]);
    let v2 = repack_with(v2_files, Some(&key), |s| {
        s["predicateType"] = json!("https://eucora.dev/evidence/v2");
        s["predicate"]["events"] = json!(events.len());
    });
    verify(&v2[..], &verifier, None).expect("an evidence/v2 bundle verifies");
    let why = refused(old, true);
    assert!(why.contains("changes.csv does not match"), "{why}");

    // evidence/v4 holds each payload and metadata as the JSON value stored, not as a string.
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert!(
        first["payload"].is_object() && first["metadata"].is_object(),
        "{first}"
    );
    // A bundle of the release before (evidence/v3: the texts as strings) still verifies, with
    // the same controls; v4's lines under v3's predicate are refused.
    let as_v3 = |events: Vec<u8>| {
        let v3_files = rederive_as(with("events.jsonl", events), Format::V3);
        repack_with(v3_files, Some(&key), |s| {
            s["predicateType"] = json!("https://eucora.dev/evidence/v3");
        })
    };
    let v3 = verify(&as_v3(as_strings(&events))[..], &verifier, None).expect("v3 verifies");
    let v5 = verify(&repack(files.clone(), Some(&key))[..], &verifier, None).unwrap();
    assert_eq!((v3.events, &v3.controls), (v5.events, &v5.controls));
    let why = verify(&as_v3(files["events.jsonl"].clone())[..], &verifier, None)
        .unwrap_err()
        .to_string();
    assert!(
        why.contains("holds its payload or metadata as a JSON value"),
        "{why}"
    );
    // evidence/v5 is lean: controls.json holds each intent on a line of its own, and the report
    // gives a trail only for a change with a control failing or open (the emergency change's
    // review is open, 7-Zip's rollout has not begun), not for Firefox, which passes.
    let text = String::from_utf8(files["controls.json"].clone()).unwrap();
    let intent_lines = text
        .lines()
        .filter(|l| l.starts_with("{\"deployment_id\":"))
        .count();
    assert_eq!(intent_lines, 3, "{text}");
    let section = |report: &[u8], id: &str| {
        String::from_utf8_lossy(report).contains(&format!("<section id=\"c-{id}\">"))
    };
    let mut passing = 0;
    for (id, v) in &verdicts {
        let passes = v.values().all(|v| v == "pass" || v == "not_applicable");
        passing += usize::from(passes);
        assert_eq!(section(&files["REPORT.html"], id), !passes, "{id}: {v:?}");
    }
    assert!(!section(&files["REPORT.html"], &firefox_id));
    assert!(
        String::from_utf8_lossy(&files["REPORT.html"]).contains(&format!(
            "Changes that pass every control that applies to them, not shown here: {passing} ("
        ))
    );
    // A bundle of the release before (evidence/v4: every change's trail in the report,
    // controls.json pretty-printed) still verifies, with the same controls; v5's report under
    // v4's predicate is refused.
    let as_v4 = |files: BTreeMap<String, Vec<u8>>| {
        repack_with(files, Some(&key), |s| {
            s["predicateType"] = json!("https://eucora.dev/evidence/v4");
        })
    };
    let v4_files = rederive_as(files.clone(), Format::V4);
    assert!(section(&v4_files["REPORT.html"], &firefox_id));
    assert!(v4_files["controls.json"].len() > files["controls.json"].len());
    let v4 = verify(&as_v4(v4_files)[..], &verifier, None).expect("v4 verifies");
    assert_eq!(v4.controls, v5.controls);
    let why = verify(&as_v4(files.clone())[..], &verifier, None)
        .unwrap_err()
        .to_string();
    assert!(why.contains("REPORT.html does not match"), "{why}");
    // The value's bytes are the stored bytes: a payload re-spaced no longer verifies.
    let mut spaced = events.clone();
    spaced[0] = spaced[0].replacen("\"payload\":{\"", "\"payload\":{ \"", 1);
    assert_ne!(spaced[0], events[0]);
    let why = refused(with("events.jsonl", joined(&spaced)), true);
    assert!(why.contains("an event was edited"), "{why}");

    // One event line edited: its leaf no longer matches the signed tree.
    let mut edited = events.clone();
    let at = events
        .iter()
        .position(|l| l.contains("\"ops-bot\""))
        .unwrap();
    edited[at] = edited[at].replacen("\"ops-bot\"", "\"mallory\"", 1);
    assert_ne!(edited[at], events[at]);
    let why = refused(with("events.jsonl", joined(&edited)), true);
    assert!(why.contains("an event was edited"), "{why}");
    // Without the key the edit is caught sooner: the manifest no longer matches.
    let why = refused(with("events.jsonl", joined(&edited)), false);
    assert!(
        why.contains("events.jsonl does not match its SHA-256"),
        "{why}"
    );
    // One dropped.
    let mut dropped = events.clone();
    dropped.remove(3);
    let why = refused(with("events.jsonl", joined(&dropped)), true);
    assert!(
        why.contains("leaf 3 is missing: an event was dropped"),
        "{why}"
    );
    // Two swapped.
    let mut swapped = events.clone();
    swapped.swap(1, 2);
    let why = refused(with("events.jsonl", joined(&swapped)), true);
    assert!(why.contains("they were reordered"), "{why}");
    // One inserted (a copy of a real event).
    let mut inserted = events.clone();
    inserted.insert(4, events[3].clone());
    let why = refused(with("events.jsonl", joined(&inserted)), true);
    assert!(why.contains("an event was inserted"), "{why}");
    // The tail truncated.
    let why = refused(
        with("events.jsonl", joined(&events[..events.len() - 2])),
        true,
    );
    assert!(why.contains("the bundle was truncated"), "{why}");
    // The period's last event dropped, the range shortened and its proof recomputed under the
    // genuine checkpoint: the range no longer reaches the checkpoint's end, and the event after
    // it is missing, or, when shown, stamped inside the period.
    let records: Vec<EventRecord> = events
        .iter()
        .map(|l| EventRecord::from_line(l).unwrap())
        .collect();
    let leaves: Vec<[u8; 32]> = records.iter().map(|r| r.leaf()).collect();
    let size = leaves.len() as u64;
    let mut proof: Value = serde_json::from_slice(&files["proof.json"]).unwrap();
    assert_eq!(proof["tree_size"], size, "the bundle holds the whole log");
    let b64 = base64::engine::general_purpose::STANDARD;
    let hashes = |h: Vec<[u8; 32]>| -> Vec<String> { h.iter().map(|h| b64.encode(h)).collect() };
    let shorter = eucora_projections::merkle::range_proof(&leaves[..], 0, size - 1, size).unwrap();
    proof["range"]["end"] = json!(size - 1);
    proof["range"]["hashes"] = json!(hashes(shorter));
    let mut shortened = with("events.jsonl", joined(&events[..events.len() - 1]));
    shortened.insert("proof.json".into(), serde_json::to_vec(&proof).unwrap());
    let why = refused(shortened.clone(), true);
    assert!(
        why.contains(&format!(
            "does not prove leaf {}, the event after the range",
            size - 1
        )),
        "{why}"
    );
    let last = eucora_projections::merkle::inclusion_proof(&leaves[..], size - 1, size).unwrap();
    proof["boundaries"]["after"] =
        json!({"event": records[records.len() - 1], "hashes": hashes(last)});
    shortened.insert("proof.json".into(), serde_json::to_vec(&proof).unwrap());
    let why = refused(shortened, true);
    assert!(
        why.contains("is stamped") && why.contains("before the period's end"),
        "{why}"
    );
    // The signed predicate's count of events changed.
    let why = verify(
        &repack_with(files.clone(), Some(&key), |s| {
            s["predicate"]["events"] = json!(events.len() + 1)
        })[..],
        &verifier,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(why.contains("the predicate counts"), "{why}");
    // An extra event appended past the range: named as such.
    let mut extra = events.clone();
    let mut beyond: Value = serde_json::from_str(&events[events.len() - 1]).unwrap();
    beyond["index"] = json!(size);
    extra.push(beyond.to_string());
    let why = refused(with("events.jsonl", joined(&extra)), true);
    assert!(why.contains("an event beyond the proved range"), "{why}");
    // controls.json edited.
    let forged = String::from_utf8(files["controls.json"].clone())
        .unwrap()
        .replacen("\"open\"", "\"pass\"", 1);
    let why = refused(with("controls.json", forged.into_bytes()), true);
    assert!(why.contains("controls.json does not match"), "{why}");
    // The manifest swapped for another bundle's (one deployment's).
    let other_id = traffic(&app, &crew).await;
    signed_through(&app, &crew.auditor).await;
    let other_bundle = deployment_bundle(&app, &other_id, &crew.auditor).await;
    verify(&other_bundle[..], &verifier, None).unwrap();
    let why = refused(
        with(MANIFEST, unpack(&other_bundle)[MANIFEST].clone()),
        false,
    );
    assert!(
        why.contains("does not match its SHA-256 in the manifest"),
        "{why}"
    );
    // A forged signature.
    let mut manifest: Value = serde_json::from_slice(&files[MANIFEST]).unwrap();
    manifest["signatures"][0]["sig"] =
        json!(base64::engine::general_purpose::STANDARD.encode([7u8; 64]));
    let why = refused(
        with(MANIFEST, serde_json::to_vec(&manifest).unwrap()),
        false,
    );
    assert!(
        why.contains("signature does not verify with this key"),
        "{why}"
    );
    // A checkpoint signed by another key.
    let stranger_file =
        std::env::temp_dir().join(format!("eucora-stranger-{}", uuid::Uuid::new_v4()));
    let stranger = SigningKey::create(&stranger_file, "eucora").unwrap();
    let _ = std::fs::remove_file(&stranger_file);
    let note = String::from_utf8(files["checkpoint"].clone()).unwrap();
    let opened = eucora::checkpoints::open_checkpoint(&note, &verifier).unwrap();
    let foreign = stranger
        .sign_checkpoint(opened.size, &opened.root, &opened.heads.unwrap())
        .unwrap();
    let why = refused(with("checkpoint", foreign.into_bytes()), true);
    assert!(
        why.contains("the checkpoint") && why.contains("does not verify"),
        "{why}"
    );
    // Checked with another key than the one that signed it, the untouched bundle is refused.
    let why = verify(&bundle[..], stranger.verifier_key(), None)
        .unwrap_err()
        .to_string();
    assert!(
        why.contains("manifest's signature does not verify"),
        "{why}"
    );
}

async fn a_deployment_bundle_from_the_command_line_verifies_offline(backend: Backend) {
    let (app, key_file, verifier) = server(backend).await;
    let crew = Crew::new(&app);
    let id = traffic(&app, &crew).await;
    signed_through(&app, &crew.auditor).await;
    let dir = app.db.dir().to_path_buf();
    let out = dir.join("bundle.tar.gz");
    let export = || {
        eucora_with(
            None,
            &[
                "evidence",
                "export",
                "--database-url",
                &app.db.url,
                "--signing-key-file",
                key_file.to_str().unwrap(),
                "--deployment",
                &id,
                "--out",
                out.to_str().unwrap(),
            ],
            "",
        )
    };
    let (code, said, err) = export();
    assert_eq!(code, 0, "{err}");
    assert!(
        said.contains("wrote") && said.contains("7 events of 1 intents"),
        "{said}"
    );
    let key_line = dir.join("verifier");
    std::fs::write(&key_line, &verifier).unwrap();
    let (code, said, err) = verify_cli(&out, &key_line, None);
    assert_eq!(code, 0, "{said}{err}");
    assert!(
        said.starts_with("verified: 7 events of 1 intents"),
        "{said}"
    );
    let files = unpack(&std::fs::read(&out).unwrap());
    let controls: Value = serde_json::from_slice(&files["controls.json"]).unwrap();
    let all: Vec<(String, String)> = controls["intents"][0]["controls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["control"].as_str().unwrap().into(),
                c["verdict"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (control, expected) in [
        ("approval_before_deployment", "pass"),
        ("requester_not_approver", "pass"),
        ("cab_approval_where_required", "pass"),
        ("emergency_retro_review", "not_applicable"),
        ("promotion_after_passed_gates", "pass"),
        ("rollback_validated_outside_lab", "pass"),
        ("completion_after_compliance", "pass"),
    ] {
        assert!(
            all.contains(&(control.to_string(), expected.to_string())),
            "{control}: {all:?}"
        );
    }
    // Another key: refused, with the reason, exit 1; the file exists already: refused too.
    let stranger = dir.join("stranger");
    std::fs::write(&stranger, "eucora+00000000+AQ==").unwrap();
    let (code, _, err) = verify_cli(&out, &stranger, None);
    assert_eq!(code, 1);
    assert!(err.contains("does not verify"), "{err}");
    let (code, _, err) = export();
    assert_eq!(code, 1);
    assert!(err.contains("cannot create"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_checkpoint_exposes_a_history_rewritten_and_re_signed() {
    let backend = Backend::Sqlite;
    let (app, key_file, verifier) = server(backend).await;
    let crew = Crew::new(&app);
    for n in 0..3 {
        app.create(
            &crew.requester,
            intent_body(&format!("a{n}"), 0.2, "GLOBAL"),
        )
        .await;
    }
    signed_through(&app, &crew.auditor).await;
    // The auditor keeps this checkpoint.
    let kept = app.get("/api/v1/checkpoint", &crew.auditor).await.body;
    let dir = app.db.dir().to_path_buf();
    let kept_file = dir.join("kept.checkpoint");
    std::fs::write(&kept_file, kept.as_str().unwrap()).unwrap();
    let db = app.db.clone();
    drop(app);

    // An insider with the database and the key: edits an event, rebuilds the log, removes every
    // checkpoint (in and outside the database), and lets the server sign the new history.
    crate::log::as_insider(
        &db,
        backend,
        &[
            crate::log::edit(backend),
            "DELETE FROM log_tiles",
            "DROP TRIGGER IF EXISTS log_checkpoints_refuse_delete",
            "DELETE FROM log_checkpoints",
        ],
    )
    .await;
    std::fs::remove_dir_all(dir.join("checkpoints")).unwrap();
    let (ok, out, err) = eucora(&["replay", "--database-url", &db.url]);
    assert!(ok, "{out}{err}");
    let app = TestApp::spawn_on(
        db.clone(),
        &[
            "--signing-key-file",
            key_file.to_str().unwrap(),
            "--checkpoint-dir",
            dir.join("checkpoints").to_str().unwrap(),
            "--checkpoint-interval",
            "1s",
        ],
    )
    .await;
    signed_through(&app, &crew.auditor).await;
    let out = dir.join("rewritten.tar.gz");
    let (code, _, err) = eucora_with(
        None,
        &[
            "evidence",
            "export",
            "--database-url",
            &db.url,
            "--signing-key-file",
            key_file.to_str().unwrap(),
            "--from",
            "2020-01-01T00:00:00Z",
            "--to",
            "2099-01-01T00:00:00Z",
            "--out",
            out.to_str().unwrap(),
            "--previous-checkpoint",
            kept_file.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let bundle = std::fs::read(&out).unwrap();
    // Alone, the re-signed bundle verifies: it agrees with itself.
    verify(&bundle[..], &verifier, None).unwrap();
    // Against the checkpoint the auditor kept, it does not.
    let why = verify(&bundle[..], &verifier, Some(kept.as_str().unwrap()))
        .unwrap_err()
        .to_string();
    assert!(
        why.contains("does not extend your earlier checkpoint"),
        "{why}"
    );
    let key_line = dir.join("verifier");
    std::fs::write(&key_line, &verifier).unwrap();
    let (code, _, err) = verify_cli(&out, &key_line, Some(&kept_file));
    assert_eq!(code, 1);
    assert!(err.contains("its history was rewritten"), "{err}");
}

/// The rows of `changes.csv`, each by column name.
fn csv_rows(csv: &[u8]) -> Vec<BTreeMap<String, String>> {
    let text = String::from_utf8(csv.to_vec()).unwrap();
    assert!(text.ends_with("\r\n"), "RFC 4180 lines end in CRLF");
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(String::from))
                .collect()
        })
        .collect()
}

/// A quarter's bundle starts after some changes began: one awaiting the CAB with nothing in the
/// period, one CAB-approved before it and deployed in it, one rejected and closed before it. The
/// first two are judged on their whole history (their earlier events come with inclusion
/// proofs); the closed one is not in the population.
async fn a_period_judges_changes_carried_over_into_it_on_their_whole_history(backend: Backend) {
    let (app, _key, verifier) = server(backend).await;
    let crew = Crew::new(&app);
    let mut waiting = intent_body("Zoom", 0.8, "GLOBAL");
    waiting["change_ref"] = json!("CHG0031337<b>");
    let waiting = app.create(&crew.requester, waiting).await.id();
    let approved = app
        .create(&crew.requester, intent_body("Firefox", 0.8, "CANARY"))
        .await
        .id();
    app.approve(&crew.approver, &approved).await;
    let closed = app
        .create(&crew.requester, intent_body("Slack", 0.8, "CANARY"))
        .await
        .id();
    app.reject(&crew.approver, &closed, "CAB: no business case")
        .await;
    // Closed before the period, with a connector's finding recorded in it.
    let drifted = app
        .create(&crew.requester, intent_body("Teams", 0.8, "CANARY"))
        .await
        .id();
    app.reject(&crew.approver, &drifted, "CAB: duplicate").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let from = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.deploy(&crew.deployer, &approved, "LAB", 10, 10).await;
    record_drift(&app, &drifted).await;
    signed_through(&app, &crew.auditor).await;

    let path = format!("/api/v1/evidence?from={from}&to=2099-01-01T00:00:00Z");
    let bundle = fetch(&app, &path, &crew.auditor).await;
    let verified = verify(&bundle[..], &verifier, None).unwrap();
    assert_eq!(
        verified.intents, 3,
        "the open one, the one deployed in the period, and the one with drift in it"
    );
    let files = unpack(&bundle);
    let rows = csv_rows(&files["changes.csv"]);
    let row = |id: &str| rows.iter().find(|r| r["deployment_id"] == id).cloned();
    assert!(
        row(&closed).is_none(),
        "closed before the period: not in it"
    );
    let waiting_row = row(&waiting).expect("open at the start: carried over");
    assert_eq!(
        (
            waiting_row["app_name"].as_str(),
            waiting_row["change_ref"].as_str(),
            waiting_row["outcome"].as_str()
        ),
        ("Zoom", "CHG0031337<b>", "in_progress")
    );
    // The report: a section per change, every text as text, no script.
    let report = String::from_utf8(files["REPORT.html"].clone()).unwrap();
    assert!(
        report.contains(&format!("<section id=\"c-{waiting}\">")),
        "{report}"
    );
    assert!(report.contains("CHG0031337&lt;b&gt;") && !report.contains("CHG0031337<b>"));
    assert!(
        !report.contains("<script") && !report.contains("src=") && !report.contains("href=\"http")
    );
    assert!(!waiting_row["requested_at"].is_empty() && !waiting_row["requester"].is_empty());
    // An event in the period that is not its intent's first brings the intent's whole history,
    // though it was closed before the period.
    let drifted_row = row(&drifted).expect("an event in the period");
    assert_eq!(
        (
            drifted_row["app_name"].as_str(),
            drifted_row["cab_decision"].as_str()
        ),
        ("Teams", "rejected")
    );
    let approved_row = row(&approved).unwrap();
    assert_eq!(approved_row["cab_decision"], "approved");
    assert_eq!(approved_row["cab_decided_by"], "carol");
    assert_eq!(approved_row["last_ring"], "LAB");

    // Every control judged the whole intent: the awaiting change is not failed for lacking the
    // CAB, and the deployed one passes the approval controls on its earlier approval.
    let controls: Value = serde_json::from_slice(&files["controls.json"]).unwrap();
    let verdict = |id: &str, control: &str| -> String {
        controls["intents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["deployment_id"] == id)
            .unwrap()["controls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["control"] == control)
            .unwrap()["verdict"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        verdict(&waiting, "cab_approval_where_required"),
        "not_applicable"
    );
    assert_eq!(verdict(&waiting, "completion_after_compliance"), "open");
    assert_eq!(verdict(&approved, "approval_before_deployment"), "pass");
    assert_eq!(verdict(&approved, "cab_approval_where_required"), "pass");
    assert_eq!(controls["population_complete"]["verdict"], "pass");
    let proof: Value = serde_json::from_slice(&files["proof.json"]).unwrap();
    let start = proof["range"]["start"].as_u64().unwrap();
    let earlier = proof["inclusion"].as_array().unwrap();
    assert!(
        !earlier.is_empty() && earlier.iter().all(|p| p["index"].as_u64().unwrap() < start),
        "the earlier events come with inclusion proofs: {proof}"
    );

    // An earlier event dropped (the manifest re-signed): refused.
    let key = SigningKey::load(&_key).unwrap();
    let events = lines(&files["events.jsonl"]);
    let mut dropped = events.clone();
    dropped.remove(0);
    let mut changed = files.clone();
    changed.insert("events.jsonl".into(), joined(&dropped));
    let why = verify(&repack(changed, Some(&key))[..], &verifier, None)
        .unwrap_err()
        .to_string();
    assert!(why.contains("inclusion proof"), "{why}");
}

/// Records drift on intent `id`, as the server's reconciler does: through the command path, on
/// the server's store.
async fn record_drift(app: &TestApp, id: &str) {
    use eucora::domain::{Action, Command, DomainServices, DriftRecord, Policy, SystemClock};
    use eucora_projections::event::{Actor, ConnectorType, Ring, Role};
    let store = app.db.store().await;
    let services = DomainServices::new(Arc::new(SystemClock), Policy::default());
    let commands = eucora::write::Commands::new(&store, services);
    let command = Command {
        actor: Actor {
            subject: eucora::domain::intent::DISPATCHER.into(),
            role: Role::System,
        },
        correlation_id: "drift-test".into(),
        expected_version: None,
        action: Action::RecordDrift(DriftRecord {
            connector_type: ConnectorType::Intune,
            ring: Ring::Canary,
            expected_installed: 10,
            reported_installed: Some(3),
        }),
    };
    commands
        .execute(uuid::Uuid::parse_str(id).unwrap(), command)
        .await
        .unwrap();
}

/// An emergency change whose retrospective review is missing once its window (8 s under this
/// policy) has passed: the bundle is intact, two controls fail, and `eucora evidence verify`
/// lists them and exits 3; inside the window the same change is open and verify exits 0.
async fn an_intact_bundle_whose_controls_fail_verifies_with_exit_status_3(backend: Backend) {
    let policy = std::env::temp_dir().join(format!("eucora-policy-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&policy, "emergency_retro_window = \"8s\"\n").unwrap();
    let (app, _key, verifier) = server_with(backend, &["--policy", policy.to_str().unwrap()]).await;
    let _ = std::fs::remove_file(&policy);
    let db = app.db.clone();
    let crew = Crew::new(&app);
    let mut emergency = intent_body("Sysmon", 0.6, "CANARY");
    emergency["change_type"] = json!("emergency");
    emergency["privileged_tooling"] = json!(true);
    let id = app.create(&crew.requester, emergency).await.id();
    app.deploy(&crew.deployer, &id, "LAB", 10, 10).await;
    signed_through(&app, &crew.auditor).await;
    let key_line = db.dir().join("verifier");
    std::fs::write(&key_line, verifier.trim()).unwrap();
    let verify_cli = |bundle: &[u8], name: &str| {
        let file = db.dir().join(name);
        std::fs::write(&file, bundle).unwrap();
        verify_cli(&file, &key_line, None)
    };
    let path = format!("/api/v1/deployments/{id}/evidence");
    let (code, said, err) = verify_cli(&fetch(&app, &path, &crew.auditor).await, "open.tar.gz");
    assert_eq!(code, 0, "inside the window nothing fails: {said}{err}");
    tokio::time::sleep(Duration::from_millis(8500)).await;
    let (code, said, err) = verify_cli(&fetch(&app, &path, &crew.auditor).await, "late.tar.gz");
    assert_eq!(code, 3, "{said}{err}");
    assert!(
        said.starts_with("verified: ") && said.contains("2 controls failed"),
        "{said}"
    );
    assert!(
        err.contains("the bundle is intact")
            && err.contains(&format!("{id} emergency_retro_review: missing"))
            && err.contains(&format!("{id} cab_approval_where_required")),
        "{err}"
    );

    // Shown: the counts and the failing change by app and version.
    let late = db.dir().join("late.tar.gz");
    let late = late.to_str().unwrap();
    let key = key_line.to_str().unwrap();
    let (code, said, err) = eucora_with(None, &["evidence", "show", late, "--key", key], "");
    assert_eq!(code, 0, "{err}");
    assert!(
        said.contains(&format!("scope:        deployment {id}")),
        "{said}"
    );
    assert!(said.contains("population:   1 changes"), "{said}");
    let row = said
        .lines()
        .find(|l| l.starts_with("emergency_retro_review"))
        .unwrap();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["emergency_retro_review", "0", "1", "0", "0"]
    );
    assert!(
        said.contains(&format!(
            "Sysmon 1.0.0 {id}: emergency_retro_review: missing"
        )),
        "{said}"
    );
    // Sampled: the same seed draws the same sample, with the whole trail.
    let sample = |args: &[&str]| {
        let mut all = vec!["evidence", "sample", late];
        all.extend_from_slice(args);
        eucora_with(None, &all, "")
    };
    let (code, said, err) = sample(&["--size", "1", "--seed", "q4", "--weight", "emergency=3"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("was not verified"), "{err}");
    assert!(
        said.contains(&format!("Change `{id}`")) && said.contains(": `#1   "),
        "{said}"
    );
    assert!(
        said.contains("DeploymentDeployed") && said.contains("weights emergency=3"),
        "{said}"
    );
    assert_eq!(
        sample(&["--size", "1", "--seed", "q4", "--weight", "emergency=3"]).1,
        said
    );
    // Bad input: a clear error, nothing written.
    let (code, _, err) = sample(&["--size", "0", "--seed", "q4"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--size must be from 1 to the population's 1 changes"),
        "{err}"
    );
    let (code, _, err) = sample(&["--size", "2", "--seed", "q4"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = sample(&["--size", "1", "--seed", "q4", "--weight", "urgent=2"]);
    assert!(code == 1 && err.contains("an attribute is one of"), "{err}");
    let paper = db.dir().join("paper.md");
    let (code, _, err) = sample(&[
        "--size",
        "1",
        "--seed",
        "q4",
        "--out",
        paper.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(&paper)
        .unwrap()
        .starts_with("# Sample of deployment"));
    let (code, _, err) = sample(&[
        "--size",
        "1",
        "--seed",
        "q4",
        "--out",
        paper.to_str().unwrap(),
    ]);
    assert!(code == 1 && err.contains("cannot create"), "{err}");
    let (code, _, err) = eucora_with(None, &["evidence", "show", key], "");
    assert!(
        code == 1 && err.contains("is not an evidence bundle"),
        "{err}"
    );
}

/// An auditor with neither the database nor the key: keeps a checkpoint, later fetches bundles
/// over the API with `eucora evidence export --server`, giving that checkpoint, and verifies the
/// log still extends it (also when it is the bundle's own checkpoint). Bad sizes are refused.
async fn an_auditor_fetches_over_the_api_and_checks_against_a_checkpoint_they_kept(
    backend: Backend,
) {
    let (app, _key, verifier) = server(backend).await;
    let crew = Crew::new(&app);
    let first = traffic(&app, &crew).await;
    signed_through(&app, &crew.auditor).await;
    let dir = app.db.dir().clone();
    let kept = dir.join("kept.checkpoint");
    let note = app.get("/api/v1/checkpoint", &crew.auditor).await;
    std::fs::write(&kept, note.body.as_str().unwrap()).unwrap();
    traffic(&app, &crew).await;
    signed_through(&app, &crew.auditor).await;
    let key_line = dir.join("verifier");
    std::fs::write(&key_line, &verifier).unwrap();
    let (kept, key_line) = (kept.to_str().unwrap(), key_line.to_str().unwrap());
    let fetch_cli = |out: &str, scope: &[&str], previous: &str| {
        let out = dir.join(out);
        let mut args = vec![
            "evidence",
            "export",
            "--server",
            app.base.as_str(),
            "--token",
            crew.auditor.as_str(),
            "--previous-checkpoint",
            previous,
            "--out",
        ];
        let out_text = out.to_str().unwrap().to_string();
        args.push(&out_text);
        args.extend_from_slice(scope);
        let (code, said, err) = eucora_with(None, &args, "");
        assert_eq!(code, 0, "{said}{err}");
        assert!(
            said.contains("check it with eucora evidence verify"),
            "{said}"
        );
        let (code, said, err) = verify_cli(
            std::path::Path::new(&out_text),
            std::path::Path::new(key_line),
            Some(std::path::Path::new(previous)),
        );
        assert_eq!(code, 0, "{said}{err}");
        assert!(said.starts_with("verified: "), "{said}");
    };
    fetch_cli(
        "period.tar.gz",
        &[
            "--from",
            "2020-01-01T00:00:00Z",
            "--to",
            "2099-01-01T00:00:00Z",
        ],
        kept,
    );
    // The bundle's own checkpoint as the earlier one: equal roots, accepted.
    let own = dir.join("own.checkpoint");
    let note = app.get("/api/v1/checkpoint", &crew.auditor).await;
    std::fs::write(&own, note.body.as_str().unwrap()).unwrap();
    fetch_cli(
        "deployment.tar.gz",
        &["--deployment", &first],
        own.to_str().unwrap(),
    );

    // Bad sizes: a clear 4xx, and no bundle.
    let period = "/api/v1/evidence?from=2020-01-01T00:00:00Z&to=2099-01-01T00:00:00Z";
    for (size, status) in [("0", 400), ("ten", 400), ("99999999", 422)] {
        let reply = app
            .get(&format!("{period}&previous_size={size}"), &crew.auditor)
            .await;
        reply.assert_problem(status);
        assert!(
            reply.body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(if status == 400 {
                    "previous_size"
                } else {
                    "past the latest signed checkpoint"
                }),
            "{size}: {reply:#?}"
        );
    }
    let reply = app
        .get(
            &format!("/api/v1/deployments/{first}/evidence?previous_size=0"),
            &crew.auditor,
        )
        .await;
    reply.assert_problem(400);
    // Refused over the API: the refusal said, exit 3, no file.
    let out = dir.join("refused.tar.gz");
    let (code, _, err) = eucora_with(
        None,
        &[
            "evidence",
            "export",
            "--server",
            app.base.as_str(),
            "--token",
            crew.requester.as_str(),
            "--deployment",
            &first,
            "--out",
            out.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("refused") && !out.exists(), "{err}");
}

/// The intent-heads index as docs/evidence.md defines it, written here from the docs alone (not
/// from the server's code): SHA-256, RFC 9162 hashing, leaves of id ‖ count ‖ last index sorted
/// by id. Returns (count, root).
mod independent {
    use sha2::{Digest, Sha256};

    pub fn leaf(id: &uuid::Uuid, events: u64, last: u64) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(id.as_bytes());
        h.update(events.to_be_bytes());
        h.update(last.to_be_bytes());
        h.finalize().into()
    }

    fn node(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update([1u8]);
        h.update(l);
        h.update(r);
        h.finalize().into()
    }

    /// MTH of RFC 9162 2.1.1.
    pub fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => Sha256::digest([]).into(),
            1 => leaves[0],
            n => {
                // The largest power of two smaller than n.
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                node(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    /// RFC 9162 2.1.3.2.
    pub fn included(
        index: u64,
        size: u64,
        leaf: [u8; 32],
        path: &[[u8; 32]],
        root: [u8; 32],
    ) -> bool {
        if index >= size {
            return false;
        }
        let (mut f, mut s, mut r) = (index, size - 1, leaf);
        for p in path {
            if s == 0 {
                return false;
            }
            if f % 2 == 1 || f == s {
                r = node(p, &r);
                while f % 2 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            } else {
                r = node(&r, p);
            }
            f >>= 1;
            s >>= 1;
        }
        s == 0 && r == root
    }
}

async fn a_deployment_bundle_proves_it_holds_every_event_and_an_unknown_id_is_proved_absent(
    backend: Backend,
) {
    let (app, key_file, verifier) = server(backend).await;
    let key = SigningKey::load(&key_file).unwrap();
    let crew = Crew::new(&app);
    let id = traffic(&app, &crew).await;
    signed_through(&app, &crew.auditor).await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let bundle = deployment_bundle(&app, &id, &crew.auditor).await;
    verify(&bundle[..], &verifier, None).unwrap();
    let files = unpack(&bundle);
    let note = String::from_utf8(files["checkpoint"].clone()).unwrap();

    // The index, recomputed from the whole log read over the API, is the one the checkpoint
    // signs, and the bundle's head is in it.
    let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    let page = app
        .get("/api/v1/events?limit=1000", &crew.auditor)
        .await
        .body;
    let mut heads: BTreeMap<uuid::Uuid, (u64, u64)> = BTreeMap::new();
    for e in page["events"].as_array().unwrap() {
        let index = e["index"].as_u64().unwrap();
        if index < size && e["stream"] == "deployment" {
            let intent = uuid::Uuid::parse_str(e["deployment_id"].as_str().unwrap()).unwrap();
            let head = heads.entry(intent).or_insert((0, 0));
            *head = (head.0 + 1, index);
        }
    }
    let leaves: Vec<[u8; 32]> = heads
        .iter()
        .map(|(id, (events, last))| independent::leaf(id, *events, *last))
        .collect();
    let root = independent::mth(&leaves);
    let line = format!("intent-heads {} {}", leaves.len(), b64.encode(root));
    assert_eq!(note.lines().nth(3), Some(line.as_str()), "{note}");
    let proof: Value = serde_json::from_slice(&files["proof.json"]).unwrap();
    let head = &proof["head"];
    let uid = uuid::Uuid::parse_str(&id).unwrap();
    let (events, last) = heads[&uid];
    assert_eq!(
        (head["events"].as_u64(), head["last_index"].as_u64()),
        (Some(events), Some(last))
    );
    assert_eq!(lines(&files["events.jsonl"]).len() as u64, events);
    let path: Vec<[u8; 32]> = head["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| b64.decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect();
    let position = heads.keys().position(|k| *k == uid).unwrap() as u64;
    assert_eq!(head["position"].as_u64(), Some(position));
    assert!(independent::included(
        position,
        leaves.len() as u64,
        independent::leaf(&uid, events, last),
        &path,
        root
    ));

    // An insider with the key drops the intent's last event and its proof and signs again.
    let refused = |files: BTreeMap<String, Vec<u8>>| {
        verify(&repack(rederive(files), Some(&key))[..], &verifier, None)
            .unwrap_err()
            .to_string()
    };
    let mut dropped = files.clone();
    let mut held = lines(&files["events.jsonl"]);
    held.pop();
    dropped.insert("events.jsonl".into(), joined(&held));
    let mut shorter = proof.clone();
    shorter["inclusion"].as_array_mut().unwrap().pop();
    dropped.insert("proof.json".into(), serde_json::to_vec(&shorter).unwrap());
    let why = refused(dropped.clone());
    assert!(why.contains("events were dropped"), "{why}");
    // ... and lowers the head to match: its proof no longer leads to the signed index.
    let mut lowered = shorter.clone();
    lowered["head"]["events"] = json!(events - 1);
    let previous_last: Value = serde_json::from_str(held.last().unwrap()).unwrap();
    lowered["head"]["last_index"] = previous_last["index"].clone();
    dropped.insert("proof.json".into(), serde_json::to_vec(&lowered).unwrap());
    let why = refused(dropped.clone());
    assert!(
        why.contains("not in the checkpoint's intent-heads index"),
        "{why}"
    );
    // ... or leaves the head out.
    let mut headless = shorter;
    headless["head"] = Value::Null;
    dropped.insert("proof.json".into(), serde_json::to_vec(&headless).unwrap());
    let why = refused(dropped);
    assert!(why.contains("gives no head"), "{why}");

    // "No such change", verifiably: an unknown id's lookup shows its neighbours in the index.
    let dir = app.db.dir().to_path_buf();
    let key_line = dir.join("verifier");
    std::fs::write(&key_line, &verifier).unwrap();
    let unknown = uuid::Uuid::new_v4();
    let absent = app
        .get(&format!("/api/v1/evidence/heads/{unknown}"), &crew.auditor)
        .await;
    assert_eq!(absent.status, 200, "{:?}", absent.body);
    assert!(absent.body["head"].is_null());
    assert!(!absent.body["below"].is_null() || !absent.body["above"].is_null());
    let file = dir.join("absent.json");
    std::fs::write(&file, serde_json::to_vec(&absent.body).unwrap()).unwrap();
    let (code, said, err) = verify_cli(&file, &key_line, None);
    assert_eq!(code, 0, "{said}{err}");
    assert!(
        said.contains(&format!("there is no deployment intent {unknown}")),
        "{said}"
    );
    // A neighbour taken away no longer shows the absence.
    let mut partial = absent.body.clone();
    let side = if partial["below"].is_null() {
        "above"
    } else {
        "below"
    };
    partial[side] = Value::Null;
    std::fs::write(&file, serde_json::to_vec(&partial).unwrap()).unwrap();
    let (code, _, err) = verify_cli(&file, &key_line, None);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("absence") && err.contains("not shown"),
        "{err}"
    );

    // The command line fetches a present intent's head over the API; it verifies offline.
    let out = dir.join("head.json");
    let (code, _, err) = eucora_with(
        None,
        &[
            "evidence",
            "head",
            &id,
            "--server",
            &app.base,
            "--token",
            &crew.auditor,
            "--out",
            out.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let (code, said, err) = verify_cli(&out, &key_line, None);
    assert_eq!(code, 0, "{said}{err}");
    assert!(
        said.contains(&format!("intent {id} has {events} events")),
        "{said}"
    );
    // Bad input: not a UUID.
    let reply = app.get("/api/v1/evidence/heads/nope", &crew.auditor).await;
    assert_eq!(reply.status, 400);
}

async fn a_periods_bundle_shows_the_policy_in_force_and_every_refused_command(backend: Backend) {
    let (app, _key_file, verifier) = server(backend).await;
    let crew = Crew::new(&app);
    // The policy was activated at the server's start, before the period.
    let from = chrono::Utc::now();
    let id = traffic(&app, &crew).await;
    // A deployer deciding for the CAB: refused, and on the record.
    assert_eq!(app.approve(&crew.deployer, &id).await.status, 403);
    let to = chrono::Utc::now() + chrono::Duration::hours(1);
    signed_through(&app, &crew.auditor).await;
    let time = |t: chrono::DateTime<chrono::Utc>| {
        t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
            .replace('+', "%2B")
    };
    let bundle = fetch(
        &app,
        &format!("/api/v1/evidence?from={}&to={}", time(from), time(to)),
        &crew.auditor,
    )
    .await;
    verify(&bundle[..], &verifier, None).unwrap();
    let files = unpack(&bundle);
    let controls: Value = serde_json::from_slice(&files["controls.json"]).unwrap();
    let proof: Value = serde_json::from_slice(&files["proof.json"]).unwrap();
    let start = proof["range"]["start"].as_u64().unwrap();

    // The policy in force: its activation precedes the period and comes with its proof; every
    // change of the period was judged under it.
    let policies = controls["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1, "{policies:?}");
    let policy = &policies[0];
    let leaf = policy["leaf"].as_u64().unwrap();
    assert!(leaf < start, "activated before the period: {policy}");
    assert!(
        proof["inclusion"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["index"] == leaf),
        "its inclusion proof is in the bundle"
    );
    assert_eq!(policy["judged"].as_array().unwrap().len(), 3, "{policy}");
    assert!(policy["judged"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j == id.as_str()));

    // The refusal: who, what, why, at which leaf.
    let refused = controls["refused_commands"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let r = &refused[0];
    assert_eq!(
        (
            r["subject"].as_str(),
            r["role"].as_str(),
            r["command"].as_str(),
            r["reason"].as_str(),
            r["intent"].as_str()
        ),
        (
            Some("ops-bot"),
            Some("deployer"),
            Some("approve"),
            Some("missing_role"),
            Some(id.as_str())
        )
    );
    assert!(r["leaf"].as_u64().unwrap() >= start);

    // People read both in the report and in `eucora evidence show`.
    let report = String::from_utf8(files["REPORT.html"].clone()).unwrap();
    assert!(
        report.contains("<h2>Policies in force</h2>")
            && report.contains("<h2>Refused commands</h2>"),
        "{report}"
    );
    let file = app.db.dir().join("period.tar.gz");
    std::fs::write(&file, &bundle).unwrap();
    let (code, said, err) = eucora_with(None, &["evidence", "show", file.to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    assert!(said.contains("refused:      1 missing_role"), "{said}");
    assert!(said.contains("policies:     "), "{said}");

    // An insider with the key who drops the refusal from the report's sections is caught: the
    // sections are recomputed from the events.
    let key = SigningKey::load(&_key_file).unwrap();
    let mut hidden = controls.clone();
    hidden.as_object_mut().unwrap().remove("refused_commands");
    let mut edited = files.clone();
    let mut json = serde_json::to_vec_pretty(&hidden).unwrap();
    json.push(b'\n');
    edited.insert("controls.json".into(), json);
    let why = verify(&repack(edited, Some(&key))[..], &verifier, None)
        .unwrap_err()
        .to_string();
    assert!(why.contains("controls.json does not match"), "{why}");
}

/// A deployment's bundle is made from its own events, placed in the log through its tiles: one
/// whose events lie several tiles of 256 leaves apart, among concurrent commands (which, on
/// PostgreSQL, commit out of position order), still verifies, proofs and head included.
async fn a_deployment_whose_events_lie_tiles_apart_exports_from_its_own_events(backend: Backend) {
    let (app, _, verifier) = server(backend).await;
    let crew = Crew::new(&app);
    let burst = |round: usize| {
        let (app, crew) = (&app, &crew);
        async move {
            for chunk in 0..20 {
                futures_util::future::join_all((0..16).map(|i| {
                    let name = format!("Filler {round}-{chunk}-{i}");
                    app.create(&crew.requester, intent_body(&name, 0.2, "LAB"))
                }))
                .await;
            }
        }
    };
    let id = app
        .create(&crew.requester, intent_body("Firefox", 0.8, "CANARY"))
        .await
        .id();
    burst(0).await;
    app.approve(&crew.approver, &id).await;
    burst(1).await;
    app.deploy(&crew.deployer, &id, "LAB", 10, 10).await;
    burst(2).await;
    signed_through(&app, &crew.auditor).await;

    let bundle = deployment_bundle(&app, &id, &crew.auditor).await;
    let verified = verify(&bundle[..], &verifier, None).expect("the bundle verifies");
    let files = unpack(&bundle);
    let leaves: Vec<u64> = lines(&files["events.jsonl"])
        .iter()
        .map(|l| EventRecord::from_line(l).unwrap().index)
        .collect();
    assert_eq!(verified.events, leaves.len() as u64);
    let proof: Value = serde_json::from_slice(&files["proof.json"]).unwrap();
    assert_eq!(proof["head"]["events"], leaves.len());
    assert!(leaves.len() >= 3, "{leaves:?}");
    assert!(
        leaves[leaves.len() - 1] - leaves[0] > 2 * 256,
        "the intent's events span several tiles: {leaves:?}"
    );
}
