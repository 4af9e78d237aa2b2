"""RFC 6962 Merkle tree math (RFC 9162 §2.1), without any I/O.

The audit trail keeps, beside its hash chain, a Merkle tree over its events (leaf i is
event ``seq`` i+1): a chain proves the whole trail to someone who has all of it, but
only a tree proves one event, or that an old checkpoint is a prefix of a new one, with
a logarithmic number of hashes (docs/audit-proofs.md). This module is the math only,
so the relay's store (relay/audit.py), the offline bundle verifier (relay/audit_bundle.py)
and the tests share one implementation.

Storage is described by *aligned complete subtrees*: the node ``(level, index)`` is the
root of the leaves ``[index * 2**level, (index + 1) * 2**level)``. Every range the RFC's
recursion asks for decomposes into O(log n) of them (:func:`subtrees`), so a store that
keeps those nodes answers a root or a proof with O(log n) reads, and appending a leaf
writes on average two nodes (:func:`append_leaf`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

Node = tuple[int, int]  # (level, index)
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof that does not verify, or arguments no proof can have."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1): the RFC's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def subtrees(lo: int, hi: int) -> list[Node]:
    """The aligned complete subtrees covering ``[lo, hi)``, left to right, greedily as
    large as alignment allows. For the ranges the RFC's recursion makes (``lo`` is a
    multiple of a power of two at least ``hi - lo``) this is the RFC's own split."""
    out: list[Node] = []
    while lo < hi:
        level = (lo & -lo).bit_length() - 1 if lo else (hi - lo).bit_length()
        while (1 << level) > hi - lo:
            level -= 1
        out.append((level, lo >> level))
        lo += 1 << level
    return out


def fold(hashes: list[bytes]) -> bytes:
    """MTH of a range from its :func:`subtrees` hashes: right to left, as the RFC's
    recursion combines a complete left part with the rest."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges whose MTHs form PATH(index, D[0:size]) (RFC 6962 §2.1.1), in proof
    order (nearest the leaf first)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo = lo + k
    out.reverse()
    return out


def consistency_ranges(size1: int, size2: int) -> list[tuple[int, int]]:
    """The ranges whose MTHs form PROOF(size1, D[0:size2]) (RFC 6962 §2.1.2)."""
    if not 0 < size1 <= size2:
        raise ProofError(f"no consistency proof from size {size1} to size {size2}")
    out: list[tuple[int, int]] = []
    lo, hi, m, whole = 0, size2, size1, True
    while m != hi - lo:
        k = split_point(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        out.append((lo, hi))
    out.reverse()
    return out


def needed(ranges: Iterable[tuple[int, int]]) -> set[Node]:
    """Every stored node the MTHs of ``ranges`` need: fetch them in one read."""
    return {node for lo, hi in ranges for node in subtrees(lo, hi)}


def range_hash(lo: int, hi: int, nodes: Callable[[Node], bytes]) -> bytes:
    return fold([nodes(n) for n in subtrees(lo, hi)])


def append_leaf(size: int, leaf: bytes, nodes: Callable[[Node], bytes]
                ) -> list[tuple[Node, bytes]]:
    """The nodes that appending ``leaf`` to a tree of ``size`` leaves completes: the
    leaf itself and each parent whose right child it finishes (the left siblings are
    the frontier, ``subtrees(0, size)``, read through ``nodes``)."""
    out: list[tuple[Node, bytes]] = [((0, size), leaf)]
    level, index, acc = 0, size, leaf
    while index & 1:
        acc = node_hash(nodes((level, index - 1)), acc)
        level, index = level + 1, index >> 1
        out.append(((level, index), acc))
    return out


def verify_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes],
                     root: bytes) -> None:
    """RFC 9162 §2.1.3.2; raises :class:`ProofError` when it does not hold."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the inclusion proof is too short")
    if r != root:
        raise ProofError("the inclusion proof does not lead to the root")


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes,
                       proof: list[bytes]) -> None:
    """RFC 9162 §2.1.4.2; raises :class:`ProofError` when it does not hold."""
    if size1 < 0 or size2 < size1:
        raise ProofError(f"size {size2} cannot follow size {size1}")
    if size1 == size2:
        if proof:
            raise ProofError("equal sizes take an empty proof")
        if root1 != root2:
            raise ProofError("equal sizes with different roots")
        return
    if size1 == 0:
        if proof:
            raise ProofError("an empty tree takes an empty proof")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the consistency proof is too short")
    if fr != root1:
        raise ProofError(f"the consistency proof does not lead to the root of size {size1}")
    if sr != root2:
        raise ProofError(f"the consistency proof does not lead to the root of size {size2}")


class MemoryTree:
    """A whole tree in memory (tests, the bundle verifier): the same node layout as the
    relay's table, so the same code computes roots and proofs over either."""

    def __init__(self) -> None:
        self.nodes: dict[Node, bytes] = {}
        self.size = 0

    def append(self, leaf: bytes) -> None:
        for node, h in append_leaf(self.size, leaf, self.nodes.__getitem__):
            self.nodes[node] = h
        self.size += 1

    def root(self, size: int | None = None) -> bytes:
        return range_hash(0, self.size if size is None else size, self.nodes.__getitem__)

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return [range_hash(lo, hi, self.nodes.__getitem__)
                for lo, hi in inclusion_ranges(index, size)]

    def consistency(self, size1: int, size2: int) -> list[bytes]:
        return [range_hash(lo, hi, self.nodes.__getitem__)
                for lo, hi in consistency_ranges(size1, size2)]


class Frontier:
    """Only the frontier of a growing tree (``subtrees(0, size)``, O(log n) hashes):
    what a verifier walking the whole trail keeps to know the root at every size."""

    def __init__(self) -> None:
        self.nodes: dict[Node, bytes] = {}
        self.size = 0

    def append(self, leaf: bytes) -> list[tuple[Node, bytes]]:
        """Append ``leaf``; returns every node it completed (to compare with a store)."""
        made = append_leaf(self.size, leaf, self.nodes.__getitem__)
        for (level, index), _ in made[1:]:
            del self.nodes[(level - 1, 2 * index)]
        node, digest = made[-1]
        self.nodes[node] = digest
        self.size += 1
        return made

    def root(self) -> bytes:
        return range_hash(0, self.size, self.nodes.__getitem__)
