//! The command line. Every flag can also be set by its `EUCORA_*` environment variable; no
//! setting is required to start.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

mod deployments;
mod evidence;
pub use deployments::{CreateArgs, DeploymentsCommand};
pub use evidence::{EvidenceCommand, EvidenceSource, ExportArgs, HeadArgs};

#[derive(Debug, Parser)]
#[command(
    name = "eucora",
    version,
    about = "EUCORA: an event-sourced deployment control plane"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Migrate the database, then serve the HTTP API until SIGTERM or Ctrl-C.
    ///
    /// Example: eucora serve --policy docs/demo-policy.toml --listen 127.0.0.1:8000
    Serve(ServeArgs),
    /// Apply the database migrations and exit.
    ///
    /// Example: eucora migrate --database-url postgres://eucora@db.example/eucora
    Migrate(DbArgs),
    /// Manage principals' bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage the key that signs the log's checkpoints and evidence bundles.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Print the Prometheus SLO rules (burn-rate alerts) or their promtool tests, generated from
    /// the policy (docs/observability.md, "SLOs").
    #[command(subcommand)]
    Slo(SloCommand),
    /// Print the predictive alerting rules (forecast compliance, queue trends, error budgets) or
    /// their promtool tests, generated from the policy (docs/observability.md, "Forecasts").
    #[command(subcommand)]
    Forecast(ForecastCommand),
    /// Export compliance evidence from the database, or verify a bundle offline.
    #[command(subcommand)]
    Evidence(EvidenceCommand),
    /// Print one deployment intent's history.
    ///
    /// Example: eucora events --deployment 0b5c5d8e-4f8a-4c1e-9d2b-6f3a1e7c9a40 --json
    Events(EventsArgs),
    /// Rebuild every projection from position 0, verify the stream against its Merkle log, and print
    /// a digest of the rebuilt domain metrics. Exits non-zero naming the first bad position.
    ///
    /// Example: eucora replay --metrics-out replayed.prom
    Replay(ReplayArgs),
    /// Drive seeded, realistic traffic through a running server's API (intents, CAB decisions,
    /// rollout reports, promotions, rollbacks), so dashboards and alerts have data to show.
    /// Acts with the tokens given, or creates its own principals in the server's database.
    ///
    /// Example: eucora demo --url http://127.0.0.1:8000 --duration 60s
    Demo(DemoArgs),
    /// Work with deployment intents on a running server (`--server`, `--token`): list, show,
    /// create, decide, report, promote and roll back. Exit status: 0 done, 3 refused by the
    /// server (4xx: the problem's detail is printed), 1 failed (unreachable, 5xx), 2 bad usage.
    #[command(subcommand)]
    Deployments(DeploymentsCommand),
    /// Which policies were in force, from a running server's policy stream (`--server`,
    /// `--token`, an auditor's or admin's): history, show DIGEST, diff A B. Exit status as for
    /// `deployments`.
    Policy(PolicyArgs),
    /// Run a connector simulator that speaks the connector protocol (docs/connectors.md): a
    /// device population per ring converging over time, with configurable latency, failures,
    /// 429s, outages and drift, counting side effects per idempotency key.
    ///
    /// Example: eucora connector-sim --listen 127.0.0.1:9100 --devices 500 --failure-rate 0.05
    ConnectorSim(ConnectorSimArgs),
}

