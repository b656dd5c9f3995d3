"""The server's side of the engine. Three threads, one request table:
- the C++ engine loop steps on its own thread, back to back, without the GIL;
- one Python thread ("fastpage-outputs") takes each batch of step outputs in one GIL-free call and
  runs the output processor on it, which puts every request's output into that request's collector;
  then it wakes the handlers whose collectors got something, with one call into the event loop;
- HTTP handlers on the event loop add and abort requests directly (both are thread-safe: a queue
  push) and await their collector.
A collector merges the DELTA outputs its handler has not taken yet, so a slow client gets bigger
chunks rather than a growing queue. A handler whose client goes away aborts its request, and the
engine frees its blocks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from fastpage.output_processor import EngineDeadError
from fastpage.server.metrics import ServerMetrics
from fastpage.server.stats_logger import StatsLogger

logger = logging.getLogger("fastpage.server")

TAKE_TIMEOUT_S = 0.25  # how long the output thread waits for a batch before refreshing idle stats

__all__ = ["AsyncEngine", "EngineDeadError", "RequestCollector", "RequestStream"]


class _Waker:
    """Collectors that got output during one batch; flush() wakes their handlers with one call."""

    def __init__(self):
        self.pending: list[RequestCollector] = []

    def flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.pending:
            woken, self.pending = self.pending, []
            loop.call_soon_threadsafe(_wake, woken)


def _wake(collectors: list[RequestCollector]) -> None:
    for collector in collectors:
        collector.wake()


class RequestCollector:
    """The outputs of one request on their way from the output thread to its handler: the output
    not taken yet (DELTA outputs merged into it), or the error that ended the request. put() runs
    on the output thread: a subclass may do per-output work there, off the event loop (prepare)."""

    def __init__(self, waker: _Waker):
        self._waker = waker
        self._lock = threading.Lock()  # put/fail run on the output thread, get on the event loop
        self._output = None
        self._error: BaseException | None = None
        # The handler's wait: a bare future of the event loop (created where the handler runs).
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future | None = None

    def prepare(self, output):
        """What get() hands out for this output, merged with whatever is not taken yet (add)."""
        return output

    def put(self, output) -> None:
        item = self.prepare(output)
        with self._lock:
            first = self._output is None and self._error is None
            self._output = item if self._output is None else self._output.add(item)
        if first:
            self._waker.pending.append(self)

    def fail(self, error: BaseException) -> None:
        with self._lock:
            first = self._output is None and self._error is None
            self._error = error
        if first:
            self._waker.pending.append(self)

    async def get(self):
        while True:
            with self._lock:
                output, self._output = self._output, None
                error = self._error
            if output is not None:
                return output
            if error is not None:
                raise error
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def wake(self) -> None:
        """On the event loop: the output thread put something."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class AsyncEngine:
    def __init__(self, engine, metrics: ServerMetrics | None = None, stuck_after_s: float = 300.0,
                 log_interval_s: float = 10.0):
        self.engine = engine  # fastpage.LLMEngine
        self.metrics = metrics
        self.stuck_after_s = stuck_after_s
        self._stats_logger = StatsLogger(log_interval_s)
        self._waker = _Waker()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._last_progress = time.monotonic()
        self.latest_stats: dict = {}

    # ---------------------------------------------------------------- lifecycle
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.engine.processor.observer = self.metrics
        self.engine.start_loop()
        self._thread = threading.Thread(target=self._run_outputs, name="fastpage-outputs", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.engine.shutdown()  # stops the loop's thread; reaps tensor/pipeline parallel workers

    def health_problem(self) -> str | None:
        """None when healthy; otherwise why not (a dead engine or thread, or no step for too long
        while requests wait)."""
        if self._error is not None:
            return f"engine failed: {self._error!r}"
        try:
            self.engine.check_health()  # a tensor/pipeline parallel worker that died, even while idle
        except RuntimeError as err:
            return str(err)
        if self._thread is None or not self._thread.is_alive():
            return "engine output thread is not running"
        stalled = time.monotonic() - self._last_progress
        if self.engine.has_unfinished_requests() and stalled > self.stuck_after_s:
            return f"no engine step has ended for {stalled:.0f} s"
        return None

    # ---------------------------------------------------------------- handler side
    async def generate_stream(self, request_id: str, prompt, params, priority: int = 0,
                              collector_type: type[RequestCollector] = RequestCollector) -> RequestStream:
        """Adds the request (ValueError for bad input); iterate the result for its outputs (what the
        collector type's prepare() makes of them)."""
        problem = self.health_problem()
        if problem is not None:
            raise EngineDeadError(problem)
        if not self.engine.has_unfinished_requests():
            self._last_progress = time.monotonic()  # an idle engine has not stalled
        collector = collector_type(self._waker)
        self.engine.add_request(request_id, prompt, params, priority=priority, collector=collector)
        return RequestStream(self, request_id, collector)

    def abort(self, request_id: str) -> None:
        self.engine.abort_request(request_id)

    # ---------------------------------------------------------------- output thread
    def _run_outputs(self) -> None:
        engine = self.engine
        loop = self._loop
        try:
            while not self._stopping.is_set():
                batch = engine.engine.take(TAKE_TIMEOUT_S)
                engine.processor.process(batch)
                self._waker.flush(loop)
                if batch.num_steps:
                    self._last_progress = time.monotonic()
                self._sample_stats(batch.stats)
                if batch.failure:
                    raise EngineDeadError(f"engine failed: {batch.failure}")
        except BaseException as err:  # noqa: BLE001 - the engine is dead; tell everyone waiting
            logger.exception("engine failed")
            self._error = err
            engine.processor.fail_all(err if isinstance(err, EngineDeadError) else EngineDeadError(repr(err)))
            self._waker.flush(loop)

    def _sample_stats(self, stats) -> None:
        stats = self.engine.stats_dict(stats)
        self.latest_stats = stats
        if self.metrics is not None:
            self.metrics.update_from_engine(stats)
        self._stats_logger.maybe_log(stats)


class RequestStream:
    """The outputs of one added request, as an async iterator. abort() is safe to call at any time,
    any number of times: handlers call it in a finally block, so a client that goes away frees the
    request's blocks."""

    def __init__(self, engine: AsyncEngine, request_id: str, collector: RequestCollector):
        self._engine = engine
        self.request_id = request_id
        self._collector = collector
        self.finished = False
        self._ended = False

    def abort(self) -> None:
        if not self.finished:
            self.finished = True
            self._engine.abort(self.request_id)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self):
        if self._ended:
            raise StopAsyncIteration
        try:
            output = await self._collector.get()
        except BaseException:
            self._ended = True
            self.abort()  # cancelled, or the request failed: nothing more will come
            raise
        if output.finished:
            self.finished = self._ended = True
        return output
