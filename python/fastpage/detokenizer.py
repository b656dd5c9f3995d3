"""Incremental detokenization: the text a growing token sequence adds at each step.

Decoding one token alone is wrong for byte-level pieces of a multi-byte character and for
tokenizers that drop a word's leading space at the start of a text. So each step decodes a short
window twice, without and with the new tokens, and emits the difference; while the window ends in
an incomplete UTF-8 sequence (U+FFFD at the end), the text is held back until more tokens arrive
(or `flush` at the end). The window then slides to the tokens just emitted.
"""

from __future__ import annotations

from fastpage.tokenizer import Tokenizer

# Prompt tokens kept as context so that the first generated token decodes as it would in the
# full text (its leading space, a character begun in the prompt).
PROMPT_CONTEXT_TOKENS = 5
REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool = True,
                 spaces_between_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        # Fast tokenizers never put spaces between added tokens except where their decoder does
        # (e.g. WordPiece); with spaces_between_special_tokens=False that space is removed.
        self._join_added_tokens = not skip_special_tokens and not spaces_between_special_tokens
        self._window = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0  # window[prefix_offset:read_offset] is context already emitted
        self._read_offset = len(self._window)

    def _decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=self._skip_special_tokens)

    def step(self, token_id: int) -> str:
        """Adds one token; returns the text it completes (possibly empty)."""
        previous = self._window[-1] if self._window else None
        self._window.append(token_id)
        prefix_text = self._decode(self._window[self._prefix_offset:self._read_offset])
        new_text = self._decode(self._window[self._prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            return ""
        delta = new_text[len(prefix_text):]
        if (self._join_added_tokens and token_id in self._tokenizer.added_token_ids
                and previous in self._tokenizer.added_token_ids and delta.startswith(" ")):
            delta = delta[1:]
        # Slide: what was read becomes the context of the next step.
        self._window = self._window[self._read_offset:]
        self._prefix_offset, self._read_offset = 0, len(self._window)
        return delta

    def flush(self) -> str:
        """The text still held back (an incomplete character at the very end), when the sequence ends."""
        prefix_text = self._decode(self._window[self._prefix_offset:self._read_offset])
        new_text = self._decode(self._window[self._prefix_offset:])
        self._window = self._window[self._prefix_offset:]
        self._prefix_offset, self._read_offset = 0, len(self._window)
        return new_text[len(prefix_text):]
