"""Random add/abort/fork/step sequences against a simulated paged KV cache and a reference decoder.

The "model" is a deterministic function of a sequence's tokens (and its index, so forks diverge).
Every step the plan's swaps, copies and writes are applied to a simulated KV store whose slots hold
a key of the whole prefix up to that position; then every scheduled sequence reads its whole
context back through its block table. A lost swap, a missing copy-on-write, a wrong prefix-cache hit
or a block reused while still referenced shows up as a wrong key. Requests that were neither forked
nor aborted must produce exactly the tokens a lone, never-preempted run would.
"""

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from fastpage import _C

Status, Reason = _C.SequenceStatus, _C.FinishReason
VOCAB, EOS, STOP = 16, 3, 5
BASES = [[(7 * b + 3 * i) % VOCAB for i in range(40)] for b in range(3)]  # shared prefixes


def model(tokens, index):
    acc = index * 97 + len(tokens)
    for i, t in enumerate(tokens):
        acc = (acc * 31 + (i + 1) * (t + 1)) % 1_000_003
    return acc % VOCAB


def prefix_keys(tokens):
    keys, key = [], 0
    for t in tokens:
        key = (key * 1_000_033 + t + 1) % (1 << 61)
        keys.append(key)
    return keys


@dataclass
class Req:
    request_id: str
    prompt: list
    params: object
    eos: list
    seq_ids: list = field(default_factory=list)
    forked: bool = False
    aborted: bool = False
    finished: dict = field(default_factory=dict)  # seq_id -> (reason, stop_token, token_ids)


def reference(req, max_seq_len):
    p, tokens = req.params, list(req.prompt)
    while True:
        t = model(tokens, 0)
        tokens.append(t)
        out = len(tokens) - len(req.prompt)
        if out >= p.min_tokens:
            if not p.ignore_eos and t in req.eos:
                return Reason.Stop, -1, tokens
            if t in p.stop_token_ids:
                return Reason.Stop, t, tokens
        if out >= p.max_tokens or len(tokens) >= max_seq_len:
            return Reason.Length, -1, tokens


