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
    /// The first request with this key is still running, and its holder is alive.
    InFlight,
    /// The first request's holder stopped renewing its lease (it died): the key is now held by
    /// this request, which must find out whether that write committed, on this intent.
    TakenOver { intent_id: Option<String> },
}

/// Who holds a reservation, and until when.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The holding server process.
    pub holder: String,
    /// Unix milliseconds.
    pub until: i64,
}

/// A stored idempotency record: request hash, response status and body (once answered), lease
/// end and the intent.
type IdempotencyRow = (
    String,
    Option<i32>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

impl Store {
    /// Holds `key` for this subject's request (acting on `intent_id`) under `lease`, or says what
    /// an earlier request with it found. A reservation whose lease ran out is taken over.
    pub async fn reserve_idempotency_key(
        &self,
        subject: &str,
        key: &str,
        request_hash: &str,
        intent_id: &str,
        lease: &Lease,
    ) -> Result<Reservation, StoreError> {
        let reserve = "INSERT INTO idempotency_keys
                           (subject, key, request_hash, created_at, holder, lease_until, intent_id)
                       VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING";
        let look = "SELECT request_hash, status, response, lease_until, intent_id
                      FROM idempotency_keys WHERE subject = $1 AND key = $2";
        let take = "UPDATE idempotency_keys SET holder = $1, lease_until = $2
                     WHERE subject = $3 AND key = $4 AND status IS NULL AND request_hash = $5
                       AND (lease_until IS NULL OR lease_until < $6)";
        let now = Utc::now();
        let (inserted, existing): (u64, Option<IdempotencyRow>) = on_writer!(&self.db, pool => {
            let done = sqlx::query(reserve)
                .bind(subject)
                .bind(key)
                .bind(request_hash)
                .bind(now)
                .bind(&lease.holder)
                .bind(lease.until)
                .bind(intent_id)
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
            Some((hash, ..)) if hash != request_hash => Reservation::Mismatch,
            Some((_, Some(status), Some(body), ..)) => Reservation::Replay {
                status: status as u16,
                body,
            },
            Some((_, _, _, until, intent_id))
                if until.is_none_or(|u| u < now.timestamp_millis()) =>
            {
                // Only one process wins the update: the lease is taken over once.
                let taken = on_writer!(&self.db, pool => {
                    sqlx::query(take)
                        .bind(&lease.holder)
                        .bind(lease.until)
                        .bind(subject)
                        .bind(key)
                        .bind(request_hash)
                        .bind(now.timestamp_millis())
                        .execute(pool)
                        .await?
                        .rows_affected()
                });
                if taken == 1 {
                    Reservation::TakenOver { intent_id }
                } else {
                    Reservation::InFlight
                }
            }
            Some(_) => Reservation::InFlight,
        })
    }

    /// Extends a lease this holder still has on an unanswered key.
    pub async fn renew_idempotency_key(
        &self,
        subject: &str,
        key: &str,
        lease: &Lease,
    ) -> Result<(), StoreError> {
        let sql = "UPDATE idempotency_keys SET lease_until = $1
                    WHERE subject = $2 AND key = $3 AND holder = $4 AND status IS NULL";
        on_writer!(&self.db, pool => {
            sqlx::query(sql)
                .bind(lease.until)
                .bind(subject)
                .bind(key)
                .bind(&lease.holder)
                .execute(pool)
                .await
                .map(|_| ())?
        });
        Ok(())
    }

    /// Stores the answer to a reserved key, for replay (the first answer stays).
    pub async fn complete_idempotency_key(
        &self,
        subject: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        let sql = "UPDATE idempotency_keys SET status = $1, response = $2
                    WHERE subject = $3 AND key = $4 AND status IS NULL";
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

    /// Frees a key this holder reserved whose request failed without appending, so a retry can
    /// run.
    pub async fn release_idempotency_key(
        &self,
        subject: &str,
        key: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        let sql = "DELETE FROM idempotency_keys
                    WHERE subject = $1 AND key = $2 AND status IS NULL AND holder = $3";
        on_writer!(&self.db, pool => {
            sqlx::query(sql).bind(subject).bind(key).bind(holder).execute(pool).await.map(|_| ())?
        });
        Ok(())
    }
}
