"""Reasoning parsers, chosen with --reasoning-parser (vLLM's names): they split a reasoning model's
reply into its thinking (`reasoning_content`) and the answer (`content`)."""

from __future__ import annotations

from fastpage.server.reasoning_parsers.base import ReasoningParser, StreamState, reasoning_fields
from fastpage.server.reasoning_parsers.deepseek_r1 import DeepSeekR1ReasoningParser
from fastpage.server.reasoning_parsers.qwen3 import Qwen3ReasoningParser
from fastpage.server.reasoning_parsers.streaming import ReasoningDelta, reasoning_collector

REASONING_PARSERS: dict[str, type[ReasoningParser]] = {
    parser.name: parser for parser in (DeepSeekR1ReasoningParser, Qwen3ReasoningParser)
}

__all__ = ["REASONING_PARSERS", "ReasoningDelta", "ReasoningParser", "StreamState", "reasoning_collector",
           "reasoning_fields"]
