"""Plain torch references for the torch.ops.fastpage kernels, and builders of random paged batches.

Shared by tests/test_kernels.py (CPU, and CUDA where present) and the GPU tests: every reference
computes in float32 from the same inputs the kernel gets and never touches the op under test.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


# --- references -----------------------------------------------------------------------------------


def ref_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping):
    """Returns copies of the caches with each token's K/V written at its slot (slot < 0 skipped)."""
    key_cache, value_cache = key_cache.clone(), value_cache.clone()
    num_blocks, block_size = key_cache.shape[:2]
    flat_k = key_cache.view(num_blocks * block_size, *key_cache.shape[2:])
    flat_v = value_cache.view(num_blocks * block_size, *value_cache.shape[2:])
    for token, slot in enumerate(slot_mapping.tolist()):
        if slot >= 0:
            flat_k[slot] = key[token]
            flat_v[slot] = value[token]
    return key_cache, value_cache


FP8_E4M3_MAX = 448.0


def to_fp8_e4m3(x):
    """vLLM's fp8 KV-cache cast with scale 1.0: saturate to +-448 (a plain cast makes NaN past 464),
    round to nearest even; NaN stays NaN."""
    return x.float().clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)


def gather_context(cache, block_table, context_len):
    """The first context_len token rows [context_len, heads, head_dim] of a sequence's paged cache."""
    block_size = cache.shape[1]
    num_used = (context_len + block_size - 1) // block_size
    blocks = cache[block_table[:num_used].long()]  # [num_used, block_size, heads, head_dim]
    return blocks.reshape(-1, *cache.shape[2:])[:context_len]


def ref_paged_attention(query, key_cache, value_cache, query_start_loc, context_lens, block_tables, scale):
    """float32 [num_scheduled_tokens, num_heads, head_dim]: causal attention of each sequence's new
    tokens (the last q_len of its context) over its whole context, grouped-query aware. fp8 caches
    are read as the float32 values they hold."""
    if key_cache.dtype == torch.float8_e4m3fn:
        key_cache, value_cache = key_cache.float(), value_cache.float()
    num_heads = query.shape[1]
    group = num_heads // key_cache.shape[2]
    starts = query_start_loc.tolist()
    outputs = []
    for seq, context_len in enumerate(context_lens.tolist()):
        q = query[starts[seq] : starts[seq + 1]].float()  # [q_len, Hq, D]
        q_len = q.shape[0]
        k = gather_context(key_cache, block_tables[seq], context_len).float()
        v = gather_context(value_cache, block_tables[seq], context_len).float()
        k = k.repeat_interleave(group, dim=1)  # [ctx, Hq, D]: query head h reads kv head h // group
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        query_pos = torch.arange(context_len - q_len, context_len, device=q.device)[:, None]
        key_pos = torch.arange(context_len, device=q.device)[None, :]
        scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
        outputs.append(torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v))
    if not outputs:
        return query.new_empty((0, *query.shape[1:]), dtype=torch.float32)
    return torch.cat(outputs)


def ref_rms_norm(x, weight, eps):
    """HF LlamaRMSNorm: statistics in float32, normalized row rounded to x's dtype, then * weight."""
    xf = x.float()
    normalized = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (normalized.float() * weight.float()).to(x.dtype)


def ref_fused_add_rms_norm(x, residual, weight, eps):
    """Returns (new x, new residual): residual += x (in residual's dtype); x = rms_norm(residual)."""
    new_residual = (residual.float() + x.float()).to(residual.dtype)
    return ref_rms_norm(new_residual, weight, eps), new_residual


def ref_rotary_embedding(positions, x, cos_sin_cache, head_dim):
    """Rotate-half (HF Llama / NeoX) rotary embedding of x [T, H * D] or [T, H, D], in float32."""
    shape = x.shape
    xf = x.float().reshape(shape[0], -1, head_dim)
    cos, sin = cos_sin_cache[positions.long()].float().chunk(2, dim=-1)  # [T, D / 2] each
    cos = torch.cat([cos, cos], dim=-1)[:, None, :]
    sin = torch.cat([sin, sin], dim=-1)[:, None, :]
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).reshape(shape)


