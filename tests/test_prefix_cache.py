"""PrefixCache hashing and lookup, and prefix hits through the Scheduler (exact block ids, LRU eviction)."""

import pytest

from fastpage import _C

BS = 4


def make_cache(num_blocks=8, enabled=True, salt=1234):
    blocks = _C.BlockAllocator(num_blocks)
    return blocks, _C.PrefixCache(blocks, BS, enabled, salt)


def test_hashes_chain_over_parent_tokens_and_extra_key():
    _, cache = make_cache()
    tokens = list(range(10, 22))  # 3 full blocks
    hashes = cache.hash_blocks(tokens)
    h0 = cache.hash_block(0, tokens[0:4])
    h1 = cache.hash_block(h0, tokens[4:8])
    h2 = cache.hash_block(h1, tokens[8:12])
    assert hashes == [h0, h1, h2]
    assert cache.hash_blocks(tokens + [1, 2, 3]) == hashes  # a partial block has no hash
    assert 0 not in hashes and len(set(hashes)) == 3
    assert cache.hash_block(h0, tokens[0:4]) != h0  # the parent matters
    assert cache.hash_block(0, tokens[0:4], extra_key=7) != h0  # so does the extra key (LoRA id)
    assert cache.hash_block(0, [10, 11, 13, 12]) != h0  # and token order
    _, other_salt = make_cache(salt=99)
    assert other_salt.hash_block(0, tokens[0:4]) != h0


def register_run(blocks, cache, tokens):
    """Allocate and register one block per full block of tokens, as a finished prefill would."""
    hashes = cache.hash_blocks(tokens)
    table = blocks.allocate(len(hashes))
    parent = 0
    for i, (block, h) in enumerate(zip(table, hashes)):
        cache.register_block(block, h, parent, tokens[i * BS : (i + 1) * BS])
        parent = h
    return table, hashes


def test_longest_cached_run_with_references_and_stats():
    blocks, cache = make_cache()
    prompt = list(range(100, 112))
    table, hashes = register_run(blocks, cache, prompt)
    assert table == [0, 1, 2]
    blocks.free_all(table)  # free but still findable

    query = prompt[:8] + [7, 7, 7, 7, 7]  # first two blocks match, the third differs
    query_hashes = cache.hash_blocks(query)
    assert cache.find_prefix(query, query_hashes, 10) == [0, 1]
    assert cache.num_queried_tokens == 0  # find_prefix counts nothing
    assert cache.acquire_prefix(query, query_hashes, 1) == [0]  # capped by max_blocks
    assert blocks.ref_count(0) == 1 and 0 not in blocks.free_list()
    assert cache.acquire_prefix(query, query_hashes, 10) == [0, 1]
    assert (blocks.ref_count(0), blocks.ref_count(1)) == (2, 1)
    assert (cache.num_queried_tokens, cache.num_hit_tokens) == (2 * len(query), 4 + 8)
    blocks.check_invariants()


def test_a_hash_collision_costs_a_miss_not_a_wrong_prefix():
    blocks, cache = make_cache()
    prompt = list(range(100, 108))
    _, hashes = register_run(blocks, cache, prompt)
    # Pretend other tokens hash to the same values: the stored tokens and parent still disagree.
    assert cache.find_prefix([1, 2, 3, 4, 5, 6, 7, 8], hashes, 2) == []
    assert cache.find_prefix(prompt, hashes, 2) == [0, 1]
    # Right first block, second block's hash presented under a different parent chain.
    assert cache.find_prefix(prompt, [hashes[0], cache.hash_block(0, prompt[4:8])], 2) == [0]
    with pytest.raises(ValueError, match="holds 4 tokens"):
        cache.register_block(2, 5, 0, [1, 2, 3])


def test_disabled_cache_never_hits_and_reset_forgets():
    blocks, cache = make_cache(enabled=False)
    prompt = list(range(8))
    register_run(blocks, cache, prompt)
    assert blocks.num_cached_blocks == 0
    assert cache.acquire_prefix(prompt, cache.hash_blocks(prompt), 2) == []
    assert cache.num_queried_tokens == 0

    blocks, cache = make_cache()
    register_run(blocks, cache, prompt)
    cache.reset()
    assert cache.find_prefix(prompt, cache.hash_blocks(prompt), 2) == []


# ---- through the Scheduler ----


def make_scheduler(num_blocks=8, caching=True, max_model_len=64):
    config = _C.EngineConfig()
    config.block_size = BS
    config.max_num_batched_tokens = 64
    config.max_num_seqs = 8
    config.enable_prefix_caching = caching
    return _C.Scheduler(config, max_model_len, num_blocks, 0)


def params(max_tokens=1, **kwargs):
    p = _C.CSamplingParams()
    p.max_tokens = max_tokens
    p.ignore_eos = True
    for key, value in kwargs.items():
        setattr(p, key, value)
    return p


