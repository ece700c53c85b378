//! The intent read model (`intent_view`): one row per intent, what lists are served from.

use std::collections::HashMap;

use eucora_projections::event::{Ring, Status};
use eucora_projections::intent::IntentState;

use super::checkpoints::advance_checkpoint;
use super::{Backend, Checkpoint, Db, Store, StoreError};

/// What [`Store::replace_intent_view`] changed: rows written because they were missing or
/// differed from the rebuilt model, and rows removed because no intent has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewRepair {
    pub rewritten: u64,
    pub removed: u64,
}

/// A read-model row as `intent_view` stores it: id, seq, status, current ring, app name, stream
/// version, state, retrospective approval and external change reference.
type ViewColumns = (
    String,
    i64,
    String,
    String,
    String,
    i64,
    String,
    Option<String>,
    Option<String>,
);

fn view_columns(row: &IntentRow) -> ViewColumns {
    (
        row.state.id.to_string(),
        row.seq,
        row.state.status.as_str().to_string(),
        row.state.current_ring.as_str().to_string(),
        row.state.app_name.clone(),
        row.state.stream_version as i64,
        state_json(row),
        retro_approval(&row.state).map(|r| r.as_str().to_string()),
        row.state.change_ref.clone(),
    )
}

/// Where an emergency change's retrospective approval stands, for the list filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetroApproval {
    /// Awaited (overdue or not).
    Pending,
    /// Awaited past its due time.
    Overdue,
}

impl RetroApproval {
    pub fn as_str(self) -> &'static str {
        match self {
            RetroApproval::Pending => "pending",
            RetroApproval::Overdue => "overdue",
        }
    }

    pub fn parse(s: &str) -> Option<RetroApproval> {
        [RetroApproval::Pending, RetroApproval::Overdue]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// The `retro_approval` column: `overdue`, `pending`, or NULL when none is awaited.
fn retro_approval(state: &IntentState) -> Option<RetroApproval> {
    match (state.retro_approval_pending, state.retro_approval_overdue) {
        (false, _) => None,
        (true, false) => Some(RetroApproval::Pending),
        (true, true) => Some(RetroApproval::Overdue),
    }
}

/// A read-model row's state as `intent_view.state` holds it.
fn state_json(row: &IntentRow) -> String {
    serde_json::to_string(&row.state).unwrap_or_default()
}

/// Filters of the intent list.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub ring: Option<Ring>,
    pub app_name: Option<String>,
    /// Emergency changes awaiting retrospective approval (`Pending` includes overdue ones).
    pub retro_approval: Option<RetroApproval>,
    /// Only the intent with this external change reference.
    pub change_ref: Option<String>,
    /// Only intents this subject requested.
    pub requested_by: Option<String>,
    /// Only intents whose risk score is above this.
    pub risk_above: Option<u32>,
    /// Only intents created at or after this time.
    pub created_from: Option<chrono::DateTime<chrono::Utc>>,
    /// Only intents created before this time.
    pub created_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Newest first: the cursor then names the row the page goes on before.
    pub newest_first: bool,
}

/// One row of the intent read model.
#[derive(Debug, Clone)]
pub struct IntentRow {
    /// Ordinal of the intent's creation event in the global order: the list's sort key.
    pub seq: i64,
    pub state: IntentState,
}

fn read_state(seq: i64, state: &str) -> Result<IntentState, StoreError> {
    serde_json::from_str(state).map_err(|e| StoreError::Corrupt {
        position: seq,
        reason: format!("intent read model row {seq}: {e}"),
    })
}