def ref_silu_and_mul(x):
    d = x.shape[-1] // 2
    return F.silu(x[..., :d].float()) * x[..., d:].float()


def ref_copy_blocks(caches, block_mapping):
    """Copies of the caches with block dst = block src (dim 0) for each (src, dst) row."""
    caches = [cache.clone() for cache in caches]
    for src, dst in block_mapping.tolist():
        for cache in caches:
            cache[dst] = cache[src]
    return caches


def ref_swap_blocks(src, dst, block_mapping):
    """A copy of dst with dst[:, d] = src[:, s] for each (s, d) row (block index is dim 1)."""
    dst = dst.clone()
    for s, d in block_mapping.tolist():
        dst[:, d] = src[:, s].to(dst.device)
    return dst


def make_cos_sin_cache(max_position, head_dim, theta=10000.0, dtype=torch.float32, device="cpu"):
    """[max_position, head_dim] = [cos | sin] of position * inv_freq, as HF Llama computes them."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(dtype=dtype, device=device)


# --- random paged batches -------------------------------------------------------------------------


@dataclass
class PagedBatch:
    query: torch.Tensor  # [num_tokens, num_heads, head_dim] (num_tokens may include padding)
    key_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor
    query_start_loc: torch.Tensor  # int32 [num_seqs + 1]
    context_lens: torch.Tensor  # int32 [num_seqs]
    block_tables: torch.Tensor  # int32 [num_seqs, max_blocks], padded with 0
    scale: float
    max_query_len: int
    max_context_len: int


def make_paged_batch(seqs, *, num_heads, num_kv_heads, head_dim, block_size, dtype, device,
                     generator, num_padding_tokens=0, spare_blocks=3):
    """Random query and caches for sequences given as (q_len, context_len) pairs.

    Blocks come from a random permutation, so block tables are in no particular order; slots that no
    sequence's context covers (the tail of partial last blocks, spare blocks) hold NaN, so a kernel
    that reads past a context poisons its output.
    """
    blocks_per_seq = [(ctx + block_size - 1) // block_size for _, ctx in seqs]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    max_blocks = max(blocks_per_seq, default=0) + 1  # one column of padding past the longest table
    perm = torch.randperm(num_blocks, generator=generator)
    block_tables = torch.zeros(len(seqs), max_blocks, dtype=torch.int32)
    key_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"))
    value_cache = torch.full_like(key_cache, float("nan"))
    next_block = 0
    for i, ((_, ctx), n) in enumerate(zip(seqs, blocks_per_seq)):
        table = perm[next_block : next_block + n]
        next_block += n
        block_tables[i, :n] = table
        for position in range(0, ctx, block_size):
            rows = min(block_size, ctx - position)
            block = table[position // block_size]
            key_cache[block, :rows] = torch.randn(rows, num_kv_heads, head_dim, generator=generator)
            value_cache[block, :rows] = torch.randn(rows, num_kv_heads, head_dim, generator=generator)
    q_lens = [q for q, _ in seqs]
    num_tokens = sum(q_lens) + num_padding_tokens
    query = torch.randn(num_tokens, num_heads, head_dim, generator=generator)
    query_start_loc = torch.tensor([0] + q_lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return PagedBatch(
        query=query.to(dtype=dtype, device=device),
        key_cache=key_cache.to(dtype=dtype, device=device),
        value_cache=value_cache.to(dtype=dtype, device=device),
        query_start_loc=query_start_loc.to(device),
        context_lens=torch.tensor([ctx for _, ctx in seqs], dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        scale=head_dim**-0.5,
        max_query_len=max(q_lens, default=0),
        max_context_len=max((ctx for _, ctx in seqs), default=0),
    )
