"""Soak test of the served path: N concurrent clients for D seconds against a real server, each one
looping over random requests: streamed completions (token-id and text prompts, one or two prompts,
n up to 3, greedy or seeded sampling, logprobs, usage), streamed chat with tools (tool_choice auto
and named), non-streamed completions and chats, and hang-ups (a client closes its connection after
a few chunks, or gives up on a non-streamed request). Every request ends completed, aborted (the
client hung up on purpose) or failed (HTTP error, malformed stream, exception, timeout).

Streams are checked chunk by chunk: every line is `data: <json>`, `data: [DONE]` ends it, each
choice gets exactly one chunk with a finish_reason and nothing after it, the usage chunk's token
counts match the chunks (where the logprobs or a "length" finish tell the count). Completed
requests that repeat an earlier one (same prompt, max_tokens, temperature, seed, n) must repeat its
text: greedy and seeded output do not depend on the batch or on preemption. A hang-up's chunks are
checked as far as they go.

On the tiny model's byte-level vocabulary (no "<") hermes tool calls never appear in a reply: chat
streams with tool_choice "auto" run the parser over replies without calls, named tool choices stream
tool_calls deltas whose arguments a grammar holds to the tool's parameters (valid JSON of that shape
whenever the call finished with "stop"; "length" when max_tokens cut it).

A pass: failed == 0; once idle, every KV block back and nothing running or waiting; preemptions > 0
(the server runs with a small KV budget, so requests are preempted and recomputed); the server's RSS
at the end of the load within RSS_GROWTH_TOLERANCE of its RSS after the warm-up.

  python bench/soak.py --clients 256 --duration-s 600      # starts a server on the tiny test model
  python bench/soak.py --base-url http://127.0.0.1:8000 --model NAME --server-pid PID

tests/test_soak.py runs run_soak() at CI size. The summary goes to stdout and bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse

import httpx
import psutil

# RSS at the end may exceed RSS after the warm-up by this fraction plus RSS_GROWTH_SLACK_MB.
RSS_GROWTH_TOLERANCE = 0.20
RSS_GROWTH_SLACK_MB = 16.0
MAX_FAILURES_KEPT = 20
STREAM_LINES_KEPT = 40  # of a failed stream, as evidence

# The tiny test model: 2 layers, 2 KV heads of 16, fp32: 8 KiB per 16-token block. 64 blocks hold
# four 256-token sequences, while 16 running sequences want up to 160 blocks: preemption guaranteed.
TINY_KV_CACHE_BYTES = 64 * 8192
TINY_MAX_NUM_SEQS = 16
TINY_MAX_MODEL_LEN = 256

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "description": "the time now", "parameters": {"type": "object", "properties": {}}}}
NAMED_CHOICE = {"type": "function", "function": {"name": "get_weather"}}

TEXT_PROMPTS = ["Hello world!", "The quick brown fox", "Numbers 0123456789, punctuation ?!.,;:",
                "Café, naïve, résumé — déjà vu.", "日本語のテキスト、中文文本", "Emoji: 🙂🚀🎉 and math ∑∫√",
                "    indented code:\n\tdef f(x):\n\t\treturn x * 2"]
CHATS = [
    [{"role": "user", "content": "What is the weather in Paris?"}],
    [{"role": "system", "content": "Numbers 0123456789"}, {"role": "user", "content": "Hello world!"}],
    [{"role": "user", "content": [{"type": "text", "text": "The quick brown fox"},
                                  {"type": "text", "text": "jumps over the lazy dog."}]}],
    [{"role": "user", "content": "What is the weather in Paris?"},
     {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
         "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
     {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees and sunny"}],
]
# Prompts stay under 100 tokens, so every max_tokens here fits a 256-token context.
MAX_TOKENS = (1, 8, 16, 32, 64, 96)
CHAT_MAX_TOKENS = (1, 8, 16, 32, 64)
SEEDS = (0, 1, 2)
# Request kinds and their shares; streams hang up with HANGUP_SHARE, the rest give up with GIVE_UP_SHARE.
KINDS = {"completion_stream": 0.45, "chat_stream": 0.25, "completion": 0.2, "chat": 0.1}
HANGUP_SHARE = 0.25
GIVE_UP_SHARE = 0.05


class Failure(Exception):
    """A request that broke the API's contract; `tail` holds the stream's last lines as evidence."""

    def __init__(self, message: str, tail: list[str] | None = None):
        super().__init__(message)
        self.tail = tail or []


@contextlib.contextmanager
def stream_as_evidence(lines: list[str]):
    """A Failure raised while checking a stream carries the stream's lines."""
    try:
        yield
    except Failure as err:
        err.tail = lines or err.tail
        raise


