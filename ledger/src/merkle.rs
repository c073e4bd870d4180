//! The RFC 6962 (RFC 9162 §2.1) Merkle tree over the entry hashes of the log.
//!
//! Leaf `i` (0-based) is entry `i + 1`: `leaf = SHA-256(0x00 || entry_hash)`, and an inner
//! node is `SHA-256(0x01 || left || right)`. The root of the first `n` entries is the *Merkle
//! tree hash* signed in checkpoints; the root of no entries is `SHA-256("")`.
//!
//! Proofs are lists of subtree hashes. A prover who keeps the leaves elsewhere (the server reads
//! them from its store) asks [`inclusion_ranges`] and [`consistency_ranges`] which leaf ranges
//! to hash, and hashes each with a [`Frontier`]: time linear in the tree size, memory
//! logarithmic. [`verify_inclusion`] and [`verify_consistency`] check proofs.
//!
//! A Merkle root does not commit to the tree size: the same path can be valid for a few sizes
//! whose trees have the same shape around the leaf. The size is bound by the checkpoint that
//! signs it together with the root, so check proofs against a verified
//! [`Checkpoint`](crate::Checkpoint) ([`Checkpoint::verify_inclusion`](crate::Checkpoint::verify_inclusion),
//! [`Checkpoint::verify_consistency`](crate::Checkpoint::verify_consistency)).

use std::ops::Range;

use sha2::{Digest, Sha256};

use crate::Hash;

/// The leaf hash of an entry hash: `SHA-256(0x00 || entry_hash)`.
pub fn leaf_hash(entry_hash: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(entry_hash);
    hasher.finalize().into()
}

/// An inner node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The right edge of a tree that grows one leaf at a time: the roots of its perfect subtrees,
/// largest first. Gives the root of the tree so far in O(log n) memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Roots of the perfect subtrees, one per set bit of `size`, largest (leftmost) first.
    subtrees: Vec<Hash>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends the leaf of an entry hash.
    pub fn push(&mut self, entry_hash: &Hash) {
        self.push_leaf(leaf_hash(entry_hash));
    }

    /// Appends a leaf that is already a leaf hash.
    pub fn push_leaf(&mut self, leaf: Hash) {
        let mut node = leaf;
        let mut size = self.size;
        while size & 1 == 1 {
            let left = self.subtrees.pop().expect("one subtree per set bit");
            node = node_hash(&left, &node);
            size >>= 1;
        }
        self.subtrees.push(node);
        self.size += 1;
    }

    /// The frontier as bytes: the size (8 bytes, big-endian), then each subtree root.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(8 + 32 * self.subtrees.len());
        bytes.extend_from_slice(&self.size.to_be_bytes());
        for subtree in &self.subtrees {
            bytes.extend_from_slice(subtree);
        }
        bytes
    }

    /// The frontier written by [`Frontier::to_bytes`]; `None` unless it holds exactly one root
    /// per set bit of its size.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (size, rest) = bytes.split_first_chunk::<8>()?;
        let size = u64::from_be_bytes(*size);
        if rest.len() != 32 * size.count_ones() as usize {
            return None;
        }
        let subtrees = rest
            .chunks_exact(32)
            .map(|chunk| chunk.try_into().expect("32 bytes"))
            .collect();
        Some(Frontier { size, subtrees })
    }

    /// The frontier of a tree of `size` leaves rebuilt from its last leaf's entry hash and that
    /// leaf's inclusion proof in the tree (RFC 6962 audit path, from the leaf up): the path holds
    /// the left siblings inside the last perfect subtree, then the roots of the other perfect
    /// subtrees, smallest first. `None` when the path has the wrong length. The caller checks
    /// the result's root against a signed one.
    pub fn from_right_edge(size: u64, entry_hash: &Hash, path: &[Hash]) -> Option<Self> {
        if size == 0 {
            return None;
        }
        let inside = size.trailing_zeros() as usize;
        let others = size.count_ones() as usize - 1;
        if path.len() != inside + others {
            return None;
        }
        let mut last = leaf_hash(entry_hash);
        for sibling in &path[..inside] {
            last = node_hash(sibling, &last);
        }
        let mut subtrees: Vec<Hash> = path[inside..].iter().rev().copied().collect();
        subtrees.push(last);
        Some(Frontier { size, subtrees })
    }

    /// The Merkle tree hash of the leaves so far.
    pub fn root(&self) -> Hash {
        let mut nodes = self.subtrees.iter().rev();
        let Some(mut root) = nodes.next().copied() else {
            return empty_root();
        };
        for left in nodes {
            root = node_hash(left, &root);
        }
        root
    }
}

