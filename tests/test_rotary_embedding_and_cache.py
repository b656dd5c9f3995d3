"""torch.ops.fastpage.rotary_embedding_and_cache against the two ops it replaces, rotary_embedding then
reshape_and_cache, bit for bit (query, key, both caches), on the model's views of a fused qkv
projection: activation dtypes, bf16/fp16/f32 and float8_e4m3fn caches, int32/int64 positions, float32
or activation-dtype cos/sin caches, slot -1 and padding tokens past slot_mapping. Runs on the CPU, and on
CUDA where fastpage was built with its kernels."""

import pytest
import torch

import fastpage  # noqa: F401  (registers torch.ops.fastpage)
from kernel_reference import make_cos_sin_cache, ref_reshape_and_cache, ref_rotary_embedding, to_fp8_e4m3
from kernel_test_setup import DEVICES, TOL, dtype_name, gen  # noqa: F401  (gen: a fixture)

ops = torch.ops.fastpage


def qkv_views(num_tokens, num_heads, num_kv_heads, head_dim, dtype, device, gen):
    """q, k, v as the decoder model makes them: views into one [tokens, (H + 2 H_kv) D] projection."""
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    qkv = (torch.randn(num_tokens, q_size + 2 * kv_size, generator=gen) * 3).to(device, dtype)
    return (qkv[:, :q_size].view(num_tokens, num_heads, head_dim),
            qkv[:, q_size:q_size + kv_size].view(num_tokens, num_kv_heads, head_dim),
            qkv[:, q_size + kv_size:].view(num_tokens, num_kv_heads, head_dim))


def random_caches(num_blocks, block_size, num_kv_heads, head_dim, cache_dtype, device, gen):
    def one():
        x = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
        return (to_fp8_e4m3(x) if cache_dtype == torch.float8_e4m3fn else x.to(cache_dtype)).to(device)
    return one(), one()


def same_bits(a, b):
    """Bitwise equality (NaN payloads included), for any dtype."""
    assert a.dtype == b.dtype and a.shape == b.shape
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def run_both(positions, q, k, v, cos_sin, head_dim, key_cache, value_cache, slot_mapping):
    """(fused results, two-op results): each tuple is (q, k, key_cache, value_cache)."""
    two = [t.clone() for t in (q, k, key_cache, value_cache)]
    ops.rotary_embedding(positions, two[0], two[1], cos_sin, head_dim)
    ops.reshape_and_cache(two[1], v, two[2], two[3], slot_mapping)
    ops.rotary_embedding_and_cache(positions, q, k, v, cos_sin, head_dim, key_cache, value_cache, slot_mapping)
    return (q, k, key_cache, value_cache), two


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=dtype_name)
@pytest.mark.parametrize("fp8_cache", [False, True], ids=["same_dtype_cache", "fp8_cache"])
@pytest.mark.parametrize("position_dtype", [torch.int32, torch.int64], ids=dtype_name)
@pytest.mark.parametrize("cos_sin_in_float32", [True, False], ids=["cos_sin_f32", "cos_sin_dtype"])
def test_fused_equals_rotary_then_cache_write(device, dtype, fp8_cache, position_dtype, cos_sin_in_float32, gen):
    num_tokens, num_heads, num_kv_heads, head_dim, block_size, num_blocks = 13, 8, 2, 64, 16, 5
    cache_dtype = torch.float8_e4m3fn if fp8_cache else dtype
    q, k, v = qkv_views(num_tokens, num_heads, num_kv_heads, head_dim, dtype, device, gen)
    k[0, 0, :4] = torch.tensor([1000.0, -900.0, 449.0, float("nan")], dtype=dtype)  # fp8: saturation, NaN
    key_cache, value_cache = random_caches(num_blocks, block_size, num_kv_heads, head_dim, cache_dtype, device, gen)
    positions = torch.randint(0, 300, (num_tokens,), generator=gen).to(device, position_dtype)
    cos_sin = make_cos_sin_cache(300, head_dim, dtype=torch.float32 if cos_sin_in_float32 else dtype, device=device)
    # Eleven slots for thirteen tokens: two padding tokens past the mapping, and two skipped slots.
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens - 2]
    slots[[3, 7]] = -1
    slot_mapping = slots.to(device)
    expected_q = ref_rotary_embedding(positions.cpu(), q.cpu(), cos_sin.cpu(), head_dim)
    caches_before = key_cache.cpu(), value_cache.cpu()

    fused, two = run_both(positions, q, k, v, cos_sin, head_dim, key_cache, value_cache, slot_mapping)
    for name, a, b in zip(("query", "key", "key_cache", "value_cache"), fused, two):
        assert same_bits(a, b), f"{name} differs from rotary_embedding + reshape_and_cache"
    # And the two ops are what they claim (so equality above is not equality of two wrong things).
    torch.testing.assert_close(fused[0].cpu().float(), expected_q, **TOL[dtype])
    cast = to_fp8_e4m3 if fp8_cache else (lambda x: x)
    expected_kc, expected_vc = ref_reshape_and_cache(cast(fused[1].cpu()), cast(v.cpu()), *caches_before, slots)
    assert same_bits(fused[2].cpu(), expected_kc) and same_bits(fused[3].cpu(), expected_vc)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=dtype_name)
