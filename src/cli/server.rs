//! The long-running commands: `eucora serve`, `eucora migrate` and `eucora connector-sim`.

use std::sync::Arc;

use super::{open, redact, say, shutdown_signal, Failure};
use crate::app::Application;
use crate::config::{ConnectorSimArgs, DbArgs, ServeArgs};
use crate::domain::SystemClock;

/// `eucora serve`: the API, the projections and the background jobs until SIGTERM or Ctrl-C.
pub async fn serve(args: ServeArgs) -> Result<(), Failure> {
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

/// `eucora migrate`: creates the store if need be and applies the migrations.
pub async fn migrate(db: DbArgs) -> Result<(), Failure> {
    open(&db).await?;
    eprintln!("migrations applied to {}", redact(&db.database_url));
    Ok(())
}

/// `eucora connector-sim`: a connector that speaks the protocol, over a simulated population.
pub async fn connector_sim(args: ConnectorSimArgs) -> Result<(), Failure> {
    let shutdown = shutdown_signal()?;
    let config = crate::connector::sim::SimConfig {
        devices: args.devices,
        converge: args.converge,
        device_failure_rate: args.device_failure_rate,
        faults: crate::connector::sim::Faults {
            latency_ms: args.latency_ms,
            failure_rate: args.failure_rate,
            throttle_rate: args.throttle_rate,
            retry_after_seconds: args.retry_after,
            outage_seconds: None,
            slow: Default::default(),
        },
        outages: args.outages,
        seed: args.seed,
        token: match &args.token_file {
            None => None,
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read {}: {e}", crate::domain::absolute(file)))?
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
    crate::connector::sim::serve(listener, config, shutdown)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
