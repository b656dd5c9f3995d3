"""LLM: the offline batch API (vLLM's `LLM`): generate, chat, beam_search."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

from fastpage.beam_search import BeamSearchOutput, BeamSearchParams, beam_search
from fastpage.engine_args import EngineArgs
from fastpage.llm_engine import LLMEngine, Prompt
from fastpage.outputs import RequestOutput
from fastpage.sampling_params import RequestOutputKind, SamplingParams
from fastpage.tokenizer import Tokenizer

Conversation = list[dict[str, Any]]


class LLM:
    def __init__(self, model: str | None = None, tokenizer: str | None = None, dtype: str = "auto",
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.9,
                 tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1, max_num_seqs: int = 256,
                 max_num_batched_tokens: int | None = None, block_size: int = 16,
                 enable_prefix_caching: bool = True, swap_space: float = 0, enforce_eager: bool = False,
                 seed: int = 0, **kwargs: Any):
        args = EngineArgs(model=model, tokenizer=tokenizer, dtype=dtype, max_model_len=max_model_len,
                          gpu_memory_utilization=gpu_memory_utilization,
                          tensor_parallel_size=tensor_parallel_size,
                          pipeline_parallel_size=pipeline_parallel_size, max_num_seqs=max_num_seqs,
                          max_num_batched_tokens=max_num_batched_tokens, block_size=block_size,
                          enable_prefix_caching=enable_prefix_caching, swap_space=swap_space,
                          enforce_eager=enforce_eager, seed=seed, **kwargs)
        self.llm_engine = LLMEngine.from_engine_args(args)
        self._request_counter = itertools.count()

    def get_tokenizer(self) -> Tokenizer:
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        return self.llm_engine.default_sampling_params()

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Generates for every prompt (a string, {"prompt": str}, {"prompt_token_ids": [...]}, or a
        list of them); returns the finished outputs in input order."""
        prompts = _as_prompt_list(prompts)
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(f"sampling_params has {len(params_list)} entries for {len(prompts)} prompts.")
        return self._run(prompts, params_list, use_tqdm)

    def chat(self, messages: Conversation | list[Conversation],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, use_tqdm: bool = True,
             chat_template: str | None = None, add_generation_prompt: bool = True,
             continue_final_message: bool = False, tools: list[dict[str, Any]] | None = None,
             chat_template_kwargs: dict[str, Any] | None = None) -> list[RequestOutput]:
        """Renders each conversation with the chat template and generates a reply."""
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        tokenizer = self.get_tokenizer()
        prompts = []
        for conversation in conversations:
            text = tokenizer.apply_chat_template(
                conversation, chat_template=chat_template, tools=tools,
                add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
                chat_template_kwargs=chat_template_kwargs)
            # The template writes the special tokens itself.
            prompts.append({"prompt": text, "prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def beam_search(self, prompts: Prompt | Sequence[Prompt], params: BeamSearchParams,
                    use_tqdm: bool = False) -> list[BeamSearchOutput]:
        return beam_search(self, _as_prompt_list(prompts), params, use_tqdm=use_tqdm)

    # ------------------------------------------------------------------ internals
    def _run(self, prompts: list[Prompt], params_list: list[SamplingParams], use_tqdm: bool
             ) -> list[RequestOutput]:
        engine = self.llm_engine
        request_ids: list[str] = []
        finished: dict[str, RequestOutput] = {}
        # Only finished outputs are read here: the engine builds no per-step output (as vLLM's LLM).
        final_only: dict[int, SamplingParams] = {}
        try:
            for prompt, params in zip(prompts, params_list):
                if isinstance(params, SamplingParams):  # anything else: add_request says what is wrong
                    if id(params) not in final_only:
                        final_only[id(params)] = dataclasses.replace(params,
                                                                     output_kind=RequestOutputKind.FINAL_ONLY)
                    params = final_only[id(params)]
                request_id = str(next(self._request_counter))
                engine.add_request(request_id, prompt, params)
                request_ids.append(request_id)
            # The loop's thread steps while this one processes the outputs.
            engine.start_loop()
            with _progress_bar(len(prompts), use_tqdm) as bar:
                while len(finished) < len(request_ids):
                    for output in engine.wait_outputs(timeout_s=0.5):
                        if output.finished:
                            finished[output.request_id] = output
                            bar.update_output(output)
        except BaseException:
            # Leave the engine clean for the next call (a bad prompt, Ctrl-C, an engine error).
            engine.abort_request([rid for rid in request_ids if rid not in finished])
            raise
        finally:
            engine.stop_loop()
        return [finished[rid] for rid in request_ids]


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(p, int) and not isinstance(p, bool) for p in prompts):
        return [prompts]  # one prompt given as token ids
    return prompts


class _progress_bar:
    """vLLM's "Processed prompts" bar with input/output token speeds; silent when disabled."""

    def __init__(self, total: int, enabled: bool):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="Processed prompts", dynamic_ncols=True,
                             postfix="est. speed input: 0.00 toks/s, output: 0.00 toks/s")
        self._input_tokens = 0
        self._output_tokens = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()

    def update_output(self, output: RequestOutput) -> None:
        if self._bar is None:
            return
        self._input_tokens += len(output.prompt_token_ids)
        self._output_tokens += sum(len(c.token_ids) for c in output.outputs)
        elapsed = self._bar.format_dict["elapsed"] or 1e-9
        self._bar.postfix = (f"est. speed input: {self._input_tokens / elapsed:.2f} toks/s, "
                             f"output: {self._output_tokens / elapsed:.2f} toks/s")
        self._bar.update(1)
