//! The connector outbox: the actions owed to connectors, queued by the outbox projection with its
//! checkpoint and claimed by the dispatchers of every server under a lease (docs/connectors.md).

use eucora_projections::event::{ConnectorAction, Ring};
use uuid::Uuid;

use super::checkpoints::advance_checkpoint;
use super::{Checkpoint, Db, Store, StoreError};

/// One action to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub idempotency_key: String,
    pub deployment_id: Uuid,
    pub ring: Ring,
    pub action: ConnectorAction,
    /// The correlation id of the command that asked for it.
    pub correlation_id: String,
    /// When the event that asked for it was committed, in milliseconds since the epoch.
    pub committed_ms: i64,
    /// The W3C trace context of the command that asked for it, if it was traced.
    pub traceparent: Option<String>,
}

/// An action claimed for dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub seq: i64,
    pub entry: OutboxEntry,
    /// Calls already made for it, by any server.
    pub attempts: u32,
    /// Claimed now for the first time (not to be tried again, nor after a lease expired).
    pub first_claim: bool,
}

/// How a dispatch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The connector accepted it.
    Done,
    /// The connector refused it for good.
    Failed(String),
    /// Nothing to send: no connector of its type is configured, or there is nothing to undo.
    Skipped(String),
    /// Try again at `next_attempt_ms`.
    Retry { next_attempt_ms: i64, error: String },
}

/// The outbox's size: actions pending, and when the oldest of them was committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub pending: i64,
    pub oldest_committed_ms: Option<i64>,
}

/// One settled action, for the benchmark and the tests: its state, calls made and when its first
/// call was made against when its event was committed.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxRow {
    pub idempotency_key: String,
    pub state: String,
    pub attempts: i64,
    pub committed_ms: i64,
    /// When it was first claimed: its first call, unless its connector's breaker was open then.
    pub first_call_ms: Option<i64>,
    pub last_error: Option<String>,
}

type ClaimColumns = (
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
    Option<i64>,
);

impl Store {
    /// The ordinal up to which events are not dispatched: set to `head` the first time it is
    /// asked for, and kept from then on.
    pub async fn dispatch_start(&self, head: i64) -> Result<i64, StoreError> {
        let insert = "INSERT INTO connector_dispatch_start (only_row, ordinal) VALUES (1, $1)
                      ON CONFLICT (only_row) DO NOTHING";
        let select = "SELECT ordinal FROM connector_dispatch_start WHERE only_row = 1";
        Ok(on_writer!(&self.db, pool => {
            sqlx::query(insert).bind(head).execute(pool).await.map(|_| ())?;
            sqlx::query_scalar(select).fetch_one(pool).await?
        }))
    }

