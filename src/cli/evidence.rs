//! `eucora evidence export|verify|show|sample` and `eucora key generate`: the bundle an auditor
//! takes away, checked offline, read and sampled, and the key that signs it.

use std::collections::BTreeMap;
use std::path::Path;

use super::client::Client;
use super::{open_existing, say, Failure};
use crate::config::{ClientArgs, EvidenceSource, ExportArgs, HeadArgs};
use crate::evidence::{
    draw, parse_weight, read_bundle, scope_words, verify_read, workpaper, Bundle, Claims,
    ControlsFile, Plan, Previous, Scope, Summary,
};

/// `eucora evidence export`: writes a period's or a deployment's bundle, from the database or
/// (with `--server`) over the API.
pub async fn export(args: ExportArgs) -> Result<(), Failure> {
    let time = |flag: &str, text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|_| {
                format!("--{flag} {text:?} is not an RFC 3339 time such as 2026-01-01T00:00:00Z")
            })
    };
    let scope = match (&args.from, &args.to, args.deployment) {
        (Some(from), Some(to), None) => {
            let (from, to) = (time("from", from)?, time("to", to)?);
            if from >= to {
                return Err("--from must be before --to".into());
            }
            Scope::Period { from, to }
        }
        (None, None, Some(id)) => Scope::Deployment(id),
        _ => return Err("give --from and --to, or --deployment".into()),
    };
    let previous = args
        .previous_checkpoint
        .as_deref()
        .map(|p| {
            std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", crate::domain::absolute(p)))
        })
        .transpose()?;
    if let Some(server) = &args.source.server {
        return fetch(
            server,
            args.source.token.clone(),
            &scope,
            previous.as_deref(),
            &args.out,
        )
        .await;
    }
    let (store, key) = local(&args.source).await?;
    let tree = crate::projection::log::LogTree::from_parts(
        store.log_subtrees().await.map_err(|e| e.to_string())?,
        store.last_log_tile().await.map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let log = crate::projection::log::LogView::default();
    log.replace(tree);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let written = crate::evidence::export(
        &store,
        &log,
        &key,
        &scope,
        previous.as_deref().map(Previous::Checkpoint),
        std::io::BufWriter::new(file),
    )
    .await;
    let summary = match written {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_file(&args.out);
            return Err(e.to_string().into());
        }
    };
    say(format_args!(
        "wrote {}: {} events of {} intents, under the checkpoint of tree size {}; {} controls failed",
        args.out.display(),
        summary.events,
        summary.intents,
        summary.tree_size,
        summary.failed_controls
    ))?;
    Ok(())
}

/// The database and the log's signing key, for evidence made beside the database.
async fn local(
    source: &EvidenceSource,
) -> Result<(crate::store::Store, crate::checkpoints::SigningKey), Failure> {
    let key_path = match (
        &source.signing_key_file,
        crate::store::sqlite_file(&source.db.database_url),
    ) {
        (Some(path), _) => path.clone(),
        (None, Some(db))
            if crate::store::backend_of(&source.db.database_url)
                == crate::store::Backend::Sqlite =>
        {
            std::path::PathBuf::from(format!("{db}.key"))
        }
        _ => return Err("--signing-key-file is required (the key the server signs with)".into()),
    };
    let key = crate::checkpoints::SigningKey::load(&key_path).map_err(|e| e.to_string())?;
    Ok((open_existing(&source.db).await?, key))
}

/// `eucora evidence head`: an intent's head under the latest signed checkpoint, or the proof
/// that it has none, written as JSON.
pub async fn head(args: HeadArgs) -> Result<(), Failure> {
    let id = args.deployment;
    if let Some(server) = &args.source.server {
        let client = Client::new(&ClientArgs {
            server: server.to_string(),
            token: args.source.token.clone(),
            json: false,
        })?;
        client
            .download(&format!("/api/v1/evidence/heads/{id}"), &[], &args.out)
            .await?;
    } else {
        let (store, key) = local(&args.source).await?;
        let found = crate::evidence::lookup(&store, &Default::default(), &key, id)
            .await
            .map_err(|e| e.to_string())?;
        let mut text = serde_json::to_vec_pretty(&found).map_err(|e| e.to_string())?;
        text.push(b'\n');
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&args.out)
            .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
        std::io::Write::write_all(&mut file, &text)
            .map_err(|e| format!("cannot write {}: {e}", crate::domain::absolute(&args.out)))?;
    }
    say(format_args!(
        "wrote {}: the head of {id} under the latest signed checkpoint, or the proof it has none; \
         check it with eucora evidence verify",
        args.out.display()
    ))?;
    Ok(())
}

