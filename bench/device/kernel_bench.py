"""Kernel microbenchmarks on the GPU machine: achieved bandwidth (or FLOP rate) of the fastpage CUDA
kernels against the measured device-to-device copy bandwidth, next to a plain torch reference timed in
the same run. Times are CUDA-event medians after warm-up; inputs are random (never zeros).

    PYTHONPATH=python python bench/device/kernel_bench.py --out results.json
"""

import argparse
import json
import math
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import fastpage  # noqa: F401  (registers torch.ops.fastpage)

ops = torch.ops.fastpage


def time_ms(fn, iters=50, warmup=5):
    """Median of per-call CUDA-event times in milliseconds."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbps():
    """Device-to-device copy of 2 GiB, counting bytes read plus bytes written."""
    src = torch.randn(2**29, device="cuda")  # 2 GiB of float32
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), iters=20)
    return 2 * src.numel() * 4 / ms / 1e6


def paged_decode_inputs(batch, context, num_heads, num_kv_heads, head_dim, block_size, dtype, gen,
                        cache_dtype=None):
    blocks_per_seq = math.ceil(context / block_size)
    num_blocks = batch * blocks_per_seq
    key_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, device="cuda", dtype=dtype,
                            generator=gen).to(cache_dtype or dtype)
    value_cache = torch.randn(key_cache.shape, device="cuda", dtype=dtype, generator=gen).to(cache_dtype or dtype)
    block_tables = torch.randperm(num_blocks, device="cuda", generator=gen).to(torch.int32).view(batch, -1)
    query = torch.randn(batch, num_heads, head_dim, device="cuda", dtype=dtype, generator=gen)
    query_start_loc = torch.arange(batch + 1, device="cuda", dtype=torch.int32)
    context_lens = torch.full((batch,), context, device="cuda", dtype=torch.int32)
    return query, key_cache, value_cache, query_start_loc, context_lens, block_tables


def bench_decode_attention(device_name, copy_gbps, gen, batch=64, context=2048, num_heads=32, num_kv_heads=8,
                           head_dim=128, block_size=16, dtype=torch.bfloat16, cache_dtype=None,
                           launch_context=None):
    """cache_dtype: torch.float8_e4m3fn for an fp8 KV cache (kv_cache_dtype="fp8"); the torch
    references then read the same values upcast to the query dtype. launch_context: the
    max_context_len the launch is sized for (a CUDA graph's context bucket), default the context."""
    q, kc, vc, qsl, ctx, bt = paged_decode_inputs(batch, context, num_heads, num_kv_heads, head_dim, block_size,
                                                  dtype, gen, cache_dtype)
    launch_context = launch_context or context
    if launch_context > bt.shape[1] * block_size:  # room in the block table for the launch's bucket
        bt = torch.cat([bt, bt[:, :1].expand(batch, math.ceil(launch_context / block_size) - bt.shape[1])], 1)
    scale = head_dim**-0.5
    out = torch.empty_like(q)
    run = lambda: ops.paged_attention(out, q, kc, vc, qsl, ctx, bt, scale, 1, launch_context)  # noqa: E731
    ms = time_ms(run, iters=200 if batch == 1 else 50)
    kv_bytes = 2 * batch * context * num_kv_heads * head_dim * kc.element_size()
    io_bytes = kv_bytes + 2 * q.numel() * q.element_size()
    gbps = io_bytes / ms / 1e6
    row = {
        "device": device_name, "engine": "fastpage", "kernel": "paged_attention (decode)",
        "workload": f"decode_attention_b{batch}_ctx{context}_h{num_heads}kv{num_kv_heads}_d{head_dim}_bs{block_size}_"
                    f"{str(dtype).split('.')[-1]}" + ("" if cache_dtype is None else "_fp8cache") +
                    ("" if launch_context == context else f"_launch{launch_context}"),
        "ms": ms, "bytes": io_bytes, "achieved_GBps": gbps, "copy_GBps": copy_gbps,
        "fraction_of_copy_bandwidth": gbps / copy_gbps,
    }
    # Torch references: gather the paged K/V into dense tensors, then SDPA (the gather is what a
    # paged-unaware implementation pays); and SDPA alone over already dense K/V.
    def dense(cache):  # the context's blocks only (bt may hold extra columns for the launch's bucket)
        blocks = cache[bt[:, :math.ceil(context / block_size)].long()].to(dtype)
        return blocks.reshape(batch, -1, num_kv_heads, head_dim)[:, :context].transpose(1, 2)

    qd = q.view(batch, num_heads, 1, head_dim)
    torch_gather_sdpa = lambda: F.scaled_dot_product_attention(qd, dense(kc), dense(vc), scale=scale,  # noqa: E731
                                                               enable_gqa=True)
    kd, vd = dense(kc).contiguous(), dense(vc).contiguous()
    torch_sdpa = lambda: F.scaled_dot_product_attention(qd, kd, vd, scale=scale, enable_gqa=True)  # noqa: E731
    ref = torch_sdpa().view(batch, num_heads, head_dim)
    run()
    row["rel_err_vs_torch"] = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    row["torch_gather_sdpa_ms"] = time_ms(torch_gather_sdpa, iters=20)
    row["torch_sdpa_dense_ms"] = time_ms(torch_sdpa)
    return row


def decode_attention_rows(device_name, copy_gbps, gen):
    """The decode shapes: batch-1 latency (Llama-3-8B at the latency workload's ~576-token context, eager
    and sized for the graphs' 1024 bucket), the bandwidth shapes, and the 1000 x 1000 workload's batches:
    208 sequences at ~1536 (bf16 cache) and 416 (fp8)."""
    bench = lambda **kw: bench_decode_attention(device_name, copy_gbps, gen, **kw)  # noqa: E731
    fp8 = torch.float8_e4m3fn
    rows = [bench(batch=1, context=576), bench(batch=1, context=576, launch_context=1024),
            bench(batch=1, context=576, cache_dtype=fp8, launch_context=1024),
            bench(), bench(batch=8, context=8192), bench(batch=208, context=1536)]
    for batch, context in ((64, 2048), (416, 1536)):
        rows.append(bench(batch=batch, context=context, cache_dtype=fp8))
    return rows


def bench_prefill_attention(device_name, gen, batch=4, prompt=2048, num_heads=32, num_kv_heads=8, head_dim=128,
                            block_size=16, dtype=torch.bfloat16, cache_dtype=None):
    """Causal prefill of whole prompts over the paged cache, FLOP rate next to torch's SDPA: the default
    backend choice with GQA, and flash attention over K/V repeated to every query head (with an fp8
    cache, cache_dtype=torch.float8_e4m3fn, torch reads the same values upcast to the query dtype)."""
    blocks_per_seq = math.ceil(prompt / block_size)
    num_blocks = batch * blocks_per_seq
    kc = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, device="cuda", dtype=dtype,
                     generator=gen).to(cache_dtype or dtype)
    vc = torch.randn(kc.shape, device="cuda", dtype=dtype, generator=gen).to(cache_dtype or dtype)
    bt = torch.randperm(num_blocks, device="cuda", generator=gen).to(torch.int32).view(batch, -1)
    q = torch.randn(batch * prompt, num_heads, head_dim, device="cuda", dtype=dtype, generator=gen)
    qsl = torch.arange(0, batch * prompt + 1, prompt, device="cuda", dtype=torch.int32)
    ctx = torch.full((batch,), prompt, device="cuda", dtype=torch.int32)
    scale = head_dim**-0.5
    out = torch.empty_like(q)
    run = lambda: ops.paged_attention(out, q, kc, vc, qsl, ctx, bt, scale, prompt, prompt)  # noqa: E731
    ms = time_ms(run, iters=20)
    flops = 4 * batch * num_heads * head_dim * prompt * prompt / 2  # QK^T and PV, causal half
    row = {
        "device": device_name, "engine": "fastpage", "kernel": "paged_attention (prefill)",
        "workload": f"prefill_attention_b{batch}_len{prompt}_h{num_heads}kv{num_kv_heads}_d{head_dim}_causal" +
                    ("" if cache_dtype is None else "_fp8cache"),
        "ms": ms, "tflops": flops / ms / 1e9,
    }

    def dense(cache):  # [batch, kv heads, prompt, head_dim]
        blocks = cache[bt.long()].to(dtype)
        return blocks.reshape(batch, -1, num_kv_heads, head_dim)[:, :prompt].transpose(1, 2).contiguous()

    kd, vd = dense(kc), dense(vc)
    qd = q.view(batch, prompt, num_heads, head_dim).transpose(1, 2)
    sdpa = lambda: F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale,  # noqa: E731
                                                  enable_gqa=True)
    ref = sdpa().transpose(1, 2).reshape_as(q)
    row["rel_err_vs_torch"] = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    row["torch_sdpa_dense_ms"] = time_ms(sdpa, iters=20)
    group = num_heads // num_kv_heads
    kr, vr = kd.repeat_interleave(group, dim=1), vd.repeat_interleave(group, dim=1)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            flash = lambda: F.scaled_dot_product_attention(qd, kr, vr, is_causal=True, scale=scale)  # noqa: E731
            row["torch_sdpa_flash_ms"] = time_ms(flash, iters=20)
        row["torch_sdpa_flash_tflops"] = flops / row["torch_sdpa_flash_ms"] / 1e9
    except RuntimeError as e:  # no flash kernel for this device or shape
        row["torch_sdpa_flash_error"] = str(e)[:200]
    return row


