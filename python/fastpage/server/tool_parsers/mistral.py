"""Mistral format: [TOOL_CALLS] then either a JSON list of {"name", "arguments"} (v3 tokenizer)
or name[ARGS]{...} per call (v11 tokenizer). [TOOL_CALLS] is a special token, so the request keeps
special tokens in the text while this parser is active."""

from __future__ import annotations

import random
import string

from fastpage.server.protocol import FunctionCall
from fastpage.server.tool_parsers.base import (FoundCalls, ToolParser, decode_json_at, function_call_from,
                                               skip_whitespace)

TOOL_CALLS, ARGS = "[TOOL_CALLS]", "[ARGS]"
_ID_ALPHABET = string.ascii_letters + string.digits


class MistralToolParser(ToolParser):
    name = "mistral"
    markers = (TOOL_CALLS,)

    def skip_special_tokens(self) -> bool:
        return False

    def new_tool_call_id(self) -> str:
        # Mistral's chat template rejects tool call ids that are not 9 alphanumeric characters.
        return "".join(random.choices(_ID_ALPHABET, k=9))

    def region_start(self, text: str, search_from: int) -> int:
        return text.find(TOOL_CALLS, search_from)

    def scan_calls(self, text: str, pos: int, first: bool) -> FoundCalls:
        calls: list[FunctionCall] = []
        while (marker := text.find(TOOL_CALLS, pos)) >= 0:
            body = marker + len(TOOL_CALLS)
            if text.startswith("[", skip_whitespace(text, body)):
                decoded = decode_json_at(text, body)
                if decoded is None or not isinstance(decoded[0], list):
                    break
                parsed = [function_call_from(obj) for obj in decoded[0]]
                if any(c is None for c in parsed):
                    break
                calls.extend(parsed)
            else:
                args_at = text.find(ARGS, body)
                if args_at < 0:
                    break
                decoded = decode_json_at(text, args_at + len(ARGS))
                if decoded is None:
                    break
                call = function_call_from({"name": text[body:args_at].strip(), "arguments": decoded[0]})
                if call is None:
                    break
                calls.append(call)
            pos = decoded[1]
        return FoundCalls(calls, pos)
