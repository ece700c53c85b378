//! The Merkle log: one leaf per event of the global stream, in its fixed order, in the tree of
//! RFC 9162 section 2.1 ([`eucora_projections::merkle`]). Computed by the projection runner,
//! never in the append transaction, so commands do not wait for it.
//!
//! `eucora serve` extends the log with every event past its last leaf and keeps it as tiles of 256
//! leaves ([`crate::store::LogTile`]). `eucora replay` runs the same projection from position 0:
//! up to the stored log's size it verifies (each event's leaf hash and position against the
//! stored leaf, and each full tile's head against the stored one) and names the first position
//! that disagrees; past it, it extends the log.
//!
//! What the log detects against itself, for every event already logged: an edited row (any
//! column), a deleted event, an event inserted among logged ones, events reordered or moved.
//! What it cannot detect alone: a rewrite of events *and* tiles together. Signed checkpoints kept
//! outside the database catch that (`crate::checkpoints`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use eucora_projections::heads::HeadIndex;
use eucora_projections::integrity::leaf_hash;
use eucora_projections::merkle::{self, Hash, Subtrees};

use super::{Event, Projection, ProjectionError};
use crate::store::{Checkpoint, Columns, LogTile, Store, StoreError, TILE};

/// The projection's name (runner status, `eucora_projection_lag_*{projection}`).
pub const LOG: &str = "log";

/// The log's tree as this process holds it: the head of every full tile, and the last tile's
/// leaves. With the full tiles' leaves (read from the store when a proof needs them) that is
/// the whole tree.
#[derive(Debug, Clone, PartialEq)]
pub struct LogTree {
    subtrees: Vec<Hash>,
    tail: LogTile,
}

impl Default for LogTree {
    fn default() -> Self {
        LogTree {
            subtrees: Vec::new(),
            tail: empty_tile(0),
        }
    }
}

fn empty_tile(tile: i64) -> LogTile {
    LogTile {
        tile,
        leaves: Vec::new(),
        positions: Vec::new(),
        subtree: None,
    }
}

impl LogTree {
    /// The tree as stored: the full tiles' heads and the last tile.
    pub fn from_parts(subtrees: Vec<Hash>, last: Option<LogTile>) -> Result<LogTree, StoreError> {
        let mut tree = LogTree {
            subtrees,
            tail: empty_tile(0),
        };
        match last {
            None if tree.subtrees.is_empty() => {}
            Some(last) if last.subtree.is_some() && last.tile + 1 == tree.subtrees.len() as i64 => {
                tree.tail = empty_tile(last.tile + 1);
            }
            Some(last) if last.subtree.is_none() && last.tile == tree.subtrees.len() as i64 => {
                tree.tail = last;
            }
            _ => {
                return Err(StoreError::Corrupt {
                    position: 0,
                    reason: "the log's tiles are not contiguous".into(),
                })
            }
        }
        Ok(tree)
    }

    /// Leaves in the tree.
    pub fn size(&self) -> u64 {
        self.subtrees.len() as u64 * TILE + self.tail.leaves.len() as u64
    }

    /// The tree head at its size.
    pub fn root(&self) -> Hash {
        let reader = TreeReader {
            tree: self,
            tiles: &HashMap::new(),
        };
        // The head at the current size needs full tiles' heads and the last tile only.
        merkle::root(&reader, self.size()).unwrap_or_else(|_| merkle::empty_root())
    }

    /// Adds a leaf; returns the tile it filled, if it filled one.
    fn push(&mut self, position: i64, leaf: Hash) -> Option<LogTile> {
        self.tail.leaves.push(leaf);
        self.tail.positions.push(position);
        if self.tail.leaves.len() as u64 == TILE {
            let next = empty_tile(self.tail.tile + 1);
            let mut full = std::mem::replace(&mut self.tail, next);
            let head = merkle::root_of(&full.leaves);
            full.subtree = Some(head);
            self.subtrees.push(head);
            return Some(full);
        }
        None
    }
}

