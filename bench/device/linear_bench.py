"""Decode-sized linear layers of the Llama-3-8B shape on the GPU: fastpage.small_batch_linear next to
cuBLAS (torch.nn.functional.linear) for 1 to 4 rows, as read bandwidth over the measured copy
bandwidth; and the sampler's sample_tokens kernel on a full batch. Each timed call reads a different
copy of the weight (the copies together exceed the 50 MB L2), so every byte comes from HBM.

Usage (on the GPU machine): python bench/device/linear_bench.py --out results.json
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

import fastpage  # noqa: F401  (registers torch.ops.fastpage)
from latency_gpu import copy_bandwidth_bytes_per_s

SHAPES = {  # name: (N, K) of weight [N, K], Llama-3-8B
    "qkv_proj": (6144, 4096), "o_proj": (4096, 4096), "gate_up_proj": (28672, 4096),
    "down_proj": (4096, 14336), "lm_head": (128256, 4096),
}


def time_per_call(fn, weights, iters: int = 40) -> float:
    for w in weights[:2]:
        fn(w)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for i in range(iters):
        fn(weights[i % len(weights)])
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device = torch.cuda.get_device_name()
    bandwidth = copy_bandwidth_bytes_per_s()
    rows = []
    for name, (n, k) in SHAPES.items():
        copies = max(2, -(-256 * 2**20 // (n * k * 2)))  # at least 256 MiB of distinct weights
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5 for _ in range(copies)]
        for m in (1, 2, 4):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
            t_ours = time_per_call(lambda w: torch.ops.fastpage.small_batch_linear(out, x, w, None), weights)
            t_cublas = time_per_call(lambda w: torch.matmul(x, w.T, out=out), weights)
            ref = F.linear(x.float(), weights[0].float())
            torch.ops.fastpage.small_batch_linear(out, x, weights[0], None)
            err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
            bytes_read = n * k * 2
            row = dict(device=device, engine="fastpage", kernel="small_batch_linear", workload=f"{name}_m{m}_n{n}_k{k}",
                       ms=t_ours * 1e3, achieved_GBps=bytes_read / t_ours / 1e9,
                       fraction_of_copy_bandwidth=bytes_read / t_ours / bandwidth, cublas_ms=t_cublas * 1e3,
                       cublas_fraction_of_copy_bandwidth=bytes_read / t_cublas / bandwidth,
                       speedup_vs_cublas=t_cublas / t_ours, rel_err_vs_fp32=err, copy_GBps=bandwidth / 1e9)
            rows.append(row)
            print(f"{name:>13} m={m}: ours {t_ours * 1e6:8.1f} us ({row['fraction_of_copy_bandwidth']:.2f} of copy)  "
                  f"cuBLAS {t_cublas * 1e6:8.1f} us ({row['cublas_fraction_of_copy_bandwidth']:.2f})  err {err:.1e}")
        del weights

    # The sampler's kernel: 256 rows of the Qwen3 vocabulary, random draws with top-k/top-p and plain.
    vocab, num_rows = 151936, 256
    logits = torch.randn(num_rows, vocab, device="cuda") * 3
    f = lambda v: torch.full((num_rows,), v, device="cuda", dtype=torch.float32)  # noqa: E731
    i = lambda v: torch.full((num_rows,), v, device="cuda", dtype=torch.int64)  # noqa: E731
    seeds = torch.arange(num_rows, device="cuda")
    for label, (t, k, p) in {"greedy": (0.0, 0, 1.0), "temperature": (0.8, 0, 1.0),
                             "top_k50_top_p0.9": (0.8, 50, 0.9), "top_p0.95": (0.8, 0, 0.95)}.items():
        fn = lambda _: torch.ops.fastpage.sample_tokens(logits, f(t), i(k), f(p), f(0.0), seeds, seeds)  # noqa: E731
        seconds = time_per_call(fn, [None], iters=10)
        rows.append(dict(device=device, engine="fastpage", kernel="sample_tokens",
                         workload=f"{num_rows}rows_vocab{vocab}_{label}", ms=seconds * 1e3))
        print(f"sample_tokens {label}: {seconds * 1e3:.3f} ms for {num_rows} rows")
    with open(args.out, "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
