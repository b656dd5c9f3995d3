"""DeepSeek-V3 format; its markers are written with full-width bars (U+FF5C) and U+2581 for spaces:

<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
```json
{"city": "Paris"}
```<｜tool▁call▁end｜>
<｜tool▁call▁begin｜>...<｜tool▁call▁end｜><｜tool▁calls▁end｜>

A call is complete at its <｜tool▁call▁end｜>.
"""

from __future__ import annotations

from fastpage.server.protocol import FunctionCall
from fastpage.server.tool_parsers.base import (FoundCalls, ToolParser, decode_json_at, function_call_from,
                                               skip_whitespace)

CALLS_BEGIN = "<\uff5ctool\u2581calls\u2581begin\uff5c>"
CALL_BEGIN = "<\uff5ctool\u2581call\u2581begin\uff5c>"
SEPARATOR = "<\uff5ctool\u2581sep\uff5c>"
CALL_END = "<\uff5ctool\u2581call\u2581end\uff5c>"
FENCE, JSON_FENCE = "```", "```json"


class DeepSeekV3ToolParser(ToolParser):
    name = "deepseek_v3"
    markers = (CALLS_BEGIN, CALL_BEGIN)  # the model sometimes leaves out the list's opening marker
    closing_chars = frozenset("\uff5c")  # the last character of <｜tool▁call▁end｜>

    def region_start(self, text: str, search_from: int) -> int:
        starts = [at for marker in self.markers if (at := text.find(marker, search_from)) >= 0]
        return min(starts, default=-1)

    def scan_calls(self, text: str, pos: int, first: bool) -> FoundCalls:
        calls = []
        while (begin := text.find(CALL_BEGIN, pos)) >= 0:
            end = text.find(CALL_END, begin)
            if end < 0:
                break  # not complete yet
            call = _call(text, begin + len(CALL_BEGIN), end)
            if call is None:
                break
            calls.append(call)
            pos = end + len(CALL_END)
        return FoundCalls(calls, pos)


def _call(text: str, start: int, end: int) -> FunctionCall | None:
    """TYPE<｜tool▁sep｜>NAME\\n```json\\n{...}\\n``` between start and end, as a FunctionCall, or None."""
    separator = text.find(SEPARATOR, start, end)
    name_end = text.find("\n", separator, end) if separator >= 0 else -1
    if name_end < 0:
        return None
    fence = skip_whitespace(text, name_end)
    if not text.startswith(JSON_FENCE, fence, end):
        return None
    decoded = decode_json_at(text, fence + len(JSON_FENCE))
    if decoded is None or decoded[1] > end or not isinstance(decoded[0], dict):
        return None
    closing = skip_whitespace(text, decoded[1])
    if not text.startswith(FENCE, closing, end) or text[closing + len(FENCE):end].strip():
        return None
    name = text[separator + len(SEPARATOR):name_end].strip()
    return function_call_from({"name": name, "arguments": decoded[0]}) if name else None
