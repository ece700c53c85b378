//! Where each persisted projection has read the global stream up to.

use super::{Db, Store, StoreError};

/// Where a persisted projection has read up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub position: i64,
    pub ordinal: i64,
}

impl Checkpoint {
    /// Whether two checkpoints stand at the same point of the stream: the same position read
    /// last, or both at the start.
    pub fn same_point(self, other: Checkpoint) -> bool {
        (self.ordinal > 0).then_some(self.position) == (other.ordinal > 0).then_some(other.position)
    }
}

impl Store {
    /// The checkpoint of a persisted projection (zero before its first batch).
    pub async fn checkpoint(&self, projection: &str) -> Result<Checkpoint, StoreError> {
        let sql = "SELECT position, ordinal FROM projection_checkpoints WHERE projection = $1";
        let row: Option<(i64, i64)> = on_reader!(&self.db, pool => {
            sqlx::query_as(sql).bind(projection).fetch_optional(pool).await?
        });
        Ok(
            row.map_or_else(Checkpoint::default, |(position, ordinal)| Checkpoint {
                position,
                ordinal,
            }),
        )
    }

    /// Every persisted projection's checkpoint, by name.
    pub async fn checkpoints_by_projection(&self) -> Result<Vec<(String, Checkpoint)>, StoreError> {
        let sql =
            "SELECT projection, position, ordinal FROM projection_checkpoints ORDER BY projection";
        let rows: Vec<(String, i64, i64)> =
            on_reader!(&self.db, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|(name, position, ordinal)| (name, Checkpoint { position, ordinal }))
            .collect())
    }

    /// Sets a projection's checkpoint, forward or back.
    pub(super) async fn set_checkpoint(
        &self,
        projection: &str,
        checkpoint: Checkpoint,
    ) -> Result<(), StoreError> {
        on_writer!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM projection_checkpoints WHERE projection = $1")
                .bind(projection)
                .execute(&mut *tx)
                .await?;
            advance_checkpoint(&mut tx, projection, checkpoint).await?;
            tx.commit().await?
        });
        Ok(())
    }
}

/// Moves a persisted projection's checkpoint forward (never back), inside the caller's
/// transaction. One statement for both backends.
pub(super) async fn advance_checkpoint<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    projection: &str,
    checkpoint: Checkpoint,
) -> Result<(), StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query(
        "INSERT INTO projection_checkpoints (projection, position, ordinal) VALUES ($1, $2, $3)
         ON CONFLICT (projection) DO UPDATE SET position = excluded.position, ordinal = excluded.ordinal
         WHERE excluded.ordinal > projection_checkpoints.ordinal",
    )
    .bind(projection)
    .bind(checkpoint.position)
    .bind(checkpoint.ordinal)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
