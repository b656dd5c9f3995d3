"""Incremental detokenization against the tokenizer's decode of the whole sequence, on a real
byte-level BPE whose small vocabulary splits multi-byte characters across tokens."""

import random

import pytest

from fastpage.detokenizer import IncrementalDetokenizer
from fastpage.tokenizer import Tokenizer
from tiny_tokenizer import CORPUS, byte_level_bpe, word_piece


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(byte_level_bpe())


def run(tokenizer, prompt_ids, output_ids, **kwargs):
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids, **kwargs)
    pieces = [detokenizer.step(token_id) for token_id in output_ids]
    return pieces, detokenizer.flush()


def expected_text(tokenizer, prompt_ids, output_ids, skip_special_tokens):
    full = tokenizer.decode(prompt_ids + output_ids, skip_special_tokens=skip_special_tokens)
    prompt = tokenizer.decode(prompt_ids, skip_special_tokens=skip_special_tokens)
    assert full.startswith(prompt)
    return full[len(prompt):]


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_random_sequences_match_full_decode(tokenizer, skip_special_tokens):
    rng = random.Random(0)
    for _ in range(300):
        line = rng.choice(CORPUS)
        start = rng.randrange(len(line))
        prompt_ids = tokenizer.encode(line[start:start + rng.randrange(0, 30)], add_special_tokens=False)
        if rng.random() < 0.3:
            prompt_ids = [1] + prompt_ids  # a special token in the prompt
        output_ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 40))]
        pieces, tail = run(tokenizer, prompt_ids, output_ids, skip_special_tokens=skip_special_tokens)
        want = expected_text(tokenizer, prompt_ids, output_ids, skip_special_tokens)
        assert "".join(pieces) + tail == want
        # Every emitted piece is final: the text so far is always a prefix of the final text.
        emitted = ""
        for piece in pieces:
            emitted += piece
            assert want.startswith(emitted)


def test_multibyte_characters_are_never_split(tokenizer):
    text = " 日本語のテキスト🙂🚀 Größe Ærø ∑∫√"
    prompt_ids = tokenizer.encode("Hello", add_special_tokens=False)
    output_ids = tokenizer.encode(text, add_special_tokens=False)
    assert any(tokenizer.decode([t]).endswith("\ufffd") for t in output_ids)  # the test means something
    pieces, tail = run(tokenizer, prompt_ids, output_ids)
    assert "".join(pieces) == text and tail == ""
    assert not any("\ufffd" in piece for piece in pieces)


def test_leading_space_of_first_token_kept(tokenizer):
    prompt_ids = tokenizer.encode("The quick", add_special_tokens=False)
    output_ids = tokenizer.encode(" brown fox", add_special_tokens=False)
    pieces, _ = run(tokenizer, prompt_ids, output_ids)
    assert pieces[0].startswith(" ") and "".join(pieces) == " brown fox"


def test_incomplete_character_at_the_end_is_flushed(tokenizer):
    emoji_ids = tokenizer.encode("🎉", add_special_tokens=False)
    assert len(emoji_ids) > 1
    pieces, tail = run(tokenizer, [], emoji_ids[:-1])
    assert "".join(pieces) == "" and tail == tokenizer.decode(emoji_ids[:-1])


def test_special_tokens_skipped_or_kept(tokenizer):
    output_ids = tokenizer.encode("Hello", add_special_tokens=False) + [2]
    assert "".join(run(tokenizer, [], output_ids, skip_special_tokens=True)[0]) == "Hello"
    assert "".join(run(tokenizer, [], output_ids, skip_special_tokens=False)[0]) == "Hello<|im_end|>"


def test_spaces_between_special_tokens():
    tokenizer = Tokenizer(word_piece())
    cls_id, sep_id = tokenizer.hf.cls_token_id, tokenizer.hf.sep_token_id
    output_ids = [cls_id, sep_id, cls_id] + tokenizer.encode("hello world", add_special_tokens=False)
    full = tokenizer.decode(output_ids)
    assert full == "[CLS] [SEP] [CLS] hello world"  # WordPiece's decoder spaces every token
    pieces, _ = run(tokenizer, [], output_ids, skip_special_tokens=False, spaces_between_special_tokens=True)
    assert "".join(pieces) == full
    pieces, _ = run(tokenizer, [], output_ids, skip_special_tokens=False, spaces_between_special_tokens=False)
    assert "".join(pieces) == "[CLS][SEP][CLS] hello world"


@pytest.mark.parametrize("make", [byte_level_bpe, word_piece])
def test_decode_equals_transformers_decode(make):
    """Tokenizer.decode calls the Rust tokenizer directly: the same text as transformers' decode
    without clean-up, special tokens skipped or kept."""
    hf = make()
    tokenizer = Tokenizer(hf)
    rng = random.Random(1)
    for _ in range(200):
        token_ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(0, 12))]
        for skip in (True, False):
            want = hf.decode(token_ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
            assert tokenizer.decode(token_ids, skip_special_tokens=skip) == want
