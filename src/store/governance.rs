//! The policy stream and refused commands (`eucora_projections::governance`), appended and read.

use eucora_projections::decode::{decode_stream, StreamEvent};
use eucora_projections::governance::{GovernanceEvent, PolicyActivated, POLICY_AGGREGATE_TYPE};

use super::{Db, Store, StoreError};

impl Store {
    /// Appends a governance event to its stream, after the stream's last event; `Ok(false)` when
    /// another writer took that place first (two replicas starting at once).
    pub async fn append_governance(&self, event: &GovernanceEvent) -> Result<bool, StoreError> {
        let (aggregate_type, id) = event.stream();
        let payload = serde_json::to_string(event).expect("governance events serialize");
        let metadata =
            serde_json::to_string(&super::event_metadata(None)).expect("a map of strings");
        let append = self.append_after_last_sql();
        let written = on_writer!(&self.db, pool => {
            sqlx::query(append)
                .bind(&id)
                .bind(event.type_name())
                .bind(&payload)
                .bind(aggregate_type)
                .bind(&metadata)
                .bind(event.version().to_string())
                .execute(pool)
                .await
                .map(|_| ())
        });
        match written {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Every policy activated, oldest first, with its position.
    pub async fn policy_history(&self) -> Result<Vec<(i64, PolicyActivated)>, StoreError> {
        let sql = self.pick(
            "SELECT position, event_type, event_version, payload FROM events
              WHERE aggregate_type = $1 ORDER BY sequence",
            "SELECT position, event_type, event_version, payload::text FROM events
              WHERE aggregate_type = $1 ORDER BY sequence",
        );
        let rows: Vec<(i64, String, String, String)> = on_reader!(&self.db, pool => {
            sqlx::query_as(sql).bind(POLICY_AGGREGATE_TYPE).fetch_all(pool).await?
        });
        rows.into_iter()
            .map(|(position, event_type, version, payload)| {
                match decode_stream(&event_type, &version, &payload) {
                    Ok(StreamEvent::Governance(GovernanceEvent::PolicyActivated(p))) => {
                        Ok((position, p))
                    }
                    Ok(other) => Err(StoreError::Corrupt {
                        position,
                        reason: format!("a {} in the policy stream", other.type_name()),
                    }),
                    Err(e) => Err(StoreError::Corrupt {
                        position,
                        reason: e.to_string(),
                    }),
                }
            })
            .collect()
    }
}
