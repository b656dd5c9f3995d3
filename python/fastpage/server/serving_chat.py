"""/v1/chat/completions: chat template -> prompt, generation, tool calls, streaming deltas."""

from __future__ import annotations

import json
import time

from fastapi.responses import StreamingResponse

from fastpage.sampling_params import StructuredOutputsParams

from fastpage.server.async_engine import RequestCollector
from fastpage.server.errors import OpenAIError, param_from_value_error
from fastpage.server.protocol import ChatCompletionRequest, ChatMessage, NamedToolChoice, random_id
from fastpage.server.reasoning_parsers import ReasoningDelta, reasoning_collector, reasoning_fields
from fastpage.server.serving_base import (ChunkEncoder, ServingContext, final_outputs, sse, sse_error, to_json,
                                          usage)
from fastpage.server.structured_fields import structured_outputs_from
from fastpage.server.tool_parsers import TOOL_PARSERS, ToolParser
from fastpage.server.tool_parsers.required import RequiredToolCallsParser, required_calls_schema


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
    """none | auto | required | named. "required" and "named" are enforced by a grammar (vLLM's way):
    the reply is a JSON array of calls, or the named function's arguments."""
    if not req.tools or req.tool_choice == "none":
        return "none"
    if isinstance(req.tool_choice, NamedToolChoice):
        return "named"
    if req.tool_choice == "required":
        return "required"
    if not (ctx.enable_auto_tool_choice and ctx.tool_call_parser):
        raise OpenAIError('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser '
                          "to be set", 400, "tool_choice")
    return "auto"


def _forced_tool_output(req: ChatCompletionRequest, mode: str) -> StructuredOutputsParams | None:
    """The grammar of an enforced tool choice: the named function's parameters, or an array of calls."""
    if mode not in ("named", "required"):
        return None
    if structured_outputs_from(req)[1] is not None:
        raise OpenAIError(f'tool_choice "{mode}" constrains the output itself: drop response_format, '
                          "structured_outputs and guided_*", 400, "tool_choice")
    if mode == "named":
        [tool] = [t for t in req.tools if t.function.name == req.tool_choice.function.name]
        return StructuredOutputsParams(json=tool.function.parameters or {"type": "object"})
    tools = [t.function.model_dump(exclude_none=True) for t in req.tools]
    return StructuredOutputsParams(json=required_calls_schema(tools, req.parallel_tool_calls is not False))


def _new_parser(ctx: ServingContext, req: ChatCompletionRequest, mode: str) -> ToolParser | None:
    if mode == "required":
        return RequiredToolCallsParser(req.tools)
    return TOOL_PARSERS[ctx.tool_call_parser](req.tools) if mode == "auto" else None


async def create_chat_completion(ctx: ServingContext, req: ChatCompletionRequest):
    model = ctx.check_model(req.model)
    mode = _tool_mode(ctx, req)
    # As in vLLM, the tools reach the template even with tool_choice "none".
    prompt = await render_prompt(ctx, req.messages, req.tools,
                                 req.add_generation_prompt, req.continue_final_message,
                                 req.chat_template_kwargs)
    reasoning_parser = (ctx.reasoning_parser.for_request(prompt, req.continue_final_message, req.chat_template_kwargs)
                        if ctx.reasoning_parser else None)
    token_ids = await ctx.encode(prompt, add_special_tokens=False)
    max_tokens = ctx.resolve_max_tokens(len(token_ids), req.max_new_tokens(), "messages")
    parser = _new_parser(ctx, req, mode)
    keep_special = parser is not None and not parser.skip_special_tokens()
    params = ctx.sampling_params(req, max_tokens, req.top_logprobs or 0 if req.logprobs else None,
                                 req.prompt_logprobs, skip_special_tokens=False if keep_special else None,
                                 structured_outputs=_forced_tool_output(req, mode))
    request_id = random_id("chatcmpl")
    created = int(time.time())
    parse_while_streaming = req.stream and parser is not None
    collector = tool_call_collector(ctx, req, mode) if parse_while_streaming else RequestCollector
    if reasoning_parser is not None and req.stream:
        collector = reasoning_collector(reasoning_parser, req.n, collector)  # tool calls come from the content
    [stream] = await ctx.add_requests(request_id, [token_ids], params, collector)
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
        reasoning, text = reasoning_parser.extract(completion.text) if reasoning_parser else (None, completion.text)
        message, finish_reason = _message(ctx, req, mode, text or "")
        if reasoning_parser is not None:
            message.update(reasoning_fields(reasoning))
            message["content"] = message["content"] or None  # only reasoning: no content, as vLLM
        if echo and message["content"] is not None:
            message["content"] = echo + message["content"]
        choices.append({"index": completion.index, "message": message,
                        "logprobs": _chat_logprobs(ctx, req, completion.token_ids, completion.logprobs),
                        "finish_reason": _finish_reason(completion.finish_reason, finish_reason),
                        "stop_reason": completion.stop_reason})
    return {"id": request_id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices,
            "usage": usage(len(token_ids), sum(len(c.token_ids) for c in output.outputs))}


def _echo_prefix(req: ChatCompletionRequest) -> str:
    last = req.messages[-1]
    if req.echo and last.role == "assistant" and isinstance(last.content, str):
        return last.content
    return ""