impl Store {
    /// Empties the intent read model and its checkpoint, for a rebuild from position 0.
    pub async fn reset_intent_view(&self, projection: &str) -> Result<(), StoreError> {
        on_writer!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM intent_view").execute(&mut *tx).await?;
            sqlx::query("DELETE FROM projection_checkpoints WHERE projection = $1")
                .bind(projection)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?
        });
        Ok(())
    }

    /// Makes the intent read model exactly `rows`, with `checkpoint`, writing only the rows that
    /// differ from what is stored: an unchanged read model costs a read, not a rewrite, and what
    /// did differ is reported. Rows that differ or should not be there are deleted first, then the
    /// right ones written, then the checkpoint set. A runner that works meanwhile only moves rows
    /// forward from the checkpoint, so it cannot leave the model wrong.
    pub async fn replace_intent_view(
        &self,
        projection: &str,
        rows: &[IntentRow],
        checkpoint: Checkpoint,
    ) -> Result<ViewRepair, StoreError> {
        const PAGE: usize = 5000;
        let index: HashMap<String, usize> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| (row.state.id.to_string(), i))
            .collect();
        let mut current = vec![false; rows.len()];
        let mut unwanted: Vec<String> = Vec::new();
        let mut after = String::new();
        loop {
            // Every stored column, the filter columns too: a row is kept only if all of it
            // equals its rebuild.
            let sql = "SELECT id, seq, status, current_ring, app_name, stream_version, state,
                              retro_approval, change_ref
                         FROM intent_view WHERE id > $1 ORDER BY id LIMIT $2";
            let page: Vec<ViewColumns> = on_reader!(&self.db, pool => {
                sqlx::query_as(sql).bind(&after).bind(PAGE as i64).fetch_all(pool).await?
            });
            let Some(last) = page.last() else {
                break;
            };
            after = last.0.clone();
            for stored in page {
                match index.get(&stored.0) {
                    Some(&i) if stored == view_columns(&rows[i]) => current[i] = true,
                    _ => unwanted.push(stored.0),
                }
            }
        }
        let stale: Vec<&IntentRow> = rows
            .iter()
            .zip(&current)
            .filter(|(_, current)| !**current)
            .map(|(row, _)| row)
            .collect();
        let removed = unwanted
            .iter()
            .filter(|id| !index.contains_key(id.as_str()))
            .count() as u64;
        for part in unwanted.chunks(PAGE) {
            on_writer!(&self.db, pool => {
                let list = serde_json::to_string(part).unwrap_or_default();
                let sql = match self.backend() {
                    Backend::Sqlite => {
                        "DELETE FROM intent_view WHERE id IN (SELECT value FROM json_each($1))"
                    }
                    Backend::Postgres => {
                        "DELETE FROM intent_view WHERE id IN (SELECT json_array_elements_text($1::json))"
                    }
                };
                sqlx::query(sql).bind(list).execute(pool).await?;
            });
        }
        for part in stale.chunks(PAGE) {
            let part: Vec<IntentRow> = part.iter().map(|&row| row.clone()).collect();
            self.save_intents(projection, &part, Checkpoint::default())
                .await?;
        }
        // Exactly here, even back: rows a runner had moved past the rebuilt ones were replaced,
        // and it must apply those events again.
        self.set_checkpoint(projection, checkpoint).await?;
        Ok(ViewRepair {
            rewritten: stale.len() as u64,
            removed,
        })
    }

    /// Read-model rows of these intents, by id.
    pub async fn intent_rows(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, IntentRow>, StoreError> {
        let mut rows = HashMap::new();
        if ids.is_empty() {
            return Ok(rows);
        }
        let found: Vec<(String, i64, String)> = match &self.db {
            Db::Sqlite { reader, .. } => {
                let list = serde_json::to_string(ids).unwrap_or_default();
                sqlx::query_as(
                    "SELECT id, seq, state FROM intent_view WHERE id IN (SELECT value FROM json_each(?1))",
                )
                .bind(list)
                .fetch_all(reader)
                .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_as("SELECT id, seq, state FROM intent_view WHERE id = ANY($1)")
                    .bind(ids)
                    .fetch_all(pool)
                    .await?
            }
        };
        for (id, seq, state) in found {
            rows.insert(
                id,
                IntentRow {
                    seq,
                    state: read_state(seq, &state)?,
                },
            );
        }
        Ok(rows)
    }

    /// Stores changed read-model rows and the projection's checkpoint in one transaction. A row
    /// only moves forward (to a higher stream version) and so does the checkpoint, so runners in
    /// several processes may apply the same batch.
    pub async fn save_intents(
        &self,
        projection: &str,
        rows: &[IntentRow],
        checkpoint: Checkpoint,
    ) -> Result<(), StoreError> {
        let upsert = "INSERT INTO intent_view (id, seq, status, current_ring, app_name, stream_version, state,
                                               retro_approval, change_ref)
                      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                      ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                          current_ring = excluded.current_ring, stream_version = excluded.stream_version,
                          state = excluded.state, retro_approval = excluded.retro_approval,
                          change_ref = excluded.change_ref
                      WHERE excluded.stream_version > intent_view.stream_version";
        let state = state_json;
        match &self.db {
            // Every row in one statement, over a JSON array of rows.
            Db::Sqlite { writer, .. } => {
                let mut tx = writer.begin().await?;
                if !rows.is_empty() {
                    let bulk = upsert.replace(
                        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                        "SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,
                                value ->> 5, value ->> 6, value ->> 7, value ->> 8
                           FROM json_each($1) WHERE true",
                    );
                    let json: Vec<_> = rows
                        .iter()
                        .map(|r| {
                            (
                                r.state.id.to_string(),
                                r.seq,
                                r.state.status.as_str(),
                                r.state.current_ring.as_str(),
                                &r.state.app_name,
                                r.state.stream_version as i64,
                                state(r),
                                retro_approval(&r.state).map(RetroApproval::as_str),
                                r.state.change_ref.as_deref(),
                            )
                        })
                        .collect();
                    sqlx::query(&bulk)
                        .bind(serde_json::to_string(&json).unwrap_or_default())
                        .execute(&mut *tx)
                        .await?;
                }
                advance_checkpoint(&mut tx, projection, checkpoint).await?;
                tx.commit().await?;
            }
            // Every row in one statement, as arrays.
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                if !rows.is_empty() {
                    let bulk = upsert.replace(
                        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                        "SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[],
                                             $5::text[], $6::bigint[], $7::text[], $8::text[],
                                             $9::text[])",
                    );
                    let column =
                        |f: fn(&IntentRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
                    sqlx::query(&bulk)
                        .bind(column(|r| r.state.id.to_string()))
                        .bind(rows.iter().map(|r| r.seq).collect::<Vec<_>>())
                        .bind(column(|r| r.state.status.as_str().to_string()))
                        .bind(column(|r| r.state.current_ring.as_str().to_string()))
                        .bind(column(|r| r.state.app_name.clone()))
                        .bind(
                            rows.iter()
                                .map(|r| r.state.stream_version as i64)
                                .collect::<Vec<_>>(),
                        )
                        .bind(rows.iter().map(state).collect::<Vec<_>>())
                        .bind(
                            rows.iter()
                                .map(|r| retro_approval(&r.state).map(RetroApproval::as_str))
                                .collect::<Vec<_>>(),
                        )
                        .bind(
                            rows.iter()
                                .map(|r| r.state.change_ref.as_deref())
                                .collect::<Vec<_>>(),
                        )
                        .execute(&mut *tx)
                        .await?;
                }
                advance_checkpoint(&mut tx, projection, checkpoint).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// How many intents are in each state and current ring.
    pub async fn intent_counts(&self) -> Result<Vec<(Status, Ring, i64)>, StoreError> {
        let sql = "SELECT status, current_ring, COUNT(*) FROM intent_view
                    GROUP BY status, current_ring";
        let rows: Vec<(String, String, i64)> =
            on_reader!(&self.db, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .filter_map(|(status, ring, n)| Some((Status::parse(&status)?, Ring::parse(&ring)?, n)))
            .collect())
    }

    /// Intents in creation order after `after` (a `seq`), filtered, at most `limit`; newest
    /// first before `after` when the filter says so.
    pub async fn list_intents(
        &self,
        filter: &ListFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<IntentRow>, StoreError> {
        // The filters on the folded state read its JSON: the requester, the risk score and the
        // creation time are not columns of their own.
        let (requester, risk, created) = match self.backend() {
            Backend::Sqlite => (
                "json_extract(state, '$.requested_by')",
                "json_extract(state, '$.risk_score')",
                "julianday(json_extract(state, '$.created_at'))",
            ),
            Backend::Postgres => (
                "(state::json ->> 'requested_by')",
                "(state::json ->> 'risk_score')::bigint",
                "(state::json ->> 'created_at')::timestamptz",
            ),
        };
        let at = |n: u8| match self.backend() {
            Backend::Sqlite => format!("julianday(${n})"),
            Backend::Postgres => format!("CAST(${n} AS timestamptz)"),
        };
        let (page, order) = if filter.newest_first {
            ("seq < $1", "seq DESC")
        } else {
            ("seq > $1", "seq")
        };
        let sql = format!(
            "SELECT seq, state FROM intent_view
              WHERE {page}
                AND (CAST($2 AS TEXT) IS NULL OR status = $2)
                AND (CAST($3 AS TEXT) IS NULL OR current_ring = $3)
                AND (CAST($4 AS TEXT) IS NULL OR app_name = $4)
                AND (CAST($5 AS TEXT) IS NULL OR retro_approval = $5
                     OR ($5 = 'pending' AND retro_approval IS NOT NULL))
                AND (CAST($7 AS TEXT) IS NULL OR change_ref = $7)
                AND (CAST($8 AS TEXT) IS NULL OR {requester} = $8)
                AND (CAST($9 AS BIGINT) IS NULL OR {risk} > $9)
                AND (CAST($10 AS TEXT) IS NULL OR {created} >= {from})
                AND (CAST($11 AS TEXT) IS NULL OR {created} < {before})
              ORDER BY {order} LIMIT $6",
            from = at(10),
            before = at(11),
        );
        let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        };
        let rows: Vec<(i64, String)> = on_reader!(&self.db, pool => {
            sqlx::query_as(&sql)
                .bind(after)
                .bind(filter.status.map(Status::as_str))
                .bind(filter.ring.map(Ring::as_str))
                .bind(filter.app_name.as_deref())
                .bind(filter.retro_approval.map(RetroApproval::as_str))
                .bind(limit)
                .bind(filter.change_ref.as_deref())
                .bind(filter.requested_by.as_deref())
                .bind(filter.risk_above.map(i64::from))
                .bind(time(filter.created_from))
                .bind(time(filter.created_before))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(seq, state)| {
                Ok(IntentRow {
                    seq,
                    state: read_state(seq, &state)?,
                })
            })
            .collect()
    }
}
