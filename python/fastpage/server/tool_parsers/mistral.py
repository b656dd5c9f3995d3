"""Mistral format: [TOOL_CALLS] then either a JSON list of {"name", "arguments"} (v3 tokenizer)
or name[ARGS]{...} per call (v11 tokenizer). [TOOL_CALLS] is a special token, so the request keeps
special tokens in the text while this parser is active."""

from __future__ import annotations

import random
import string

from fastpage.server.tool_parsers.base import Scan, ToolParser, decode_json_at, function_call_from
from fastpage.server.protocol import FunctionCall

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

    def scan(self, text: str) -> Scan:
        start = text.find(TOOL_CALLS)
        if start < 0:
            return Scan(text, [])
        calls: list[FunctionCall] = []
        pos = start
        while pos >= 0:
            pos += len(TOOL_CALLS)
            rest = text[pos:].lstrip()
            if rest.startswith("["):
                decoded = decode_json_at(text, pos)
                if decoded is None or not isinstance(decoded[0], list):
                    break
                parsed = [function_call_from(obj) for obj in decoded[0]]
                if any(c is None for c in parsed):
                    break
                calls.extend(parsed)
                end = decoded[1]
            else:
                args_at = text.find(ARGS, pos)
                if args_at < 0:
                    break
                decoded = decode_json_at(text, args_at + len(ARGS))
                if decoded is None:
                    break
                call = function_call_from({"name": text[pos:args_at].strip(), "arguments": decoded[0]})
                if call is None:
                    break
                calls.append(call)
                end = decoded[1]
            pos = text.find(TOOL_CALLS, end)
        return Scan(text[:start], calls, in_tool_region=True)
