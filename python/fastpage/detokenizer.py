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
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        # Fast tokenizers never put spaces between added tokens except where their decoder does
        # (e.g. WordPiece); with spaces_between_special_tokens=False that space is removed.
        self._join_added_tokens = not skip_special_tokens and not spaces_between_special_tokens
        self._window = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0  # window[prefix_offset:read_offset] is context already emitted
        self._read_offset = len(self._window)

    def step(self, token_id: int) -> str:
        """Adds one token; returns the text it completes (possibly empty)."""
        return step_all([self], [token_id])[0]

    def _windows(self, token_id: int) -> tuple[list[int], list[int]]:
        """Appends the token; the windows to decode without and with what is new."""
        window = self._window
        window.append(token_id)
        return window[self._prefix_offset:self._read_offset], window[self._prefix_offset:]

    def _advance(self, prefix_text: str, new_text: str) -> str:
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            return ""  # nothing new yet, or a character still incomplete
        delta = new_text[len(prefix_text):]
        window = self._window
        if self._join_added_tokens and delta.startswith(" ") and len(window) >= 2:
            added = self.tokenizer.added_token_ids
            if window[-1] in added and window[-2] in added:
                delta = delta[1:]
        # Slide: what was read becomes the context of the next step.
        self._window = window[self._read_offset:]
        self._prefix_offset, self._read_offset = 0, len(self._window)
        return delta

    def flush(self) -> str:
        """The text still held back (an incomplete character at the very end), when the sequence ends."""
        prefix_text = self._decode(self._window[self._prefix_offset:self._read_offset])
        new_text = self._decode(self._window[self._prefix_offset:])
        self._window = self._window[self._prefix_offset:]
        self._prefix_offset, self._read_offset = 0, len(self._window)
        return new_text[len(prefix_text):]

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=self.skip_special_tokens)


def step_all(detokenizers: list[IncrementalDetokenizer], token_ids: list[int]) -> list[str]:
    """One new token for each detokenizer; returns the text each completes. The decodes of all of
    them go to the tokenizer in one batched call (per skip_special_tokens setting)."""
    windows: list[list[int]] = []
    for detokenizer, token_id in zip(detokenizers, token_ids):
        windows.extend(detokenizer._windows(token_id))
    first = detokenizers[0] if detokenizers else None
    if first is not None and all(d.tokenizer is first.tokenizer and d.skip_special_tokens == first.skip_special_tokens
                                 for d in detokenizers):
        texts = first.tokenizer.decode_batch(windows, skip_special_tokens=first.skip_special_tokens)
    else:
        texts = [t for i, d in enumerate(detokenizers) for t in
                 d.tokenizer.decode_batch(windows[2 * i:2 * i + 2], skip_special_tokens=d.skip_special_tokens)]
    return [d._advance(texts[2 * i], texts[2 * i + 1]) for i, d in enumerate(detokenizers)]
