"""GPU-only checks of the CUDA kernels beyond tests/test_kernels.py: the decode shape of the
tensor-core attention kernel (pure decode batches, split contexts up to 8k, head dims 64/128, GQA
ratios 1/4/8, block sizes 8/16/32), prefill at head dim 128, the fallback path, CUDA-graph capture,
the same over float8_e4m3fn caches (kv_cache_dtype="fp8"), and the shape/dtype errors the CUDA
launchers raise. References: tests/kernel_reference.py."""

import os
import sys
import zlib

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import fastpage  # noqa: E402,F401  (registers torch.ops.fastpage)
from kernel_reference import (  # noqa: E402
    make_paged_batch,
    ref_copy_blocks,
    ref_paged_attention,
    ref_silu_and_mul,
    to_fp8_e4m3,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ops = torch.ops.fastpage
TOL = {
    torch.float32: dict(atol=2e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


@pytest.fixture
def gen(request):
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def run(batch, out=None):
    out = torch.full_like(batch.query, float("nan")) if out is None else out
    ops.paged_attention(out, batch.query, batch.key_cache, batch.value_cache, batch.query_start_loc,
                        batch.context_lens, batch.block_tables, batch.scale, batch.max_query_len,
                        batch.max_context_len)
    return out


def reference(batch):
    return ref_paged_attention(batch.query, batch.key_cache, batch.value_cache, batch.query_start_loc,
                               batch.context_lens, batch.block_tables, batch.scale)


def check(batch, dtype):
    num_scheduled = int(batch.query_start_loc[-1])
    out = run(batch)
    torch.testing.assert_close(out[:num_scheduled].float(), reference(batch), **TOL[dtype])
    assert out[num_scheduled:].isnan().all(), "padding tokens must stay untouched"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("num_heads,num_kv_heads", [(8, 8), (16, 4), (32, 4)])
@pytest.mark.parametrize("block_size", [8, 16, 32])
def test_decode_batches(dtype, head_dim, num_heads, num_kv_heads, block_size, gen):
    """Odd batch of single-token decodes: contexts 1, one block, one block + 1, random, 8k (split)."""
    r = int(torch.randint(2, 3000, (1,), generator=gen))
    contexts = [1, block_size, block_size + 1, r, 8192, 37, 700]
    batch = make_paged_batch([(1, c) for c in contexts], num_heads=num_heads, num_kv_heads=num_kv_heads,
                             head_dim=head_dim, block_size=block_size, dtype=dtype, device="cuda",
                             generator=gen, num_padding_tokens=2)
    check(batch, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (12, 3), (32, 4)])
def test_prefill_head_dim_128(dtype, num_heads, num_kv_heads, gen):
    """Prefill chunks over cached prefixes (partial blocks), a fresh prompt, and decodes, together."""
    seqs = [(1, 5), (7, 40), (70, 70), (33, 1500), (1, 2048), (130, 131)]
    batch = make_paged_batch(seqs, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=128,
                             block_size=16, dtype=dtype, device="cuda", generator=gen, num_padding_tokens=1)
    check(batch, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fallback_head_dim_96(dtype, gen):
    """Head dims outside the tensor-core kernel's (64, 128) take the fallback kernel."""
    batch = make_paged_batch([(1, 300), (9, 20)], num_heads=8, num_kv_heads=2, head_dim=96, block_size=16,
                             dtype=dtype, device="cuda", generator=gen, num_padding_tokens=2)
    check(batch, dtype)


def test_decode_replays_in_a_cuda_graph(gen):
    """Captured once, replayed on new inputs written in place (the CUDA-graph decode path)."""
    batch = make_paged_batch([(1, 4000), (1, 17), (1, 900)], num_heads=32, num_kv_heads=8, head_dim=128,
                             block_size=16, dtype=torch.bfloat16, device="cuda", generator=gen)
    out = torch.empty_like(batch.query)
    run(batch, out)  # warm-up outside capture (kernel attributes, occupancy query)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run(batch, out)
    for _ in range(2):
        batch.query.copy_(torch.randn(batch.query.shape, generator=gen).to("cuda", torch.bfloat16))
        out.fill_(float("nan"))
        graph.replay()
        torch.testing.assert_close(out.float(), reference(batch), **TOL[torch.bfloat16])


def with_fp8_cache(batch):
    """The batch with its caches cast to float8_e4m3fn (kv_cache_dtype="fp8"); NaN slots stay NaN."""
    batch.key_cache, batch.value_cache = to_fp8_e4m3(batch.key_cache), to_fp8_e4m3(batch.value_cache)
    return batch


# The reference reads the same fp8 values (upcast to float32), so the 16-bit tolerances hold.
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("num_heads,num_kv_heads", [(8, 8), (32, 4), (32, 8)])
@pytest.mark.parametrize("block_size", [16, 32])
def test_fp8_cache_decode_with_splits(dtype, head_dim, num_heads, num_kv_heads, block_size, gen):
    """Decode kernel on an fp8 cache: 16-byte loads of 16 e4m3 values, contexts up to 8k (split)."""
    contexts = [1, block_size, block_size + 1, 8192, 37, 700, 3001]
    batch = make_paged_batch([(1, c) for c in contexts], num_heads=num_heads, num_kv_heads=num_kv_heads,
                             head_dim=head_dim, block_size=block_size, dtype=dtype, device="cuda",
                             generator=gen, num_padding_tokens=2)
    check(with_fp8_cache(batch), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("num_heads,num_kv_heads", [(12, 3), (32, 8)])
def test_fp8_cache_prefill(dtype, head_dim, num_heads, num_kv_heads, gen):
    """Prefill kernel on an fp8 cache: chunks over cached prefixes, a fresh prompt, decodes."""
    seqs = [(1, 5), (7, 40), (70, 70), (33, 1500), (1, 2048), (130, 131)]
    batch = make_paged_batch(seqs, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                             block_size=16, dtype=dtype, device="cuda", generator=gen, num_padding_tokens=1)
    check(with_fp8_cache(batch), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fp8_cache_fallback(dtype, gen):
    """float32 queries and head dims outside (64, 128) read an fp8 cache through the fallback kernel."""
    batch = make_paged_batch([(1, 300), (9, 20)], num_heads=8, num_kv_heads=2, head_dim=96, block_size=16,
                             dtype=dtype, device="cuda", generator=gen, num_padding_tokens=2)
    check(with_fp8_cache(batch), dtype)


def test_fp8_cache_decode_replays_in_a_cuda_graph(gen):
    batch = with_fp8_cache(make_paged_batch([(1, 4000), (1, 17), (1, 900)], num_heads=32, num_kv_heads=8,
                                            head_dim=128, block_size=16, dtype=torch.bfloat16, device="cuda",
                                            generator=gen))
    out = torch.empty_like(batch.query)
    run(batch, out)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run(batch, out)
    batch.query.copy_(torch.randn(batch.query.shape, generator=gen).to("cuda", torch.bfloat16))
    out.fill_(float("nan"))
    graph.replay()
    torch.testing.assert_close(out.float(), reference(batch), **TOL[torch.bfloat16])


def test_copy_blocks_of_unaligned_sizes(gen):
    """Blocks of 6 bytes (not a 16-byte multiple) take the byte-wise copy; the mapping may be on the host."""
    caches = [torch.randn(6, 3, generator=gen).to("cuda", torch.float16) for _ in range(3)]
    mapping = torch.tensor([[0, 5], [2, 1], [4, 3]])
    expected = ref_copy_blocks(caches, mapping)
    ops.copy_blocks(caches, mapping)
    for cache, want in zip(caches, expected):
        assert torch.equal(cache, want)


def test_launchers_reject_bad_shapes_and_dtypes(gen):
    batch = make_paged_batch([(2, 9)], num_heads=4, num_kv_heads=2, head_dim=64, block_size=8,
                             dtype=torch.bfloat16, device="cuda", generator=gen)
    out = torch.empty_like(batch.query)
    args = [out, batch.query, batch.key_cache, batch.value_cache, batch.query_start_loc, batch.context_lens,
            batch.block_tables, batch.scale, 2, 9]
    bad_tables = list(args)
    bad_tables[6] = batch.block_tables.long()
    with pytest.raises(RuntimeError, match="block_tables must be int32"):
        ops.paged_attention(*bad_tables)
    cpu_query = list(args)
    cpu_query[1] = batch.query.cpu()
    with pytest.raises(RuntimeError, match="query"):
        ops.paged_attention(*cpu_query)
    too_long = list(args)
    too_long[9] = 10**6
    with pytest.raises(RuntimeError, match="max_context_len"):
        ops.paged_attention(*too_long)
    with pytest.raises(RuntimeError, match="slot_mapping"):
        key = torch.randn(3, 2, 64, device="cuda", dtype=torch.bfloat16)
        ops.reshape_and_cache(key, key, batch.key_cache, batch.value_cache, torch.zeros(4, dtype=torch.long,
                                                                                        device="cuda"))
    with pytest.raises(RuntimeError, match="dtype"):
        ops.rms_norm(torch.randn(3, 64, device="cuda"), torch.randn(64, device="cuda").half(), 1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize("n,k,with_bias", [(1, 8, False), (7, 24, True), (4099, 4096, False),
                                           (1000, 14336, True), (6144, 4104, False)])
def test_small_batch_linear_against_float_matmul(dtype, rows, n, k, with_bias, gen):
    """Decode-sized x @ w.T (+ bias): odd N (a warp's missing last row), K not a multiple of the
    unrolled chunk, every specialised row count; a poisoned out must be fully written."""
    x = torch.randn(rows, k, generator=gen).to("cuda", dtype)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to("cuda", dtype)
    bias = torch.randn(n, generator=gen).to("cuda", dtype) if with_bias else None
    out = torch.full((rows, n), float("nan"), device="cuda", dtype=dtype)
    ops.small_batch_linear(out, x, w, bias)
    expected = x.float() @ w.float().T + (bias.float() if with_bias else 0)
    torch.testing.assert_close(out.float(), expected, **TOL[dtype])


def test_small_batch_linear_rejects_what_it_cannot_run():
    x = torch.randn(2, 16, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(5, 16, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(2, 5, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="rows"):
        ops.small_batch_linear(torch.empty(9, 5, device="cuda", dtype=torch.bfloat16), x.repeat(5, 1)[:9], w, None)
    with pytest.raises(RuntimeError, match="multiple of 8"):
        ops.small_batch_linear(out, x[:, :12].contiguous(), w[:, :12].contiguous(), None)
    with pytest.raises(RuntimeError, match="weight"):
        ops.small_batch_linear(out, x, w.float(), None)
    with pytest.raises(RuntimeError, match="out"):
        ops.small_batch_linear(out[:, :4], x, w, None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize("intermediate,k", [(1, 8), (7, 24), (1001, 4096), (333, 4104), (2048, 1032)])
def test_small_batch_linear_silu_and_mul_is_the_two_ops(dtype, rows, intermediate, k, gen):
    """The gate_up GEMV with SiLU-and-mul in its epilogue equals small_batch_linear into [rows, 2I]
    followed by silu_and_mul bit for bit: odd I (a block's missing warps), K of 1-3 vectors, K a
    multiple of the 32 x 4-vector chunk (4096) and K with a tail (4104, 1032), every row count."""
    x = torch.randn(rows, k, generator=gen).to("cuda", dtype)
    w = (torch.randn(2 * intermediate, k, generator=gen) / k**0.5).to("cuda", dtype)
    gate_up = torch.empty(rows, 2 * intermediate, device="cuda", dtype=dtype)
    ops.small_batch_linear(gate_up, x, w, None)
    two_ops = ops.silu_and_mul(gate_up)
    out = torch.full((rows, intermediate), float("nan"), device="cuda", dtype=dtype)
    ops.small_batch_linear_silu_and_mul(out, x, w)
    assert torch.equal(out, two_ops)
    # And both against float math (the projections rounded to the dtype, as a bf16/fp16 matmul does).
    rounded = (x.float() @ w.float().T).to(dtype)
    torch.testing.assert_close(out.float(), ref_silu_and_mul(rounded), **TOL[dtype])


def test_small_batch_linear_silu_and_mul_rejects_what_it_cannot_run():
    x = torch.randn(2, 16, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(10, 16, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="out must be contiguous \\[2, 5\\]"):
        ops.small_batch_linear_silu_and_mul(torch.empty(2, 10, device="cuda", dtype=torch.bfloat16), x, w)
    with pytest.raises(RuntimeError, match="multiple of 2 rows"):
        ops.small_batch_linear_silu_and_mul(torch.empty(2, 4, device="cuda", dtype=torch.bfloat16), x, w[:9])
    with pytest.raises(RuntimeError, match="rows"):
        ops.small_batch_linear_silu_and_mul(torch.empty(5, 5, device="cuda", dtype=torch.bfloat16),
                                            x.repeat(3, 1)[:5], w)



# ---- split contexts merged inside the attention kernel (the last split block of a tile merges) ----

CACHE_DTYPES = {"16bit": lambda batch: batch, "fp8": with_fp8_cache}


@pytest.mark.parametrize("cache", ["16bit", "fp8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prefill_chunk_over_long_prefix_splits(cache, dtype, gen):
    """One prompt chunk over a 3000-token prefix with one KV head: a grid of a few row tiles, split up to
    32 ways; the tiles see different numbers of keys (causal), so they merge different split counts."""
    batch = make_paged_batch([(200, 3200)], num_heads=4, num_kv_heads=1, head_dim=128, block_size=16,
                             dtype=dtype, device="cuda", generator=gen, num_padding_tokens=3)
    check(CACHE_DTYPES[cache](batch), dtype)


@pytest.mark.parametrize("cache", ["16bit", "fp8"])
def test_split_tickets_reset_between_calls(cache, gen):
    """Back-to-back launches with different grids and split counts: a ticket left behind by one call
    would make a later call merge too early (wrong output) or never (NaN output)."""
    shapes = [[(1, 5000), (1, 700)], [(1, 1000)], [(3, 2000), (1, 64)], [(1, 5000), (1, 700)]]
    batches = [CACHE_DTYPES[cache](make_paged_batch(seqs, num_heads=32, num_kv_heads=8, head_dim=128,
                                                    block_size=16, dtype=torch.bfloat16, device="cuda",
                                                    generator=gen))
               for seqs in shapes]
    for _ in range(2):
        for batch in batches:
            check(batch, torch.bfloat16)


@pytest.mark.parametrize("cache", ["16bit", "fp8"])
def test_graph_sized_for_a_longer_context_replays_with_shorter_ones(cache, gen):
    """A decode launch captured for the block tables' whole capacity (as a graph's context bucket is)
    replayed while the contexts shrink in place: the splits past a context exit without a ticket and
    the rest merge, on every replay."""
    batch = CACHE_DTYPES[cache](make_paged_batch([(1, 6000), (1, 300), (1, 2500)], num_heads=32, num_kv_heads=8,
                                                 head_dim=128, block_size=16, dtype=torch.bfloat16,
                                                 device="cuda", generator=gen))
    capacity = batch.block_tables.shape[1] * batch.key_cache.shape[1]
    out = torch.empty_like(batch.query)
    args = lambda: (out, batch.query, batch.key_cache, batch.value_cache, batch.query_start_loc,  # noqa: E731
                    batch.context_lens, batch.block_tables, batch.scale, 1, capacity)
    ops.paged_attention(*args())  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.paged_attention(*args())
    for contexts in ([6000, 300, 2500], [64, 1, 2500], [4097, 299, 17], [6000, 300, 2500]):
        batch.context_lens.copy_(torch.tensor(contexts, dtype=torch.int32))
        batch.query.copy_(torch.randn(batch.query.shape, generator=gen).to("cuda", torch.bfloat16))
        out.fill_(float("nan"))
        graph.replay()
        torch.testing.assert_close(out.float(), reference(batch), **TOL[torch.bfloat16])


@pytest.mark.parametrize("cache", ["16bit", "fp8"])
def test_prefill_query_is_a_view_of_packed_qkv(cache, gen):
    """The query as the model runner passes it: the first columns of a packed [tokens, (H + 2 KV) * D]
    projection, so its token stride is not H * D (the prefill kernel stages it in shared memory)."""
    batch = CACHE_DTYPES[cache](make_paged_batch([(300, 300), (45, 1045), (1, 77)], num_heads=32, num_kv_heads=8,
                                                 head_dim=128, block_size=16, dtype=torch.bfloat16,
                                                 device="cuda", generator=gen, num_padding_tokens=2))
    num_tokens, num_heads, head_dim = batch.query.shape
    qkv = torch.randn(num_tokens, (num_heads + 16) * head_dim, generator=gen).to("cuda", torch.bfloat16)
    query = qkv[:, :num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    query.copy_(batch.query)
    batch.query = query
    check(batch, torch.bfloat16)


@pytest.mark.parametrize("seqs", [[(1, 3000), (1, 40), (1, 700)], [(1, 3000), (40, 40), (70, 700)]],
                         ids=["decode", "prefill"])
@pytest.mark.parametrize("query_scale", [1e5, 1e-6])
def test_fp8_cache_with_queries_outside_f16_range(seqs, query_scale, gen):
    """With an fp8 cache only P @ V runs in f16; Q K^T stays in the query's type, so bf16 queries
    beyond f16's range (1e5) or deep in its subnormals (1e-6) give the same attention as the float32
    reference (one-hot and uniform weights respectively), in the decode and the prefill kernel."""
    batch = with_fp8_cache(make_paged_batch(seqs, num_heads=32, num_kv_heads=8, head_dim=128, block_size=16,
                                            dtype=torch.bfloat16, device="cuda", generator=gen))
    batch.query.mul_(query_scale)
    check(batch, torch.bfloat16)


# --- rotary_embedding_and_cache and argmax_rows (the decode step's small kernels) ------------------
# The shared CPU/CUDA tests are tests/test_rotary_embedding_and_cache.py and tests/test_argmax_rows.py;
# these add the CUDA-only paths: the scalar fallback, large grids, CUDA-graph replays.

from kernel_reference import make_cos_sin_cache  # noqa: E402
from test_argmax_rows import LLAMA3_VOCAB, ref_argmax  # noqa: E402
from test_rotary_embedding_and_cache import qkv_views, random_caches, run_both, same_bits  # noqa: E402


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.float8_e4m3fn], ids=["bf16_cache", "fp8_cache"])
@pytest.mark.parametrize("head_dim,num_tokens", [(40, 9), (128, 1000)], ids=["scalar_path", "prefill_1000"])
def test_rotary_embedding_and_cache_is_the_two_ops(cache_dtype, head_dim, num_tokens, gen):
    """Head dim 40 (half 20: no 16-byte pieces of bf16) takes the scalar path; 1000 prefill tokens of
    Llama-3-8B's heads the vector path over a large grid."""
    q, k, v = qkv_views(num_tokens, 32, 8, head_dim, torch.bfloat16, "cuda", gen)
    num_blocks, block_size = (num_tokens + 40) // 16, 16
    key_cache, value_cache = random_caches(num_blocks, block_size, 8, head_dim, cache_dtype, "cuda", gen)
    positions = torch.randint(0, 4096, (num_tokens,), generator=gen).to("cuda", torch.int32)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[::7] = -1
    cos_sin = make_cos_sin_cache(4096, head_dim, dtype=torch.bfloat16, device="cuda")
    fused, two = run_both(positions, q, k, v, cos_sin, head_dim, key_cache, value_cache, slots.cuda())
    for a, b in zip(fused, two):
        assert same_bits(a, b)


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.float8_e4m3fn], ids=["bf16_cache", "fp8_cache"])
def test_rotary_embedding_and_cache_replays_in_a_cuda_graph(cache_dtype, gen):
    """The decode graph's use: Llama-3-8B heads at batch 4 (one padding row, slot -1), captured once,
    replayed on new q/k/v, positions and slots written in place."""
    q, k, v = qkv_views(4, 32, 8, 128, torch.bfloat16, "cuda", gen)
    key_cache, value_cache = random_caches(8, 16, 8, 128, cache_dtype, "cuda", gen)
    positions = torch.zeros(4, dtype=torch.int32, device="cuda")
    slots = torch.full((4,), -1, dtype=torch.int64, device="cuda")
    cos_sin = make_cos_sin_cache(2048, 128, dtype=torch.bfloat16, device="cuda")
    args = (positions, q, k, v, cos_sin, 128, key_cache, value_cache, slots)
    ops.rotary_embedding_and_cache(*args)  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.rotary_embedding_and_cache(*args)
    for _ in range(2):
        new_q, new_k, new_v = qkv_views(4, 32, 8, 128, torch.bfloat16, "cuda", gen)
        q.copy_(new_q), k.copy_(new_k), v.copy_(new_v)
        positions.copy_(torch.randint(0, 2048, (4,), generator=gen))
        slots.copy_(torch.cat([torch.randperm(128, generator=gen)[:3], torch.tensor([-1])]))
        two = [t.clone() for t in (q, k, key_cache, value_cache)]
        ops.rotary_embedding(positions, two[0], two[1], cos_sin, 128)
        ops.reshape_and_cache(two[1], v, two[2], two[3], slots)
        graph.replay()
        for a, b in zip((q, k, key_cache, value_cache), two):
            assert same_bits(a, b)


def test_argmax_rows_back_to_back_launches_leave_no_tickets_behind(gen):
    """Row counts that split rows over many blocks (tickets), a few, and none (1 block per row, also
    past the ticket table's 4096 rows), one launch after another: a ticket left non-zero would let a
    later launch merge a row before all its blocks wrote their partials."""
    for rows, vocab in [(1, LLAMA3_VOCAB), (2, 70000), (7, 50000), (1, LLAMA3_VOCAB), (100, 20000),
                        (1500, 3000), (5000, 2500), (3, 99991), (1, 1025)]:
        logits = torch.randn(rows, vocab, generator=gen).to("cuda")
        assert torch.equal(ops.argmax_rows(logits).cpu(), ref_argmax(logits)), (rows, vocab)


@pytest.mark.parametrize("rows", [1, 7])
def test_argmax_rows_replays_in_a_cuda_graph(rows, gen):
    """Captured once over Llama 3's vocabulary (every row split over many blocks), replayed on new
    logits: the merging block of each row resets its ticket, so every replay starts from zero."""
    logits = torch.zeros(rows, LLAMA3_VOCAB, device="cuda")
    ops.argmax_rows(logits)  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.argmax_rows(logits)
    for replay in range(4):
        new = torch.randn(rows, LLAMA3_VOCAB, generator=gen)
        if replay == 3:
            new[:, [100, 128000]] = 50.0  # a tie across the row: the first
        logits.copy_(new)
        graph.replay()
        assert torch.equal(out.cpu(), ref_argmax(new))
