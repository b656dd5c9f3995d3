"""Random weights in a model's canonical shapes (vLLM's load_format="dummy"): benchmark and test big
shapes where no checkpoint can be downloaded or carried.

Every element is a hash of (seed, name, row, column): the same numbers on CPU and GPU, in one process
or split over tensor-parallel ranks (each rank makes only its shard), and in a reference model filled
through `hf_state_dict_tensor`. Linear and embedding weights and biases are uniform with standard
deviation 0.02 (HF's initializer_range); norm weights are 1 and norm biases 0.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator

import torch

from fastpage import _C

INIT_STD = 0.02


def canonical_shapes(c: _C.ModelConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every weight the C++ decoder takes for `c` (see model_runner.h)."""
    hidden, head_dim = c.hidden_size, c.head_dim
    q_size, kv_size = c.num_heads * head_dim, c.num_kv_heads * head_dim
    layer_norm = c.norm_type == _C.NormType.LayerNorm

    def norm(name: str) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield name + ".weight", (hidden,)
        if layer_norm:
            yield name + ".bias", (hidden,)

    yield "embed_tokens.weight", (c.vocab_size, hidden)
    if c.position_type == _C.PositionType.Learned:
        yield "embed_positions.weight", (c.max_position_embeddings + c.learned_position_offset, hidden)
    for i in range(c.num_layers):
        p = f"layers.{i}."
        yield from norm(p + "input_norm")
        yield p + "qkv_proj.weight", (q_size + 2 * kv_size, hidden)
        if c.qkv_bias:
            yield p + "qkv_proj.bias", (q_size + 2 * kv_size,)
        if c.qk_norm:
            yield p + "q_norm.weight", (head_dim,)
            yield p + "k_norm.weight", (head_dim,)
        yield p + "o_proj.weight", (hidden, q_size)
        if c.o_bias:
            yield p + "o_proj.bias", (hidden,)
        yield from norm(p + "post_attn_norm")
        if c.gated_mlp:
            yield p + "gate_up_proj.weight", (2 * c.intermediate_size, hidden)
        else:
            yield p + "up_proj.weight", (c.intermediate_size, hidden)
            if c.mlp_bias:
                yield p + "up_proj.bias", (c.intermediate_size,)
        yield p + "down_proj.weight", (hidden, c.intermediate_size)
        if c.mlp_bias:
            yield p + "down_proj.bias", (hidden,)
    yield from norm("final_norm")
    if not c.tie_word_embeddings:
        yield "lm_head.weight", (c.vocab_size, hidden)


_MASK32 = 0xFFFFFFFF
_CHUNK = 1 << 24  # elements per hashing pass: bounds the int64 temporaries