/// The tree read for proofs: the held tree, and full tiles' leaves read from the store. Asking
/// for a tile not loaded answers `Err(tile)`: load it and ask again ([`with_tiles`]).
pub struct TreeReader<'a> {
    pub tree: &'a LogTree,
    pub tiles: &'a HashMap<i64, LogTile>,
}

impl Subtrees for TreeReader<'_> {
    type Error = i64;

    fn subtree(&self, height: u32, index: u64) -> Result<Hash, i64> {
        const TILE_HEIGHT: u32 = TILE.trailing_zeros();
        if height >= TILE_HEIGHT {
            let per = 1usize << (height - TILE_HEIGHT);
            let start = index as usize * per;
            return self
                .tree
                .subtrees
                .get(start..start + per)
                .map(merkle::root_of)
                .ok_or(-1);
        }
        let first = index << height;
        let tile = (first / TILE) as i64;
        let leaves = if tile == self.tree.tail.tile {
            &self.tree.tail.leaves
        } else {
            &self.tiles.get(&tile).ok_or(tile)?.leaves
        };
        let offset = (first % TILE) as usize;
        leaves
            .get(offset..offset + (1usize << height))
            .map(merkle::root_of)
            .ok_or(-1)
    }
}

/// Why a proof could not be made from the log.
#[derive(Debug, thiserror::Error)]
pub enum LogProofError {
    #[error("{0}")]
    Bounds(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the log's tiles do not hold the tree this process holds")]
    Inconsistent,
}

/// Runs `prove` against the tree, loading the full tiles it asks for from the store until it
/// has what it needs (a proof touches a handful).
pub async fn with_tiles<T>(
    store: &Store,
    tree: &LogTree,
    prove: impl Fn(&TreeReader) -> Result<T, merkle::ProveError<i64>>,
) -> Result<T, LogProofError> {
    let mut tiles = HashMap::new();
    loop {
        match prove(&TreeReader {
            tree,
            tiles: &tiles,
        }) {
            Ok(value) => return Ok(value),
            Err(merkle::ProveError::Bounds(why)) => return Err(LogProofError::Bounds(why)),
            Err(merkle::ProveError::Read(tile)) if tile >= 0 && !tiles.contains_key(&tile) => {
                let loaded = store.log_tiles(tile, tile).await?;
                match loaded.into_iter().next() {
                    Some(t) if t.leaves.len() as u64 == TILE => {
                        tiles.insert(tile, t);
                    }
                    _ => return Err(LogProofError::Inconsistent),
                }
            }
            Err(merkle::ProveError::Read(_)) => return Err(LogProofError::Inconsistent),
        }
    }
}

/// The leaf indices, in the tree of the log's first `size` leaves, of the events at `positions`
/// (one intent's, which the log holds in this order), found in the log's tiles by the global
/// stream's order ([`Store::order_keys`]): from where the one before was, a galloping search over
/// the tiles, so what is read grows with the log of the distance between them, never with the
/// log's size. `None` for an event not among those leaves, and for every one after it.
pub async fn leaves_of(
    store: &Store,
    size: u64,
    positions: &[i64],
) -> Result<Vec<Option<u64>>, StoreError> {
    let last_tile = size.div_ceil(TILE) as i64 - 1;
    let mut tiles: HashMap<i64, LogTile> = HashMap::new();
    let mut keys = store.order_keys(positions).await?;
    let mut found = Vec::with_capacity(positions.len());
    let mut from = 0i64;
    for &position in positions {
        let Some(&target) = keys.get(&position) else {
            return Err(StoreError::Corrupt {
                position,
                reason: "an event read a moment ago is no longer stored".into(),
            });
        };
        // The first tile from `from` whose last leaf (under `size`) sorts at or after the event.
        let mut below = from - 1;
        let mut step = 1;
        let mut above = loop {
            let probe = (below + step).min(last_tile);
            if probe < 0
                || tile_last_key(store, &mut tiles, &mut keys, probe, size).await? >= target
            {
                break probe;
            }
            if probe == last_tile {
                break last_tile + 1;
            }
            below = probe;
            step *= 2;
        };
        while above - below > 1 {
            let mid = below + (above - below) / 2;
            if tile_last_key(store, &mut tiles, &mut keys, mid, size).await? >= target {
                above = mid;
            } else {
                below = mid;
            }
        }
        let leaf = match tiles.get(&above) {
            Some(tile) => tile
                .positions
                .iter()
                .position(|p| *p == position)
                .map(|i| above as u64 * TILE + i as u64)
                .filter(|leaf| *leaf < size),
            None => None,
        };
        let Some(leaf) = leaf else {
            found.resize(positions.len(), None);
            break;
        };
        found.push(Some(leaf));
        from = above;
    }
    Ok(found)
}

/// The order key of the last of tile `tile`'s leaves under `size`, the tile and the key read
/// once into `tiles` and `keys`.
async fn tile_last_key(
    store: &Store,
    tiles: &mut HashMap<i64, LogTile>,
    keys: &mut HashMap<i64, (i64, i64)>,
    tile: i64,
    size: u64,
) -> Result<(i64, i64), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        position: 0,
        reason,
    };
    let read = match tiles.entry(tile) {
        std::collections::hash_map::Entry::Occupied(held) => held.into_mut(),
        std::collections::hash_map::Entry::Vacant(place) => {
            let read = store.log_tiles(tile, tile).await?.into_iter().next();
            place.insert(read.ok_or_else(|| corrupt(format!("log tile {tile} is missing")))?)
        }
    };
    let held = size.saturating_sub(tile as u64 * TILE).min(TILE) as usize;
    let last = read
        .positions
        .get(held.wrapping_sub(1))
        .copied()
        .ok_or_else(|| corrupt(format!("log tile {tile} holds fewer leaves than the tree")))?;
    if !keys.contains_key(&last) {
        keys.extend(store.order_keys(&[last]).await?);
    }
    keys.get(&last).copied().ok_or_else(|| StoreError::Corrupt {
        position: last,
        reason: format!(
            "the event at leaf {} of the log is not stored",
            tile as u64 * TILE + held as u64 - 1
        ),
    })
}

