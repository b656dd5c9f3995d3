"""Batch-1 decode latency on the GPU, Llama-3-8B shape (32 layers, random bf16 weights): a 512-token
prompt, 128 new tokens (greedy, EOS ignored). fastpage's ms/token is the inter-token latency, from the
first token's arrival to the last's over the 127 intervals (with async scheduling call N returns step
N-1's token, so step times would not count the same thing), eager and with CUDA graphs, each with
async scheduling off and on; HF transformers `generate` runs the same request in the same run. The
roofline is the bytes a decode step must read (every weight but the embedding table, plus the KV
cache) over the measured device-to-device copy bandwidth.

Usage (on the GPU machine): python bench/device/latency_gpu.py --out results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from model_shapes import make_checkpoint  # noqa: E402
from step_profile import profile_steps  # noqa: E402

WORKLOAD = "latency-bs1-512in-128out-llama-3-8b"
PROMPT_LEN, NEW_TOKENS = 512, 128


def copy_bandwidth_bytes_per_s(num_bytes: int = 2 << 30) -> float:
    """A large device-to-device copy, counting bytes read plus bytes written; median of 20."""
    src = torch.empty(num_bytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    times = []
    for _ in range(23):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1e3)
    del src, dst
    return 2 * num_bytes / statistics.median(times[3:])


def run_fastpage(path: str, prompt: list[int], enforce_eager: bool, async_scheduling: bool) -> dict:
    from fastpage import LLM, SamplingParams

    llm = LLM(model=path, dtype="bfloat16", max_model_len=2048, max_num_seqs=8, gpu_memory_utilization=0.9,
              enforce_eager=enforce_eager, async_scheduling=async_scheduling)
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, detokenize=False)
    llm.generate([{"prompt_token_ids": prompt[:64]}], SamplingParams(temperature=0.0, max_tokens=8,
                 ignore_eos=True, detokenize=False), use_tqdm=False)  # warm-up
    runs = []  # per run: the request's start, then each token's arrival
    for run in range(3):
        engine.add_request(f"r{run}", {"prompt_token_ids": prompt}, params)
        times, num_tokens = [time.perf_counter()], 0
        while engine.has_unfinished_requests():
            for out in engine.step():
                arrived = len(out.outputs[0].token_ids)
                times.extend([time.perf_counter()] * (arrived - num_tokens))
                num_tokens = arrived
        assert num_tokens == NEW_TOKENS and len(times) == NEW_TOKENS + 1, (num_tokens, len(times))
        runs.append(times)

    def ms_per_token(times):
        return 1e3 * (times[-1] - times[1]) / (NEW_TOKENS - 1)

    best = min(runs, key=ms_per_token)
    intervals = [b - a for a, b in zip(best[1:], best[2:])]
    del llm, engine
    gc.collect()
    torch.cuda.empty_cache()
    return dict(engine="fastpage", ms_per_token=ms_per_token(best),
                median_ms_per_token=1e3 * statistics.median(intervals), prefill_ms=1e3 * (best[1] - best[0]),
                output_tok_per_s=len(intervals) / (best[-1] - best[1]), enforce_eager=enforce_eager,
                async_scheduling=async_scheduling, runs_ms_per_token=[ms_per_token(t) for t in runs])


def profile_decode(path: str, prompt: list[int], enforce_eager: bool, num_steps: int = 4) -> dict:
    """Batch-1 decode steps under torch.profiler (step_profile.profile_steps)."""
    from fastpage import LLM, SamplingParams

    llm = LLM(model=path, dtype="bfloat16", max_model_len=2048, max_num_seqs=8, gpu_memory_utilization=0.9,
              enforce_eager=enforce_eager)
    engine = llm.llm_engine
    engine.add_request("p", {"prompt_token_ids": prompt},
                       SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True, detokenize=False))
    for _ in range(8):  # the prefill and a few warm decode steps
        engine.step()
    row = profile_steps(engine, num_steps)
    while engine.has_unfinished_requests():
        engine.step()
    del llm, engine
    gc.collect()
    torch.cuda.empty_cache()
    return dict(engine="fastpage", enforce_eager=enforce_eager, **row)


@torch.no_grad()
def run_hf(model, prompt: list[int]) -> dict:
    input_ids = torch.tensor([prompt], device="cuda")
    common = dict(do_sample=False, pad_token_id=0, eos_token_id=None)

    def timed(new_tokens: int) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(input_ids=input_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **common)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(4)  # warm-up
    prefill = min(timed(1) for _ in range(2))
    total = timed(NEW_TOKENS)
    decode = (total - prefill) / (NEW_TOKENS - 1)
    return dict(engine="hf-transformers", ms_per_token=1e3 * decode, prefill_ms=1e3 * prefill,
                output_tok_per_s=1 / decode)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--path", default="/tmp/fastpage_bench/llama-3-8b")
    parser.add_argument("--profile", action="store_true", help="also profile decode steps by kernel, eager and with graphs")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--commit", default="unknown", help="the tree's commit (the GPU machine's copy has no .git)")
    args = parser.parse_args()

    device = torch.cuda.get_device_name()
    bandwidth = copy_bandwidth_bytes_per_s()
    start = time.perf_counter()
    model = make_checkpoint("llama-3-8b", args.path)
    print(f"checkpoint written in {time.perf_counter() - start:.1f} s")
    config = model.config
    embed_bytes = model.get_input_embeddings().weight.numel() * 2
    weights_read = sum(p.numel() * p.element_size() for p in model.parameters()) - embed_bytes
    context = PROMPT_LEN + NEW_TOKENS // 2  # mean context over the decode steps
    kv_read = context * config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * 2
    roofline_ms = 1e3 * (weights_read + kv_read) / bandwidth
    prompt = [random.Random(0).randrange(10000) for _ in range(PROMPT_LEN)]
    common = dict(device=device, commit=args.commit, workload=WORKLOAD, model_shape="llama-3-8b (32 layers, random bf16 weights)",
                  roofline_ms_per_token=roofline_ms, weight_bytes_read_per_token=weights_read,
                  kv_bytes_read_per_token=kv_read, copy_GBps=bandwidth / 1e9)

    rows = []
    if not args.skip_hf:
        rows.append({**common, **run_hf(model, prompt)})
        print(json.dumps(rows[-1]))
    del model
    gc.collect()
    torch.cuda.empty_cache()
    for enforce_eager in (True, False):
        for async_scheduling in (False, True):
            ours = {**common, **run_fastpage(args.path, prompt, enforce_eager, async_scheduling)}
            ours["fraction_of_roofline"] = roofline_ms / ours["ms_per_token"]
            if not args.skip_hf:
                ours["speedup_vs_hf"] = rows[0]["ms_per_token"] / ours["ms_per_token"]
            rows.append(ours)
            print(json.dumps(ours))
    if args.profile:
        for enforce_eager in (True, False):
            rows.append({**common, **profile_decode(args.path, prompt, enforce_eager)})
            print(json.dumps(rows[-1], indent=1))
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"roofline {roofline_ms:.2f} ms/token ({weights_read / 1e9:.2f} GB weights + {kv_read / 1e6:.0f} MB KV "
          f"at {bandwidth / 1e12:.2f} TB/s)")
    for row in rows:
        if row.get("kind") == "profile":
            continue
        mode = "" if row["engine"] != "fastpage" else (" eager" if row["enforce_eager"] else " graphs")
        if row["engine"] == "fastpage":
            mode += " async" if row["async_scheduling"] else " sync"
        print(f"{row['engine'] + mode:>28}: {row['ms_per_token']:.2f} ms/token")


if __name__ == "__main__":
    main()
