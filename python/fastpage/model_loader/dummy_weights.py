"""Random weights in a model's canonical shapes (vLLM's load_format="dummy"): benchmark and test big
shapes where no checkpoint can be downloaded or carried.

Every tensor is a pure function of (seed, name): each is drawn from its own generator on the target
device, so one process, every tensor-parallel rank and a reference model built with
`hf_state_dict` all see the same numbers. Linear and embedding weights ~ N(0, 0.02) (HF's
initializer_range), biases ~ N(0, 0.02), norm weights 1 and norm biases 0.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

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


def dummy_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: str | torch.device,
                 seed: int = 0) -> torch.Tensor:
    """The weight `name` would hold in a dummy model with this seed."""
    is_norm = "norm" in name.rsplit(".", 2)[-2]
    if is_norm:
        return (torch.ones if name.endswith(".weight") else torch.zeros)(shape, dtype=dtype, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(zlib.crc32(f"{seed}:{name}".encode()))  # 32 bits: the CPU generator keeps no more
    out = torch.empty(shape, dtype=dtype, device=device)
    return out.normal_(0.0, INIT_STD, generator=generator)


def dummy_weights(c: _C.ModelConfig, dtype: torch.dtype, device: str | torch.device,
                  seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Canonical (name, tensor) pairs, one at a time, so a caller can shard each and drop the rest."""
    for name, shape in canonical_shapes(c):
        yield name, dummy_tensor(name, shape, dtype, device, seed)


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
