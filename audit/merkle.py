"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and proof verification.

Why a Merkle tree on top of the hash chain: the chain shows that nothing *inside* the log was
changed, but only a signed tree head (size + root) lets a third party check one record
(an inclusion proof, O(log n) hashes) or that a later log still contains an earlier one
unchanged (a consistency proof) without reading the whole file, and lets two checkpoints taken
at different times be compared. The hashing is exactly RFC 6962 section 2.1 (SHA-256, leaf
prefix 0x00, interior node prefix 0x01), so standard tooling and the public test vectors apply.

Leaf indices are 0-based here, as in the RFCs; audit record ``seq`` N is leaf N-1.

Pure: no I/O. Verification never raises for a bad proof; it returns False.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "HASH_SIZE",
    "ConsistencyProof",
    "InclusionProof",
    "MerkleTree",
    "TreeFrontier",
    "empty_root",
    "leaf_hash",
    "node_hash",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """MTH of one entry: SHA-256(0x00 || data). The prefix keeps a leaf from passing as a node."""
    return hashlib.sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right), the hash of an interior node."""
    return hashlib.sha256(_NODE + left + right).digest()


def empty_root() -> bytes:
    """MTH of the empty list: SHA-256 of nothing."""
    return hashlib.sha256(b"").digest()


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 6962: the largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


@dataclass(frozen=True)
class InclusionProof:
    """Proof that leaf ``index`` (0-based) is in the tree of ``size`` leaves."""

    index: int
    size: int
    hashes: tuple[bytes, ...]


@dataclass(frozen=True)
class ConsistencyProof:
    """Proof that the tree of ``size1`` leaves is a prefix of the tree of ``size2`` leaves."""

    size1: int
    size2: int
    hashes: tuple[bytes, ...]


class TreeFrontier:
    """The right edge of a growing tree: O(log n) hashes, enough for the root of any prefix end.

    Agents keep one of these to sign checkpoints without holding the whole tree in memory.
    """

    def __init__(self) -> None:
        self.size = 0
        # (height, hash) of maximal perfect subtrees, left to right; heights strictly decrease.
        self._stack: list[tuple[int, bytes]] = []

    @classmethod
    def from_stack(cls, size: int, stack: Sequence[tuple[int, bytes]]) -> TreeFrontier:
        """Resume from a saved right edge (``stack``), e.g. after old records were pruned."""
        heights = [h for h, _ in stack]
        if (
            sum(1 << h for h in heights) != size
            or heights != sorted(heights, reverse=True)
            or (len(set(heights)) != len(heights))
            or any(len(d) != HASH_SIZE for _, d in stack)
        ):
            raise ValueError("not the frontier of a tree of that size")
        frontier = cls()
        frontier.size = size
        frontier._stack = list(stack)
        return frontier

    @property
    def stack(self) -> tuple[tuple[int, bytes], ...]:
        return tuple(self._stack)

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash (already ``leaf_hash``ed)."""
        height, digest = 0, leaf
        while self._stack and self._stack[-1][0] == height:
            _, left = self._stack.pop()
            digest = node_hash(left, digest)
            height += 1
        self._stack.append((height, digest))
        self.size += 1

    def root(self) -> bytes:
        """The root of the tree of all leaves appended so far."""
        if not self._stack:
            return empty_root()
        digest = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            digest = node_hash(left, digest)
        return digest


def root_of(leaves: Iterable[bytes]) -> bytes:
    """MTH of a sequence of leaf hashes, streaming."""
    frontier = TreeFrontier()
    for leaf in leaves:
        frontier.append(leaf)
    return frontier.root()