def test_fused_on_contiguous_tensors_and_llama_decode_shape(device, dtype, gen):
    """Separate contiguous q/k/v [T, H, D] (no qkv views), Llama-3-8B's decode heads (32 / 8 x 128)."""
    num_tokens, num_heads, num_kv_heads, head_dim, block_size = 3, 32, 8, 128, 16
    q = torch.randn(num_tokens, num_heads, head_dim, generator=gen).to(device, dtype)
    k = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    v = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    key_cache, value_cache = random_caches(4, block_size, num_kv_heads, head_dim, dtype, device, gen)
    positions = torch.tensor([0, 17, 63], device=device)
    slot_mapping = torch.tensor([5, 63, 16], device=device)
    cos_sin = make_cos_sin_cache(64, head_dim, dtype=dtype, device=device)
    fused, two = run_both(positions, q, k, v, cos_sin, head_dim, key_cache, value_cache, slot_mapping)
    for a, b in zip(fused, two):
        assert same_bits(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_bad_cache_input_raises_before_rotating(device, gen):
    q, k, v = qkv_views(4, 4, 2, 32, torch.float32, device, gen)
    key_cache, value_cache = random_caches(2, 8, 2, 32, torch.float32, device, gen)
    cos_sin = make_cos_sin_cache(16, 32, device=device)
    positions = torch.arange(4, device=device)
    q_before, k_before = q.clone(), k.clone()
    wrong_heads = torch.zeros(2, 8, 3, 32, device=device)
    with pytest.raises(RuntimeError, match="cache"):
        ops.rotary_embedding_and_cache(positions, q, k, v, cos_sin, 32, wrong_heads, wrong_heads,
                                       torch.arange(4, device=device))
    with pytest.raises(RuntimeError, match="slot_mapping"):
        ops.rotary_embedding_and_cache(positions, q, k, v, cos_sin, 32, key_cache, value_cache,
                                       torch.arange(5, device=device))
    assert torch.equal(q, q_before) and torch.equal(k, k_before)


def test_opcheck_schema(gen):
    """The schema's mutation annotations (query, key, both caches written; the rest read) match the
    CPU kernel (torch.library.opcheck; no meta kernel, so no fake-tensor checks)."""
    q, k, v = qkv_views(4, 4, 2, 32, torch.float32, "cpu", gen)
    key_cache, value_cache = random_caches(3, 8, 2, 32, torch.float32, "cpu", gen)
    args = (torch.tensor([0, 7, 3, 1]), q.contiguous(), k.contiguous(), v.contiguous(),
            make_cos_sin_cache(16, 32), 32, key_cache, value_cache, torch.tensor([0, 5, -1, 20]))
    torch.library.opcheck(ops.rotary_embedding_and_cache.default, args,
                          test_utils=("test_schema", "test_autograd_registration"))