def run_step(sched, token=9):
    plan = sched.schedule()
    sched.update([_C.SampledToken(s.seq_id, token, -1.0) for s in plan.seqs if s.sample])
    sched.check_invariants()
    return plan


def only_seq(plan):
    assert len(plan.seqs) == 1
    return plan.seqs[0]


PROMPT = list(range(1, 11))  # 10 tokens: 2 full blocks + 2 tokens


def finish_prompt(sched, request_id="a"):
    sched.add_request(request_id, PROMPT, params())
    plan = run_step(sched)  # prefill 10 tokens into blocks 0, 1, 2; max_tokens=1 ends it
    assert plan.block_tables == [0, 1, 2]
    assert not sched.has_unfinished()
    assert sched.device_blocks.free_list() == [3, 4, 5, 6, 7, 2, 1, 0]


def test_prefix_hit_across_requests_shares_exact_blocks():
    sched = make_scheduler()
    finish_prompt(sched)
    sched.add_request("b", PROMPT[:8] + [50, 51, 52], params())
    plan = run_step(sched)
    seq = only_seq(plan)
    # Blocks 0 and 1 come from the cache; the new tail block is the LRU head, block 3.
    assert (seq.start_position, seq.num_new_tokens) == (8, 3)
    assert plan.block_tables == [0, 1, 3]
    assert plan.slot_mapping == [12, 13, 14]
    assert plan.input_ids == [50, 51, 52]
    assert sched.sequence(seq.seq_id).num_cached_prompt_tokens == 8
    cache = sched.prefix_cache
    assert (cache.num_queried_tokens, cache.num_hit_tokens) == (10 + 11, 8)


def test_hit_is_capped_so_one_token_is_computed():
    sched = make_scheduler()
    finish_prompt(sched)
    sched.add_request("b", PROMPT[:8], params())  # exactly two full cached blocks
    seq = only_seq(run_step(sched))
    assert (seq.start_position, seq.num_new_tokens, seq.sample) == (4, 4, True)


def test_tail_blocks_are_evicted_first_then_the_prefix_misses():
    sched = make_scheduler()
    finish_prompt(sched)
    # 27 tokens need 7 blocks: 3, 4, 5, 6, 7, then 2 (a's partial tail) and 1 (a's second block).
    sched.add_request("big", [90 + i for i in range(27)], params())
    plan = run_step(sched)
    assert plan.block_tables == [3, 4, 5, 6, 7, 2, 1]
    sched.add_request("b", PROMPT[:8] + [50, 51, 52], params())
    plan = run_step(sched)
    seq = only_seq(plan)
    assert (seq.start_position, seq.num_new_tokens) == (4, 7)  # only block 0 survived
    assert plan.block_tables == [0, 1, 2]  # then the LRU head: big's tail blocks 1 and 2
    assert sched.sequence(seq.seq_id).num_cached_prompt_tokens == 4


def test_generated_tokens_are_cached_too():
    sched = make_scheduler()
    sched.add_request("a", [1, 2, 3], params(max_tokens=6))
    tokens = [1, 2, 3]
    while sched.has_unfinished():
        plan = run_step(sched, token=40 + len(tokens))
        if plan.seqs and plan.seqs[0].sample:
            tokens.append(40 + len(tokens))
    assert len(tokens) == 9  # blocks [1 2 3 43] [44 45 46 47] computed; token 48 never fed
    sched.add_request("b", tokens[:8] + [5], params())
    seq = only_seq(run_step(sched))
    assert seq.start_position == 8


def test_no_hit_when_disabled_after_reset_or_with_prompt_logprobs():
    sched = make_scheduler(caching=False)
    finish_prompt(sched)
    sched.add_request("b", PROMPT, params())
    assert only_seq(run_step(sched)).start_position == 0

    sched = make_scheduler()
    finish_prompt(sched)
    sched.reset_prefix_cache()
    sched.add_request("b", PROMPT, params())
    assert only_seq(run_step(sched)).start_position == 0

    sched = make_scheduler()
    finish_prompt(sched)
    sched.add_request("b", PROMPT, params(prompt_logprobs=1))
    seq = only_seq(run_step(sched))
    assert (seq.start_position, seq.prompt_logprobs) == (0, True)


def test_same_prompt_in_one_step_is_computed_once_each_and_cached_once():
    sched = make_scheduler()
    sched.add_request("a", PROMPT, params(max_tokens=2))
    sched.add_request("b", PROMPT, params(max_tokens=2))
    plan = run_step(sched)
    # Blocks become findable only after the step that fills them, so both compute everything.
    assert [(s.start_position, s.num_new_tokens) for s in plan.seqs] == [(0, 10), (0, 10)]
    run_step(sched)
    assert sched.device_blocks.num_cached_blocks == 2  # a's two full blocks; b's duplicates are not indexed
