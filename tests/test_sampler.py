"""The C++ Sampler against plain torch references of vLLM's sampling semantics.

Processors are checked exactly through greedy outcomes; draws statistically (each token's count within
6 sigma of its expected count, so a correct sampler fails with probability ~1e-8 per token) with fixed
seeds, so every run sees the same draws.
"""

import random

import pytest
import torch

from sampler_reference import assert_distribution, params, reference_probs, reference_processed, row

from fastpage import _C


def sample(logits, rows):
    return _C.Sampler().sample(logits, rows).tokens


def draws(logits_row, p, num_draws, **row_fields):
    """num_draws seeded draws from one logits row (rows repeat logits row 0, seeds 0..num_draws-1)."""
    rows = [row(p, seed=seed, position=3, **row_fields) for seed in range(num_draws)]
    return sample(logits_row.unsqueeze(0), rows)


# ---- greedy and the processors -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_greedy_is_argmax_of_each_row(dtype):
    torch.manual_seed(0)
    logits = torch.randn(9, 1000).to(dtype)
    order = [4, 0, 8, 8, 2]  # rows may repeat and come in any order
    greedy = params(temperature=0.0)
    tokens = sample(logits, [row(greedy, logits_row=r, seed=r) for r in order])
    assert tokens == logits.float().argmax(-1)[order].tolist()
    # vLLM treats temperatures below 1e-5 as greedy
    assert sample(logits, [row(params(temperature=1e-6), logits_row=3)]) == [logits.float()[3].argmax().item()]


def test_logit_bias_makes_the_biased_token_win():
    logits = torch.tensor([[1.0, 5.0, 2.0, 0.0]])
    assert sample(logits, [row(params(temperature=0.0, logit_bias={2: 3.5}))]) == [2]
    assert sample(logits, [row(params(temperature=0.0, logit_bias={2: 2.5}))]) == [1]


def test_allowed_token_ids_restrict_greedy_and_draws():
    torch.manual_seed(1)
    logits = torch.randn(50)
    allowed = [3, 17, 41]
    assert sample(logits.unsqueeze(0), [row(params(temperature=0.0, allowed_token_ids=allowed))]) == [
        allowed[logits[allowed].argmax().item()]
    ]
    tokens = draws(logits, params(temperature=1.0, allowed_token_ids=allowed), 4000)
    probs = reference_probs(reference_processed(logits, params(allowed_token_ids=allowed)), 1.0)
    assert_distribution(tokens, probs)


def test_bad_words_ban_single_tokens_always_and_last_tokens_after_their_prefix():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    prompt = [5, 4, 3]  # a bad word's prefix is matched against the output only, never the prompt
    p = params(temperature=0.0, bad_words=[[5], [3, 4]])
    assert sample(logits, [row(p, token_ids=prompt, num_prompt_tokens=3)]) == [4]
    assert sample(logits, [row(p, token_ids=prompt + [1, 3], num_prompt_tokens=3)]) == [3]
    assert sample(logits, [row(p, token_ids=prompt + [3], num_prompt_tokens=3)]) == [3]
    p3 = params(temperature=0.0, bad_words=[[5], [2, 3, 4], [0]])
    assert sample(logits, [row(p3, token_ids=prompt + [2, 3], num_prompt_tokens=3)]) == [3]


def test_min_tokens_bans_eos_and_stop_ids_until_reached():
    logits = torch.tensor([[0.0, 9.0, 8.0, 7.0, 1.0]])
    eos, stop = [1], [2]
    p = params(temperature=0.0, min_tokens=2, stop_token_ids=stop)
    prompt = [4, 4]
    assert sample(logits, [row(p, token_ids=prompt + [0], num_prompt_tokens=2, eos_token_ids=eos)]) == [3]
    assert sample(logits, [row(p, token_ids=prompt + [0, 0], num_prompt_tokens=2, eos_token_ids=eos)]) == [1]
    # ignore_eos lifts the eos ban but not the stop ids' ban
    p_ignore = params(temperature=0.0, min_tokens=2, stop_token_ids=stop, ignore_eos=True)
    assert sample(logits, [row(p_ignore, token_ids=prompt, num_prompt_tokens=2, eos_token_ids=eos)]) == [1]
    p_ignore.stop_token_ids = [1, 2]
    assert sample(logits, [row(p_ignore, token_ids=prompt, num_prompt_tokens=2, eos_token_ids=eos)]) == [3]


