"""The FastAPI application: routes, API-key check, request-body bound, error mapping, /health."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import fastpage
from fastpage.server.async_engine import EngineDeadError
from fastpage.server.errors import OpenAIError, error_body, error_response
from fastpage.server.protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                                      TokenizeRequest)
from fastpage.server.serving_base import ServingContext
from fastpage.server.serving_chat import create_chat_completion, render_prompt
from fastpage.server.serving_completions import create_completion

MAX_BODY_BYTES = 32 * 1024 * 1024
_OPEN_PATHS = frozenset({"/health"})


def build_app(ctx: ServingContext, api_key: str | None = None, protect_metrics: bool = False,
              max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        ctx.engine.start(asyncio.get_running_loop())
        yield
        ctx.engine.shutdown()

    app = FastAPI(title="fastpage", version=fastpage.__version__, lifespan=lifespan)
    open_paths = _OPEN_PATHS if protect_metrics else _OPEN_PATHS | {"/metrics"}

    @app.exception_handler(OpenAIError)
    async def _openai_error(_request, err: OpenAIError):
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        cause = (first.get("ctx") or {}).get("error")
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body(f"request body is not valid JSON: {first.get('msg')}", 400),
                                status_code=400)
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = getattr(cause, "param", None) or (loc[0] if loc else None)
        message = str(cause) if cause is not None else first.get("msg", "invalid request")
        where = ".".join(loc)
        return JSONResponse(error_body(f"{where}: {message}" if where and cause is None else message,
                                       400, param), status_code=400)

    @app.exception_handler(EngineDeadError)
    async def _engine_dead(_request, err: EngineDeadError):
        return JSONResponse(error_body(str(err), 503, err_type="ServiceUnavailableError"), status_code=503)

    @app.exception_handler(Exception)
    async def _internal(_request, err: Exception):
        return JSONResponse(error_body(f"internal error: {type(err).__name__}", 500), status_code=500)

    # Outermost first: the body bound applies before anything reads a body.
    app.add_middleware(ApiKeyCheck, api_key=api_key, open_paths=open_paths)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)

    @app.get("/health")
    async def health():
        problem = ctx.engine.health_problem()
        if problem is not None:
            return JSONResponse(error_body(problem, 503, err_type="ServiceUnavailableError"),
                                status_code=503)
        return Response(status_code=200)

    @app.get("/version")
    async def version():
        return {"version": fastpage.__version__}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(ctx.engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        created = int(time.time())
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "fastpage",
             "root": ctx.model_path, "parent": None, "max_model_len": ctx.max_model_len}
            for name in ctx.served_model_names]}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, raw: Request):
        return await _until_disconnect(raw, create_completion(ctx, req))

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, raw: Request):
        return await _until_disconnect(raw, create_chat_completion(ctx, req))

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest):
        ctx.check_model(req.model)
        if req.messages is not None:
            text = await render_prompt(ctx, req.messages, req.tools, req.add_generation_prompt,
                                       req.continue_final_message, req.chat_template_kwargs)
            tokens = await ctx.encode(text, add_special_tokens=False)
        else:
            tokens = await ctx.encode(req.prompt, add_special_tokens=req.add_special_tokens)
        return {"count": len(tokens), "max_model_len": ctx.max_model_len, "tokens": tokens}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest):
        ctx.check_model(req.model)
        ctx.check_token_ids(req.tokens, "tokens")
        return {"prompt": ctx.tokenizer.decode(req.tokens)}

    return app


async def _until_disconnect(raw: Request, handler):
    """Runs a non-streaming handler, cancelling it (which aborts its requests) if the client leaves.
    Streaming responses watch for disconnects themselves (Starlette cancels the body iterator)."""

    work = asyncio.ensure_future(handler)
    watcher = asyncio.ensure_future(_wait_disconnect(raw))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not work.done():
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        return Response(status_code=499)  # nobody reads it; the client is gone
    return work.result()


async def _wait_disconnect(raw: Request) -> None:
    while True:
        message = await raw.receive()
        if message["type"] == "http.disconnect":
            return


class ApiKeyCheck:
    """Pure ASGI middleware: with a key configured, every path but the open ones needs
    `Authorization: Bearer <key>` (compared in constant time)."""

    def __init__(self, app, api_key: str | None, open_paths: frozenset[str]):
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send):
        if self.expected is not None and scope["type"] == "http" and scope["path"] not in self.open_paths:
            supplied = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(supplied, self.expected):
                response = JSONResponse(error_body("Unauthorized: a valid API key is required", 401),
                                        status_code=401)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class BodySizeLimit:
    """Pure ASGI middleware: reads the request body up front, at most max_bytes of it (chunked or
    not), answering 413 beyond that; the app then reads the buffered body."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending the body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._reject(scope, receive, send)
            if not message.get("more_body", False):
                break
        body_sent = False

        async def replay():
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send):
        response = JSONResponse(error_body(f"request body is larger than {self.max_bytes} bytes", 413),
                                status_code=413)
        await response(scope, receive, send)
