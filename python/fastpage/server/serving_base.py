"""What every endpoint shares: model-name check, prompt checks against the model, SamplingParams
construction with 400s that name the field, SSE framing, and merging several request streams."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any, AsyncIterator

from fastpage.server.async_engine import AsyncEngine, RequestCollector
from fastpage.server.errors import OpenAIError, error_body, param_from_value_error
from fastpage.server.protocol import SamplingFields
from fastpage.server.reasoning_parsers import ReasoningParser


@dataclasses.dataclass
class ServingContext:
    engine: AsyncEngine
    served_model_names: list[str]
    model_path: str
    max_model_len: int
    vocab_size: int
    chat_template: str | None = None
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: type[ReasoningParser] | None = None  # --reasoning-parser

    @property
    def llm(self):
        return self.engine.engine

    @property
    def tokenizer(self):
        return self.engine.engine.tokenizer

    def check_model(self, name: str | None) -> str:
        if name is None or name in self.served_model_names:
            return name or self.served_model_names[0]
        raise OpenAIError(f"The model `{name}` does not exist.", 404, "model")

    async def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        # Long prompts take a while to tokenize: keep the event loop free for other clients.
        return await asyncio.to_thread(self.tokenizer.encode, text, add_special_tokens=add_special_tokens)

    def check_token_ids(self, token_ids, param: str) -> None:
        for token_id in token_ids:
            if not 0 <= token_id < self.vocab_size:
                raise OpenAIError(f"{param} holds token id {token_id}, outside the vocabulary "
                                  f"[0, {self.vocab_size})", 400, param)

    def resolve_max_tokens(self, num_prompt_tokens: int, max_tokens: int | None,
                           prompt_param: str = "prompt") -> int:
        """max_tokens, defaulting to the rest of the context; 400 when the request does not fit."""
        if num_prompt_tokens == 0:
            raise OpenAIError(f"{prompt_param} must not be empty", 400, prompt_param)
        room = self.max_model_len - num_prompt_tokens
        if max_tokens is None:
            max_tokens = room
        if room <= 0 or max_tokens > room:
            raise OpenAIError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                f"requested {num_prompt_tokens + max(max_tokens, 1)} tokens ({num_prompt_tokens} in "
                f"the {prompt_param}, {max(max_tokens, 1)} for the completion). Please reduce the "
                f"length of the {prompt_param} or completion.", 400,
                prompt_param if room <= 0 else "max_tokens")
        return max_tokens

    def sampling_params(self, req: SamplingFields, max_tokens: int, logprobs: int | None,
                        prompt_logprobs: int | None, skip_special_tokens: bool | None = None,
                        structured_outputs=None):
        """The request's SamplingParams; streams get DELTA outputs, the rest only the final one. The
        output follows `structured_outputs` (a StructuredOutputsParams, e.g. of an enforced tool
        choice) if given, else the request's own structured-output field, checked here so that an
        error names that field."""
        from fastpage.sampling_params import RequestOutputKind, SamplingParams
        from fastpage.server.structured_fields import structured_outputs_from

        for field in ("stop_token_ids", "allowed_token_ids"):
            self.check_token_ids(getattr(req, field) or [], field)
        logit_bias = {int(k): v for k, v in (req.logit_bias or {}).items()}
        self.check_token_ids(logit_bias, "logit_bias")
        fields: dict[str, Any] = dict(
            n=req.n, best_of=req.best_of or req.n, presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0, seed=req.seed, stop=req.stop_list(),
            stop_token_ids=req.stop_token_ids or [], ignore_eos=req.ignore_eos,
            max_tokens=max_tokens, min_tokens=req.min_tokens, logprobs=logprobs,
            prompt_logprobs=prompt_logprobs, logit_bias=logit_bias,
            allowed_token_ids=req.allowed_token_ids or None, bad_words=req.bad_words or [],
            include_stop_str_in_output=req.include_stop_str_in_output,
            skip_special_tokens=req.skip_special_tokens if skip_special_tokens is None else skip_special_tokens,
            spaces_between_special_tokens=req.spaces_between_special_tokens,
            output_kind=RequestOutputKind.DELTA if req.stream else RequestOutputKind.FINAL_ONLY)
        field = "tool_choice"
        if structured_outputs is None:
            structured_outputs, field = structured_outputs_from(req)
        if structured_outputs is not None:
            self.check_structured_outputs(structured_outputs, field)
            fields["structured_outputs"] = structured_outputs
        # Unset fields take the model's recommended values (generation_config.json, GGUF
        # general.sampling.*) as vLLM does, else SamplingParams' own defaults.
        model_defaults = self.llm.generation_defaults
        for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty"):
            value = getattr(req, name)
            if value is None:
                value = model_defaults.get(name)
            if value is not None:
                fields[name] = value
        try:
            return SamplingParams(**fields)
        except ValueError as err:
            raise OpenAIError(str(err), 400, param_from_value_error(err)) from None

    def check_structured_outputs(self, params, field: str) -> None:
        from fastpage import structured_output

        try:
            structured_output.check(params, self.llm.structured_outputs_config.any_whitespace(params))
        except ValueError as err:
            message = str(err)
            if field != "structured_outputs":
                message = message.replace(f"structured_outputs.{params.kind}", field, 1)
            raise OpenAIError(message, 400, field) from None

    async def add_requests(self, request_id: str, prompts: list[list[int]], params,
                           collector_type: type[RequestCollector] = RequestCollector) -> list:
        """Adds one engine request per prompt; all or nothing (a failure aborts the ones added)."""
        streams = []
        try:
            for i, token_ids in enumerate(prompts):
                rid = request_id if len(prompts) == 1 else f"{request_id}-{i}"
                streams.append(await self.engine.generate_stream(rid, {"prompt_token_ids": token_ids}, params,
                                                                 collector_type=collector_type))
        except BaseException as err:
            for stream in streams:
                stream.abort()
            if isinstance(err, ValueError):
                raise OpenAIError(str(err), 400, param_from_value_error(err)) from None
            raise
        return streams


async def final_outputs(streams: list) -> list:
    """Runs every stream to its end and returns each one's last (complete) output."""

    async def last(stream):
        output = None
        async for output in stream:
            pass
        return output

    tasks = [asyncio.ensure_future(last(s)) for s in streams]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def merged(streams: list) -> AsyncIterator[tuple[int, Any]]:
    """(prompt index, output) from several streams as they come."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index, stream):
        try:
            async for output in stream:
                await queue.put((index, output, None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            await queue.put((index, None, err))
            return
        await queue.put((index, None, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            index, output, error = await queue.get()
            if error is not None:
                raise error
            if output is None:
                remaining -= 1
                continue
            yield index, output
    finally:
        for task in tasks:
            task.cancel()


def sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


# One encoder for every chunk: json.dumps(..., ensure_ascii=False) would build a new one per call.
to_json = json.JSONEncoder(ensure_ascii=False).encode


class ChunkEncoder:
    """The SSE chunks of one streamed response, from a prefix encoded once per response: each
    chunk is that prefix, the choice objects already encoded as JSON, and the closing brackets."""

    def __init__(self, request_id: str, kind: str, created: int, model: str):
        self._head = (f'data: {{"id":{to_json(request_id)},"object":"{kind}","created":{created},'
                      f'"model":{to_json(model)},"choices":[')

    def chunk(self, choice_json: str) -> str:
        return f"{self._head}{choice_json}]}}\n\n"

    def usage_chunk(self, usage_info: dict) -> str:
        return f'{self._head}],"usage":{to_json(usage_info)}}}\n\n'


def sse_error(err: BaseException) -> str:
    if isinstance(err, OpenAIError):
        return sse(error_body(err.message, err.status, err.param))
    return sse(error_body(str(err) or type(err).__name__, 500))


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
