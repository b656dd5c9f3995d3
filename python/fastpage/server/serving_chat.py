"""/v1/chat/completions: chat template -> prompt, generation, tool calls, streaming deltas."""

from __future__ import annotations

import json
import time

from fastapi.responses import StreamingResponse

from fastpage.server.errors import OpenAIError, param_from_value_error
from fastpage.server.protocol import ChatCompletionRequest, ChatMessage, NamedToolChoice, random_id
from fastpage.server.serving_base import (ChunkEncoder, ServingContext, final_outputs, sse, sse_error, to_json,
                                          usage)
from fastpage.server.tool_parsers import TOOL_PARSERS, ToolParser


def message_to_template_dict(message: ChatMessage) -> dict:
    if isinstance(message.content, list):
        texts = []
        for part in message.content:
            if part.type != "text" or part.text is None:
                raise OpenAIError(f"content part type {part.type!r} is not supported (text only)",
                                  400, "messages")
            texts.append(part.text)
        content = "\n".join(texts)
    else:
        content = message.content
    result: dict = {"role": message.role, "content": content if content is not None else ""}
    if message.name is not None:
        result["name"] = message.name
    if message.tool_call_id is not None:
        result["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        result["tool_calls"] = [{"id": call.id, "type": "function", "function": {
            "name": call.function.name, "arguments": _json_or_text(call.function.arguments)}}
            for call in message.tool_calls]
    return result


def _json_or_text(arguments: str):
    # Most templates print arguments with tojson, expecting a mapping rather than a JSON string.
    try:
        return json.loads(arguments)
    except (json.JSONDecodeError, RecursionError):
        return arguments


async def render_prompt(ctx: ServingContext, messages: list[ChatMessage], tools, add_generation_prompt: bool,
                        continue_final_message: bool, template_kwargs: dict | None) -> str:
    conversation = [message_to_template_dict(m) for m in messages]
    tool_dicts = [t.model_dump(exclude_none=True) for t in tools] if tools else None
    try:
        return ctx.tokenizer.apply_chat_template(
            conversation, chat_template=ctx.chat_template, tools=tool_dicts,
            add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
            chat_template_kwargs=template_kwargs)
    except (ValueError, TypeError, LookupError) as err:
        raise OpenAIError(f"cannot render the chat template: {err}", 400,
                          param_from_value_error(err) or "messages") from None
    except Exception as err:  # jinja2 errors (sandbox violations, undefined names, raise_exception)
        if type(err).__module__.startswith("jinja2"):
            raise OpenAIError(f"cannot render the chat template: {err}", 400, "messages") from None
        raise


def _tool_mode(ctx: ServingContext, req: ChatCompletionRequest) -> str:
    """none | auto | required | named."""
    if not req.tools or req.tool_choice == "none":
        return "none"
    if isinstance(req.tool_choice, NamedToolChoice):
        return "named"
    if req.tool_choice == "required":
        # No grammar-constrained decoding: "required" means the reply is parsed for calls, so the
        # server needs to know the model's call format.
        if not ctx.tool_call_parser:
            raise OpenAIError('"required" tool choice requires --tool-call-parser to be set', 400,
                              "tool_choice")
        return "required"
    if not (ctx.enable_auto_tool_choice and ctx.tool_call_parser):
        raise OpenAIError('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser '
                          "to be set", 400, "tool_choice")
    return "auto"


def _new_parser(ctx: ServingContext) -> ToolParser | None:
    return TOOL_PARSERS[ctx.tool_call_parser]() if ctx.tool_call_parser else None


async def create_chat_completion(ctx: ServingContext, req: ChatCompletionRequest):
    model = ctx.check_model(req.model)
    mode = _tool_mode(ctx, req)
    # As in vLLM, the tools reach the template even with tool_choice "none".
    prompt = await render_prompt(ctx, req.messages, req.tools,
                                 req.add_generation_prompt, req.continue_final_message,
                                 req.chat_template_kwargs)
    token_ids = await ctx.encode(prompt, add_special_tokens=False)
    max_tokens = ctx.resolve_max_tokens(len(token_ids), req.max_new_tokens(), "messages")
    parser = _new_parser(ctx)
    keep_special = mode in ("auto", "required") and parser is not None and not parser.skip_special_tokens()
    params = ctx.sampling_params(req, max_tokens, req.top_logprobs or 0 if req.logprobs else None,
                                 req.prompt_logprobs, skip_special_tokens=False if keep_special else None)
    request_id = random_id("chatcmpl")
    created = int(time.time())
    [stream] = await ctx.add_requests(request_id, [token_ids], params)
    echo = _echo_prefix(req)
    if req.stream:
        return StreamingResponse(_stream(ctx, req, mode, model, request_id, created, len(token_ids),
                                         stream, echo), media_type="text/event-stream")
    try:
        [output] = await final_outputs([stream])
    finally:
        stream.abort()
    choices = []
    for completion in output.outputs:
        message, finish_reason = _message(ctx, req, mode, completion.text)
        if echo and message["content"] is not None:
            message["content"] = echo + message["content"]
        choices.append({"index": completion.index, "message": message,
                        "logprobs": _chat_logprobs(ctx, req, completion.token_ids, completion.logprobs),
                        "finish_reason": finish_reason or completion.finish_reason,
                        "stop_reason": completion.stop_reason})
    return {"id": request_id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices,
            "usage": usage(len(token_ids), sum(len(c.token_ids) for c in output.outputs))}


