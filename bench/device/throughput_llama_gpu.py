"""Issue 7's large workload on the GPU: 1000 requests of 1000 random prompt tokens and 1000 output
tokens (ignore_eos, greedy), random weights in the Llama-3-8B shape, bf16. No peer runs here (HF
generate would take hours); the row carries the floor of this workload on this machine instead,
from the measured copy bandwidth and bf16 matmul rate:
  prefill: 2 x (non-embedding parameters) FLOPs per prompt token + causal attention;
  decode:  every step reads the weights once (or, when slower, does 2 x parameters FLOPs per
           sequence), and each sequence's KV cache (context x 128 KiB in
           bf16, 64 KiB with --kv-cache-dtype fp8); at batch B (what the KV cache holds) there are
           output_tokens / B steps.
--num-requests scales the workload down (same lengths) when device time is short.

Usage (on the GPU machine): python bench/device/throughput_llama_gpu.py --out results.json
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
from latency_gpu import copy_bandwidth_bytes_per_s  # noqa: E402
from model_shapes import make_checkpoint  # noqa: E402
from throughput_gpu import run_fastpage  # noqa: E402

PROMPT_LEN = OUTPUT_LEN = 1000


def default_max_num_seqs(kv_cache_dtype: str) -> int:
    """What an H100's KV cache at gpu_memory_utilization 0.9 holds of 2,000-token sequences."""
    return 208 if kv_cache_dtype == "auto" else 416


def matmul_flops_per_s(n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    times = []
    for _ in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times[3:])


def floor_seconds(config, num_requests: int, batch: int, bandwidth: float, flops: float,
                  kv_bytes_per_element: int) -> dict:
    layers, hidden = config.num_hidden_layers, config.hidden_size
    kv_dim = config.num_key_value_heads * config.head_dim
    params = layers * (hidden * (hidden + 2 * kv_dim) + hidden * hidden + 3 * hidden * config.intermediate_size)
    params += config.vocab_size * hidden  # lm_head (the embedding is a lookup)
    kv_bytes_per_token = layers * 2 * kv_dim * kv_bytes_per_element
    prompt_tokens, output_tokens = num_requests * PROMPT_LEN, num_requests * OUTPUT_LEN
    # causal attention of the prompt: QK^T and PV over the average half prompt, all heads
    attn_flops = num_requests * layers * 4 * config.num_attention_heads * config.head_dim * PROMPT_LEN**2 / 2
    prefill = (2 * params * prompt_tokens + attn_flops) / flops
    mean_context = PROMPT_LEN + OUTPUT_LEN / 2
    # Each decode step reads the weights once and does 2 x params FLOPs per sequence: at batch ~400 the
    # FLOPs take longer than the bytes, so the slower of the two counts.
    decode_linears = max((output_tokens / batch) * params * 2 / bandwidth, 2 * params * output_tokens / flops)
    decode_kv = output_tokens * mean_context * kv_bytes_per_token / bandwidth
    total = prefill + decode_linears + decode_kv
    return dict(floor_prefill_s=prefill, floor_decode_linears_s=decode_linears, floor_decode_kv_s=decode_kv,
                floor_seconds=total, floor_output_tok_per_s=output_tokens / total, floor_batch=batch,
                kv_bytes_per_token=kv_bytes_per_token)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--path", default="/tmp/fastpage_bench/llama-3-8b")
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--max-num-batched-tokens", type=int, default=16384)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                        help="default: the engine's (on for one GPU)")
    parser.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8", "fp8_e4m3"])
    # The bf16 KV cache of an H100 at gpu_memory_utilization 0.9 holds ~438k tokens (27.4k blocks of
    # 16), 219 sequences of 2000 tokens: more running sequences would be preempted as they grow. An
    # fp8 cache holds twice that. Default: 208 (bf16) or 416 (fp8).
    parser.add_argument("--max-num-seqs", type=int, default=None)
    args = parser.parse_args()
    kv_bytes_per_element = 2 if args.kv_cache_dtype == "auto" else 1
    max_num_seqs = args.max_num_seqs or default_max_num_seqs(args.kv_cache_dtype)

    device = torch.cuda.get_device_name()
    bandwidth, flops = copy_bandwidth_bytes_per_s(), matmul_flops_per_s()
    print(f"copy {bandwidth / 1e12:.2f} TB/s, bf16 matmul {flops / 1e12:.0f} TFLOP/s")
    start = time.perf_counter()
    if not os.path.exists(os.path.join(args.path, "config.json")):
        make_checkpoint("llama-3-8b", args.path)
        gc.collect()
        torch.cuda.empty_cache()
    print(f"checkpoint ready in {time.perf_counter() - start:.1f} s")
    from model_shapes import hf_config

    config = hf_config("llama-3-8b")
    rng = random.Random(0)
    prompts = [[rng.randrange(10000) for _ in range(PROMPT_LEN)] for _ in range(args.num_requests)]
    row = run_fastpage(args.path, prompts, [OUTPUT_LEN] * args.num_requests, args.max_num_batched_tokens,
                       args.enforce_eager, max_num_seqs, kv_cache_dtype=args.kv_cache_dtype,
                       async_scheduling=args.async_scheduling)
    kv_tokens = row["num_device_blocks"] * 16
    batch = min(max_num_seqs, kv_tokens // (PROMPT_LEN + OUTPUT_LEN))
    floor = floor_seconds(config, args.num_requests, batch, bandwidth, flops, kv_bytes_per_element)
    row = dict(device=device, workload=f"llama-3-8b-{args.num_requests}req-1000in-1000out",
               model_shape="llama-3-8b (32 layers, random bf16 weights)", ms_per_token=None, **row, **floor,
               fraction_of_floor=row["output_tok_per_s"] / floor["floor_output_tok_per_s"],
               copy_GBps=bandwidth / 1e9, matmul_TFLOPs=flops / 1e12)
    print(json.dumps(row, indent=1))
    with open(args.out, "w") as f:
        json.dump([row], f, indent=1)


if __name__ == "__main__":
    main()
