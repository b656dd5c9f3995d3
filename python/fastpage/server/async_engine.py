"""One engine thread steps the LLMEngine; HTTP handlers talk to it through a command list and
per-request output slots.

The LLMEngine is not thread-safe, so only the engine thread touches it: handlers submit "add" and
"abort" commands, which run between steps. Outputs are cumulative, so each request keeps only the
newest one (a slow client skips intermediate outputs instead of growing a queue). A handler whose
client goes away aborts its request, and the engine frees its blocks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from fastpage.server.metrics import ServerMetrics
from fastpage.server.stats_logger import StatsLogger

logger = logging.getLogger("fastpage.server")

STATS_INTERVAL_S = 0.25  # how often the engine thread samples get_stats() while busy


class EngineDeadError(RuntimeError):
    pass


class _OutputSlot:
    """The newest cumulative output of one request, handed from the engine thread to a handler."""

    def __init__(self):
        self.latest: Any = None
        self.error: BaseException | None = None
        self.ready = asyncio.Event()

    def put(self, output) -> None:
        self.latest = output
        self.ready.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.ready.set()

    async def get(self):
        await self.ready.wait()
        self.ready.clear()
        if self.error is not None:
            raise self.error
        return self.latest


class AsyncEngine:
    def __init__(self, engine, metrics: ServerMetrics | None = None, stuck_after_s: float = 300.0,
                 log_interval_s: float = 10.0):
        self.engine = engine
        self.metrics = metrics
        self.stuck_after_s = stuck_after_s
        self._stats_logger = StatsLogger(log_interval_s)
        self._cond = threading.Condition()
        self._commands: list[tuple] = []
        self._slots: dict[str, _OutputSlot] = {}  # engine thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._error: BaseException | None = None
        self._step_started: float | None = None
        self.latest_stats: dict = {}

    # ---------------------------------------------------------------- lifecycle
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="fastpage-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.engine.shutdown()  # reaps tensor/pipeline parallel workers

    def health_problem(self) -> str | None:
        """None when healthy; otherwise why not (dead thread or a step that does not return)."""
        if self._error is not None:
            return f"engine failed: {self._error!r}"
        try:
            self.engine.check_health()  # a tensor/pipeline parallel worker that died, even while idle
        except RuntimeError as err:
            return str(err)
        if self._thread is None or not self._thread.is_alive():
            return "engine thread is not running"
        started = self._step_started
        if started is not None and time.monotonic() - started > self.stuck_after_s:
            return f"engine step has not returned for {time.monotonic() - started:.0f} s"
        return None

    # ---------------------------------------------------------------- handler side
    async def generate_stream(self, request_id: str, prompt, params, priority: int = 0) -> "RequestStream":
        """Adds the request (ValueError for bad input); iterate the result for cumulative outputs."""
        problem = self.health_problem()
        if problem is not None:
            raise EngineDeadError(problem)
        slot = _OutputSlot()
        added = self._loop.create_future()
        self._submit(("add", request_id, prompt, params, priority, slot, added))
        try:
            await added
        except asyncio.CancelledError:
            self.abort(request_id)
            raise
        return RequestStream(self, request_id, slot)

    def abort(self, request_id: str) -> None:
        self._submit(("abort", request_id))

    def _submit(self, command: tuple) -> None:
        with self._cond:
            self._commands.append(command)
            self._cond.notify()

    # ---------------------------------------------------------------- engine thread
    def _run(self) -> None:
        last_stats = 0.0
        try:
            while True:
                with self._cond:
                    while not (self._commands or self._stopping or self.engine.has_unfinished_requests()):
                        self._cond.wait(timeout=1.0)
                        self._sample_stats()
                    if self._stopping:
                        return
                    commands, self._commands = self._commands, []
                for command in commands:
                    self._apply(command)
                if self.engine.has_unfinished_requests():
                    self._step_started = time.monotonic()
                    outputs = self.engine.step()
                    self._step_started = None
                    self._dispatch(outputs)
                # Sample while busy, and once more on going idle so /metrics shows freed blocks.
                idle = not self.engine.has_unfinished_requests()
                if idle or time.monotonic() - last_stats > STATS_INTERVAL_S:
                    self._sample_stats()
                    last_stats = time.monotonic()
        except BaseException as err:  # noqa: BLE001 - the engine is dead; tell everyone waiting
            logger.exception("engine thread failed")
            self._error = err
            dead = EngineDeadError(f"engine failed: {err!r}")
            for slot in self._slots.values():
                self._loop.call_soon_threadsafe(slot.fail, dead)
            with self._cond:
                for command in self._commands:
                    if command[0] == "add":
                        self._loop.call_soon_threadsafe(_set_exception, command[6], dead)

    def _apply(self, command: tuple) -> None:
        if command[0] == "abort":
            if self._slots.pop(command[1], None) is not None:
                self.engine.abort_request(command[1])
            return
        _, request_id, prompt, params, priority, slot, added = command
        try:
            self.engine.add_request(request_id, prompt, params, priority=priority)
        except (ValueError, TypeError) as err:
            self._loop.call_soon_threadsafe(_set_exception, added, err)
            return
        self._slots[request_id] = slot
        self._loop.call_soon_threadsafe(_set_result, added, None)

    def _dispatch(self, outputs) -> None:
        for output in outputs:
            slot = self._slots.get(output.request_id)
            if slot is None:
                continue
            if output.finished:
                del self._slots[output.request_id]
            self._loop.call_soon_threadsafe(slot.put, output)

    def _sample_stats(self) -> None:
        stats = self.engine.get_stats()
        self.latest_stats = stats
        if self.metrics is not None:
            self.metrics.update_from_engine(stats)
        self._stats_logger.maybe_log(stats)


class RequestStream:
    """The outputs of one added request. abort() is safe to call at any time, any number of times:
    handlers call it in a finally block, so a client that goes away frees the request's blocks."""

    def __init__(self, engine: AsyncEngine, request_id: str, slot: _OutputSlot):
        self._engine = engine
        self.request_id = request_id
        self._slot = slot
        self.finished = False

    def abort(self) -> None:
        if not self.finished:
            self.finished = True
            self._engine.abort(self.request_id)

    async def __aiter__(self):
        metrics = self._engine.metrics
        arrival = last = time.monotonic()
        num_tokens = 0
        try:
            while True:
                output = await self._slot.get()
                now = time.monotonic()
                tokens = sum(len(c.token_ids) for c in output.outputs)
                if metrics is not None and tokens > num_tokens:
                    if num_tokens == 0:
                        metrics.time_to_first_token.observe(now - arrival)
                    else:
                        per_token = (now - last) / (tokens - num_tokens)
                        for _ in range(tokens - num_tokens):
                            metrics.inter_token_latency.observe(per_token)
                    last, num_tokens = now, tokens
                if output.finished:
                    self.finished = True
                    if metrics is not None:
                        metrics.e2e_request_latency.observe(now - arrival)
                        for completion in output.outputs:
                            metrics.request_finished(completion.finish_reason)
                yield output
                if output.finished:
                    return
        finally:
            self.abort()  # no-op when finished; otherwise the consumer stopped early or was cancelled


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