class MerkleTree:
    """A whole tree kept as one flat ``bytearray`` per level, to make proofs for any prefix.

    Level 0 holds the leaf hashes, level j the hashes of the complete aligned subtrees of
    2**j leaves. 64 bytes per leaf in all (a million records: 64 MB), no per-hash objects, and
    any subtree hash is O(log n) lookups, so a proof costs O(log^2 n), not a pass over the log.
    """

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        return len(self._levels[0]) // HASH_SIZE

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash; completes whichever aligned subtrees it closes."""
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        self._levels[0] += leaf
        level, count = 0, self.size
        while count % 2 == 0:
            below = self._levels[level]
            end = len(below)
            parent = node_hash(
                bytes(below[end - 2 * HASH_SIZE : end - HASH_SIZE]), bytes(below[end - HASH_SIZE :])
            )
            level += 1
            if len(self._levels) == level:
                self._levels.append(bytearray())
            self._levels[level] += parent
            count //= 2

    def leaf(self, index: int) -> bytes:
        return bytes(self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def _subtree(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]). Callers only ask for ranges whose ``lo`` is aligned as RFC 6962's
        recursion produces them, so every perfect piece is one stored node."""
        n = hi - lo
        if n & (n - 1) == 0:
            level = n.bit_length() - 1
            index = lo >> level
            return bytes(self._levels[level][index * HASH_SIZE : (index + 1) * HASH_SIZE])
        k = _largest_power_of_two_below(n)
        return node_hash(self._subtree(lo, lo + k), self._subtree(lo + k, hi))

    def root(self, size: int | None = None) -> bytes:
        """The root of the first ``size`` leaves (all by default)."""
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValueError(f"tree has {self.size} leaves, not {size}")
        return empty_root() if size == 0 else self._subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> InclusionProof:
        """RFC 6962 PATH(index, D[0:size])."""
        size = self.size if size is None else size
        if not 0 <= index < size <= self.size:
            raise ValueError(f"no leaf {index} in a tree of {size} (of {self.size}) leaves")
        path: list[bytes] = []
        lo, hi, m = 0, size, index
        # Iterative form of the recursion: collect siblings top-down, then reverse.
        while hi - lo > 1:
            k = _largest_power_of_two_below(hi - lo)
            if m < k:
                path.append(self._subtree(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._subtree(lo, lo + k))
                lo, m = lo + k, m - k
        return InclusionProof(index, size, tuple(reversed(path)))

    def consistency_proof(self, size1: int, size2: int | None = None) -> ConsistencyProof:
        """RFC 6962 PROOF(size1, D[0:size2]) for 0 < size1 <= size2."""
        size2 = self.size if size2 is None else size2
        if not 0 < size1 <= size2 <= self.size:
            raise ValueError(f"no consistency proof from {size1} to {size2} (of {self.size})")
        path: list[bytes] = []
        lo, hi, m, whole = 0, size2, size1, True
        while True:
            n = hi - lo
            if m == n:
                if not whole:
                    path.append(self._subtree(lo, hi))
                break
            k = _largest_power_of_two_below(n)
            if m <= k:
                path.append(self._subtree(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._subtree(lo, lo + k))
                lo, m, whole = lo + k, m - k, False
        return ConsistencyProof(size1, size2, tuple(reversed(path)))


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 section 2.1.3.2: does ``proof`` place ``leaf`` at ``index`` under ``root``?"""
    if not (0 <= index < size) or any(len(p) != HASH_SIZE for p in proof):
        return False
    if len(leaf) != HASH_SIZE or len(root) != HASH_SIZE:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and _equal(r, root)


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> bool:
    """RFC 9162 section 2.1.4.2: is the tree (size1, root1) a prefix of (size2, root2)?

    An empty first tree is refused, as the reference vectors require: every tree is trivially
    consistent with it, so such a "proof" would prove nothing.
    """
    if size1 <= 0 or size2 < size1:
        return False
    if size1 == size2:
        return not proof and _equal(root1, root2)
    if any(len(h) != HASH_SIZE for h in (root1, root2, *proof)):
        return False
    if not proof:
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and _equal(fr, root1) and _equal(sr, root2)