/// The log's tree as the rest of the service reads it (checkpoints, proofs), updated after each
/// batch the projection stores; and the intent heads at the last checkpoint this process signed.
#[derive(Clone, Default)]
pub struct LogView(Arc<RwLock<LogTree>>, Arc<RwLock<Option<Arc<HeadIndex>>>>);

impl LogView {
    pub fn tree(&self) -> LogTree {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn size(&self) -> u64 {
        self.0.read().unwrap_or_else(|e| e.into_inner()).size()
    }

    /// Keeps the intent-heads index of a checkpoint just signed, for its evidence to read.
    pub fn keep_signed_heads(&self, heads: Arc<HeadIndex>) {
        *self.1.write().unwrap_or_else(|e| e.into_inner()) = Some(heads);
    }

    /// The intent heads kept over the log's first `size` leaves, if these are the ones kept.
    pub fn signed_heads(&self, size: u64) -> Option<Arc<HeadIndex>> {
        let kept = self.1.read().unwrap_or_else(|e| e.into_inner());
        kept.as_ref().filter(|h| h.leaves() == size).cloned()
    }

    fn set(&self, tree: &LogTree) {
        self.replace(tree.clone());
    }

    /// Holds `tree` (one read from the store, outside a running projection).
    pub fn replace(&self, tree: LogTree) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = tree;
    }
}

/// What a verifying run found, read after the replay.
#[derive(Debug, Default)]
pub struct LogCounts {
    /// Events checked against the stored log.
    pub verified: AtomicU64,
    /// Events past the stored log's end, added by this run.
    pub logged: AtomicU64,
}

pub struct MerkleLog {
    verifying: bool,
    tree: LogTree,
    /// The stored log's size when a verifying run started: events up to it are checked.
    stored: u64,
    view: LogView,
    counts: Arc<LogCounts>,
}