#[derive(Debug, Args)]
pub struct ConnectorSimArgs {
    /// Address to listen on.
    #[arg(long, env = "EUCORA_SIM_LISTEN", default_value = "127.0.0.1:9100")]
    pub listen: String,
    /// Devices per ring, LAB to GLOBAL, comma separated.
    #[arg(long, default_value = "10,50,200,1000,5000", value_parser = devices)]
    pub devices: [u64; 5],
    /// How long an assignment takes to reach all of its ring's devices.
    #[arg(long, default_value = "5s", value_parser = interval)]
    pub converge: std::time::Duration,
    /// Share of devices whose install fails, 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub device_failure_rate: f64,
    /// Milliseconds added to every protocol answer.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of protocol calls answered 503, 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub failure_rate: f64,
    /// Share of protocol calls answered 429 with Retry-After, 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub throttle_rate: f64,
    /// The Retry-After of a 429, in seconds.
    #[arg(long, default_value_t = 1)]
    pub retry_after: u64,
    /// An outage window from start, AFTER+FOR (e.g. 30s+20s): every protocol call answers 503
    /// within it. Repeatable.
    #[arg(long = "outage", value_parser = outage)]
    pub outages: Vec<(std::time::Duration, std::time::Duration)>,
    /// Seed of the fault draws, so a run can be repeated.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A file holding the bearer token protocol calls must carry (401 without, 403 with
    /// another); without it, calls need none.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
}

fn devices(text: &str) -> Result<[u64; 5], String> {
    let counts: Vec<u64> = text
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .ok()
                .filter(|n| (1..=10_000_000).contains(n))
        })
        .collect::<Option<_>>()
        .ok_or_else(|| format!("{text:?}: each count is a whole number from 1 to 10000000"))?;
    counts
        .try_into()
        .map_err(|c: Vec<u64>| format!("{text:?}: five counts, LAB to GLOBAL, not {}", c.len()))
}

fn share(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|f| (0.0..=1.0).contains(f))
        .ok_or_else(|| format!("{text:?} is not a share between 0 and 1"))
}

fn outage(text: &str) -> Result<(std::time::Duration, std::time::Duration), String> {
    let (after, lasting) = text
        .split_once('+')
        .ok_or_else(|| format!("{text:?} is not AFTER+FOR, like 30s+20s"))?;
    Ok((
        crate::domain::policy::duration(after)
            .and_then(|d| d.to_std().ok())
            .ok_or_else(|| format!("{after:?} is not a duration like \"30s\""))?,
        interval(lasting)?,
    ))
}

/// Where a client command sends its requests, and as whom.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the EUCORA server.
    #[arg(
        long,
        env = "EUCORA_SERVER",
        default_value = "http://127.0.0.1:8000",
        global = true
    )]
    pub server: String,
    /// Bearer token (from `eucora token create`); never printed.
    #[arg(long, env = "EUCORA_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the server's JSON instead of a table, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `eucora policy`'s arguments.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Every policy activated, oldest first: digest, when, by whom, from where, which it replaced.
    ///
    /// Example: eucora policy --server http://127.0.0.1:8000 --token "$AUDREY" history
    History,
    /// One policy's record and its whole text.
    ///
    /// Example: eucora policy show 3f2a9c1e
    Show {
        /// Its SHA-256, or a unique prefix of at least 8 hex digits.
        digest: String,
    },
    /// The line diff of two policies' texts (unified format), from the first to the second.
    ///
    /// Example: eucora policy diff 3f2a9c1e 9b0d44e7
    Diff {
        /// The earlier policy's digest (or a unique prefix).
        from: String,
        /// The later policy's digest (or a unique prefix).
        to: String,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The server's database, where the demo's principals are created when no tokens are given.
    #[command(flatten)]
    pub db: DbArgs,
    /// Act with these tokens (from `eucora token create`) instead of creating principals in the
    /// server's database: all three, for a server whose database is out of reach.
    #[arg(long, env = "EUCORA_DEMO_REQUESTER_TOKEN", hide_env_values = true)]
    pub requester_token: Option<String>,
    /// The CAB approver's token (with `--requester-token`).
    #[arg(long, env = "EUCORA_DEMO_APPROVER_TOKEN", hide_env_values = true)]
    pub approver_token: Option<String>,
    /// The deployer's token (with `--requester-token`).
    #[arg(long, env = "EUCORA_DEMO_DEPLOYER_TOKEN", hide_env_values = true)]
    pub deployer_token: Option<String>,
    /// Base URL of the running server.
    #[arg(long, env = "EUCORA_DEMO_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// How long to run, in seconds; 0 runs until Ctrl-C or SIGTERM (either also ends a timed run).
    #[arg(long, env = "EUCORA_DEMO_DURATION", default_value_t = 60)]
    pub duration: u64,
    /// Seed for every choice the demo makes.
    #[arg(long, env = "EUCORA_DEMO_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Intents in flight at once.
    #[arg(long, env = "EUCORA_DEMO_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub concurrency: u64,
    /// Mean pause between two steps of one intent, in milliseconds.
    #[arg(long, env = "EUCORA_DEMO_PACE_MS", default_value_t = 500)]
    pub pace_ms: u64,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Write the rebuilt domain metrics' exposition text to this file.
    #[arg(long)]
    pub metrics_out: Option<PathBuf>,
    /// As for `serve`: must match the servers' setting for the text to match theirs.
    #[arg(long, env = "EUCORA_METRICS_APP_LABEL_LIMIT", default_value_t = 200)]
    pub metrics_app_label_limit: usize,
}

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Where events are kept: a SQLite file (`sqlite://eucora.db`, created on first start) or a
    /// PostgreSQL URL (`postgres://user@host/db`).
    #[arg(
        long,
        env = "EUCORA_DATABASE_URL",
        default_value = "sqlite://eucora.db"
    )]
    pub database_url: String,
    /// Most database connections to hold open (SQLite readers are capped at 8; it has one writer).
    #[arg(long, env = "EUCORA_DB_POOL_SIZE", default_value_t = 32)]
    pub db_pool_size: u32,
}

