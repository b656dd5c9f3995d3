"""Prometheus metrics with vLLM's names under the fastpage: prefix.

Engine-wide numbers come from each step batch's EngineStats (read by the output thread); per-request
latencies (TTFT, inter-token, end-to-end) are observed by the output processor as each step's tokens
arrive, with the step's own timestamp.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                    5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class ServerMetrics:
    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        r = self.registry

        def gauge(name, doc):
            return Gauge(f"fastpage:{name}", doc, labels, registry=r).labels(model_name)

        def counter(name, doc):
            return Counter(f"fastpage:{name}", doc, labels, registry=r).labels(model_name)

        def histogram(name, doc, buckets=_LATENCY_BUCKETS):
            return Histogram(f"fastpage:{name}", doc, labels, buckets=buckets,
                             registry=r).labels(model_name)

        self.num_requests_running = gauge("num_requests_running", "Requests being computed.")
        self.num_requests_waiting = gauge("num_requests_waiting", "Requests waiting to be scheduled.")
        self.num_requests_swapped = gauge("num_requests_swapped", "Requests swapped out to CPU.")
        self.kv_cache_usage_perc = gauge("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0-1).")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens computed.")
        self.generation_tokens = counter("generation_tokens", "Tokens generated.")
        self.num_preemptions = counter("num_preemptions", "Preemptions (recompute or swap).")
        self.prefix_cache_queries = counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.")
        self.prefix_cache_hits = counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        self.time_to_first_token = histogram("time_to_first_token_seconds", "Time to first token.")
        self.inter_token_latency = histogram("inter_token_latency_seconds", "Time between output tokens.")
        self.e2e_request_latency = histogram("e2e_request_latency_seconds", "Request latency, end to end.")
        self._request_success = Counter("fastpage:request_success", "Finished requests by reason.",
                                        ["model_name", "finished_reason"], registry=r)
        self._model_name = model_name
        self._last_totals: dict[str, float] = {}

    def update_from_engine(self, stats: dict) -> None:
        self.num_requests_running.set(stats.get("num_running", 0))
        self.num_requests_waiting.set(stats.get("num_waiting", 0))
        self.num_requests_swapped.set(stats.get("num_swapped", 0))
        self.kv_cache_usage_perc.set(stats.get("kv_cache_usage", 0.0))
        # The engine reports running totals; counters advance by the difference.
        for key, counter in (("prompt_tokens", self.prompt_tokens),
                             ("generation_tokens", self.generation_tokens),
                             ("num_preemptions", self.num_preemptions),
                             ("prefix_cache_queries", self.prefix_cache_queries),
                             ("prefix_cache_hits", self.prefix_cache_hits)):
            total = stats.get(key, 0)
            delta = total - self._last_totals.get(key, 0)
            if delta > 0:
                counter.inc(delta)
            self._last_totals[key] = total

    # The output processor's observer interface (now: time.monotonic() seconds of the step).
    def on_tokens(self, state, num_new: int, now: float, first: bool) -> None:
        if first:
            self.time_to_first_token.observe(now - state.arrival)
        else:
            per_token = (now - state.last_token_time) / num_new
            for _ in range(num_new):
                self.inter_token_latency.observe(per_token)
        state.last_token_time = now

    def on_finished(self, state, now: float) -> None:
        self.e2e_request_latency.observe(now - state.arrival)
        for seq in state.sequences:
            self._request_success.labels(self._model_name, seq.finish_reason or "abort").inc()
