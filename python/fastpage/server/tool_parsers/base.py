"""The tool-parser contract, and the streaming logic shared by every format.

A parser says where a reply's tool-call region starts (region_start) and which complete calls follow
a position (scan_calls). Streaming is incremental: text before the region is sent as content as it
becomes certain (a tail that could still turn into a marker is held back); inside the region each
call is sent whole, once it is complete, and the next search resumes after it. A call can only
complete with one of its format's closing characters (a JSON call with a closing bracket), so the
pending call is parsed again only when new text brings one: the work per piece is proportional to the
piece, not to the text so far. Parsing uses str.find, json.JSONDecoder.raw_decode and (pythonic) the
ast module only: no regular expressions run on model- or user-sized text, so nothing can backtrack
catastrophically.
"""

from __future__ import annotations

import dataclasses
import json

from fastpage.server.protocol import (ChatTool, DeltaFunctionCall, DeltaMessage, DeltaToolCall, FunctionCall,
                                      ToolCall, random_id)

_decoder = json.JSONDecoder()


@dataclasses.dataclass
class Scan:
    content: str  # plain text known not to belong to a tool call
    calls: list[FunctionCall]  # complete tool calls, in order
    in_tool_region: bool = False  # a tool-call region has started (complete or not)


@dataclasses.dataclass
class FoundCalls:
    calls: list[FunctionCall]  # complete calls from the position scanned from
    resume_at: int  # everything before it is settled: the next scan starts here
    plain: bool = False  # the region turned out to hold no tool call: the whole reply is content


@dataclasses.dataclass
class ExtractedToolCalls:
    tools_called: bool
    tool_calls: list[ToolCall]
    content: str | None


class ToolParser:
    name = ""
    # Markers the model writes; a text ending in a prefix of one is held back while streaming.
    markers: tuple[str, ...] = ()
    # A call can only complete with one of these: the pending call is parsed again only when one arrives.
    closing_chars = frozenset("}]")

    def __init__(self, tools: list[ChatTool] | None = None):
        self.tools = tools  # the request's tools, for formats that need their schemas (qwen3_coder)
        self._region = -1  # where the tool-call region starts, once seen
        self._searched = 0  # the text before this holds no region start
        self._resume_at = 0
        self._scanned = 0  # length of the text when scan_calls last ran
        self._plain = False
        self._sent_content = 0
        self._sent_calls = 0

    def region_start(self, text: str, search_from: int) -> int:
        """Where the tool-call region starts (at or after search_from, which the caller keeps
        behind any marker that is not complete yet), or -1."""
        raise NotImplementedError

    def scan_calls(self, text: str, pos: int, first: bool) -> FoundCalls:
        """The complete calls after pos: the region start when first, else a previous resume_at."""
        raise NotImplementedError

    def scan(self, text: str) -> Scan:
        start = self.region_start(text, 0)
        if start < 0:
            return Scan(text, [])
        found = self.scan_calls(text, start, first=True)
        if found.plain:
            return Scan(text, [])
        return Scan(text[:start], found.calls, in_tool_region=True)

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
        delta = DeltaMessage()
        if self._plain:
            content = current_text
        elif self._region < 0:
            longest_marker = max((len(m) for m in self.markers), default=1)
            self._region = self.region_start(current_text, max(0, self._searched - longest_marker + 1))
            self._searched = len(current_text)
            if self._region < 0:
                content = current_text[:len(current_text) - held_back_length(current_text, self.markers)]
            else:
                content = current_text[:self._region]
                self._resume_at = self._region
        else:
            content = current_text[:self._region]
        if self._region >= 0 and not self._plain:
            self._scan_new_calls(current_text, delta)
            if self._plain:
                content = current_text
        if len(content) > self._sent_content:
            delta.content = content[self._sent_content:]
            self._sent_content = len(content)
        return delta if delta.content or delta.tool_calls else None

    def _scan_new_calls(self, text: str, delta: DeltaMessage) -> None:
        if self.closing_chars.isdisjoint(text[self._scanned:]):
            self._scanned = len(text)
            return  # no call can have completed
        self._scanned = len(text)
        found = self.scan_calls(text, self._resume_at, first=not self._sent_calls)
        if found.plain:
            self._plain = True
            return
        for call in found.calls:
            delta.tool_calls.append(DeltaToolCall(
                index=self._sent_calls, id=self.new_tool_call_id(), type="function",
                function=DeltaFunctionCall(name=call.name, arguments=call.arguments)))
            self._sent_calls += 1
        if found.calls:
            self._resume_at = found.resume_at

    def finish_streaming(self, final_text: str) -> DeltaMessage | None:
        """At the end of the stream: text that never became a tool call is content (as non-streamed)."""
        if self._sent_calls:
            return None
        rest = final_text[self._sent_content:]
        self._sent_content = len(final_text)
        return DeltaMessage(content=rest) if rest else None

    @property
    def streamed_tool_calls(self) -> int:
        return self._sent_calls


def held_back_length(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a marker: what a stream holds
    back because it may still become that marker (tool-call and reasoning markers alike)."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest


def skip_whitespace(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def decode_json_at(text: str, pos: int):
    """(value, end) of the JSON value starting at pos (after whitespace), or None if incomplete/bad."""
    pos = skip_whitespace(text, pos)
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


def scan_separated_calls(text: str, pos: int, separator: str, first: bool) -> FoundCalls:
    """The complete calls from pos: JSON objects {"name", "arguments" | "parameters"} one after
    another with `separator` between them, up to one that is not complete yet (the next scan resumes
    before its separator). A complete JSON value that is not a call, first in the reply, makes the
    whole reply plain content."""
    calls = []
    while (decoded := decode_json_at(text, pos)) is not None:
        call = function_call_from(decoded[0])
        if call is None:
            return FoundCalls([], pos, plain=first and not calls)
        calls.append(call)
        pos = decoded[1]
        after = skip_whitespace(text, pos)
        if not text.startswith(separator, after) or decode_json_at(text, after + 1) is None:
            break
        pos = after + 1
    return FoundCalls(calls, pos)