def test_penalties_follow_vllm_signs():
    # repetition: positive logits divided, negative multiplied, over prompt and output tokens
    logits = torch.tensor([[3.0, 2.0, -1.0, -1.5]])
    rep = params(temperature=0.0, repetition_penalty=2.0)
    assert sample(logits, [row(rep, token_ids=[0], num_prompt_tokens=1)]) == [1]  # 1.5 < 2.0
    neg = torch.tensor([[-1.0, -1.5, -2.5, -1.6]])
    assert sample(neg, [row(rep, token_ids=[1, 0], num_prompt_tokens=1)]) == [3]  # -2, -3 below -1.6
    # frequency counts output occurrences only; presence applies once
    logits = torch.tensor([[5.0, 4.0, 0.0]])
    freq = params(temperature=0.0, frequency_penalty=0.6)
    assert sample(logits, [row(freq, token_ids=[0, 0, 0], num_prompt_tokens=2)]) == [0]  # 5 - 0.6
    assert sample(logits, [row(freq, token_ids=[0, 0, 0], num_prompt_tokens=1)]) == [1]  # 5 - 1.2
    pres = params(temperature=0.0, presence_penalty=0.9)
    assert sample(logits, [row(pres, token_ids=[0, 0, 0, 0], num_prompt_tokens=1)]) == [0]  # 5 - 0.9
    pres.presence_penalty = 1.1
    assert sample(logits, [row(pres, token_ids=[0, 0, 0, 0], num_prompt_tokens=1)]) == [1]


def random_processor_case(rng, vocab):
    num_prompt = rng.randint(0, 12)
    token_ids = [rng.randrange(vocab) for _ in range(num_prompt + rng.randint(0, 12))]
    fields = dict(
        temperature=0.0,
        repetition_penalty=rng.choice([1.0, 0.7, 1.3, 2.0]),
        frequency_penalty=rng.choice([0.0, 0.4, -0.3, 1.5]),
        presence_penalty=rng.choice([0.0, 0.5, -0.5, 1.0]),
        min_tokens=rng.choice([0, 0, 5, 20]),
        stop_token_ids=rng.sample(range(vocab), rng.randint(0, 2)),
        ignore_eos=rng.random() < 0.3,
        logit_bias={t: rng.uniform(-3, 3) for t in rng.sample(range(vocab), rng.randint(0, 3))},
        allowed_token_ids=rng.sample(range(vocab), rng.randint(3, vocab)) if rng.random() < 0.3 else [],
    )
    bad_words = [[rng.randrange(vocab)] for _ in range(rng.randint(0, 2))]
    output = token_ids[num_prompt:]
    if output and rng.random() < 0.5:  # a multi-token bad word whose prefix ends the output
        k = rng.randint(1, len(output))
        bad_words.append(output[-k:] + [rng.randrange(vocab)])
    fields["bad_words"] = bad_words
    eos = rng.sample(range(vocab), 1)
    return params(**fields), token_ids, num_prompt, eos


def test_processors_match_the_torch_reference_over_random_cases():
    rng = random.Random(7)
    torch.manual_seed(7)
    vocab, num_cases = 24, 400
    logits = torch.randn(num_cases, vocab) * 2
    cases = [random_processor_case(rng, vocab) for _ in range(num_cases)]
    rows = [row(p, logits_row=i, token_ids=t, num_prompt_tokens=n, eos_token_ids=e) for i, (p, t, n, e) in enumerate(cases)]
    tokens = sample(logits, rows)
    expected = [reference_processed(logits[i], p, t, n, e).argmax().item() for i, (p, t, n, e) in enumerate(cases)]
    assert tokens == expected
    changed = sum(expected[i] != logits[i].argmax().item() for i in range(num_cases))
    assert changed > num_cases // 4  # the cases do exercise the processors


def test_processed_logits_feed_the_draw():
    torch.manual_seed(3)
    logits = torch.randn(10)
    fields = dict(temperature=0.8, repetition_penalty=1.5, frequency_penalty=0.3, presence_penalty=0.2, logit_bias={7: 1.0})
    token_ids, num_prompt = [1, 2, 2, 5, 5, 5], 2
    tokens = draws(logits, params(**fields), 20000, token_ids=token_ids, num_prompt_tokens=num_prompt)
    processed = reference_processed(logits, params(**fields), token_ids, num_prompt)
    assert_distribution(tokens, reference_probs(processed, 0.8))


# ---- draws -------------------------------------------------------------------------------------


def test_temperature_draws_follow_softmax():
    torch.manual_seed(0)
    logits = torch.randn(8) * 1.5
    for temperature in (0.5, 1.0, 2.0):
        tokens = draws(logits, params(temperature=temperature), 20000)
        assert_distribution(tokens, reference_probs(logits, temperature))


