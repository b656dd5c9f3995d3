"""The fp8 KV cache (kv_cache_dtype="fp8": float8_e4m3fn caches, scale 1.0) at the op level.

reshape_and_cache casts new keys and values into the cache with saturation; paged_attention reads
fp8 keys and values and computes as with a 16-bit cache. The reference is the plain torch one of
kernel_reference.py on K and V round-tripped through torch.float8_e4m3fn, so the only difference
left is the kernel's own arithmetic: the tolerances are those of the 16-bit cache tests.
Runs on the CPU, and on CUDA too where it is available.
"""

import pytest
import torch

import fastpage  # noqa: F401  (registers torch.ops.fastpage)
from kernel_reference import (
    make_paged_batch,
    ref_copy_blocks,
    ref_paged_attention,
    ref_reshape_and_cache,
    ref_swap_blocks,
    to_fp8_e4m3,
)
from kernel_test_setup import DEVICES, TOL, dtype_name, gen  # noqa: F401  (gen: a fixture)

ops = torch.ops.fastpage
FP8 = torch.float8_e4m3fn


def assert_same_fp8(actual, expected):
    """Bit-for-bit equal casts, NaN matching NaN (whatever its sign bit)."""
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), atol=0, rtol=0, equal_nan=True)


def attention(batch, key_cache, value_cache):
    out = torch.full_like(batch.query, float("nan"))
    ops.paged_attention(out, batch.query, key_cache, value_cache, batch.query_start_loc, batch.context_lens,
                        batch.block_tables, batch.scale, batch.max_query_len, batch.max_context_len)
    return out


def reference(batch, key_cache, value_cache):
    return ref_paged_attention(batch.query, key_cache.float(), value_cache.float(), batch.query_start_loc,
                               batch.context_lens, batch.block_tables, batch.scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=dtype_name)
def test_reshape_and_cache_casts_with_saturation(device, block_size, dtype, gen):
    """Random rows, plus values past e4m3's range (+-448 after saturation, also from inf), values
    that round to the largest finite one, tiny subnormals and NaN (stays NaN)."""
    num_tokens, num_kv_heads, head_dim, num_blocks = 29, 3, 64, 9
    key = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen) * 4
    value = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen) * 4
    extremes = torch.tensor([1000.0, -5000.0, 449.0, -470.0, 447.0, 3e-3, -1e-3, float("inf"),
                             float("-inf"), float("nan"), 0.0, -0.0])
    if dtype == torch.float16:
        extremes[1] = -3000.0  # float16 holds it; the cast must still saturate
    key[0, 0, :len(extremes)] = extremes
    value[1, 2, -len(extremes):] = extremes
    key, value = key.to(device, dtype), value.to(device, dtype)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[[4, 20]] = -1  # padding tokens: not written
    slot_mapping = slots.to(device)
    key_cache = to_fp8_e4m3(torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen)).to(device)
    value_cache = to_fp8_e4m3(torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen)).to(device)
    expected_k, expected_v = ref_reshape_and_cache(to_fp8_e4m3(key), to_fp8_e4m3(value), key_cache.cpu(),
                                                   value_cache.cpu(), slots)
    ops.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    assert_same_fp8(key_cache, expected_k)
    assert_same_fp8(value_cache, expected_v)
    written = key_cache.cpu().flatten(0, 1)[slots[0]][0, :len(extremes)].float()
    assert written[:4].tolist() == [448.0, -448.0, 448.0, -448.0]
    assert written[7:9].tolist() == [448.0, -448.0] and written[9].isnan()