class HungUp(Exception):
    """The client closed the connection on purpose."""


def server_args(model: str, chat_template_path: str, *, max_model_len: int = TINY_MAX_MODEL_LEN,
                max_num_seqs: int = TINY_MAX_NUM_SEQS, kv_cache_memory_bytes: int = TINY_KV_CACHE_BYTES,
                async_scheduling: bool = True, served_model_name: str = "tiny") -> list[str]:
    """The api_server arguments of a soak server on the CPU (after `python -m`; no host or port)."""
    return (["fastpage.entrypoints.openai.api_server", "--model", model, "--served-model-name",
             served_model_name, "--max-model-len", str(max_model_len), "--enable-auto-tool-choice",
             "--tool-call-parser", "hermes", "--chat-template", chat_template_path, "--max-num-seqs",
             str(max_num_seqs), "--dtype", "float32", "--device", "cpu", "--kv-cache-memory-bytes",
             str(kv_cache_memory_bytes)] + (["--async-scheduling"] if async_scheduling else []))


def find_server_pid(base_url: str) -> int | None:
    """The pid of a local process started with `--port <base_url's port>`: a child of this process
    first (the tests' and this script's servers), else any process listening on that port."""
    port = urllib.parse.urlsplit(base_url).port
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = proc.cmdline()
        except psutil.Error:
            continue
        if "--port" in cmdline and cmdline[cmdline.index("--port") + 1:][:1] == [str(port)]:
            return proc.pid
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                return conn.pid
    except psutil.Error:
        pass
    return None


def rss_mb(pid: int) -> float:
    """RSS of the process and its children (tensor-parallel workers, if any), in MB."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total / 1e6


def rss_flat(start_mb: float, end_mb: float) -> bool:
    return end_mb <= start_mb * (1 + RSS_GROWTH_TOLERANCE) + RSS_GROWTH_SLACK_MB


def parse_metrics(text: str) -> dict[str, float]:
    """fastpage:* samples by name (the first label set of each): counters carry their _total suffix."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("fastpage:"):
            name = line.split("{", 1)[0].split(" ", 1)[0][len("fastpage:"):]
            values.setdefault(name, float(line.rsplit(" ", 1)[1]))
    return values


# ---------------------------------------------------------------- stream reading and checks

async def read_sse(response: httpx.Response, hangup_after: int | None) -> tuple[list[dict], list[str], bool]:
    """(the stream's JSON chunks, its last STREAM_LINES_KEPT lines, hung up), checked for SSE framing
    and ending in [DONE]; stops reading after `hangup_after` chunks (hung up: leaving the caller's
    `async with` closes the connection)."""
    if response.status_code != 200:
        body = (await response.aread()).decode(errors="replace")
        raise Failure(f"HTTP {response.status_code}: {body[:300]}")
    chunks: list[dict] = []
    tail: collections.deque[str] = collections.deque(maxlen=STREAM_LINES_KEPT)
    done = False
    async for line in response.aiter_lines():
        if not line:
            continue
        tail.append(line[:600])
        if done:
            raise Failure("data after [DONE]", list(tail))
        if not line.startswith("data: "):
            raise Failure("a line that is not `data: ...`", list(tail))
        if line == "data: [DONE]":
            done = True
            continue
        try:
            chunk = json.loads(line[6:])
        except ValueError:
            raise Failure("a chunk that is not JSON", list(tail)) from None
        if "error" in chunk:
            raise Failure(f"error in the stream: {chunk['error']}", list(tail))
        chunks.append(chunk)
        if hangup_after is not None and len(chunks) >= hangup_after:
            return chunks, list(tail), True
    if not done:
        raise Failure("the stream ended without data: [DONE]", list(tail))
    return chunks, list(tail), False


def split_usage(chunks: list[dict], include_usage: bool, hung_up: bool) -> tuple[list[dict], dict | None]:
    """(choice chunks, usage): the usage chunk, if asked for, is the last one and has no choices
    (and may not have come before a hang-up)."""
    usage = None
    if hung_up:
        include_usage = include_usage and bool(chunks) and chunks[-1].get("choices") == []
    if include_usage:
        if not chunks or chunks[-1].get("choices") != [] or not chunks[-1].get("usage"):
            raise Failure("include_usage: the last chunk is not the usage chunk",
                          [json.dumps(c)[:600] for c in chunks[-2:]])
        usage, chunks = chunks[-1]["usage"], chunks[:-1]
    for chunk in chunks:
        if not chunk.get("choices"):
            raise Failure("a chunk without choices", [json.dumps(chunk)[:600]])
        if chunk.get("usage"):
            raise Failure("usage in a choice chunk", [json.dumps(chunk)[:600]])
    return chunks, usage


