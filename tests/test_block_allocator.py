"""BlockAllocator: exact block ids, the LRU free list as evictor, refcounts, and a reference model."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpage import _C


def test_allocates_in_id_order_and_frees_to_the_tail():
    blocks = _C.BlockAllocator(6)
    assert blocks.free_list() == [0, 1, 2, 3, 4, 5]
    assert [blocks.allocate() for _ in range(3)] == [0, 1, 2]
    blocks.free(1)
    blocks.free(0)
    # 1 and 0 were freed most recently: they are evicted last.
    assert blocks.free_list() == [3, 4, 5, 1, 0]
    assert blocks.allocate(4) == [3, 4, 5, 1]
    assert (blocks.num_free_blocks, blocks.num_used_blocks) == (1, 5)
    blocks.check_invariants()


def test_free_all_releases_tail_first_so_the_prefix_survives_longest():
    blocks = _C.BlockAllocator(6)
    table = blocks.allocate(4)
    blocks.free_all(table)
    assert blocks.free_list() == [4, 5, 3, 2, 1, 0]


def test_refcounts_keep_shared_blocks_out_of_the_free_list():
    blocks = _C.BlockAllocator(4)
    block = blocks.allocate()
    blocks.incref(block)
    assert blocks.ref_count(block) == 2
    blocks.free(block)
    assert blocks.ref_count(block) == 1 and block not in blocks.free_list()
    blocks.free(block)
    assert blocks.ref_count(block) == 0 and blocks.free_list()[-1] == block
    with pytest.raises(RuntimeError, match="already free"):
        blocks.free(block)
    blocks.check_invariants()


def test_cached_block_stays_findable_while_free_until_reused():
    blocks = _C.BlockAllocator(3)
    a, b = blocks.allocate(2)
    assert blocks.set_hash(a, 111) and blocks.set_hash(b, 222)
    blocks.free_all([a, b])  # free list: [2, b, a]
    assert blocks.lookup(111) == a and blocks.lookup(222) == b
    assert blocks.num_cached_blocks == 2
    # A hit on a free cached block takes it off the free list.
    blocks.incref(a)
    assert blocks.free_list() == [2, b]
    blocks.free(a)
    assert blocks.free_list() == [2, b, a]
    assert blocks.allocate() == 2
    assert blocks.allocate() == b  # reuse evicts the cached entry
    assert blocks.lookup(222) is None and blocks.hash_of(b) == 0
    assert blocks.lookup(111) == a and blocks.num_cached_blocks == 1
    blocks.check_invariants()


def test_a_hash_belongs_to_one_block():
    blocks = _C.BlockAllocator(2)
    a, b = blocks.allocate(2)
    assert blocks.set_hash(a, 7)
    assert not blocks.set_hash(b, 7)  # duplicate content: the first block keeps the entry
    assert blocks.lookup(7) == a and blocks.hash_of(b) == 0
    assert blocks.set_hash(a, 7)  # re-registering the same hash is harmless
    with pytest.raises(RuntimeError, match="another hash"):
        blocks.set_hash(a, 8)
    blocks.reset_hashes()
    assert blocks.lookup(7) is None and blocks.num_cached_blocks == 0
    blocks.check_invariants()


def test_misuse_raises_clear_errors():
    blocks = _C.BlockAllocator(2)
    with pytest.raises(IndexError, match="outside"):
        blocks.free(2)
    with pytest.raises(IndexError, match="outside"):
        blocks.ref_count(-1)
    blocks.allocate(2)
    assert not blocks.can_allocate(1)
    with pytest.raises(RuntimeError, match="no free"):
        blocks.allocate()
    with pytest.raises(RuntimeError, match="cannot allocate 1"):
        blocks.allocate(1)
    with pytest.raises(ValueError, match="num_blocks"):
        _C.BlockAllocator(-1)


class ReferenceAllocator:
    """The allocator's specification in plain Python: a list for the LRU free list, dicts for hashes."""

    def __init__(self, num_blocks):
        self.free = list(range(num_blocks))
        self.refs = [0] * num_blocks
        self.hash = {}  # block -> hash
        self.index = {}  # hash -> block

    def allocate(self):
        block = self.free.pop(0)
        if block in self.hash:
            del self.index[self.hash.pop(block)]
        self.refs[block] = 1
        return block

    def incref(self, block):
        if self.refs[block] == 0:
            self.free.remove(block)
        self.refs[block] += 1

    def release(self, block):
        self.refs[block] -= 1
        if self.refs[block] == 0:
            self.free.append(block)

    def set_hash(self, block, value):
        if self.hash.get(block) == value:
            return True
        if value in self.index:
            return False
        self.hash[block] = value
        self.index[value] = block
        return True


ops = st.lists(
    st.tuples(st.sampled_from(["allocate", "incref", "free", "free_all", "hash", "lookup"]), st.integers(0, 1000)),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(num_blocks=st.integers(1, 8), ops=ops)
def test_matches_the_reference_model(num_blocks, ops):
    blocks, ref = _C.BlockAllocator(num_blocks), ReferenceAllocator(num_blocks)
    held = []  # one entry per reference taken, like a set of block tables
    next_hash = 1
    for op, arg in ops:
        if op == "allocate" and ref.free:
            block = blocks.allocate()
            assert block == ref.allocate()
            held.append(block)
        elif op == "incref" and (held or ref.hash):
            candidates = held + list(ref.hash)
            block = candidates[arg % len(candidates)]
            blocks.incref(block)
            ref.incref(block)
            held.append(block)
        elif op == "free" and held:
            block = held.pop(arg % len(held))
            blocks.free(block)
            ref.release(block)
        elif op == "free_all" and held:
            table = held[-(arg % len(held)) - 1 :]
            del held[-len(table) :]
            blocks.free_all(table)
            for block in reversed(table):
                ref.release(block)
        elif op == "hash" and held:
            block = held[arg % len(held)]
            if block not in ref.hash:
                value = (arg % 5) + 1 if arg % 3 == 0 else 100 + next_hash  # some deliberate duplicates
                next_hash += 1
                assert blocks.set_hash(block, value) == ref.set_hash(block, value)
        elif op == "lookup":
            value = (arg % 5) + 1
            assert blocks.lookup(value) == ref.index.get(value)
        blocks.check_invariants()
        assert blocks.free_list() == ref.free
        assert [blocks.ref_count(b) for b in range(num_blocks)] == ref.refs
        assert blocks.num_cached_blocks == len(ref.index)
