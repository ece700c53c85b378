//! `eucora demo` and `eucora slo rules|tests`: traffic for the dashboards and alerts, and the SLO
//! rules generated from the policy.

use super::{open_existing, say, shutdown_signal, Failure};
use crate::config::{DemoArgs, SloCommand};

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

/// `eucora slo rules|tests`: the Prometheus SLO rules, or their promtool tests, for a policy.
pub fn slo(command: SloCommand) -> Result<(), Failure> {
    let (SloCommand::Rules { policy: path } | SloCommand::Tests { policy: path }) = &command;
    let policy = match path {
        Some(path) => {
            crate::domain::Policy::load(&path.to_string_lossy()).map_err(|e| e.to_string())?
        }
        None => crate::domain::Policy::default(),
    };
    let text = match command {
        SloCommand::Rules { .. } => crate::slo::rules(&policy)?,
        SloCommand::Tests { .. } => crate::slo::tests(&policy)?,
    };
    say(format_args!("{}", text.trim_end()))?;
    Ok(())
}
