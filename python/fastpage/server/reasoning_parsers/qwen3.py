"""Qwen3: `<think>...</think>`, written by the model (Qwen3 up to the 2507 release) or opened by the
chat template (Qwen3-Thinking-2507, Qwen3.5). As vLLM's qwen3 parser (since v0.19), a reply without
`</think>` is reasoning cut short, unless the request turned thinking off with
chat_template_kwargs={"enable_thinking": false}: then the whole reply is content."""

from __future__ import annotations

from fastpage.server.reasoning_parsers.base import ReasoningParser, ended_in_prompt


class Qwen3ReasoningParser(ReasoningParser):
    name = "qwen3"

    @classmethod
    def for_request(cls, prompt: str, continue_final_message: bool,
                    chat_template_kwargs: dict | None) -> ReasoningParser:
        thinking = (chat_template_kwargs or {}).get("enable_thinking", True)
        return cls(reasoning_already_ended=not thinking or ended_in_prompt(prompt, continue_final_message))
