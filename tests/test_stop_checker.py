"""Stop strings through a sequence's output state: held back while they may still match, found when
split across tokens, cut or included, and only after min_tokens."""

import pytest

from fastpage.request_state import SequenceState
from fastpage.sampling_params import SamplingParams
from fastpage.tokenizer import Tokenizer
from tiny_tokenizer import byte_level_bpe


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(byte_level_bpe())


def feed(seq, token_id) -> bool:
    """One token, as the output processor applies it: appended, detokenized, its text added."""
    seq.token_ids.append(token_id)
    return seq.add_text(seq.detokenizer.step(token_id))


def generate(tokenizer, text, **params):
    """Feeds `text`'s tokens one at a time; returns the sequence and the visible text after each."""
    prompt_ids = tokenizer.encode("Hello", add_special_tokens=False)
    seq = SequenceState(0, tokenizer, prompt_ids, SamplingParams(**params))
    visible = []
    for token_id in tokenizer.encode(text, add_special_tokens=False):
        stopped = feed(seq, token_id)
        visible.append(seq.text)
        if stopped:
            break
    return seq, visible


def test_stop_string_split_across_tokens_is_cut(tokenizer):
    text = " world! The quick brown fox"
    stop = "quick bro"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert not any(stop in tokenizer.decode([t]) for t in ids)  # spans several tokens
    seq, visible = generate(tokenizer, text, stop=[stop])
    assert seq.finish_reason == "stop" and seq.stop_reason == stop
    assert seq.text == " world! The "
    # Nothing past the text that precedes the stop string was ever shown.
    assert all(" world! The ".startswith(v) for v in visible)
    assert tokenizer.decode(seq.token_ids).startswith(" world! The quick bro")


def test_partial_match_held_back_then_released(tokenizer):
    text = " The quick brown fox jumps"
    seq, visible = generate(tokenizer, text, stop=["quick red"])
    assert seq.finish_reason is None
    assert seq.text == text
    # While the text ended in "quick" / "quick " it could still become the stop string.
    held = [v for v in visible if v.endswith(" The ")]
    assert held, visible
    assert all(not v.endswith("quick") for v in visible)


def test_include_stop_str_in_output(tokenizer):
    seq, _ = generate(tokenizer, " Hello world! The quick", stop=["world!", "The"], include_stop_str_in_output=True)
    assert seq.text == " Hello world!" and seq.stop_reason == "world!"


def test_earliest_stop_string_wins(tokenizer):
    seq, _ = generate(tokenizer, " lazy dog. The quick", stop=["quick", "dog"])
    assert seq.text == " lazy " and seq.stop_reason == "dog"


def test_stop_strings_ignored_before_min_tokens(tokenizer):
    text = " fox fox fox fox fox fox"
    first_fox_tokens = len(tokenizer.encode(" fox", add_special_tokens=False))
    seq, _ = generate(tokenizer, text, stop=["fox"], min_tokens=first_fox_tokens + 1, max_tokens=50)
    assert seq.finish_reason == "stop"
    assert seq.text == " fox "


def test_stop_token_text_removed_unless_included(tokenizer):
    fox_ids = tokenizer.encode(" fox", add_special_tokens=False)
    dot_id = tokenizer.encode(".", add_special_tokens=False)[0]
    for include, want in ((False, " fox"), (True, " fox.")):
        seq = SequenceState(0, tokenizer, [], SamplingParams(stop_token_ids=[dot_id],
                                                             include_stop_str_in_output=include))
        for token_id in fox_ids + [dot_id]:
            feed(seq, token_id)
        seq.finish("stop", stop_token=dot_id)
        assert seq.text == want and seq.stop_reason == dot_id and seq.token_ids[-1] == dot_id
    eos = SequenceState(0, tokenizer, [], SamplingParams())
    for token_id in fox_ids + [2]:
        feed(eos, token_id)
    eos.finish("stop", stop_token=2)
    assert eos.text == " fox" and eos.stop_reason is None
