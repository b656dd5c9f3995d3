"""The output processor: the only loop over a step's outputs.

It takes one StepBatch from the C++ engine loop (struct-of-arrays: a row per sequence that got tokens,
several steps merged when the caller fell behind) and, in one pass:
- appends each row's tokens and logprobs to its sequence;
- detokenizes incrementally, one batched tokenizer call for all sequences per token position;
- applies stop strings, and sends "finish" for a sequence a stop string ended back to the loop;
- applies the finish reasons the engine reported;
- builds each request's RequestOutput in its kind (DELTA for streams, FINAL_ONLY for whoever waits
  for the end, CUMULATIVE), handing it to the request's collector when it has one, or returning it.
Do not add a second loop over the outputs elsewhere: extend this one.
"""

from __future__ import annotations

import time
from typing import Callable

from fastpage.detokenizer import step_all
from fastpage.outputs import RequestOutput
from fastpage.request_state import RequestState

# C++ FinishReason values (None, Stop, Length, Abort) as vLLM names them.
FINISH_REASONS = (None, "stop", "length", "abort")


class EngineDeadError(RuntimeError):
    """The engine failed: no request can make progress any more."""


class _Row:
    __slots__ = ("state", "seq", "tokens", "logprobs", "finish_reason", "stop_token")

    def __init__(self, state, seq, tokens, logprobs, finish_reason, stop_token):
        self.state, self.seq, self.tokens, self.logprobs = state, seq, tokens, logprobs
        self.finish_reason, self.stop_token = finish_reason, stop_token


