//! The offline verifier: the archive read once, the manifest's signature and every file's
//! digest, the events parsed on every core, the proofs against the checkpoint while the controls
//! are recomputed on the other cores.

use std::collections::BTreeMap;
use std::io::Read;

use base64::Engine;
use chrono::{DateTime, Utc};
use eucora_projections::decode::decode_stream;
use eucora_projections::merkle::{self, Hash};

use super::controls::ControlsFile;
use super::format::{pae, unb64_hash, ProofFile, MANIFEST, PAYLOAD_TYPE};
use super::read::{read_bundle, refuse, Bundle, Claims, Refused};
use super::report::derive;
use crate::checkpoints::{open_checkpoint, Checkpoint};

/// What a verified bundle holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub events: u64,
    pub intents: u64,
    pub tree_size: u64,
    pub failed_controls: u64,
    /// The controls, recomputed from the events and equal to `controls.json`; `None` for a
    /// bundle of an earlier release (evidence/v1), whose controls were judged by earlier rules
    /// and are not recomputed.
    pub controls: Option<ControlsFile>,
}

/// Verifies a bundle offline, with nothing but the bundle, the verifier key, and optionally an
/// earlier checkpoint the auditor kept.
pub fn verify(
    bundle: impl Read + Send,
    verifier_key: &str,
    previous: Option<&str>,
) -> Result<Verified, Refused> {
    let bundle = read_bundle(bundle)?;
    let verified = verify_read(&bundle, verifier_key, previous);
    // The verdict is not kept waiting for the bundle's decoded events to be freed.
    super::free_apart(bundle);
    verified
}

/// [`verify`] of a bundle already read.
pub fn verify_read(
    bundle: &Bundle,
    verifier_key: &str,
    previous: Option<&str>,
) -> Result<Verified, Refused> {
    let Bundle {
        files,
        digests,
        leaves: _,
        indices,
        population,
        first_embedded,
    } = bundle;

    // 1. The manifest: signed by the key, naming every file with its hash, and nothing else.
    let claims = bundle.claims()?;
    let (envelope, statement) = (&claims.envelope, &claims.statement);
    let payload = &claims.payload;
    let verifier = signed_note::StandardVerifier::new(verifier_key.trim())
        .map_err(|_| refuse(format!("{:?} is not a verifier key", verifier_key.trim())))?;
    let signed = envelope["signatures"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| {
            s["sig"]
                .as_str()
                .and_then(|sig| base64::engine::general_purpose::STANDARD.decode(sig).ok())
                .is_some_and(|sig| {
                    signed_note::Verifier::verify(&verifier, &pae(PAYLOAD_TYPE, payload), &sig)
                })
        });
    if !signed {
        return Err(refuse(
            "the manifest's signature does not verify with this key",
        ));
    }
    let as_of = claims.as_of;
    let subjects: BTreeMap<String, String> = statement["subject"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            Some((
                s["name"].as_str()?.to_string(),
                s["digest"]["sha256"].as_str()?.to_string(),
            ))
        })
        .collect();
    // An earlier release's bundle has no REPORT.html.
    let expected = claims.format.files();
    for &name in expected {
        let expected = subjects
            .get(name)
            .ok_or_else(|| refuse(format!("the manifest does not list {name}")))?;
        let actual = digests
            .get(name)
            .ok_or_else(|| refuse(format!("the bundle has no {name}")))?;
        if actual != expected {
            return Err(refuse(format!(
                "{name} does not match its SHA-256 in the manifest (it was changed)"
            )));
        }
    }
    if let Some(extra) = files
        .keys()
        .find(|n| n.as_str() != MANIFEST && !expected.contains(&n.as_str()))
    {
        return Err(refuse(format!(
            "{extra} is in the bundle but not in the manifest"
        )));
    }
    if subjects.len() != expected.len() {
        return Err(refuse("the manifest lists files the bundle does not have"));
    }

    // A line embeds stored texts as values only from evidence/v4 on.
    if let (Some(index), false) = (first_embedded, claims.format.embeds()) {
        return Err(refuse(format!(
            "the event at leaf {index} holds its payload or metadata as a JSON value, which a \
             bundle of {} does not",
            claims.format.predicate_type()
        )));
    }

    // 2. The checkpoint, signed by the key.
    let note = String::from_utf8(files["checkpoint"].clone())
        .map_err(|_| refuse("the checkpoint is not UTF-8"))?;
    let checkpoint =
        open_checkpoint(&note, verifier_key).map_err(|e| refuse(format!("the checkpoint: {e}")))?;
    let proof: ProofFile = serde_json::from_slice(&files["proof.json"])
        .map_err(|e| refuse(format!("proof.json is not a proof: {e}")))?;
    if proof.tree_size != checkpoint.size {
        return Err(refuse(
            "proof.json is for another tree size than the checkpoint",
        ));
    }
    // 3-4 (the log) are checked here while the controls are recomputed on the other cores: a
    // bundle refused is refused for the first thing that broke, as in one pass.
    let derived = std::thread::scope(|scope| {
        let (claims, checkpoint) = (&claims, &checkpoint);
        let derived = as_of.map(|as_of| {
            scope.spawn(move || {
                derive(
                    claims.format,
                    &claims.scope,
                    as_of,
                    checkpoint.size,
                    population,
                )
            })
        });
        check_log(bundle, claims, checkpoint, &proof, verifier_key, previous)?;
        Ok::<_, Refused>(derived.map(super::joined))
    })?;

    // 5. The controls, the population and the report, recomputed from the events.
    let controls = match derived {
        Some(derived) => {
            let derived =
                derived.map_err(|e| refuse(format!("the controls could not be written: {e}")))?;
            // The bytes the exporter writes; otherwise the same controls in another layout (an
            // earlier release's) are accepted.
            let written = &files["controls.json"];
            if *written != derived.controls_json {
                let claimed: ControlsFile = serde_json::from_slice(written)
                    .map_err(|e| refuse(format!("controls.json is not controls: {e}")))?;
                if claimed != derived.controls {
                    return Err(refuse(
                        "controls.json does not match the controls recomputed from the events",
                    ));
                }
            }
            if files["changes.csv"] != derived.changes_csv {
                return Err(refuse(
                    "changes.csv does not match the population recomputed from the events",
                ));
            }
            if files["REPORT.html"] != derived.report_html {
                return Err(refuse(
                    "REPORT.html does not match the report recomputed from the events",
                ));
            }
            Some(derived.controls)
        }
        None => None,
    };
    Ok(Verified {
        events: indices.len() as u64,
        intents: population.intent_count() as u64,
        tree_size: checkpoint.size,
        failed_controls: controls.as_ref().map_or(0, ControlsFile::failed),
        controls,
    })
}