/// `eucora evidence export --server`: the same bundle, fetched over the API (auditor role). An
/// earlier checkpoint is sent as its tree size; the bundle proves the log extends it, and
/// `eucora evidence verify --previous-checkpoint` checks that against the checkpoint itself.
async fn fetch(
    server: &str,
    token: Option<String>,
    scope: &Scope,
    previous: Option<&str>,
    out: &Path,
) -> Result<(), Failure> {
    let client = Client::new(&ClientArgs {
        server: server.to_string(),
        token,
        json: false,
    })?;
    let time =
        |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (path, mut query) = match scope {
        Scope::Period { from, to } => (
            "/api/v1/evidence".to_string(),
            vec![("from", time(from)), ("to", time(to))],
        ),
        Scope::Deployment(id) => (format!("/api/v1/deployments/{id}/evidence"), vec![]),
    };
    if let Some(note) = previous {
        let size = note
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok())
            .ok_or("--previous-checkpoint is not a signed checkpoint (its second line is its tree size)")?;
        query.push(("previous_size", size.to_string()));
    }
    let bytes = client.download(&path, &query, out).await?;
    say(format_args!(
        "wrote {} ({bytes} bytes) from {server}; check it with eucora evidence verify",
        out.display()
    ))?;
    Ok(())
}

/// `eucora evidence verify`: checks a bundle with nothing but it, the verifier key and
/// optionally an earlier checkpoint.
pub fn verify(file: &Path, key: &Path, previous_checkpoint: Option<&Path>) -> Result<(), Failure> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", crate::domain::absolute(path)))
    };
    let verifier = read(key)?;
    let previous = previous_checkpoint.map(read).transpose()?;
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", crate::domain::absolute(file));
    let mut bundle = std::fs::File::open(file).map_err(cannot)?;
    // A lookup of `eucora evidence head` is JSON (small); a bundle is gzip.
    let mut first = [0u8; 1];
    let n = std::io::Read::read(&mut bundle, &mut first).map_err(cannot)?;
    if n == 1 && first[0] == b'{' {
        return verify_head(file, &std::fs::read(file).map_err(cannot)?, verifier.trim());
    }
    std::io::Seek::rewind(&mut bundle).map_err(cannot)?;
    let verified = crate::evidence::verify(
        std::io::BufReader::new(bundle),
        verifier.trim(),
        previous.as_deref(),
    )
    .map_err(|e| format!("{} does not verify: {e}", file.display()))?;
    say(format_args!(
        "verified: {} events of {} intents under a signed checkpoint of tree size {}; \
         {} controls failed",
        verified.events, verified.intents, verified.tree_size, verified.failed_controls
    ))?;
    let Some(controls) = verified.controls else {
        say(format_args!(
            "(a bundle of an earlier release: its integrity verified; its controls were judged \
             by earlier rules and were not recomputed)"
        ))?;
        return Ok(());
    };
    let failing: Vec<String> = controls
        .failing()
        .map(|(id, v)| match id {
            Some(id) => format!("  {id} {}: {} (leaves {:?})", v.control, v.detail, v.leaves),
            None => format!("  {}: {}", v.control, v.detail),
        })
        .collect();
    if !failing.is_empty() {
        return Err(Failure::Findings(format!(
            "the bundle is intact, and {} controls fail:\n{}",
            failing.len(),
            failing.join("\n")
        )));
    }
    Ok(())
}

