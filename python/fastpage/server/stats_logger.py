"""The periodic "how is the server doing" log line (vLLM's LoggingStatLogger)."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("fastpage.server")


class StatsLogger:
    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._last_time = time.monotonic()
        self._last: dict = {}

    def maybe_log(self, stats: dict) -> None:
        now = time.monotonic()
        elapsed = now - self._last_time
        if elapsed < self.interval_s:
            return

        def rate(key):
            return (stats.get(key, 0) - self._last.get(key, 0)) / elapsed

        queries = stats.get("prefix_cache_queries", 0) - self._last.get("prefix_cache_queries", 0)
        hits = stats.get("prefix_cache_hits", 0) - self._last.get("prefix_cache_hits", 0)
        busy = stats.get("num_running", 0) or stats.get("num_waiting", 0) or rate("generation_tokens")
        if busy:
            logger.info(
                "Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f tokens/s, "
                "Running: %d reqs, Waiting: %d reqs, KV cache usage: %.1f%%, Prefix cache hit rate: %.1f%%",
                rate("prompt_tokens"), rate("generation_tokens"), stats.get("num_running", 0),
                stats.get("num_waiting", 0), 100.0 * stats.get("kv_cache_usage", 0.0),
                100.0 * hits / queries if queries else 0.0)
        self._last_time, self._last = now, dict(stats)
