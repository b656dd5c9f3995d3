"""LLMEngine: the C++ engine plus tokenization, detokenization and stop strings.

One pass down (tokenize, validate, add to the C++ engine), one pass back (new token ids ->
text, stop strings -> RequestOutput). Not thread-safe: the caller steps it from one thread.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from fastpage.engine_args import EngineArgs
from fastpage.outputs import RequestOutput
from fastpage.request_state import RequestState
from fastpage.sampling_params import RequestOutputKind, SamplingParams
from fastpage.tokenizer import Tokenizer, load_tokenizer

Prompt = str | list[int] | dict[str, Any]


def _resolve_max_model_len(args: EngineArgs, model_max_len: int) -> int:
    max_model_len = args.max_model_len or model_max_len
    if max_model_len > model_max_len:
        raise ValueError(f"max_model_len ({max_model_len}) is larger than the model's context length "
                         f"({model_max_len}).")
    return max_model_len


def _resolve_model(model: str | None) -> str:
    if model is not None:
        return model
    from fastpage.model_loader.default_model import default_model_path

    return default_model_path()


def run_worker_node(args: EngineArgs) -> int:
    """Node k > 0 of a multi-node launch (`fastpage serve --nnodes N --node-rank K`): runs this node's
    tensor/pipeline parallel ranks, no engine and no server, until node 0 shuts down. Exit code."""
    from fastpage.distributed.launcher import run_worker_node as run_node
    from fastpage.model_loader import read_model_config

    args = dataclasses.replace(args, model=_resolve_model(args.model))
    _, model_max_len = read_model_config(args.model)
    return run_node(args, _resolve_max_model_len(args, model_max_len), args.resolved_device())


class LLMEngine:
    def __init__(self, engine, tokenizer: Tokenizer, model_config, max_model_len: int, model_name: str,
                 max_logprobs: int = 20, max_num_seqs: int | None = None,
                 generation_defaults: dict[str, Any] | None = None, parallel_runtime=None):
        self.engine = engine  # fastpage._C.Engine
        # fastpage.distributed.launcher.ParallelRuntime when tensor/pipeline parallel: the workers.
        self.parallel_runtime = parallel_runtime
        self.tokenizer = tokenizer
        self.model_config = model_config
        self.max_model_len = max_model_len
        self.model_name = model_name
        self.max_logprobs = max_logprobs
        self.max_num_seqs = max_num_seqs
        self.generation_defaults = dict(generation_defaults or {})
        self._requests: dict[str, RequestState] = {}

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> LLMEngine:
        from fastpage import _C
        from fastpage.model_loader import load_model

        if args.node_rank != 0:
            raise ValueError(f"node_rank {args.node_rank}: the engine runs on node 0; the other nodes run "
                             "workers only (`fastpage serve ... --node-rank K`).")
        model = _resolve_model(args.model)
        device = args.resolved_device()
        runtime = None
        parallel = None
        if args.world_size > 1:
            from fastpage.distributed.launcher import ParallelRuntime, device_for_rank
            from fastpage.model_loader import read_model_config

            model_config, model_max_len = read_model_config(model)
            max_model_len = _resolve_max_model_len(args, model_max_len)
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
            max_model_len = _resolve_max_model_len(args, loaded.max_model_len)
            tokenizer = load_tokenizer(args.tokenizer or loaded.tokenizer_source, loaded.eos_token_ids,
                                       loaded.chat_template)
            dtype = loaded.weights["embed_tokens.weight"].dtype
            config = args.engine_config(max_model_len)
            if parallel is not None:
                config.parallel = parallel
            engine = _C.Engine(loaded.model_config, config, loaded.weights, device, dtype)
        except BaseException:
            if runtime is not None:
                runtime.fail("rank 0 failed to start")
                runtime.shutdown()
            raise
        return cls(engine, tokenizer, loaded.model_config, max_model_len, model_name=model,
                   max_logprobs=args.max_logprobs, max_num_seqs=args.max_num_seqs,
                   generation_defaults=loaded.generation_defaults, parallel_runtime=runtime)

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

    def add_request(self, request_id: str, prompt: Prompt, params: SamplingParams, priority: int = 0) -> None:
        """Tokenizes and validates, then queues the request; ValueError for bad input."""
        self.check_health()
        if request_id in self._requests:
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
        c_params = params.to_c_params(max_tokens, params.bad_words_token_ids(self.tokenizer))
        self.engine.add_request(request_id, prompt_token_ids, c_params, list(self.tokenizer.eos_token_ids),
                                priority)
        self._requests[request_id] = RequestState(request_id, prompt_text, prompt_token_ids, params,
                                                  self.tokenizer)

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
            if self._requests.pop(rid, None) is not None:
                self.engine.abort_request(rid)

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self._requests)

    # ------------------------------------------------------------------ stepping
    def step(self) -> list[RequestOutput]:
        """Runs one engine step; returns the cumulative output of every request that progressed
        (finished ones included, after which they are forgotten); a request whose output_kind is
        FINAL_ONLY only once it finished. With async scheduling the tokens are those of the step
        before (launched in the previous call); has_unfinished_requests() stays true until they came."""
        requests = self._requests
        progressed: dict[str, RequestState] = {}
        # Per sequence and step this is the host's critical path at large batches: each attribute of
        # a StepOutput is read once (pybind11 converts its vectors to new lists on every read), and
        # only where the request's parameters say the engine filled it.
        for out in self._engine_step():
            request_id = out.request_id
            state = requests.get(request_id)
            if state is None:
                continue  # aborted meanwhile
            progressed[request_id] = state
            params = state.params
            if params.prompt_logprobs is not None:
                prompt_logprobs = out.prompt_logprobs
                if prompt_logprobs:
                    state.set_prompt_logprobs(prompt_logprobs)
            if out.num_prompt_tokens:
                state.num_cached_tokens = out.num_cached_tokens
            seq = state.sequences[out.seq_index]
            if seq.finished:
                continue  # already ended by a stop string
            new_token_ids = out.new_token_ids
            if new_token_ids and state.metrics.first_token_time is None:
                state.metrics.first_token_time = time.time()
            seq.cumulative_logprob = out.cumulative_logprob
            stopped = seq.add_tokens(new_token_ids, out.logprobs if params.logprobs is not None else ())
            if stopped:
                if not out.finished:
                    self.engine.finish_sequence(request_id, out.seq_index)
            elif out.finished:
                reason = out.finish_reason.name.lower()  # FinishReason.Stop / Length / Abort
                seq.finish(reason, out.stop_token if reason == "stop" and out.stop_token >= 0 else None)

        outputs = []
        for request_id, state in progressed.items():
            finished = state.finished
            if not finished and state.params.output_kind is RequestOutputKind.FINAL_ONLY:
                continue
            outputs.append(state.to_output())
            if finished:
                del requests[request_id]
        return outputs

    def _engine_step(self):
        self.check_health()
        if self.parallel_runtime is None:
            return self.engine.step()
        try:
            return self.engine.step()
        except RuntimeError as e:
            self.parallel_runtime.fail(f"a step failed: {e}")
            raise RuntimeError(f"fastpage: the parallel engine is dead: {self.parallel_runtime.failure}") from e

    def get_stats(self) -> dict[str, Any]:
        stats = self.engine.stats()
        names = ("num_running", "num_waiting", "num_swapped", "num_device_blocks", "num_free_device_blocks",
                 "num_preemptions", "prefix_cache_queries", "prefix_cache_hits", "prompt_tokens",
                 "generation_tokens")
        result: dict[str, Any] = {name: getattr(stats, name) for name in names}
        total = result["num_device_blocks"]
        result["kv_cache_usage"] = 1.0 - result["num_free_device_blocks"] / total if total else 0.0
        result["num_unfinished_requests"] = len(self._requests)
        return result

    def get_tokenizer(self) -> Tokenizer:
        return self.tokenizer
