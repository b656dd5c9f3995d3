"""Cuts full canonical tensors down to one rank's shard for tensor / pipeline parallelism.

The loaders call a Sharder on each canonical tensor as they produce it (q/k/v and gate/up already
fused), so a rank never holds more than the tensor in hand plus its own shard. What each rank holds
comes from C++ (`_C.model_shard`, cpp/include/fastpage/parallel.h), which also rejects sizes that do
not divide, with a ValueError naming the field.

Megatron layout: qkv_proj rows = this rank's q heads, then its k heads, then its v heads (a KV head
is replicated when there are fewer KV heads than ranks); gate_up_proj rows = its gate slice then its
up slice; up_proj rows and o_proj / down_proj columns are sliced likewise (o_proj / down_proj biases
stay whole: C++ adds them once, after the all-reduce); embed_tokens / lm_head keep ceil(V / tp)
rows each, zero-padded at the end. Norms, q_norm/k_norm and learned positions are replicated.
Pipeline stages keep their own layers (global names), embed_tokens and positions on the first
stage, final_norm and lm_head on the last (tied embeddings: the last stage keeps embed_tokens).
"""

from __future__ import annotations

import re

import torch

from fastpage import _C

_LAYER_NAME = re.compile(r"layers\.(\d+)\.(.+)")


class Sharder:
    def __init__(self, config: _C.ModelConfig, parallel: _C.ParallelConfig):
        self.config = config
        self.shard = _C.model_shard(config, parallel)

    @property
    def layer_range(self) -> tuple[int, int]:
        return self.shard.layer_begin, self.shard.layer_end

    def keeps(self, name: str) -> bool:
        """Whether this rank holds (a slice of) the canonical tensor `name`."""
        s = self.shard
        match = _LAYER_NAME.fullmatch(name)
        if match:
            return s.layer_begin <= int(match[1]) < s.layer_end
        if name == "embed_tokens.weight":
            return s.first_stage or (s.last_stage and self.config.tie_word_embeddings)
        if name.startswith("embed_positions."):
            return s.first_stage
        if name == "lm_head.weight" or name.startswith("final_norm."):
            return s.last_stage
        return True  # not a canonical name: C++ reports it as unexpected

    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor | None:
        """This rank's part of `tensor` (a copy, so the full tensor can be freed), or None."""
        if not self.keeps(name):
            return None
        if self.shard.tp_size == 1:
            return tensor
        if name in ("embed_tokens.weight", "lm_head.weight"):
            return self._vocab_rows(tensor)
        match = _LAYER_NAME.fullmatch(name)
        return self._layer_part(match[2], tensor) if match else tensor

    def _layer_part(self, part: str, t: torch.Tensor) -> torch.Tensor:
        s, c = self.shard, self.config
        hd = c.head_dim
        if part in ("qkv_proj.weight", "qkv_proj.bias"):
            q_size, kv_size = c.num_heads * hd, c.num_kv_heads * hd
            return torch.cat([t.narrow(0, s.head_begin * hd, s.num_heads * hd),
                              t.narrow(0, q_size + s.kv_head_begin * hd, s.num_kv_heads * hd),
                              t.narrow(0, q_size + kv_size + s.kv_head_begin * hd, s.num_kv_heads * hd)])
        if part == "o_proj.weight":
            return _copy(t.narrow(1, s.head_begin * hd, s.num_heads * hd))
        begin, size = s.intermediate_begin, s.intermediate_size
        if part == "gate_up_proj.weight":
            return torch.cat([t.narrow(0, begin, size), t.narrow(0, c.intermediate_size + begin, size)])
        if part in ("up_proj.weight", "up_proj.bias"):
            return _copy(t.narrow(0, begin, size))
        if part == "down_proj.weight":
            return _copy(t.narrow(1, begin, size))
        return t  # norms, q_norm / k_norm, o_proj.bias, down_proj.bias: replicated

    def _vocab_rows(self, t: torch.Tensor) -> torch.Tensor:
        s = self.shard
        rows = t[s.vocab_begin:s.vocab_begin + s.vocab_rows]
        if rows.shape[0] == s.vocab_rows:
            return _copy(rows)
        padded = t.new_zeros((s.vocab_rows, *t.shape[1:]))
        padded[:rows.shape[0]] = rows
        return padded


def _copy(t: torch.Tensor) -> torch.Tensor:
    return t.clone(memory_format=torch.contiguous_format)