def _hashed_uniform(key: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """float32 in [-0.5, 0.5) from a 32-bit integer hash of (key, row, col), elementwise."""
    x = (rows * 0x9E3779B1 + cols * 0x85EBCA77 + key) & _MASK32
    # A 32-bit avalanche hash; int64 products wrap, and the masks keep their exact low 32 bits.
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    x ^= x >> 16
    return x.to(torch.float32) * 2.0**-32 - 0.5


def dummy_values(name: str, rows: torch.Tensor, cols: torch.Tensor | int, dtype: torch.dtype,
                 seed: int = 0) -> torch.Tensor:
    """The elements (rows[k], cols[k]) of the dummy weight `name`: any slice of a weight, or a
    tensor-parallel shard of it, is made without making the whole weight."""
    if "norm" in name.rsplit(".", 2)[-2]:
        fill = 1.0 if name.endswith(".weight") else 0.0
        return torch.full(rows.shape, fill, dtype=dtype, device=rows.device)
    key = zlib.crc32(f"{seed}:{name}".encode())
    cols = torch.as_tensor(cols, device=rows.device).expand(rows.shape)
    out = torch.empty(rows.shape, dtype=dtype, device=rows.device)
    flat_out, flat_rows, flat_cols = out.view(-1), rows.reshape(-1), cols.reshape(-1)
    scale = 2.0 * math.sqrt(3.0) * INIT_STD  # uniform with standard deviation INIT_STD
    for begin in range(0, flat_out.numel(), _CHUNK):
        end = begin + _CHUNK
        flat_out[begin:end] = _hashed_uniform(key, flat_rows[begin:end], flat_cols[begin:end]) * scale
    return out


def dummy_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: str | torch.device,
                 seed: int = 0, shard: Callable[[str, torch.Tensor], torch.Tensor | None] | None = None
                 ) -> torch.Tensor | None:
    """The weight `name` of a dummy model with this seed, or the part `shard` cuts from it (a function
    of (name, full tensor) that slices and concatenates; None: this rank holds none of it). The shard
    is applied to index tensors, so only its own elements are made."""
    rows = torch.arange(shape[0], device=device)
    cols: torch.Tensor | int = 0
    if len(shape) == 2:
        rows, cols = rows[:, None].expand(shape), torch.arange(shape[1], device=device)[None, :].expand(shape)
    if shard is not None:
        rows = shard(name, rows)
        if rows is None:
            return None
        if len(shape) == 2:
            cols = shard(name, cols)
    return dummy_values(name, rows, cols, dtype, seed)


def dummy_weights(c: _C.ModelConfig, dtype: torch.dtype, device: str | torch.device, seed: int = 0,
                  shard: Callable[[str, torch.Tensor], torch.Tensor | None] | None = None
                  ) -> Iterator[tuple[str, torch.Tensor]]:
    """Canonical (name, tensor) pairs of this rank (see dummy_tensor), one at a time."""
    for name, shape in canonical_shapes(c):
        tensor = dummy_tensor(name, shape, dtype, device, seed, shard)
        if tensor is not None:
            yield name, tensor


def hf_state_dict_tensor(c: _C.ModelConfig, hf_name: str, dtype: torch.dtype, device: str | torch.device,
                         seed: int = 0) -> torch.Tensor:
    """For Llama-like HF models: the tensor HF's `hf_name` holds in the dummy model (q/k/v and
    gate/up are slices of the fused canonical tensors), so a reference model can be filled in place."""
    hidden_q = c.num_heads * c.head_dim
    kv = c.num_kv_heads * c.head_dim
    fused = {"q_proj": ("qkv_proj", 0, hidden_q), "k_proj": ("qkv_proj", hidden_q, hidden_q + kv),
             "v_proj": ("qkv_proj", hidden_q + kv, hidden_q + 2 * kv),
             "gate_proj": ("gate_up_proj", 0, c.intermediate_size),
             "up_proj": ("gate_up_proj", c.intermediate_size, 2 * c.intermediate_size)}
    renames = {"input_layernorm": "input_norm", "post_attention_layernorm": "post_attn_norm",
               "self_attn.o_proj": "o_proj", "mlp.down_proj": "down_proj",
               "self_attn.q_norm": "q_norm", "self_attn.k_norm": "k_norm"}
    name = hf_name.removeprefix("model.")
    if name == "norm.weight":
        name = "final_norm.weight"
    shapes = dict(canonical_shapes(c))
    for hf_part, canonical in renames.items():
        name = name.replace(f".{hf_part}.", f".{canonical}.")
    for hf_part, (canonical, begin, end) in fused.items():
        for prefix in ("self_attn.", "mlp."):
            if f".{prefix}{hf_part}." in name:
                name = name.replace(f".{prefix}{hf_part}.", f".{canonical}.")
                full = dummy_tensor(name, shapes[name], dtype, device, seed)
                return full[begin:end].clone()
    if name == "lm_head.weight" and c.tie_word_embeddings:
        name = "embed_tokens.weight"
    return dummy_tensor(name, shapes[name], dtype, device, seed)
