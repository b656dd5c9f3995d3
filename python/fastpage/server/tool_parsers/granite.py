"""IBM Granite 3.x format: one JSON list of {"name", "arguments"} after <|tool_call|> (Granite 3.0) or
<tool_call> (Granite 3.1), or as the whole reply. Parallel calls are items of the one list."""

from __future__ import annotations

from fastpage.server.tool_parsers.base import (FoundCalls, ToolParser, decode_json_at, function_call_from,
                                               skip_whitespace)

TOOL_CALL_TOKEN, TOOL_CALL_TAG = "<|tool_call|>", "<tool_call>"


class GraniteToolParser(ToolParser):
    name = "granite"
    markers = (TOOL_CALL_TOKEN, TOOL_CALL_TAG)

    def region_start(self, text: str, search_from: int) -> int:
        start = skip_whitespace(text, 0)
        if text.startswith("[", start):  # a bare list counts only as the whole reply
            return start
        starts = [at for marker in self.markers if (at := text.find(marker, search_from)) >= 0]
        return min(starts, default=-1)

    def scan_calls(self, text: str, pos: int, first: bool) -> FoundCalls:
        if not first:
            return FoundCalls([], pos)  # the one list has been read
        for marker in self.markers:
            if text.startswith(marker, pos):
                pos += len(marker)
                break
        decoded = decode_json_at(text, pos)
        if decoded is None:
            return FoundCalls([], pos)  # incomplete (still streaming) or not JSON
        calls = [function_call_from(item) for item in decoded[0]] if isinstance(decoded[0], list) else []
        if not calls or any(call is None for call in calls):
            return FoundCalls([], pos, plain=True)  # complete JSON, but not a list of calls
        return FoundCalls(calls, decoded[1])
