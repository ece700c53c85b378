//! The intent-heads index: what each signed checkpoint commits to besides the log's root, so a
//! deployment's evidence can show it holds *every* event of its intent, and an id that is not an
//! intent can be shown to be none.
//!
//! At a tree of `n` log leaves, every deployment intent with an event among them has a head: its
//! id, how many of those leaves are its events, and the index of its last one. The index is the
//! RFC 9162 Merkle tree (the same hashing as the log, [`merkle`]) over the heads' leaf hashes,
//! sorted by id:
//!
//! - head leaf data: the id's 16 bytes (RFC 9562 byte order, as the text form reads), then the
//!   event count and the last leaf index, each 8 bytes big-endian: 32 bytes;
//! - leaf hash: SHA-256(0x00 ‖ leaf data); nodes and the empty tree as in the log;
//! - order: ascending by the id's bytes, which is the order of the ids' lowercase text.
//!
//! A checkpoint carries the index as the extension line `intent-heads <count> <base64 root>`.
//! An intent is in the index with an inclusion proof of its head; an id is absent when the two
//! heads on either side of where it would sort are adjacent leaves of the index (or it would sort
//! before the first or after the last, or the index is empty).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;

use crate::merkle::{self, Hash, ProofError};

/// One intent's head at a tree size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub intent_id: Uuid,
    /// How many of the tree's leaves are this intent's events.
    pub events: u64,
    /// The leaf index of its last event.
    pub last_index: u64,
}

impl Head {
    /// The head's 32 bytes of leaf data.
    pub fn leaf_data(&self) -> [u8; 32] {
        let mut data = [0u8; 32];
        data[..16].copy_from_slice(self.intent_id.as_bytes());
        data[16..24].copy_from_slice(&self.events.to_be_bytes());
        data[24..].copy_from_slice(&self.last_index.to_be_bytes());
        data
    }

    pub fn leaf_hash(&self) -> Hash {
        merkle::leaf_hash(&self.leaf_data())
    }
}

/// The index's head as a checkpoint states it: how many intents, and the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRoot {
    pub count: u64,
    pub root: Hash,
}

/// A head and its inclusion proof in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub head: Head,
    /// Its leaf's place in the index.
    pub position: u64,
    pub hashes: Vec<Hash>,
}

/// What the index says of one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Present(Placed),
    /// The heads just below and just above where the id would sort (none past either end).
    Absent {
        below: Option<Placed>,
        above: Option<Placed>,
    },
}

/// The heads of every intent over a prefix of the log, built leaf by leaf in log order: the index
/// made last (shared with whoever keeps it: the server keeps the one it signed) and the heads
/// that changed since. [`Heads::index`] merges the two into the next index, so the heads are
/// held once, sorted, and only what changed between two checkpoints twice.
#[derive(Debug, Clone)]
pub struct Heads {
    base: Arc<HeadIndex>,
    changed: BTreeMap<Uuid, (u64, u64)>,
    /// Log leaves taken so far.
    leaves: u64,
    /// How many heads may change before they are merged into a new index as the leaves come:
    /// taking a long stream (a server's first signing reads the whole log) then holds at most
    /// this many in the map, about 64 bytes each, beside the index, not every intent's.
    merge_past: usize,
}

impl Default for Heads {
    fn default() -> Heads {
        Heads::merging_past(1 << 16)
    }
}

impl Heads {
    fn merging_past(merge_past: usize) -> Heads {
        Heads {
            base: Arc::new(HeadIndex::of(Vec::new(), 0)),
            changed: BTreeMap::new(),
            leaves: 0,
            merge_past,
        }
    }

    /// Takes the next log leaf: an event of `intent`, or (`None`) of another kind of stream.
    pub fn push(&mut self, intent: Option<Uuid>) {
        if let Some(id) = intent {
            let head = match self.changed.entry(id) {
                Entry::Occupied(head) => head.into_mut(),
                Entry::Vacant(head) => head.insert(
                    self.base
                        .get(id)
                        .map_or((0, 0), |h| (h.events, h.last_index)),
                ),
            };
            head.0 += 1;
            head.1 = self.leaves;
        }
        self.leaves += 1;
        if self.changed.len() >= self.merge_past {
            self.index();
        }
    }

    /// How many log leaves were taken.
    pub fn leaves(&self) -> u64 {
        self.leaves
    }

