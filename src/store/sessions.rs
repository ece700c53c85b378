//! Console sessions: known by the SHA-256 of their cookie, bound to the SHA-256 of the bearer
//! token they signed in with, and touched as they are used. Times are microseconds since the
//! epoch.

use chrono::{DateTime, Utc};

use super::{Db, Store, StoreError};

/// A stored session: the token it signed in with, and when it was last used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub token_hash: String,
    pub last_seen_at: DateTime<Utc>,
}

impl Store {
    /// Keeps a new session.
    pub async fn create_session(
        &self,
        session_hash: &str,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let sql =
            "INSERT INTO console_sessions (session_hash, token_hash, created_at, last_seen_at)
                   VALUES ($1, $2, $3, $3)";
        on_writer!(&self.db, pool => {
            sqlx::query(sql)
                .bind(session_hash)
                .bind(token_hash)
                .bind(now.timestamp_micros())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The session whose cookie hashes to `session_hash`, if it is kept.
    pub async fn session(&self, session_hash: &str) -> Result<Option<StoredSession>, StoreError> {
        let sql = "SELECT token_hash, last_seen_at FROM console_sessions WHERE session_hash = $1";
        // The writer's side of SQLite: a session made or touched just now is seen.
        let row: Option<(String, i64)> = on_writer!(&self.db, pool => {
            sqlx::query_as(sql).bind(session_hash).fetch_optional(pool).await?
        });
        Ok(row.and_then(|(token_hash, micros)| {
            Some(StoredSession {
                token_hash,
                last_seen_at: DateTime::from_timestamp_micros(micros)?,
            })
        }))
    }

    /// Marks the session used at `now`.
    pub async fn touch_session(
        &self,
        session_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let sql = "UPDATE console_sessions SET last_seen_at = $2 WHERE session_hash = $1";
        on_writer!(&self.db, pool => {
            sqlx::query(sql)
                .bind(session_hash)
                .bind(now.timestamp_micros())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Ends a session, and every session idle since before `idle_since`.
    pub async fn end_sessions(
        &self,
        session_hash: Option<&str>,
        idle_since: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let sql = "DELETE FROM console_sessions WHERE session_hash = $1 OR last_seen_at < $2";
        on_writer!(&self.db, pool => {
            sqlx::query(sql)
                .bind(session_hash.unwrap_or_default())
                .bind(idle_since.timestamp_micros())
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}
