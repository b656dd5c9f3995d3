"""Streamed chat replies split into reasoning and content on the outputs thread, before any other
per-output work: a collector class wraps another (the plain one or the tool-call one) and hands it
outputs whose text is already content only, so tool calls are parsed from the reply after its
reasoning, and none of this work runs on the event loop."""

from __future__ import annotations

from fastpage.server.async_engine import RequestCollector
from fastpage.server.reasoning_parsers.base import ReasoningParser


class ReasoningDelta:
    """What the wrapped collector made of a DELTA output whose choices' text is their content, and
    per choice index the reasoning text split off it."""

    def __init__(self, inner, reasoning: dict[int, str]):
        self.inner = inner
        self.reasoning = reasoning

    @property
    def finished(self) -> bool:
        return self.inner.finished

    def add(self, later: ReasoningDelta) -> ReasoningDelta:
        self.inner = self.inner.add(later.inner)
        for i, text in later.reasoning.items():
            self.reasoning[i] = self.reasoning.get(i, "") + text
        return self


def reasoning_collector(parser: ReasoningParser, n: int,
                        inner: type[RequestCollector] = RequestCollector) -> type[RequestCollector]:
    """A collector that splits each of the n choices' new text with the request's reasoning parser,
    then runs `inner`'s per-output work on what is left (the content)."""

    class ReasoningCollector(inner):
        def __init__(self, waker):
            super().__init__(waker)
            self._states = [parser.new_stream_state() for _ in range(n)]

        def prepare(self, output) -> ReasoningDelta:
            reasoning = {}
            for completion in output.outputs:
                delta = parser.extract_streaming(completion.text, self._states[completion.index],
                                                 final=completion.finish_reason is not None)
                # The output belongs to this request alone: its text becomes the content, which is
                # all the wrapped collector and the chat deltas see.
                completion.text = delta.get("content", "")
                if "reasoning_content" in delta:
                    reasoning[completion.index] = delta["reasoning_content"]
            return ReasoningDelta(super().prepare(output), reasoning)

    return ReasoningCollector
