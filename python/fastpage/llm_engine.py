"""LLMEngine: the C++ engine loop plus tokenization, the output processor and the user-facing API.

One pass down (tokenize, validate, queue an "add" command on the engine loop), one pass back (the
loop's batched step outputs -> the output processor -> RequestOutputs). Driven two ways, through the
same loop: step() runs one engine step on the calling thread; start_loop() lets the loop's own C++
thread step back to back while the caller takes outputs with wait_outputs() (LLM.generate, the
server). add_request and abort_request are safe from any thread; the rest belongs to one thread.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from fastpage.engine_args import EngineArgs
from fastpage.output_processor import OutputProcessor
from fastpage.outputs import RequestOutput
from fastpage.request_state import RequestState
from fastpage.sampling_params import SamplingParams
from fastpage.structured_output import StructuredOutputsConfig
from fastpage.tokenizer import Tokenizer, load_tokenizer

Prompt = str | list[int] | dict[str, Any]
# The C++ EngineStats fields, as get_stats() reports them.
ENGINE_STATS_FIELDS = ("num_running", "num_waiting", "num_swapped", "num_device_blocks", "num_free_device_blocks",
                       "num_preemptions", "prefix_cache_queries", "prefix_cache_hits", "prompt_tokens",
                       "generation_tokens")


class LLMEngine:
    def __init__(self, engine, tokenizer: Tokenizer, model_config, max_model_len: int, model_name: str,
                 max_logprobs: int = 20, max_num_seqs: int | None = None,
                 generation_defaults: dict[str, Any] | None = None, parallel_runtime=None,
                 tokenizer_source: str | None = None,
                 structured_outputs_config: StructuredOutputsConfig | None = None):
        self.engine = engine  # fastpage._C.EngineLoop, or server.remote_loop.RemoteLoop in an API server
        # fastpage.distributed.launcher.ParallelRuntime when tensor/pipeline parallel: the workers.
        self.parallel_runtime = parallel_runtime
        self.tokenizer = tokenizer
        self.tokenizer_source = tokenizer_source  # where the tokenizer was loaded from
        self.model_config = model_config
        self.max_model_len = max_model_len
        self.model_name = model_name
        self.max_logprobs = max_logprobs
        self.max_num_seqs = max_num_seqs
        self.generation_defaults = dict(generation_defaults or {})
        self.structured_outputs_config = structured_outputs_config or StructuredOutputsConfig()
        # A reasoning model's end-of-thinking marker in token ids (the server's --reasoning-parser):
        # a structured output is enforced after it.
        self.reasoning_end_token_ids: list[int] = []
        self._handles = itertools.count()
        # Through self, not a bound method of the loop: shutdown() must be able to drop the last reference.
        self.processor = OutputProcessor(self._finish_sequence)

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> LLMEngine:
        from fastpage import _C
        from fastpage.model_loader import load_model
        from fastpage.structured_output import attach_xgrammar

        if args.node_rank != 0:
            raise ValueError(f"node_rank {args.node_rank}: the engine runs on node 0; the other nodes run "
                             "workers only (`fastpage serve ... --node-rank K`).")
        model = args.resolved_model()
        device = args.resolved_device()
        runtime = None
        parallel = None
        if args.world_size > 1:
            from fastpage.distributed.launcher import ParallelRuntime, device_for_rank
            from fastpage.model_loader import read_model_config

            model_config, model_max_len = read_model_config(model)
            max_model_len = args.resolved_max_model_len(model_max_len)
            probe = _C.ParallelConfig()
            probe.tensor_parallel_size, probe.pipeline_parallel_size = (args.tensor_parallel_size,
                                                                        args.pipeline_parallel_size)
            _C.model_shard(model_config, probe)  # ValueError naming the field before any process starts
            device = device_for_rank(device, 0)
            runtime = ParallelRuntime(dataclasses.replace(args, model=model), max_model_len, device)
            parallel = runtime.parallel_config
        try:
            loaded = load_model(model, dtype=args.dtype, device=device, load_format=args.load_format,
                                parallel=parallel)
            max_model_len = args.resolved_max_model_len(loaded.max_model_len)
            tokenizer_source = args.tokenizer or loaded.tokenizer_source
            tokenizer = load_tokenizer(tokenizer_source, loaded.eos_token_ids, loaded.chat_template)
            dtype = loaded.weights["embed_tokens.weight"].dtype
            config = args.engine_config(max_model_len)
            if parallel is not None:
                config.parallel = parallel
            engine = _C.EngineLoop(loaded.model_config, config, loaded.weights, device, dtype)
            structured_outputs_config = StructuredOutputsConfig.from_json(args.structured_outputs_config)
            attach_xgrammar(engine, tokenizer, loaded.model_config.vocab_size, structured_outputs_config)
        except BaseException:
            if runtime is not None:
                runtime.fail("rank 0 failed to start")
                runtime.shutdown()
            raise
        return cls(engine, tokenizer, loaded.model_config, max_model_len, model_name=model,
                   max_logprobs=args.max_logprobs, max_num_seqs=args.max_num_seqs,
                   generation_defaults=loaded.generation_defaults, parallel_runtime=runtime,
                   tokenizer_source=tokenizer_source, structured_outputs_config=structured_outputs_config)

    def check_health(self) -> None:
        """RuntimeError when the engine cannot serve: a tensor/pipeline parallel worker died or a
        step with the other ranks failed."""
        if self.parallel_runtime is not None:
            self.parallel_runtime.check()
        if self.engine is None:
            raise RuntimeError("fastpage: the engine has been shut down")

    def shutdown(self) -> None:
        """Releases the engine; with parallel workers, tells them to stop and reaps them. Idempotent;
        also run when the LLMEngine is garbage-collected."""
        runtime = self.parallel_runtime
        if runtime is not None:
            runtime.stop_watching()
        if self.engine is not None:
            self.engine.stop()
        self.engine = None  # the C++ destructor sends the workers shutdown
        if runtime is not None:
            runtime.shutdown()
            self.parallel_runtime = None

    def __del__(self) -> None:
        if getattr(self, "parallel_runtime", None) is not None:
            self.shutdown()

    # ------------------------------------------------------------------ requests
    def default_sampling_params(self) -> SamplingParams:
        """SamplingParams with the model's generation_config.json defaults (as vLLM does; the
        loaders already name them as SamplingParams does)."""
        fields = {f.name for f in dataclasses.fields(SamplingParams)}
        return SamplingParams(**{k: v for k, v in self.generation_defaults.items() if k in fields})

    def add_request(self, request_id: str, prompt: Prompt, params: SamplingParams, priority: int = 0,
                    collector=None) -> None:
        """Tokenizes and validates, then queues the request; ValueError for bad input. With a
        collector (put(output), fail(error)), the request's outputs go there instead of step()'s
        return value."""
        self.check_health()
        if request_id in self.processor.request_ids:
            raise ValueError(f"request_id {request_id!r} is already in use.")
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}.")
        prompt_text, prompt_token_ids = self.tokenize_prompt(prompt)
        vocab_size = self.model_config.vocab_size
        params.verify_for_model(vocab_size, self.max_logprobs, self.max_num_seqs)
        num_prompt = len(prompt_token_ids)
        max_tokens = params.max_tokens if params.max_tokens is not None else self.max_model_len - num_prompt
        if num_prompt + max(max_tokens, 1) > self.max_model_len:
            raise ValueError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{num_prompt + max_tokens} tokens ({num_prompt} in the prompt, {max_tokens} in the "
                f"completion). Please reduce the length of the prompt or completion.")
        c_params = params.to_c_params(max_tokens, params.bad_words_token_ids(self.tokenizer),
                                      self._structured_output(params, prompt_token_ids))
        # Registered before the loop can run it, so no output of it can arrive unclaimed.
        handle = next(self._handles)
        state = RequestState(request_id, prompt_text, prompt_token_ids, params, self.tokenizer, collector)
        self.processor.add(handle, state)
        try:
            self.engine.add_request(handle, request_id, prompt_token_ids, c_params,
                                    list(self.tokenizer.eos_token_ids), priority)
        except BaseException:
            self.processor.remove(request_id)
            raise

    def _structured_output(self, params: SamplingParams, prompt_token_ids: list[int]):
        """The C++ StructuredOutput of params.structured_outputs (checked: ValueError), or None."""
        if params.structured_outputs is None:
            return None
        from fastpage import structured_output

        any_whitespace = self.structured_outputs_config.any_whitespace(params.structured_outputs)
        structured_output.check(params.structured_outputs, any_whitespace)
        # With a reasoning parser the grammar starts after the thinking, unless the prompt ended it
        # already (a template that closes the thinking when it is switched off).
        reasoning = bool(self.reasoning_end_token_ids) and not self._prompt_closes_thinking(prompt_token_ids)
        return structured_output.to_c(params.structured_outputs, any_whitespace,
                                      self.reasoning_end_token_ids if reasoning else None)

    def _prompt_closes_thinking(self, prompt_token_ids: list[int]) -> bool:
        """The prompt ends with the end-of-thinking marker and whitespace (vLLM's
        prompt_is_reasoning_end): the reply is the answer from its first token."""
        marker = self.reasoning_end_token_ids
        tail = prompt_token_ids[-(len(marker) + 8):]
        for start in range(len(tail) - len(marker), -1, -1):
            if tail[start:start + len(marker)] == marker:
                return not self.tokenizer.decode(tail[start + len(marker):]).strip()
        return False

    def tokenize_prompt(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            text, token_ids = prompt, self.tokenizer.encode(prompt)
        elif isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            text, token_ids = prompt.get("prompt"), prompt["prompt_token_ids"]
        elif isinstance(prompt, dict) and isinstance(prompt.get("prompt"), str):
            text, token_ids = prompt["prompt"], self.tokenizer.encode(prompt["prompt"])
        elif isinstance(prompt, list):
            text, token_ids = None, prompt
        else:
            raise ValueError("prompt must be a string, a list of token ids, {'prompt': str} or "
                             f"{{'prompt_token_ids': [...]}}; got {type(prompt).__name__}.")
        if not token_ids:
            raise ValueError("prompt must not be empty.")
        vocab_size = self.model_config.vocab_size
        for token_id in token_ids:
            if not isinstance(token_id, int) or isinstance(token_id, bool) or not 0 <= token_id < vocab_size:
                raise ValueError(f"prompt_token_ids: {token_id!r} is not a token id of the vocabulary "
                                 f"(0 <= id < {vocab_size}).")
        return text, list(token_ids)

    def abort_request(self, request_id: str | list[str]) -> None:
        for rid in [request_id] if isinstance(request_id, str) else request_id:
            if self.processor.remove(rid) is not None:
                self.engine.abort_request(rid)

    def has_unfinished_requests(self) -> bool:
        return len(self.processor) > 0

    def get_num_unfinished_requests(self) -> int:
        return len(self.processor)

    # ------------------------------------------------------------------ stepping
    def step(self) -> list[RequestOutput]:
        """Runs one engine step on this thread; returns the outputs of the requests that progressed,
        each in its output_kind (CUMULATIVE: everything so far; DELTA: what is new; FINAL_ONLY: only
        once finished); a finished request is forgotten after its last output. With async scheduling
        the tokens are those of the step before (launched in the previous call), and
        has_unfinished_requests() stays true until they came."""
        self.check_health()
        if self.engine.running:
            raise RuntimeError("LLMEngine.step: the engine loop is running on its own thread (start_loop); "
                               "take outputs with wait_outputs()")
        try:
            self.engine.step()
        except RuntimeError:
            pass  # the failure is in the batch too: _process ends every request, then raises
        return self._process(self.engine.take())

    def start_loop(self) -> None:
        """The engine loop's own thread steps from now on, until stop_loop(); take the outputs
        with wait_outputs()."""
        self.engine.start()

    def stop_loop(self) -> None:
        self.engine.stop()

    def wait_outputs(self, timeout_s: float) -> list[RequestOutput]:
        """With the loop started: the outputs of every step since the last call (waits up to
        timeout_s for one)."""
        return self._process(self.engine.take(timeout_s))

    def _process(self, batch) -> list[RequestOutput]:
        outputs = self.processor.process(batch)
        if batch.failure:
            self._engine_failed(RuntimeError(batch.failure))
        return outputs

    def _engine_failed(self, error: RuntimeError):
        if self.parallel_runtime is not None:
            self.parallel_runtime.fail(f"a step failed: {error}")
            raise RuntimeError(f"fastpage: the parallel engine is dead: {self.parallel_runtime.failure}") from error
        raise RuntimeError(f"fastpage: the engine failed: {error}") from error

    def _finish_sequence(self, request_id: str, seq_index: int) -> None:
        self.engine.finish_sequence(request_id, seq_index)

    def check_invariants(self) -> None:
        """The engine's block and queue invariants (between steps); RuntimeError if broken."""
        self.engine.check_invariants()

    def get_stats(self) -> dict[str, Any]:
        return self.stats_dict(self.engine.stats())

    def stats_dict(self, stats) -> dict[str, Any]:
        """A C++ EngineStats as a dict, with kv_cache_usage and the unfinished requests."""
        result: dict[str, Any] = {name: getattr(stats, name) for name in ENGINE_STATS_FIELDS}
        total = result["num_device_blocks"]
        result["kv_cache_usage"] = 1.0 - result["num_free_device_blocks"] / total if total else 0.0
        result["num_unfinished_requests"] = len(self.processor)
        return result

    def get_tokenizer(self) -> Tokenizer:
        return self.tokenizer

