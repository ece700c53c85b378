//! The `eucora` command line: parses the arguments, installs logging, and hands each subcommand to
//! its module in `src/cli` (`serve`, `migrate`, `token …`, `events`, `replay`, `demo`,
//! `evidence …`, `key generate`, `slo …`, `connector-sim`, and the client's `deployments …`).

/// mimalloc rather than the system allocator: replay and catch-up hand millions of short-lived
/// rows and strings between tasks on different threads, and glibc's malloc spent a fifth of a
/// replay's CPU time on them (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;
use eucora::cli::{self, Failure};
use eucora::config::{Cli, CliCommand, EvidenceCommand, KeyCommand, LogFormat};

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
    let result = run(cli.command).await;
    tracing.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

async fn run(command: CliCommand) -> Result<(), Failure> {
    match command {
        CliCommand::Serve(args) => cli::server::serve(args).await,
        CliCommand::Migrate(db) => cli::server::migrate(db).await,
        CliCommand::ConnectorSim(args) => cli::server::connector_sim(args).await,
        CliCommand::Token(command) => cli::token::run(command).await,
        CliCommand::Events(args) => cli::audit::events(args).await,
        CliCommand::Replay(args) => cli::audit::replay(args).await,
        CliCommand::Demo(args) => cli::observability::demo(args).await,
        CliCommand::Slo(command) => cli::observability::slo(command),
        CliCommand::Forecast(command) => cli::observability::forecast(command),
        CliCommand::Deployments(command) => cli::client::run(command).await,
        CliCommand::Policy(args) => cli::policy::run(args.command, &args.client).await,
        CliCommand::Evidence(EvidenceCommand::Export(args)) => cli::evidence::export(args).await,
        CliCommand::Evidence(EvidenceCommand::Head(args)) => cli::evidence::head(args).await,
        CliCommand::Evidence(EvidenceCommand::Verify {
            file,
            key,
            previous_checkpoint,
        }) => cli::evidence::verify(&file, &key, previous_checkpoint.as_deref()),
        CliCommand::Evidence(EvidenceCommand::Show { file, key }) => {
            cli::evidence::show(&file, key.as_deref())
        }
        CliCommand::Evidence(EvidenceCommand::Sample {
            file,
            size,
            seed,
            weights,
            out,
            key,
        }) => cli::evidence::sample(&file, size, seed, &weights, out.as_deref(), key.as_deref()),
        CliCommand::Key(KeyCommand::Generate { out, name }) => {
            cli::evidence::generate_key(&out, &name)
        }
    }
}
