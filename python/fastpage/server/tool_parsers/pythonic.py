"""Pythonic format (Llama 3.2 / Llama 4): the reply is a Python list of calls with keyword arguments,
[get_weather(city="Paris", unit="c"), get_time(tz="UTC")]. A reply that starts otherwise is plain content.

Each call is found by walking its brackets (skipping string literals with str.find), then parsed with
ast.parse(mode="eval"); argument values go through ast.literal_eval, so nothing is ever evaluated.
While streaming, the walk over the pending call resumes where the last one stopped: each character
outside a string is walked once, however many closing brackets arrive one at a time.
"""

from __future__ import annotations

import ast
import json

from fastpage.server.protocol import ChatTool, FunctionCall
from fastpage.server.tool_parsers.base import FoundCalls, ToolParser, skip_whitespace

INCOMPLETE, MALFORMED = -1, -2  # _call_end's answers when it finds no complete call
_OPENING, _CLOSING = "([{", ")]}"


class PythonicToolParser(ToolParser):
    name = "pythonic"
    markers = ("[",)
    closing_chars = frozenset(")]")  # a call completes with ')', the list with ']'

    def __init__(self, tools: list[ChatTool] | None = None):
        super().__init__(tools)
        # How far the pending call has been walked: (its start, the position reached, bracket depth there).
        self._walk = (-1, 0, 0)

    def region_start(self, text: str, search_from: int) -> int:
        start = skip_whitespace(text, 0)  # only a reply that starts with the list is one
        return start if text.startswith("[", start) else -1

    def scan_calls(self, text: str, pos: int, first: bool) -> FoundCalls:
        if first:
            pos += 1  # past the '['
        calls: list[FunctionCall] = []
        while True:
            at = skip_whitespace(text, pos)
            if calls or not first:  # after a call: ',' then the next one, or ']' and the list is done
                if not text.startswith(",", at):
                    break
                at = skip_whitespace(text, at + 1)
            end = self._call_end(text, at)
            if end == INCOMPLETE:
                break
            call = _parse_call(text[at:end]) if end != MALFORMED else None
            if call is None:
                # A list that does not open with a call ([1, 2]) is plain content.
                return FoundCalls(calls, pos, plain=first and not calls)
            calls.append(call)
            pos = end
        return FoundCalls(calls, pos)

    def _call_end(self, text: str, at: int) -> int:
        """Index just past the ')' that closes the call name(...) starting at `at`; INCOMPLETE if the
        text ends first, MALFORMED if what starts there is not a call."""
        if self._walk[0] == at:
            _, i, depth = self._walk
        else:
            i, depth = _open_parenthesis(text, at), 0
            if i < 0:
                return i
        while i < len(text):
            char = text[i]
            if char in "'\"":
                string_end = _string_end(text, i)
                if string_end < 0 or string_end == len(text):
                    # Not closed yet, or "" that may still open a triple-quoted string: the next
                    # walk starts again at this quote.
                    break
                i = string_end
                continue
            if char in _OPENING:
                depth += 1
            elif char in _CLOSING:
                depth -= 1
                if depth == 0:
                    return i + 1 if char == ")" else MALFORMED
            i += 1
        self._walk = (at, i, depth)
        return INCOMPLETE


def _open_parenthesis(text: str, at: int) -> int:
    """Index of the '(' after the function name that starts at `at`, or INCOMPLETE or MALFORMED."""
    i = at
    while i < len(text) and (text[i].isalnum() or text[i] == "_"):
        i += 1
    i = skip_whitespace(text, i)
    if i == len(text):
        return INCOMPLETE
    if i == at or text[at].isdigit() or text[i] != "(":
        return MALFORMED
    return i


def _string_end(text: str, start: int) -> int:
    """Index just past the string literal whose quote is at start, or -1 if it is not closed yet."""
    quote = text[start] * 3 if text.startswith(text[start] * 3, start) else text[start]
    i = start + len(quote)
    while (close := text.find(quote, i)) >= 0:
        backslashes = 0
        while text[close - 1 - backslashes] == "\\":
            backslashes += 1
        if backslashes % 2 == 0:  # an odd count escapes the quote
            return close + len(quote)
        i = close + 1
    return -1


def _parse_call(source: str) -> FunctionCall | None:
    """name(key=literal, ...) -> FunctionCall with the arguments as a JSON object, or None."""
    try:
        node = ast.parse(source, mode="eval").body
        if (not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args
                or any(keyword.arg is None for keyword in node.keywords)):  # positional or **kwargs
            return None
        arguments = {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords}
        # Tuples become lists; sets, bytes, complex numbers, NaN and infinities have no JSON form.
        return FunctionCall(name=node.func.id, arguments=json.dumps(arguments, ensure_ascii=False,
                                                                    allow_nan=False))
    except (SyntaxError, ValueError, TypeError, RecursionError):
        return None
