"""Host (CPU) work per engine step at large decode batches, measured on the CPU with a tiny model.

The GPU step of issue 7's large workload (Llama-3-8B, ~208 running sequences, contexts 1000-2000)
takes ~15-20 ms of GPU time; everything else the step does on the host (scheduling, building and
copying the inputs, sampling bookkeeping, appending tokens, stop checks, detokenization, Python
output handling) leaves the GPU idle, because the step waits for the sampled ids. This script runs
the same call path as bench/device/throughput_gpu.py (LLM.generate's loop over LLMEngine.step,
greedy, ignore_eos, detokenize=False, final outputs only; and detokenize=True with an output every
step, as a server streaming every request would) on a 2-layer, hidden-64 Llama with Llama 3's
vocabulary (128,256), so the model's own work is small and the host work shows.

Per step it reports the wall time and splits it, in the same window, with torch.profiler scopes that the C++ engine
names (fastpage::schedule, fastpage::prepare_inputs, fastpage::forward, fastpage::sample,
fastpage::sample_kernels, fastpage::update, fastpage::step_outputs) and timers around the Python
side. Host overhead = wall - (forward + sampling kernels): what the GPU would wait for.

Prompts share a common prefix (prefix caching computes only each prompt's last tokens), so the
prefill takes seconds; lengths are uniform in [--min-context, --max-context], so block tables
hold 63-125 blocks as in the GPU workload. The steps are timed after --warmup-steps decode steps
(output lengths then ~warmup, as mid-run in the GPU workload).

Usage: python bench/host_overhead.py --batch 256 512 --label before --out bench/results/host_overhead.json
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import os
import platform
import pstats
import random
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = 128256  # Llama 3
SCOPES = ("engine_step", "release_logits", "schedule", "execute", "prepare_inputs", "forward", "sample",
          "sample_kernels", "update", "step_outputs")


def make_model(path: str) -> str:
    if not os.path.exists(os.path.join(path, "config.json")):
        subprocess.run([sys.executable, os.path.join(HERE, "random_llama.py"), path, "--hidden-size", "64",
                        "--num-layers", "2", "--num-heads", "4", "--num-kv-heads", "2", "--vocab-size",
                        str(VOCAB), "--max-position-embeddings", "4096"], check=True)
    return path


def prompts_for(batch: int, min_context: int, max_context: int, seed: int = 0) -> list[list[int]]:
    """Prompt i: the first L_i - 8 tokens of one shared text, then 8 tokens of its own."""
    rng = random.Random(seed)
    shared = [rng.randrange(10000) for _ in range(max_context)]
    lengths = [rng.randint(min_context, max_context) for _ in range(batch)]
    return [shared[:n - 8] + [rng.randrange(10000) for _ in range(8)] for n in lengths]


class TimedEngine:
    """Stands in for LLMEngine.engine (the C++ engine) and times its step() calls."""

    def __init__(self, engine):
        self._engine = engine
        self.seconds = 0.0
        self.cpu_seconds = 0.0  # this thread's CPU time: less sensitive to other jobs on the box

    def step(self):
        start, start_cpu = time.perf_counter(), time.thread_time()
        outputs = self._engine.step()
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.thread_time() - start_cpu
        return outputs

    def __getattr__(self, name):
        return getattr(self._engine, name)


def run_steps(llm_engine, num_steps: int, finished: dict) -> None:
    """LLM._run's loop body, num_steps times."""
    for _ in range(num_steps):
        for output in llm_engine.step():
            if output.finished:
                finished[output.request_id] = output


