"""Plain torch references of vLLM's sampling semantics and helpers to build sampler inputs, shared by
tests/test_sampler.py (the CPU sampler) and tests/gpu/test_gpu_sampler.py (the sampler on CUDA)."""

import torch

from fastpage import _C

NEG_INF = float("-inf")


def params(**fields):
    p = _C.CSamplingParams()
    for name, value in fields.items():
        setattr(p, name, value)
    return p


def row(p, logits_row=0, token_ids=(), num_prompt_tokens=0, eos_token_ids=(), seed=0, position=0):
    return _C.SamplingRow(
        logits_row=logits_row,
        params=p,
        token_ids=list(token_ids),
        num_prompt_tokens=num_prompt_tokens,
        eos_token_ids=list(eos_token_ids),
        seed=seed,
        position=position,
    )


def reference_processed(logits, p, token_ids=(), num_prompt_tokens=0, eos_token_ids=()):
    x = logits.clone().float()
    vocab = x.numel()
    if p.allowed_token_ids:
        banned = torch.ones(vocab, dtype=torch.bool)
        banned[list(p.allowed_token_ids)] = False
        x[banned] = NEG_INF
    for token, bias in p.logit_bias.items():
        x[token] += bias
    output = list(token_ids[num_prompt_tokens:])
    for word in p.bad_words:
        prefix = list(word[:-1])
        if len(prefix) <= len(output) and (not prefix or output[-len(prefix):] == prefix):
            x[word[-1]] = NEG_INF
    if len(output) < p.min_tokens:
        x[list(p.stop_token_ids)] = NEG_INF
        if not p.ignore_eos:
            x[list(eos_token_ids)] = NEG_INF
    if p.repetition_penalty != 1.0 and token_ids:
        seen = torch.zeros(vocab, dtype=torch.bool)
        seen[list(token_ids)] = True
        penalized = torch.where(x > 0, x / p.repetition_penalty, x * p.repetition_penalty)
        x = torch.where(seen, penalized, x)
    if p.frequency_penalty != 0.0 or p.presence_penalty != 0.0:
        counts = torch.bincount(torch.tensor(output, dtype=torch.long), minlength=vocab).float()
        x = x - p.frequency_penalty * counts
        x = x - p.presence_penalty * (counts > 0).float()
    return x


def reference_probs(logits, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """vLLM v1: temperature, min_p, then top_k and top_p (top_p over what is left, renormalized)."""
    x = logits.double() / temperature
    if min_p > 0:
        probs = x.softmax(-1)
        x = x.masked_fill(probs < min_p * probs.max(), NEG_INF)
    if top_k > 0:
        x = x.masked_fill(x < x.topk(top_k).values[-1], NEG_INF)
    if top_p < 1.0:
        ascending, index = x.sort()
        cumulative = ascending.softmax(-1).cumsum(-1)
        removed = cumulative <= 1 - top_p
        removed[-1] = False
        x = torch.empty_like(x).scatter_(0, index, ascending.masked_fill(removed, NEG_INF))
    return x.softmax(-1)


def assert_distribution(tokens, probs):
    """Each token's count within 6 sigma (+3 for tiny expectations) of num_draws * prob."""
    num_draws = len(tokens)
    probs = probs.double().cpu()
    counts = torch.bincount(torch.tensor(tokens), minlength=probs.numel()).double()
    assert counts.numel() == probs.numel(), "token outside the vocabulary"
    never = probs == 0
    assert counts[never].sum() == 0, f"drew excluded tokens {never.nonzero().flatten()[counts[never] > 0].tolist()}"
    expected = probs * num_draws
    sigma = (num_draws * probs * (1 - probs)).sqrt()
    off = (counts - expected).abs() > 6 * sigma + 3
    assert not off.any(), (
        f"tokens {off.nonzero().flatten().tolist()}: counts {counts[off].tolist()} expected {expected[off].tolist()}"
    )
