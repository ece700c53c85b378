//! The integrity seals: one row per event of the global stream, in its order.

use eucora_projections::integrity::Seal;

use super::{Db, Store, StoreError};

fn seal((ordinal, position, leaf_hash, chain_hash): (i64, i64, String, String)) -> Seal {
    Seal {
        ordinal,
        position,
        leaf_hash,
        chain_hash,
    }
}

impl Store {
    /// The last seal written, if any.
    pub async fn last_seal(&self) -> Result<Option<Seal>, StoreError> {
        let sql = "SELECT ordinal, position, leaf_hash, chain_hash FROM event_seals
                    ORDER BY ordinal DESC LIMIT 1";
        let row: Option<(i64, i64, String, String)> =
            on_reader!(&self.db, pool => sqlx::query_as(sql).fetch_optional(pool).await?);
        Ok(row.map(seal))
    }

    /// Seals from `ordinal` on, in order, at most `limit`.
    pub async fn seals_from(&self, ordinal: i64, limit: i64) -> Result<Vec<Seal>, StoreError> {
        let sql = "SELECT ordinal, position, leaf_hash, chain_hash FROM event_seals
                    WHERE ordinal >= $1 ORDER BY ordinal LIMIT $2";
        let rows: Vec<(i64, i64, String, String)> = on_reader!(&self.db, pool => {
            sqlx::query_as(sql).bind(ordinal).bind(limit).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(seal).collect())
    }

    /// Stores seals; an ordinal already sealed (by another process) is left as it is.
    pub async fn insert_seals(&self, seals: &[Seal]) -> Result<(), StoreError> {
        if seals.is_empty() {
            return Ok(());
        }
        match &self.db {
            // One statement over a JSON array of rows: a statement per row would cost a round
            // trip to sqlx's SQLite worker thread each.
            Db::Sqlite { writer, .. } => {
                let rows: Vec<_> = seals
                    .iter()
                    .map(|s| (s.ordinal, s.position, &s.leaf_hash, &s.chain_hash))
                    .collect();
                sqlx::query(
                    "INSERT INTO event_seals (ordinal, position, leaf_hash, chain_hash)
                     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3
                       FROM json_each(?1) WHERE true
                     ON CONFLICT DO NOTHING",
                )
                .bind(serde_json::to_string(&rows).unwrap_or_default())
                .execute(writer)
                .await?;
            }
            Db::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO event_seals (ordinal, position, leaf_hash, chain_hash)
                     SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[])
                     ON CONFLICT DO NOTHING",
                )
                .bind(seals.iter().map(|s| s.ordinal).collect::<Vec<_>>())
                .bind(seals.iter().map(|s| s.position).collect::<Vec<_>>())
                .bind(
                    seals
                        .iter()
                        .map(|s| s.leaf_hash.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    seals
                        .iter()
                        .map(|s| s.chain_hash.as_str())
                        .collect::<Vec<_>>(),
                )
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }
}
