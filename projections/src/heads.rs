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

use std::collections::BTreeMap;

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

/// The heads of every intent over a prefix of the log, built leaf by leaf in log order.
#[derive(Debug, Clone, Default)]
pub struct Heads {
    heads: BTreeMap<Uuid, (u64, u64)>,
    /// Log leaves taken so far.
    leaves: u64,
    /// The index's tree over the heads as they are, made when first asked for.
    tree: std::sync::OnceLock<merkle::Levels>,
}

impl Heads {
    /// Takes the next log leaf: an event of `intent`, or (`None`) of another kind of stream.
    pub fn push(&mut self, intent: Option<Uuid>) {
        if let Some(id) = intent {
            let head = self.heads.entry(id).or_insert((0, 0));
            head.0 += 1;
            head.1 = self.leaves;
            self.tree = std::sync::OnceLock::new();
        }
        self.leaves += 1;
    }

    /// How many log leaves were taken.
    pub fn leaves(&self) -> u64 {
        self.leaves
    }

    fn tree(&self) -> &merkle::Levels {
        self.tree.get_or_init(|| {
            merkle::Levels::of(
                self.heads
                    .iter()
                    .map(|(&intent_id, &(events, last_index))| {
                        Head {
                            intent_id,
                            events,
                            last_index,
                        }
                        .leaf_hash()
                    })
                    .collect(),
            )
        })
    }

    pub fn root(&self) -> IndexRoot {
        let tree = self.tree();
        let root = merkle::root(tree, tree.size());
        IndexRoot {
            count: self.heads.len() as u64,
            root: root.unwrap_or_else(|never| match never {}),
        }
    }

    /// The head of `id` with its proof, or the neighbours that show it has none: its cost
    /// grows with the log of the number of intents once the index's tree is made.
    pub fn lookup(&self, id: Uuid) -> Lookup {
        let tree = self.tree();
        let size = tree.size();
        let placed = |position: usize| {
            let (&intent_id, &(events, last_index)) = self.heads.iter().nth(position)?;
            let hashes = merkle::inclusion_proof(tree, position as u64, size).ok()?;
            Some(Placed {
                head: Head {
                    intent_id,
                    events,
                    last_index,
                },
                position: position as u64,
                hashes,
            })
        };
        let below = self.heads.range(..id).count();
        match placed(below) {
            Some(found) if found.head.intent_id == id => Lookup::Present(found),
            above => Lookup::Absent {
                below: below.checked_sub(1).and_then(placed),
                above,
            },
        }
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

    fn heads(stream: &[Option<u8>]) -> Heads {
        let mut heads = Heads::default();
        for s in stream {
            heads.push(s.map(id));
        }
        heads
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
}
