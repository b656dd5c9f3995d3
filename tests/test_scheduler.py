"""Scheduler: exact step plans for batching, chunked prefill, copy-on-write, preemption, finishing,
and async scheduling's reserve/fill."""

import pytest

from fastpage import _C

Status, Reason = _C.SequenceStatus, _C.FinishReason
PLACEHOLDER = _C.PLACEHOLDER_TOKEN


def make_scheduler(block_size=4, num_blocks=8, host_blocks=0, budget=64, max_seqs=8, max_model_len=64,
                   chunked=True, caching=False):
    config = _C.EngineConfig()
    config.block_size = block_size
    config.max_num_batched_tokens = budget
    config.max_num_seqs = max_seqs
    config.enable_chunked_prefill = chunked
    config.enable_prefix_caching = caching
    return _C.Scheduler(config, max_model_len, num_blocks, host_blocks)


def params(max_tokens=16, **kwargs):
    p = _C.CSamplingParams()
    p.max_tokens = max_tokens
    for key, value in kwargs.items():
        setattr(p, key, value)
    return p


def sample_all(sched, plan, token=9):
    finished = sched.update([_C.SampledToken(s.seq_id, token, -0.5) for s in plan.seqs if s.sample])
    sched.check_invariants()
    return {f.seq_id: (f.reason, f.stop_token) for f in finished}


def layout(plan):
    return [(s.seq_id, s.start_position, s.num_new_tokens, s.sample) for s in plan.seqs]


def test_two_prompts_then_decodes_with_every_plan_field():
    sched = make_scheduler(budget=16)
    sched.add_request("a", list(range(1, 11)), params(max_tokens=3, ignore_eos=True))
    sched.add_request("b", list(range(21, 31)), params(max_tokens=3, ignore_eos=True))

    plan = sched.schedule()  # a: 10 tokens in blocks 0-2; b: the 6 tokens left in the budget, blocks 3-4
    assert layout(plan) == [(0, 0, 10, True), (1, 0, 6, False)]
    assert plan.input_ids == list(range(1, 11)) + list(range(21, 27))
    assert plan.positions == list(range(10)) + list(range(6))
    assert plan.slot_mapping == list(range(10)) + [12, 13, 14, 15, 16, 17]
    assert plan.query_start_loc == [0, 10, 16]
    assert plan.context_lens == [10, 6]
    assert plan.max_blocks_per_seq == 3
    assert plan.block_tables == [0, 1, 2, 3, 4, 0]
    assert plan.num_decode_seqs == 0 and plan.num_tokens == 16
    assert (plan.block_copies, plan.swap_out, plan.swap_in, plan.preempted_seq_ids) == ([], [], [], [])
    sample_all(sched, plan, token=100)

    plan = sched.schedule()  # a decodes (first), b finishes its prompt in a new block 5
    assert layout(plan) == [(0, 10, 1, True), (1, 6, 4, True)]
    assert plan.num_decode_seqs == 1
    assert plan.input_ids == [100, 27, 28, 29, 30]
    assert plan.slot_mapping == [10, 18, 19, 20, 21]
    assert plan.context_lens == [11, 10]
    assert plan.block_tables == [0, 1, 2, 3, 4, 5]
    sample_all(sched, plan, token=101)

    plan = sched.schedule()
    assert layout(plan) == [(0, 11, 1, True), (1, 10, 1, True)]
    assert plan.num_decode_seqs == 2 and plan.slot_mapping == [11, 22]
    assert sample_all(sched, plan) == {0: (Reason.Length, -1)}  # a has its 3 tokens
    a = sched.sequence(0)
    assert a.token_ids == list(range(1, 11)) + [100, 101, 9]
    assert a.status == Status.Finished and a.block_table == []
    assert a.cumulative_logprob == pytest.approx(-1.5)

    plan = sched.schedule()
    assert layout(plan) == [(1, 11, 1, True)]
    assert plan.block_tables == [3, 4, 5]
    assert sample_all(sched, plan) == {1: (Reason.Length, -1)}
    with pytest.raises(IndexError):  # a's data went at the schedule() after it finished
        sched.sequence(0)
    assert not sched.has_unfinished()
    assert sched.device_blocks.free_list() == [6, 7, 2, 1, 0, 5, 4, 3]