    /// Queues `entries` (an entry already queued under its key is left as it is) and moves the
    /// outbox projection's checkpoint, in one transaction.
    pub async fn enqueue(
        &self,
        projection: &str,
        entries: &[OutboxEntry],
        checkpoint: Checkpoint,
    ) -> Result<(), StoreError> {
        let insert = "INSERT INTO connector_outbox
                          (idempotency_key, deployment_id, ring, action, correlation_id, committed_ms,
                           traceparent)
                      VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (idempotency_key) DO NOTHING";
        on_writer!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            for e in entries {
                sqlx::query(insert)
                    .bind(&e.idempotency_key)
                    .bind(e.deployment_id.to_string())
                    .bind(e.ring.as_str())
                    .bind(e.action.as_str())
                    .bind(&e.correlation_id)
                    .bind(e.committed_ms)
                    .bind(&e.traceparent)
                    .execute(&mut *tx)
                    .await?;
            }
            advance_checkpoint(&mut tx, projection, checkpoint).await?;
            tx.commit().await?
        });
        Ok(())
    }

    /// Claims up to `limit` pending actions that are due at `now_ms`, leased to `owner` until
    /// `lease_until_ms`: the oldest first, and an intent's next action only once its earlier ones
    /// are settled, so a rollback never overtakes the publish it undoes. Actions another server
    /// holds an unexpired lease on are left to it; one whose lease expired (its server died) is
    /// claimed again.
    pub async fn claim_outbox(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let sql = "UPDATE connector_outbox SET lease_owner = $1, lease_until_ms = $2,
                          first_call_ms = COALESCE(first_call_ms, $3)
                    WHERE seq IN (
                        SELECT o.seq FROM connector_outbox o
                         WHERE o.state = 'pending' AND o.next_attempt_ms <= $3
                           AND o.lease_until_ms <= $3
                           AND NOT EXISTS (SELECT 1 FROM connector_outbox p
                                            WHERE p.deployment_id = o.deployment_id
                                              AND p.seq < o.seq AND p.state = 'pending')
                         ORDER BY o.seq LIMIT $4 LOCK)
                RETURNING seq, idempotency_key, deployment_id, ring, action, correlation_id, committed_ms,
                          attempts, traceparent, first_call_ms";
        let rows: Vec<ClaimColumns> = match &self.db {
            // One writer: the claim is serialised by the database itself.
            Db::Sqlite { writer, .. } => {
                sqlx::query_as(&sql.replace(" LOCK)", ")"))
                    .bind(owner)
                    .bind(lease_until_ms)
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(writer)
                    .await?
            }
            // Rows another claim is taking are skipped rather than waited for.
            Db::Postgres(pool) => {
                sqlx::query_as(&sql.replace(" LOCK)", " FOR UPDATE SKIP LOCKED)"))
                    .bind(owner)
                    .bind(lease_until_ms)
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
        };
        let mut claimed: Vec<Claimed> = rows
            .into_iter()
            .filter_map(
                |(
                    seq,
                    key,
                    deployment_id,
                    ring,
                    action,
                    correlation_id,
                    committed_ms,
                    attempts,
                    traceparent,
                    first_call_ms,
                )| {
                    Some(Claimed {
                        seq,
                        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                        // Set by this claim: an earlier claim would have set it before now.
                        first_claim: first_call_ms == Some(now_ms),
                        entry: OutboxEntry {
                            idempotency_key: key,
                            deployment_id: Uuid::parse_str(&deployment_id).ok()?,
                            ring: Ring::parse(&ring)?,
                            action: ConnectorAction::parse(&action)?,
                            correlation_id,
                            committed_ms,
                            traceparent,
                        },
                    })
                },
            )
            .collect();
        claimed.sort_by_key(|c| c.seq);
        Ok(claimed)
    }

    /// Settles claimed actions, each `(seq, calls made, how it stands)`, in one transaction.
    pub async fn settle_outbox(
        &self,
        actions: &[(i64, u32, Settled)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let sql = "UPDATE connector_outbox
                      SET state = $1, next_attempt_ms = $2, last_error = $3,
                          attempts = attempts + $4, lease_owner = NULL, lease_until_ms = 0,
                          finished_ms = CASE WHEN $1 = 'pending' THEN NULL ELSE CAST($5 AS BIGINT) END
                    WHERE seq = $6 AND state = 'pending'";
        on_writer!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            for (seq, calls, settled) in actions {
                let (state, next_attempt_ms, error) = match settled {
                    Settled::Done => ("done", 0, None),
                    Settled::Failed(e) => ("failed", 0, Some(e.as_str())),
                    Settled::Skipped(why) => ("skipped", 0, Some(why.as_str())),
                    Settled::Retry {
                        next_attempt_ms,
                        error,
                    } => ("pending", *next_attempt_ms, Some(error.as_str())),
                };
                sqlx::query(sql)
                    .bind(state)
                    .bind(next_attempt_ms)
                    .bind(error)
                    .bind(i64::from(*calls))
                    .bind(now_ms)
                    .bind(*seq)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?
        });
        Ok(())
    }

    /// How many actions are pending, and the commit time of the oldest.
    pub async fn outbox_backlog(&self) -> Result<Backlog, StoreError> {
        let sql =
            "SELECT COUNT(*), MIN(committed_ms) FROM connector_outbox WHERE state = 'pending'";
        let (pending, oldest_committed_ms): (i64, Option<i64>) =
            on_reader!(&self.db, pool => sqlx::query_as(sql).fetch_one(pool).await?);
        Ok(Backlog {
            pending,
            oldest_committed_ms,
        })
    }

    /// Every queued action, in queue order.
    pub async fn outbox_rows(&self) -> Result<Vec<OutboxRow>, StoreError> {
        let sql = "SELECT idempotency_key, state, attempts, committed_ms, first_call_ms, last_error
                     FROM connector_outbox ORDER BY seq";
        Ok(on_reader!(&self.db, pool => sqlx::query_as(sql).fetch_all(pool).await?))
    }
}