@pytest.mark.parametrize(
    "fields",
    [
        dict(top_k=3),
        dict(top_p=0.6),
        dict(min_p=0.2),
        dict(top_k=5, top_p=0.7),
        dict(min_p=0.15, top_p=0.5),
        dict(top_k=4, top_p=0.8, min_p=0.05, temperature=0.7),
    ],
)
def test_filters_keep_exactly_the_reference_set_in_proportion(fields):
    torch.manual_seed(5)
    logits = torch.randn(12) * 0.5
    fields = dict(fields)
    temperature = fields.pop("temperature", 1.0)
    probs = reference_probs(logits, temperature, **fields)
    assert 1 < (probs > 0).sum() < 12  # the filter does cut
    tokens = draws(logits, params(temperature=temperature, **fields), 20000)
    assert_distribution(tokens, probs)


def test_top_p_renormalizes_over_what_min_p_kept():
    # vLLM v1 applies min_p first: min_p drops the five 0.05 tokens, the rest renormalize to
    # 0.4 / 0.33 / 0.27 and top_p=0.7 keeps two. top_p first would have kept three.
    logits = torch.tensor([0.3, 0.25, 0.2] + [0.05] * 5).log()
    probs = reference_probs(logits, 1.0, min_p=0.2, top_p=0.7)
    assert (probs > 0).tolist() == [True, True] + [False] * 6
    assert_distribution(draws(logits, params(min_p=0.2, top_p=0.7), 6000), probs)


def test_top_p_boundary_inside_a_crowded_logit_range():
    # 100 near-equal leading tokens land in one histogram bucket, so the boundary is found by the
    # selection among many candidates; each kept token has probability ~1/50, so an error shows.
    vocab = 5000
    logits = torch.full((vocab,), -10.0)
    lead = torch.randperm(vocab, generator=torch.Generator().manual_seed(0))[:100]
    logits[lead] = torch.arange(100, dtype=torch.float32) * 1e-3
    top_p = 0.503
    probs = reference_probs(logits, 1.0, top_p=top_p)
    ascending = (logits.double()).softmax(-1).sort().values.cumsum(-1)
    assert ((ascending - (1 - top_p)).abs() > 1e-5).all()  # no boundary decided by rounding
    tokens = draws(logits, params(top_p=top_p), 6000)
    assert_distribution(tokens, probs)


def test_full_vocabulary_draw_matches_softmax_with_a_long_tail():
    # 151936 tokens: 20 likely ones and a tail holding ~15% of the mass, so the skipped (pruned)
    # noise evaluations must not change which token wins.
    vocab = 151936
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(vocab, generator=generator) - 2.0
    head = torch.randperm(vocab, generator=generator)[:20]
    logits[head] = torch.linspace(8.0, 10.0, 20)
    probs = reference_probs(logits, 1.0)
    tokens = torch.tensor(draws(logits, params(temperature=1.0), 1500))
    is_head = torch.zeros(vocab, dtype=torch.bool)
    is_head[head] = True
    grouped = torch.cat([probs[head], probs[~is_head].sum().unsqueeze(0)])  # the tail as one category
    position_in_head = {t: i for i, t in enumerate(head.tolist())}
    assert_distribution([position_in_head.get(t, 20) for t in tokens.tolist()], grouped)


def test_top_k_and_top_p_on_a_full_vocabulary():
    vocab = 151936
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(4)) * 2
    for fields in (dict(top_k=50), dict(top_p=0.3), dict(top_k=40, top_p=0.9, min_p=0.01)):
        probs = reference_probs(logits, 1.0, **fields)
        tokens = draws(logits, params(**fields), 300)
        assert set(tokens) <= set(probs.nonzero().flatten().tolist())
        assert len(set(tokens)) > 10


def test_seeded_draws_do_not_depend_on_the_batch():
    torch.manual_seed(2)
    vocab = 3000
    logits = torch.randn(6, vocab)
    p = params(temperature=1.0, top_p=0.95)
    keys = [(r, seed, position) for r in range(6) for seed, position in ((11, 0), (11, 5), (12, 5))]
    alone = {k: sample(logits, [row(p, logits_row=k[0], seed=k[1], position=k[2])])[0] for k in keys}
    # the same draws shuffled among other rows, with the logits rows moved to other indices
    rng = random.Random(0)
    shuffled = keys[:]
    rng.shuffle(shuffled)
    moved = torch.cat([torch.randn(3, vocab), logits.flip(0)])  # logits row r now at index 3 + 5 - r
    others = [row(params(temperature=0.5, top_k=7), logits_row=i, seed=99, position=i) for i in range(3)]
    batch = others + [row(p, logits_row=8 - r, seed=s, position=pos) for r, s, pos in shuffled]
    tokens = sample(moved, batch)[3:]
    assert tokens == [alone[k] for k in shuffled]


