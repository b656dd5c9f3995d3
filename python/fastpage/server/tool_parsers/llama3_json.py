"""Llama 3.x JSON format: the reply is {"name": ..., "parameters": {...}} (optionally after
<|python_tag|>), several calls separated by ';'. A reply that starts otherwise is plain content."""

from __future__ import annotations

from fastpage.server.tool_parsers.base import Scan, ToolParser, decode_json_at, function_call_from

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"
    markers = (PYTHON_TAG, "{")

    def scan(self, text: str) -> Scan:
        stripped = text.lstrip()
        offset = len(text) - len(stripped)
        if stripped.startswith(PYTHON_TAG):
            offset += len(PYTHON_TAG)
        elif not stripped.startswith("{"):
            return Scan(text, [])
        calls = []
        pos = offset
        while True:
            decoded = decode_json_at(text, pos)
            if decoded is None:
                break
            call = function_call_from(decoded[0])
            if call is None:
                break
            calls.append(call)
            pos = decoded[1]
            rest = text[pos:].lstrip()
            if not rest.startswith(";"):
                break
            pos = text.index(";", pos) + 1
        if not calls and decode_json_at(text, offset) is not None:
            return Scan(text, [])  # complete JSON, but not a tool call: plain content
        return Scan("", calls, in_tool_region=True)
