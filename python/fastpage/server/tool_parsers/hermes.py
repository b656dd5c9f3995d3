"""Hermes / Qwen2.5 format: <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>, repeated."""

from __future__ import annotations

from fastpage.server.tool_parsers.base import Scan, ToolParser, decode_json_at, function_call_from

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class HermesToolParser(ToolParser):
    name = "hermes"
    markers = (OPEN,)

    def scan(self, text: str) -> Scan:
        start = text.find(OPEN)
        if start < 0:
            return Scan(text, [])
        calls = []
        pos = start
        while pos >= 0:
            body_start = pos + len(OPEN)
            end = text.find(CLOSE, body_start)
            decoded = decode_json_at(text, body_start)
            if decoded is None:
                break  # incomplete (still streaming) or not JSON
            call = function_call_from(decoded[0])
            if call is None or (end >= 0 and text[decoded[1]:end].strip()):
                break
            calls.append(call)
            if end < 0:
                break  # JSON complete; the closing tag has not arrived yet
            pos = text.find(OPEN, end + len(CLOSE))
        return Scan(text[:start], calls, in_tool_region=True)
