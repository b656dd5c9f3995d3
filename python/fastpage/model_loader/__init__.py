"""Model loading: a model path (HF directory or .gguf file) -> what the C++ engine needs.

Every loader returns a LoadedModel whose weights use the canonical names documented in
cpp/include/fastpage/model_runner.h (q/k/v fused into qkv_proj, gate/up into gate_up_proj).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from fastpage import _C


@dataclasses.dataclass
class LoadedModel:
    model_config: _C.ModelConfig
    weights: dict[str, torch.Tensor]
    eos_token_ids: list[int]
    max_model_len: int  # the model's own context length
    # What to hand to fastpage.tokenizer to build the tokenizer (a directory, or a GGUF file).
    tokenizer_source: str
    # generation_config.json defaults (temperature, top_p, ...) where the model has them.
    generation_defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    chat_template: str | None = None


LOAD_FORMATS = ("auto", "dummy")


def load_model(model: str, dtype: str = "auto", device: str = "cpu", load_format: str = "auto",
               parallel: _C.ParallelConfig | None = None) -> LoadedModel:
    """Loads an HF model directory or a GGUF file, with weights in `dtype` on `device`; load_format
    "dummy" takes an HF directory's config.json and makes random weights (vLLM's dummy format). With a
    `parallel` config of world size > 1, only that rank's shard (model_loader/sharding.py)."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format must be one of {', '.join(LOAD_FORMATS)}; got {load_format!r}")
    if model.endswith(".gguf"):
        if load_format == "dummy":
            raise ValueError("load_format 'dummy' needs an HF model directory (config.json), not a GGUF file.")
        from fastpage.model_loader.gguf import load_gguf

        return load_gguf(model, dtype=dtype, device=device, parallel=parallel)
    from fastpage.model_loader.hf import load_hf

    return load_hf(model, dtype=dtype, device=device, load_format=load_format, parallel=parallel)


def read_model_config(model: str) -> tuple[_C.ModelConfig, int]:
    """The ModelConfig and context length of a model, without reading its weights."""
    if model.endswith(".gguf"):
        from fastpage.model_loader.gguf import read_gguf_config

        return read_gguf_config(model)
    from fastpage.model_loader.hf import read_hf_config

    return read_hf_config(model)


def resolve_dtype(requested: str, checkpoint_dtype: torch.dtype | None, device: str) -> torch.dtype:
    """vLLM's rule: "auto" takes the checkpoint's dtype (float32 checkpoints stay float32)."""
    names = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16, "half": torch.float16}
    if requested == "auto":
        return checkpoint_dtype or torch.float32
    if requested not in names:
        raise ValueError(f"dtype must be one of auto, {', '.join(names)}; got {requested!r}")
    return names[requested]