def test_chunked_prefill_spreads_a_long_prompt_within_the_budget():
    sched = make_scheduler(budget=8, num_blocks=16)
    sched.add_request("short", [1, 2, 3], params(max_tokens=5, ignore_eos=True))
    sched.add_request("long", list(range(100, 120)), params(max_tokens=1, ignore_eos=True))
    seen = []
    while sched.has_unfinished():
        plan = sched.schedule()
        assert plan.num_tokens <= 8
        seen.append(layout(plan))
        sample_all(sched, plan)
    assert seen == [
        [(0, 0, 3, True), (1, 0, 5, False)],
        [(0, 3, 1, True), (1, 5, 7, False)],
        [(0, 4, 1, True), (1, 12, 7, False)],
        [(0, 5, 1, True), (1, 19, 1, True)],
        [(0, 6, 1, True)],
    ]


def test_without_chunking_a_prompt_waits_until_it_fits_whole():
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        make_scheduler(budget=8, max_model_len=16, chunked=False)
    sched = make_scheduler(budget=8, max_model_len=8, chunked=False)
    sched.add_request("a", [1, 2, 3, 4, 5], params(max_tokens=2, ignore_eos=True))
    sched.add_request("b", [6, 7, 8, 9, 10], params(max_tokens=2, ignore_eos=True))
    plan = sched.schedule()
    assert layout(plan) == [(0, 0, 5, True)]
    sample_all(sched, plan)
    plan = sched.schedule()
    assert layout(plan) == [(0, 5, 1, True), (1, 0, 5, True)]


def test_max_num_seqs_and_fcfs_with_priority():
    sched = make_scheduler(max_seqs=2)
    sched.add_request("late-low", [1], params(), priority=1)
    sched.add_request("first", [2], params())
    sched.add_request("second", [3], params())
    plan = sched.schedule()
    assert [sched.request_of(s.seq_id).request_id for s in plan.seqs] == ["first", "second"]
    assert sched.num_waiting == 1 and sched.num_running == 2


def test_fork_shares_blocks_and_copies_the_partial_block_on_first_write():
    sched = make_scheduler()
    sched.add_request("a", [1, 2, 3, 4, 5, 6], params(max_tokens=4, ignore_eos=True))
    plan = sched.schedule()
    assert plan.block_tables == [0, 1]
    sample_all(sched, plan, token=70)
    child = sched.fork(0)
    assert child == 1
    c = sched.sequence(child)
    assert (c.index, c.token_ids, c.num_computed_tokens, c.block_table) == (1, [1, 2, 3, 4, 5, 6, 70], 6, [0, 1])
    assert sched.device_blocks.ref_count(0) == 2 and sched.device_blocks.ref_count(1) == 2
    sched.check_invariants()

    plan = sched.schedule()
    # The parent writes position 6 into shared block 1: it gets a copy in block 2; the child keeps 1.
    assert plan.block_copies == [(1, 2)]
    assert layout(plan) == [(0, 6, 1, True), (1, 6, 1, True)]
    assert plan.slot_mapping == [2 * 4 + 2, 1 * 4 + 2]
    assert plan.block_tables == [0, 2, 0, 1]
    assert (sched.device_blocks.ref_count(1), sched.device_blocks.ref_count(2)) == (1, 1)
    sched.update([_C.SampledToken(0, 71), _C.SampledToken(1, 81)])

    plan = sched.schedule()
    assert plan.block_copies == [] and plan.slot_mapping == [11, 7]
    sched.update([_C.SampledToken(0, 72), _C.SampledToken(1, 82)])
    plan = sched.schedule()  # position 8 starts a new block each: 3 and 4
    assert plan.slot_mapping == [12, 16] and plan.block_tables == [0, 2, 3, 0, 1, 4]
    finished = sample_all(sched, plan)
    assert finished == {0: (Reason.Length, -1), 1: (Reason.Length, -1)}
    assert sched.sequence(1).token_ids == [1, 2, 3, 4, 5, 6, 70, 81, 82, 9]
    # a freed [0, 2, 3] tail first (0 still shared), then the child [0, 1, 4].
    assert sched.device_blocks.free_list() == [5, 6, 7, 3, 2, 4, 1, 0]


def test_fork_at_a_block_boundary_needs_no_copy():
    sched = make_scheduler()
    sched.add_request("a", list(range(8)), params(max_tokens=2, ignore_eos=True))
    sample_all(sched, sched.schedule())
    sched.fork(0)
    plan = sched.schedule()
    assert plan.block_copies == [] and plan.block_tables == [0, 1, 2, 0, 1, 3]