class Choices:
    """Per-choice state of one response, fed chunk by chunk (or once, not streamed)."""

    def __init__(self, num: int):
        self.num = num
        self.texts = [""] * num
        self.tokens = [0] * num  # counted from the logprobs, when asked for
        self.finish: list[str | None] = [None] * num

    def index(self, choice: dict, raw) -> int:
        i = choice.get("index")
        if not isinstance(i, int) or not 0 <= i < self.num:
            raise Failure(f"choice index {i!r} outside [0, {self.num})", [json.dumps(raw)[:600]])
        if self.finish[i] is not None:
            raise Failure(f"choice {i} got a chunk after its finish chunk (finish_reason {self.finish[i]!r}, "
                          f"then {choice.get('finish_reason')!r})", [json.dumps(raw)[:600]])
        return i

    def check_complete(self, reasons: tuple[str, ...]) -> None:
        for i, reason in enumerate(self.finish):
            if reason is None:
                raise Failure(f"choice {i} never got a finish_reason")
            if reason not in reasons:
                raise Failure(f"choice {i} finished with {reason!r}, expected one of {reasons}")

    def check_usage(self, usage: dict, max_tokens: int, counted: bool, prompt_tokens: int | None) -> int:
        """usage against the chunks: exact where the logprobs counted the tokens or every choice ran to
        max_tokens. Returns the completion tokens."""
        if usage["total_tokens"] != usage["prompt_tokens"] + usage["completion_tokens"]:
            raise Failure(f"usage does not add up: {usage}")
        if prompt_tokens is not None and usage["prompt_tokens"] != prompt_tokens:
            raise Failure(f"usage.prompt_tokens {usage['prompt_tokens']}, the prompt has {prompt_tokens}")
        if counted and usage["completion_tokens"] != sum(self.tokens):
            raise Failure(f"usage.completion_tokens {usage['completion_tokens']}, the chunks' logprobs hold "
                          f"{sum(self.tokens)} tokens ({self.tokens})")
        if all(f == "length" for f in self.finish) and usage["completion_tokens"] != self.num * max_tokens:
            raise Failure(f"usage.completion_tokens {usage['completion_tokens']}, but all {self.num} choices "
                          f"finished by length at max_tokens {max_tokens}")
        if counted:
            for i, reason in enumerate(self.finish):
                if reason == "length" and self.tokens[i] != max_tokens:
                    raise Failure(f"choice {i} finished by length after {self.tokens[i]} tokens, max_tokens "
                                  f"{max_tokens}")
        return usage["completion_tokens"]


