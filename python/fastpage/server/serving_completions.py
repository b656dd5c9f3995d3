"""/v1/completions: string, list and token-id prompts; n, best_of, echo, logprobs, streaming."""

from __future__ import annotations

import time

from fastapi.responses import StreamingResponse

from fastpage.server.protocol import CompletionRequest, random_id
from fastpage.server.serving_base import (ChunkEncoder, ServingContext, final_outputs, merged, sse, sse_error,
                                          to_json, usage)


async def create_completion(ctx: ServingContext, req: CompletionRequest):
    model = ctx.check_model(req.model)
    prompts: list[list[int]] = []
    for prompt in req.prompts():
        if isinstance(prompt, str):
            prompts.append(await ctx.encode(prompt, add_special_tokens=True))
        else:
            ctx.check_token_ids(prompt, "prompt")
            prompts.append(list(prompt))
    # Every prompt gets the same max_tokens; each one must fit in the context with it.
    max_tokens = min(ctx.resolve_max_tokens(len(p), req.max_tokens) for p in prompts)
    echo_logprobs = req.logprobs if req.echo and req.logprobs is not None else None
    prompt_logprobs = req.prompt_logprobs if req.prompt_logprobs is not None else echo_logprobs
    params = ctx.sampling_params(req, max_tokens, req.logprobs, prompt_logprobs)
    request_id = random_id("cmpl")
    created = int(time.time())
    streams = await ctx.add_requests(request_id, prompts, params)
    if req.stream:
        return StreamingResponse(_stream(ctx, req, model, request_id, created, prompts, streams),
                                 media_type="text/event-stream")
    try:
        outputs = await final_outputs(streams)
    finally:
        for stream in streams:
            stream.abort()
    choices = []
    completion_tokens = 0
    for p, output in enumerate(outputs):
        for completion in output.outputs:
            completion_tokens += len(completion.token_ids)
            text, logprobs = completion.text, None
            if req.logprobs is not None:
                logprobs = _logprobs(ctx, completion.token_ids, completion.logprobs, 0)
            if req.echo:
                prompt_text = ctx.tokenizer.decode(prompts[p])
                if logprobs is not None:
                    echoed = _logprobs(ctx, prompts[p], _aligned_prompt_logprobs(output), 0)
                    logprobs = _concat_logprobs(echoed, logprobs, len(prompt_text))
                text = prompt_text + text
            choices.append({
                "index": p * req.n + completion.index, "text": text, "logprobs": logprobs,
                "finish_reason": completion.finish_reason, "stop_reason": completion.stop_reason,
                "prompt_logprobs": _prompt_logprobs(output) if req.prompt_logprobs is not None else None})
    num_prompt_tokens = sum(len(p) for p in prompts)
    return {"id": request_id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage(num_prompt_tokens, completion_tokens)}


async def _stream(ctx, req, model, request_id, created, prompts, streams):
    """One SSE chunk per choice that progressed; the outputs are DELTAs, so a finished choice is
    never sent again."""
    sent_chars: dict[int, int] = {}  # per choice index: text sent so far (the logprobs' text offsets)
    completion_tokens = 0
    encoder = ChunkEncoder(request_id, "text_completion", created, model)
    single = streams[0] if len(streams) == 1 else None  # the common case, without merged()'s tasks
    try:
        async for item in single if single is not None else merged(streams):
            p, output = (0, item) if single is not None else item
            chunks = []
            for completion in output.outputs:
                index = p * req.n + completion.index
                text = completion.text
                text_from = sent_chars.get(index)
                if text_from is None:
                    text_from = 0
                    if req.echo:
                        text = ctx.tokenizer.decode(prompts[p]) + text
                logprobs = "null"
                if req.logprobs is not None:
                    logprobs = to_json(_logprobs(ctx, completion.token_ids, completion.logprobs or [], text_from))
                completion_tokens += len(completion.token_ids)
                sent_chars[index] = text_from + len(completion.text)
                finish = "null" if completion.finish_reason is None else to_json(completion.finish_reason)
                stop = "null" if completion.stop_reason is None else to_json(completion.stop_reason)
                chunks.append(encoder.chunk(f'{{"index":{index},"text":{to_json(text)},"logprobs":{logprobs},'
                                            f'"finish_reason":{finish},"stop_reason":{stop}}}'))
            if chunks:
                yield "".join(chunks)
        if req.stream_options and req.stream_options.include_usage:
            yield encoder.usage_chunk(usage(sum(len(p) for p in prompts), completion_tokens))
    except Exception as err:  # noqa: BLE001 - the status is sent already; report in the stream
        yield sse_error(err)
    finally:
        for stream in streams:
            stream.abort()
    yield sse("[DONE]")


def _token_text(ctx, token_id: int, logprob) -> str:
    decoded = getattr(logprob, "decoded_token", None)
    return decoded if decoded is not None else ctx.tokenizer.token_text(token_id)


def _logprobs(ctx, token_ids, logprobs, text_offset: int) -> dict:
    """The completions logprobs object; positions without logprobs (the first prompt token) get None."""
    result = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    offset = text_offset
    for i, token_id in enumerate(token_ids):
        step = logprobs[i] if logprobs is not None and i < len(logprobs) else None
        if step is None:
            token, token_logprob, top = ctx.tokenizer.token_text(token_id), None, None
        else:
            token = _token_text(ctx, token_id, step.get(token_id))
            token_logprob = max(step[token_id].logprob, -9999.0)
            top = {}
            for tid, lp in sorted(step.items(), key=lambda item: item[1].rank or 0):
                # Keys are token texts; where two tokens decode alike, the likelier one stays.
                top.setdefault(_token_text(ctx, tid, lp), max(lp.logprob, -9999.0))
        result["tokens"].append(token)
        result["token_logprobs"].append(token_logprob)
        result["top_logprobs"].append(top)
        result["text_offset"].append(offset)
        offset += len(token)
    return result


def _concat_logprobs(first: dict, second: dict, shift: int) -> dict:
    return {"text_offset": first["text_offset"] + [o + shift for o in second["text_offset"]],
            "token_logprobs": first["token_logprobs"] + second["token_logprobs"],
            "tokens": first["tokens"] + second["tokens"],
            "top_logprobs": first["top_logprobs"] + second["top_logprobs"]}


def _prompt_logprobs(output) -> list | None:
    """vLLM's shape: one entry per prompt token (None for the first): {token_id: {logprob, rank,
    decoded_token}}."""
    if output.prompt_logprobs is None:
        return None
    return [None if step is None else
            {str(tid): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": lp.decoded_token}
             for tid, lp in step.items()}
            for step in _aligned_prompt_logprobs(output)]


def _aligned_prompt_logprobs(output) -> list:
    """One entry per prompt token, None for the first (which has no logprob)."""
    steps = list(output.prompt_logprobs or [])
    return steps if len(steps) == len(output.prompt_token_ids) else [None] + steps
