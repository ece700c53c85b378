//! Admission: a command that may queue a connector action waits while the dispatcher is behind.
//!
//! The dispatcher and the command path share the server's cores. In a burst, commands commit
//! faster than the dispatcher can send what they owe (each send is a connector call and a
//! command of its own, recording the outcome), and an unbounded queue means every action waits
//! longer than the last. So the dispatcher says, at each claim, how long the oldest action it
//! took for the first time had waited since its commit; while that is over the server's
//! `--dispatch-max-lag`, a create, approval, promotion or rollback waits for it to fall (at most
//! [`MAX_HOLD`]) before it runs. Nothing is refused: a command is only held, and a held command
//! still runs once the hold ends, so a dispatcher that cannot catch up (a slow connector) slows
//! those commands by at most [`MAX_HOLD`] each, and no other command at all.

use std::time::Duration;

use tokio::sync::watch;

use crate::store::Claimed;

/// The longest a command is held.
pub const MAX_HOLD: Duration = Duration::from_secs(2);

/// How far behind the dispatcher is, and how far behind it may fall before commands are held.
pub struct Admission {
    /// Milliseconds from commit to first claim of the action the dispatcher took last.
    behind_ms: watch::Sender<i64>,
    max_lag_ms: i64,
}

impl Admission {
    pub fn new(max_lag: Duration) -> Admission {
        Admission {
            behind_ms: watch::Sender::new(0),
            max_lag_ms: i64::try_from(max_lag.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Records a claim of `room` places at `now_ms` that took `claimed`.
    pub fn claimed(&self, claimed: &[Claimed], room: i64, now_ms: i64) {
        if let Some(behind) = behind(claimed, room, now_ms) {
            self.behind_ms.send_if_modified(|was| {
                let changed = *was != behind;
                *was = behind;
                changed
            });
        }
    }

    /// Waits while the dispatcher is more than the allowed lag behind, for at most
    /// [`MAX_HOLD`]; returns how long it waited (zero when it was not behind).
    pub async fn admit(&self) -> Duration {
        let limit = self.max_lag_ms;
        let mut behind = self.behind_ms.subscribe();
        if *behind.borrow_and_update() <= limit {
            return Duration::ZERO;
        }
        let started = tokio::time::Instant::now();
        let _ = tokio::time::timeout(MAX_HOLD, behind.wait_for(|&ms| ms <= limit)).await;
        started.elapsed()
    }
}

/// How far behind a claim shows the dispatcher to be: the longest an action claimed for the
/// first time waited since its commit; zero when the claim found no new action and had room to
/// spare (the queue is drained); `None` when it says nothing (every place went to actions
/// claimed before, to try again).
fn behind(claimed: &[Claimed], room: i64, now_ms: i64) -> Option<i64> {
    let first = claimed
        .iter()
        .filter(|c| c.first_claim)
        .map(|c| (now_ms - c.entry.committed_ms).max(0))
        .max();
    match first {
        Some(ms) => Some(ms),
        None if (claimed.len() as i64) < room => Some(0),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OutboxEntry;
    use eucora_projections::event::{ConnectorAction, Ring};

    fn claim(committed_ms: i64, first_claim: bool) -> Claimed {
        Claimed {
            seq: committed_ms,
            attempts: u32::from(!first_claim),
            first_claim,
            entry: OutboxEntry {
                idempotency_key: format!("k{committed_ms}"),
                deployment_id: uuid::Uuid::nil(),
                ring: Ring::Lab,
                action: ConnectorAction::Publish,
                correlation_id: String::new(),
                committed_ms,
                traceparent: None,
            },
        }
    }

    #[test]
    fn a_claim_tells_how_long_its_oldest_new_action_waited() {
        let now = 10_000;
        // The oldest new action counts; an action tried before does not, however old.
        let taken = [claim(1_000, false), claim(9_400, true), claim(9_900, true)];
        assert_eq!(behind(&taken, 3, now), Some(600));
        // Nothing new and room to spare: the queue is drained.
        assert_eq!(behind(&[claim(1_000, false)], 3, now), Some(0));
        assert_eq!(behind(&[], 3, now), Some(0));
        // Every place taken by actions tried before: it says nothing.
        assert_eq!(behind(&[claim(1_000, false)], 1, now), None);
    }

    #[tokio::test]
    async fn commands_wait_while_the_dispatcher_is_behind_and_no_longer_than_the_hold() {
        let admission = std::sync::Arc::new(Admission::new(Duration::from_millis(250)));
        // Not behind: admitted at once, and not counted as held.
        assert_eq!(admission.admit().await, Duration::ZERO);

        // Behind: held until a claim shows it caught up.
        admission.claimed(&[claim(0, true)], 64, 900);
        let held = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit().await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !held.is_finished(),
            "a command ran while the dispatcher was behind"
        );
        admission.claimed(&[claim(1_000, true)], 64, 1_100);
        let waited = held.await.unwrap();
        assert!(
            waited >= Duration::from_millis(300) && waited < MAX_HOLD,
            "held {waited:?}"
        );

        // Behind and not catching up: held for MAX_HOLD, then run all the same.
        admission.claimed(&[claim(0, true)], 64, 5_000);
        let waited = admission.admit().await;
        assert!(
            waited >= MAX_HOLD && waited < MAX_HOLD * 2,
            "held {waited:?}"
        );
    }
}