def test_preemption_by_recompute_refills_prompt_and_output():
    sched = make_scheduler(block_size=2, num_blocks=4)
    sched.add_request("a", [1, 2, 3], params(max_tokens=3, ignore_eos=True))
    sched.add_request("b", [4, 5, 6], params(max_tokens=3, ignore_eos=True))
    plan = sched.schedule()
    assert plan.block_tables == [0, 1, 2, 3]
    sample_all(sched, plan, token=10)
    plan = sched.schedule()
    assert plan.slot_mapping == [3, 7]
    sample_all(sched, plan, token=11)

    plan = sched.schedule()  # a needs a block, none is free: b (the later arrival) is preempted
    assert plan.preempted_seq_ids == [1]
    assert layout(plan) == [(0, 4, 1, True)]
    assert plan.block_tables == [0, 1, 3] and plan.slot_mapping == [6]
    b = sched.sequence(1)
    assert (b.status, b.num_computed_tokens, b.block_table, b.num_preemptions) == (Status.Waiting, 0, [], 1)
    assert sched.num_preemptions == 1
    assert sample_all(sched, plan, token=12) == {0: (Reason.Length, -1)}

    plan = sched.schedule()  # b prefills its prompt and its two tokens again
    assert layout(plan) == [(1, 0, 5, True)]
    assert plan.input_ids == [4, 5, 6, 10, 11]
    assert plan.block_tables == [2, 3, 1] and plan.slot_mapping == [4, 5, 6, 7, 2]
    assert sample_all(sched, plan, token=12) == {1: (Reason.Length, -1)}
    assert sched.sequence(1).token_ids == [4, 5, 6, 10, 11, 12]


def test_preemption_by_swap_moves_blocks_to_the_host_and_back():
    sched = make_scheduler(block_size=2, num_blocks=4, host_blocks=4)
    sched.add_request("a", [1, 2, 3], params(max_tokens=3, ignore_eos=True))
    sched.add_request("b", [4, 5, 6], params(max_tokens=3, ignore_eos=True))
    sample_all(sched, sched.schedule(), token=10)
    sample_all(sched, sched.schedule(), token=11)

    plan = sched.schedule()
    assert plan.preempted_seq_ids == [1]
    assert plan.swap_out == [(2, 0), (3, 1)]
    assert layout(plan) == [(0, 4, 1, True)] and plan.block_tables == [0, 1, 3]
    b = sched.sequence(1)
    assert (b.status, b.swapped_blocks, b.num_computed_tokens) == (Status.Swapped, [0, 1], 4)
    assert sched.num_swapped == 1 and sched.host_blocks.num_free_blocks == 2
    sample_all(sched, plan, token=12)

    plan = sched.schedule()  # b comes back into device blocks 2 and 3 and decodes into a new block 1
    assert plan.swap_in == [(0, 2), (1, 3)]
    assert layout(plan) == [(1, 4, 1, True)]
    assert plan.num_decode_seqs == 1
    assert plan.block_tables == [2, 3, 1] and plan.slot_mapping == [2]
    assert sched.host_blocks.num_free_blocks == 4
    sample_all(sched, plan, token=12)
    assert sched.sequence(1).token_ids == [4, 5, 6, 10, 11, 12]
    assert not sched.has_unfinished()


def test_a_lone_sequence_preempts_itself_and_resumes():
    # Two sequences each need 3 blocks of a 4-block pool; the later one gives way every time.
    sched = make_scheduler(block_size=2, num_blocks=4)
    sched.add_request("a", [1, 2, 3], params(max_tokens=3, ignore_eos=True))
    sched.add_request("b", [4, 5, 6], params(max_tokens=3, ignore_eos=True), priority=-1)
    plan = sched.schedule()
    assert [s.seq_id for s in plan.seqs] == [1, 0]  # b has the higher priority
    steps = 1
    sample_all(sched, plan)
    while sched.has_unfinished():
        plan = sched.schedule()
        assert 1 not in plan.preempted_seq_ids
        sample_all(sched, plan)
        steps += 1
        assert steps < 20
    assert sched.num_preemptions >= 1


