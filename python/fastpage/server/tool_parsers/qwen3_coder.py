"""Qwen3-Coder format: XML-like tags, one parameter per tag, values as raw text:

<tool_call>
<function=get_weather>
<parameter=city>
Paris
</parameter>
</function>
</tool_call>

Values are typed with the tool's JSON schema when the parser was given the request's tools (a
"string" parameter stays text, integer/number/boolean/object/array are parsed); without a schema for
the parameter, a value that parses as JSON is taken as that JSON value and any other stays text.
"""

from __future__ import annotations

import json

from fastpage.server.protocol import ChatTool, FunctionCall
from fastpage.server.tool_parsers.base import FoundCalls, ToolParser

TOOL_CALL, FUNCTION, FUNCTION_END = "<tool_call>", "<function=", "</function>"
PARAMETER, PARAMETER_END = "<parameter=", "</parameter>"


class Qwen3CoderToolParser(ToolParser):
    name = "qwen3_coder"
    markers = (TOOL_CALL,)
    closing_chars = frozenset(">")  # a call completes with its </function>

    def __init__(self, tools: list[ChatTool] | None = None):
        super().__init__(tools)
        self._schemas = {tool.function.name: (tool.function.parameters or {}).get("properties") or {}
                         for tool in tools or ()}

    def region_start(self, text: str, search_from: int) -> int:
        return text.find(TOOL_CALL, search_from)

    def scan_calls(self, text: str, pos: int, first: bool) -> FoundCalls:
        calls = []
        while (start := text.find(FUNCTION, pos)) >= 0:
            end = text.find(FUNCTION_END, start)
            if end < 0:
                break  # not complete yet
            call = self._call(text, start + len(FUNCTION), end)
            if call is None:
                break
            calls.append(call)
            pos = end + len(FUNCTION_END)
        return FoundCalls(calls, pos)

    def _call(self, text: str, start: int, end: int) -> FunctionCall | None:
        """The call whose name starts at `start` (after '<function=') and whose body ends at `end`."""
        name_end = text.find(">", start, end)
        name = text[start:name_end].strip() if name_end >= 0 else ""
        if not name:
            return None
        schema = self._schemas.get(name, {})
        arguments = {}
        pos = name_end + 1
        while (tag := text.find(PARAMETER, pos, end)) >= 0:
            key_end = text.find(">", tag, end)
            value_end = text.find(PARAMETER_END, key_end, end) if key_end >= 0 else -1
            if value_end < 0:
                return None  # every parameter is closed before its </function>
            key = text[tag + len(PARAMETER):key_end].strip()
            value = text[key_end + 1:value_end]
            # The format puts the value on lines of its own: those two newlines are not part of it.
            value = value.removeprefix("\n").removesuffix("\n")
            arguments[key] = _typed_value(value, schema.get(key))
            pos = value_end + len(PARAMETER_END)
        return FunctionCall(name=name, arguments=json.dumps(arguments, ensure_ascii=False))


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


# NaN and Infinity are not JSON: a value spelled so stays text.
_json_decoder = json.JSONDecoder(parse_constant=_reject_constant)
_NOT_JSON = object()


def _json_value(text: str):
    try:
        return _json_decoder.decode(text)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _typed_value(value: str, schema: dict | None):
    """A parameter's text as its schema's type; without a schema type, its JSON value if it has one."""
    declared = schema.get("type") if isinstance(schema, dict) else None
    if declared is None:
        parsed = _json_value(value)
        return value if parsed is _NOT_JSON else parsed
    types = declared if isinstance(declared, list) else [declared]
    if "string" in types:
        return value
    parsed = _json_value(value.strip())
    for kind in types:
        if kind == "boolean" and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if parsed is _NOT_JSON:
            continue
        if ((kind == "integer" and type(parsed) is int)
                or (kind == "number" and type(parsed) in (int, float))
                or (kind == "object" and isinstance(parsed, dict))
                or (kind == "array" and isinstance(parsed, list))
                or (kind == "null" and parsed is None)):
            return parsed
    return value  # not of the declared type: the text as the model wrote it
