"""The tool-parser contract, and the streaming logic shared by every format.

A parser only says how to split model text into (plain content, complete tool calls). Streaming
re-scans the text produced so far and sends what is new: content as it becomes certain (text that
could still turn into a tool-call marker is held back) and each tool call whole, once its JSON is
complete. Parsing uses str.find and json.JSONDecoder.raw_decode only: no regular expressions run on
model- or user-sized text, so nothing can backtrack catastrophically.
"""

from __future__ import annotations

import dataclasses
import json

from fastpage.server.protocol import (DeltaFunctionCall, DeltaMessage, DeltaToolCall, FunctionCall,
                                      ToolCall, random_id)

_decoder = json.JSONDecoder()


@dataclasses.dataclass
class Scan:
    content: str  # plain text known not to belong to a tool call
    calls: list[FunctionCall]  # complete tool calls, in order
    in_tool_region: bool = False  # a tool-call region has started (complete or not)


@dataclasses.dataclass
class ExtractedToolCalls:
    tools_called: bool
    tool_calls: list[ToolCall]
    content: str | None


class ToolParser:
    name = ""
    # Markers the model writes; a text ending in a prefix of one is held back while streaming.
    markers: tuple[str, ...] = ()

    def __init__(self):
        self._sent_content = 0
        self._sent_calls = 0

    def scan(self, text: str) -> Scan:
        raise NotImplementedError

    def skip_special_tokens(self) -> bool:
        """Whether the marker survives detokenization with special tokens skipped."""
        return True

    def new_tool_call_id(self) -> str:
        return random_id("chatcmpl-tool")

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        scan = self.scan(text)
        if not scan.calls:
            return ExtractedToolCalls(False, [], text)
        calls = [ToolCall(id=self.new_tool_call_id(), function=c) for c in scan.calls]
        return ExtractedToolCalls(True, calls, scan.content or None)

    def extract_tool_calls_streaming(self, current_text: str) -> DeltaMessage | None:
        """Called with the whole text so far after every new piece; returns what to send, if any."""
        scan = self.scan(current_text)
        content = scan.content
        if not scan.in_tool_region:
            content = content[:len(content) - _held_back(content, self.markers)]
        delta = DeltaMessage()
        if len(content) > self._sent_content:
            delta.content = content[self._sent_content:]
            self._sent_content = len(content)
        for index in range(self._sent_calls, len(scan.calls)):
            call = scan.calls[index]
            delta.tool_calls.append(DeltaToolCall(
                index=index, id=self.new_tool_call_id(), type="function",
                function=DeltaFunctionCall(name=call.name, arguments=call.arguments)))
        self._sent_calls = len(scan.calls)
        return delta if delta.content or delta.tool_calls else None

    def finish_streaming(self, final_text: str) -> DeltaMessage | None:
        """At the end of the stream: text that never became a tool call is content (as non-streamed)."""
        if self.scan(final_text).calls:
            return None
        rest = final_text[self._sent_content:]
        self._sent_content = len(final_text)
        return DeltaMessage(content=rest) if rest else None

    @property
    def streamed_tool_calls(self) -> int:
        return self._sent_calls


def _held_back(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a marker."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest


def decode_json_at(text: str, pos: int):
    """(value, end) of the JSON value starting at pos (after whitespace), or None if incomplete/bad."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    try:
        return _decoder.raw_decode(text, pos)
    except (json.JSONDecodeError, RecursionError):  # deep nesting from a hostile prompt
        return None


def function_call_from(obj) -> FunctionCall | None:
    """{"name": ..., "arguments" | "parameters": {...}} -> FunctionCall, or None if not that shape."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return FunctionCall(name=obj["name"], arguments=arguments)
