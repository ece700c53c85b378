//! The retrospective-approval deadline. An emergency change skips the CAB in its start ring and
//! must be approved retrospectively by a due time recorded on its first deployment. When that
//! time passes with no decision, the control plane records it on the intent
//! (`RetroApprovalOverdue`, actor `system:retro_deadline` in role `system`), so the overdue list
//! filter, the `emergency_changes_awaiting_retro_approval{overdue="true"}` gauge and its alert
//! follow from the stream, and a replay sees exactly what they saw.
//!
//! Every server runs the watcher. Two that find the same intent race on its stream version: one
//! appends, the other's command is refused (already overdue), so the event is written once.

use std::sync::Arc;
use std::time::Duration;

use eucora_projections::event::{Actor, Role};
use uuid::Uuid;

use crate::domain::intent::DEADLINE_WATCHER;
use crate::domain::{Action, Clock, Command};
use crate::store::{ListFilter, RetroApproval, Store, StoreError};
use crate::write::{CommandError, Commands};

/// How often the read model is searched for deadlines that have passed.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
const PAGE: i64 = 500;

/// Marks every emergency change whose retrospective approval is past due. Returns how many it
/// marked.
pub async fn mark_overdue(
    store: &Store,
    commands: &Commands,
    clock: &dyn Clock,
) -> Result<usize, StoreError> {
    let filter = ListFilter {
        retro_approval: Some(RetroApproval::Pending),
        ..ListFilter::default()
    };
    let now = clock.now();
    let (mut after, mut marked) = (0, 0);
    loop {
        let rows = store.list_intents(&filter, after, PAGE).await?;
        let Some(last) = rows.last() else {
            return Ok(marked);
        };
        after = last.seq;
        let due = rows.iter().filter(|r| {
            !r.state.retro_approval_overdue
                && r.state.retro_approval_due_at.is_some_and(|due| due < now)
        });
        for row in due {
            let command = Command {
                actor: Actor {
                    subject: DEADLINE_WATCHER.to_string(),
                    role: Role::System,
                },
                correlation_id: format!("retro-deadline-{}", Uuid::new_v4()),
                expected_version: None,
                action: Action::MarkRetroOverdue,
            };
            match commands.execute(row.state.id, command).await {
                Ok(_) => {
                    marked += 1;
                    tracing::warn!(
                        deployment_id = %row.state.id,
                        app_name = %row.state.app_name,
                        due_at = ?row.state.retro_approval_due_at,
                        "emergency change's retrospective CAB approval is overdue"
                    );
                }
                // Decided meanwhile, or marked by another server.
                Err(CommandError::Domain(_)) => {}
                Err(CommandError::Store(e)) => return Err(e),
                Err(e) => tracing::warn!(deployment_id = %row.state.id, error = %e,
                    "could not record an overdue retrospective approval"),
            }
        }
        if (rows.len() as i64) < PAGE {
            return Ok(marked);
        }
    }
}

/// Runs [`mark_overdue`] every [`CHECK_EVERY`] until `shutdown` resolves.
pub async fn watch(
    store: Store,
    commands: Arc<Commands>,
    clock: Arc<dyn Clock>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = mark_overdue(&store, &commands, clock.as_ref()).await {
            tracing::warn!(error = %e, "retrospective-approval deadline check failed; retrying");
        }
    }
}
