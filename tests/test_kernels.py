"""torch.ops.fastpage kernels against the plain torch references in kernel_reference.py.

Runs on the CPU, and on CUDA too where it is available (same tests, same references). Inputs are fresh
random tensors on awkward sizes; outputs written in place start as NaN so an unwritten element fails.
"""

import pytest
import torch

import fastpage  # noqa: F401  (registers torch.ops.fastpage)
from kernel_reference import (
    make_cos_sin_cache,
    make_paged_batch,
    ref_copy_blocks,
    ref_fused_add_rms_norm,
    ref_paged_attention,
    ref_reshape_and_cache,
    ref_rms_norm,
    ref_rotary_embedding,
    ref_silu_and_mul,
    ref_swap_blocks,
)
from kernel_test_setup import CUDA_KERNELS, DEVICES, TOL, dtype_name, gen  # noqa: F401  (gen: a fixture)

ops = torch.ops.fastpage


def assert_close(actual, expected, dtype):
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), **TOL[dtype])


def run_paged_attention(batch):
    out = torch.full_like(batch.query, float("nan"))
    ops.paged_attention(out, batch.query, batch.key_cache, batch.value_cache, batch.query_start_loc,
                        batch.context_lens, batch.block_tables, batch.scale, batch.max_query_len,
                        batch.max_context_len)
    return out


# --- paged attention ------------------------------------------------------------------------------


