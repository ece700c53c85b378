//! The read side of EUCORA: the event schema every reader shares, and pure folds over it.
//!
//! Nothing in this crate performs I/O, reads a clock or draws a random number: every time a fold
//! uses comes from an event's `occurred_at`, so folding the same stream always yields the same state.
//! The write side (`eucora`'s aggregate) applies events through [`intent::IntentState::fold`] too,
//! so the rules and the views read one state machine.
//!
//! - [`event`]: the versioned event payloads and the value types they carry.
//! - [`access`]: the events of principals' streams (created, token rotated, revoked).
//! - [`decode`]: stored (type, version, payload) to an event, upcasting older versions.
//! - [`describe`]: an event in words, one line, for people (the command line, evidence reports).
//! - [`governance`]: the policy stream and refused commands.
//! - [`heads`]: the intent-heads index a checkpoint commits to, its proofs and their verifiers.
//! - [`intent`]: the per-intent state fold (lifecycle, ring timings, gate results).
//! - [`integrity`]: the leaf hashes and chain that seal the global stream.
//! - [`merkle`]: the RFC 9162 Merkle tree over the global stream, its proofs and their verifiers.
//! - [`metrics`]: the domain metrics (docs/runbook.md), rendered as Prometheus text.

pub mod access;
pub mod cost;
pub mod decode;
pub mod describe;
pub mod event;
pub mod forecast;
pub mod governance;
pub mod heads;
pub mod integrity;
pub mod intent;
pub mod merkle;
pub mod metrics;
pub mod schema;
pub mod time;

/// Literal events for tests, here and in `eucora`'s (feature `fixtures`).
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
