"""Tool-call parsers, chosen with --tool-call-parser (vLLM's names)."""

from __future__ import annotations

from fastpage.server.tool_parsers.base import ExtractedToolCalls, ToolParser
from fastpage.server.tool_parsers.hermes import HermesToolParser
from fastpage.server.tool_parsers.llama3_json import Llama3JsonToolParser
from fastpage.server.tool_parsers.mistral import MistralToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    parser.name: parser for parser in (HermesToolParser, MistralToolParser, Llama3JsonToolParser)
}

__all__ = ["TOOL_PARSERS", "ExtractedToolCalls", "ToolParser"]
