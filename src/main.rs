//! The `eucora` command line: `serve`, `migrate`, `token create`, `events`, `replay`, `demo`.

/// mimalloc rather than the system allocator: replay and catch-up hand millions of short-lived
/// rows and strings between tasks on different threads, and glibc's malloc spent a fifth of a
/// replay's CPU time on them (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use eucora::app::Application;
use eucora::config::{Cli, CliCommand, DbArgs, DemoArgs, LogFormat, ReplayArgs, TokenCommand};
use eucora::domain::SystemClock;
use eucora::principals::issue_token;
use eucora::store::Store;
use eucora_projections::event::Role;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.command {
        CliCommand::Serve(args) => args.log_format,
        _ => LogFormat::Text,
    };
    eucora::telemetry::init_logging(format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`eucora events --json | head`): stop, as `cat` would.
        Err(Failure::OutputClosed) => ExitCode::SUCCESS,
        Err(Failure::Message(message)) => {
            eprintln!("eucora: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command stopped early.
enum Failure {
    /// Said on stderr, and the exit code is 1.
    Message(String),
    /// Standard output was closed by its reader.
    OutputClosed,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Message(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure::Message(message.to_string())
    }
}

/// Writes one line to standard output; a closed pipe ends the command quietly instead of
/// panicking, as `println!` would.
fn say(line: std::fmt::Arguments) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(line).and_then(|()| out.write_all(b"\n")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::OutputClosed),
        Err(e) => Err(Failure::Message(format!(
            "cannot write to standard output: {e}"
        ))),
    }
}

async fn open(db: &DbArgs) -> Result<Store, String> {
    let store = Store::connect(&db.database_url, db.db_pool_size)
        .await
        .map_err(|e| format!("cannot open {}: {e}", redact(&db.database_url)))?;
    store.migrate().await.map_err(|e| e.to_string())?;
    Ok(store)
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
        CliCommand::Token(TokenCommand::Create(args)) => {
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
            let store = open(&args.db).await?;
            let token = issue_token(&store, subject, role)
                .await
                .map_err(|e| e.to_string())?;
            say(format_args!("{token}"))?;
            Ok(())
        }
        CliCommand::Replay(args) => replay(args).await,
        CliCommand::Demo(args) => demo(args).await,
        CliCommand::Events(args) => {
            let store = open(&args.db).await?;
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
                        "event": e,
                    });
                    say(format_args!("{line}"))?;
                } else {
                    say(format_args!(
                        "#{:<3} {}  {:<22} by {} ({})  correlation {}",
                        stored.sequence,
                        m.occurred_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        e.type_name(),
                        m.actor.subject,
                        m.actor.role.as_str(),
                        m.correlation_id
                    ))?;
                }
            }
            Ok(())
        }
    }
}

async fn demo(args: DemoArgs) -> Result<(), Failure> {
    let store = open(&args.db).await?;
    let crew = eucora::demo::DemoCrew::issue(&store).await?;
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
    let store = open(&args.db).await?;
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
        "replayed {} events: {} verified against their seals, {} newly sealed",
        report.events, report.verified, report.sealed
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
