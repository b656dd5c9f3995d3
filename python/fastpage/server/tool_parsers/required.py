"""tool_choice "required": the reply is held by a grammar to a JSON array of calls,
[{"name": ..., "parameters": {...}}, ...] (vLLM's format), and streamed call by call like any parser's."""

from __future__ import annotations

from fastpage.server.tool_parsers.base import FoundCalls, ToolParser, scan_separated_calls, skip_whitespace


def required_calls_schema(tools: list[dict], parallel_tool_calls: bool) -> dict:
    """The JSON schema of that array for the request's tools: each item names one tool and carries
    arguments valid under its parameters schema."""
    items = [{"type": "object",
              "properties": {"name": {"type": "string", "enum": [tool["name"]]},
                             "parameters": tool.get("parameters") or {"type": "object"}},
              "required": ["name", "parameters"]} for tool in tools]
    schema = {"type": "array", "minItems": 1, "items": items[0] if len(items) == 1 else {"anyOf": items}}
    if not parallel_tool_calls:
        schema["maxItems"] = 1
    return schema


class RequiredToolCallsParser(ToolParser):
    name = "required"
    markers = ("[",)

    def region_start(self, text: str, search_from: int) -> int:
        start = skip_whitespace(text, 0)
        return start if text.startswith("[", start) else -1

    def scan_calls(self, text: str, pos: int, first: bool) -> FoundCalls:
        # The array opens with '[' (first) and each later call follows a ','.
        at = skip_whitespace(text, pos)
        if not text.startswith("[" if first else ",", at):
            return FoundCalls([], pos)
        return scan_separated_calls(text, at + 1, ",", first)
