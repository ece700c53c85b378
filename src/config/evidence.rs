//! `eucora evidence …`'s arguments: a bundle exported, a head looked up, a bundle verified,
//! summarized or sampled.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use uuid::Uuid;

use super::DbArgs;

#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Write the evidence bundle (a .tar.gz) of a period or of one deployment intent: the
    /// events exactly as stored, the signed checkpoint, the proofs, the controls, the population
    /// and a signed manifest (docs/evidence.md).
    ///
    /// Example: eucora evidence export --from 2026-10-01T00:00:00Z --to 2027-01-01T00:00:00Z --out q4.tar.gz
    Export(ExportArgs),
    /// Write a deployment intent's head under the latest signed checkpoint, with its proof in the
    /// checkpoint's intent-heads index, or, for an id that is no intent, the proof that there is
    /// none. `eucora evidence verify FILE --key K` checks it offline.
    ///
    /// Example: eucora evidence head 0b5c5d8e-4f8a-4c1e-9d2b-6f3a1e7c9a40 --server https://eucora.example --out head.json
    Head(HeadArgs),
    /// Verify a bundle offline, with no database: the manifest's signature and every file's
    /// hash, the checkpoint's signature, the proofs, contiguity, and every control recomputed.
    /// Exits 0 only when all hold; otherwise names the first failure and exits 1.
    ///
    /// Example: eucora evidence verify q4.tar.gz --key verifier.txt
    Verify {
        /// The bundle (.tar.gz).
        file: PathBuf,
        /// A file holding the verifier key line (`<name>+<id>+<key>`).
        #[arg(long)]
        key: PathBuf,
        /// An earlier signed checkpoint you kept: the log must still extend it.
        #[arg(long)]
        previous_checkpoint: Option<PathBuf>,
    },
    /// Summarize a bundle: its scope, population, each control's pass / fail / not applicable /
    /// open counts, and the failing changes by app, version and change reference. With --key it
    /// verifies the bundle first (exit 1 if it does not verify).
    ///
    /// Example: eucora evidence show q4.tar.gz --key verifier.txt
    Show {
        /// The bundle (.tar.gz).
        file: PathBuf,
        /// A file holding the verifier key line: verify the bundle before summarizing it.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Draw a reproducible sample of a bundle's changes and print each one's whole trail (every
    /// event: what, who, when, why, with its leaf index), as a Markdown workpaper.
    ///
    /// Example: eucora evidence sample q4.tar.gz --size 25 --seed 2026-Q4 --weight emergency=3
    Sample {
        /// The bundle (.tar.gz).
        file: PathBuf,
        /// How many changes, from 1 to the population's size.
        #[arg(long)]
        size: usize,
        /// Any text; the same seed draws the same sample.
        #[arg(long)]
        seed: String,
        /// `ATTRIBUTE=WEIGHT`, repeatable: changes with the attribute are that many times as
        /// likely to be drawn. Attributes: emergency, cab_required, rejected, rolled_back,
        /// failed (a control fails), open (a control is open).
        #[arg(long = "weight", value_name = "ATTRIBUTE=WEIGHT")]
        weights: Vec<String>,
        /// Write the workpaper to this file (it must not exist) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A file holding the verifier key line: verify the bundle before sampling it.
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub source: EvidenceSource,
    /// Start of the period (RFC 3339): from the first event stamped at or after it.
    #[arg(long, requires = "to", conflicts_with = "deployment")]
    pub from: Option<String>,
    /// End of the period (RFC 3339): up to the first event stamped at or after it.
    #[arg(long, requires = "from")]
    pub to: Option<String>,
    /// One deployment intent's whole history instead of a period.
    #[arg(long, required_unless_present = "from")]
    pub deployment: Option<Uuid>,
    /// Where to write the bundle; the file must not exist.
    #[arg(long)]
    pub out: PathBuf,
    /// An earlier signed checkpoint: the bundle then proves the log extends it.
    #[arg(long)]
    pub previous_checkpoint: Option<PathBuf>,
}

/// `eucora evidence head`'s arguments.
#[derive(Debug, Args)]
pub struct HeadArgs {
    /// The deployment intent's id.
    pub deployment: Uuid,
    #[command(flatten)]
    pub source: EvidenceSource,
    /// Where to write the lookup (JSON); the file must not exist.
    #[arg(long)]
    pub out: PathBuf,
}

/// Where evidence comes from: the database (with the log's signing key) or a running server.
#[derive(Debug, Args)]
pub struct EvidenceSource {
    #[command(flatten)]
    pub db: DbArgs,
    /// The log's signing key (default on SQLite: `<database file>.key`, as the server uses).
    #[arg(long, env = "EUCORA_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// Fetch from this running server over the API instead of reading the database (no signing
    /// key needed); the client's EUCORA_SERVER.
    #[arg(long, env = "EUCORA_SERVER")]
    pub server: Option<String>,
    /// With --server: an auditor's bearer token (EUCORA_TOKEN; never printed).
    #[arg(long, env = "EUCORA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}
