//! Principals: subjects with a role, known by the SHA-256 of their bearer token, with an expiry
//! and a revocation. Each change appends an event to the principal's stream in the same
//! transaction (`eucora_projections::access`), so the table and the audit trail never disagree.

use chrono::{DateTime, Utc};
use eucora_projections::access::{
    AccessEvent, AccessMeta, PrincipalCreated, PrincipalRevoked, PrincipalTokenRotated,
    AGGREGATE_TYPE,
};
use eucora_projections::decode::{decode_stream, StreamEvent};
use eucora_projections::event::{Actor, Role};
use uuid::Uuid;

use super::{Db, Store, StoreError};

/// A principal as the table holds it (never its token or the token's hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalRecord {
    pub id: Uuid,
    pub subject: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Whether a principal's token works at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalState {
    Active,
    Expired,
    Revoked,
}

impl PrincipalState {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalState::Active => "active",
            PrincipalState::Expired => "expired",
            PrincipalState::Revoked => "revoked",
        }
    }
}

impl PrincipalRecord {
    pub fn state(&self, now: DateTime<Utc>) -> PrincipalState {
        if self.revoked_at.is_some() {
            PrincipalState::Revoked
        } else if self.expires_at <= now {
            PrincipalState::Expired
        } else {
            PrincipalState::Active
        }
    }

    pub fn actor(&self) -> Actor {
        Actor {
            subject: self.subject.clone(),
            role: self.role,
        }
    }
}

/// Who changes a principal, under which correlation id, and when.
#[derive(Debug, Clone)]
pub struct AccessChange {
    pub actor: Actor,
    pub correlation_id: String,
    pub at: DateTime<Utc>,
}

impl AccessChange {
    fn meta(&self, principal_id: Uuid, schema_version: u32) -> AccessMeta {
        AccessMeta {
            event_id: Uuid::now_v7(),
            principal_id,
            correlation_id: self.correlation_id.clone(),
            actor: self.actor.clone(),
            occurred_at: self.at,
            schema_version,
        }
    }
}

/// Why a change to a principal was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessRefused {
    #[error("no principal has id {0}")]
    NotFound(Uuid),
    #[error("principal {0} is revoked: a revoked principal cannot be given a token again")]
    Revoked(Uuid),
}

type Row = (String, String, String, String, String, Option<String>);

