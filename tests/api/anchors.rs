//! Checkpoints kept where the database's writer cannot reach them: by default in the server's
//! own state directory (0700, files 0600), not beside the database; and at a witness, which
//! refuses a history that does not extend what it accepted.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use eucora::checkpoints::open_checkpoint;
use eucora_projections::merkle::{self, Hash};

use crate::helpers::{Backend, Crew, TestApp, TestDb};
use crate::log::{checkpoint_of, key_flags, ready_fails_with, serve, traffic};

crate::on_both_backends!(
    checkpoints_are_kept_privately_away_from_the_database_and_outlive_a_rewrite,
    a_witness_keeps_each_checkpoint_and_refuses_a_rewritten_history,
);

/// `key_flags` without `--checkpoint-dir`: the default place.
fn default_place_flags(db: &TestDb) -> (Vec<String>, String) {
    let (flags, verifier) = key_flags(db, "unused");
    let at = flags.iter().position(|f| f == "--checkpoint-dir").unwrap();
    let flags = [&flags[..at], &flags[at + 2..]].concat();
    (flags, verifier)
}

/// The one checkpoint directory under the test's state directory.
fn default_dir(db: &TestDb) -> PathBuf {
    let root = db.dir().join("state/eucora/checkpoints");
    let dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("no {}: {e}", root.display()))
        .map(|d| d.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

async fn checkpoints_are_kept_privately_away_from_the_database_and_outlive_a_rewrite(
    backend: Backend,
) {
    let db = Arc::new(TestDb::new(backend).await);
    let (flags, verifier) = default_place_flags(&db);
    {
        let app = serve(&db, &flags).await;
        let crew = Crew::new(&app);
        traffic(&app, &crew, 3, "a").await;
        let (signed, note) = checkpoint_of(&app, &crew.auditor, &verifier, 10).await;
        let dir = default_dir(&db);
        let file = dir.join("checkpoint");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&file)
            .ok()
            .and_then(|kept| open_checkpoint(&kept, &verifier).ok())
            .is_none_or(|kept| kept.size < signed.size)
        {
            assert!(
                Instant::now() < deadline,
                "{} never held {note}",
                file.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        assert_eq!(mode(&file), 0o600, "{}", file.display());
        let names = std::fs::read_to_string(dir.join("database")).unwrap();
        match backend {
            Backend::Sqlite => assert!(names.contains("eucora.db"), "{names}"),
            Backend::Postgres => assert!(names.starts_with("postgres://"), "{names}"),
        }
        // Nothing beside the database: its writer cannot delete or roll it back there.
        assert!(!db.dir().join("eucora.db.checkpoints").exists());
    }
    // The whole history rewritten (a new database at the same place, as a rewrite starts): the
    // checkpoint kept in the server's state directory says events are missing.
    db.recreate().await;
    let app = TestApp::start(
        db.clone(),
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
        None,
    );
    ready_fails_with(&app, "move that file away").await;
}

/// A C2SP tlog-witness for one log, in this process: it accepts a checkpoint only from the size
/// it last accepted (409 with that size otherwise), with a consistency proof that verifies
/// against what it accepted (422 otherwise), and answers with a cosignature line.
struct Witness {
    verifier: String,
    /// The tree it last accepted: size and root.
    tree: Mutex<(u64, Hash)>,
}

async fn add_checkpoint(State(w): State<Arc<Witness>>, body: String) -> (StatusCode, String) {
    let Some((head, note)) = body.split_once("\n\n") else {
        return (StatusCode::BAD_REQUEST, "no blank line".into());
    };
    let mut lines = head.lines();
    let Some(old) = lines
        .next()
        .and_then(|l| l.strip_prefix("old "))
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return (StatusCode::BAD_REQUEST, "no old size".into());
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let proof: Vec<Hash> = lines
        .map(|l| b64.decode(l).unwrap().try_into().unwrap())
        .collect();
    let Ok(new) = open_checkpoint(note, &w.verifier) else {
        return (StatusCode::FORBIDDEN, "not signed by the log's key".into());
    };
    let mut tree = w.tree.lock().unwrap();
    let (size, root) = *tree;
    if old != size {
        return (StatusCode::CONFLICT, format!("{size}\n"));
    }
    let extends = if size == 0 {
        true
    } else if size == new.size {
        root == new.root
    } else {
        merkle::verify_consistency(size, new.size, &root, &new.root, &proof).is_ok()
    };
    if !extends {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "the consistency proof does not verify".into(),
        );
    }
    *tree = (new.size, new.root);
    (StatusCode::OK, "— witness.test AAAAAAAA\n".into())
}

async fn witness(verifier: &str) -> (String, Arc<Witness>) {
    let state = Arc::new(Witness {
        verifier: verifier.to_string(),
        tree: Mutex::new((0, [0; 32])),
    });
    let app = axum::Router::new()
        .route("/add-checkpoint", axum::routing::post(add_checkpoint))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/add-checkpoint", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, state)
}

async fn witnessed(state: &Witness, size: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = state.tree.lock().unwrap().0;
        if held >= size {
            return held;
        }
        assert!(Instant::now() < deadline, "the witness holds only {held}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_witness_keeps_each_checkpoint_and_refuses_a_rewritten_history(backend: Backend) {
    let db = Arc::new(TestDb::new(backend).await);
    let (mut flags, verifier) = key_flags(&db, "checkpoints");
    let (url, state) = witness(&verifier).await;
    flags.extend(["--checkpoint-witness".into(), url]);
    let held = {
        let app = serve(&db, &flags).await;
        let crew = Crew::new(&app);
        traffic(&app, &crew, 3, "a").await;
        let held = witnessed(&state, 11).await;
        // The witness's answer is kept with the checkpoint it answered.
        let kept = db.dir().join("checkpoints/checkpoint.witnessed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&kept).unwrap_or_default();
            if text.ends_with("— witness.test AAAAAAAA\n") {
                assert!(open_checkpoint(&text, &verifier).is_ok(), "{text}");
                assert_eq!(mode(&kept), 0o600);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no witnessed checkpoint: {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        held
    };
    // An insider rewrites the whole history and, able to reach the checkpoint directory too,
    // deletes it. A shorter history: the witness holds a larger tree.
    db.recreate().await;
    std::fs::remove_dir_all(db.dir().join("checkpoints")).unwrap();
    let app = TestApp::start(
        db.clone(),
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
        None,
    );
    ready_fails_with(&app, "the checkpoint witness 127.0.0.1 accepted a tree of").await;
    drop(app);
    // A longer rewritten history, made before anything is signed: the witness refuses its proof.
    db.recreate().await;
    std::fs::remove_dir_all(db.dir().join("checkpoints")).unwrap();
    {
        let (mut quiet, _) = key_flags(&db, "scratch");
        let at = quiet
            .iter()
            .position(|f| f == "--checkpoint-interval")
            .unwrap();
        quiet[at + 1] = "1h".into();
        quiet.extend(["--checkpoint-events".into(), "1000000".into()]);
        let unsigned = serve(&db, &quiet).await;
        let crew = Crew::new(&unsigned);
        traffic(&unsigned, &crew, held as usize, "forged").await;
    }
    let app = TestApp::start(
        db.clone(),
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
        None,
    );
    ready_fails_with(&app, "refuses the checkpoint").await;
    assert_eq!(
        state.tree.lock().unwrap().0,
        held,
        "the witness kept its tree"
    );
}
