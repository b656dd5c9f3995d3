"""The reasoning-parser contract, and the <think>...</think> split shared by both parsers.

A reasoning model writes its thinking, then `</think>`, then the reply. The parser of a request splits
a finished reply into (reasoning, content) with extract(), and a streamed one piece by piece with
extract_streaming(), which yields the same split for every way of cutting the text into pieces (a
test checks every cut). Streaming is incremental: each piece is scanned once, together with a held-back
tail of at most len("</think>") - 1 characters that could be the start of the marker. Only str.find
and startswith run on the text: no regular expressions.
"""

from __future__ import annotations

import enum

from fastpage.server.tool_parsers.base import held_back_length

START, END = "<think>", "</think>"


class Phase(enum.Enum):
    # The reply may still begin with "<think>", which is dropped. vLLM drops it wherever it comes (and
    # all before it); only at the start, a stream need not hold back more than the marker's length.
    OPENING = enum.auto()
    REASONING = enum.auto()
    CONTENT = enum.auto()


class StreamState:
    """Where one streamed choice stands."""

    __slots__ = ("phase", "held")

    def __init__(self, phase: Phase):
        self.phase = phase
        self.held = ""  # text not sent yet: a prefix of START (OPENING) or of END (REASONING)


class ReasoningParser:
    """The split for one request: everything before the first `</think>` is reasoning, the rest
    content; a `<think>` opening the reply is dropped (some chat templates open the block in the
    prompt, others let the model write it). Empty parts are None, as a stream would show them."""

    name = ""

    def __init__(self, reasoning_already_ended: bool = False):
        # The prompt closed the thinking block (or thinking is off): the whole reply is content, and
        # a structured-output grammar applies from its first token.
        self.reasoning_already_ended = reasoning_already_ended

    @classmethod
    def for_request(cls, prompt: str, continue_final_message: bool,
                    chat_template_kwargs: dict | None) -> ReasoningParser:
        """The parser of a chat request whose rendered prompt is `prompt`."""
        return cls(reasoning_already_ended=ended_in_prompt(prompt, continue_final_message))

    @classmethod
    def end_token_ids(cls, tokenizer) -> list[int]:
        """The token ids of `</think>` in this tokenizer (one id in DeepSeek-R1's and Qwen3's): the
        engine starts enforcing a structured-output grammar once the reply has produced them."""
        token_ids = tokenizer.encode(END, add_special_tokens=False)
        if not token_ids or tokenizer.decode(token_ids) != END:
            raise ValueError(f"reasoning parser {cls.name}: the model's tokenizer cannot write {END!r}")
        return token_ids

    def extract(self, text: str) -> tuple[str | None, str | None]:
        """(reasoning, content) of a finished reply."""
        if self.reasoning_already_ended:
            return None, text or None
        if text.startswith(START):
            text = text[len(START):]
        reasoning, marker, content = text.partition(END)
        # No end marker: the reply stopped while thinking (max_tokens), so all of it is reasoning.
        return reasoning or None, (content or None) if marker else None

    def new_stream_state(self) -> StreamState:
        return StreamState(Phase.CONTENT if self.reasoning_already_ended else Phase.OPENING)

    def extract_streaming(self, piece: str, state: StreamState, final: bool = False) -> dict[str, str]:
        """The delta for the reply's next piece: {"reasoning_content": ..., "content": ...}, each key
        only when it has text. `final` marks the reply's last piece: nothing stays held back."""
        reasoning = ""
        if state.phase is Phase.OPENING:
            text = state.held + piece
            if not final and len(text) < len(START) and START.startswith(text):
                state.held = text
                return {}
            state.phase, state.held = Phase.REASONING, ""
            piece = text[len(START):] if text.startswith(START) else text
        if state.phase is Phase.REASONING:
            text = state.held + piece
            end = text.find(END)
            if end < 0:
                keep = 0 if final else held_back_length(text, (END,))
                state.held = text[len(text) - keep:]
                return {"reasoning_content": text[:len(text) - keep]} if len(text) > keep else {}
            state.phase, state.held = Phase.CONTENT, ""
            reasoning, piece = text[:end], text[end + len(END):]
        delta = {}
        if reasoning:
            delta["reasoning_content"] = reasoning
        if piece:
            delta["content"] = piece
        return delta


def reasoning_fields(reasoning: str | None) -> dict:
    """A chat message's (or delta's) reasoning, under vLLM's current name and its former one
    (`reasoning_content`, which DeepSeek's API and most clients read)."""
    return {"reasoning": reasoning, "reasoning_content": reasoning}


def ended_in_prompt(prompt: str, continue_final_message: bool) -> bool:
    """Whether the prompt has closed the thinking block: its last marker is `</think>`, and either
    nothing but whitespace follows it (a template with thinking off writes `<think>\\n\\n</think>\\n\\n`),
    or the request continues a final assistant message, whose text after the marker is reply content."""
    end = prompt.rfind(END)
    if end < 0 or prompt.find(START, end) >= 0:
        return False
    after = end + len(END)
    return continue_final_message or after == len(prompt) or prompt[after:].isspace()