def _echo_prefix(req: ChatCompletionRequest) -> str:
    last = req.messages[-1]
    if req.echo and last.role == "assistant" and isinstance(last.content, str):
        return last.content
    return ""


def _message(ctx, req, mode: str, text: str) -> tuple[dict, str | None]:
    """(assistant message, finish_reason override) for a finished choice."""
    if mode == "named":
        # Not constrained by a grammar: the reply is taken as the named function's arguments.
        call = {"id": random_id("chatcmpl-tool"), "type": "function",
                "function": {"name": req.tool_choice.function.name, "arguments": text}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}, "stop"
    parser = _new_parser(ctx) if mode in ("auto", "required") else None
    if parser is not None:
        extracted = parser.extract_tool_calls(text)
        if extracted.tools_called:
            calls = [c.model_dump() for c in extracted.tool_calls]
            return {"role": "assistant", "content": extracted.content, "tool_calls": calls}, "tool_calls"
    return {"role": "assistant", "content": text, "tool_calls": []}, None


async def _stream(ctx, req, mode, model, request_id, created, num_prompt_tokens, stream, echo):
    """The outputs are DELTAs: each holds the choices that progressed, with their new text."""
    n = req.n
    texts = [""] * n  # each choice's text so far (what a tool parser reads)
    parsers = [(_new_parser(ctx) if mode in ("auto", "required") else None) for _ in range(n)]
    completion_tokens = 0
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    encoder = ChunkEncoder(request_id, "chat.completion.chunk", created, model)

    try:
        yield "".join(encoder.chunk(to_json({"index": i, "delta": {"role": "assistant", "content": echo},
                                             "logprobs": None, "finish_reason": None}))
                      for i in range(n))
        async for output in stream:
            chunks = []
            for completion in output.outputs:
                i = completion.index
                text_from = len(texts[i])
                texts[i] += completion.text
                delta = _delta(req, mode, parsers[i], texts[i], text_from)
                logprobs = _chat_logprobs(ctx, req, completion.token_ids, completion.logprobs)
                completion_tokens += len(completion.token_ids)
                finish_reason = completion.finish_reason
                if finish_reason is not None:
                    tail = parsers[i].finish_streaming(texts[i]) if parsers[i] else None
                    if tail is not None and tail.content:
                        delta["content"] = delta.get("content", "") + tail.content
                    if parsers[i] is not None and parsers[i].streamed_tool_calls:
                        finish_reason = "tool_calls"
                    elif mode == "named":
                        finish_reason = "stop"
                elif not delta and not completion.token_ids:
                    continue
                choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
                if finish_reason:
                    choice["stop_reason"] = completion.stop_reason
                chunks.append(encoder.chunk(to_json(choice)))
            if chunks:
                yield "".join(chunks)
        if include_usage:
            yield encoder.usage_chunk(usage(num_prompt_tokens, completion_tokens))
    except Exception as err:  # noqa: BLE001 - the status is sent already; report in the stream
        yield sse_error(err)
    finally:
        stream.abort()
    yield sse("[DONE]")


def _delta(req, mode: str, parser: ToolParser | None, text: str, text_from: int) -> dict:
    new_text = text[text_from:]
    if mode == "named":
        if not new_text and text_from:
            return {}
        call = {"index": 0, "function": {"arguments": new_text}}
        if text_from == 0:
            call.update(id=random_id("chatcmpl-tool"), type="function")
            call["function"]["name"] = req.tool_choice.function.name
        return {"tool_calls": [call]}
    if parser is None:
        return {"content": new_text} if new_text else {}
    message = parser.extract_tool_calls_streaming(text) if new_text else None
    if message is None:
        return {}
    delta = {}
    if message.content:
        delta["content"] = message.content
    if message.tool_calls:
        delta["tool_calls"] = [c.model_dump(exclude_none=True) for c in message.tool_calls]
    return delta


def _chat_logprobs(ctx, req, token_ids, logprobs) -> dict | None:
    if not req.logprobs:
        return None
    content = []
    for i, token_id in enumerate(token_ids):
        step = logprobs[i] if logprobs is not None and i < len(logprobs) else None
        if step is None:
            continue
        ranked = sorted(step.items(), key=lambda item: item[1].rank or 0)
        sampled = step[token_id]
        content.append({**_entry(ctx, token_id, sampled),
                        "top_logprobs": [_entry(ctx, tid, lp) for tid, lp in ranked
                                         if lp.rank is not None][:req.top_logprobs or 0]})
    return {"content": content}


def _entry(ctx, token_id: int, logprob) -> dict:
    token = logprob.decoded_token
    if token is None:
        token = ctx.tokenizer.token_text(token_id)
    return {"token": token, "logprob": max(logprob.logprob, -9999.0),
            "bytes": list(token.encode("utf-8", errors="replace"))}
