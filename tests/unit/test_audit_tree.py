"""The Merkle tree math (relay/audit_tree.py) against the published vectors of the
reference implementations (transparency-dev/merkle proof/verify_test.go, whose roots are
the certificate-transparency C++ merkle_tree_test.cc constants), against the RFC 6962
§2.1 recursion written out naively, and against its own verifiers under hypothesis."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backline.relay import audit_tree as t

LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
ROOTS = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")]


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# (leaf, 1-based as in verify_test.go; size; proof)
INCLUSION = [
    (1, 8, [h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (6, 8, [h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (3, 3, [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (2, 5, [h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]),
]
CONSISTENCY = [
    (1, 8, [h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (6, 8, [h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (2, 5, [h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]),
    (6, 7, [h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
]


# --- RFC 6962 §2.1, written as the RFC writes it --------------------------------------

def mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < len(d):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()


def path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = 1
    while k * 2 < len(d):
        k *= 2
    if m < k:
        return [*path(m, d[:k]), mth(d[k:])]
    return [*path(m - k, d[k:]), mth(d[:k])]


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [mth(d)]
    k = 1
    while k * 2 < len(d):
        k *= 2
    if m <= k:
        return [*subproof(m, d[:k], b), mth(d[k:])]
    return [*subproof(m - k, d[k:], False), mth(d[:k])]


def tree_of(data: list[bytes]) -> t.MemoryTree:
    tree = t.MemoryTree()
    for d in data:
        tree.append(t.leaf_hash(d))
    return tree


# --- the reference vectors --------------------------------------------------------------

def test_roots_match_the_reference_constants() -> None:
    tree = tree_of(LEAVES)
    for size in range(1, 9):
        assert tree.root(size) == ROOTS[size - 1]
        assert mth(LEAVES[:size]) == ROOTS[size - 1]
    assert t.MemoryTree().root() == bytes.fromhex(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_the_reference(leaf: int, size: int,
                                             proof: list[bytes]) -> None:
    tree = tree_of(LEAVES)
    assert tree.inclusion(leaf - 1, size) == proof
    t.verify_inclusion(leaf - 1, size, t.leaf_hash(LEAVES[leaf - 1]), proof, ROOTS[size - 1])


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_consistency_proofs_match_the_reference(size1: int, size2: int,
                                               proof: list[bytes]) -> None:
    tree = tree_of(LEAVES)
    assert tree.consistency(size1, size2) == proof
    t.verify_consistency(size1, size2, ROOTS[size1 - 1], ROOTS[size2 - 1], proof)


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION)
def test_corrupted_inclusion_proofs_fail(leaf: int, size: int, proof: list[bytes]) -> None:
    """The probes of verify_test.go's corruptInclusionProof."""
    index, root, lh = leaf - 1, ROOTS[size - 1], t.leaf_hash(LEAVES[leaf - 1])
    some = h("abacaba000000000000000000000000000000000000000000060061e00123456")
    probes = [(index - 1, size, root, lh, proof), (index + 1, size, root, lh, proof),
              (index ^ 2, size, root, lh, proof), (index, size * 2, root, lh, proof),
              (index, size // 2, root, lh, proof), (index, size, root, b"WrongLeaf", proof),
              (index, size, t.EMPTY_ROOT, lh, proof), (index, size, some, lh, proof),
              (index, size, root, lh, [*proof, b""]), (index, size, root, lh, [*proof, root]),
              (index, size, root, lh, [b"", *proof]), (index, size, root, lh, [root, *proof]),
              (index, size, root, lh, proof[:-1])]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
        probes.append((index, size, root, lh, bad))
    if len(proof) > 1:
        probes.append((index, size, root, lh, [proof[0], some, *proof[1:]]))
    for i, s, r, leaf, p in probes:
        with pytest.raises(t.ProofError):
            t.verify_inclusion(i, s, leaf, p, r)


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_corrupted_consistency_proofs_fail(size1: int, size2: int,
                                           proof: list[bytes]) -> None:
    """The probes of verify_test.go's corruptConsistencyProof."""
    r1, r2 = ROOTS[size1 - 1], ROOTS[size2 - 1]
    probes = [(size1 - 1, size2, r1, r2, proof), (size1 + 1, size2, r1, r2, proof),
              (size1 ^ 2, size2, r1, r2, proof), (size1, size2 * 2, r1, r2, proof),
              (size1, size2 // 2, r1, r2, proof), (size1, size2, b"WrongRoot", r2, proof),
              (size1, size2, r1, b"WrongRoot", proof), (size1, size2, r2, r1, proof),
              (size1, size2, r1, r2, []), (size1, size2, r1, r2, [*proof, b""]),
              (size1, size2, r1, r2, [*proof, r1]), (size1, size2, r1, r2, [*proof, r2]),
              (size1, size2, r1, r2, [b"", *proof]), (size1, size2, r1, r2, [r1, *proof]),
              (size1, size2, r1, r2, [r2, *proof]), (size1, size2, r1, r2, [proof[0], *proof]),
              (size1, size2, r1, r2, proof[:-1])]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((size1, size2, r1, r2, bad))
    for probe in probes:
        if probe[0] < 0 or probe[1] < probe[0]:
            continue  # no such sizes (Go's uint64 wraps; ours refuses them as arguments)
        s1, s2, r1_, r2_, p = probe
        with pytest.raises(t.ProofError):
            t.verify_consistency(s1, s2, r1_, r2_, p)


def test_edge_cases_of_the_verifiers() -> None:
    some = hashlib.sha256(b"x").digest()
    for index, size in ((0, 0), (1, 0), (2, 1)):
        with pytest.raises(t.ProofError):
            t.verify_inclusion(index, size, some, [], t.EMPTY_ROOT)
    t.verify_inclusion(0, 1, some, [], some)
    t.verify_consistency(0, 0, some, some, [])
    t.verify_consistency(0, 5, some, t.EMPTY_ROOT, [])
    with pytest.raises(t.ProofError):
        t.verify_consistency(1, 1, some, t.EMPTY_ROOT, [])
    with pytest.raises(t.ProofError):
        t.verify_consistency(1, 2, some, some, [])
    with pytest.raises(t.ProofError):
        t.verify_consistency(1, 1, some, some, [some])
    with pytest.raises(t.ProofError):
        t.consistency_ranges(0, 3)
    with pytest.raises(t.ProofError):
        t.inclusion_ranges(3, 3)


# --- against the naive recursion ------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=1, max_size=70), st.data())
def test_tree_agrees_with_the_rfc_recursion(data: list[bytes], draw: st.DataObject) -> None:
    tree = tree_of(data)
    n = len(data)
    size2 = draw.draw(st.integers(1, n))
    size1 = draw.draw(st.integers(1, size2))
    index = draw.draw(st.integers(0, size2 - 1))
    assert tree.root(size2) == mth(data[:size2])
    proof = tree.inclusion(index, size2)
    assert proof == path(index, data[:size2])
    t.verify_inclusion(index, size2, t.leaf_hash(data[index]), proof, mth(data[:size2]))
    cons = tree.consistency(size1, size2)
    assert cons == subproof(size1, data[:size2], True)
    t.verify_consistency(size1, size2, mth(data[:size1]), mth(data[:size2]), cons)
    # Only the leaf it proves passes.
    other = (index + 1) % size2
    if data[other] != data[index]:
        with pytest.raises(t.ProofError):
            t.verify_inclusion(index, size2, t.leaf_hash(data[other]), proof,
                               mth(data[:size2]))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**40), st.integers(1, 2**20))
def test_subtrees_are_aligned_and_few(lo: int, length: int) -> None:
    hi = lo + length
    parts = t.subtrees(lo, hi)
    at = lo
    for level, index in parts:
        assert index << level == at
        at += 1 << level
    assert at == hi
    assert len(parts) <= 2 * hi.bit_length()