impl MerkleLog {
    /// `eucora serve`: extends the log with what arrives; `view` follows it.
    pub fn extending(view: LogView) -> Self {
        MerkleLog {
            verifying: false,
            tree: LogTree::default(),
            stored: 0,
            view,
            counts: Arc::default(),
        }
    }

    /// `eucora replay`: from position 0, verifies every logged event and logs the rest.
    pub fn verifying() -> (Self, Arc<LogCounts>) {
        let counts = Arc::new(LogCounts::default());
        (
            MerkleLog {
                verifying: true,
                tree: LogTree::default(),
                stored: 0,
                view: LogView::default(),
                counts: counts.clone(),
            },
            counts,
        )
    }

    /// Follows what another process stored since this one last looked: the tiles from this
    /// tree's last one on, when they are a few; further behind (a server starting on a long
    /// log), the stored subtree heads and the last tile, rather than every leaf read and hashed
    /// again (a million leaves were 2.5 % of a catch-up's CPU, beside reading their tiles).
    async fn follow(&mut self, store: &Store, last: &LogTile) -> Result<(), StoreError> {
        /// The most tiles followed leaf by leaf.
        const FOLLOWED: i64 = 4;
        let stored_size = last.tile as u64 * TILE + last.leaves.len() as u64;
        if stored_size == self.tree.size() {
            return Ok(());
        }
        if stored_size > self.tree.size() && last.tile - self.tree.tail.tile <= FOLLOWED {
            let newer = store.log_tiles(self.tree.tail.tile, last.tile).await?;
            let mut tree = self.tree.clone();
            for tile in newer {
                if tile.tile != tree.tail.tile
                    || !tile.leaves.starts_with(&tree.tail.leaves)
                    || !tile.positions.starts_with(&tree.tail.positions)
                {
                    break;
                }
                let from = tree.tail.leaves.len();
                for (leaf, position) in tile.leaves[from..].iter().zip(&tile.positions[from..]) {
                    tree.push(*position, *leaf);
                }
            }
            if tree.size() == stored_size {
                self.tree = tree;
                return Ok(());
            }
        }
        self.tree = LogTree::from_parts(store.log_subtrees().await?, Some(last.clone()))?;
        Ok(())
    }
}

fn integrity(position: i64, what: impl Into<String>) -> ProjectionError {
    ProjectionError::Integrity {
        position,
        what: what.into(),
    }
}

/// Compares one stored event (at `position`, with `leaf`) with the leaf the stored log holds at
/// its index.
async fn check(
    store: &Store,
    position: i64,
    leaf: &Hash,
    stored_leaf: &Hash,
    stored_position: i64,
) -> Result<(), ProjectionError> {
    if stored_position != position {
        // Either the logged event is gone, or another event stands in its place.
        return Err(if store.has_position(stored_position).await? {
            integrity(
                position,
                format!(
                    "an event was inserted or moved here: the log has the event at position \
                     {stored_position} at this place"
                ),
            )
        } else {
            integrity(
                stored_position,
                "the event logged at this position is missing (deleted)",
            )
        });
    }
    if stored_leaf != leaf {
        return Err(integrity(
            position,
            "the stored event differs from the one logged at this position (edited)",
        ));
    }
    Ok(())
}