def mixed_seqs(block_size, gen):
    """Decodes at contexts 1, one block + 1 and a few blocks; prefill chunks over cached prefixes and a
    fresh prompt, with partial last blocks."""
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
    return [(1, 1), (1, block_size + 1), (1, r(3 * block_size, 300)), (r(2, 9), r(40, 120)),
            (block_size + 3, 2 * block_size + 5), (23, 23)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (8, 2), (9, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=dtype_name)
def test_paged_attention_reads_fp8(device, block_size, num_heads, num_kv_heads, dtype, gen):
    """Decode and prefill shapes in one batch, GQA, several blocks per sequence. Slots no context
    covers hold NaN (fp8 has NaN), so reading past a context poisons the output."""
    batch = make_paged_batch(mixed_seqs(block_size, gen), num_heads=num_heads, num_kv_heads=num_kv_heads,
                             head_dim=64, block_size=block_size, dtype=torch.float32, device=device,
                             generator=gen)
    batch.query = batch.query.to(dtype)
    key_cache, value_cache = to_fp8_e4m3(batch.key_cache), to_fp8_e4m3(batch.value_cache)
    out = attention(batch, key_cache, value_cache)
    torch.testing.assert_close(out.float().cpu(), reference(batch, key_cache, value_cache).cpu(), **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_write_then_attend_through_an_fp8_cache(device, dtype, gen):
    """The engine's order: reshape_and_cache writes a prompt's K/V (some beyond e4m3's range) into an
    fp8 cache, then paged_attention over it equals attention on the saturated fp8 round trip."""
    num_heads, num_kv_heads, head_dim, block_size, prompt_len = 8, 2, 64, 16, 70
    batch = make_paged_batch([(prompt_len, prompt_len)], num_heads=num_heads, num_kv_heads=num_kv_heads,
                             head_dim=head_dim, block_size=block_size, dtype=dtype, device=device,
                             generator=gen)
    key = (torch.randn(prompt_len, num_kv_heads, head_dim, generator=gen) * 3).to(device, dtype)
    value = (torch.randn(prompt_len, num_kv_heads, head_dim, generator=gen) * 3).to(device, dtype)
    key[5, 1, 7], value[9, 0, 3] = 900.0, -2000.0
    table = batch.block_tables[0].long().cpu()
    positions = torch.arange(prompt_len)
    slot_mapping = (table[positions // block_size] * block_size + positions % block_size).to(device)
    key_cache = torch.zeros(batch.key_cache.shape, dtype=FP8, device=device)
    value_cache = torch.zeros_like(key_cache)
    ops.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    out = attention(batch, key_cache, value_cache)
    expected_k, expected_v = ref_reshape_and_cache(to_fp8_e4m3(key).float(), to_fp8_e4m3(value).float(),
                                                   torch.zeros(key_cache.shape), torch.zeros(key_cache.shape),
                                                   slot_mapping.cpu())
    expected = ref_paged_attention(batch.query.cpu(), expected_k, expected_v, batch.query_start_loc.cpu(),
                                   batch.context_lens.cpu(), batch.block_tables.cpu(), batch.scale)
    torch.testing.assert_close(out.float().cpu(), expected, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_copy_and_swap_move_fp8_blocks(device, gen):
    """Copy-on-write and swapping move fp8 blocks byte for byte."""
    caches = [to_fp8_e4m3(torch.randn(6, 8, 2, 16, generator=gen)).to(device) for _ in range(4)]
    mapping = torch.tensor([[0, 3], [5, 1], [2, 4]])
    expected = ref_copy_blocks([c.cpu().view(torch.uint8) for c in caches], mapping)
    ops.copy_blocks(caches, mapping.to(device))
    for cache, want in zip(caches, expected):
        assert torch.equal(cache.cpu().view(torch.uint8), want)
    device_cache = to_fp8_e4m3(torch.randn(4, 6, 8, 2, 16, generator=gen)).to(device)
    host_cache = to_fp8_e4m3(torch.randn(4, 3, 8, 2, 16, generator=gen))
    swap_out = torch.tensor([[1, 0], [4, 2]])
    want = ref_swap_blocks(device_cache.cpu().view(torch.uint8), host_cache.view(torch.uint8), swap_out)
    ops.swap_blocks(device_cache, host_cache, swap_out)
    assert torch.equal(host_cache.view(torch.uint8), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cache_dtype", [torch.float16, torch.int8, torch.float8_e5m2], ids=dtype_name)
def test_other_cache_dtypes_raise_naming_the_field(device, cache_dtype, gen):
    """A cache is the query's dtype or float8_e4m3fn; anything else is an error naming the cache."""
    batch = make_paged_batch([(2, 9)], num_heads=4, num_kv_heads=2, head_dim=32, block_size=8,
                             dtype=torch.float32, device=device, generator=gen)
    bad = torch.zeros(batch.key_cache.shape, device=device).to(cache_dtype)
    with pytest.raises(RuntimeError, match="key_cache must have dtype .*Float8_e4m3fn"):
        attention(batch, bad, bad)
    key = torch.randn(2, 2, 32, device=device)
    with pytest.raises(RuntimeError, match="key_cache must have dtype .*Float8_e4m3fn"):
        ops.reshape_and_cache(key, key, bad, bad, torch.tensor([0, 1], device=device))
    fp8 = to_fp8_e4m3(batch.key_cache)
    with pytest.raises(RuntimeError, match="value_cache"):
        attention(batch, fp8, batch.value_cache)
