"""Python-side state of a request between engine steps: per sequence, the tokens, the text
(incrementally detokenized, stop strings applied and held back), the logprobs and how much of them a
DELTA consumer has had; per request, the RequestOutput in the kind the caller asked for.
The output processor (output_processor.py) is the only code that advances it.
"""

from __future__ import annotations

import time

from fastpage.detokenizer import IncrementalDetokenizer
from fastpage.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestMetrics, RequestOutput
from fastpage.sampling_params import RequestOutputKind, SamplingParams
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
        self.tokenizer = tokenizer
        self._params = params
        self.detokenizer: IncrementalDetokenizer | None = None
        if params.detokenize and tokenizer is not None:
            self.detokenizer = IncrementalDetokenizer(tokenizer, prompt_token_ids, params.skip_special_tokens,
                                                      params.spaces_between_special_tokens)
        self._stop_checker = StopChecker(params.stop, params.include_stop_str_in_output)
        self._text = ""  # all text decoded so far (cut at the stop string once one is found)
        self._last_token_chars = 0
        # What DELTA outputs have handed out so far.
        self._sent_tokens = 0
        self._sent_chars = 0
        self._sent_finish = False

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        if self.finished:
            return self._text
        return self._text[:self._stop_checker.visible_length(self._text)]

    def add_logprobs(self, entry) -> None:
        if self.logprobs is not None:
            self.logprobs.append(position_logprobs(entry, self.tokenizer))

    def add_text(self, delta: str) -> bool:
        """The text the last appended token completed; True when it completes a stop string (the
        sequence is then finished with finish_reason "stop" and stop_reason the string)."""
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
        if self.detokenizer is not None:
            self._text += self.detokenizer.flush()

    def _logprobs_computed(self) -> bool:
        # The engine adds up logprobs only when it computes them (logprobs asked for, or best_of > n);
        # otherwise there is nothing to report (vLLM reports None too).
        return self._params.logprobs is not None or self._params.best_of > self._params.n

    def to_output(self, index: int) -> CompletionOutput:
        return CompletionOutput(index=index, text=self.text, token_ids=list(self.token_ids),
                                cumulative_logprob=self.cumulative_logprob if self._logprobs_computed() else None,
                                logprobs=None if self.logprobs is None else list(self.logprobs),
                                finish_reason=self.finish_reason, stop_reason=self.stop_reason)

    def delta_output(self, index: int) -> CompletionOutput | None:
        """What was not handed out yet, or None when there is nothing new: no visible text, no
        token, and no finish not reported yet (a finished choice is reported once)."""
        text = self.text
        sent_tokens, sent_chars = self._sent_tokens, self._sent_chars
        if len(self.token_ids) == sent_tokens and len(text) == sent_chars and self._sent_finish == self.finished:
            return None
        self._sent_tokens, self._sent_chars, self._sent_finish = len(self.token_ids), len(text), self.finished
        return CompletionOutput(index=index, text=text[sent_chars:], token_ids=self.token_ids[sent_tokens:],
                                cumulative_logprob=self.cumulative_logprob if self._logprobs_computed() else None,
                                logprobs=None if self.logprobs is None else self.logprobs[sent_tokens:],
                                finish_reason=self.finish_reason, stop_reason=self.stop_reason)


class RequestState:
    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                 params: SamplingParams, tokenizer: Tokenizer | None, collector=None):
        self.request_id = request_id
        self.handle = -1  # the engine loop's number for it, set when added
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.tokenizer = tokenizer
        self.sequences = [SequenceState(i, tokenizer, prompt_token_ids, params) for i in range(params.best_of)]
        self.prompt_logprobs: list[PositionLogprobs | None] | None = None
        self.num_cached_tokens = 0
        self.metrics = RequestMetrics(arrival_time=time.time())
        self.arrival = time.monotonic()
        self.num_tokens_seen = 0  # generated tokens, all sequences, as of the last step it progressed in
        self.last_token_time = 0.0  # monotonic seconds of that step
        # Where its outputs go instead of LLMEngine.step's return value (the server's per-request
        # collector: put(output), fail(error)).
        self.collector = collector

    @property
    def finished(self) -> bool:
        return all(seq.finished for seq in self.sequences)

    def set_prompt_logprobs(self, entries) -> None:
        # Nothing predicts the first prompt token.
        self.prompt_logprobs = [None] + [position_logprobs(e, self.tokenizer) for e in entries]

    def output(self) -> RequestOutput | None:
        """This step's output in the request's output kind, or None when it reports nothing now."""
        kind = self.params.output_kind
        finished = self.finished
        if kind is RequestOutputKind.FINAL_ONLY and not finished:
            return None
        if finished and self.metrics.finished_time is None:
            self.metrics.finished_time = time.time()
        params = self.params
        if params.best_of > params.n:
            # best_of: the n most likely sequences (by cumulative logprob); a DELTA consumer gets them
            # whole, once all are done.
            if kind is RequestOutputKind.DELTA and not finished:
                return None
            return self._request_output([seq.to_output(i) for i, seq in enumerate(self._best())], finished)
        if kind is RequestOutputKind.DELTA:
            completions = [c for c in (seq.delta_output(seq.index) for seq in self.sequences) if c is not None]
            if not completions:
                return None
            return self._request_output(completions, finished)
        return self._request_output([seq.to_output(seq.index) for seq in self.sequences], finished)

    def _best(self) -> list[SequenceState]:
        return sorted(self.sequences, key=lambda s: s.cumulative_logprob, reverse=True)[:self.params.n]

    def _request_output(self, completions: list[CompletionOutput], finished: bool) -> RequestOutput:
        return RequestOutput(request_id=self.request_id, prompt=self.prompt,
                             prompt_token_ids=self.prompt_token_ids, prompt_logprobs=self.prompt_logprobs,
                             outputs=completions, finished=finished, num_cached_tokens=self.num_cached_tokens,
                             metrics=self.metrics)
