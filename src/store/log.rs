//! The Merkle log's storage: tiles of 256 leaves (their hashes and their events' positions, and the
//! tile's subtree head once full), and the signed checkpoints. The tree is the projection's
//! (`crate::projection::log`); this module only keeps it.

use eucora_projections::merkle::Hash;

use super::{Db, Store, StoreError};

/// Leaves per tile.
pub const TILE: u64 = 256;

/// One tile: leaves `tile * 256` onwards, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTile {
    pub tile: i64,
    pub leaves: Vec<Hash>,
    /// The global position of each leaf's event.
    pub positions: Vec<i64>,
    /// The head of the tile's 256 leaves, once it is full.
    pub subtree: Option<Hash>,
}

/// A signed checkpoint as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub tree_size: i64,
    pub root: Hash,
    /// The signed note, as served and as written to the checkpoint directory.
    pub note: String,
}

type TileRow = (i64, Vec<u8>, Vec<u8>, Option<Vec<u8>>);
type CheckpointRow = (i64, Vec<u8>, String);

fn checkpoint_of((tree_size, root, note): CheckpointRow) -> Result<StoredCheckpoint, StoreError> {
    Ok(StoredCheckpoint {
        tree_size,
        root: hash(-1, &root)?,
        note,
    })
}

fn corrupt(tile: i64, what: &str) -> StoreError {
    StoreError::Corrupt {
        position: 0,
        reason: format!("log tile {tile}: {what}"),
    }
}

fn hash(tile: i64, bytes: &[u8]) -> Result<Hash, StoreError> {
    bytes
        .try_into()
        .map_err(|_| corrupt(tile, "a hash is not 32 bytes"))
}

fn tile_of((tile, leaves, positions, subtree): TileRow) -> Result<LogTile, StoreError> {
    if leaves.len() % 32 != 0
        || positions.len() % 8 != 0
        || leaves.len() / 32 != positions.len() / 8
        || leaves.len() / 32 > TILE as usize
    {
        return Err(corrupt(tile, "its leaves and positions do not match"));
    }
    Ok(LogTile {
        tile,
        leaves: leaves
            .chunks(32)
            .map(|c| hash(tile, c))
            .collect::<Result<_, _>>()?,
        positions: positions
            .chunks(8)
            .map(|c| i64::from_be_bytes(c.try_into().unwrap_or_default()))
            .collect(),
        subtree: subtree.map(|s| hash(tile, &s)).transpose()?,
    })
}

fn row_of(t: &LogTile) -> TileRow {
    (
        t.tile,
        t.leaves.concat(),
        t.positions.iter().flat_map(|p| p.to_be_bytes()).collect(),
        t.subtree.map(|s| s.to_vec()),
    )
}

impl Store {
    /// How many leaves the stored log has.
    pub async fn log_size(&self) -> Result<u64, StoreError> {
        Ok(self
            .last_log_tile()
            .await?
            .map_or(0, |t| t.tile as u64 * TILE + t.leaves.len() as u64))
    }

    /// The last tile, which says how many leaves the log has and where it has read up to.
    pub async fn last_log_tile(&self) -> Result<Option<LogTile>, StoreError> {
        let sql = "SELECT tile, leaves, positions, subtree FROM log_tiles
                    ORDER BY tile DESC LIMIT 1";
        let row: Option<TileRow> =
            on_reader!(&self.db, pool => sqlx::query_as(sql).fetch_optional(pool).await?);
        row.map(tile_of).transpose()
    }

    /// Tiles `from` to `to`, inclusive, in order.
    pub async fn log_tiles(&self, from: i64, to: i64) -> Result<Vec<LogTile>, StoreError> {
        let sql = "SELECT tile, leaves, positions, subtree FROM log_tiles
                    WHERE tile >= $1 AND tile <= $2 ORDER BY tile";
        let rows: Vec<TileRow> = on_reader!(&self.db, pool => {
            sqlx::query_as(sql).bind(from).bind(to).fetch_all(pool).await?
        });
        rows.into_iter().map(tile_of).collect()
    }