def prefill_attention_rows(device_name, gen):
    """Causal prefill: 4 prompts of 2048 tokens, and a prefill step of the 1000 x 1000 workload (16 prompts
    of 1000 tokens) over a bf16 and an fp8 cache."""
    bench = lambda **kw: bench_prefill_attention(device_name, gen, **kw)  # noqa: E731
    return [bench(), bench(batch=16, prompt=1000), bench(batch=16, prompt=1000, cache_dtype=torch.float8_e4m3fn)]


def bench_elementwise(device_name, copy_gbps, gen, tokens=4096, hidden=4096, dtype=torch.bfloat16):
    x = torch.randn(tokens, hidden, device="cuda", dtype=dtype, generator=gen)
    residual = torch.randn_like(x)
    weight = torch.randn(hidden, device="cuda", dtype=dtype, generator=gen)
    gate_up = torch.randn(tokens, 2 * hidden, device="cuda", dtype=dtype, generator=gen)
    es = x.element_size()
    cases = [
        ("rms_norm", lambda: ops.rms_norm(x, weight, 1e-6), 2 * x.numel() * es,
         lambda: (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype) * weight),
        ("fused_add_rms_norm", lambda: ops.fused_add_rms_norm(x, residual, weight, 1e-6), 4 * x.numel() * es, None),
        ("silu_and_mul", lambda: ops.silu_and_mul(gate_up), 3 * x.numel() * es,
         lambda: F.silu(gate_up[:, :hidden]) * gate_up[:, hidden:]),
    ]
    rows = []
    for name, fn, nbytes, torch_fn in cases:
        ms = time_ms(fn)
        row = {"device": device_name, "engine": "fastpage", "kernel": name,
               "workload": f"{name}_{tokens}x{hidden}_{str(dtype).split('.')[-1]}", "ms": ms, "bytes": nbytes,
               "achieved_GBps": nbytes / ms / 1e6, "fraction_of_copy_bandwidth": nbytes / ms / 1e6 / copy_gbps}
        if torch_fn is not None:
            row["torch_ms"] = time_ms(torch_fn)
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    device_name = torch.cuda.get_device_name()
    copy_gbps = copy_bandwidth_gbps()
    rows = [{"device": device_name, "engine": "torch", "kernel": "copy_", "workload": "d2d_copy_2GiB",
             "copy_GBps": copy_gbps}]
    rows += decode_attention_rows(device_name, copy_gbps, gen)
    rows += prefill_attention_rows(device_name, gen)
    rows += bench_elementwise(device_name, copy_gbps, gen)
    print(f"{'kernel':26s} {'workload':72s} {'ms':>8s} {'GB/s':>6s} {'of copy':>8s} {'torch ms':>9s} "
          f"{'err':>8s}")
    for r in rows:
        torch_ms = r.get("torch_sdpa_dense_ms", r.get("torch_ms", float("nan")))
        frac = r.get("fraction_of_copy_bandwidth", float("nan"))
        extra = ""
        if "tflops" in r:
            extra = f" {r['tflops']:.0f} TFLOP/s"
            if "torch_sdpa_flash_ms" in r:
                extra += f"; torch flash {r['torch_sdpa_flash_ms']:.3f} ms {r['torch_sdpa_flash_tflops']:.0f} TFLOP/s"
        print(f"{r['kernel']:26s} {r['workload']:72s} {r.get('ms', float('nan')):8.3f} "
              f"{r.get('achieved_GBps', r.get('copy_GBps', float('nan'))):6.0f} {frac:8.2%} {torch_ms:9.3f} "
              f"{r.get('rel_err_vs_torch', float('nan')):8.1e}" + extra)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