def mixed_batch(block_size, gen, max_context):
    """Decodes (q_len 1) at contexts 1, one block, one block + 1 and random; then prefill chunks over a
    cached prefix and a fresh prompt, with partial last blocks."""
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
    decodes = [(1, 1), (1, block_size), (1, block_size + 1), (1, r(2, max_context))]
    prefills = [(r(2, 9), r(40, 120)), (block_size + 3, 2 * block_size + 5), (r(10, 40), None)]
    return decodes + [(q, ctx if ctx is not None else q) for q, ctx in prefills]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (8, 2), (9, 3), (16, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_paged_attention_mixed_batch(device, block_size, num_heads, num_kv_heads, dtype, gen):
    seqs = mixed_batch(block_size, gen, max_context=300)
    batch = make_paged_batch(seqs, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=64,
                             block_size=block_size, dtype=dtype, device=device, generator=gen)
    out = run_paged_attention(batch)
    expected = ref_paged_attention(batch.query, batch.key_cache, batch.value_cache,
                                   batch.query_start_loc, batch.context_lens, batch.block_tables,
                                   batch.scale)
    assert_close(out, expected, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=dtype_name)
def test_paged_attention_long_contexts(device, dtype, gen):
    """Decodes up to 2048 tokens (8192 on CUDA) and a 96-token chunk at the end of a long prefix."""
    longest = 2048 if device == "cpu" else 8192
    seqs = [(1, longest), (1, 1531), (1, 1023), (96, longest - 1)]
    batch = make_paged_batch(seqs, num_heads=9, num_kv_heads=3, head_dim=64, block_size=16,
                             dtype=dtype, device=device, generator=gen)
    expected = ref_paged_attention(batch.query, batch.key_cache, batch.value_cache,
                                   batch.query_start_loc, batch.context_lens, batch.block_tables,
                                   batch.scale)
    assert_close(run_paged_attention(batch), expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_paged_attention_split_contexts_on_cpu(dtype, gen):
    """More threads than tiles: the CPU kernel splits long contexts into key ranges and merges their
    softmax states (small-batch decode, and a short prefill chunk over a long prefix)."""
    seqs = [(1, 2048), (3, 700), (1, 300), (1, 5)]
    batch = make_paged_batch(seqs, num_heads=8, num_kv_heads=1, head_dim=64, block_size=16,
                             dtype=dtype, device="cpu", generator=gen)
    expected = ref_paged_attention(batch.query, batch.key_cache, batch.value_cache,
                                   batch.query_start_loc, batch.context_lens, batch.block_tables,
                                   batch.scale)
    threads = torch.get_num_threads()
    torch.set_num_threads(8)
    try:
        out = run_paged_attention(batch)
    finally:
        torch.set_num_threads(threads)
    assert_close(out, expected, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("head_dim", [20, 32, 80, 128])
def test_paged_attention_head_dims_and_padding(device, head_dim, gen):
    """Odd batch, head dims that are not a multiple of the vector widths (20: no 8-float vectors; 80:
    32-float blocks and an 8-float tail), and padding tokens past
    query_start_loc[-1] (CUDA graph padding) that the kernel must leave untouched."""
    seqs = [(1, 17), (5, 5), (1, 64), (3, 70), (1, 2)]
    batch = make_paged_batch(seqs, num_heads=6, num_kv_heads=2, head_dim=head_dim, block_size=16,
                             dtype=torch.float32, device=device, generator=gen, num_padding_tokens=3)
    out = run_paged_attention(batch)
    num_scheduled = int(batch.query_start_loc[-1])
    expected = ref_paged_attention(batch.query, batch.key_cache, batch.value_cache,
                                   batch.query_start_loc, batch.context_lens, batch.block_tables,
                                   batch.scale)
    assert_close(out[:num_scheduled], expected, torch.float32)
    assert out[num_scheduled:].isnan().all()


@pytest.mark.parametrize("device", DEVICES)
def test_paged_attention_chunks_match_one_prefill(device, gen):
    """Chunked prefill: a prompt computed as three chunks over the cache gives the outputs of one
    whole-prompt prefill (the property prefix caching and chunked prefill rely on)."""
    prompt_len, chunks = 45, [(0, 20), (20, 33), (33, 45)]
    batch = make_paged_batch([(prompt_len, prompt_len)], num_heads=8, num_kv_heads=2, head_dim=64,
                             block_size=8, dtype=torch.float32, device=device, generator=gen)
    whole = run_paged_attention(batch)
    for begin, end in chunks:
        out = torch.full((end - begin, 8, 64), float("nan"), device=device)
        ops.paged_attention(out, batch.query[begin:end], batch.key_cache, batch.value_cache,
                            torch.tensor([0, end - begin], dtype=torch.int32, device=device),
                            torch.tensor([end], dtype=torch.int32, device=device),
                            batch.block_tables, batch.scale, end - begin, end)
        assert_close(out, whole[begin:end], torch.float32)


# --- cache writes and block moves -----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=dtype_name)
def test_reshape_and_cache(device, block_size, dtype, gen):
    num_tokens, num_kv_heads, head_dim, num_blocks = 37, 3, 64, 11
    key = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    value = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[[3, 17, 36]] = -1  # padding tokens: not written
    slot_mapping = slots.to(device)
    key_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    value_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    expected_k, expected_v = ref_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    ops.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    assert torch.equal(key_cache, expected_k)
    assert torch.equal(value_cache, expected_v)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_fused_qkv_views_through_the_attention_path(device, dtype, gen):
    """The model runner's path on views of a fused qkv projection (strided tokens): q/k RMSNorm on a
    view, rotary in place on views, cache write from views, attention from a view, for a decode and
    a prefill chunk over a cached prefix."""
    num_heads, num_kv_heads, head_dim, block_size = 6, 2, 32, 8
    seqs = [(1, 13), (7, 30)]
    batch = make_paged_batch(seqs, num_heads=num_heads, num_kv_heads=num_kv_heads,
                             head_dim=head_dim, block_size=block_size, dtype=dtype, device=device,
                             generator=gen)
    num_tokens = int(batch.query_start_loc[-1])
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    qkv = torch.randn(num_tokens, q_size + 2 * kv_size, generator=gen).to(device, dtype)
    q = qkv[:, :q_size].view(num_tokens, num_heads, head_dim)
    k = qkv[:, q_size : q_size + kv_size].view(num_tokens, num_kv_heads, head_dim)
    v = qkv[:, q_size + kv_size :].view(num_tokens, num_kv_heads, head_dim)
    norm_weight = torch.randn(head_dim, generator=gen).to(device, dtype)
    assert_close(ops.rms_norm(k, norm_weight, 1e-6), ref_rms_norm(k, norm_weight, 1e-6), dtype)

    positions, slots = [], []
    for seq, (q_len, ctx) in enumerate(seqs):
        for pos in range(ctx - q_len, ctx):
            positions.append(pos)
            slots.append(int(batch.block_tables[seq, pos // block_size]) * block_size + pos % block_size)
    positions = torch.tensor(positions, device=device)
    slot_mapping = torch.tensor(slots, device=device)
    cos_sin = make_cos_sin_cache(64, head_dim, device=device)
    expected_q = ref_rotary_embedding(positions, q, cos_sin, head_dim).to(dtype)
    expected_k = ref_rotary_embedding(positions, k, cos_sin, head_dim).to(dtype)
    ops.rotary_embedding(positions, q, k, cos_sin, head_dim)
    assert_close(q, expected_q, dtype)
    assert_close(k, expected_k, dtype)

    expected_kc, expected_vc = ref_reshape_and_cache(k, v, batch.key_cache, batch.value_cache, slot_mapping)
    ops.reshape_and_cache(k, v, batch.key_cache, batch.value_cache, slot_mapping)
    assert torch.equal(batch.key_cache.isnan(), expected_kc.isnan())
    assert torch.equal(batch.key_cache.nan_to_num(), expected_kc.nan_to_num())
    assert torch.equal(batch.value_cache.nan_to_num(), expected_vc.nan_to_num())

    out = torch.full((num_tokens, num_heads, head_dim), float("nan"), dtype=dtype, device=device)
    ops.paged_attention(out, q, batch.key_cache, batch.value_cache, batch.query_start_loc,
                        batch.context_lens, batch.block_tables, batch.scale, batch.max_query_len,
                        batch.max_context_len)
    expected = ref_paged_attention(q, batch.key_cache, batch.value_cache, batch.query_start_loc,
                                   batch.context_lens, batch.block_tables, batch.scale)
    assert_close(out, expected, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_copy_blocks(device, dtype, gen):
    num_blocks = 13
    caches = [torch.randn(num_blocks, 16, 3, 32, generator=gen).to(device, dtype) for _ in range(4)]
    blocks = torch.randperm(num_blocks, generator=gen)
    mapping = torch.stack([blocks[:5], blocks[5:10]], dim=1).to(device)  # disjoint src and dst
    expected = ref_copy_blocks(caches, mapping)
    ops.copy_blocks(caches, mapping)
    for cache, want in zip(caches, expected):
        assert torch.equal(cache, want)


def swap_pairs():
    """(src device, dst device) pairs: host<->host on the CPU, host<->device where CUDA exists."""
    pairs = [("cpu", "cpu")]
    if torch.cuda.is_available():
        skip = pytest.mark.skipif(not CUDA_KERNELS, reason="fastpage was built without its CUDA kernels")
        pairs += [pytest.param(*pair, marks=skip) for pair in [("cuda", "cpu"), ("cpu", "cuda"), ("cuda", "cuda")]]
    return pairs


@pytest.mark.parametrize("src_device,dst_device", swap_pairs())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_swap_blocks(src_device, dst_device, dtype, gen):
    """All layers' K and V ([planes, num_blocks, ...]) swapped in one call, between caches of
    different block counts, mapping on the host."""
    planes, src_blocks, dst_blocks = 6, 9, 7
    src = torch.randn(planes, src_blocks, 8, 2, 16, generator=gen).to(src_device, dtype)
    dst = torch.randn(planes, dst_blocks, 8, 2, 16, generator=gen).to(dst_device, dtype)
    mapping = torch.stack([torch.randperm(src_blocks, generator=gen)[:4],
                           torch.randperm(dst_blocks, generator=gen)[:4]], dim=1)
    expected = ref_swap_blocks(src, dst, mapping)
    ops.swap_blocks(src, dst, mapping)
    assert torch.equal(dst, expected)


# --- norms, rotary, activation --------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 576), (7, 1000), (3, 5, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=dtype_name)
def test_rms_norm(device, shape, dtype, gen):
    x = (3 * torch.randn(*shape, generator=gen)).to(device, dtype)
    weight = torch.randn(shape[-1], generator=gen).to(device, dtype)
    assert_close(ops.rms_norm(x, weight, 1e-5), ref_rms_norm(x, weight, 1e-5), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_tokens,hidden", [(1, 576), (9, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=dtype_name)
def test_fused_add_rms_norm(device, num_tokens, hidden, dtype, gen):
    x = torch.randn(num_tokens, hidden, generator=gen).to(device, dtype)
    residual = (4 * torch.randn(num_tokens, hidden, generator=gen)).to(device, dtype)
    weight = torch.randn(hidden, generator=gen).to(device, dtype)
    expected_x, expected_residual = ref_fused_add_rms_norm(x, residual, weight, 1e-6)
    ops.fused_add_rms_norm(x, residual, weight, 1e-6)
    assert_close(residual, expected_residual, dtype)
    assert_close(x, expected_x, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
@pytest.mark.parametrize("flat", [True, False])
def test_rotary_embedding(device, head_dim, dtype, flat, gen):
    """query [T, Hq * D] or [T, Hq, D] and key with fewer heads, positions out of order, int64."""
    num_tokens, num_heads, num_kv_heads, max_position = 11, 5, 1, 4096
    positions = torch.randint(0, max_position, (num_tokens,), generator=gen).to(device)
    query = torch.randn(num_tokens, num_heads, head_dim, generator=gen).to(device, dtype)
    key = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    if flat:
        query, key = query.flatten(1), key.flatten(1)
    cos_sin = make_cos_sin_cache(max_position, head_dim, device=device)
    expected_q = ref_rotary_embedding(positions, query, cos_sin, head_dim)
    expected_k = ref_rotary_embedding(positions, key, cos_sin, head_dim)
    ops.rotary_embedding(positions, query, key, cos_sin, head_dim)
    assert_close(query, expected_q, dtype)
    assert_close(key, expected_k, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_rotary_embedding_int32_positions_and_dtype_cache(device, gen):
    """int32 positions and a cos/sin cache in the activation dtype (bf16)."""
    positions = torch.randint(0, 100, (6,), generator=gen, dtype=torch.int32).to(device)
    query = torch.randn(6, 4 * 64, generator=gen).to(device, torch.bfloat16)
    key = torch.randn(6, 2 * 64, generator=gen).to(device, torch.bfloat16)
    cos_sin = make_cos_sin_cache(100, 64, dtype=torch.bfloat16, device=device)
    expected_q = ref_rotary_embedding(positions, query, cos_sin, 64)
    expected_k = ref_rotary_embedding(positions, key, cos_sin, 64)
    ops.rotary_embedding(positions, query, key, cos_sin, 64)
    assert_close(query, expected_q, torch.bfloat16)
    assert_close(key, expected_k, torch.bfloat16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 2 * 1536), (9, 2 * 100), (2, 3, 2 * 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=dtype_name)
def test_silu_and_mul(device, shape, dtype, gen):
    x = (2 * torch.randn(*shape, generator=gen)).to(device, dtype)
    out = ops.silu_and_mul(x)
    assert out.shape == (*shape[:-1], shape[-1] // 2)
    assert_close(out, ref_silu_and_mul(x), dtype)


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 17, 64])
def test_small_batch_linear_on_cpu(rows, gen):
    """float32 on the CPU (bf16/fp16 on CUDA: tests/gpu/test_cuda_kernels.py); out starts as NaN.
    Up to 4 rows stream one weight row at a time, 5-64 rows go through the row-block dots."""
    n = 13
    for k in (40, 37):  # a multiple of the vector width, and one with a tail
        x = torch.randn(rows, k, generator=gen)
        w, bias = torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
        out = torch.full((rows, n), float("nan"))
        ops.small_batch_linear(out, x, w, bias)
        expected = x.double().matmul(w.double().T).add(bias).float()
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-5)
    with pytest.raises(RuntimeError, match="rows"):
        ops.small_batch_linear(torch.empty(65, n), torch.randn(65, k), w, None)


@pytest.mark.parametrize("rows", [1, 4, 9])
def test_small_batch_linear_silu_and_mul_on_cpu(rows, gen):
    """The gated MLP's gate_up projection and activation in one op: out = silu(x @ gate.T) * (x @ up.T)
    with weight = [gate; up] (odd I); out starts as NaN."""
    intermediate, k = 7, 37
    x = torch.randn(rows, k, generator=gen)
    w = torch.randn(2 * intermediate, k, generator=gen)
    out = torch.full((rows, intermediate), float("nan"))
    ops.small_batch_linear_silu_and_mul(out, x, w)
    gate_up = x.double() @ w.double().T
    expected = (torch.nn.functional.silu(gate_up[:, :intermediate]) * gate_up[:, intermediate:]).float()
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError, match="out must be"):
        ops.small_batch_linear_silu_and_mul(torch.empty(rows, 2 * intermediate), x, w)
    with pytest.raises(RuntimeError, match="weight must be"):
        ops.small_batch_linear_silu_and_mul(out, x, w[1:])


# --- bad inputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_raise_clear_errors(device, gen):
    batch, args = _attention_args(device, gen)
    with pytest.raises(RuntimeError, match="block_tables must be int32"):
        ops.paged_attention(**args(block_tables=batch.block_tables.long()))
    with pytest.raises(RuntimeError, match="multiple of num_kv_heads"):
        q3 = torch.randn(2, 3, 32, device=device)
        ops.paged_attention(**args(query=q3, out=torch.empty_like(q3)))
    with pytest.raises(RuntimeError, match="dtype"):
        ops.paged_attention(**args(out=torch.empty_like(batch.query).bfloat16()))
    with pytest.raises(RuntimeError, match="weight"):
        ops.rms_norm(torch.randn(3, 8, device=device), torch.randn(7, device=device), 1e-6)
    with pytest.raises(RuntimeError, match="2 \\* d"):
        ops.silu_and_mul(torch.randn(3, 7, device=device))


def test_bad_index_values_raise_on_cpu(gen):
    """The CPU kernels also check index values. The CUDA launchers check shapes, dtypes and devices
    only: reading values that live on the GPU would cost a sync per call and break CUDA graphs, and
    the engine builds (and checks) this metadata on the host."""
    device = "cpu"
    batch, args = _attention_args(device, gen)
    with pytest.raises(RuntimeError, match="context_lens"):
        ops.paged_attention(**args(context_lens=torch.tensor([1], dtype=torch.int32)))
    with pytest.raises(RuntimeError, match="max_context_len"):
        ops.paged_attention(**args(max_context_len=8))
    key = torch.randn(2, 2, 32)
    with pytest.raises(RuntimeError, match="slot_mapping"):
        ops.reshape_and_cache(key, key, batch.key_cache, batch.value_cache, torch.tensor([0, 10**6]))
    with pytest.raises(RuntimeError, match="positions"):
        ops.rotary_embedding(torch.tensor([5, 200]), torch.randn(2, 64), torch.randn(2, 64),
                             make_cos_sin_cache(100, 64, device=device), 64)


def _attention_args(device, gen):
    batch = make_paged_batch([(2, 9)], num_heads=4, num_kv_heads=2, head_dim=32, block_size=8,
                             dtype=torch.float32, device=device, generator=gen)
    out = torch.empty_like(batch.query)

    def args(**overrides):
        return {**dict(out=out, query=batch.query, key_cache=batch.key_cache,
                       value_cache=batch.value_cache, query_start_loc=batch.query_start_loc,
                       context_lens=batch.context_lens, block_tables=batch.block_tables,
                       scale=batch.scale, max_query_len=2, max_context_len=9), **overrides}
    return batch, args


@pytest.mark.parametrize("device", DEVICES)
def test_bad_block_mappings_raise(device):
    caches = [torch.zeros(4, 2, device=device)]
    with pytest.raises(RuntimeError, match="block_mapping"):
        ops.copy_blocks(caches, torch.tensor([[0, 4]], device=device))
    with pytest.raises(RuntimeError, match="block_mapping"):
        ops.swap_blocks(torch.zeros(2, 4, 3), torch.zeros(2, 5, 3).to(device), torch.tensor([[4, 0]]))


# --- schemas --------------------------------------------------------------------------------------


def test_opcheck_schemas(gen):
    """torch.library.opcheck: each op's schema (mutation and alias annotations) matches what the CPU
    kernel does. Fake-tensor checks are out of scope: the ops have no meta kernels."""
    utils = ("test_schema", "test_autograd_registration")
    batch = make_paged_batch([(1, 9), (3, 3)], num_heads=4, num_kv_heads=2, head_dim=32,
                             block_size=8, dtype=torch.float32, device="cpu", generator=gen)
    batch.key_cache.nan_to_num_(0.0)
    batch.value_cache.nan_to_num_(0.0)
    key = torch.randn(4, 2, 32, generator=gen)
    x = torch.randn(3, 64, generator=gen)
    weight = torch.randn(64, generator=gen)
    cases = [
        (ops.reshape_and_cache.default,
         (key, key.clone(), batch.key_cache, batch.value_cache, torch.tensor([0, 5, -1, 20]))),
        (ops.paged_attention.default,
         (torch.empty_like(batch.query), batch.query, batch.key_cache, batch.value_cache,
          batch.query_start_loc, batch.context_lens, batch.block_tables, batch.scale, 3, 9)),
        (ops.rms_norm.default, (x, weight, 1e-6)),
        (ops.fused_add_rms_norm.default, (x.clone(), x.clone(), weight, 1e-6)),
        (ops.rotary_embedding.default,
         (torch.tensor([0, 7, 3]), torch.randn(3, 4 * 32), torch.randn(3, 2 * 32),
          make_cos_sin_cache(16, 32), 32)),
        (ops.silu_and_mul.default, (x,)),
        (ops.copy_blocks.default, ([torch.randn(4, 8), torch.randn(4, 8)], torch.tensor([[0, 2]]))),
        (ops.swap_blocks.default, (torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.tensor([[1, 3]]))),
        (ops.small_batch_linear.default, (torch.empty(3, 5), x, torch.randn(5, 64), None)),
        (ops.small_batch_linear_silu_and_mul.default, (torch.empty(3, 5), x, torch.randn(10, 64))),
        (ops.sample_tokens.default,
         (torch.randn(3, 50), torch.tensor([0.0, 1.0, 0.5]), torch.tensor([0, 5, 0]), torch.tensor([1.0, 1.0, 0.9]),
          torch.zeros(3), torch.tensor([1, 2, 3]), torch.tensor([7, 8, 9]))),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=utils)