fn record(row: Row) -> Result<PrincipalRecord, StoreError> {
    let (id, subject, role, created_at, expires_at, revoked_at) = row;
    let bad = |what: &str| StoreError::Config(format!("principal {id}: unreadable {what}"));
    let time = |text: &str, what: &str| {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| bad(what))
    };
    Ok(PrincipalRecord {
        id: Uuid::parse_str(&id).map_err(|_| bad("id"))?,
        role: Role::parse(&role).ok_or_else(|| bad("role"))?,
        created_at: time(&created_at, "created_at")?,
        expires_at: time(&expires_at, "expires_at")?,
        revoked_at: revoked_at.map(|t| time(&t, "revoked_at")).transpose()?,
        subject,
    })
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl Store {
    pub(super) fn pick(&self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self.db {
            Db::Sqlite { .. } => sqlite,
            Db::Postgres(_) => postgres,
        }
    }

    /// Records a principal known by the SHA-256 of its token, and its `PrincipalCreated` event
    /// (with why a conflicting role was granted anyway, if it was).
    pub async fn create_principal(
        &self,
        subject: &str,
        role: Role,
        token_hash: &str,
        expires_at: DateTime<Utc>,
        change: &AccessChange,
        conflict_allowed: Option<&str>,
    ) -> Result<Uuid, StoreError> {
        let id = Uuid::now_v7();
        let insert = self.pick(
            "INSERT INTO principals (id, subject, role, token_hash, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            "INSERT INTO principals (id, subject, role, token_hash, created_at, expires_at)
             VALUES ($1::uuid, $2, $3, $4, $5::timestamptz, $6::timestamptz)",
        );
        let event = AccessEvent::PrincipalCreated(PrincipalCreated {
            meta: change.meta(id, 2),
            subject: subject.to_string(),
            role,
            expires_at,
            conflict_allowed: conflict_allowed.map(str::to_string),
        });
        let append = self.append_after_last_sql();
        on_writer!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(insert)
                .bind(id.to_string())
                .bind(subject)
                .bind(role.as_str())
                .bind(token_hash)
                .bind(rfc3339(change.at))
                .bind(rfc3339(expires_at))
                .execute(&mut *tx)
                .await?;
            let (payload, event_type, metadata) = access_payload(&event);
            sqlx::query(append)
                .bind(id.to_string())
                .bind(event_type)
                .bind(payload)
                .bind(AGGREGATE_TYPE)
                .bind(metadata)
                .bind(event.version().to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?
        });
        Ok(id)
    }

    /// Gives principal `id` a new token (the old one stops working at commit) and expiry, with a
    /// `PrincipalTokenRotated` event.
    pub async fn rotate_principal(
        &self,
        id: Uuid,
        token_hash: &str,
        expires_at: DateTime<Utc>,
        change: &AccessChange,
    ) -> Result<Result<PrincipalRecord, AccessRefused>, StoreError> {
        let update = self.pick(
            "UPDATE principals SET token_hash = $2, expires_at = $3
             WHERE id = $1 AND revoked_at IS NULL",
            "UPDATE principals SET token_hash = $2, expires_at = $3::timestamptz
             WHERE id = $1::uuid AND revoked_at IS NULL",
        );
        let event = AccessEvent::PrincipalTokenRotated(PrincipalTokenRotated {
            meta: change.meta(id, 1),
            expires_at,
        });
        Ok(
            match self
                .change_principal(id, update, &[token_hash, &rfc3339(expires_at)], &event)
                .await?
            {
                Some((record, true)) => Ok(record),
                Some((_, false)) => Err(AccessRefused::Revoked(id)),
                None => Err(AccessRefused::NotFound(id)),
            },
        )
    }

    /// Revokes principal `id` at `change.at`, with a `PrincipalRevoked` event. A principal
    /// already revoked is returned as it is, and no event is appended.
    pub async fn revoke_principal(
        &self,
        id: Uuid,
        change: &AccessChange,
    ) -> Result<Result<PrincipalRecord, AccessRefused>, StoreError> {
        let update = self.pick(
            "UPDATE principals SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            "UPDATE principals SET revoked_at = $2::timestamptz
             WHERE id = $1::uuid AND revoked_at IS NULL",
        );
        let event = AccessEvent::PrincipalRevoked(PrincipalRevoked {
            meta: change.meta(id, 1),
        });
        Ok(self
            .change_principal(id, update, &[&rfc3339(change.at)], &event)
            .await?
            .map(|(record, _)| record)
            .ok_or(AccessRefused::NotFound(id)))
    }

    /// Runs `update` (binding `id`, then `values`) and, when it changed the row, appends
    /// `event`, in one transaction; then reads the principal back, with whether it changed
    /// (`None`: no such principal).
    async fn change_principal(
        &self,
        id: Uuid,
        update: &'static str,
        values: &[&str],
        event: &AccessEvent,
    ) -> Result<Option<(PrincipalRecord, bool)>, StoreError> {
        let append = self.append_after_last_sql();
        let (payload, event_type, metadata) = access_payload(event);
        let changed = on_writer!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let mut query = sqlx::query(update).bind(id.to_string());
            for value in values {
                query = query.bind(*value);
            }
            let changed = query.execute(&mut *tx).await?.rows_affected() > 0;
            if changed {
                sqlx::query(append)
                    .bind(id.to_string())
                    .bind(event_type)
                    .bind(&payload)
                    .bind(AGGREGATE_TYPE)
                    .bind(&metadata)
                    .bind(event.version().to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            changed
        });
        Ok(self.principal(id).await?.map(|record| (record, changed)))
    }

    /// The statement that appends one event (type `$2`, payload `$3`, metadata `$5`, version `$6`)
    /// to stream `$1` of aggregate type `$4` (a principal's, the policy's, a refusal's), after its
    /// last.
    pub(super) fn append_after_last_sql(&self) -> &'static str {
        self.pick(
            "INSERT INTO events
                 (aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                  metadata)
             SELECT $4, $1, COALESCE(MAX(sequence), 0) + 1, $2, $6, $3, $5
               FROM events WHERE aggregate_type = $4 AND aggregate_id = $1",
            "INSERT INTO events
                 (aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                  metadata)
             SELECT $4, $1, COALESCE(MAX(sequence), 0) + 1, $2, $6, $3::json, $5::json
               FROM events WHERE aggregate_type = $4 AND aggregate_id = $1",
        )
    }

    /// `SELECT` of every column a record needs, as text on both backends, then `tail`.
    fn select_principals(&self, tail: &str) -> String {
        let columns = match self.db {
            Db::Sqlite { .. } => "id, subject, role, created_at, expires_at, revoked_at",
            Db::Postgres(_) => {
                "id::text, subject, role, \
                 to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                 to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                 to_char(revoked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
            }
        };
        format!("SELECT {columns} FROM principals {tail}")
    }

    /// One principal by id.
    pub async fn principal(&self, id: Uuid) -> Result<Option<PrincipalRecord>, StoreError> {
        let sql = self.select_principals(self.pick("WHERE id = $1", "WHERE id = $1::uuid"));
        // Read on the writer's side of SQLite, so a change just made is seen.
        let row: Option<Row> = on_writer!(&self.db, pool => {
            sqlx::query_as(&sql).bind(id.to_string()).fetch_optional(pool).await?
        });
        row.map(record).transpose()
    }

    /// Who granted each principal, by id: the actor of its `PrincipalCreated` event.
    pub async fn principal_grantors(
        &self,
    ) -> Result<std::collections::HashMap<Uuid, String>, StoreError> {
        Ok(self
            .principals_and_events()
            .await?
            .into_iter()
            .filter_map(|(p, events)| match events.first() {
                Some(AccessEvent::PrincipalCreated(c)) => {
                    Some((p.id, c.meta.actor.subject.clone()))
                }
                _ => None,
            })
            .collect())
    }

    /// Every principal, oldest first.
    pub async fn principals(&self) -> Result<Vec<PrincipalRecord>, StoreError> {
        let sql = self.select_principals("ORDER BY created_at, id");
        let rows: Vec<Row> = on_reader!(&self.db, pool => {
            sqlx::query_as(&sql).fetch_all(pool).await?
        });
        rows.into_iter().map(record).collect()
    }

    /// The principal whose token hashes to `token_hash`, whatever its state (the caller decides,
    /// at its own time, whether the token still works), with its access events in stream order,
    /// in one statement (those that do not decode are left out: the caller then finds the stream
    /// is not what the row says). Read on every request (no cache), so a revocation is seen by
    /// every server at once.
    pub async fn principal_and_events_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<(PrincipalRecord, Vec<AccessEvent>)>, StoreError> {
        Ok(self
            .principals_joined("WHERE p.token_hash = $1", Some(token_hash))
            .await?
            .pop())
    }

    /// Every principal with its access events, in one statement: one snapshot, so a grant,
    /// rotation or revocation committing meanwhile is seen in both or in neither.
    pub async fn principals_and_events(
        &self,
    ) -> Result<Vec<(PrincipalRecord, Vec<AccessEvent>)>, StoreError> {
        self.principals_joined("", None).await
    }

    /// Principals (those `filter` keeps) joined with their access events, grouped.
    async fn principals_joined(
        &self,
        filter: &str,
        token_hash: Option<&str>,
    ) -> Result<Vec<(PrincipalRecord, Vec<AccessEvent>)>, StoreError> {
        let sql = match self.db {
            Db::Sqlite { .. } => format!(
                "SELECT p.id, p.subject, p.role, p.created_at, p.expires_at, p.revoked_at,
                        e.event_type, e.event_version, e.payload
                   FROM principals p
                   LEFT JOIN events e
                     ON e.aggregate_type = 'principal' AND e.aggregate_id = p.id
                  {filter} ORDER BY p.id, e.sequence"
            ),
            Db::Postgres(_) => format!(
                "SELECT p.id::text, p.subject, p.role,
                        to_char(p.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                        to_char(p.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                        to_char(p.revoked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                        e.event_type, e.event_version, e.payload::text
                   FROM principals p
                   LEFT JOIN events e
                     ON e.aggregate_type = 'principal' AND e.aggregate_id = p.id::text
                  {filter} ORDER BY p.id, e.sequence"
            ),
        };
        type Joined = (
            String,
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Joined> = on_reader!(&self.db, pool => {
            let query = sqlx::query_as(&sql);
            match token_hash {
                Some(hash) => query.bind(hash).fetch_all(pool).await?,
                None => query.fetch_all(pool).await?,
            }
        });
        let mut out: Vec<(PrincipalRecord, Vec<AccessEvent>)> = Vec::new();
        for (id, subject, role, created, expires, revoked, event_type, version, payload) in rows {
            if out.last().is_none_or(|(p, _)| p.id.to_string() != id) {
                let principal = record((id.clone(), subject, role, created, expires, revoked))?;
                out.push((principal, Vec::new()));
            }
            let (Some(event_type), Some(version), Some(payload)) = (event_type, version, payload)
            else {
                continue;
            };
            if let (Some((_, events)), Ok(StreamEvent::Access(event))) = (
                out.last_mut(),
                decode_stream(&event_type, &version, &payload),
            ) {
                events.push(event);
            }
        }
        Ok(out)
    }
}

/// An access event's payload as stored, and its type name.
/// The payload, type and metadata (the current trace id, if any) an access event is stored with.
fn access_payload(event: &AccessEvent) -> (String, &'static str, String) {
    let payload = serde_json::to_string(event).expect("access events serialize");
    let metadata = serde_json::to_string(&super::event_metadata(None)).expect("a map of strings");
    (payload, event.type_name(), metadata)
}