def test_finish_on_eos_stop_ids_min_tokens_and_max_model_len():
    sched = make_scheduler(max_model_len=8)
    sched.add_request("eos", [1, 2], params(), eos_token_ids=[5, 6])
    sched.add_request("ignore", [1, 2], params(max_tokens=2, ignore_eos=True), eos_token_ids=[5])
    sched.add_request("stop", [1, 2], params(stop_token_ids=[7]), eos_token_ids=[5])
    sched.add_request("min", [1, 2], params(min_tokens=2, stop_token_ids=[7]), eos_token_ids=[5])
    sched.add_request("len", [1, 2, 3, 4, 5, 6], params(ignore_eos=True))
    ids = {sched.request_of(i).request_id: i for i in range(5)}

    def step(tokens):
        plan = sched.schedule()
        finished = sched.update([_C.SampledToken(s.seq_id, tokens[s.seq_id], 0.0) for s in plan.seqs if s.sample])
        sched.check_invariants()
        return {f.seq_id: (f.reason, f.stop_token) for f in finished}

    got = step({ids["eos"]: 6, ids["ignore"]: 5, ids["stop"]: 7, ids["min"]: 5, ids["len"]: 1})
    assert got == {ids["eos"]: (Reason.Stop, -1), ids["stop"]: (Reason.Stop, 7)}
    got = step({ids["ignore"]: 5, ids["min"]: 7, ids["len"]: 1})  # min sees its 2nd token: the stop id counts
    assert got == {ids["ignore"]: (Reason.Length, -1), ids["min"]: (Reason.Stop, 7), ids["len"]: (Reason.Length, -1)}
    assert sched.sequence(ids["len"]).num_tokens == 8  # max_model_len
    assert sched.sequence(ids["min"]).stop_token == 7
    assert not sched.has_unfinished()


def test_abort_frees_blocks_in_every_state():
    sched = make_scheduler(block_size=2, num_blocks=4, host_blocks=4)
    sched.add_request("a", [1, 2, 3], params(ignore_eos=True))
    sched.add_request("b", [4, 5, 6], params(ignore_eos=True))
    sched.add_request("w", [7], params(ignore_eos=True))
    sample_all(sched, sched.schedule())
    sample_all(sched, sched.schedule())
    sched.schedule()  # b swapped out, w waiting, a running
    statuses = {r: sched.sequence(i).status for r, i in (("a", 0), ("b", 1), ("w", 2))}
    assert statuses == {"a": Status.Running, "b": Status.Swapped, "w": Status.Waiting}
    for request_id in ("b", "w", "a"):
        assert sched.abort_request(request_id)
        sched.check_invariants()
    assert sched.sequence(0).finish_reason == Reason.Abort
    assert not sched.abort_request("a") and not sched.abort_request("nope")
    assert not sched.has_unfinished()
    assert sched.device_blocks.num_free_blocks == 4 and sched.host_blocks.num_free_blocks == 4
    sched.update([_C.SampledToken(0, 1)])  # a token for an aborted sequence is ignored
    assert sched.schedule().empty()


def test_finish_sequence_ends_one_fork():
    sched = make_scheduler()
    sched.add_request("a", [1, 2, 3], params(ignore_eos=True))
    sample_all(sched, sched.schedule())
    child = sched.fork(0)
    sched.finish_sequence(child, Reason.Stop)
    assert sched.device_blocks.ref_count(0) == 1
    assert sched.request_of(0).seq_ids == [0, child]
    sched.check_invariants()


def test_bad_requests_are_rejected_with_the_field_named():
    sched = make_scheduler(block_size=4, num_blocks=4, max_model_len=32)
    with pytest.raises(ValueError, match="prompt_token_ids must not be empty"):
        sched.add_request("x", [], params())
    with pytest.raises(ValueError, match=r"32 tokens.*max_model_len \(32\)"):
        sched.add_request("x", [1] * 32, params())
    with pytest.raises(ValueError, match=r"16 tokens and needs 5 KV blocks.*has only 4"):
        sched.add_request("x", [1] * 16, params())
    with pytest.raises(ValueError, match=r"prompt_token_ids\[1\] = -2"):
        sched.add_request("x", [1, -2], params())
    with pytest.raises(ValueError, match="max_tokens"):
        sched.add_request("x", [1], params(max_tokens=0))
    sched.add_request("x", [1] * 15, params())
    with pytest.raises(ValueError, match="'x' is already in use"):
        sched.add_request("x", [1], params())
    with pytest.raises(ValueError, match="not running"):
        sched.fork(0)
    with pytest.raises(ValueError, match="not scheduled"):
        sched.update([_C.SampledToken(0, 1)])
    with pytest.raises(ValueError, match="max_num_seqs"):
        config = _C.EngineConfig()
        config.max_num_seqs = 0
        _C.Scheduler(config, 32, 4, 0)


def test_a_finished_request_id_can_be_reused():
    sched = make_scheduler()
    sched.add_request("x", [1], params(max_tokens=1))
    sample_all(sched, sched.schedule())
    sched.add_request("x", [2], params(max_tokens=1))
    assert sched.request_index("x") == 1
    request = sched.find_request("x")
    assert (request.request_id, request.arrival_order, request.seq_ids) == ("x", 1, [1])
    assert sched.find_request("nope") is None
    plan = sched.schedule()
    assert plan.input_ids == [2]