    /// The index over the heads as they are now (the heads of the last one and those changed
    /// since, merged in id order), kept as the base of the next.
    pub fn index(&mut self) -> Arc<HeadIndex> {
        if self.changed.is_empty() && self.base.leaves == self.leaves {
            return self.base.clone();
        }
        let mut heads = Vec::with_capacity(self.base.heads.len() + self.changed.len());
        let mut before = self.base.heads.iter().peekable();
        for (&intent_id, &(events, last_index)) in &self.changed {
            while let Some(head) = before.next_if(|h| h.intent_id < intent_id) {
                heads.push(*head);
            }
            before.next_if(|h| h.intent_id == intent_id);
            heads.push(Head {
                intent_id,
                events,
                last_index,
            });
        }
        heads.extend(before);
        // The chunks wholly before the first head changed are as they were.
        let first = self
            .changed
            .keys()
            .next()
            .map_or(self.base.heads.len(), |id| self.base.position(*id));
        let kept = &self.base.upper.leaves()[..first / HeadIndex::CHUNK];
        let index = HeadIndex::reusing(heads, self.leaves, kept);
        self.changed.clear();
        self.base = Arc::new(index);
        self.base.clone()
    }
}

/// The index at one tree size, frozen: the heads sorted by id, and the tree's subtrees of
/// [`HeadIndex::CHUNK`] heads and above. A subtree below that height is hashed again from its
/// heads when a proof needs it (at most `CHUNK` leaf hashes), so the index keeps about 36 bytes
/// an intent rather than the 96 its whole tree would take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadIndex {
    heads: Vec<Head>,
    leaves: u64,
    /// `upper[0]` holds the hash of every complete chunk of heads, and each level above the
    /// hashes of pairs of the one below.
    upper: merkle::Levels,
    root: IndexRoot,
}

impl HeadIndex {
    /// The height of the lowest subtrees kept: 16 heads.
    const HEIGHT: u32 = 4;
    pub const CHUNK: usize = 1 << Self::HEIGHT;

    fn of(heads: Vec<Head>, leaves: u64) -> HeadIndex {
        HeadIndex::reusing(heads, leaves, &[])
    }

    /// The index over `heads` whose first chunks' hashes are `kept` (those chunks unchanged
    /// since an index made before): only the chunks after them are hashed. Intent ids are
    /// UUIDv7, ordered by their creation, so the heads that change between two checkpoints are
    /// mostly the last ones, and a signing hashes a few chunks rather than every head.
    fn reusing(heads: Vec<Head>, leaves: u64, kept: &[Hash]) -> HeadIndex {
        let kept = &kept[..kept.len().min(heads.len() / Self::CHUNK)];
        let chunks = kept
            .iter()
            .copied()
            .chain(
                heads[kept.len() * Self::CHUNK..]
                    .chunks_exact(Self::CHUNK)
                    .map(|chunk| {
                        merkle::root_of(&chunk.iter().map(Head::leaf_hash).collect::<Vec<_>>())
                    }),
            )
            .collect();
        let mut index = HeadIndex {
            heads,
            leaves,
            upper: merkle::Levels::of(chunks),
            root: IndexRoot {
                count: 0,
                root: merkle::empty_root(),
            },
        };
        let root = merkle::root(&index, index.heads.len() as u64);
        index.root = IndexRoot {
            count: index.heads.len() as u64,
            root: root.unwrap_or_else(|never| match never {}),
        };
        index
    }

    /// How many log leaves its heads were taken over.
    pub fn leaves(&self) -> u64 {
        self.leaves
    }

    /// Where `id`'s head is, or would be, in id order.
    fn position(&self, id: Uuid) -> usize {
        self.heads.partition_point(|h| h.intent_id < id)
    }

    /// The head of `id`, if it has one.
    pub fn get(&self, id: Uuid) -> Option<&Head> {
        self.heads
            .get(self.position(id))
            .filter(|h| h.intent_id == id)
    }

    pub fn root(&self) -> IndexRoot {
        self.root
    }

    /// The head of `id` with its proof, or the neighbours that show it has none: a binary search
    /// and one proof's hashes (a few dozen leaf hashes below the chunks kept).
    pub fn lookup(&self, id: Uuid) -> Lookup {
        let size = self.heads.len() as u64;
        let placed = |position: usize| {
            let head = *self.heads.get(position)?;
            let hashes = merkle::inclusion_proof(self, position as u64, size).ok()?;
            Some(Placed {
                head,
                position: position as u64,
                hashes,
            })
        };
        let position = self.position(id);
        match placed(position) {
            Some(found) if found.head.intent_id == id => Lookup::Present(found),
            above => Lookup::Absent {
                below: position.checked_sub(1).and_then(placed),
                above,
            },
        }
    }
}

impl merkle::Subtrees for HeadIndex {
    type Error = std::convert::Infallible;
    fn subtree(&self, height: u32, index: u64) -> Result<Hash, Self::Error> {
        if height >= Self::HEIGHT {
            return self.upper.subtree(height - Self::HEIGHT, index);
        }
        // Only complete subtrees are asked for (`merkle::range_hash`): these heads exist.
        let start = (index << height) as usize;
        let leaves: Vec<Hash> = self.heads[start..start + (1 << height)]
            .iter()
            .map(Head::leaf_hash)
            .collect();
        Ok(merkle::root_of(&leaves))
    }
}

