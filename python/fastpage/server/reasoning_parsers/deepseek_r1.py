"""DeepSeek-R1 (and QwQ): thinking ends at `</think>`. Its chat template opens the block in the prompt,
so the reply may lack `<think>`; a reply without `</think>` is reasoning cut short."""

from __future__ import annotations

from fastpage.server.reasoning_parsers.base import ReasoningParser


class DeepSeekR1ReasoningParser(ReasoningParser):
    name = "deepseek_r1"