def test_positions_and_seeds_give_independent_draws():
    vocab = 1000
    logits = torch.zeros(1, vocab)  # uniform: repeats between draws happen with probability 1/vocab
    p = params(temperature=1.0)
    by_position = sample(logits, [row(p, seed=5, position=pos) for pos in range(300)])
    by_seed = sample(logits, [row(p, seed=seed, position=7) for seed in range(300)])
    for tokens in (by_position, by_seed):
        assert len(set(tokens)) > 220  # ~259 expected for independent uniform draws
        assert sum(a == b for a, b in zip(tokens, tokens[1:])) < 5
    # n > 1: one logits row, several sequences with their own seeds
    assert len(set(sample(logits, [row(p, seed=100 + i, position=0) for i in range(8)]))) > 4


# ---- logprobs ----------------------------------------------------------------------------------


def check_logprobs(result, reference_logprobs, token, num_top):
    assert result.token == token
    assert result.logprob == pytest.approx(reference_logprobs[token].item(), abs=1e-5)
    assert result.rank == (reference_logprobs >= reference_logprobs[token]).sum().item()
    top = reference_logprobs.topk(num_top)
    assert result.top_ids == top.indices.tolist()
    assert result.top_logprobs == pytest.approx(top.values.tolist(), abs=1e-5)


def test_logprobs_are_of_the_raw_distribution():
    torch.manual_seed(9)
    logits = torch.randn(4, 300) * 3
    reference = torch.log_softmax(logits, -1)
    rows = [
        row(params(temperature=1.0, logprobs=5), logits_row=2, seed=1),
        row(params(temperature=0.0, logprobs=0), logits_row=0),
        row(params(temperature=1.0), logits_row=1),  # no logprobs asked for
        row(params(temperature=0.0, logprobs=3, logit_bias={17: 100.0}), logits_row=3),  # processed != raw
        row(params(temperature=0.9, logprobs=20, top_k=30), logits_row=2, seed=2),
    ]
    result = _C.Sampler().sample(logits, rows)
    assert result.tokens[3] == 17
    for i, num_top in ((0, 5), (1, 0), (3, 3), (4, 20)):
        check_logprobs(result.logprobs[i], reference[rows[i].logits_row], result.tokens[i], num_top)
    assert result.logprobs[2].token == result.tokens[2] and result.logprobs[2].rank == 0
    assert result.logprobs[3].rank > 1  # the bias does not show in the raw logprob


def test_best_of_rows_get_their_sampled_logprob():
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(1))
    result = _C.Sampler().sample(logits, [row(params(n=1, best_of=3), logits_row=1, seed=4)])
    check_logprobs(result.logprobs[0], torch.log_softmax(logits[1], -1), result.tokens[0], 0)


def test_score_equals_log_softmax_reference():
    torch.manual_seed(4)
    logits = (torch.randn(37, 500) * 2).to(torch.bfloat16)
    tokens = torch.randint(0, 500, (37,)).tolist()
    reference = torch.log_softmax(logits.float(), -1)
    for num_top in (0, 4):
        scores = _C.Sampler.score(logits, tokens, num_top)
        for i, token in enumerate(tokens):
            check_logprobs(scores[i], reference[i], token, num_top)
    distinct = torch.randn(2, 500)  # float32: no ties, so the full order is unique
    whole = _C.Sampler.score(distinct, [3, 4], -1)
    assert whole[1].top_ids == distinct[1].argsort(descending=True).tolist()


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, field_name",
    [
        (dict(logit_bias={100: 1.0}), "logit_bias"),
        (dict(allowed_token_ids=[1, -1]), "allowed_token_ids"),
        (dict(bad_words=[[2, 100]]), "bad_words"),
        (dict(stop_token_ids=[250]), "stop_token_ids"),
    ],
)
def test_out_of_vocabulary_token_ids_raise(fields, field_name):
    logits = torch.zeros(1, 100)
    with pytest.raises(ValueError, match=field_name):
        sample(logits, [row(params(**fields))])


def test_bad_rows_raise():
    logits = torch.zeros(2, 100)
    with pytest.raises(ValueError, match="logits_row"):
        sample(logits, [row(params(), logits_row=2)])
    with pytest.raises(ValueError, match="token_ids"):
        sample(logits, [row(params(repetition_penalty=1.2), token_ids=[5, 100], num_prompt_tokens=1)])
    with pytest.raises(ValueError, match="eos_token_ids"):
        sample(logits, [row(params(), eos_token_ids=[100])])
    with pytest.raises(ValueError, match="num_prompt_tokens"):
        sample(logits, [row(params(), token_ids=[1], num_prompt_tokens=2)])
    with pytest.raises(ValueError, match="vocabulary"):
        _C.Sampler.score(logits, [0, 100], 0)
    with pytest.raises(ValueError, match="logits"):
        sample(torch.zeros(100), [row(params())])
    assert sample(logits, [row(params(temperature=0.0))]) == [0]  # still usable