/// Steps 3 and 4 of [`verify_read`]: the events are exactly the leaves the proofs place under the
/// checkpoint's head, the predicate's counts are theirs, and the log extends the earlier
/// checkpoint the auditor kept.
fn check_log(
    bundle: &Bundle,
    claims: &Claims,
    checkpoint: &Checkpoint,
    proof: &ProofFile,
    verifier_key: &str,
    previous: Option<&str>,
) -> Result<(), Refused> {
    let Bundle {
        leaves,
        indices,
        population,
        ..
    } = bundle;
    let (statement, as_of) = (&claims.statement, claims.as_of);
    let hashes = |list: &[String]| -> Result<Vec<Hash>, Refused> {
        list.iter()
            .map(|h| unb64_hash(h).ok_or_else(|| refuse("a proof hash is not base64 SHA-256")))
            .collect()
    };

    // 3. The events are exactly the leaves the proofs place under the checkpoint's head.
    if indices.is_empty() {
        return Err(refuse("the bundle holds no events"));
    }
    // Leaf order, named by what broke it.
    let mut sorted = indices.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(refuse(format!(
            "leaf {} appears twice: an event was inserted",
            w[0]
        )));
    }
    if &sorted != indices {
        return Err(refuse(
            "the events are not in leaf order: they were reordered",
        ));
    }
    // Each event outside a proved range (every event of a deployment bundle, the earlier events of
    // a period's intents) has an inclusion proof, in the same order.
    let outside = match &proof.range {
        Some(range) => indices.partition_point(|i| *i < range.start),
        None => indices.len(),
    };
    if proof.inclusion.len() != outside {
        return Err(refuse(match &proof.range {
            Some(_) => "proof.json has not one inclusion proof per event before the period's range",
            None => "proof.json has not one inclusion proof per event",
        }));
    }
    for ((index, leaf), inclusion) in indices.iter().zip(leaves).zip(&proof.inclusion) {
        if inclusion.index != *index {
            return Err(refuse(format!(
                "the inclusion proofs are not for the events' leaves (leaf {index})"
            )));
        }
        merkle::verify_inclusion(*index, checkpoint.size, leaf, &hashes(&inclusion.hashes)?, &checkpoint.root)
            .map_err(|e| refuse(format!("the event at leaf {index} is not in the checkpoint's tree: {e} (it was edited, or moved)")))?;
    }
    if let Some(range) = &proof.range {
        let held = &indices[outside..];
        if held.is_empty() {
            return Err(refuse("the bundle holds none of the period's events"));
        }
        if let Some(beyond) = held.iter().find(|i| **i >= range.end) {
            return Err(refuse(format!(
                "leaf {beyond} is an event beyond the proved range ({} to {})",
                range.start, range.end
            )));
        }
        if let Some(missing) = (range.start..)
            .zip(held)
            .find(|(i, r)| i != *r)
            .map(|(i, _)| i)
        {
            return Err(refuse(format!(
                "leaf {missing} is missing: an event was dropped"
            )));
        }
        let held_to = range.start + held.len() as u64;
        if held_to != range.end {
            return Err(refuse(format!(
                "the events stop at leaf {held_to}, before the end of the range proved ({}): the bundle was truncated",
                range.end
            )));
        }
        merkle::verify_range(range.start, &leaves[outside..], checkpoint.size, &hashes(&range.hashes)?, &checkpoint.root).map_err(|e| {
            refuse(format!("the events are not the checkpoint's leaves {} to {}: {e} (an event was edited, or the bundle mixes two logs)", range.start, range.end))
        })?;
    }

    // Every count the signed predicate states.
    if claims.tree_size != checkpoint.size {
        return Err(refuse(format!(
            "the predicate states tree size {}, the checkpoint is of size {}",
            claims.tree_size, checkpoint.size
        )));
    }
    let stated = statement["predicate"]["events"].as_u64();
    if stated != Some(indices.len() as u64) {
        return Err(refuse(format!(
            "the predicate counts {} events, the bundle holds {}",
            stated.map_or("no".to_string(), |n| n.to_string()),
            indices.len()
        )));
    }

    // One deployment's bundle holds every event of its intent and nothing else: as many as its
    // head in the checkpoint's intent-heads index counts, the last at the leaf it names
    // (evidence/v2).
    if let (None, Some(_)) = (&proof.range, as_of) {
        check_head(claims, proof, checkpoint, indices, population)?;
    }

    // A period's range is the whole period: the events just outside it are stamped outside it
    // (evidence/v2).
    if let (Some(range), Some(_)) = (&proof.range, as_of) {
        check_boundaries(
            claims,
            range,
            proof.boundaries.as_ref(),
            checkpoint,
            &hashes,
        )?;
    }

    // 4. The earlier checkpoint the auditor kept: the log still extends it.
    if let Some(previous) = previous {
        let earlier: Checkpoint = open_checkpoint(previous, verifier_key)
            .map_err(|e| refuse(format!("the earlier checkpoint: {e}")))?;
        let consistency = proof.consistency.as_ref().ok_or_else(|| {
            refuse(
                "the bundle has no consistency proof: export it again with your earlier checkpoint",
            )
        })?;
        if consistency.from != earlier.size {
            return Err(refuse(format!(
                "the bundle's consistency proof starts at tree size {}, your checkpoint's is {}",
                consistency.from, earlier.size
            )));
        }
        merkle::verify_consistency(earlier.size, checkpoint.size, &earlier.root, &checkpoint.root, &hashes(&consistency.hashes)?)
            .map_err(|e| refuse(format!("the log does not extend your earlier checkpoint (tree size {}): {e}; its history was rewritten", earlier.size)))?;
    }

    Ok(())
}

