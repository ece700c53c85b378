//! The Merkle tree of RFC 9162 section 2.1 over the global stream: hashes, tree heads, and
//! inclusion, consistency and range proofs, each with its verifier.
//!
//! - Leaf hash: SHA-256(0x00 ‖ leaf data); node hash: SHA-256(0x01 ‖ left ‖ right); the head of
//!   the empty tree is SHA-256 of nothing (RFC 9162 2.1.1).
//! - A tree of n > 1 leaves splits at k, the largest power of two smaller than n (2.1.1).
//! - Inclusion proofs are PATH(m, D\[n\]) (2.1.3.1) and are verified with the algorithm of
//!   2.1.3.2; consistency proofs are PROOF(m, D\[n\]) (2.1.4.1) and are verified with 2.1.4.2.
//! - A range proof (ours, documented in docs/evidence.md) shows that the leaves `[start, end)`
//!   handed over are exactly those leaves of the tree of size n: it lists, left to right, the
//!   hashes of the largest subtrees of the RFC decomposition that lie wholly outside the range, so
//!   a verifier recomputes the head from those and the leaves it holds.
//!
//! Proof generation reads complete subtrees through [`Subtrees`], so the tree's storage decides
//! where they come from; verification needs nothing but the proof.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// SHA-256(0x00 ‖ data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The head of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The head of a tree over these leaf hashes, computed directly (for tests and small trees).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// k: the largest power of two smaller than n (n > 1).
fn split(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

/// Where proof generation reads the tree: the hash of a complete subtree of `2^height` leaves,
/// the `index`-th of that size (leaves `index << height` up to `(index + 1) << height`).
pub trait Subtrees {
    type Error;
    fn subtree(&self, height: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// Leaf hashes held in memory are a tree too.
impl Subtrees for [Hash] {
    type Error = std::convert::Infallible;
    fn subtree(&self, height: u32, index: u64) -> Result<Hash, Self::Error> {
        let start = (index << height) as usize;
        Ok(root_of(&self[start..start + (1usize << height)]))
    }
}

/// Leaf hashes with the hash of every complete subtree above them, level by level (about twice
/// the leaves' memory): proofs read each subtree at once instead of hashing its leaves again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Levels(Vec<Vec<Hash>>);

impl Levels {
    pub fn of(leaves: Vec<Hash>) -> Levels {
        let mut levels = vec![leaves];
        while let Some(below) = levels.last().filter(|l| l.len() > 1) {
            let above = below
                .chunks_exact(2)
                .map(|pair| node_hash(&pair[0], &pair[1]))
                .collect();
            levels.push(above);
        }
        Levels(levels)
    }

    /// How many leaves.
    pub fn size(&self) -> u64 {
        self.0.first().map_or(0, |l| l.len() as u64)
    }

    /// The leaf hashes.
    pub fn leaves(&self) -> &[Hash] {
        self.0.first().map_or(&[], Vec::as_slice)
    }
}

impl Subtrees for Levels {
    type Error = std::convert::Infallible;
    fn subtree(&self, height: u32, index: u64) -> Result<Hash, Self::Error> {
        // Every complete subtree of the leaves is held (`of`); `range_hash` asks for no other.
        Ok(self.0[height as usize][index as usize])
    }
}

/// MTH of the leaves `[start, end)`, a node of the RFC decomposition of some tree: `start` is a
/// multiple of the largest power of two not above `end - start`, as every such node's is.
pub fn range_hash<S: Subtrees + ?Sized>(s: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    let n = end - start;
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return s.subtree(n.trailing_zeros(), start / n);
    }
    let k = split(n);
    Ok(node_hash(
        &range_hash(s, start, start + k)?,
        &range_hash(s, start + k, end)?,
    ))
}

/// The head of the tree of the first `size` leaves.
pub fn root<S: Subtrees + ?Sized>(s: &S, size: u64) -> Result<Hash, S::Error> {
    range_hash(s, 0, size)
}

/// Why a proof was not produced or did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofError {
    /// The sizes or indices asked for do not describe a proof (index past the tree, a second
    /// tree smaller than the first, an empty range).
    Bounds(String),
    /// The proof has the wrong number of hashes for its sizes.
    Length,
    /// The proof does not lead to the head it should.
    Mismatch,
}

impl std::fmt::Display for ProofError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProofError::Bounds(why) => write!(f, "{why}"),
            ProofError::Length => write!(f, "the proof has the wrong number of hashes"),
            ProofError::Mismatch => write!(f, "the proof does not lead to the tree head"),
        }
    }
}

