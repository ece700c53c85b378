//! `eucora deployments`: the operator's client for deployment intents on a running server.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use eucora_projections::event::{Ring, Status};

use super::ClientArgs;

/// The one of `names` that `given` spells, in any case, or an error in our words that lists
/// them: what the command line checks before it sends anything.
fn one_of(what: &str, names: &[&str], given: &str) -> Result<String, String> {
    names
        .iter()
        .find(|n| n.eq_ignore_ascii_case(given.trim()))
        .map(|n| n.to_string())
        .ok_or_else(|| format!("{what} must be one of {} (got `{given}`)", names.join(", ")))
}

fn ring(given: &str) -> Result<String, String> {
    one_of("ring", &Ring::ALL.map(Ring::as_str), given)
}

fn status(given: &str) -> Result<String, String> {
    one_of("status", &Status::ALL.map(Status::as_str), given)
}

fn change_type(given: &str) -> Result<String, String> {
    one_of("change type", &["standard", "normal", "emergency"], given)
}

fn site_class(given: &str) -> Result<String, String> {
    one_of(
        "site class",
        &["online", "intermittent", "air_gapped"],
        given,
    )
}

#[derive(Debug, Subcommand)]
pub enum DeploymentsCommand {
    /// List intents in creation order, with the API's filters.
    ///
    /// Example: eucora deployments list --status awaiting_cab --ring LAB
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Only intents in this state (awaiting_cab, approved, deployed, completed, rejected,
        /// rolled_back; any case).
        #[arg(long, value_parser = status)]
        status: Option<String>,
        /// Only intents whose current ring is this one (any case).
        #[arg(long, value_parser = ring)]
        ring: Option<String>,
        /// Only intents of this application.
        #[arg(long)]
        app_name: Option<String>,
        /// Only emergency changes awaiting retrospective approval: pending or overdue.
        #[arg(long)]
        retro_approval: Option<String>,
        /// Only the intent with this external change reference (such as CHG0031337).
        #[arg(long, value_name = "REF")]
        change_ref: Option<String>,
        /// Page size, 1 to 500.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Start after this cursor (printed after a full page).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one intent as it now stands.
    ///
    /// Example: eucora deployments get 0b5c5d8e-4f8a-4c1e-9d2b-6f3a1e7c9a40
    Get {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// One intent's history: who did what, of record, and what each event says.
    ///
    /// Example: eucora deployments history 0b5c5d8e-4f8a-4c1e-9d2b-6f3a1e7c9a40 --as-of 2026-12-01T00:00:00Z
    History {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        /// Only events up to this RFC 3339 time, and the state as it stood then.
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Request a deployment intent, from flags or a JSON file (`--file`, `-` for stdin).
    ///
    /// Example: eucora deployments create --app-name 7zip --version 24.08 --connector-type intune --target-ring PILOT --rollback-validated
    Create(CreateArgs),
    /// Approve an intent awaiting CAB, or an emergency change retrospectively.
    ///
    /// Example: eucora deployments approve 0b5c5d8e-4f8a-4c1e-9d2b-6f3a1e7c9a40 --comment "tested in LAB"
    Approve {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        /// Why it is approved, recorded on the approval.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject an intent awaiting CAB, or an emergency change retrospectively.
    ///
    /// Example: eucora deployments reject 0b5c5d8e-4f8a-4c1e-9d2b-6f3a1e7c9a40 --reason "no rollback plan"
    Reject {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        /// Why, in words; recorded on the event.
        #[arg(long)]
        reason: String,
    },
    /// Report cumulative rollout results for the intent's current ring.
    ///
    /// Example: eucora deployments report 0b5c5d8e-4f8a-4c1e-9d2b-6f3a1e7c9a40 --ring LAB --target-devices 50 --succeeded 49 --failed 1
    Report {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        /// The ring the results are for: the intent's current ring (LAB, CANARY, PILOT,
        /// DEPARTMENT or GLOBAL; any case).
        #[arg(long, value_parser = ring)]
        ring: String,
        /// Devices the ring's assignment targets.
        #[arg(long)]
        target_devices: u64,
        /// Devices where the install succeeded so far.
        #[arg(long)]
        succeeded: u64,
        /// Devices where it failed so far.
        #[arg(long)]
        failed: u64,
        /// Incidents raised against this rollout so far.
        #[arg(long, default_value_t = 0)]
        incidents: u64,
    },
    /// Promote to the next ring; every gate's verdict is printed, and a blocked promotion exits 3.
    ///
    /// Example: eucora deployments promote 0b5c5d8e-4f8a-4c1e-9d2b-6f3a1e7c9a40
    Promote {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Roll an intent back.
    ///
    /// Example: eucora deployments rollback 0b5c5d8e-4f8a-4c1e-9d2b-6f3a1e7c9a40 --reason "crash on start"
    Rollback {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        /// Why, in words; recorded on the event.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The whole request as JSON (the body of POST /api/v1/deployments, docs/api.md); `-` reads standard input. Flags given
    /// beside it override its fields.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The application's name.
    #[arg(long)]
    pub app_name: Option<String>,
    /// The version to roll out.
    #[arg(long)]
    pub version: Option<String>,
    /// intune, jamf, sccm, landscape or ansible.
    #[arg(long)]
    pub connector_type: Option<String>,
    /// The ring it starts in (default LAB): LAB, CANARY, PILOT, DEPARTMENT or GLOBAL (any case).
    #[arg(long, value_parser = ring)]
    pub start_ring: Option<String>,
    /// The last ring it is meant to reach (any case).
    #[arg(long, value_parser = ring)]
    pub target_ring: Option<String>,
    /// standard, normal or emergency (any case).
    #[arg(long, value_parser = change_type)]
    pub change_type: Option<String>,
    /// online, intermittent or air_gapped (any case).
    #[arg(long, value_parser = site_class)]
    pub site_class: Option<String>,
    /// The package runs with administrative privileges: the CAB must decide (docs/rules.md).
    #[arg(long)]
    pub privileged_tooling: bool,
    /// It touches critical infrastructure: a wider blast radius, and by default the CAB must
    /// decide (docs/rules.md).
    #[arg(long)]
    pub critical_infrastructure: bool,
    /// Its rollback was tested: required for an intent that starts outside LAB.
    #[arg(long)]
    pub rollback_validated: bool,
    /// The package's SHA-256, 64 hex digits, recorded and passed to the connector.
    #[arg(long)]
    pub artifact_sha256: Option<String>,
    /// Why the change is needed, recorded on the intent.
    #[arg(long)]
    pub justification: Option<String>,
    /// When the change was committed to source control (RFC 3339, such as
    /// 2026-11-30T09:00:00Z): where its lead time starts.
    #[arg(long, value_name = "TIME")]
    pub source_committed_at: Option<String>,
    /// The change's reference in another system (a ServiceNow CHG number, a Jira key): 1 to 64
    /// printable characters.
    #[arg(long, value_name = "REF")]
    pub change_ref: Option<String>,
    /// The package's size in bytes, 0 to 10,000,000,000,000: what delivering it costs.
    #[arg(long, value_name = "BYTES")]
    pub artifact_bytes: Option<u64>,
    /// A risk factor, `NAME=VALUE` with VALUE from 0 to 1 (privilege_impact, supply_chain_trust,
    /// exploitability, data_access, sbom_vulnerability, operational_complexity, history);
    /// repeat for each. Factors not given are 0.
    #[arg(long = "risk-factor", value_name = "NAME=VALUE")]
    pub risk_factors: Vec<String>,
}
