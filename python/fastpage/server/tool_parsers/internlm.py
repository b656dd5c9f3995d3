"""InternLM2.5 format: <|action_start|><|plugin|>\n{"name": ..., "parameters": {...}}<|action_end|>,
repeated ("arguments" is accepted for "parameters"). The markers are special tokens, so the request
keeps special tokens in the text while this parser is active. <|action_start|><|interpreter|> (code
for InternLM's interpreter) is not a tool call and stays content."""

from __future__ import annotations

from fastpage.server.tool_parsers.base import FoundCalls, ToolParser, decode_json_at, function_call_from

PLUGIN_CALL, ACTION_END = "<|action_start|><|plugin|>", "<|action_end|>"


class InternLMToolParser(ToolParser):
    name = "internlm"
    markers = (PLUGIN_CALL,)

    def skip_special_tokens(self) -> bool:
        return False

    def region_start(self, text: str, search_from: int) -> int:
        return text.find(PLUGIN_CALL, search_from)

    def scan_calls(self, text: str, pos: int, first: bool) -> FoundCalls:
        calls = []
        while (start := text.find(PLUGIN_CALL, pos)) >= 0:
            decoded = decode_json_at(text, start + len(PLUGIN_CALL))
            if decoded is None:
                break  # incomplete (still streaming) or not JSON
            call = function_call_from(decoded[0])
            end = text.find(ACTION_END, decoded[1])
            if call is None or (end >= 0 and text[decoded[1]:end].strip()):
                break
            calls.append(call)
            pos = decoded[1]
        return FoundCalls(calls, pos)
