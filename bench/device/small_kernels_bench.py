"""The decode step's small kernels, old against new, on the GPU machine (Llama-3-8B shapes, bf16):

- rotary + cache write: rotary_embedding then reshape_and_cache (two launches) against
  rotary_embedding_and_cache (one), q 32 x 128, k/v 8 x 128 as views of a fused qkv row, bf16 and fp8
  caches, 1 token (batch-1 decode) and 64;
- greedy ids: torch.argmax(logits, 1) (one block per row) against argmax_rows, float32 and bfloat16
  logits, 1 x 128256 (batch-1 decode) and 416 x 128256 (the large decode batch).

Each case is timed two ways, CUDA-event medians over many runs: `eager_us`, one call between two
events (includes the launch; what an eager step pays), and `graph_us`, per call inside a captured CUDA
graph of `graph_calls` back-to-back calls (32 = one per layer, as the decode graph replays them;
includes the gaps between kernels inside a graph). Every case first checks the new op against the
old (`match`). Prints one JSON row per case and writes them all with --out.

    PYTHONPATH=python python bench/device/small_kernels_bench.py --out small_kernels.json
"""

import argparse
import json

import torch

import fastpage  # noqa: F401  (registers torch.ops.fastpage)
from kernel_bench import time_ms  # the same CUDA-event median (this script's folder is on sys.path)

ops = torch.ops.fastpage
LLAMA3_VOCAB = 128256


def time_us(fn, graph_calls, iters=200):
    """(eager us per call, graph us per call)."""
    eager = time_ms(fn, iters, warmup=10) * 1e3
    fn()  # warm-up outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(graph_calls):
            fn()
    replay = time_ms(graph.replay, max(20, iters // 4), warmup=10) * 1e3
    return eager, replay / graph_calls


def bench_rotary_cache(num_tokens, cache_dtype, gen, graph_calls, num_heads=32, num_kv_heads=8, head_dim=128,
                       block_size=16):
    dtype = torch.bfloat16
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    qkv = torch.randn(num_tokens, q_size + 2 * kv_size, device="cuda", generator=gen).to(dtype)
    q = qkv[:, :q_size].view(num_tokens, num_heads, head_dim)
    k = qkv[:, q_size:q_size + kv_size].view(num_tokens, num_kv_heads, head_dim)
    v = qkv[:, q_size + kv_size:].view(num_tokens, num_kv_heads, head_dim)
    num_blocks = 2048  # a 32k-token cache: writes land in one of many blocks, as in the engine
    caches = [torch.randn(num_blocks, block_size, num_kv_heads, head_dim, device="cuda", generator=gen)
              .to(cache_dtype) for _ in range(2)]
    positions = torch.randint(0, 8192, (num_tokens,), device="cuda", generator=gen, dtype=torch.int32)
    slots = torch.randperm(num_blocks * block_size, device="cuda", generator=gen)[:num_tokens]
    inv_freq = 1.0 / 500000.0 ** (torch.arange(0, head_dim, 2, device="cuda").float() / head_dim)
    freqs = torch.outer(torch.arange(8192, device="cuda").float(), inv_freq)
    cos_sin = torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(dtype)

    def old():
        ops.rotary_embedding(positions, q, k, cos_sin, head_dim)
        ops.reshape_and_cache(k, v, caches[0], caches[1], slots)

    def new():
        ops.rotary_embedding_and_cache(positions, q, k, v, cos_sin, head_dim, caches[0], caches[1], slots)

    def state():
        return [t.clone().view(torch.uint8) for t in (qkv, *caches)]

    def restore(saved):
        for t, bits in zip((qkv, *caches), saved):
            t.view(torch.uint8).copy_(bits)

    before = state()
    old()
    after_old = state()
    restore(before)
    new()
    match = all(torch.equal(a, b) for a, b in zip(state(), after_old))
    rows = []
    for variant, fn in (("rotary_embedding+reshape_and_cache", old), ("rotary_embedding_and_cache", new)):
        eager, graph = time_us(fn, graph_calls)
        rows.append(dict(case="rotary_cache", variant=variant, num_tokens=num_tokens,
                         cache_dtype=str(cache_dtype).removeprefix("torch."), q=f"{num_heads}x{head_dim}",
                         kv=f"{num_kv_heads}x{head_dim}", eager_us=round(eager, 2), graph_us=round(graph, 2),
                         graph_calls=graph_calls, match=match))
    return rows


def bench_argmax(rows, dtype, gen, graph_calls):
    logits = torch.randn(rows, LLAMA3_VOCAB, device="cuda", generator=gen).to(dtype)
    match = torch.equal(ops.argmax_rows(logits), torch.argmax(logits, dim=1))
    read_bytes = logits.numel() * logits.element_size()
    out = []
    for variant, fn in (("torch.argmax", lambda: torch.argmax(logits, dim=1)),
                        ("argmax_rows", lambda: ops.argmax_rows(logits))):
        eager, graph = time_us(fn, graph_calls)
        out.append(dict(case="argmax", variant=variant, rows=rows, vocab=LLAMA3_VOCAB,
                        dtype=str(dtype).removeprefix("torch."), eager_us=round(eager, 2),
                        graph_us=round(graph, 2), graph_calls=graph_calls,
                        graph_read_gbps=round(read_bytes / graph / 1e3, 1), match=match))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args = parser.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    results = []

    def emit(rows):
        for row in rows:
            print(json.dumps(row), flush=True)
        results.extend(rows)

    emit([dict(case="device", name=torch.cuda.get_device_name(), torch=torch.__version__)])
    for num_tokens in (1, 64):
        for cache_dtype in (torch.bfloat16, torch.float8_e4m3fn):
            emit(bench_rotary_cache(num_tokens, cache_dtype, gen, graph_calls=32))
    for rows in (1, 416):
        for dtype in (torch.float32, torch.bfloat16):
            emit(bench_argmax(rows, dtype, gen, graph_calls=8 if rows == 1 else 2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