impl std::error::Error for ProofError {}

/// A proof could not be made: the request was out of bounds, or the tree could not be read.
#[derive(Debug)]
pub enum ProveError<E> {
    Bounds(String),
    Read(E),
}

/// PATH(m, D\[n\]) of RFC 9162 2.1.3.1: the inclusion proof of leaf `index` in the tree of `size`.
pub fn inclusion_proof<S: Subtrees + ?Sized>(
    s: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProveError<S::Error>> {
    if index >= size {
        return Err(ProveError::Bounds(format!(
            "leaf {index} is not in a tree of {size} leaves"
        )));
    }
    let mut proof = Vec::new();
    path(s, index, 0, size, &mut proof).map_err(ProveError::Read)?;
    Ok(proof)
}

fn path<S: Subtrees + ?Sized>(
    s: &S,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(s, m, start, start + k, out)?;
        out.push(range_hash(s, start + k, end)?);
    } else {
        path(s, m - k, start + k, end, out)?;
        out.push(range_hash(s, start, start + k)?);
    }
    Ok(())
}

/// PROOF(m, D\[n\]) of RFC 9162 2.1.4.1: that the tree of `first` leaves is a prefix of the tree of
/// `second`. Empty when the sizes are equal.
pub fn consistency_proof<S: Subtrees + ?Sized>(
    s: &S,
    first: u64,
    second: u64,
) -> Result<Vec<Hash>, ProveError<S::Error>> {
    if first == 0 || first > second {
        return Err(ProveError::Bounds(format!(
            "no consistency proof from a tree of {first} leaves to one of {second}"
        )));
    }
    let mut proof = Vec::new();
    if first < second {
        subproof(s, first, 0, second, true, &mut proof).map_err(ProveError::Read)?;
    }
    Ok(proof)
}

fn subproof<S: Subtrees + ?Sized>(
    s: &S,
    m: u64,
    start: u64,
    end: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(range_hash(s, start, end)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(s, m, start, start + k, whole, out)?;
        out.push(range_hash(s, start + k, end)?);
    } else {
        subproof(s, m - k, start + k, end, false, out)?;
        out.push(range_hash(s, start, start + k)?);
    }
    Ok(())
}

/// RFC 9162 2.1.3.2: checks that `leaf` is leaf `index` of the tree of `size` whose head is `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::Bounds(format!(
            "leaf {index} is not in a tree of {size} leaves"
        )));
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::Length);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Length);
    }
    if &r != root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

