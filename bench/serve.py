"""Serving benchmark client (like `vllm bench serve`): random prompts sent to a running server at
Poisson arrivals (--request-rate) and/or under a concurrency cap (--max-concurrency); reports TTFT,
TPOT and ITL percentiles, throughput and failures, and writes JSON to bench/results/.

  python bench/serve.py --base-url http://127.0.0.1:8000 --num-prompts 200 --request-rate 8 \
      --random-input-len 512 --random-output-len 128

With --offline MODEL the same workload runs through fastpage.LLM.generate in this process instead
(no server): its output tok/s against the server's at unlimited rate is the serving overhead.
start_server/stop_server run a server as a subprocess for the benchmarks that start their own.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import time

import httpx


@dataclasses.dataclass
class RequestResult:
    ok: bool = False
    error: str = ""
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = dataclasses.field(default_factory=list)


def make_workload(args) -> list[tuple[list[int], int]]:
    """Random token-id prompts; lengths uniform in [len*(1-range_ratio), len*(1+range_ratio)]."""
    rng = random.Random(args.seed)

    def length(mean):
        low, high = int(mean * (1 - args.random_range_ratio)), int(mean * (1 + args.random_range_ratio))
        return max(1, rng.randint(low, max(low, high)))

    return [([rng.randrange(args.max_token_id) for _ in range(length(args.random_input_len))],
             length(args.random_output_len)) for _ in range(args.num_prompts)]


async def send(client: httpx.AsyncClient, model: str, prompt: list[int], max_tokens: int,
               temperature: float = 0.0, stream: bool = True) -> RequestResult:
    """One /v1/completions request, EOS ignored. Streamed: TTFT and the gaps between chunks with text;
    not streamed: the latency only."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
            "ignore_eos": True, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    result = RequestResult(prompt_tokens=len(prompt))
    start = time.perf_counter()
    try:
        if stream:
            async with client.stream("POST", "/v1/completions", json=body) as response:
                await read_stream(response, result, start)
        else:
            response = await client.post("/v1/completions", json=body)
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {response.text[:200]!r}"
            else:
                result.output_tokens = response.json()["usage"]["completion_tokens"]
        if result.error:
            return result
        result.latency = time.perf_counter() - start
        result.ok = result.output_tokens > 0
        if not result.ok:
            result.error = "no output tokens"
    except (httpx.HTTPError, json.JSONDecodeError) as err:
        result.error = repr(err)
    return result


async def read_stream(response: httpx.Response, result: RequestResult, start: float) -> None:
    if response.status_code != 200:
        result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
        return
    last = start
    async for line in response.aiter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            result.error = chunk["error"]["message"]
            return
        if chunk.get("usage"):
            result.output_tokens = chunk["usage"]["completion_tokens"]
        if chunk["choices"] and chunk["choices"][0]["text"]:
            now = time.perf_counter()
            if result.ttft == 0.0:
                result.ttft = now - start
            else:
                result.itl.append(now - last)
            last = now


async def run(args) -> dict:
    workload = make_workload(args)
    rng = random.Random(args.seed + 1)
    limit = asyncio.Semaphore(args.max_concurrency or len(workload) or 1)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    timeout = httpx.Timeout(args.timeout)
    limits = httpx.Limits(max_connections=args.max_concurrency or 1000)
    async with httpx.AsyncClient(base_url=args.base_url, headers=headers, timeout=timeout,
                                 limits=limits) as client:
        async def one(prompt, max_tokens):
            async with limit:
                return await send(client, args.model, prompt, max_tokens)

        tasks = []
        start = time.perf_counter()
        for prompt, max_tokens in workload:
            tasks.append(asyncio.ensure_future(one(prompt, max_tokens)))
            if math.isfinite(args.request_rate):
                await asyncio.sleep(rng.expovariate(args.request_rate))  # Poisson arrivals
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return summarize(args, results, duration)


