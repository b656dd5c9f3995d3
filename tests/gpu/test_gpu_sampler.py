"""The sampler on a CUDA GPU against the CPU sampler and plain torch references: the
fastpage::sample_tokens kernel token for token against its CPU implementation, Sampler.sample on CUDA
logits (processors, draws, logprobs) against Sampler.sample on the same logits on the CPU, draw
frequencies against softmax references, and seeded draws that depend only on (seed, position).
Skipped without CUDA."""

import os
import random
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from sampler_reference import NEG_INF, assert_distribution, params, reference_probs, row  # noqa: E402

from fastpage import _C  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def sample_tokens_op(logits, temperature, top_k, top_p, min_p, seeds, positions):
    device = logits.device
    f = lambda v: torch.tensor(v, dtype=torch.float32, device=device)  # noqa: E731
    i = lambda v: torch.tensor(v, dtype=torch.int64, device=device)  # noqa: E731
    return torch.ops.fastpage.sample_tokens(logits, f(temperature), i(top_k), f(top_p), f(min_p), i(seeds),
                                            i(positions)).tolist()


@pytest.mark.parametrize("vocab", [1, 7, 1000, 151936])
def test_sample_tokens_kernel_equals_the_cpu_op(vocab):
    """Same logits, same per-row parameters: the CUDA kernel and the CPU op (the host sampler's own
    draw) pick the same tokens; ties, banned tokens and an all-banned row included."""
    torch.manual_seed(vocab)
    rows = 48
    logits = (torch.randn(rows, vocab) * 3).float()
    logits[1] = NEG_INF  # every token banned
    logits[2, : vocab // 2] = NEG_INF
    logits[3] = torch.round(logits[3])  # many ties
    rng = random.Random(vocab)
    temperature = [0.0 if r % 5 == 0 else rng.choice([0.3, 0.7, 1.0, 1.8]) for r in range(rows)]
    top_k = [rng.choice([0, -1, 1, 5, 50, vocab, vocab - 1]) for _ in range(rows)]
    top_p = [rng.choice([1.0, 0.95, 0.5, 0.1]) for _ in range(rows)]
    min_p = [rng.choice([0.0, 0.0, 0.05, 0.5]) for _ in range(rows)]
    seeds = [rng.randrange(-2**63, 2**63) for _ in range(rows)]
    positions = [rng.randrange(0, 10000) for _ in range(rows)]
    on_cpu = sample_tokens_op(logits, temperature, top_k, top_p, min_p, seeds, positions)
    on_gpu = sample_tokens_op(logits.cuda(), temperature, top_k, top_p, min_p, seeds, positions)
    greedy = [r for r in range(rows) if temperature[r] == 0.0]
    assert [on_gpu[r] for r in greedy] == [on_cpu[r] for r in greedy]
    assert on_gpu[1] == on_cpu[1] == 0
    # Draws agree except where float rounding of the kept-set boundary (logf, summation order)
    # differs: at most one row in the batch.
    assert sum(a != b for a, b in zip(on_gpu, on_cpu)) <= 1, (on_gpu, on_cpu)


@pytest.mark.parametrize("vocab", [33, 151936])
def test_sample_tokens_kernel_applies_the_bitmask_as_the_cpu_op(vocab):
    """A structured-output bitmask (some rows masked, some not) gives the tokens the CPU op gives, and
    only allowed ones."""
    torch.manual_seed(vocab)
    rows, words = 16, (vocab + 31) // 32
    logits = torch.randn(rows, vocab)
    bitmask = torch.randint(-2**31, 2**31 - 1, (8, words), dtype=torch.int32)
    bitmask[0] = 0  # nothing allowed: the lowest id, as an all-banned row
    index = torch.tensor([r // 2 if r % 2 == 0 else -1 for r in range(rows)])
    temperature = torch.tensor([0.0 if r % 4 == 0 else 0.8 for r in range(rows)])
    args = (temperature, torch.zeros(rows, dtype=torch.long), torch.full((rows,), 0.9), torch.zeros(rows),
            torch.arange(rows) * 7, torch.arange(rows) + 3)
    on_cpu = torch.ops.fastpage.sample_tokens(logits, *args, bitmask, index)
    on_gpu = torch.ops.fastpage.sample_tokens(logits.cuda(), *[a.cuda() for a in args], bitmask.cuda(), index.cuda())
    assert sum(a != b for a, b in zip(on_gpu.tolist(), on_cpu.tolist())) <= 1, (on_gpu, on_cpu)
    for r, m in enumerate(index.tolist()):
        token = on_gpu[r].item()
        if m > 0:
            assert (bitmask[m, token // 32].item() >> (token % 32)) & 1, (r, token)


def test_sample_tokens_kernel_checks_its_inputs():
    logits = torch.randn(2, 10, device="cuda")
    ok = dict(temperature=[1.0, 1.0], top_k=[0, 0], top_p=[1.0, 1.0], min_p=[0.0, 0.0], seeds=[0, 1], positions=[0, 0])
    with pytest.raises(RuntimeError, match="logits"):
        sample_tokens_op(logits.half(), **ok)
    with pytest.raises(RuntimeError, match="top_k"):
        sample_tokens_op(logits, **{**ok, "top_k": [0]})
    with pytest.raises(RuntimeError, match="temperature"):
        torch.ops.fastpage.sample_tokens(logits, torch.ones(2), *[torch.zeros(2, dtype=t, device="cuda") for t in
                                         (torch.int64, torch.float32, torch.float32, torch.int64, torch.int64)])


def mixed_rows(num_rows, vocab, rng):
    """Rows with every processor and filter, several per logits row (n > 1 shares a row)."""
    out = []
    for r in range(num_rows):
        prompt = [rng.randrange(vocab) for _ in range(rng.randrange(1, 30))]
        output = [rng.randrange(vocab) for _ in range(rng.randrange(0, 12))]
        kind = r % 8
        fields = dict(temperature=rng.choice([0.0, 0.6, 1.0, 1.3]))
        if kind == 1:
            fields.update(top_k=rng.choice([1, 3, 40]), top_p=rng.choice([1.0, 0.8]))
        elif kind == 2:
            fields.update(top_p=0.9, min_p=0.02, repetition_penalty=1.3)
        elif kind == 3:
            fields.update(frequency_penalty=0.7, presence_penalty=-0.4)
        elif kind == 4:
            fields.update(logit_bias={rng.randrange(vocab): 6.0, rng.randrange(vocab): -3.0})
        elif kind == 5:
            fields.update(allowed_token_ids=rng.sample(range(vocab), 12))
        elif kind == 6:
            fields.update(bad_words=[[output[-1], rng.randrange(vocab)]] if output else [[rng.randrange(vocab)]],
                          min_tokens=len(output) + 2, stop_token_ids=[rng.randrange(vocab)])
        elif kind == 7:
            fields.update(logprobs=rng.choice([0, 1, 5]), top_k=20)
        out.append(row(params(**fields), logits_row=r // 2, token_ids=prompt + output, num_prompt_tokens=len(prompt),
                       eos_token_ids=[0], seed=rng.randrange(2**64), position=len(prompt) + len(output)))
    return out


@pytest.mark.parametrize("vocab", [300, 151936])
def test_sampler_on_cuda_equals_the_cpu_sampler(vocab):
    rng = random.Random(vocab)
    torch.manual_seed(vocab)
    rows = mixed_rows(64, vocab, rng)
    logits = torch.randn(32, vocab) * 2
    sampler = _C.Sampler()
    on_cpu = sampler.sample(logits, rows)
    on_gpu = sampler.sample(logits.cuda(), rows)
    mismatches = [i for i in range(len(rows)) if on_cpu.tokens[i] != on_gpu.tokens[i]]
    assert len(mismatches) <= 1, mismatches
    for i, r in enumerate(rows):
        if r.params.logprobs is None or i in mismatches:
            continue
        a, b = on_cpu.logprobs[i], on_gpu.logprobs[i]
        assert (b.token, b.rank, b.top_ids) == (a.token, a.rank, a.top_ids)
        assert b.logprob == pytest.approx(a.logprob, abs=1e-4)
        assert b.top_logprobs == pytest.approx(a.top_logprobs, abs=1e-4)


@pytest.mark.parametrize("fields", [dict(temperature=0.8), dict(temperature=1.0, top_k=7),
                                    dict(temperature=1.2, top_p=0.7), dict(temperature=1.0, min_p=0.1, top_p=0.9)])
def test_draws_on_cuda_follow_the_reference_distribution(fields):
    torch.manual_seed(5)
    logits = torch.randn(64) * 1.5
    num_draws = 4000
    rows = [row(params(**fields), seed=seed, position=9) for seed in range(num_draws)]
    tokens = _C.Sampler().sample(logits.unsqueeze(0).cuda(), rows).tokens
    assert_distribution(tokens, reference_probs(logits, **fields))


def test_seeded_draws_on_cuda_depend_only_on_seed_and_position():
    torch.manual_seed(6)
    vocab = 5000
    logits = torch.randn(8, vocab, device="cuda")
    p = params(temperature=1.0, top_p=0.95)
    target = row(p, logits_row=3, seed=1234, position=77)
    alone = _C.Sampler().sample(logits[3:4].contiguous(), [row(p, logits_row=0, seed=1234, position=77)]).tokens
    others = [row(params(temperature=0.7, top_k=5), logits_row=r, seed=r, position=r) for r in range(8)]
    in_batch = _C.Sampler().sample(logits, others[:5] + [target] + others[5:]).tokens
    assert in_batch[5] == alone[0]
    assert _C.Sampler().sample(logits, [target]).tokens == alone  # reproducible
    # A different position or seed is a different draw (the 16 draws are not all one token).
    spread = _C.Sampler().sample(logits, [row(p, logits_row=3, seed=1234, position=q) for q in range(16)]).tokens
    assert len(set(spread)) > 1
