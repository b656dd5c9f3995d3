"""Llama 3.x JSON format: the reply is {"name": ..., "parameters": {...}} (optionally after
<|python_tag|>), several calls separated by ';'. A reply that starts otherwise is plain content."""

from __future__ import annotations

from fastpage.server.tool_parsers.base import FoundCalls, ToolParser, scan_separated_calls, skip_whitespace

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
        return scan_separated_calls(text, pos, ";", first)