    /// The subtree heads of every full tile, in order: with the last tile, all the tree above
    /// its leaves.
    pub async fn log_subtrees(&self) -> Result<Vec<Hash>, StoreError> {
        let sql = "SELECT tile, subtree FROM log_tiles WHERE subtree IS NOT NULL ORDER BY tile";
        let rows: Vec<(i64, Vec<u8>)> =
            on_reader!(&self.db, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        rows.into_iter()
            .enumerate()
            .map(|(n, (tile, subtree))| {
                if tile != n as i64 {
                    return Err(corrupt(tile, "a full tile before it is missing"));
                }
                hash(tile, &subtree)
            })
            .collect()
    }

    /// Writes tiles that grew, in one transaction. A tile another process already grew as far
    /// is left as it is; one that would lose or change a leaf is refused by the database.
    pub async fn save_log_tiles(&self, tiles: &[LogTile]) -> Result<(), StoreError> {
        let sql = "INSERT INTO log_tiles (tile, leaves, positions, subtree) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (tile) DO UPDATE SET leaves = excluded.leaves,
                       positions = excluded.positions, subtree = excluded.subtree
                   WHERE length(excluded.leaves) > length(log_tiles.leaves)
                      OR (log_tiles.subtree IS NULL AND excluded.subtree IS NOT NULL)";
        on_writer!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            for tile in tiles {
                let (n, leaves, positions, subtree) = row_of(tile);
                sqlx::query(sql)
                    .bind(n)
                    .bind(leaves)
                    .bind(positions)
                    .bind(subtree)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?
        });
        Ok(())
    }

    /// The latest signed checkpoint, if any.
    pub async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        let sql = "SELECT tree_size, root, note FROM log_checkpoints
                    ORDER BY tree_size DESC LIMIT 1";
        let row: Option<CheckpointRow> =
            on_reader!(&self.db, pool => sqlx::query_as(sql).fetch_optional(pool).await?);
        row.map(checkpoint_of).transpose()
    }

    /// Every signed checkpoint kept, smallest tree first.
    pub async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let sql = "SELECT tree_size, root, note FROM log_checkpoints ORDER BY tree_size";
        let rows: Vec<CheckpointRow> =
            on_reader!(&self.db, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        rows.into_iter().map(checkpoint_of).collect()
    }

    /// Keeps a signed checkpoint. Another process may have kept one of the same size first: then
    /// that one is returned, and the caller compares.
    pub async fn keep_checkpoint(
        &self,
        checkpoint: &StoredCheckpoint,
    ) -> Result<StoredCheckpoint, StoreError> {
        let now = chrono::Utc::now();
        match &self.db {
            Db::Sqlite { writer, .. } => {
                sqlx::query(
                    "INSERT INTO log_checkpoints (tree_size, root, note, signed_at)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (tree_size) DO NOTHING",
                )
                .bind(checkpoint.tree_size)
                .bind(checkpoint.root.to_vec())
                .bind(&checkpoint.note)
                .bind(now.to_rfc3339())
                .execute(writer)
                .await?;
            }
            Db::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO log_checkpoints (tree_size, root, note, signed_at)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (tree_size) DO NOTHING",
                )
                .bind(checkpoint.tree_size)
                .bind(checkpoint.root.to_vec())
                .bind(&checkpoint.note)
                .bind(now)
                .execute(pool)
                .await?;
            }
        }
        // Read on the writer: on SQLite a reader may not see the row yet.
        let sql = "SELECT tree_size, root, note FROM log_checkpoints WHERE tree_size = $1";
        let row: CheckpointRow = on_writer!(&self.db, pool => {
            sqlx::query_as(sql).bind(checkpoint.tree_size).fetch_one(pool).await?
        });
        checkpoint_of(row)
    }
}
