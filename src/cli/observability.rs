//! `eucora demo`, `eucora slo rules|tests` and `eucora forecast rules|tests`: traffic for the
//! dashboards and alerts, and the SLO and predictive rules generated from the policy.

use super::{open_existing, say, shutdown_signal, Failure};
use std::path::PathBuf;

use crate::config::{DemoArgs, ForecastCommand, SloCommand};
use crate::domain::Policy;

/// `eucora demo`: seeded traffic through the real API.
pub async fn demo(args: DemoArgs) -> Result<(), Failure> {
    let crew = match (
        args.requester_token.clone(),
        args.approver_token.clone(),
        args.deployer_token.clone(),
    ) {
        (Some(requester), Some(approver), Some(deployer)) => crate::demo::DemoCrew {
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
            crate::demo::DemoCrew::issue(&store).await?
        }
        _ => {
            return Err("give all three of --requester-token, --approver-token and \
                 --deployer-token, or none (the demo then creates its principals in the \
                 server's database)"
                .into())
        }
    };
    let plan = crate::demo::DemoPlan {
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
        done = crate::demo::run(&plan, &crew) => done?,
        () = stop => return Ok(()),
    };
    say(format_args!("{summary}"))?;
    Ok(())
}

/// The policy file given, or the built-in policy.
fn policy(path: &Option<PathBuf>) -> Result<Policy, Failure> {
    Ok(match path {
        Some(path) => Policy::load(&path.to_string_lossy()).map_err(|e| e.to_string())?,
        None => Policy::default(),
    })
}

/// `eucora slo rules|tests`: the Prometheus SLO rules, or their promtool tests, for a policy.
pub fn slo(command: SloCommand) -> Result<(), Failure> {
    let text = match &command {
        SloCommand::Rules { policy: path } => crate::slo::rules(&policy(path)?)?,
        SloCommand::Tests { policy: path } => crate::slo::tests(&policy(path)?)?,
    };
    say(format_args!("{}", text.trim_end()))?;
    Ok(())
}

/// `eucora forecast rules|tests`: the predictive alerting rules, or their promtool tests, for a
/// policy.
pub fn forecast(command: ForecastCommand) -> Result<(), Failure> {
    let text = match &command {
        ForecastCommand::Rules { policy: path } => crate::forecast::rules(&policy(path)?),
        ForecastCommand::Tests { policy: path } => crate::forecast::tests(&policy(path)?),
    };
    say(format_args!("{}", text.trim_end()))?;
    Ok(())
}