def _finish_reason(engine_reason: str | None, tool_reason: str | None) -> str | None:
    """A reply cut off by max_tokens says "length", tool calls or not."""
    return engine_reason if engine_reason == "length" else tool_reason or engine_reason


def _message(ctx, req, mode: str, text: str) -> tuple[dict, str | None]:
    """(assistant message, finish_reason override) for a finished choice."""
    if mode == "named":
        # The grammar held the reply to the function's parameters: it is the call's arguments. As
        # OpenAI, a forced named call finishes with "stop".
        call = {"id": random_id("chatcmpl-tool"), "type": "function",
                "function": {"name": req.tool_choice.function.name, "arguments": text}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}, "stop"
    parser = _new_parser(ctx, req, mode)
    if parser is not None:
        extracted = parser.extract_tool_calls(text)
        if extracted.tools_called:
            calls = [c.model_dump() for c in extracted.tool_calls]
            return {"role": "assistant", "content": extracted.content, "tool_calls": calls}, "tool_calls"
    return {"role": "assistant", "content": text, "tool_calls": []}, None


class ParsedDelta:
    """A DELTA output whose choices' new text a tool parser has already turned into chat deltas:
    per choice index, the content that is certain and the tool calls that completed."""

    def __init__(self, output, messages: dict[int, dict], called: set[int]):
        self.output = output
        self.messages = messages
        self.called = called  # choices that made at least one tool call
        self.finished = output.finished

    def add(self, later: ParsedDelta) -> ParsedDelta:
        self.output.add(later.output)
        for i, message in later.messages.items():
            merged = self.messages.setdefault(i, {})
            if "content" in message:
                merged["content"] = merged.get("content", "") + message["content"]
            if "tool_calls" in message:
                merged["tool_calls"] = merged.get("tool_calls", []) + message["tool_calls"]
        self.called |= later.called
        self.finished = later.finished
        return self


def tool_call_collector(ctx: ServingContext, req: ChatCompletionRequest, mode: str) -> type[RequestCollector]:
    """A collector that runs each choice's tool parser as its text arrives, on the output thread:
    incremental work per piece, none of it on the event loop."""

    class ToolCallCollector(RequestCollector):
        def __init__(self, waker):
            super().__init__(waker)
            self._parsers = [_new_parser(ctx, req, mode) for _ in range(req.n)]
            self._texts = [""] * req.n

        def prepare(self, output) -> ParsedDelta:
            messages, called = {}, set()
            for completion in output.outputs:
                i, parser = completion.index, self._parsers[completion.index]
                self._texts[i] += completion.text
                message = {}
                parsed = parser.extract_tool_calls_streaming(self._texts[i]) if completion.text else None
                if parsed is not None:
                    if parsed.content:
                        message["content"] = parsed.content
                    if parsed.tool_calls:
                        message["tool_calls"] = [c.model_dump(exclude_none=True) for c in parsed.tool_calls]
                if completion.finish_reason is not None:
                    tail = parser.finish_streaming(self._texts[i])
                    if tail is not None and tail.content:
                        message["content"] = message.get("content", "") + tail.content
                if parser.streamed_tool_calls:
                    called.add(i)
                messages[i] = message
            return ParsedDelta(output, messages, called)

    return ToolCallCollector


async def _stream(ctx, req, mode, model, request_id, created, num_prompt_tokens, stream, echo):
    """The outputs are DELTAs: each holds the choices that progressed, with their new text (and,
    with a tool parser, already parsed: ParsedDelta)."""
    n = req.n
    named_started = [False] * n
    completion_tokens = 0
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    encoder = ChunkEncoder(request_id, "chat.completion.chunk", created, model)

    try:
        yield "".join(encoder.chunk(to_json({"index": i, "delta": {"role": "assistant", "content": echo},
                                             "logprobs": None, "finish_reason": None}))
                      for i in range(n))
        async for item in stream:
            reasoning = {}
            if isinstance(item, ReasoningDelta):  # the choices' text is their content already
                item, reasoning = item.inner, item.reasoning
            parsed = item if isinstance(item, ParsedDelta) else None
            output = item.output if parsed is not None else item
            chunks = []
            for completion in output.outputs:
                i = completion.index
                if parsed is not None:
                    delta = parsed.messages.get(i, {})
                elif mode == "named":
                    delta = _named_delta(req, completion.text, named_started[i])
                    named_started[i] = named_started[i] or bool(delta)
                else:
                    delta = {"content": completion.text} if completion.text else {}
                if i in reasoning:
                    delta = {**reasoning_fields(reasoning[i]), **delta}
                logprobs = _chat_logprobs(ctx, req, completion.token_ids, completion.logprobs)
                completion_tokens += len(completion.token_ids)
                finish_reason = completion.finish_reason
                if finish_reason is not None:
                    if parsed is not None and i in parsed.called:
                        finish_reason = _finish_reason(finish_reason, "tool_calls")
                    elif mode == "named":
                        finish_reason = _finish_reason(finish_reason, "stop")
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


def _named_delta(req, new_text: str, started: bool) -> dict:
    """tool_choice naming a function: the reply streams as that function's arguments."""
    if not new_text and started:
        return {}
    call = {"index": 0, "function": {"arguments": new_text}}
    if not started:
        call.update(id=random_id("chatcmpl-tool"), type="function")
        call["function"]["name"] = req.tool_choice.function.name
    return {"tool_calls": [call]}


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
