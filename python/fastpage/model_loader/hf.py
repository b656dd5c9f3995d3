"""HF model directory (config.json, safetensors or pytorch_model.bin) -> LoadedModel.

Maps each supported architecture's config onto _C.ModelConfig and its tensor names onto the
canonical names of cpp/include/fastpage/model_runner.h, fusing q/k/v into qkv_proj and gate/up into
gate_up_proj, and transposing GPT-2's Conv1D weights into [out_features, in_features].
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any

import torch

from fastpage import _C
from fastpage.model_loader import LoadedModel, resolve_dtype
from fastpage.model_loader.dummy_weights import dummy_weights
from fastpage.model_loader.sharding import Sharder

_LLAMA_LIKE = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
SUPPORTED_ARCHITECTURES = (*_LLAMA_LIKE, "GPT2LMHeadModel", "OPTForCausalLM")

# Defaults HF uses when config.json leaves tie_word_embeddings out.
_TIED_BY_DEFAULT = {"GPT2LMHeadModel": True, "OPTForCausalLM": True}

# generation_config.json keys that become sampling defaults (vLLM's names on the right).
_GENERATION_DEFAULTS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                        "min_p": "min_p", "repetition_penalty": "repetition_penalty",
                        "max_new_tokens": "max_tokens"}

_ACTIVATIONS = {"silu": _C.Activation.SiLU, "gelu_new": _C.Activation.GeluTanh,
                "gelu_pytorch_tanh": _C.Activation.GeluTanh, "gelu": _C.Activation.Gelu,
                "relu": _C.Activation.ReLU}


def load_hf(path: str | os.PathLike, dtype: str = "auto", device: str = "cpu",
            load_format: str = "auto", parallel: _C.ParallelConfig | None = None) -> LoadedModel:
    """Loads an HF model directory with weights in `dtype` ("auto" keeps the checkpoint's) on `device`.
    load_format "dummy" reads config.json only and makes seeded random weights (dummy_weights.py).
    With `parallel` (world size > 1), only this rank's shard (model_loader/sharding.py)."""
    path = os.fspath(path)
    model_config, max_model_len = read_hf_config(path)
    config = _read_json(os.path.join(path, "config.json"), required=True)
    mapper = {"GPT2LMHeadModel": _map_gpt2, "OPTForCausalLM": _map_opt}.get(model_config.architecture,
                                                                             _map_llama_like)
    torch_dtype = resolve_dtype(dtype, _checkpoint_dtype(config), device)
    sharder = Sharder(model_config, parallel) if parallel is not None and parallel.world_size > 1 else None
    if load_format == "dummy":
        weights = dict(dummy_weights(model_config, torch_dtype, device, shard=sharder))
    else:
        weights = _Renamer(_Checkpoint(path), model_config, torch_dtype, device, sharder).run(mapper)

    eos_token_ids, generation_defaults = _generation_config(path, config)
    return LoadedModel(model_config=model_config, weights=weights, eos_token_ids=eos_token_ids,
                       max_model_len=max_model_len, tokenizer_source=path,
                       generation_defaults=generation_defaults, chat_template=_chat_template(path))


def read_hf_config(path: str | os.PathLike) -> tuple[_C.ModelConfig, int]:
    """The ModelConfig and context length of an HF model directory, from config.json alone."""
    config = _read_json(os.path.join(os.fspath(path), "config.json"), required=True)
    architecture = _architecture(config)
    if architecture in _LLAMA_LIKE:
        return _llama_like_config(architecture, config)
    if architecture == "GPT2LMHeadModel":
        return _gpt2_config(config)
    return _opt_config(config)


# ----------------------------------------------------------------------------- config.json


def _read_json(file: str, required: bool = False) -> dict[str, Any]:
    if not os.path.exists(file):
        if required:
            raise ValueError(f"{file} not found: not an HF model directory")
        return {}
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def _architecture(config: dict[str, Any]) -> str:
    architectures = config.get("architectures") or []
    if len(architectures) != 1:
        raise ValueError(f"config.json must name exactly one architecture, got {architectures!r}")
    architecture = architectures[0]
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported architecture {architecture!r}; supported: "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    return architecture


def _checkpoint_dtype(config: dict[str, Any]) -> torch.dtype | None:
    name = config.get("dtype") or config.get("torch_dtype")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(name)


def _unsupported(architecture: str, option: str, value: Any) -> ValueError:
    return ValueError(f"{architecture}: {option}={value!r} is not supported")


def _tied(architecture: str, config: dict[str, Any]) -> bool:
    return bool(config.get("tie_word_embeddings", _TIED_BY_DEFAULT.get(architecture, False)))


def _activation(architecture: str, config: dict[str, Any], key: str) -> _C.Activation:
    name = config.get(key)
    if name not in _ACTIVATIONS:
        raise _unsupported(architecture, key, name)
    return _ACTIVATIONS[name]


def _apply_rope(architecture: str, config: dict[str, Any], mc: _C.ModelConfig) -> None:
    # transformers 5 writes rope_parameters (theta included); older files rope_theta + rope_scaling.
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if params and "rope_type" not in params and "type" not in params and "rope_theta" not in params:
        raise _unsupported(architecture, "rope_parameters", params)
    mc.rope_theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    partial = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise _unsupported(architecture, "partial_rotary_factor", partial)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return
    if rope_type not in ("linear", "llama3"):
        raise _unsupported(architecture, "rope_type", rope_type)
    needed = ["factor"]
    if rope_type == "llama3":
        needed += ["low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]
    missing = [key for key in needed if params.get(key) is None]
    if missing:
        raise ValueError(f"{architecture}: rope scaling {rope_type!r} needs {', '.join(missing)}")
    mc.rope_scaling_type = rope_type
    mc.rope_scaling_factor = float(params["factor"])
    if rope_type == "llama3":
        mc.rope_low_freq_factor = float(params["low_freq_factor"])
        mc.rope_high_freq_factor = float(params["high_freq_factor"])
        mc.rope_original_max_position = int(params["original_max_position_embeddings"])


def _llama_like_config(architecture: str, config: dict[str, Any]) -> tuple[_C.ModelConfig, int]:
    mc = _C.ModelConfig()
    mc.architecture = architecture
    mc.vocab_size = config["vocab_size"]
    mc.hidden_size = config["hidden_size"]
    mc.num_layers = config["num_hidden_layers"]
    mc.num_heads = config["num_attention_heads"]
    mc.num_kv_heads = config.get("num_key_value_heads") or mc.num_heads
    mc.head_dim = config.get("head_dim") or mc.hidden_size // mc.num_heads
    mc.intermediate_size = config["intermediate_size"]
    mc.max_position_embeddings = config["max_position_embeddings"]
    mc.norm_type = _C.NormType.RMSNorm
    mc.norm_eps = config.get("rms_norm_eps", 1e-6)
    mc.activation = _activation(architecture, config, "hidden_act")
    if mc.activation != _C.Activation.SiLU:
        raise _unsupported(architecture, "hidden_act", config.get("hidden_act"))
    mc.gated_mlp = True
    mc.position_type = _C.PositionType.Rotary
    _apply_rope(architecture, config, mc)
    attention_bias = bool(config.get("attention_bias", False))
    mc.qkv_bias = architecture == "Qwen2ForCausalLM" or attention_bias
    mc.o_bias = attention_bias
    if config.get("mlp_bias"):
        raise _unsupported(architecture, "mlp_bias", True)
    mc.qk_norm = architecture == "Qwen3ForCausalLM"
    mc.tie_word_embeddings = _tied(architecture, config)

    # No sliding-window attention: a windowed model runs exactly up to its window (what vLLM did
    # before it supported windows), so cap the context there.
    max_model_len = mc.max_position_embeddings
    window = config.get("sliding_window")
    uses_window = config.get("use_sliding_window", architecture == "MistralForCausalLM")
    if uses_window and window is not None and window < max_model_len:
        max_model_len = window
    return mc, max_model_len


def _gpt2_config(config: dict[str, Any]) -> tuple[_C.ModelConfig, int]:
    architecture = "GPT2LMHeadModel"
    for option, allowed in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                            ("add_cross_attention", False)):
        if config.get(option, allowed) != allowed:
            raise _unsupported(architecture, option, config[option])
    mc = _C.ModelConfig()
    mc.architecture = architecture
    mc.vocab_size = config["vocab_size"]
    mc.hidden_size = config["n_embd"]
    mc.num_layers = config["n_layer"]
    mc.num_heads = mc.num_kv_heads = config["n_head"]
    mc.head_dim = mc.hidden_size // mc.num_heads
    mc.intermediate_size = config.get("n_inner") or 4 * mc.hidden_size
    mc.max_position_embeddings = config["n_positions"]
    mc.norm_type = _C.NormType.LayerNorm
    mc.norm_eps = config.get("layer_norm_epsilon", 1e-5)
    mc.activation = _activation(architecture, config, "activation_function")
    mc.gated_mlp = False
    mc.position_type = _C.PositionType.Learned
    mc.qkv_bias = mc.o_bias = mc.mlp_bias = True
    mc.tie_word_embeddings = _tied(architecture, config)
    return mc, mc.max_position_embeddings


def _opt_config(config: dict[str, Any]) -> tuple[_C.ModelConfig, int]:
    architecture = "OPTForCausalLM"
    hidden = config["hidden_size"]
    # Post-norm OPT (opt-350m) and its projected embeddings are a different network.
    for option, allowed in (("do_layer_norm_before", True), ("word_embed_proj_dim", hidden),
                            ("layer_norm_elementwise_affine", True), ("_remove_final_layer_norm", False),
                            ("enable_bias", True)):
        if config.get(option, allowed) != allowed:
            raise _unsupported(architecture, option, config[option])
    mc = _C.ModelConfig()
    mc.architecture = architecture
    mc.vocab_size = config["vocab_size"]
    mc.hidden_size = hidden
    mc.num_layers = config["num_hidden_layers"]
    mc.num_heads = mc.num_kv_heads = config["num_attention_heads"]
    mc.head_dim = hidden // mc.num_heads
    mc.intermediate_size = config["ffn_dim"]
    mc.max_position_embeddings = config["max_position_embeddings"]
    mc.norm_type = _C.NormType.LayerNorm
    mc.norm_eps = 1e-5  # OPT's nn.LayerNorm default; the config has no field for it
    mc.activation = _activation(architecture, config, "activation_function")
    mc.gated_mlp = False
    mc.position_type = _C.PositionType.Learned
    mc.learned_position_offset = 2
    mc.qkv_bias = mc.o_bias = mc.mlp_bias = True
    mc.tie_word_embeddings = _tied(architecture, config)
    return mc, mc.max_position_embeddings


# ----------------------------------------------------------------------------- weights


class _Checkpoint:
    """The checkpoint's tensor names (safetensors, single or sharded, else pytorch_model.bin); a
    tensor is read from disk only when popped, so loading holds one full tensor at a time."""

    def __init__(self, path: str):
        from safetensors import safe_open

        self._readers: dict[str, Callable[[], torch.Tensor]] = {}
        files = _shard_files(path, "model.safetensors.index.json", "model.safetensors")
        if files is not None:
            for file in files:
                handle = safe_open(file, framework="pt", device="cpu")
                for name in handle.keys():
                    self._readers[name] = functools.partial(handle.get_tensor, name)
            return
        files = _shard_files(path, "pytorch_model.bin.index.json", "pytorch_model.bin")
        if files is None:
            raise ValueError(f"no model.safetensors or pytorch_model.bin in {path}")
        for file in files:
            # weights_only: a .bin is a pickle and must not be able to run code; mmap: read lazily.
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            for name, tensor in state.items():
                self._readers[name] = functools.partial(lambda t: t, tensor)

    def names(self) -> list[str]:
        return list(self._readers)

    def __contains__(self, name: str) -> bool:
        return name in self._readers

    def pop(self, name: str) -> torch.Tensor:
        return self._readers.pop(name)()

    def discard(self, name: str) -> None:
        self._readers.pop(name, None)

    def strip_prefix(self, prefix: str) -> None:
        """Drops `prefix` from every name (checkpoints exist with and without it)."""
        self._readers = {k.removeprefix(prefix): v for k, v in self._readers.items()}


def _shard_files(path: str, index_name: str, single_name: str) -> list[str] | None:
    index = os.path.join(path, index_name)
    if os.path.exists(index):
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        return [os.path.join(path, shard) for shard in shards]
    single = os.path.join(path, single_name)
    return [single] if os.path.exists(single) else None


class _Renamer:
    """Pops checkpoint tensors by HF name into the canonical map (converted, and cut to this rank's
    shard when there is a sharder); leftovers are an error."""

    # Buffers some checkpoints carry that are not weights.
    _IGNORED_SUFFIXES = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")

    def __init__(self, checkpoint: _Checkpoint, config: _C.ModelConfig, dtype: torch.dtype, device: str,
                 sharder: Sharder | None):
        self.checkpoint = checkpoint
        self.config = config
        self.dtype, self.device, self.sharder = dtype, device, sharder
        self.out: dict[str, torch.Tensor] = {}

    def strip_prefix(self, prefix: str) -> None:
        self.checkpoint.strip_prefix(prefix)

    def pop(self, name: str) -> torch.Tensor:
        if name not in self.checkpoint:
            raise ValueError(f"{self.config.architecture}: checkpoint has no tensor {name!r}")
        return self.checkpoint.pop(name)

    def put(self, name: str, tensor: torch.Tensor) -> None:
        """Stores canonical tensor `name` (this rank's part of it)."""
        if self.sharder is not None:
            tensor = self.sharder(name, tensor)
            if tensor is None:
                return
        self.out[name] = tensor.to(device=self.device, dtype=self.dtype).contiguous()

    def layers(self, source_prefix: str) -> range:
        """The layers to map; other ranks' layers (names starting with source_prefix.format(i)) are
        dropped unread."""
        begin, end = self.sharder.layer_range if self.sharder else (0, self.config.num_layers)
        skipped = tuple(source_prefix.format(i) for i in range(self.config.num_layers) if not begin <= i < end)
        if skipped:
            for name in self.checkpoint.names():
                if name.startswith(skipped):
                    self.checkpoint.discard(name)
        return range(begin, end)

    def move_with_bias(self, src: str, dst: str, transpose: bool = False) -> None:
        """src.weight/src.bias -> dst.weight/dst.bias (GPT-2's Conv1D weights are stored transposed)."""
        weight = self.pop(src + ".weight")
        self.put(dst + ".weight", weight.t() if transpose else weight)
        self.put(dst + ".bias", self.pop(src + ".bias"))

    def run(self, mapper: Callable[[_Renamer], None]) -> dict[str, torch.Tensor]:
        mapper(self)
        if self.config.tie_word_embeddings:
            self.checkpoint.discard("lm_head.weight")
        else:
            self.put("lm_head.weight", self.pop("lm_head.weight"))
        leftover = [k for k in self.checkpoint.names() if not k.endswith(self._IGNORED_SUFFIXES)]
        if leftover:
            raise ValueError(f"{self.config.architecture}: unexpected tensors in checkpoint: "
                             f"{', '.join(sorted(leftover)[:8])}")
        return self.out


def _map_llama_like(r: _Renamer) -> None:
    c = r.config
    r.put("embed_tokens.weight", r.pop("model.embed_tokens.weight"))
    r.put("final_norm.weight", r.pop("model.norm.weight"))
    for i in r.layers("model.layers.{}."):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        attn = src + "self_attn."
        r.put(dst + "input_norm.weight", r.pop(src + "input_layernorm.weight"))
        r.put(dst + "post_attn_norm.weight", r.pop(src + "post_attention_layernorm.weight"))
        r.put(dst + "qkv_proj.weight", torch.cat([r.pop(attn + f"{p}_proj.weight") for p in "qkv"]))
        if c.qkv_bias:
            r.put(dst + "qkv_proj.bias", torch.cat([r.pop(attn + f"{p}_proj.bias") for p in "qkv"]))
        r.put(dst + "o_proj.weight", r.pop(attn + "o_proj.weight"))
        if c.o_bias:
            r.put(dst + "o_proj.bias", r.pop(attn + "o_proj.bias"))
        if c.qk_norm:
            r.put(dst + "q_norm.weight", r.pop(attn + "q_norm.weight"))
            r.put(dst + "k_norm.weight", r.pop(attn + "k_norm.weight"))
        mlp = src + "mlp."
        r.put(dst + "gate_up_proj.weight", torch.cat([r.pop(mlp + "gate_proj.weight"),
                                                      r.pop(mlp + "up_proj.weight")]))
        r.put(dst + "down_proj.weight", r.pop(mlp + "down_proj.weight"))


def _map_gpt2(r: _Renamer) -> None:
    r.strip_prefix("transformer.")

    def linear(src: str, dst: str) -> None:
        r.move_with_bias(src, dst, transpose=True)  # Conv1D stores [in_features, out_features]

    norm = r.move_with_bias
    r.put("embed_tokens.weight", r.pop("wte.weight"))
    r.put("embed_positions.weight", r.pop("wpe.weight"))
    norm("ln_f", "final_norm")
    for i in r.layers("h.{}."):
        src, dst = f"h.{i}.", f"layers.{i}."
        norm(src + "ln_1", dst + "input_norm")
        linear(src + "attn.c_attn", dst + "qkv_proj")
        linear(src + "attn.c_proj", dst + "o_proj")
        norm(src + "ln_2", dst + "post_attn_norm")
        linear(src + "mlp.c_fc", dst + "up_proj")
        linear(src + "mlp.c_proj", dst + "down_proj")


def _map_opt(r: _Renamer) -> None:
    r.strip_prefix("model.")
    copy = r.move_with_bias
    r.put("embed_tokens.weight", r.pop("decoder.embed_tokens.weight"))
    r.put("embed_positions.weight", r.pop("decoder.embed_positions.weight"))
    copy("decoder.final_layer_norm", "final_norm")
    for i in r.layers("decoder.layers.{}."):
        src, dst = f"decoder.layers.{i}.", f"layers.{i}."
        attn = src + "self_attn."
        copy(src + "self_attn_layer_norm", dst + "input_norm")
        for part in ("weight", "bias"):
            r.put(dst + f"qkv_proj.{part}", torch.cat([r.pop(attn + f"{p}_proj.{part}") for p in "qkv"]))
        copy(attn + "out_proj", dst + "o_proj")
        copy(src + "final_layer_norm", dst + "post_attn_norm")
        copy(src + "fc1", dst + "up_proj")
        copy(src + "fc2", dst + "down_proj")


# ----------------------------------------------------------------------------- generation, chat


def _generation_config(path: str, config: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
    generation = _read_json(os.path.join(path, "generation_config.json"))
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    eos_ids = [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    defaults = {ours: generation[theirs] for theirs, ours in _GENERATION_DEFAULTS.items()
                if generation.get(theirs) is not None}
    return eos_ids, defaults


def _chat_template(path: str) -> str | None:
    jinja = os.path.join(path, "chat_template.jinja")
    if os.path.exists(jinja):
        with open(jinja, encoding="utf-8") as f:
            return f.read()
    template = _read_json(os.path.join(path, "tokenizer_config.json")).get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default")
    return template