def start_server(command: list[str], base_url: str, log_path: str, env: dict | None = None,
                 timeout_s: float = 600.0) -> subprocess.Popen:
    """Starts `command` (its output to log_path) and returns the process once GET /health answers 200;
    RuntimeError with the log's tail if it exits or is not healthy within timeout_s."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/health", timeout=5).status_code == 200:
                return process
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.5)
    stop_server(process)
    with open(log_path) as log:
        tail = log.read()[-3000:]
    raise RuntimeError(f"server not healthy (exit code {process.returncode}); {log_path} ends:\n{tail}")


def stop_server(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGINT (uvicorn's graceful shutdown), then SIGKILL after timeout_s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_offline(args) -> dict:
    """The same workload through LLM.generate (one batch, greedy, ignore_eos): the no-server baseline."""
    from fastpage import LLM, SamplingParams

    workload = make_workload(args)
    llm = LLM(model=args.offline, dtype=args.dtype, max_model_len=args.max_model_len,
              max_num_seqs=args.max_num_seqs, device=args.device,
              kv_cache_memory_bytes=args.kv_cache_memory_bytes)
    prompts = [{"prompt_token_ids": prompt} for prompt, _ in workload]
    params = [SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True) for _, max_tokens in workload]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    duration = time.perf_counter() - start
    input_tokens = sum(len(p) for p, _ in workload)
    output_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {"offline_model": args.offline, "num_prompts": len(workload), "random_input_len": args.random_input_len,
            "random_output_len": args.random_output_len, "duration_s": duration, "completed": len(outputs),
            "total_input_tokens": input_tokens, "total_output_tokens": output_tokens,
            "request_throughput": len(outputs) / duration, "output_throughput": output_tokens / duration,
            "total_token_throughput": (input_tokens + output_tokens) / duration}


def percentiles(values: list[float], name: str) -> dict:
    values = sorted(values)
    out = {f"mean_{name}_ms": 1000 * sum(values) / len(values) if values else 0.0}
    for p in (50, 90, 99):
        out[f"p{p}_{name}_ms"] = 1000 * values[min(len(values) - 1, int(p / 100 * len(values)))] if values else 0.0
    return out


def summarize(args, results: list[RequestResult], duration: float) -> dict:
    done = [r for r in results if r.ok]
    output_tokens = sum(r.output_tokens for r in done)
    summary = {
        "base_url": args.base_url, "num_prompts": len(results), "request_rate": args.request_rate,
        "max_concurrency": args.max_concurrency, "random_input_len": args.random_input_len,
        "random_output_len": args.random_output_len, "duration_s": duration,
        "completed": len(done), "failed": len(results) - len(done),
        "total_input_tokens": sum(r.prompt_tokens for r in done), "total_output_tokens": output_tokens,
        "request_throughput": len(done) / duration, "output_throughput": output_tokens / duration,
        "total_token_throughput": (output_tokens + sum(r.prompt_tokens for r in done)) / duration,
        **percentiles([r.ttft for r in done], "ttft"),
        **percentiles([(r.latency - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1], "tpot"),
        **percentiles([gap for r in done for gap in r.itl], "itl"),
        **percentiles([r.latency for r in done], "e2el"),
        "errors": sorted({r.error for r in results if not r.ok})[:10],
    }
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="model name to send (default: the server's first)")
    parser.add_argument("--api-key", default=os.environ.get("FASTPAGE_API_KEY"))
    parser.add_argument("--num-prompts", type=int, default=100)
    parser.add_argument("--request-rate", type=float, default=float("inf"),
                        help="requests per second, Poisson arrivals (default: all at once)")
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--random-input-len", type=int, default=512)
    parser.add_argument("--random-output-len", type=int, default=128)
    parser.add_argument("--random-range-ratio", type=float, default=0.0)
    parser.add_argument("--max-token-id", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--result-dir", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--label", default="fastpage")
    offline = parser.add_argument_group("offline baseline (--offline MODEL: no server)")
    offline.add_argument("--offline", default=None, metavar="MODEL", help="run the workload through LLM.generate")
    offline.add_argument("--dtype", default="auto")
    offline.add_argument("--max-model-len", type=int, default=None)
    offline.add_argument("--max-num-seqs", type=int, default=256)
    offline.add_argument("--device", default="auto")
    offline.add_argument("--kv-cache-memory-bytes", type=int, default=None)
    args = parser.parse_args()
    if args.offline is not None:
        summary = run_offline(args)
        write(args, summary, f"offline-{args.label}")
        return
    if args.model is None:
        args.model = httpx.get(f"{args.base_url}/v1/models", headers={"Authorization": f"Bearer {args.api_key}"}
                               if args.api_key else {}).json()["data"][0]["id"]
    summary = asyncio.run(run(args))
    rate = "inf" if math.isinf(args.request_rate) else f"{args.request_rate:g}"
    write(args, summary, f"serve-{args.label}-rate{rate}")


def write(args, summary: dict, name: str) -> None:
    for key, value in summary.items():
        print(f"{key:>26}: {value:.2f}" if isinstance(value, float) else f"{key:>26}: {value}")
    os.makedirs(args.result_dir, exist_ok=True)
    path = os.path.join(args.result_dir, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