/// RFC 9162 2.1.4.2: checks that the tree of `first` leaves with head `first_root` is a prefix of
/// the tree of `second` leaves with head `second_root`.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if first > second {
        return Err(ProofError::Bounds(format!(
            "a tree of {second} leaves cannot extend one of {first}"
        )));
    }
    if first == second {
        if !proof.is_empty() {
            return Err(ProofError::Length);
        }
        return if first_root == second_root {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    if first == 0 {
        // The empty tree is a prefix of every tree; there is nothing to prove.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::Length)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::Length);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return Err(ProofError::Length);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Length);
    }
    if &fr != first_root || &sr != second_root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

/// The range proof of leaves `[start, end)` in the tree of `size`: the hashes of the largest
/// nodes of the decomposition wholly outside the range, in left-to-right order.
pub fn range_proof<S: Subtrees + ?Sized>(
    s: &S,
    start: u64,
    end: u64,
    size: u64,
) -> Result<Vec<Hash>, ProveError<S::Error>> {
    if start >= end || end > size {
        return Err(ProveError::Bounds(format!(
            "leaves {start} to {end} are not a non-empty range of a tree of {size} leaves"
        )));
    }
    let mut proof = Vec::new();
    outside(s, start, end, 0, size, &mut proof).map_err(ProveError::Read)?;
    Ok(proof)
}

fn outside<S: Subtrees + ?Sized>(
    s: &S,
    start: u64,
    end: u64,
    lo: u64,
    hi: u64,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    if hi <= start || lo >= end {
        out.push(range_hash(s, lo, hi)?);
        return Ok(());
    }
    if start <= lo && hi <= end {
        return Ok(());
    }
    let k = split(hi - lo);
    outside(s, start, end, lo, lo + k, out)?;
    outside(s, start, end, lo + k, hi, out)
}

/// Recomputes the head of the tree of `size` from the leaf hashes of `[start, start +
/// leaves.len())` and their range proof, and checks it is `root`.
pub fn verify_range(
    start: u64,
    leaves: &[Hash],
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let end = start + leaves.len() as u64;
    if leaves.is_empty() || end > size {
        return Err(ProofError::Bounds(format!(
            "leaves {start} to {end} are not a non-empty range of a tree of {size} leaves"
        )));
    }
    let mut proof = proof.iter();
    let computed = rebuild(start, end, 0, size, leaves, &mut proof)?;
    if proof.next().is_some() {
        return Err(ProofError::Length);
    }
    if &computed != root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

fn rebuild<'a>(
    start: u64,
    end: u64,
    lo: u64,
    hi: u64,
    leaves: &[Hash],
    proof: &mut impl Iterator<Item = &'a Hash>,
) -> Result<Hash, ProofError> {
    if hi <= start || lo >= end {
        return proof.next().copied().ok_or(ProofError::Length);
    }
    if start <= lo && hi <= end {
        return Ok(root_of(
            &leaves[(lo - start) as usize..(hi - start) as usize],
        ));
    }
    let k = split(hi - lo);
    let left = rebuild(start, end, lo, lo + k, leaves, proof)?;
    let right = rebuild(start, end, lo + k, hi, leaves, proof)?;
    Ok(node_hash(&left, &right))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The levels held give the same heads and proofs as hashing the leaves again, at every size.
    #[test]
    fn levels_prove_as_the_leaves_do() {
        for n in 1..=40u64 {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect();
            let levels = Levels::of(leaves.clone());
            assert_eq!(levels.size(), n);
            assert_eq!(root(&levels, n).unwrap(), root_of(&leaves), "size {n}");
            for i in 0..n {
                assert_eq!(
                    inclusion_proof(&levels, i, n).unwrap(),
                    inclusion_proof(leaves.as_slice(), i, n).unwrap(),
                    "leaf {i} of {n}"
                );
            }
        }
    }

    fn h(hex: &str) -> Hash {
        hex::decode(hex).unwrap().try_into().unwrap()
    }

    // The reference vectors of RFC 6962's Merkle tree, as published in transparency-dev/merkle's
    // proof/verify_test.go (carried over from Certificate Transparency's C++ merkle_tree_test.cc):
    // eight leaf inputs, the tree heads of sizes 1 to 8, and inclusion and consistency proofs.
    // RFC 9162 keeps RFC 6962's hashing and proof shapes, so they hold for it unchanged.
    const INPUTS: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    /// (leaf, 1-based as published; tree size; proof)
    const INCLUSION: [(u64, u64, &[&str]); 4] = [
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            3,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            2,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    /// (first size, second size, proof)
    const CONSISTENCY: [(u64, u64, &[&str]); 5] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn leaves() -> Vec<Hash> {
        INPUTS
            .iter()
            .map(|i| leaf_hash(&hex::decode(i).unwrap()))
            .collect()
    }

    fn hashes(list: &[&str]) -> Vec<Hash> {
        list.iter().map(|x| h(x)).collect()
    }

    #[test]
    fn tree_heads_match_the_published_vectors() {
        let leaves = leaves();
        assert_eq!(
            empty_root(),
            h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        for (n, expected) in ROOTS.iter().enumerate() {
            assert_eq!(root_of(&leaves[..=n]), h(expected), "size {}", n + 1);
            assert_eq!(root(&leaves[..], n as u64 + 1).unwrap(), h(expected));
        }
    }

    #[test]
    fn inclusion_proofs_match_the_published_vectors_and_verify() {
        let leaves = leaves();
        for (leaf, size, expected) in INCLUSION {
            let index = leaf - 1;
            let proof = inclusion_proof(&leaves[..], index, size).unwrap();
            assert_eq!(proof, hashes(expected), "leaf {leaf} of {size}");
            let root = h(ROOTS[size as usize - 1]);
            verify_inclusion(index, size, &leaves[index as usize], &proof, &root).unwrap();
            // Any other index, size, leaf or root, or an altered proof, fails.
            assert!(
                verify_inclusion(index ^ 1, size, &leaves[index as usize], &proof, &root).is_err()
            );
            assert!(
                verify_inclusion(index, size * 2, &leaves[index as usize], &proof, &root).is_err()
            );
            assert!(verify_inclusion(
                index,
                size,
                &leaves[index as usize].map(|b| b ^ 1),
                &proof,
                &root
            )
            .is_err());
            for i in 0..proof.len() {
                let mut bad = proof.clone();
                bad[i][0] ^= 8;
                assert!(
                    verify_inclusion(index, size, &leaves[index as usize], &bad, &root).is_err()
                );
            }
            let mut longer = proof.clone();
            longer.push(root);
            assert_eq!(
                verify_inclusion(index, size, &leaves[index as usize], &longer, &root),
                Err(ProofError::Length)
            );
        }
    }

    #[test]
    fn consistency_proofs_match_the_published_vectors_and_verify() {
        let leaves = leaves();
        for (first, second, expected) in CONSISTENCY {
            let proof = consistency_proof(&leaves[..], first, second).unwrap();
            assert_eq!(proof, hashes(expected), "{first} to {second}");
            let (r1, r2) = (h(ROOTS[first as usize - 1]), h(ROOTS[second as usize - 1]));
            verify_consistency(first, second, &r1, &r2, &proof).unwrap();
            if first < second {
                assert!(verify_consistency(first, second, &r2, &r1, &proof).is_err());
                assert!(verify_consistency(first, second, &r1, &r2, &[]).is_err());
                let mut bad = proof.clone();
                bad[0][0] ^= 16;
                assert!(verify_consistency(first, second, &r1, &r2, &bad).is_err());
                assert!(
                    verify_consistency(first, second, &r1, &r2, &proof[..proof.len() - 1]).is_err()
                );
            }
        }
    }

    #[test]
    fn every_proof_of_every_small_tree_verifies_and_no_other_does() {
        let many: Vec<Hash> = (0..40u8)
            .map(|i| leaf_hash(&[i, i.wrapping_mul(7)]))
            .collect();
        for size in 1..=many.len() as u64 {
            let root = root_of(&many[..size as usize]);
            for index in 0..size {
                let proof = inclusion_proof(&many[..], index, size).unwrap();
                verify_inclusion(index, size, &many[index as usize], &proof, &root).unwrap();
                if index + 1 < size {
                    assert!(verify_inclusion(
                        index + 1,
                        size,
                        &many[index as usize],
                        &proof,
                        &root
                    )
                    .is_err());
                }
            }
            for first in 1..=size {
                let proof = consistency_proof(&many[..], first, size).unwrap();
                let first_root = root_of(&many[..first as usize]);
                verify_consistency(first, size, &first_root, &root, &proof).unwrap();
            }
            for start in 0..size {
                for end in start + 1..=size {
                    let proof = range_proof(&many[..], start, end, size).unwrap();
                    let held = &many[start as usize..end as usize];
                    verify_range(start, held, size, &proof, &root).unwrap();
                    if end < size {
                        // One leaf fewer at the end, or shifted by one, does not verify.
                        assert!(
                            verify_range(start, &held[..held.len() - 1], size, &proof, &root)
                                .is_err()
                        );
                        assert!(verify_range(start + 1, held, size, &proof, &root).is_err());
                    }
                }
            }
        }
    }

    #[test]
    fn a_range_with_one_leaf_edited_dropped_or_swapped_does_not_verify() {
        let many: Vec<Hash> = (0..40u8).map(|i| leaf_hash(&[i])).collect();
        let (start, end, size) = (5u64, 29u64, 40u64);
        let root = root_of(&many);
        let proof = range_proof(&many[..], start, end, size).unwrap();
        let held = many[start as usize..end as usize].to_vec();
        verify_range(start, &held, size, &proof, &root).unwrap();
        let mut edited = held.clone();
        edited[3][0] ^= 1;
        assert_eq!(
            verify_range(start, &edited, size, &proof, &root),
            Err(ProofError::Mismatch)
        );
        let mut swapped = held.clone();
        swapped.swap(2, 3);
        assert!(verify_range(start, &swapped, size, &proof, &root).is_err());
        let mut dropped = held.clone();
        dropped.remove(7);
        assert!(verify_range(start, &dropped, size, &proof, &root).is_err());
        let mut inserted = held.clone();
        inserted.insert(7, leaf_hash(b"forged"));
        assert!(verify_range(start, &inserted, size, &proof, &root).is_err());
    }
}
