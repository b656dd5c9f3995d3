"""Hermes / Qwen2.5 format: <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>, repeated."""

from __future__ import annotations

from fastpage.server.tool_parsers.base import FoundCalls, ToolParser, decode_json_at, function_call_from

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class HermesToolParser(ToolParser):
    name = "hermes"
    markers = (OPEN,)

    def region_start(self, text: str, search_from: int) -> int:
        return text.find(OPEN, search_from)

    def scan_calls(self, text: str, pos: int, first: bool) -> FoundCalls:
        calls = []
        while (start := text.find(OPEN, pos)) >= 0:
            decoded = decode_json_at(text, start + len(OPEN))
            if decoded is None:
                break  # incomplete (still streaming) or not JSON
            call = function_call_from(decoded[0])
            end = text.find(CLOSE, decoded[1])
            if call is None or (end >= 0 and text[decoded[1]:end].strip()):
                break
            calls.append(call)
            pos = decoded[1]  # the closing tag, if any, holds no opening one
        return FoundCalls(calls, pos)