def add_completion_choice(state: Choices, choice: dict, raw, logprobs: int | None) -> None:
    i = state.index(choice, raw)
    text = choice.get("text")
    if not isinstance(text, str):
        raise Failure(f"choice {i} text is {text!r}", [json.dumps(raw)[:600]])
    if logprobs is not None:
        lp = choice.get("logprobs") or {}
        lengths = {len(lp.get(key) or []) for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
        if len(lengths) != 1:
            raise Failure(f"choice {i} logprobs lists of different lengths", [json.dumps(raw)[:600]])
        if lp.get("text_offset") and lp["text_offset"][0] != len(state.texts[i]):
            raise Failure(f"choice {i} text_offset starts at {lp['text_offset'][0]}, after "
                          f"{len(state.texts[i])} characters sent", [json.dumps(raw)[:600]])
        if any(top is not None and len(top) > logprobs + 1 for top in lp.get("top_logprobs") or []):
            raise Failure(f"choice {i} has more than logprobs + 1 top_logprobs", [json.dumps(raw)[:600]])
        state.tokens[i] += lengths.pop()
    state.texts[i] += text
    state.finish[i] = choice.get("finish_reason")


class ChatChoices(Choices):
    def __init__(self, num: int):
        super().__init__(num)
        self.calls: list[dict[int, dict]] = [{} for _ in range(num)]  # per choice: tool index -> call
        self.roles = [False] * num

    def add_delta(self, choice: dict, raw, logprobs: bool) -> None:
        i = self.index(choice, raw)
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            raise Failure(f"choice {i} without a delta", [json.dumps(raw)[:600]])
        if delta.get("role") is not None:
            if self.roles[i] or delta["role"] != "assistant":
                raise Failure(f"choice {i}: role {delta['role']!r} again or not assistant", [json.dumps(raw)[:600]])
            self.roles[i] = True
        elif not self.roles[i]:
            raise Failure(f"choice {i}: a delta before the role", [json.dumps(raw)[:600]])
        self.texts[i] += delta.get("content") or ""
        for call in delta.get("tool_calls") or []:
            index = call.get("index")
            function = call.get("function") or {}
            if index not in self.calls[i]:
                if not (call.get("id") and call.get("type") == "function" and function.get("name")):
                    raise Failure(f"choice {i}: tool call {index} starts without id, type or name",
                                  [json.dumps(raw)[:600]])
                self.calls[i][index] = {"name": function["name"], "arguments": ""}
            elif function.get("name") or call.get("id"):
                raise Failure(f"choice {i}: tool call {index} named twice", [json.dumps(raw)[:600]])
            self.calls[i][index]["arguments"] += function.get("arguments") or ""
        if logprobs:
            self.tokens[i] += len((choice.get("logprobs") or {}).get("content") or [])
        self.finish[i] = choice.get("finish_reason")

    def add_message(self, choice: dict, raw, logprobs: bool) -> None:
        i = self.index(choice, raw)
        message = choice.get("message") or {}
        if message.get("role") != "assistant":
            raise Failure(f"choice {i}: message role {message.get('role')!r}", [json.dumps(raw)[:600]])
        self.roles[i] = True
        self.texts[i] = message.get("content") or ""
        for index, call in enumerate(message.get("tool_calls") or []):
            self.calls[i][index] = {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}
        if logprobs:
            self.tokens[i] = len((choice.get("logprobs") or {}).get("content") or [])
        self.finish[i] = choice.get("finish_reason")

    def check_tools(self, mode: str) -> None:
        for i in range(self.num):
            if not self.roles[i]:
                raise Failure(f"choice {i} never got its role")
            names = [call["name"] for _, call in sorted(self.calls[i].items())]
            if mode == "named":
                if names != ["get_weather"] or self.finish[i] not in ("stop", "length"):
                    raise Failure(f"choice {i}: named tool choice gave calls {names}, finish {self.finish[i]!r}")
                if self.finish[i] == "stop":
                    arguments = self.calls[i][0]["arguments"]
                    try:
                        city = json.loads(arguments)["city"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise Failure(f"choice {i}: named call's arguments break its schema: {arguments[:200]!r}") from None
                    if not isinstance(city, str):
                        raise Failure(f"choice {i}: named call's city is not a string: {arguments[:200]!r}")
            elif names and self.finish[i] != "tool_calls":
                raise Failure(f"choice {i}: tool calls {names} but finish_reason {self.finish[i]!r}")
            elif not names and self.finish[i] == "tool_calls":
                raise Failure(f"choice {i}: finish_reason tool_calls without a tool call")
            if any(name not in ("get_weather", "get_time") for name in names):
                raise Failure(f"choice {i}: a call to an unknown tool: {names}")


# ---------------------------------------------------------------- the soak

class Soak:
    def __init__(self, base_url: str, model: str, api_key: str | None, vocab_size: int, seed: int,
                 request_timeout_s: float):
        # One connection pool per client loop: httpcore's pool scans all its connections for each
        # request, which made one shared pool of 64 connections the client's main cost.
        self.client_kwargs = dict(
            base_url=base_url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=httpx.Timeout(request_timeout_s, connect=30.0), limits=httpx.Limits(max_connections=1),
            verify=ssl.create_default_context())  # loaded once, not per client
        self.model = model
        self.request_timeout_s = request_timeout_s
        rng = random.Random(seed)
        self.prompts: list[str | list[int]] = [
            [rng.randrange(3, vocab_size) for _ in range(rng.randint(1, 64))] for _ in range(10)]
        self.prompts += TEXT_PROMPTS
        self.counts: collections.Counter = collections.Counter()
        self.by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.failures: list[dict] = []
        self.failure_classes: collections.Counter = collections.Counter()
        self.completion_tokens = 0
        self.references: dict[tuple, tuple] = {}  # a completed request's parameters -> its output
        self.num_repeats_checked = 0

    async def client_loop(self, rng: random.Random, deadline: float) -> None:
        async with httpx.AsyncClient(**self.client_kwargs) as client:
            while time.monotonic() < deadline:
                await self.one_request(client, rng)

    async def one_request(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        hang_up = rng.random() < (HANGUP_SHARE if kind.endswith("_stream") else GIVE_UP_SHARE)
        self.counts["sent"] += 1
        self.by_kind[kind]["sent"] += 1
        request: dict = {}
        try:
            if kind.startswith("completion"):
                await self.completion(client, rng, request, kind == "completion_stream", hang_up)
            else:
                await self.chat(client, rng, request, kind == "chat_stream", hang_up)
            outcome = "completed"
        except HungUp:
            outcome = "aborted"
        except Exception as err:  # noqa: BLE001 - every other ending is a failure to report
            outcome = "failed"
            error = f"{type(err).__name__}: {err}"[:1000]
            # Failures by class (the message without its numbers and quoted values); the first few
            # of each class are kept whole, with their request and stream.
            error_class = re.sub(r"'[^']*'|\d+", "_", error)[:120]
            self.failure_classes[error_class] += 1
            if self.failure_classes[error_class] <= 3 and len(self.failures) < MAX_FAILURES_KEPT:
                self.failures.append({"kind": kind, "class": error_class, "error": error,
                                      "tail": getattr(err, "tail", []),
                                      "request": _short(request), "at": time.time()})
        self.counts[outcome] += 1
        self.by_kind[kind][outcome] += 1

    async def _post(self, client: httpx.AsyncClient, path: str, body: dict, give_up: float | None) -> dict:
        """A non-streamed request; raises HungUp when the client gives up after `give_up` seconds.
        Giving up is a read timeout, which closes the connection: cancelling the request task instead
        (asyncio.wait_for) sometimes left httpcore's pool holding the connection, and the client's
        next request failed with PoolTimeout."""
        timeout = httpx.USE_CLIENT_DEFAULT if give_up is None else httpx.Timeout(self.request_timeout_s, read=give_up)
        try:
            response = await client.post(path, json=body, timeout=timeout)
        except httpx.ReadTimeout:
            if give_up is None:
                raise
            raise HungUp from None
        if response.status_code != 200:
            raise Failure(f"HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    def _check_repeat(self, key: tuple, output: tuple) -> None:
        """A completed request with the same parameters as an earlier one has the same output."""
        earlier = self.references.setdefault(key, output)
        if earlier is not output:
            self.num_repeats_checked += 1
            if earlier != output:
                raise Failure(f"output differs from an earlier identical request: earlier {earlier!r}, "
                              f"now {output!r}")

    async def completion(self, client: httpx.AsyncClient, rng: random.Random, body: dict, stream: bool,
                         hang_up: bool) -> None:
        # Sometimes two prompts in one request: both token ids or both text (the API takes no mix).
        num_prompts = 2 if rng.random() < 0.1 else 1
        prompt_ids = rng.sample(range(len(self.prompts)), num_prompts)
        if num_prompts == 2 and isinstance(self.prompts[prompt_ids[0]], list) != isinstance(
                self.prompts[prompt_ids[1]], list):
            prompt_ids = prompt_ids[:1]
            num_prompts = 1
        n = rng.choice((1, 1, 1, 2, 3))
        temperature = rng.choice((0.0, 0.8))
        max_tokens = rng.choice(MAX_TOKENS)
        logprobs = rng.choice((None, None, 0, 2)) if rng.random() < 0.4 else None
        prompts = [self.prompts[p] for p in prompt_ids]
        body.update(model=self.model, prompt=prompts[0] if num_prompts == 1 else prompts, n=n,
                    max_tokens=max_tokens, temperature=temperature, ignore_eos=rng.random() < 0.8,
                    stream=stream)
        if temperature:
            body["seed"] = rng.choice(SEEDS)
        if logprobs is not None:
            body["logprobs"] = logprobs
        include_usage = stream and rng.random() < 0.7
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        state = Choices(num_prompts * n)
        lines: list[str] = []  # a stream's, as evidence
        token_prompts = [p for p in prompts if isinstance(p, list)]
        prompt_tokens = sum(len(p) for p in prompts) if len(token_prompts) == num_prompts else None
        if stream:
            lines, usage = await self._stream(client, "/v1/completions", body, rng, hang_up, include_usage,
                                              "text_completion",
                                              lambda choice, chunk: add_completion_choice(state, choice, chunk, logprobs))
        else:
            result = await self._post(client, "/v1/completions", body, rng.uniform(0.05, 2.0) if hang_up else None)
            if len(result.get("choices") or []) != state.num:
                raise Failure(f"{len(result.get('choices') or [])} choices, expected {state.num}")
            for choice in result["choices"]:
                add_completion_choice(state, choice, result, logprobs)
            usage = result.get("usage")
        with stream_as_evidence(lines):
            state.check_complete(("length",) if body["ignore_eos"] else ("length", "stop"))
            if usage is not None:
                self.completion_tokens += state.check_usage(usage, max_tokens, logprobs is not None,
                                                            prompt_tokens)
            # Same prompt and sampling parameters, same text (logprobs and streaming change nothing).
            for k, p in enumerate(prompt_ids):
                texts = tuple(state.texts[k * n:(k + 1) * n])
                if temperature == 0.0 and len(set(texts)) != 1:
                    raise Failure(f"greedy n={n} choices differ: {texts!r}")
                self._check_repeat(("completion", p, max_tokens, temperature, body.get("seed"), n,
                                    body["ignore_eos"]), texts)

    async def _stream(self, client: httpx.AsyncClient, path: str, body: dict, rng: random.Random, hang_up: bool,
                      include_usage: bool, kind: str, add) -> tuple[list[str], dict | None]:
        """A streamed request: every chunk checked, each choice given to add(choice, chunk); (its
        lines, its usage). A hang-up raises HungUp after checking the chunks it had."""
        async with client.stream("POST", path, json=body) as response:
            chunks, lines, hung_up = await read_sse(response, rng.randint(1, 6) if hang_up else None)
        with stream_as_evidence(lines):
            chunks, usage = split_usage(chunks, include_usage, hung_up)
            for chunk in chunks:
                if chunk.get("object") != kind:
                    raise Failure(f"object {chunk.get('object')!r}")
                for choice in chunk["choices"]:
                    add(choice, chunk)
        if hung_up:
            raise HungUp
        return lines, usage

    async def chat(self, client: httpx.AsyncClient, rng: random.Random, body: dict, stream: bool,
                   hang_up: bool) -> None:
        chat_id = rng.randrange(len(CHATS))
        n = rng.choice((1, 1, 1, 2))
        mode = rng.choice(("auto", "auto", "auto", "named", "none"))
        temperature = rng.choice((0.0, 0.8))
        max_tokens = rng.choice(CHAT_MAX_TOKENS)
        logprobs = rng.random() < 0.3
        body.update(model=self.model, messages=CHATS[chat_id], n=n, max_tokens=max_tokens,
                    temperature=temperature, stream=stream, tools=[WEATHER_TOOL, TIME_TOOL],
                    tool_choice=NAMED_CHOICE if mode == "named" else mode, ignore_eos=rng.random() < 0.5)
        if temperature:
            body["seed"] = rng.choice(SEEDS)
        if logprobs:
            body.update(logprobs=True, top_logprobs=rng.choice((0, 2)))
        include_usage = stream and rng.random() < 0.7
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        state = ChatChoices(n)
        lines: list[str] = []  # a stream's, as evidence
        if stream:
            lines, usage = await self._stream(client, "/v1/chat/completions", body, rng, hang_up, include_usage,
                                              "chat.completion.chunk",
                                              lambda choice, chunk: state.add_delta(choice, chunk, logprobs))
        else:
            result = await self._post(client, "/v1/chat/completions", body, rng.uniform(0.05, 2.0) if hang_up else None)
            if len(result.get("choices") or []) != n:
                raise Failure(f"{len(result.get('choices') or [])} choices, expected {n}")
            for choice in result["choices"]:
                state.add_message(choice, result, logprobs)
            usage = result.get("usage")
        with stream_as_evidence(lines):
            state.check_complete(("length", "stop", "tool_calls"))
            state.check_tools(mode)
            if usage is not None:
                self.completion_tokens += state.check_usage(usage, max_tokens, logprobs, None)
            output = tuple((state.texts[i], tuple(c["arguments"] for _, c in sorted(state.calls[i].items())))
                           for i in range(n))
            self._check_repeat(("chat", chat_id, mode, max_tokens, temperature, body.get("seed"), n,
                                body["ignore_eos"]), output)


def _short(body: dict) -> dict:
    return {k: (v if len(json.dumps(v, ensure_ascii=False)) < 400 else f"<{len(json.dumps(v))} chars>")
            for k, v in body.items()}


async def read_server_metrics(client: httpx.AsyncClient) -> dict[str, float]:
    return parse_metrics((await client.get("/metrics")).text)


async def wait_until_idle(client: httpx.AsyncClient, timeout_s: float) -> tuple[bool, dict[str, float]]:
    """(idle, metrics): idle once nothing runs, waits or is swapped and no KV block is in use. The
    gauges are refreshed every 0.25 s by the output thread while the engine is idle."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = await read_server_metrics(client)
        busy = [metrics.get(name, -1) for name in ("num_requests_running", "num_requests_waiting",
                                                  "num_requests_swapped", "kv_cache_usage_perc")]
        if not any(busy):
            return True, metrics
        if time.monotonic() > deadline:
            return False, metrics
        await asyncio.sleep(0.3)


async def run_soak_async(base_url: str, *, clients: int, duration_s: float, warmup_s: float | None = None,
                         model: str = "tiny", api_key: str | None = None, server_pid: int | None = None,
                         vocab_size: int = 256, seed: int = 0, request_timeout_s: float = 300.0,
                         idle_timeout_s: float = 60.0, rss_interval_s: float = 5.0,
                         log=print) -> dict:
    """Runs `clients` client loops for `duration_s` seconds (requests in flight then finish), waits
    until the server is idle and returns the summary (see the module docstring for what passes)."""
    warmup_s = duration_s / 4 if warmup_s is None else warmup_s
    soak = Soak(base_url, model, api_key, vocab_size, seed, request_timeout_s)
    metrics_client = httpx.AsyncClient(base_url=base_url, timeout=30.0, headers=soak.client_kwargs["headers"])
    rss_samples: list[tuple[float, float]] = []
    load_samples: list[tuple[float, float]] = []  # the server's (running, waiting) requests
    start = time.monotonic()
    deadline = start + duration_s
    rss_warm: float | None = None

    async def sample():
        nonlocal rss_warm
        while time.monotonic() < deadline:
            await asyncio.sleep(min(rss_interval_s, max(0.0, deadline - time.monotonic())))
            now = time.monotonic() - start
            metrics = await read_server_metrics(metrics_client)
            load_samples.append((metrics.get("num_requests_running", 0), metrics.get("num_requests_waiting", 0)))
            rss = ""
            if server_pid:
                rss_samples.append((round(now, 1), round(rss_mb(server_pid), 1)))
                rss = f" rss {rss_samples[-1][1]:.0f} MB"
                if rss_warm is None and now >= warmup_s:
                    rss_warm = rss_samples[-1][1]
            counts = soak.counts
            log(f"[soak {now:6.1f} s] sent {counts['sent']} completed {counts['completed']} aborted "
                f"{counts['aborted']} failed {counts['failed']}; server: running {load_samples[-1][0]:.0f} "
                f"waiting {load_samples[-1][1]:.0f}{rss}")

    before = await read_server_metrics(metrics_client)
    sampler = asyncio.ensure_future(sample())
    try:
        await asyncio.gather(*(soak.client_loop(random.Random(seed * 100_003 + i), deadline)
                               for i in range(clients)))
        load_end = time.monotonic()
        await sampler
        rss_end = rss_mb(server_pid) if server_pid else None
        idle, after = await wait_until_idle(metrics_client, idle_timeout_s)
        health = (await metrics_client.get("/health")).status_code
        rss_idle = rss_mb(server_pid) if server_pid else None
    finally:
        sampler.cancel()
        await metrics_client.aclose()
    counts = soak.counts
    summary = {
        "clients": clients, "duration_s": round(load_end - start, 1), "warmup_s": warmup_s,
        "drain_s": round(load_end - deadline, 1),  # the requests in flight at the deadline, finishing
        "sent": counts["sent"], "completed": counts["completed"], "aborted": counts["aborted"],
        "failed": counts["failed"], "by_kind": {k: dict(v) for k, v in sorted(soak.by_kind.items())},
        "failure_classes": dict(soak.failure_classes.most_common()), "failures": soak.failures,
        "completion_tokens_in_usage": soak.completion_tokens,
        "repeats_checked": soak.num_repeats_checked,
        "server_generation_tokens": after.get("generation_tokens_total", 0) - before.get("generation_tokens_total", 0),
        "server_prompt_tokens": after.get("prompt_tokens_total", 0) - before.get("prompt_tokens_total", 0),
        "preemptions": after.get("num_preemptions_total", 0) - before.get("num_preemptions_total", 0),
        "idle": idle, "health_after": health,
        "idle_metrics": {k: after.get(k) for k in ("num_requests_running", "num_requests_waiting",
                                                   "num_requests_swapped", "kv_cache_usage_perc")},
        "rss_start_mb": rss_warm, "rss_end_mb": rss_end, "rss_idle_mb": rss_idle,
        "rss_flat": None if rss_warm is None or rss_end is None else rss_flat(rss_warm, rss_end),
        "rss_samples": rss_samples,
        "server_running_mean": round(sum(r for r, _ in load_samples) / max(1, len(load_samples)), 1),
        "server_running_max": max((r for r, _ in load_samples), default=0),
        "server_waiting_max": max((w for _, w in load_samples), default=0),
    }
    summary["passed"] = bool(summary["failed"] == 0 and idle and health == 200 and summary["preemptions"] > 0
                             and summary["rss_flat"] is not False
                             and counts["sent"] == counts["completed"] + counts["aborted"] + counts["failed"])
    return summary


def run_soak(base_url: str, **kwargs) -> dict:
    return asyncio.run(run_soak_async(base_url, **kwargs))


# ---------------------------------------------------------------- command line

def build_tiny_model(directory: str) -> tuple[str, str]:
    """(model path, chat template path): the tests' tiny random Llama with their byte-level tokenizer
    and their ChatML-with-tools template."""
    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
    sys.path.insert(0, tests)
    from test_server_e2e import CHATML_WITH_TOOLS
    from tiny_models import llama
    from tiny_tokenizer import byte_level_bpe

    path = llama(os.path.join(directory, "llama"))
    byte_level_bpe(256, all_bytes=False).save_pretrained(path)
    template = os.path.join(directory, "chatml_tools.jinja")
    with open(template, "w") as f:
        f.write(CHATML_WITH_TOOLS)
    return path, template


def _git_commit() -> str:
    done = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--warmup-s", type=float, default=None, help="RSS baseline time (default: duration / 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-url", default=None, help="a running server (default: start one on the tiny model)")
    parser.add_argument("--model", default="tiny", help="the served model name to request")
    parser.add_argument("--vocab-size", type=int, default=256, help="token-id prompts stay below it")
    parser.add_argument("--api-key", default=os.environ.get("FASTPAGE_API_KEY"))
    parser.add_argument("--server-pid", type=int, default=None, help="for RSS (default: found by port)")
    parser.add_argument("--max-num-seqs", type=int, default=TINY_MAX_NUM_SEQS)
    parser.add_argument("--kv-cache-memory-bytes", type=int, default=TINY_KV_CACHE_BYTES)
    parser.add_argument("--no-async-scheduling", action="store_true")
    parser.add_argument("--request-timeout-s", type=float, default=300.0)
    parser.add_argument("--output", default=None, help="summary JSON (default: bench/results/soak_*.json)")
    args = parser.parse_args()

    from serve import start_server, stop_server

    output = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                         f"soak_{args.clients}c_{int(args.duration_s)}s.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    process = None
    with tempfile.TemporaryDirectory() as work:
        base_url = args.base_url
        log_path = os.path.join(work, "server.log")
        if base_url is None:
            model_path, template = build_tiny_model(work)
            from server_process import free_port  # tests/, on sys.path after build_tiny_model

            port = free_port()
            base_url = f"http://127.0.0.1:{port}"
            command = [sys.executable, "-m", *server_args(
                model_path, template, max_num_seqs=args.max_num_seqs,
                kv_cache_memory_bytes=args.kv_cache_memory_bytes,
                async_scheduling=not args.no_async_scheduling, served_model_name=args.model),
                "--host", "127.0.0.1", "--port", str(port)]
            env = dict(os.environ, HF_HUB_OFFLINE="1")
            if args.api_key:
                env["FASTPAGE_API_KEY"] = args.api_key
            process = start_server(command, base_url, log_path, env=env)
        try:
            pid = args.server_pid or (process.pid if process else find_server_pid(base_url))
            summary = run_soak(base_url, clients=args.clients, duration_s=args.duration_s,
                               warmup_s=args.warmup_s, model=args.model, api_key=args.api_key,
                               server_pid=pid, vocab_size=args.vocab_size, seed=args.seed,
                               request_timeout_s=args.request_timeout_s)
        finally:
            if process is not None:
                stop_server(process)
                # The server's log without its access lines (stats every 10 s, warnings, errors).
                with open(log_path) as f:
                    kept = [line for line in f if not line.rstrip().endswith('" 200 OK')]
                with open(output.removesuffix(".json") + ".server.log", "w") as f:
                    f.writelines(kept)
                errors = [line for line in kept if "Traceback" in line or "ERROR" in line]
                print(f"server log: {len(errors)} lines with ERROR or Traceback", "".join(errors[:20]), sep="\n")
    summary["args"] = vars(args)
    row = dict(engine="fastpage", device=f"cpu-{os.cpu_count()}core", workload="soak-tiny-llama",
               commit=_git_commit(), **summary)
    with open(output, "w") as f:
        json.dump([row], f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("rss_samples", "failures")}, indent=1))
    for failure in {f["class"]: f for f in reversed(summary["failures"])}.values():
        print(json.dumps(failure, ensure_ascii=False)[:2000])
    print(f"wrote {output}; {'PASSED' if summary['passed'] else 'FAILED'}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