/// Checks a deployment bundle's events against its intent's head under the checkpoint.
fn check_head(
    claims: &Claims,
    proof: &ProofFile,
    checkpoint: &Checkpoint,
    indices: &[u64],
    population: &super::population::Population,
) -> Result<(), Refused> {
    let id = claims.scope["deployment_id"]
        .as_str()
        .ok_or_else(|| refuse("the predicate's scope names no deployment_id"))?;
    let head = proof.head.as_ref().ok_or_else(|| {
        refuse("proof.json gives no head of the intent: nothing shows its events are all there")
    })?;
    if head.intent_id.to_string() != id {
        return Err(refuse(format!(
            "proof.json gives the head of intent {}, the bundle is of {id}",
            head.intent_id
        )));
    }
    let head = head.check(checkpoint)?;
    let own = population
        .histories()
        .find(|(intent, _)| intent.as_str() == id)
        .map_or(0, |(_, events)| events.len());
    if own != indices.len() {
        return Err(refuse(format!(
            "the bundle holds {} events, {own} of them intent {id}'s: a deployment's bundle holds its own and no other",
            indices.len()
        )));
    }
    let last = indices.last().copied().unwrap_or_default();
    if head.events != own as u64 || head.last_index != last {
        return Err(refuse(format!(
            "the bundle holds {own} events of intent {id}, the last at leaf {last}; under the checkpoint it has {}, the last at leaf {}: {}",
            head.events,
            head.last_index,
            if (own as u64) < head.events { "events were dropped" } else { "the bundle holds events the log does not give it" }
        )));
    }
    Ok(())
}