pub use crate::telemetry::LogFormat;

/// `--checkpoint-interval`'s default: a committed event is under a signed checkpoint within
/// about 1.25 times this.
pub const DEFAULT_CHECKPOINT_INTERVAL: &str = "500ms";

/// `--dispatch-max-lag`'s default.
pub const DEFAULT_DISPATCH_MAX_LAG: &str = "250ms";

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Address to listen on, `HOST:PORT` with a host name or an IP address; port 0 picks a free
    /// port (the address is printed on stdout).
    #[arg(long, env = "EUCORA_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// TOML file overriding the promotion gate thresholds (see docs/operations.md).
    #[arg(long, env = "EUCORA_POLICY")]
    pub policy: Option<PathBuf>,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "EUCORA_BODY_LIMIT", default_value_t = 64 * 1024)]
    pub body_limit: usize,
    /// Seconds a request may run before it is answered with 503.
    #[arg(long, env = "EUCORA_REQUEST_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout: u64,
    /// Seconds a connection may take to send a request's headers, or stay idle between requests,
    /// before it is closed.
    #[arg(long, env = "EUCORA_HEADER_READ_TIMEOUT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout: u64,
    /// Connections served at once; past that a new connection is closed at once. Default: what
    /// the process's open-file limit allows after a reserve for the database and the health
    /// probes (at most 10,000); a larger value is lowered to that.
    #[arg(long, env = "EUCORA_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: Option<u64>,
    /// Requests a minute each principal may make (all of them at once, at most); past it the
    /// server answers 429 with `Retry-After`. Unlimited when not given.
    #[arg(long, env = "EUCORA_RATE_LIMIT", value_name = "REQUESTS_PER_MINUTE",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_limit: Option<u32>,
    /// Failed authentications (a missing, unknown, expired or revoked token) a minute each client
    /// address may make, all of them at once at most; past it every request from the address that
    /// takes a token is answered 429 with `Retry-After`, before its token is looked up, until the
    /// allowance refills. The address is the TCP peer's (behind a reverse proxy, the proxy's).
    /// 0 turns the limit off.
    #[arg(long, env = "EUCORA_AUTH_FAILURE_LIMIT", value_name = "FAILURES_PER_MINUTE",
          default_value_t = 60, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub auth_failure_limit: u32,
    /// A web console session unused this long is ended (`30m`, `2h`).
    #[arg(long, env = "EUCORA_SESSION_IDLE", default_value = "30m", value_parser = interval)]
    pub session_idle: std::time::Duration,
    /// The URL users reach this server at; when it is https, console cookies are `Secure`.
    #[arg(long, env = "EUCORA_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Seconds to let requests in flight finish after SIGTERM.
    #[arg(long, env = "EUCORA_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// How many apps keep their own `app_name` label in the domain metrics (the first to appear
    /// in the stream); the rest are counted as `other`.
    #[arg(long, env = "EUCORA_METRICS_APP_LABEL_LIMIT", default_value_t = 200)]
    pub metrics_app_label_limit: usize,
    /// Log format on stderr.
    #[arg(long, env = "EUCORA_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// The key that signs the log's checkpoints (`eucora key generate` writes one). Default on
    /// SQLite: `<database file>.key`, made on first start; on PostgreSQL there is no default, and
    /// without one no checkpoint is signed.
    #[arg(long, env = "EUCORA_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// The connectors file (TOML, one table per connector type such as `[intune]` with
    /// `base_url`; docs/connectors.md). Without it nothing is dispatched, and rollout results
    /// are reported by hand.
    #[arg(long, env = "EUCORA_CONNECTORS")]
    pub connectors: Option<PathBuf>,
    /// Where the latest signed checkpoint is also kept, outside the database, and checked against
    /// at start-up (made 0700, files 0600). Default: `$XDG_STATE_HOME/eucora/checkpoints/<id>`
    /// (else `~/.local/state/…`), one per database, away from the database's own directory.
    #[arg(long, env = "EUCORA_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// A witness to which each signed checkpoint is POSTed (C2SP tlog-witness `add-checkpoint`)
    /// before it is kept; a checkpoint it says does not extend what it accepted is an integrity
    /// failure, and its answer is kept in the checkpoint directory.
    #[arg(long, env = "EUCORA_CHECKPOINT_WITNESS", value_name = "URL")]
    pub checkpoint_witness: Option<String>,
    /// With connectors: how far behind its commit the dispatcher may take an action before
    /// creates, approvals, promotions and rollbacks are held (each at most 2 s) for it to catch up.
    #[arg(long, env = "EUCORA_DISPATCH_MAX_LAG", default_value = DEFAULT_DISPATCH_MAX_LAG, value_parser = interval)]
    pub dispatch_max_lag: std::time::Duration,
    /// Sign a checkpoint at least this often while the log grows.
    #[arg(long, env = "EUCORA_CHECKPOINT_INTERVAL", default_value = DEFAULT_CHECKPOINT_INTERVAL, value_parser = interval)]
    pub checkpoint_interval: std::time::Duration,
    /// Sign a checkpoint as soon as the log has grown by this many events.
    #[arg(long, env = "EUCORA_CHECKPOINT_EVENTS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_events: u64,
    /// Benchmarks only, never a command-line option: `false` runs the server without the Merkle
    /// log projection (so without checkpoints, integrity checks or evidence), to measure what the
    /// log costs the command path.
    #[arg(skip = true)]
    pub merkle_log: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Write a new Ed25519 signing key to a file (0600, never overwritten) and print its verifier
    /// key (`<name>+<id>+<key>`), which auditors use to check checkpoints and evidence.
    ///
    /// Example: eucora key generate --out /etc/eucora/signing.key --name eucora.example/log
    Generate {
        /// Where to write the key; the file must not exist.
        #[arg(long)]
        out: PathBuf,
        /// The key's name, which is also the log's origin line.
        #[arg(long, default_value = crate::checkpoints::DEFAULT_KEY_NAME)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SloCommand {
    /// Print `prometheus/rules/slo.yml` for the policy: the SLOs' recording rules and
    /// multi-window, multi-burn-rate alerts.
    ///
    /// Example: eucora slo rules --policy docs/demo-policy.toml > prometheus/rules/slo.yml
    Rules {
        /// The policy file the server runs with (default: the built-in policy, docs/rules.md).
        #[arg(long, env = "EUCORA_POLICY")]
        policy: Option<PathBuf>,
    },
    /// Print `prometheus/tests/slo_test.yml` for the policy: each alert's promtool tests just
    /// inside and just outside each threshold.
    ///
    /// Example: eucora slo tests > prometheus/tests/slo_test.yml && promtool test rules prometheus/tests/slo_test.yml
    Tests {
        #[arg(long, env = "EUCORA_POLICY")]
        policy: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ForecastCommand {
    /// Print `prometheus/rules/forecast.yml` for the policy: the predictive alerts and the series
    /// they record.
    ///
    /// Example: eucora forecast rules --policy docs/demo-policy.toml > prometheus/rules/forecast.yml
    Rules {
        /// The policy file the server runs with (default: the built-in policy, docs/rules.md).
        #[arg(long, env = "EUCORA_POLICY")]
        policy: Option<PathBuf>,
    },
    /// Print `prometheus/tests/forecast_test.yml` for the policy: each alert's promtool tests
    /// just inside and just outside its threshold.
    ///
    /// Example: eucora forecast tests > prometheus/tests/forecast_test.yml
    Tests {
        /// The policy file the server runs with (default: the built-in policy, docs/rules.md).
        #[arg(long, env = "EUCORA_POLICY")]
        policy: Option<PathBuf>,
    },
}

/// A duration such as `1s`, `30m` or `24h`.
fn interval(text: &str) -> Result<std::time::Duration, String> {
    crate::domain::policy::duration(text)
        .and_then(|d| d.to_std().ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a duration like \"500ms\", \"1s\" or \"5m\""))
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a principal and print its bearer token, alone, on stdout. Only its hash is stored.
    ///
    /// Example: eucora token create --subject carol --role cab_approver --expires-in 30d
    Create(TokenCreateArgs),
    /// List principals: id, subject, role, state (active, expired, revoked), created, expires.
    ///
    /// Example: eucora token list --json
    List(TokenListArgs),
    /// Revoke a principal: its token stops working on every server at once.
    ///
    /// Example: eucora token revoke 0190f5c2-0000-7000-8000-000000000001 --by ops-lead
    Revoke(TokenIdArgs),
    /// Give a principal a new token (printed alone on stdout); the old one stops working at once.
    ///
    /// Example: eucora token rotate 0190f5c2-0000-7000-8000-000000000001 --expires-in 90d
    Rotate(TokenRotateArgs),
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Create the database if it does not exist yet (a new installation's first token, before
    /// `eucora serve` ran). Without it, a database that does not exist is refused, so that a
    /// token is never made against a database the server does not use.
    #[arg(long)]
    pub init: bool,
    /// Who the principal is (a person or a connector), as recorded on its events.
    #[arg(long)]
    pub subject: String,
    /// requester, cab_approver, deployer, auditor, admin or connector (subject
    /// `connector:<its name>`).
    #[arg(long)]
    pub role: String,
    /// How long the token works: `12h`, `30d`, `52w` (at most 3 years).
    #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = interval)]
    pub expires_in: std::time::Duration,
    /// Who makes this change, as recorded on the principal's event (`cli:NAME`); default: the
    /// login running the command (USER or LOGNAME). With neither, the change is refused.
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
    /// Grant a role that conflicts with one the subject already holds (requester and CAB
    /// approver), for this reason, recorded on the principal's event.
    #[arg(long, value_name = "REASON")]
    pub allow_conflict: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenListArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TokenIdArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The principal's id (from `eucora token list`).
    pub id: Uuid,
    /// Who makes this change, as recorded on the principal's event (`cli:NAME`); default: the
    /// login running the command (USER or LOGNAME). With neither, the change is refused.
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenRotateArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The principal's id (from `eucora token list`).
    pub id: Uuid,
    /// How long the new token works.
    #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = interval)]
    pub expires_in: std::time::Duration,
    /// Who makes this change, as recorded on the principal's event (`cli:NAME`); default: the
    /// login running the command (USER or LOGNAME). With neither, the change is refused.
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The deployment intent's id.
    #[arg(long)]
    pub deployment: Uuid,
    /// Print the stream as JSON instead of one line per event.
    #[arg(long)]
    pub json: bool,
}