def test_prompt_logprobs_flag_follows_the_prompt_chunks():
    sched = make_scheduler(budget=4, num_blocks=8)
    sched.add_request("p", list(range(1, 7)), params(max_tokens=2, prompt_logprobs=0, ignore_eos=True))
    plan = sched.schedule()
    assert [(s.num_new_tokens, s.prompt_logprobs, s.sample) for s in plan.seqs] == [(4, True, False)]
    sample_all(sched, plan)
    plan = sched.schedule()
    assert [(s.num_new_tokens, s.prompt_logprobs, s.sample) for s in plan.seqs] == [(2, True, True)]
    sample_all(sched, plan)
    plan = sched.schedule()
    assert [(s.num_new_tokens, s.prompt_logprobs, s.sample) for s in plan.seqs] == [(1, False, True)]


def test_scheduling_many_sequences_stays_consistent():
    sched = make_scheduler(block_size=16, num_blocks=4096, budget=8192, max_seqs=256, max_model_len=4096)
    for i in range(300):
        sched.add_request(f"r{i}", [i % 1000 + 1] * (50 + i), params(max_tokens=20, ignore_eos=True))
    steps = 0
    while sched.has_unfinished():
        plan = sched.schedule()
        assert len(plan.seqs) <= 256 and plan.num_tokens <= 8192
        sample_all(sched, plan)
        steps += 1
    assert steps < 60 and sched.device_blocks.num_free_blocks == 4096


# ---- async scheduling's two halves: reserve() appends a placeholder, fill() replaces it

def test_reserve_plans_the_placeholder_and_fill_replaces_it():
    sched = make_scheduler(caching=True)
    seq_id = sched.add_request("a", [5, 6, 7], params(max_tokens=3))
    assert sched.schedule().input_ids == [5, 6, 7]
    sched.reserve([seq_id])
    seq = sched.sequence(seq_id)
    assert seq.token_ids == [5, 6, 7, PLACEHOLDER] and seq.awaiting_token and seq.block_hashes == []
    plan = sched.schedule()  # the decode of the token not yet on the host
    assert (plan.input_ids, plan.positions, plan.num_decode_seqs) == ([PLACEHOLDER], [3], 1)
    sched.check_invariants()
    filled = sched.fill([_C.SampledToken(seq_id, 8, -0.5)])
    assert filled[0].accepted and filled[0].finish_reason == Reason.None_
    seq = sched.sequence(seq_id)
    assert seq.token_ids == [5, 6, 7, 8] and not seq.awaiting_token and len(seq.block_hashes) == 1
    sched.reserve([seq_id])
    assert not sched.sequence(seq_id).ends_with_awaited_token  # 2 of 3 tokens
    sched.schedule()
    sched.fill([_C.SampledToken(seq_id, 9, -0.5)])
    sched.reserve([seq_id])
    assert sched.sequence(seq_id).ends_with_awaited_token  # the 3rd token is the last: not scheduled again
    assert sched.schedule().empty()
    filled = sched.fill([_C.SampledToken(seq_id, 10, -0.5)])
    assert filled[0].finish_reason == Reason.Length
    assert sched.sequence(seq_id).token_ids == [5, 6, 7, 8, 9, 10]
    assert sched.schedule().empty() and not sched.has_unfinished()
    sched.check_invariants()


def test_fill_drops_the_token_of_an_aborted_sequence_and_keeps_a_preempted_ones():
    sched = make_scheduler(num_blocks=2)
    first = sched.add_request("first", [1, 2, 3, 4], params())
    second = sched.add_request("second", [5, 6, 7], params())
    sched.schedule()
    sched.reserve([first, second])
    with pytest.raises(ValueError, match="not scheduled"):
        sched.reserve([first])  # one placeholder at a time
    # Both need a second block now: the later one is preempted (recompute) with its token in flight.
    plan = sched.schedule()
    assert plan.preempted_seq_ids == [second] and plan.input_ids == [PLACEHOLDER]
    assert sched.sequence(second).status == Status.Waiting
    sched.abort_request("first")
    assert sched.sequence(first).token_ids == [1, 2, 3, 4]  # the placeholder went with it
    filled = sched.fill([_C.SampledToken(first, 11), _C.SampledToken(second, 12)])
    assert [f.accepted for f in filled] == [False, True]
    assert sched.sequence(second).token_ids == [5, 6, 7, 12]
    sched.check_invariants()
    plan = sched.schedule()  # readmitted: prompt and its output recomputed
    assert plan.input_ids == [5, 6, 7, 12]