class Harness:
    def __init__(self, block_size, num_blocks, host_blocks, max_seqs, budget, max_model_len, chunked, caching):
        config = _C.EngineConfig()
        config.block_size = block_size
        config.max_num_seqs = max_seqs
        config.max_num_batched_tokens = budget
        config.enable_chunked_prefill = chunked
        config.enable_prefix_caching = caching
        self.sched = _C.Scheduler(config, max_model_len, num_blocks, host_blocks)
        self.bs, self.num_blocks, self.host_blocks = block_size, num_blocks, host_blocks
        self.max_seqs, self.budget, self.max_model_len = max_seqs, budget, max_model_len
        self.device = [None] * (num_blocks * block_size)
        self.host = [None] * (host_blocks * block_size)
        self.requests = []
        self.seq_request = {}
        self.forks_after_prompt = {}

    def max_prompt(self):
        return min(self.max_model_len - 1, self.num_blocks * self.bs - 1)

    def add(self, base, length, max_tokens, min_tokens, ignore_eos, stop, priority, n=1):
        prompt = BASES[base][: min(length, self.max_prompt())]
        p = _C.CSamplingParams()
        p.max_tokens, p.min_tokens, p.ignore_eos = max_tokens, min(min_tokens, max_tokens), ignore_eos
        if stop:
            p.stop_token_ids = [STOP]
        req = Req(f"r{len(self.requests)}", prompt, p, [EOS])
        req.seq_ids.append(self.sched.add_request(req.request_id, prompt, p, req.eos, priority))
        self.requests.append(req)
        self.seq_request[req.seq_ids[0]] = req
        if n > 1:  # like the engine for n > 1: fork once the prompt is done
            self.forks_after_prompt[req.seq_ids[0]] = n - 1

    def live(self):
        return [r for r in self.requests if len(r.finished) < len(r.seq_ids)]

    def abort(self, k):
        live = self.live()
        if live:
            req = live[k % len(live)]
            assert self.sched.abort_request(req.request_id)
            req.aborted = True
            for seq_id in req.seq_ids:
                seq = self.sched.sequence(seq_id)
                assert seq.status == Status.Finished and seq.block_table == [] and seq.swapped_blocks == []
                req.finished.setdefault(seq_id, (Reason.Abort, -1, seq.token_ids))

    def fork(self, k):
        running = [s for req in self.live() for s in req.seq_ids
                   if s not in req.finished and self.sched.sequence(s).status == Status.Running]
        if running:
            self.fork_seq(running[k % len(running)])

    def fork_seq(self, seq_id):
        req = self.seq_request[seq_id]
        child = self.sched.fork(seq_id)
        req.seq_ids.append(child)
        req.forked = True
        self.seq_request[child] = req
        return child

    def copy_blocks(self, src_store, dst_store, pairs):
        for src, dst in pairs:
            dst_store[dst * self.bs : (dst + 1) * self.bs] = src_store[src * self.bs : (src + 1) * self.bs]

    def step(self):
        plan = self.sched.schedule()
        assert len(plan.seqs) <= self.max_seqs and plan.num_tokens <= self.budget
        self.copy_blocks(self.device, self.host, plan.swap_out)
        self.copy_blocks(self.host, self.device, plan.swap_in)
        self.copy_blocks(self.device, self.device, plan.block_copies)

        width, bs = plan.max_blocks_per_seq, self.bs
        rows, written, sampled = [], [], []
        assert plan.query_start_loc[0] == 0 and len(plan.query_start_loc) == len(plan.seqs) + 1
        for i, s in enumerate(plan.seqs):
            seq = self.sched.sequence(s.seq_id)
            tokens, keys = seq.token_ids, prefix_keys(seq.token_ids)
            start, n, end = s.start_position, s.num_new_tokens, s.start_position + s.num_new_tokens
            lo, hi = plan.query_start_loc[i], plan.query_start_loc[i + 1]
            assert hi - lo == n >= 1 and end == seq.num_computed_tokens == plan.context_lens[i]
            assert plan.input_ids[lo:hi] == tokens[start:end]
            assert plan.positions[lo:hi] == list(range(start, end))
            assert s.sample == (end == len(tokens))
            assert (i < plan.num_decode_seqs) == (n == 1 and start >= seq.num_prompt_tokens)
            row = plan.block_tables[i * width : (i + 1) * width]
            num_used = -(-end // bs)
            assert row[:num_used] == seq.block_table and all(b == 0 for b in row[num_used:])
            for j, pos in enumerate(range(start, end)):
                slot = plan.slot_mapping[lo + j]
                assert slot == row[pos // bs] * bs + pos % bs
                self.device[slot] = keys[pos]
                written.append(slot)
            rows.append((row, keys, end))
            if s.sample:
                sampled.append(_C.SampledToken(s.seq_id, model(tokens, seq.index), -0.25))
        assert len(set(written)) == len(written), "two tokens written to one slot"
        for row, keys, end in rows:  # attention reads the whole context through the block table
            assert [self.device[row[p // bs] * bs + p % bs] for p in range(end)] == keys[:end]

        for s in list(sampled):  # n > 1: forks share the prompt's blocks, each samples its own token
            for _ in range(self.forks_after_prompt.pop(s.seq_id, 0)):
                child = self.sched.sequence(self.fork_seq(s.seq_id))
                sampled.append(_C.SampledToken(child.seq_id, model(child.token_ids, child.index), -0.25))
        for f in self.sched.update(sampled):
            seq = self.sched.sequence(f.seq_id)
            assert seq.status == Status.Finished and seq.finish_reason == f.reason and seq.block_table == []
            self.seq_request[f.seq_id].finished[f.seq_id] = (f.reason, f.stop_token, seq.token_ids)
        self.sched.check_invariants()
        blocks = self.sched.device_blocks
        assert all(blocks.ref_count(b) >= 0 for b in range(self.num_blocks))

    def drain(self, max_steps=3000):
        for _ in range(max_steps):
            if not self.sched.has_unfinished():
                break
            self.step()
        assert not self.sched.has_unfinished(), "requests did not finish"
        assert self.sched.device_blocks.num_free_blocks == self.num_blocks
        assert self.sched.host_blocks.num_free_blocks == self.host_blocks
        self.sched.check_invariants()
        max_seq_len = min(self.max_model_len, self.num_blocks * self.bs + 1)
        for req in self.requests:
            assert set(req.finished) == set(req.seq_ids), f"{req.request_id} did not end"
            if req.aborted or req.forked:
                continue
            (reason, stop_token, tokens), = req.finished.values()
            assert (reason, stop_token, tokens) == reference(req, max_seq_len)


configs = st.fixed_dictionaries({
    "block_size": st.sampled_from([1, 2, 4]),
    "num_blocks": st.integers(2, 12),
    "host_blocks": st.sampled_from([0, 0, 3, 8]),
    "max_seqs": st.integers(1, 4),
    "max_model_len": st.integers(4, 24),
    "chunked": st.booleans(),
    "caching": st.booleans(),
    "budget": st.integers(1, 24),
})
# (base, prompt length, max_tokens, min_tokens, ignore_eos, stop id, priority, n)
add_op = st.tuples(st.just("add"), st.integers(0, 2), st.integers(1, 12), st.integers(1, 16), st.integers(0, 4),
                   st.booleans(), st.booleans(), st.integers(-1, 1), st.sampled_from([1, 1, 2, 3]))
ops = st.lists(st.one_of(add_op, st.tuples(st.sampled_from(["abort", "fork"]), st.integers(0, 100)),
                         st.tuples(st.just("step"), st.integers(1, 4))), min_size=2, max_size=30)


def make_harness(config):
    if not config["chunked"]:
        config = {**config, "budget": max(config["budget"], config["max_model_len"])}
    return Harness(**config)


@settings(max_examples=120, deadline=None)
@given(config=configs, ops=ops)
def test_random_operations_keep_every_invariant(config, ops):
    h = make_harness(config)
    for op, *args in ops:
        if op == "add":
            h.add(*args)
        elif op == "abort":
            h.abort(*args)
        elif op == "fork":
            h.fork(*args)
        else:
            for _ in range(args[0]):
                h.step()
    h.drain()


@settings(max_examples=40, deadline=None)
@given(swap=st.booleans(), block_size=st.sampled_from([1, 2]), chunked=st.booleans(),
       lengths=st.lists(st.integers(1, 9), min_size=3, max_size=6))
def test_a_tiny_pool_with_preemption_completes_every_request(swap, block_size, chunked, lengths):
    h = Harness(block_size, num_blocks=10 // block_size, host_blocks=8 if swap else 0, max_seqs=4, budget=16,
                max_model_len=16, chunked=chunked, caching=True)
    for i, length in enumerate(lengths):
        h.add(i % 3, length, max_tokens=8, min_tokens=0, ignore_eos=True, stop=False, priority=0)
    h.drain()


def test_a_tiny_pool_preempts_and_still_matches_the_reference():
    for host_blocks in (0, 8):
        h = Harness(2, num_blocks=5, host_blocks=host_blocks, max_seqs=4, budget=16, max_model_len=16,
                    chunked=True, caching=True)
        for i in range(5):
            h.add(i % 3, 4 + i, max_tokens=5, min_tokens=0, ignore_eos=True, stop=False, priority=0)
        h.drain()
        assert h.sched.num_preemptions > 0