pub fn verify_placed(placed: &Placed, index: &IndexRoot) -> Result<(), ProofError> {
    merkle::verify_inclusion(
        placed.position,
        index.count,
        &placed.head.leaf_hash(),
        &placed.hashes,
        &index.root,
    )
}

/// Checks that the index `index` holds no head of `id`, from the neighbours [`Heads::lookup`]
/// gave: each in the index, adjacent, and on either side of `id`.
pub fn verify_absent(
    id: Uuid,
    below: Option<&Placed>,
    above: Option<&Placed>,
    index: &IndexRoot,
) -> Result<(), String> {
    for placed in below.iter().chain(above.iter()) {
        verify_placed(placed, index)
            .map_err(|e| format!("the head of {}: {e}", placed.head.intent_id))?;
    }
    if below.is_some_and(|b| b.head.intent_id >= id)
        || above.is_some_and(|a| a.head.intent_id <= id)
    {
        return Err(format!("the neighbours given do not surround {id}"));
    }
    match (below, above) {
        (None, None) if index.count == 0 => Ok(()),
        (None, None) => {
            Err("an index that is not empty needs a neighbour to show an absence".into())
        }
        (Some(b), Some(a)) if a.position == b.position + 1 => Ok(()),
        (Some(_), Some(_)) => Err("the neighbours given are not adjacent in the index".into()),
        (None, Some(a)) if a.position == 0 => Ok(()),
        (None, Some(_)) => Err("the head above is not the index's first".into()),
        (Some(b), None) if b.position + 1 == index.count => Ok(()),
        (Some(_), None) => Err("the head below is not the index's last".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn heads(stream: &[Option<u8>]) -> Arc<HeadIndex> {
        let mut heads = Heads::default();
        for s in stream {
            heads.push(s.map(id));
        }
        heads.index()
    }

    #[test]
    fn a_head_counts_its_intents_leaves_and_names_its_last() {
        let heads = heads(&[Some(3), None, Some(1), Some(3), Some(3)]);
        assert_eq!(heads.leaves(), 5);
        let Lookup::Present(placed) = heads.lookup(id(3)) else {
            panic!("intent 3 is in the index");
        };
        assert_eq!(
            placed.head,
            Head {
                intent_id: id(3),
                events: 3,
                last_index: 4
            }
        );
        // Sorted by id: 1 before 3.
        assert_eq!(placed.position, 1);
        verify_placed(&placed, &heads.root()).unwrap();
    }

    #[test]
    fn a_changed_count_or_last_leaf_does_not_verify() {
        let heads = heads(&[Some(3), Some(1), Some(3), Some(2)]);
        let root = heads.root();
        let Lookup::Present(placed) = heads.lookup(id(3)) else {
            panic!("intent 3 is in the index");
        };
        let mut fewer = placed.clone();
        fewer.head.events -= 1;
        assert_eq!(verify_placed(&fewer, &root), Err(ProofError::Mismatch));
        let mut earlier = placed;
        earlier.head.last_index = 0;
        assert_eq!(verify_placed(&earlier, &root), Err(ProofError::Mismatch));
    }

    #[test]
    fn absence_is_shown_by_adjacent_neighbours_or_an_end() {
        let heads = heads(&[Some(2), Some(4), Some(6), Some(8), Some(4)]);
        let root = heads.root();
        for (missing, ends) in [(5, (true, true)), (1, (false, true)), (9, (true, false))] {
            let Lookup::Absent { below, above } = heads.lookup(id(missing)) else {
                panic!("{missing} is not in the index");
            };
            assert_eq!((below.is_some(), above.is_some()), ends);
            verify_absent(id(missing), below.as_ref(), above.as_ref(), &root).unwrap();
        }
        // Neighbours that skip a head in between do not show an absence.
        let Lookup::Present(two) = heads.lookup(id(2)) else {
            panic!("2 is in the index");
        };
        let Lookup::Present(six) = heads.lookup(id(6)) else {
            panic!("6 is in the index");
        };
        assert!(verify_absent(id(4), Some(&two), Some(&six), &root).is_err());
        // Nor does an end that is not one.
        assert!(verify_absent(id(5), None, Some(&six), &root).is_err());
        // A present id is never shown absent by its own head.
        assert!(verify_absent(id(6), Some(&two), Some(&six), &root).is_err());
    }

    #[test]
    fn the_empty_index_holds_nothing() {
        let heads = heads(&[None, None]);
        let root = heads.root();
        assert_eq!(root.count, 0);
        assert_eq!(root.root, merkle::empty_root());
        assert_eq!(
            heads.lookup(id(1)),
            Lookup::Absent {
                below: None,
                above: None
            }
        );
        verify_absent(id(1), None, None, &root).unwrap();
    }

    /// The index keeps only its chunks' subtrees and above: its root and every proof are still
    /// those of the whole tree over the heads, at sizes on and around the chunk's.
    #[test]
    fn the_index_proves_what_its_whole_tree_would() {
        for n in (0..=70).chain([255, 256, 257, 1000]) {
            let mut heads = Heads::default();
            for i in 0..n {
                heads.push(Some(Uuid::from_u128(i as u128 * 7919)));
            }
            let index = heads.index();
            let leaves: Vec<Hash> = index.heads.iter().map(Head::leaf_hash).collect();
            assert_eq!(index.root().root, merkle::root_of(&leaves), "{n} heads");
            assert_eq!(index.root().count, n as u64);
            for (position, head) in index.heads.iter().enumerate() {
                let Lookup::Present(placed) = index.lookup(head.intent_id) else {
                    panic!("head {position} of {n} is in the index");
                };
                assert_eq!(placed.position, position as u64);
                let whole = merkle::inclusion_proof(&leaves[..], position as u64, n as u64);
                assert_eq!(
                    Ok(placed.hashes.clone()),
                    whole.map_err(|_| ()),
                    "{position} of {n}"
                );
                verify_placed(&placed, &index.root()).unwrap();
            }
        }
    }

    /// An index made from the last one and the heads changed since is the one made from the
    /// whole stream at once, wherever the stream was cut into checkpoints.
    #[test]
    fn each_index_merges_the_last_with_what_changed_since() {
        // Leaves of 60 intents and of other streams, in a scrambled order.
        let stream: Vec<Option<Uuid>> = (0u64..500)
            .map(|i| {
                let n = i.wrapping_mul(2_654_435_761) % 67;
                (n < 60).then(|| Uuid::from_u128(u128::from(n) << 64 | 9))
            })
            .collect();
        let mut whole = Heads::default();
        stream.iter().for_each(|id| whole.push(*id));
        let whole = whole.index();
        for cuts in [
            vec![],
            vec![1],
            vec![250],
            vec![3, 4, 100, 101, 499],
            vec![0, 17, 480],
        ] {
            let mut heads = Heads::default();
            let mut indices = Vec::new();
            for (leaf, id) in stream.iter().enumerate() {
                if cuts.contains(&leaf) {
                    indices.push((leaf, heads.index()));
                }
                heads.push(*id);
            }
            assert_eq!(heads.index(), whole, "cut at {cuts:?}");
            // Each is the index of the stream up to its cut, left as it was made.
            for (leaf, index) in indices {
                let mut prefix = Heads::default();
                stream[..leaf].iter().for_each(|id| prefix.push(*id));
                assert_eq!(index, prefix.index(), "cut at {leaf}");
            }
        }
        // No change since: the same index, not another.
        let mut heads = Heads::default();
        stream.iter().for_each(|id| heads.push(*id));
        let first = heads.index();
        assert!(Arc::ptr_eq(&first, &heads.index()));
        heads.push(None);
        assert_eq!(heads.index().leaves(), first.leaves() + 1);
    }

    /// As intents come (ids in the order of their creation, UUIDv7, each intent's events soon
    /// after it), most of an index's chunks lie before the heads that change, and are kept from
    /// the index before: every index made at a checkpoint is still the one made from scratch.
    #[test]
    fn an_index_keeps_the_chunks_before_the_first_head_changed() {
        let stream: Vec<Option<Uuid>> = (0u128..400)
            .map(|leaf| {
                let intent = (leaf / 3).saturating_sub(2 * u128::from(leaf % 3 == 2));
                (leaf % 11 != 0).then_some(Uuid::from_u128((intent + 1) << 80))
            })
            .collect();
        // Merged as the leaves come, too.
        let mut merged = Heads::merging_past(5);
        stream.iter().for_each(|id| merged.push(*id));
        let mut whole = Heads::default();
        stream.iter().for_each(|id| whole.push(*id));
        assert!(merged.changed.len() < 5, "merged as they came");
        assert_eq!(merged.index(), whole.index());
        let mut heads = Heads::default();
        for (leaf, id) in stream.iter().enumerate() {
            if leaf % 7 == 0 {
                let mut prefix = Heads::default();
                stream[..leaf].iter().for_each(|id| prefix.push(*id));
                assert_eq!(heads.index(), prefix.index(), "cut at {leaf}");
            }
            heads.push(*id);
        }
        assert_eq!(heads.index(), whole.index());
        assert!(whole.index().root().count > 100, "chunks enough to keep");
    }
}