/// Turns a proof's base64 hashes into hashes.
type Decoder = dyn Fn(&[String]) -> Result<Vec<Hash>, Refused>;

/// Checks the events on either side of a period's range: each is the leaf next to the range,
/// is in the checkpoint's tree, and is stamped outside the period (the one after it at or after
/// its end); none is needed at leaf 0 or at the tree's end.
fn check_boundaries(
    claims: &Claims,
    range: &super::format::RangeProof,
    boundaries: Option<&super::format::Boundaries>,
    checkpoint: &Checkpoint,
    hashes: &Decoder,
) -> Result<(), Refused> {
    // Read as the export wrote them (chrono's serde form, RFC 3339 for years up to 9999).
    let time = |name: &str| {
        serde_json::from_value::<DateTime<Utc>>(claims.scope[name].clone())
            .map_err(|_| refuse(format!("the predicate's scope has no {name} time")))
    };
    let (from, to) = (time("from")?, time("to")?);
    let boundaries = boundaries
        .ok_or_else(|| refuse("proof.json proves no boundaries for the period's range"))?;
    let proved = |side: &str, b: &super::format::BoundaryEvent, leaf: u64| {
        if b.event.index != leaf {
            return Err(refuse(format!(
                "the event {side} the range is leaf {}, not leaf {leaf}",
                b.event.index
            )));
        }
        merkle::verify_inclusion(
            leaf,
            checkpoint.size,
            &b.event.leaf(),
            &hashes(&b.hashes)?,
            &checkpoint.root,
        )
        .map_err(|e| {
            refuse(format!(
                "the event {side} the range (leaf {leaf}) is not in the checkpoint's tree: {e}"
            ))
        })?;
        decode_stream(
            &b.event.event_type,
            &b.event.event_version,
            &b.event.payload,
        )
        .map(|e| e.occurred_at())
        .map_err(|e| {
            refuse(format!(
                "the event {side} the range (leaf {leaf}) does not decode: {e}"
            ))
        })
    };
    match (&boundaries.before, range.start) {
        (None, 0) => {}
        (None, start) => {
            return Err(refuse(format!(
                "proof.json does not prove leaf {}, the event before the range: the period may start earlier",
                start - 1
            )))
        }
        (Some(b), start) => {
            let at = proved("before", b, start.saturating_sub(1))?;
            if at >= from && at < to {
                return Err(refuse(format!(
                    "the event before the range (leaf {}) is stamped {}, inside the period: the range leaves out the period's first events",
                    b.event.index,
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )));
            }
        }
    }
    match (&boundaries.after, range.end) {
        (None, end) if end == checkpoint.size => {}
        (None, end) => {
            return Err(refuse(format!(
                "proof.json does not prove leaf {end}, the event after the range: the period may end later"
            )))
        }
        (Some(a), end) => {
            let at = proved("after", a, end)?;
            if at < to {
                return Err(refuse(format!(
                    "the event after the range (leaf {end}) is stamped {}, before the period's end: the range leaves out the period's last events",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )));
            }
        }
    }
    Ok(())
}
