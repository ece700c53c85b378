//! The `eucora` command line: `serve`, `migrate`, `token create`, `events`, `replay`, `demo`,
//! and the client commands `deployments …` (src/cli).

/// mimalloc rather than the system allocator: replay and catch-up hand millions of short-lived
/// rows and strings between tasks on different threads, and glibc's malloc spent a fifth of a
/// replay's CPU time on them (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use eucora::app::Application;
use eucora::cli::{say, Failure};
use eucora::config::{
    Cli, CliCommand, DbArgs, DemoArgs, EvidenceCommand, ExportArgs, KeyCommand, LogFormat,
    ReplayArgs, SloCommand, TokenCommand,
};
use eucora::domain::SystemClock;
use eucora::principals::{expiry, issue_token, operator_change, rotate_token, PrincipalOut};
use eucora::store::Store;
use eucora_projections::event::Role;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.command {
        CliCommand::Serve(args) => args.log_format,
        _ => LogFormat::Text,
    };
    // Spans become OpenTelemetry spans only in the server; the other commands log.
    let traces = matches!(cli.command, CliCommand::Serve(_));
    let tracing = match eucora::telemetry::init_logging(format, traces) {
        Ok(tracing) => tracing,
        Err(message) => return Failure::Message(message).report(),
    };
    let result = run(cli).await;
    tracing.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

/// Opens the store, creating it if need be (`serve`, `migrate`, `token create`).
async fn open(db: &DbArgs) -> Result<Store, String> {
    let store = Store::connect(&db.database_url, db.db_pool_size)
        .await
        .map_err(|e| format!("cannot open {}: {e}", redact(&db.database_url)))?;
    store.migrate().await.map_err(|e| e.to_string())?;
    Ok(store)
}

/// Opens a store that must already exist: a command that reads one never leaves a new, empty
/// database behind.
async fn open_existing(db: &DbArgs) -> Result<Store, String> {
    if let Some(path) = eucora::store::missing_sqlite_file(&db.database_url) {
        return Err(format!(
            "no database at {path}: pass --database-url (or set EUCORA_DATABASE_URL) to the \
             server's database"
        ));
    }
    open(db).await
}