/// The Merkle tree hash of `leaves` (leaf hashes).
pub fn root(leaves: &[Hash]) -> Hash {
    let mut frontier = Frontier::new();
    for leaf in leaves {
        frontier.push_leaf(*leaf);
    }
    frontier.root()
}

/// The largest power of two smaller than `n` (`n > 1`).
fn split(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

/// The leaf ranges whose tree hashes, in order, form the inclusion proof of leaf `index` in the
/// tree of the first `size` leaves (RFC 6962 `PATH`). Empty when `index >= size`.
pub fn inclusion_ranges(index: u64, size: u64) -> Vec<Range<u64>> {
    let mut ranges = Vec::new();
    if index < size {
        path(index, 0, size, &mut ranges);
    }
    ranges
}

/// `PATH(m, D[start..end])`, with `m` relative to `start`, appending to `out`.
fn path(m: u64, start: u64, end: u64, out: &mut Vec<Range<u64>>) {
    let n = end - start;
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, start, start + k, out);
        out.push(start + k..end);
    } else {
        path(m - k, start + k, end, out);
        out.push(start..start + k);
    }
}

/// The leaf ranges whose tree hashes, in order, form the proof that the tree of the first
/// `first` leaves is a prefix of the tree of the first `second` (RFC 6962 `PROOF`). Empty when
/// `first` is 0 or not below `second`.
pub fn consistency_ranges(first: u64, second: u64) -> Vec<Range<u64>> {
    let mut ranges = Vec::new();
    if 0 < first && first < second {
        subproof(first, 0, second, true, &mut ranges);
    }
    ranges
}

/// `SUBPROOF(m, D[start..end], b)`, with `m` relative to `start`, appending to `out`.
fn subproof(m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<Range<u64>>) {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(start..end);
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, start, start + k, whole, out);
        out.push(start + k..end);
    } else {
        subproof(m - k, start + k, end, false, out);
        out.push(start..start + k);
    }
}

/// The inclusion proof of leaf `index` among `leaves` (leaf hashes).
pub fn inclusion_proof(index: u64, leaves: &[Hash]) -> Vec<Hash> {
    inclusion_ranges(index, leaves.len() as u64)
        .into_iter()
        .map(|r| root(&leaves[r.start as usize..r.end as usize]))
        .collect()
}

/// The consistency proof between the first `first` leaves and all of `leaves` (leaf hashes).
pub fn consistency_proof(first: u64, leaves: &[Hash]) -> Vec<Hash> {
    consistency_ranges(first, leaves.len() as u64)
        .into_iter()
        .map(|r| root(&leaves[r.start as usize..r.end as usize]))
        .collect()
}

