//! `eucora events` and `eucora replay`: one intent's history, and everything rebuilt from the
//! stream with the integrity check.

use super::{open_existing, say, Failure};
use crate::config::{EventsArgs, ReplayArgs};

/// `eucora events`: one intent's events, a line each (or JSON).
pub async fn events(args: EventsArgs) -> Result<(), Failure> {
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
                eucora_projections::describe::event_line(stored.sequence, e),
                m.correlation_id
            ))?;
        }
    }
    Ok(())
}

/// `eucora replay`: the projections rebuilt from position 0, the Merkle log verified.
pub async fn replay(args: ReplayArgs) -> Result<(), Failure> {
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
    let report = crate::replay::replay(&store, args.metrics_app_label_limit, |n| {
        bar.set_position(n)
    })
    .await
    .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    if let Some(path) = &args.metrics_out {
        std::fs::write(path, &report.metrics)
            .map_err(|e| format!("cannot write {}: {e}", crate::domain::absolute(path)))?;
    }
    say(format_args!(
        "replayed {} events: {} verified against the log, {} newly logged; {} signed checkpoints \
         hold",
        report.events, report.verified, report.logged, report.signed
    ))?;
    say(format_args!(
        "intent read model: {} rows rewritten, {} removed (the rest matched the rebuild)",
        report.view.rewritten, report.view.removed
    ))?;
    say(format_args!("domain metrics sha256:{}", report.digest))?;
    Ok(())
}
