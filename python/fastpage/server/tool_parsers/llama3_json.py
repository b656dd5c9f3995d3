"""Llama 3.x JSON format: the reply is {"name": ..., "parameters": {...}} (optionally after
<|python_tag|>), several calls separated by ';'. A reply that starts otherwise is plain content."""

from __future__ import annotations

from fastpage.server.tool_parsers.base import (FoundCalls, ToolParser, decode_json_at, function_call_from,
                                               skip_whitespace)

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"
    markers = (PYTHON_TAG, "{")

    def region_start(self, text: str, search_from: int) -> int:
        start = skip_whitespace(text, 0)  # only a reply that starts with a call is one
        return start if text.startswith(PYTHON_TAG, start) or text.startswith("{", start) else -1

    def scan_calls(self, text: str, pos: int, first: bool) -> FoundCalls:
        if first and text.startswith(PYTHON_TAG, pos):
            pos += len(PYTHON_TAG)
        elif not first:  # after a call: the next one follows a ';'
            separator = skip_whitespace(text, pos)
            if not text.startswith(";", separator):
                return FoundCalls([], pos)
            pos = separator + 1
        calls = []
        while (decoded := decode_json_at(text, pos)) is not None:
            call = function_call_from(decoded[0])
            if call is None:
                # Complete JSON, but not a tool call: the reply is plain content.
                return FoundCalls([], pos, plain=first and not calls)
            calls.append(call)
            pos = decoded[1]
            separator = skip_whitespace(text, pos)
            if not text.startswith(";", separator):
                break
            pos_after = separator + 1
            if decode_json_at(text, pos_after) is None:
                break  # the next call is not complete yet: resume before its ';'
            pos = pos_after
        return FoundCalls(calls, pos)
