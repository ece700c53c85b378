//! Compliance evidence: the bundle an auditor takes away (`eucora evidence export`,
//! `GET /api/v1/evidence`, `GET /api/v1/deployments/{id}/evidence`), the controls recomputed from
//! events, and the offline verifier (`eucora evidence verify`), which needs nothing but the bundle
//! and the verifier key. docs/evidence.md documents every file.
//!
//! A bundle is a `.tar.gz` of:
//! - `events.jsonl`: the events, exactly as stored, one JSON object a line, with leaf index and
//!   position, in leaf order;
//! - `checkpoint`: the signed checkpoint the proofs are against;
//! - `proof.json`: a range proof (a period: the events are exactly the leaves `[start, end)`) or an
//!   inclusion proof per event and the intent's head in the checkpoint's intent-heads index (one
//!   deployment: every event of it, and no other), and optionally a consistency proof from an
//!   earlier checkpoint the auditor supplied;
//! - `controls.json`: every control's verdict per intent, with the leaf indices that prove it;
//! - `changes.csv`: the population, one row per change;
//! - `REPORT.html`: the same for people, a section per change;
//! - `VERIFY.md`: how to check it;
//! - `manifest.dsse.json`: a DSSE envelope over an in-toto Statement v1 whose subjects are every
//!   other file with its SHA-256, signed with the log's key.

mod archive;
mod changes;
mod controls;
mod export;
mod format;
mod governance;
mod heads;
mod population;
mod read;
mod report;
mod sample;
mod verify;

pub use archive::tempfile_in_tmp;
pub use controls::{
    intent_controls, rfc3339, ControlsFile, IntentControls, Verdict, CONTROLS, FAIL,
    NOT_APPLICABLE, OPEN, PASS,
};
pub use export::{export, ExportSummary};
pub use format::{
    pae, ConsistencyProof, EventRecord, EvidenceError, Format, InclusionProof, Previous, ProofFile,
    RangeProof, Scope, FILES, MANIFEST,
};
pub use governance::{PolicyInForce, RefusedCommand};
pub use heads::{lookup, verify_lookup, HeadLookup, HeadProof, LookupVerified};
pub use population::Population;
pub use read::{read_bundle, Bundle, Claims, Refused};
pub use report::{derive, scope_words, Derived, Summary};
pub use sample::{draw, parse_weight, workpaper, Drawn, Plan, ATTRIBUTES};
pub use verify::{verify, verify_read, Verified};

/// Drops `value` on a thread of its own: a million events' decoded forms take a core a quarter
/// of a second to free, and nothing need wait for it (a command line that exits next does not
/// wait at all). Should no thread start, it is dropped here.
fn free_apart<T: Send + 'static>(value: T) {
    let _ = std::thread::Builder::new().spawn(move || drop(value));
}

/// `f` of every item, in their order: the second half on a thread of its own.
fn halves<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let (first, second) = items.split_at(items.len() / 2);
    std::thread::scope(|scope| {
        let later = scope.spawn(|| second.iter().map(&f).collect::<Vec<R>>());
        let mut all: Vec<R> = first.iter().map(&f).collect();
        all.extend(joined(later));
        all
    })
}

/// What a scoped thread returned; its panic, if it panicked, goes on in the caller.
fn joined<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
