//! `Idempotency-Key` records: a key per subject, its request's hash, and the answer once given.

use chrono::Utc;

use super::{Db, Store, StoreError};

/// What an `Idempotency-Key` reservation found.
#[derive(Debug, PartialEq)]
pub enum Reservation {
    /// The key is new and now held by this request.
    Reserved,
    /// The key was answered before, for the same request: replay this response.
    Replay { status: u16, body: String },
    /// The key was used for a different request.
    Mismatch,
    /// The first request with this key has not been answered yet.
    InFlight,
}

/// A stored idempotency record: request hash, response status and body (once answered).
type IdempotencyRow = (String, Option<i32>, Option<String>);

impl Store {
    /// Holds `key` for this subject's request, or says what an earlier request with it found.
    pub async fn reserve_idempotency_key(
        &self,
        subject: &str,
        key: &str,
        request_hash: &str,
    ) -> Result<Reservation, StoreError> {
        let reserve = "INSERT INTO idempotency_keys (subject, key, request_hash, created_at)
                       VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
        let look = "SELECT request_hash, status, response FROM idempotency_keys
                     WHERE subject = $1 AND key = $2";
        let now = Utc::now();
        let (inserted, existing): (u64, Option<IdempotencyRow>) = on_writer!(&self.db, pool => {
            let done = sqlx::query(reserve)
                .bind(subject)
                .bind(key)
                .bind(request_hash)
                .bind(now)
                .execute(pool)
                .await?;
            let existing = sqlx::query_as(look).bind(subject).bind(key).fetch_optional(pool).await?;
            (done.rows_affected(), existing)
        });
        if inserted == 1 {
            return Ok(Reservation::Reserved);
        }
        Ok(match existing {
            None => Reservation::InFlight,
            Some((hash, _, _)) if hash != request_hash => Reservation::Mismatch,
            Some((_, Some(status), Some(body))) => Reservation::Replay {
                status: status as u16,
                body,
            },
            Some(_) => Reservation::InFlight,
        })
    }

    /// Stores the answer to a reserved key, for replay.
    pub async fn complete_idempotency_key(
        &self,
        subject: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        let sql = "UPDATE idempotency_keys SET status = $1, response = $2
                    WHERE subject = $3 AND key = $4";
        on_writer!(&self.db, pool => {
            sqlx::query(sql)
                .bind(status as i32)
                .bind(body)
                .bind(subject)
                .bind(key)
                .execute(pool)
                .await
                .map(|_| ())?
        });
        Ok(())
    }

    /// Frees a reserved key whose request failed without appending, so a retry can run.
    pub async fn release_idempotency_key(
        &self,
        subject: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        let sql = "DELETE FROM idempotency_keys WHERE subject = $1 AND key = $2 AND status IS NULL";
        on_writer!(&self.db, pool => {
            sqlx::query(sql).bind(subject).bind(key).execute(pool).await.map(|_| ())?
        });
        Ok(())
    }
}
