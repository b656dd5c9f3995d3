"""SamplingParams: vLLM's defaults, one ValueError naming the field for each bad value, the
model-dependent bounds, and the conversion to the C++ engine's params."""

import math

import pytest

from fastpage import _C
from fastpage.sampling_params import SamplingParams
from fastpage.tokenizer import Tokenizer
from tiny_tokenizer import byte_level_bpe


def test_defaults_match_vllm():
    p = SamplingParams()
    assert (p.n, p.best_of, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1, 1.0, 1.0, 0, 0.0)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert (p.max_tokens, p.min_tokens, p.logprobs, p.prompt_logprobs, p.seed) == (16, 0, None, None, None)
    assert p.stop == [] and p.stop_token_ids == [] and p.bad_words == []
    assert p.skip_special_tokens and p.spaces_between_special_tokens and p.detokenize
    assert not p.ignore_eos and not p.include_stop_str_in_output


def test_normalization():
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(n=3).best_of == 3
    assert SamplingParams(logit_bias={"5": 300, 7: -2.5}).logit_bias == {5: 100.0, 7: -2.5}
    greedy = SamplingParams(temperature=0.0, top_p=0.5, top_k=5, min_p=0.3)
    assert (greedy.top_p, greedy.top_k, greedy.min_p) == (1.0, 0, 0.0)


@pytest.mark.parametrize("field, value", [
    ("n", 0), ("n", 1.5), ("best_of", 0),
    ("temperature", -0.1), ("temperature", math.nan), ("temperature", math.inf),
    ("top_p", 0.0), ("top_p", 1.01), ("top_p", math.nan),
    ("top_k", -2), ("top_k", 2.0),
    ("min_p", -0.1), ("min_p", 1.5),
    ("presence_penalty", 2.5), ("presence_penalty", -2.1), ("frequency_penalty", 3.0),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0),
    ("seed", 2**64), ("seed", "7"),
    ("max_tokens", 0), ("max_tokens", -5), ("min_tokens", -1),
    ("logprobs", -1), ("prompt_logprobs", -1),
    ("stop", [""]), ("stop", ["x"] * 65), ("stop", ["y" * 1025]), ("stop", [3]),
    ("stop_token_ids", [-1]), ("stop_token_ids", ["a"]),
    ("bad_words", [""]), ("allowed_token_ids", []), ("allowed_token_ids", [-3]),
    ("logit_bias", {"x": 1.0}), ("logit_bias", {-1: 1.0}), ("logit_bias", {1: math.inf}),
    ("ignore_eos", "yes"), ("include_stop_str_in_output", 1),
])
def test_bad_value_raises_naming_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_cross_field_rules():
    with pytest.raises(ValueError, match="best_of"):
        SamplingParams(n=3, best_of=2)
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(max_tokens=4, min_tokens=5)
    with pytest.raises(ValueError, match="detokenize"):
        SamplingParams(stop=["x"], detokenize=False)
    SamplingParams(max_tokens=None, min_tokens=1000)  # None: bounded by the context later


def test_model_dependent_bounds():
    SamplingParams(logprobs=20, stop_token_ids=[99]).verify_for_model(vocab_size=100, max_logprobs=20)
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=21).verify_for_model(vocab_size=100, max_logprobs=20)
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=6).verify_for_model(vocab_size=100, max_logprobs=5)
    for field in ("stop_token_ids", "allowed_token_ids"):
        with pytest.raises(ValueError, match=field):
            SamplingParams(**{field: [100]}).verify_for_model(vocab_size=100, max_logprobs=20)
        with pytest.raises(ValueError, match=field):
            SamplingParams(**{field: list(range(11))}).verify_for_model(vocab_size=10, max_logprobs=20)
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={100: 1.0}).verify_for_model(vocab_size=100, max_logprobs=20)
    with pytest.raises(ValueError, match="best_of"):
        SamplingParams(n=2, best_of=8).verify_for_model(vocab_size=100, max_logprobs=20, max_num_seqs=4)


def test_to_c_params_carries_every_field():
    p = SamplingParams(n=2, best_of=3, temperature=0.7, top_p=0.9, top_k=-1, min_p=0.05, seed=-1,
                       presence_penalty=0.5, frequency_penalty=-0.5, repetition_penalty=1.2,
                       stop_token_ids=[5, 6], ignore_eos=True, min_tokens=2, logprobs=3,
                       prompt_logprobs=1, logit_bias={4: 2.0}, allowed_token_ids=[4, 5, 6])
    c = p.to_c_params(max_tokens=40, bad_words_token_ids=[[1, 2], [3]])
    assert isinstance(c, _C.CSamplingParams)
    assert (c.n, c.best_of, c.top_k, c.max_tokens, c.min_tokens) == (2, 3, 0, 40, 2)
    assert c.temperature == pytest.approx(0.7) and c.top_p == pytest.approx(0.9)
    assert c.min_p == pytest.approx(0.05) and c.repetition_penalty == pytest.approx(1.2)
    assert c.presence_penalty == pytest.approx(0.5) and c.frequency_penalty == pytest.approx(-0.5)
    assert c.seed == 2**64 - 1  # negative seeds wrap into the engine's uint64
    assert c.stop_token_ids == [5, 6] and c.allowed_token_ids == [4, 5, 6]
    assert c.bad_words == [[1, 2], [3]] and c.logit_bias == {4: 2.0}
    assert c.ignore_eos and (c.logprobs, c.prompt_logprobs) == (3, 1)
    greedy = SamplingParams(temperature=1e-6).to_c_params(max_tokens=1)
    assert greedy.temperature == 0.0 and greedy.seed is None and greedy.logprobs is None


def test_bad_words_tokenized_with_and_without_leading_space():
    tokenizer = Tokenizer(byte_level_bpe())
    ids = SamplingParams(bad_words=["quick", "fox"]).bad_words_token_ids(tokenizer)
    expected = []
    for word in ("quick", "fox"):
        for text in (word, " " + word):
            if tokenizer.encode(text, add_special_tokens=False) not in expected:
                expected.append(tokenizer.encode(text, add_special_tokens=False))
    assert ids == expected
    assert tokenizer.decode(ids[1]) == " quick"