class OutputProcessor:
    """Owns the RequestStates of the live requests, by handle. Thread-safety: add() and remove() may
    run on another thread than process() (the server adds on its event loop while a thread processes);
    each is a few dict operations under the GIL, and a state is registered before its request can
    produce output."""

    def __init__(self, finish_sequence: Callable[[str, int], None]):
        self._finish_sequence = finish_sequence  # the engine loop's "finish" command
        # Optional per-request timing callbacks (the server's metrics): on_tokens(state, num_new,
        # now, first) and on_finished(state, now), with now in time.monotonic() seconds.
        self.observer = None
        self.requests: dict[int, RequestState] = {}
        self.request_ids: dict[str, int] = {}
        self.failure: str | None = None

    def __len__(self) -> int:
        return len(self.requests)

    def add(self, handle: int, state: RequestState) -> None:
        state.handle = handle
        self.requests[handle] = state
        self.request_ids[state.request_id] = handle

    def remove(self, request_id: str) -> RequestState | None:
        handle = self.request_ids.pop(request_id, None)
        return None if handle is None else self.requests.pop(handle, None)

    def process(self, batch) -> list[RequestOutput]:
        """Applies one batch; returns the outputs of the requests that have no collector."""
        requests = self.requests
        outputs: list[RequestOutput] = []
        if batch.rejected_handles:
            for handle, reason in zip(batch.rejected_handles, batch.rejected_reasons):
                self._end_with_error(requests.get(handle), ValueError(reason), outputs)
        handles = batch.handles
        progressed: dict[int, RequestState] = {}
        rows: list[_Row] = []
        if handles:
            seq_indices, offsets, token_ids = batch.seq_indices, batch.token_offsets, batch.token_ids
            finish_reasons, stop_tokens = batch.finish_reasons, batch.stop_tokens
            cumulative_logprobs, num_cached = batch.cumulative_logprobs, batch.num_cached_tokens
            logprobs = dict(zip(batch.logprob_rows, batch.logprobs)) if batch.logprob_rows else None
            prompt_logprobs = (dict(zip(batch.prompt_logprob_rows, batch.prompt_logprobs))
                               if batch.prompt_logprob_rows else None)
            for r, handle in enumerate(handles):
                state = requests.get(handle)
                if state is None:
                    continue  # aborted meanwhile
                progressed[handle] = state
                if prompt_logprobs is not None and r in prompt_logprobs:
                    state.set_prompt_logprobs(prompt_logprobs[r])
                if num_cached[r]:
                    state.num_cached_tokens = num_cached[r]
                seq = state.sequences[seq_indices[r]]
                if seq.finished:
                    continue  # already ended by a stop string; the engine's tokens after it are dropped
                seq.cumulative_logprob = cumulative_logprobs[r]
                row = _Row(state, seq, token_ids[offsets[r]:offsets[r + 1]],
                           logprobs.get(r) if logprobs is not None else None,
                           FINISH_REASONS[finish_reasons[r]], stop_tokens[r])
                if seq.detokenizer is not None:
                    rows.append(row)
                else:
                    seq.token_ids.extend(row.tokens)
                    if row.logprobs is not None:
                        for entry in row.logprobs:
                            seq.add_logprobs(entry)
                    self._apply_finish(row)
        if rows:
            self._detokenize(rows)
        now = batch.timestamp
        observer = self.observer
        for handle, state in progressed.items():
            num_tokens = sum(len(seq.token_ids) for seq in state.sequences)
            if num_tokens > state.num_tokens_seen:
                first = state.num_tokens_seen == 0
                if first:
                    state.metrics.first_token_time = time.time()
                if observer is not None:
                    observer.on_tokens(state, num_tokens - state.num_tokens_seen, now, first)
                state.num_tokens_seen = num_tokens
            output = state.output()
            if state.finished:
                requests.pop(handle, None)
                if self.request_ids.get(state.request_id) == handle:
                    del self.request_ids[state.request_id]
                if observer is not None:
                    observer.on_finished(state, now)
            if output is None:
                continue
            if state.collector is not None:
                state.collector.put(output)
            else:
                outputs.append(output)
        if batch.failure:
            self.fail_all(EngineDeadError(f"engine failed: {batch.failure}"), outputs)
        return outputs

    def _detokenize(self, rows: list[_Row]) -> None:
        """Token j of every row in one batched decode, for j = 0, 1, ... (several only when steps were
        merged): the text, and so the stop-string checks, advance token by token as they would alone."""
        position = 0
        while rows:
            deltas = step_all([row.seq.detokenizer for row in rows], [row.tokens[position] for row in rows])
            next_rows = []
            for row, delta in zip(rows, deltas):
                seq = row.seq
                seq.token_ids.append(row.tokens[position])
                if row.logprobs is not None:
                    seq.add_logprobs(row.logprobs[position])
                last = position + 1 == len(row.tokens)
                if seq.add_text(delta):
                    if row.finish_reason is None or not last:
                        self._finish_sequence(row.state.request_id, seq.index)
                elif last:
                    self._apply_finish(row)
                else:
                    next_rows.append(row)
            rows = next_rows
            position += 1

    @staticmethod
    def _apply_finish(row: _Row) -> None:
        if row.finish_reason is not None:
            stop_token = row.stop_token if row.finish_reason == "stop" and row.stop_token >= 0 else None
            row.seq.finish(row.finish_reason, stop_token)

    def _end_with_error(self, state: RequestState | None, error: BaseException,
                        outputs: list[RequestOutput]) -> None:
        """Ends a request the engine cannot run: its collector gets the error; without one, its
        output ends with finish_reason "abort"."""
        if state is None:
            return
        self.requests.pop(state.handle, None)
        if self.request_ids.get(state.request_id) == state.handle:
            del self.request_ids[state.request_id]
        if state.collector is not None:
            state.collector.fail(error)
            return
        for seq in state.sequences:
            if not seq.finished:
                seq.finish("abort")
        outputs.append(state.output())

    def fail_all(self, error: BaseException, outputs: list[RequestOutput] | None = None) -> None:
        """The engine is dead: every live request ends with the error."""
        self.failure = str(error)
        for state in list(self.requests.values()):
            self._end_with_error(state, error, outputs if outputs is not None else [])

