"""What generation returns, shaped like vLLM's RequestOutput / CompletionOutput."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Logprob:
    logprob: float
    rank: int | None = None  # 1 = the most likely token
    decoded_token: str | None = None


# Per position: token id -> Logprob, holding the top-k tokens and the sampled (or prompt) token.
PositionLogprobs = dict[int, Logprob]
SampleLogprobs = list[PositionLogprobs]
# Per prompt position; the first is None (nothing predicts the first token).
PromptLogprobs = list[PositionLogprobs | None]


@dataclasses.dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: SampleLogprobs | None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclasses.dataclass
class RequestMetrics:
    arrival_time: float
    first_token_time: float | None = None
    finished_time: float | None = None


@dataclasses.dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: PromptLogprobs | None
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    metrics: RequestMetrics | None = None

    def add(self, later: RequestOutput) -> RequestOutput:
        """Merges a later DELTA output of the same request into this one (vLLM's RequestOutput.add):
        each completion's new text, tokens and logprobs are appended, its finish state is the
        later one's. Returns self."""
        by_index = {c.index: c for c in self.outputs}
        for completion in later.outputs:
            merged = by_index.get(completion.index)
            if merged is None:
                self.outputs.append(completion)
                by_index[completion.index] = completion
                continue
            merged.text += completion.text
            merged.token_ids = merged.token_ids + completion.token_ids
            if completion.logprobs is not None:
                merged.logprobs = (merged.logprobs or []) + completion.logprobs
            merged.cumulative_logprob = completion.cumulative_logprob
            merged.finish_reason, merged.stop_reason = completion.finish_reason, completion.stop_reason
        if self.prompt_logprobs is None:
            self.prompt_logprobs = later.prompt_logprobs
        self.finished = later.finished
        self.num_cached_tokens = later.num_cached_tokens or self.num_cached_tokens
        self.metrics = later.metrics
        return self