#[async_trait]
impl Projection for MerkleLog {
    fn name(&self) -> &'static str {
        LOG
    }

    fn columns(&self) -> Columns {
        Columns::Stored
    }

    fn persisted(&self) -> bool {
        !self.verifying
    }

    async fn resume(&mut self, store: &Store) -> Result<Checkpoint, ProjectionError> {
        let last = store.last_log_tile().await?;
        if self.verifying {
            self.stored = last
                .as_ref()
                .map_or(0, |t| t.tile as u64 * TILE + t.leaves.len() as u64);
            self.tree = LogTree::default();
            return Ok(Checkpoint::default());
        }
        match &last {
            None => self.tree = LogTree::default(),
            Some(last) => self.follow(store, last).await?,
        }
        self.view.set(&self.tree);
        let size = self.tree.size() as i64;
        // The tree now is the stored one: its last leaf is the last tile's last.
        Ok(Checkpoint {
            position: last.and_then(|t| t.positions.last().copied()).unwrap_or(0),
            ordinal: size,
        })
    }

    async fn apply(&mut self, store: &Store, events: &[Event]) -> Result<(), ProjectionError> {
        let Some(first) = events.first().map(|e| e.ordinal as u64 - 1) else {
            return Ok(());
        };
        let leaves = events
            .iter()
            .map(|e| match e.leaf {
                Some(leaf) => Ok(leaf),
                None => Ok(leaf_hash(&e.row.row()?)),
            })
            .collect::<Result<Vec<Hash>, StoreError>>()?;
        // The stored tiles this batch is checked against.
        let checked_to = (first + events.len() as u64).min(self.stored);
        let stored: HashMap<i64, LogTile> = if first < checked_to {
            store
                .log_tiles((first / TILE) as i64, ((checked_to - 1) / TILE) as i64)
                .await?
                .into_iter()
                .map(|t| (t.tile, t))
                .collect()
        } else {
            HashMap::new()
        };
        let before = self.tree.clone();
        let (mut verified, mut changed) = (0u64, Vec::new());
        for (e, leaf) in events.iter().zip(&leaves) {
            let index = e.ordinal as u64 - 1;
            if index < self.stored {
                let tile = stored.get(&((index / TILE) as i64));
                let at = (index % TILE) as usize;
                let Some((stored_leaf, stored_position)) =
                    tile.and_then(|t| Some((t.leaves.get(at)?, *t.positions.get(at)?)))
                else {
                    self.tree = before;
                    return Err(integrity(
                        e.row.position,
                        "the log has no leaf for this event (its tiles were altered)",
                    ));
                };
                if let Err(err) =
                    check(store, e.row.position, leaf, stored_leaf, stored_position).await
                {
                    self.tree = before;
                    return Err(err);
                }
                verified += 1;
                if let Some(full) = self.tree.push(e.row.position, *leaf) {
                    if tile.and_then(|t| t.subtree) != full.subtree {
                        self.tree = before;
                        return Err(integrity(
                            e.row.position,
                            "the log's stored head of the tile ending here differs from its \
                             leaves (the tiles were altered)",
                        ));
                    }
                }
            } else if let Some(full) = self.tree.push(e.row.position, *leaf) {
                changed.push(full);
            }
        }
        if self.tree.size() > self.stored.max(first) {
            if !self.tree.tail.leaves.is_empty() {
                changed.push(self.tree.tail.clone());
            }
            if let Err(e) = store.save_log_tiles(&changed).await {
                self.tree = before;
                return Err(e.into());
            }
        }
        self.counts.verified.fetch_add(verified, Ordering::AcqRel);
        self.counts
            .logged
            .fetch_add(events.len() as u64 - verified, Ordering::AcqRel);
        self.view.set(&self.tree);
        Ok(())
    }

    /// A stored log longer than the stream names an event that is gone.
    async fn finish(&mut self, store: &Store, _at: Checkpoint) -> Result<(), ProjectionError> {
        let size = self.tree.size();
        if self.verifying && size < self.stored {
            let tile = (size / TILE) as i64;
            let position = store
                .log_tiles(tile, tile)
                .await?
                .first()
                .and_then(|t| t.positions.get((size % TILE) as usize).copied())
                .unwrap_or(0);
            return Err(integrity(
                position,
                "the event logged at this position is missing (deleted)",
            ));
        }
        Ok(())
    }
}