def measure(path: str, batch: int, args, detokenize: bool) -> dict:
    from fastpage import LLM, SamplingParams, sampling_params

    prompts = prompts_for(batch, args.min_context, args.max_context)
    num_blocks = sum((len(p) + args.max_tokens + 15) // 16 for p in prompts) + 64
    llm = LLM(model=path, dtype="float32", max_model_len=4096, max_num_seqs=batch,
              max_num_batched_tokens=16384, num_gpu_blocks_override=num_blocks, enforce_eager=True)
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True, detokenize=detokenize)
    if not detokenize and hasattr(sampling_params, "RequestOutputKind"):
        # What LLM.generate submits (since it asks for final outputs only); the detokenizing rows
        # stand for a server streaming every request: per-step cumulative outputs.
        params = dataclasses.replace(params, output_kind=sampling_params.RequestOutputKind.FINAL_ONLY)
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), {"prompt_token_ids": prompt}, params)
    finished: dict = {}
    start = time.perf_counter()
    while engine.get_stats()["num_waiting"] or engine.engine.stats().num_running < batch:
        run_steps(engine, 1, finished)
    run_steps(engine, args.warmup_steps, finished)
    warm_s = time.perf_counter() - start

    # One window: wall per step, time inside the C++ engine's step(), and its phases from the scopes
    # it names (the profiler records only the C++ scopes and ATen ops, inside the forward and the
    # sampling kernels: host overhead = wall - forward - sampling kernels does not include it).
    timed = TimedEngine(engine.engine)
    engine.engine = timed
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start, start_cpu = time.perf_counter(), time.thread_time()
        run_steps(engine, args.steps, finished)
        wall = (time.perf_counter() - start) / args.steps
        python_cpu = (time.thread_time() - start_cpu - timed.cpu_seconds) / args.steps
    in_engine = timed.seconds / args.steps
    engine.engine = timed._engine
    scopes = {name: 0.0 for name in SCOPES}
    for event in prof.key_averages():
        if event.key.startswith("fastpage::") and event.key[len("fastpage::"):] in scopes:
            scopes[event.key[len("fastpage::"):]] = event.cpu_time_total / 1e3 / args.steps  # ms

    # The Python side, function by function (a second window, under cProfile).
    profiler = cProfile.Profile()
    profiler.enable()
    run_steps(engine, args.steps, finished)
    profiler.disable()
    stats = pstats.Stats(profiler)
    python_top = []
    for (file, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        python_top.append((tottime, f"{os.path.basename(file)}:{line}({func})", ncalls, cumtime))
    python_top.sort(reverse=True)

    assert not finished, "a request finished inside the measured window: raise --max-tokens"
    engine.abort_request([str(i) for i in range(batch)])
    del llm

    wall_ms, engine_ms = wall * 1e3, in_engine * 1e3
    # Freeing the CPU logits (an munmap) has no GPU counterpart (the caching allocator keeps them).
    device_work_ms = scopes["forward"] + scopes["sample_kernels"] + scopes["release_logits"]
    scheduled = (scopes["schedule"] + scopes["execute"] + scopes["sample"] + scopes["release_logits"] + scopes["update"]
                 + scopes["step_outputs"])
    row = dict(
        batch=batch, detokenize=detokenize, output_kind=str(getattr(params, "output_kind", "CUMULATIVE")), steps=args.steps, warmup_steps=args.warmup_steps,
        contexts=[args.min_context, args.max_context], warmup_seconds=round(warm_s, 1),
        wall_ms_per_step=wall_ms,
        model_and_sampling_kernels_ms=device_work_ms,  # and the CPU-only release of the logits
        host_overhead_ms=wall_ms - device_work_ms,
        breakdown_ms=dict(
            schedule=scopes["schedule"],
            prepare_inputs=scopes["prepare_inputs"],
            execute_other=scopes["execute"] - scopes["prepare_inputs"] - scopes["forward"],
            sampler_bookkeeping=scopes["sample"] - scopes["sample_kernels"],
            update=scopes["update"],
            step_outputs=scopes["step_outputs"],
            # logits indices, forks, sampling rows, freeing the step's tensors
            engine_unscoped=scopes["engine_step"] - scheduled,
            # pybind11 turning the StepOutputs into Python objects, the GIL
            binding=engine_ms - scopes["engine_step"],
            python_output_processing=wall_ms - engine_ms,
        ),
        # The same Python part as CPU time of the stepping thread (wall time above grows with the
        # box's load; this much less).
        python_output_processing_cpu_ms=python_cpu * 1e3,
        profiled_scopes_ms=scopes,
        python_top_tottime=[dict(function=f, ms_per_step=t * 1e3 / args.steps, calls_per_step=n / args.steps,
                                 cum_ms_per_step=c * 1e3 / args.steps) for t, f, n, c in python_top[:12]],
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--min-context", type=int, default=1000)
    parser.add_argument("--max-context", type=int, default=2000)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=1000)
    parser.add_argument("--detokenize", choices=["off", "on", "both"], default="both")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-dir", default="/tmp/fastpage_bench/llama-h64-v128k")
    parser.add_argument("--label", default="")
    parser.add_argument("--out", default=None, help="JSON file; rows are appended to its list")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    path = make_model(args.model_dir)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.detokenize]
    load = os.getloadavg()[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    rows = []
    for batch in args.batch:
        for detokenize in modes:
            row = measure(path, batch, args, detokenize)
            row.update(label=args.label, commit=commit, machine=platform.processor() or platform.machine(),
                       threads=args.threads, load_before=round(load, 2), load_after=round(os.getloadavg()[0], 2))
            rows.append(row)
            b = row["breakdown_ms"]
            print(f"batch {batch} detokenize={detokenize}: wall {row['wall_ms_per_step']:.2f} ms/step, model+kernels "
                  f"{row['model_and_sampling_kernels_ms']:.2f}, host {row['host_overhead_ms']:.2f} = "
                  + ", ".join(f"{k} {v:.2f}" for k, v in b.items())
                  + f"; python CPU time {row['python_output_processing_cpu_ms']:.2f}", flush=True)
            for entry in row["python_top_tottime"][:8]:
                print(f"    {entry['ms_per_step']:7.3f} ms  {entry['function']}")
    if args.out:
        existing = json.load(open(args.out)) if os.path.exists(args.out) else []
        with open(args.out, "w") as f:
            json.dump(existing + rows, f, indent=1)


if __name__ == "__main__":
    main()