/// Checks that `leaf` (a leaf hash) is leaf `index` of the tree of `size` leaves whose root is
/// `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// Checks that the tree of `first` leaves with root `first_root` is a prefix of the tree of
/// `second` leaves with root `second_root` (RFC 9162 §2.1.4.2). Equal sizes need an empty
/// proof and equal roots; the empty tree is a prefix of every tree.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        return proof.is_empty() && *first_root == empty_root();
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(first_root);
    }
    path.extend(proof);
    let (mut fn_, mut sn) = (first - 1, second - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*path[0], *path[0]);
    for c in &path[1..] {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    fr == *first_root && sr == *second_root && sn == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frontier_is_rebuilt_from_its_last_leafs_inclusion_proof() {
        let entries: Vec<Hash> = (0..70u8).map(|i| [i; 32]).collect();
        for size in 1..=entries.len() {
            let mut pushed = Frontier::new();
            for entry in &entries[..size] {
                pushed.push(entry);
            }
            let leaves: Vec<Hash> = entries[..size].iter().map(leaf_hash).collect();
            let path = inclusion_proof(size as u64 - 1, &leaves);
            let rebuilt = Frontier::from_right_edge(size as u64, &entries[size - 1], &path);
            assert_eq!(rebuilt.as_ref(), Some(&pushed), "size {size}");
            if let Some(shorter) = path.get(1..) {
                assert!(Frontier::from_right_edge(size as u64, &entries[0], shorter).is_none());
            }
        }
    }
    use proptest::prelude::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&Sha256::digest(i.to_be_bytes()).into()))
            .collect()
    }

    /// The recursive definition of RFC 6962, to check the frontier against.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn hex(hash: &Hash) -> String {
        hash.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn frontier_matches_the_definition() {
        let all = leaves(70);
        for n in 0..=all.len() {
            assert_eq!(root(&all[..n]), mth(&all[..n]), "size {n}");
        }
    }

    /// The root of the empty tree and of one leaf, as RFC 6962 defines them.
    #[test]
    fn known_roots() {
        assert_eq!(
            hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let leaf = leaf_hash(&[0; 32]);
        assert_eq!(root(&[leaf]), leaf);
        assert_eq!(
            root(&[leaf, leaf]),
            node_hash(&leaf, &leaf),
            "two leaves hash as one node"
        );
    }

    #[test]
    fn ranges_cover_the_tree_once() {
        for size in 1..40u64 {
            for index in 0..size {
                let mut covered: Vec<u64> = inclusion_ranges(index, size)
                    .into_iter()
                    .flatten()
                    .collect();
                covered.push(index);
                covered.sort();
                assert_eq!(covered, (0..size).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn every_proof_of_small_trees_verifies() {
        let all = leaves(33);
        for size in 1..=all.len() as u64 {
            let tree = &all[..size as usize];
            let r = root(tree);
            for index in 0..size {
                let proof = inclusion_proof(index, tree);
                assert!(verify_inclusion(
                    index,
                    size,
                    &tree[index as usize],
                    &proof,
                    &r
                ));
            }
            for first in 0..=size {
                let proof = consistency_proof(first, tree);
                let first_root = root(&all[..first as usize]);
                assert!(
                    verify_consistency(first, size, &first_root, &r, &proof),
                    "{first} -> {size}"
                );
            }
        }
    }

    #[test]
    fn wrong_roots_or_sizes_fail() {
        let all = leaves(10);
        let r = root(&all);
        let proof = inclusion_proof(3, &all);
        assert!(!verify_inclusion(3, 10, &all[4], &proof, &r));
        assert!(!verify_inclusion(4, 10, &all[3], &proof, &r));
        assert!(!verify_inclusion(10, 10, &all[3], &proof, &r));
        let first = root(&all[..6]);
        let proof = consistency_proof(6, &all);
        assert!(!verify_consistency(6, 10, &r, &r, &proof));
        assert!(!verify_consistency(5, 10, &first, &r, &proof));
        assert!(!verify_consistency(6, 10, &first, &r, &[]));
        assert!(!verify_consistency(10, 6, &r, &first, &proof));
    }

    fn flip(hash: &mut Hash, bit: usize) {
        hash[bit / 8 % 32] ^= 1 << (bit % 8);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn honest_inclusion_proofs_verify(size in 1u64..300, index_seed in any::<u64>()) {
            let all = leaves(size);
            let index = index_seed % size;
            let proof = inclusion_proof(index, &all);
            prop_assert!(verify_inclusion(index, size, &all[index as usize], &proof, &root(&all)));
        }

        #[test]
        fn tampered_inclusion_proofs_fail(
            size in 1u64..300,
            index_seed in any::<u64>(),
            target in 0usize..4,
            which in any::<usize>(),
            bit in 0usize..256,
        ) {
            let all = leaves(size);
            let index = index_seed % size;
            let mut proof = inclusion_proof(index, &all);
            let mut r = root(&all);
            let mut leaf = all[index as usize];
            let mut i = index;
            match target {
                0 if !proof.is_empty() => {
                    let at = which % proof.len();
                    flip(&mut proof[at], bit);
                }
                0 | 1 => flip(&mut r, bit),
                2 => flip(&mut leaf, bit),
                _ => i ^= 1 << (bit % 64),
            }
            prop_assert!(!verify_inclusion(i, size, &leaf, &proof, &r));
        }

        #[test]
        fn honest_consistency_proofs_verify(second in 1u64..300, first_seed in any::<u64>()) {
            let all = leaves(second);
            let first = first_seed % (second + 1);
            let proof = consistency_proof(first, &all);
            prop_assert!(verify_consistency(first, second, &root(&all[..first as usize]), &root(&all), &proof));
        }

        #[test]
        fn tampered_consistency_proofs_fail(
            second in 2u64..300,
            first_seed in any::<u64>(),
            target in 0usize..4,
            which in any::<usize>(),
            bit in 0usize..256,
        ) {
            let all = leaves(second);
            let first = 1 + first_seed % (second - 1);
            let mut proof = consistency_proof(first, &all);
            let mut first_root = root(&all[..first as usize]);
            let mut second_root = root(&all);
            let mut m = first;
            match target {
                0 => {
                    let at = which % proof.len();
                    flip(&mut proof[at], bit);
                }
                1 => flip(&mut first_root, bit),
                2 => flip(&mut second_root, bit),
                _ => m ^= 1 << (bit % 64),
            }
            prop_assert!(!verify_consistency(m, second, &first_root, &second_root, &proof));
        }
    }

    #[test]
    fn a_frontier_survives_its_bytes() {
        let mut frontier = Frontier::new();
        for i in 0..37u8 {
            let bytes = frontier.to_bytes();
            assert_eq!(Frontier::from_bytes(&bytes).as_ref(), Some(&frontier));
            assert!(Frontier::from_bytes(&bytes[..bytes.len() - 1]).is_none());
            frontier.push(&[i; 32]);
        }
    }
}