/// `eucora token …`: principals, changed as the operator running it (`cli:<login>`), each change
/// an event of the principal's stream.
async fn token(command: TokenCommand) -> Result<(), Failure> {
    let change = operator_change();
    match command {
        TokenCommand::Create(args) => {
            let role = Role::parse(&args.role).ok_or_else(|| {
                format!(
                    "unknown role {:?}: use requester, cab_approver, deployer, auditor or admin",
                    args.role
                )
            })?;
            let subject = args.subject.trim();
            if subject.is_empty() || subject.len() > 128 || subject.chars().any(char::is_control) {
                return Err("--subject must be 1 to 128 printable characters".into());
            }
            let expires_at =
                expiry(change.at, args.expires_in).map_err(|e| format!("--expires-in: {e}"))?;
            let store = open(&args.db).await?;
            let (id, token) = issue_token(&store, subject, role, expires_at, &change)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!(
                "principal {id} ({subject}, {}) expires {expires_at}",
                role.as_str()
            );
            say(format_args!("{token}"))
        }
        TokenCommand::List(args) => {
            let store = open_existing(&args.db).await?;
            let principals = store.principals().await.map_err(|e| e.to_string())?;
            let now = chrono::Utc::now();
            let shown: Vec<PrincipalOut> = principals
                .into_iter()
                .map(|p| PrincipalOut::new(p, now))
                .collect();
            if args.json {
                for p in &shown {
                    let line = serde_json::to_string(p).map_err(|e| e.to_string())?;
                    say(format_args!("{line}"))?;
                }
                return Ok(());
            }
            let time =
                |t: &chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
            let rows: Vec<Vec<String>> = shown
                .iter()
                .map(|p| {
                    vec![
                        p.id.to_string(),
                        p.subject.clone(),
                        p.role.as_str().into(),
                        p.state.into(),
                        time(&p.created_at),
                        p.revoked_at
                            .as_ref()
                            .map_or_else(|| time(&p.expires_at), |_| "-".into()),
                    ]
                })
                .collect();
            for line in eucora::cli::table::render(
                &["ID", "SUBJECT", "ROLE", "STATE", "CREATED", "EXPIRES"],
                &rows,
            ) {
                say(format_args!("{line}"))?;
            }
            Ok(())
        }
        TokenCommand::Revoke(args) => {
            let store = open_existing(&args.db).await?;
            let record = store
                .revoke_principal(args.id, &change)
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            eprintln!(
                "principal {} ({}) revoked at {}",
                record.id,
                record.subject,
                record.revoked_at.unwrap_or(change.at)
            );
            Ok(())
        }
        TokenCommand::Rotate(args) => {
            let expires_at =
                expiry(change.at, args.expires_in).map_err(|e| format!("--expires-in: {e}"))?;
            let store = open_existing(&args.db).await?;
            let (record, token) = rotate_token(&store, args.id, expires_at, &change)
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            eprintln!(
                "principal {} ({}) has a new token, expiring {expires_at}; the old one no longer works",
                record.id, record.subject
            );
            say(format_args!("{token}"))
        }
    }
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        CliCommand::Serve(args) => {
            let shutdown = shutdown_signal()?;
            let app = Application::build(&args, Arc::new(SystemClock))
                .await
                .map_err(|e| e.to_string())?;
            let addr = app.local_addr().map_err(|e| e.to_string())?;
            if let Some(key) = app.verifier_key() {
                say(format_args!("eucora checkpoint verifier key: {key}"))?;
            }
            say(format_args!("eucora listening on http://{addr}"))?;
            tracing::info!(%addr, database = %redact(&args.db.database_url), "serving");
            app.run(shutdown).await.map_err(|e| e.to_string())?;
            tracing::info!("stopped");
            Ok(())
        }
        CliCommand::Migrate(db) => {
            open(&db).await?;
            eprintln!("migrations applied to {}", redact(&db.database_url));
            Ok(())
        }
        CliCommand::Token(command) => token(command).await,
        CliCommand::ConnectorSim(args) => {
            let shutdown = shutdown_signal()?;
            let config = eucora::connector::sim::SimConfig {
                devices: args.devices,
                converge: args.converge,
                device_failure_rate: args.device_failure_rate,
                faults: eucora::connector::sim::Faults {
                    latency_ms: args.latency_ms,
                    failure_rate: args.failure_rate,
                    throttle_rate: args.throttle_rate,
                    retry_after_seconds: args.retry_after,
                    outage_seconds: None,
                },
                outages: args.outages,
                seed: args.seed,
                token: match &args.token_file {
                    None => None,
                    Some(file) => Some(
                        std::fs::read_to_string(file)
                            .map_err(|e| format!("cannot read {}: {e}", file.display()))?
                            .trim()
                            .to_string(),
                    )
                    .filter(|t| !t.is_empty()),
                },
            };
            let listener = tokio::net::TcpListener::bind(args.listen.as_str())
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            say(format_args!(
                "eucora connector-sim listening on http://{addr}"
            ))?;
            eucora::connector::sim::serve(listener, config, shutdown)
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
        CliCommand::Replay(args) => replay(args).await,
        CliCommand::Demo(args) => demo(args).await,
        CliCommand::Deployments(command) => eucora::cli::client::run(command).await,
        CliCommand::Evidence(EvidenceCommand::Export(args)) => export(args).await,
        CliCommand::Evidence(EvidenceCommand::Verify {
            file,
            key,
            previous_checkpoint,
        }) => {
            let read = |path: &std::path::Path| {
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
            };
            let verifier = read(&key)?;
            let previous = previous_checkpoint.as_deref().map(read).transpose()?;
            let bundle = std::fs::File::open(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let verified = eucora::evidence::verify(
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
            Ok(())
        }
        CliCommand::Key(KeyCommand::Generate { out, name }) => {
            let key =
                eucora::checkpoints::SigningKey::create(&out, &name).map_err(|e| e.to_string())?;
            eprintln!(
                "signing key written to {} (keep it secret; give auditors the verifier key below)",
                out.display()
            );
            say(format_args!("{}", key.verifier_key()))?;
            Ok(())
        }
        CliCommand::Slo(command) => {
            let (SloCommand::Rules { policy: path } | SloCommand::Tests { policy: path }) =
                &command;
            let policy = match path {
                Some(path) => eucora::domain::Policy::load(&path.to_string_lossy())
                    .map_err(|e| e.to_string())?,
                None => eucora::domain::Policy::default(),
            };
            let text = match command {
                SloCommand::Rules { .. } => eucora::slo::rules(&policy)?,
                SloCommand::Tests { .. } => eucora::slo::tests(&policy)?,
            };
            say(format_args!("{}", text.trim_end()))?;
            Ok(())
        }
        CliCommand::Events(args) => {
            let store = open_existing(&args.db).await?;
            let events = store
                .intent_events(args.deployment)
                .await
                .map_err(|e| e.to_string())?;
            if events.is_empty() {
                return Err(format!("no deployment intent {}", args.deployment).into());
            }
            for stored in &events {
                let e = &stored.event;
                let m = e.meta();
                if args.json {
                    let line = serde_json::json!({
                        "position": stored.position,
                        "sequence": stored.sequence,
                        "event_type": e.type_name(),
                        "trace_id": stored.trace_id,
                        "event": e,
                    });
                    say(format_args!("{line}"))?;
                } else {
                    let trace = match &stored.trace_id {
                        Some(id) => format!(", trace {id}"),
                        None => String::new(),
                    };
                    say(format_args!(
                        "{}  [correlation {}{trace}]",
                        eucora::cli::describe::event_line(stored.sequence, e),
                        m.correlation_id
                    ))?;
                }
            }
            Ok(())
        }
    }
}

async fn export(args: ExportArgs) -> Result<(), Failure> {
    use eucora::evidence::Scope;
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
    let key_path = match (
        &args.signing_key_file,
        eucora::store::sqlite_file(&args.db.database_url),
    ) {
        (Some(path), _) => path.clone(),
        (None, Some(db))
            if eucora::store::backend_of(&args.db.database_url)
                == eucora::store::Backend::Sqlite =>
        {
            std::path::PathBuf::from(format!("{db}.key"))
        }
        _ => return Err("--signing-key-file is required (the key the server signs with)".into()),
    };
    let key = eucora::checkpoints::SigningKey::load(&key_path).map_err(|e| e.to_string())?;
    let previous = args
        .previous_checkpoint
        .as_deref()
        .map(|p| {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        })
        .transpose()?;
    let store = open_existing(&args.db).await?;
    let tree = eucora::projection::log::LogTree::from_parts(
        store.log_subtrees().await.map_err(|e| e.to_string())?,
        store.last_log_tile().await.map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let log = eucora::projection::log::LogView::default();
    log.replace(tree);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let written = eucora::evidence::export(
        &store,
        &log,
        &key,
        &scope,
        previous.as_deref(),
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

async fn demo(args: DemoArgs) -> Result<(), Failure> {
    let crew = match (
        args.requester_token.clone(),
        args.approver_token.clone(),
        args.deployer_token.clone(),
    ) {
        (Some(requester), Some(approver), Some(deployer)) => eucora::demo::DemoCrew {
            requester,
            approver,
            deployer,
        },
        (None, None, None) => {
            let store = open_existing(&args.db).await.map_err(|e| {
                format!(
                    "{e}\n(without the server's database, give the demo tokens: \
                     --requester-token, --approver-token and --deployer-token)"
                )
            })?;
            eucora::demo::DemoCrew::issue(&store).await?
        }
        _ => {
            return Err("give all three of --requester-token, --approver-token and \
                 --deployer-token, or none (the demo then creates its principals in the \
                 server's database)"
                .into())
        }
    };
    let plan = eucora::demo::DemoPlan {
        url: args.url,
        duration: (args.duration > 0).then(|| std::time::Duration::from_secs(args.duration)),
        seed: args.seed,
        concurrency: args.concurrency as usize,
        pace: std::time::Duration::from_millis(args.pace_ms),
    };
    eprintln!(
        "eucora demo: driving {} with {} intents in flight{}",
        plan.url,
        plan.concurrency,
        match plan.duration {
            Some(d) => format!(" for {} s", d.as_secs()),
            None => " until Ctrl-C or SIGTERM".into(),
        }
    );
    let stop = shutdown_signal()?;
    let summary = tokio::select! {
        done = eucora::demo::run(&plan, &crew) => done?,
        () = stop => return Ok(()),
    };
    say(format_args!("{summary}"))?;
    Ok(())
}

async fn replay(args: ReplayArgs) -> Result<(), Failure> {
    use std::io::IsTerminal;
    let store = open_existing(&args.db).await?;
    let total = store.event_count().await.map_err(|e| e.to_string())?;
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(total.max(0) as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} replaying [{bar:40}] {pos}/{len} events ({per_sec}, {eta} left)",
            )
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    let report = eucora::replay::replay(&store, args.metrics_app_label_limit, |n| {
        bar.set_position(n)
    })
    .await
    .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    if let Some(path) = &args.metrics_out {
        std::fs::write(path, &report.metrics)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    say(format_args!(
        "replayed {} events: {} verified against the log, {} newly logged",
        report.events, report.verified, report.logged
    ))?;
    say(format_args!(
        "intent read model: {} rows rewritten, {} removed (the rest matched the rebuild)",
        report.view.rewritten, report.view.removed
    ))?;
    say(format_args!("domain metrics sha256:{}", report.digest))?;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives right after start-up is not missed.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    #[cfg(unix)]
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
    let ctrl_c = tokio::signal::ctrl_c();
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {},
            _ = terminate.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown signal received");
    })
}