/// `eucora evidence verify` of a lookup written by `eucora evidence head`.
fn verify_head(file: &Path, bytes: &[u8], verifier: &str) -> Result<(), Failure> {
    let found: crate::evidence::HeadLookup = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "{} is neither an evidence bundle nor a head lookup: {e}",
            file.display()
        )
    })?;
    let checked = crate::evidence::verify_lookup(&found, verifier)
        .map_err(|e| format!("{} does not verify: {e}", file.display()))?;
    match checked.head {
        Some(head) => say(format_args!(
            "verified: deployment intent {} has {} events under the signed checkpoint of tree \
             size {}, the last at leaf {}",
            found.intent_id, head.events, checked.tree_size, head.last_index
        ))?,
        None => say(format_args!(
            "verified: there is no deployment intent {} under the signed checkpoint of tree size {}",
            found.intent_id, checked.tree_size
        ))?,
    }
    Ok(())
}

/// Reads a bundle, verified first when a key file is given; says on stderr when it was not.
fn read(file: &Path, key: Option<&Path>) -> Result<(Bundle, Claims), Failure> {
    let bundle = std::fs::File::open(file)
        .map_err(|e| format!("cannot read {}: {e}", crate::domain::absolute(file)))?;
    let bundle = read_bundle(std::io::BufReader::new(bundle))
        .map_err(|e| format!("{} is not an evidence bundle: {e}", file.display()))?;
    match key {
        Some(key) => {
            let verifier = std::fs::read_to_string(key)
                .map_err(|e| format!("cannot read {}: {e}", crate::domain::absolute(key)))?;
            verify_read(&bundle, verifier.trim(), None)
                .map_err(|e| format!("{} does not verify: {e}", file.display()))?;
        }
        None => eprintln!(
            "eucora: {} was not verified (give --key, or run eucora evidence verify)",
            file.display()
        ),
    }
    let claims = bundle
        .claims()
        .map_err(|e| format!("{} is not an evidence bundle: {e}", file.display()))?;
    Ok((bundle, claims))
}

/// The controls of a bundle, recomputed from its events at the time it was judged.
fn controls(bundle: &Bundle, claims: &Claims) -> Result<ControlsFile, Failure> {
    let as_of = claims.as_of.ok_or(
        "this bundle is from an earlier release (evidence/v1): it records no time its controls \
         were judged at; export it again to summarize or sample it",
    )?;
    Ok(bundle.population().controls(as_of))
}

/// `eucora evidence show`: the summary of a bundle.
pub fn show(file: &Path, key: Option<&Path>) -> Result<(), Failure> {
    let (bundle, claims) = read(file, key)?;
    let controls = controls(&bundle, &claims)?;
    let summary = Summary::new(
        &claims.scope,
        claims.as_of,
        claims.tree_size,
        bundle.population(),
        &controls,
    );
    for line in summary.text().lines() {
        say(format_args!("{line}"))?;
    }
    Ok(())
}

/// `eucora evidence sample`: a reproducible sample of a bundle's changes, as a workpaper.
pub fn sample(
    file: &Path,
    size: usize,
    seed: String,
    weights: &[String],
    out: Option<&Path>,
    key: Option<&Path>,
) -> Result<(), Failure> {
    let weights = weights
        .iter()
        .map(|w| parse_weight(w))
        .collect::<Result<BTreeMap<String, f64>, String>>()?;
    if seed.is_empty() {
        return Err("--seed must not be empty".into());
    }
    let (bundle, claims) = read(file, key)?;
    let controls = controls(&bundle, &claims)?;
    let plan = Plan {
        size,
        seed,
        weights,
    };
    let drawn = draw(&plan, bundle.population(), &controls)?;
    let paper = workpaper(
        &scope_words(&claims.scope),
        &plan,
        bundle.population().intent_count(),
        &drawn,
    );
    match out {
        None => {
            for line in paper.lines() {
                say(format_args!("{line}"))?;
            }
        }
        Some(path) => {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            std::io::Write::write_all(&mut file, paper.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", crate::domain::absolute(path)))?;
            for change in &drawn {
                say(format_args!("{}", change.id))?;
            }
            eprintln!("wrote {}: {} changes", path.display(), drawn.len());
        }
    }
    Ok(())
}

/// `eucora key generate`: a new signing key file; prints its verifier key.
pub fn generate_key(out: &Path, name: &str) -> Result<(), Failure> {
    let key = crate::checkpoints::SigningKey::create(out, name).map_err(|e| e.to_string())?;
    eprintln!(
        "signing key written to {} (keep it secret; give auditors the verifier key below)",
        out.display()
    );
    say(format_args!("{}", key.verifier_key()))?;
    Ok(())
}