/// Re-verifies up to `count` stored events from leaf `from` on against the stored log: each
/// event's leaf hash and position against its leaf. Returns the index verified up to (the log's
/// size once it reached the end). The background integrity check runs this in rolling windows.
pub async fn reverify(store: &Store, from: u64, count: u64) -> Result<u64, ProjectionError> {
    let size = store.log_size().await?;
    let end = (from + count).min(size);
    if from >= end {
        return Ok(size);
    }
    let tiles: HashMap<i64, LogTile> = store
        .log_tiles(
            (from.saturating_sub(1) / TILE) as i64,
            ((end - 1) / TILE) as i64,
        )
        .await?
        .into_iter()
        .map(|t| (t.tile, t))
        .collect();
    let stored = |index: u64| {
        tiles
            .get(&((index / TILE) as i64))
            .and_then(|t| {
                let at = (index % TILE) as usize;
                Some((*t.leaves.get(at)?, *t.positions.get(at)?))
            })
            .ok_or_else(|| {
                integrity(
                    0,
                    format!("the log has no leaf {index} (its tiles were altered)"),
                )
            })
    };
    let after = if from == 0 {
        None
    } else {
        Some(stored(from - 1)?.1)
    };
    let rows = store
        .read_global(after, (end - from) as i64, Columns::Stored)
        .await?;
    for (index, row) in (from..end).zip(&rows) {
        let (stored_leaf, stored_position) = stored(index)?;
        check(
            store,
            row.position,
            &leaf_hash(&row.row()?),
            &stored_leaf,
            stored_position,
        )
        .await?;
    }
    if (rows.len() as u64) < end - from {
        let (_, position) = stored(from + rows.len() as u64)?;
        return Err(integrity(
            position,
            "the event logged at this position is missing (deleted)",
        ));
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(n: u64) -> Hash {
        merkle::leaf_hash(&n.to_be_bytes())
    }

    #[test]
    fn the_held_tree_has_the_head_of_the_whole_tree_at_every_size() {
        let all: Vec<Hash> = (0..700).map(leaf).collect();
        let mut tree = LogTree::default();
        for (n, l) in all.iter().enumerate() {
            tree.push(n as i64 + 10, *l);
            assert_eq!(tree.root(), merkle::root_of(&all[..=n]), "size {}", n + 1);
        }
        assert_eq!(tree.size(), 700);
        assert_eq!(tree.subtrees.len(), 2);
        assert_eq!(tree.tail.tile, 2);
        assert_eq!(tree.tail.positions.last(), Some(&709));
    }

    #[test]
    fn proofs_read_full_tiles_only_when_they_need_them() {
        let all: Vec<Hash> = (0..1000).map(leaf).collect();
        let mut tree = LogTree::default();
        let mut full = HashMap::new();
        for (n, l) in all.iter().enumerate() {
            if let Some(t) = tree.push(n as i64, *l) {
                full.insert(t.tile, t);
            }
        }
        let none = HashMap::new();
        let bare = TreeReader {
            tree: &tree,
            tiles: &none,
        };
        // A leaf in a full tile needs that tile; then the proof is the one of the whole tree.
        assert!(matches!(
            merkle::inclusion_proof(&bare, 5, 1000),
            Err(merkle::ProveError::Read(0))
        ));
        let loaded = TreeReader {
            tree: &tree,
            tiles: &full,
        };
        for (index, size) in [(5, 1000), (999, 1000), (300, 513), (0, 1)] {
            assert_eq!(
                merkle::inclusion_proof(&loaded, index, size).unwrap(),
                merkle::inclusion_proof(&all[..], index, size).unwrap()
            );
        }
        assert_eq!(
            merkle::consistency_proof(&loaded, 300, 1000).unwrap(),
            merkle::consistency_proof(&all[..], 300, 1000).unwrap()
        );
    }

    #[test]
    fn a_stored_tree_is_taken_back_as_it_was() {
        let mut tree = LogTree::default();
        let mut last = None;
        for n in 0..600u64 {
            tree.push(n as i64, leaf(n));
            last = Some(tree.tail.clone());
        }
        let back = LogTree::from_parts(tree.subtrees.clone(), last).unwrap();
        assert_eq!(back, tree);
        assert!(LogTree::from_parts(vec![], Some(tree.tail.clone())).is_err());
    }
}
