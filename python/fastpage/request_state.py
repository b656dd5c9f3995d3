"""Python-side state of a request between engine steps: per sequence, the tokens, the text
(incrementally detokenized, stop strings applied and held back) and the logprobs; per request,
the cumulative RequestOutput.
"""

from __future__ import annotations

import time

from fastpage.detokenizer import IncrementalDetokenizer
from fastpage.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestMetrics, RequestOutput
from fastpage.sampling_params import SamplingParams
from fastpage.stop_checker import StopChecker
from fastpage.tokenizer import Tokenizer


def position_logprobs(entry, tokenizer: Tokenizer | None) -> PositionLogprobs:
    """One position's C++ TokenLogprobs -> {token id: Logprob}: the top-k (ranks 1..k) and the
    chosen token with its own rank."""
    def text(token_id: int) -> str | None:
        return tokenizer.token_text(token_id) if tokenizer is not None else None

    result = {token_id: Logprob(logprob, rank, text(token_id))
              for rank, (token_id, logprob) in enumerate(zip(entry.top_ids, entry.top_logprobs), start=1)}
    if entry.token not in result:
        result[entry.token] = Logprob(entry.logprob, entry.rank, text(entry.token))
    return result


class SequenceState:
    def __init__(self, index: int, tokenizer: Tokenizer | None, prompt_token_ids: list[int],
                 params: SamplingParams):
        self.index = index
        self.token_ids: list[int] = []
        self.logprobs: list[PositionLogprobs] | None = [] if params.logprobs is not None else None
        self.cumulative_logprob = 0.0
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self._tokenizer = tokenizer
        self._params = params
        self._detokenizer = None
        if params.detokenize and tokenizer is not None:
            self._detokenizer = IncrementalDetokenizer(tokenizer, prompt_token_ids, params.skip_special_tokens,
                                                       params.spaces_between_special_tokens)
        self._stop_checker = StopChecker(params.stop, params.include_stop_str_in_output)
        self._text = ""  # all text decoded so far (cut at the stop string once one is found)
        self._last_token_chars = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        if self.finished:
            return self._text
        return self._text[:self._stop_checker.visible_length(self._text)]

    def add_tokens(self, token_ids: list[int], logprobs_entries=()) -> bool:
        """Appends one step's tokens (with their logprobs entries where computed) up to the first
        that completes a stop string; True when one did."""
        if self._detokenizer is None and self.logprobs is None:
            self.token_ids.extend(token_ids)  # nothing else to do per token
            return False
        for i, token_id in enumerate(token_ids):
            if self.add_token(token_id, logprobs_entries[i] if i < len(logprobs_entries) else None):
                return True
        return False

    def add_token(self, token_id: int, logprobs_entry=None) -> bool:
        """Appends one generated token; True when it completes a stop string (the sequence is
        then finished with finish_reason "stop" and stop_reason the string)."""
        self.token_ids.append(token_id)
        if self.logprobs is not None and logprobs_entry is not None:
            self.logprobs.append(position_logprobs(logprobs_entry, self._tokenizer))
        if self._detokenizer is None:
            return False
        delta = self._detokenizer.step(token_id)
        self._text += delta
        self._last_token_chars = len(delta)
        if len(self.token_ids) < self._params.min_tokens:
            return False  # as in vLLM, stop strings count only after min_tokens
        match = self._stop_checker.find(self._text, len(delta))
        if match is None:
            return False
        self._text = self._text[:match.text_end]
        self.finish_reason, self.stop_reason = "stop", match.stop
        return True

    def finish(self, finish_reason: str, stop_token: int | None = None) -> None:
        """Ends the sequence for a reason the engine reported (a stop token, length, abort)."""
        self.finish_reason = finish_reason
        if stop_token is not None:
            # EOS reports no stop_reason (vLLM); a stop_token_ids token reports itself.
            self.stop_reason = stop_token if stop_token in self._params.stop_token_ids else None
            if not self._params.include_stop_str_in_output:
                # The stop token's own text is not part of the output.
                self._text = self._text[:len(self._text) - self._last_token_chars]
                return
        if self._detokenizer is not None:
            self._text += self._detokenizer.flush()

    def to_output(self, index: int) -> CompletionOutput:
        # The engine adds up logprobs only when it computes them (logprobs asked for, or best_of > n);
        # otherwise there is nothing to report (vLLM reports None too).
        computed = self._params.logprobs is not None or self._params.best_of > self._params.n
        return CompletionOutput(index=index, text=self.text, token_ids=list(self.token_ids),
                                cumulative_logprob=self.cumulative_logprob if computed else None,
                                logprobs=None if self.logprobs is None else list(self.logprobs),
                                finish_reason=self.finish_reason, stop_reason=self.stop_reason)


class RequestState:
    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                 params: SamplingParams, tokenizer: Tokenizer | None):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.tokenizer = tokenizer
        self.sequences = [SequenceState(i, tokenizer, prompt_token_ids, params) for i in range(params.best_of)]
        self.prompt_logprobs: list[PositionLogprobs | None] | None = None
        self.num_cached_tokens = 0
        self.metrics = RequestMetrics(arrival_time=time.time())

    @property
    def finished(self) -> bool:
        return all(seq.finished for seq in self.sequences)

    def set_prompt_logprobs(self, entries) -> None:
        # Nothing predicts the first prompt token.
        self.prompt_logprobs = [None] + [position_logprobs(e, self.tokenizer) for e in entries]

    def to_output(self) -> RequestOutput:
        sequences = self.sequences
        if self.params.best_of > self.params.n:
            # best_of: the n most likely sequences (by cumulative logprob) are returned.
            sequences = sorted(sequences, key=lambda s: s.cumulative_logprob, reverse=True)[:self.params.n]
        finished = self.finished
        if finished and self.metrics.finished_time is None:
            self.metrics.finished_time = time.time()
        return RequestOutput(request_id=self.request_id, prompt=self.prompt,
                             prompt_token_ids=self.prompt_token_ids, prompt_logprobs=self.prompt_logprobs,
                             outputs=[seq.to_output(i) for i, seq in enumerate(sequences)],
                             finished=finished, num_cached_tokens=self.num_cached_tokens,
                             metrics=self.metrics)
