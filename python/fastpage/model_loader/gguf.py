"""GGUF files (llama.cpp's format): weights dequantized to a torch dtype, config and tokenizer from metadata.

Supported architectures: llama (Llama, Mistral, SmolLM), qwen2, qwen3. Weights are dequantized at
load (keeping them quantized is later work).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from gguf import GGMLQuantizationType

from fastpage import _C
from fastpage.model_loader import LoadedModel, resolve_dtype
from fastpage.model_loader.gguf_file import GGUFFile
from fastpage.model_loader.sharding import Sharder

# GGUF architecture -> (HF architecture name, whether Q/K rows are stored in llama.cpp's rotary order).
# llama.cpp's converter permutes Q/K only for the architectures it runs with "normal" (interleaved)
# rope; the Qwen files keep HF's rotate-half layout.
_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", True),
    "qwen2": ("Qwen2ForCausalLM", False),
    "qwen3": ("Qwen3ForCausalLM", False),
}

# Per-layer GGUF tensor names (after "blk.N.") -> canonical names (after "layers.N."), unfused ones.
_LAYER_NAMES = {
    "attn_norm.weight": "input_norm.weight",
    "attn_output.weight": "o_proj.weight",
    "ffn_norm.weight": "post_attn_norm.weight",
    "ffn_down.weight": "down_proj.weight",
    "attn_q_norm.weight": "q_norm.weight",
    "attn_k_norm.weight": "k_norm.weight",
}
# Recommended sampling settings some files carry (llama.cpp's general.sampling.*) -> SamplingParams names.
_SAMPLING_DEFAULTS = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_p": "top_p",
    "general.sampling.top_k": "top_k",
    "general.sampling.min_p": "min_p",
    "general.sampling.penalty_repeat": "repetition_penalty",
}
_FLOAT_TYPES = {
    GGMLQuantizationType.F32: torch.float32,
    GGMLQuantizationType.F16: torch.float16,
    GGMLQuantizationType.BF16: torch.bfloat16,
}


def gguf_architecture(gguf: GGUFFile) -> tuple[str, str, bool]:
    """(GGUF name, HF name, permuted Q/K), or ValueError naming an unsupported architecture."""
    arch = gguf.require("general.architecture")
    if arch not in _ARCHITECTURES:
        raise ValueError(
            f"{gguf.path}: GGUF architecture {arch!r} is not supported (supported: {', '.join(_ARCHITECTURES)})")
    return (arch, *_ARCHITECTURES[arch])


def gguf_model_config(gguf: GGUFFile) -> _C.ModelConfig:
    """The ModelConfig described by the metadata (`<arch>.*` keys and the tokenizer's vocabulary)."""
    arch, hf_name, _ = gguf_architecture(gguf)

    def key(name: str, default=None):
        value = gguf.get(f"{arch}.{name}", default)
        if value is None:
            raise ValueError(f"{gguf.path}: GGUF metadata has no {arch}.{name!r}")
        return value

    config = _C.ModelConfig()
    config.architecture = hf_name
    config.num_layers = int(key("block_count"))
    config.hidden_size = int(key("embedding_length"))
    config.intermediate_size = int(key("feed_forward_length"))
    config.num_heads = int(key("attention.head_count"))
    config.num_kv_heads = int(key("attention.head_count_kv", config.num_heads))
    config.head_dim = int(key("attention.key_length", config.hidden_size // config.num_heads))
    rotary_dim = int(key("rope.dimension_count", config.head_dim))
    if rotary_dim != config.head_dim:
        raise ValueError(f"{gguf.path}: partial rotary ({arch}.rope.dimension_count={rotary_dim} < head dim "
                         f"{config.head_dim}) is not supported")
    config.rope_theta = float(key("rope.freq_base", 10000.0))
    config.norm_eps = float(key("attention.layer_norm_rms_epsilon"))
    config.max_position_embeddings = int(key("context_length"))
    scaling = gguf.get(f"{arch}.rope.scaling.type", "none")
    if scaling == "linear":
        config.rope_scaling_type = "linear"
        config.rope_scaling_factor = float(key("rope.scaling.factor"))
    elif scaling != "none":
        raise ValueError(f"{gguf.path}: rope scaling {scaling!r} is not supported")
    if "rope_freqs.weight" in gguf.tensors:  # llama3 scaling, baked into a frequency-factor tensor
        raise ValueError(f"{gguf.path}: rope frequency factors (rope_freqs.weight, llama3 scaling) are not supported")
    # The embedding's rows are the model's vocabulary (llama.cpp pads the token list to match them).
    if "token_embd.weight" not in gguf.tensors:
        raise ValueError(f"{gguf.path}: GGUF file has no token_embd.weight tensor")
    embed_rows, embed_width = gguf.tensors["token_embd.weight"].shape
    num_tokens = len(gguf.get("tokenizer.ggml.tokens") or ())
    if embed_width != config.hidden_size or num_tokens > embed_rows:
        raise ValueError(f"{gguf.path}: token_embd.weight is [{embed_rows}, {embed_width}], which does not fit "
                         f"{arch}.embedding_length={config.hidden_size} and {num_tokens} tokenizer tokens")
    config.vocab_size = embed_rows
    config.norm_type = _C.NormType.RMSNorm
    config.activation = _C.Activation.SiLU
    config.gated_mlp = True
    config.position_type = _C.PositionType.Rotary
    config.qkv_bias = "blk.0.attn_q.bias" in gguf.tensors
    config.o_bias = "blk.0.attn_output.bias" in gguf.tensors
    config.qk_norm = "blk.0.attn_q_norm.weight" in gguf.tensors
    config.tie_word_embeddings = "output.weight" not in gguf.tensors
    return config


def _unpermute_rotary_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's Q/K row order so HF's rotate-half rotary applies.

    Per head, llama.cpp interleaves the two halves of the rotary dimension (rows 0, d/2, 1, d/2+1, ...);
    reading each head as [d/2, 2] and transposing to [2, d/2] restores [first half, second half].
    """
    rows = weight.shape[0]
    head_dim = rows // num_heads
    return weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _checkpoint_dtype(gguf: GGUFFile) -> torch.dtype | None:
    """The float type of the file's matrices, or None when they are quantized (then "auto" means float32)."""
    matrix_types = {info.qtype for info in gguf.tensors.values() if len(info.shape) == 2}
    if not matrix_types <= _FLOAT_TYPES.keys():
        return None
    for qtype in (GGMLQuantizationType.BF16, GGMLQuantizationType.F16, GGMLQuantizationType.F32):
        if qtype in matrix_types:
            return _FLOAT_TYPES[qtype]
    return None


def _gguf_weights(gguf: GGUFFile, config: _C.ModelConfig, permuted_qk: bool, dtype: torch.dtype,
                  device: str, sharder: Sharder | None) -> dict[str, torch.Tensor]:
    """Canonical weights (cpp/include/fastpage/model_runner.h): q/k/v and gate/up fused; with a
    sharder, only this rank's part of each, read one tensor at a time.

    Fusing and un-permuting happen in numpy (single-threaded): torch's intra-op threads gain nothing
    on these copies and stall badly on a busy machine.
    """
    weights: dict[str, torch.Tensor] = {}
    layer_shapes = _layer_shapes(config)

    def put(name: str, *names: str, permute_heads: tuple[int, ...] = ()) -> None:
        """Canonical `name` := the GGUF tensors `names` concatenated along rows (the first
        len(permute_heads) un-permuted), checked against the metadata, then cut to this rank."""
        if sharder is not None and not sharder.keeps(name):
            return
        parts = [gguf.load_array(n) for n in names]
        for i, num_heads in enumerate(permute_heads):
            parts[i] = _unpermute_rotary_rows(parts[i], num_heads)
        array = parts[0] if len(parts) == 1 else np.concatenate(parts)
        tensor = torch.from_numpy(array).to(dtype)
        layer_part = name.split(".", 2)[-1]
        if name.startswith("layers.") and layer_part in layer_shapes and tuple(tensor.shape) != layer_shapes[layer_part]:
            raise ValueError(f"{gguf.path}: {name} is {list(tensor.shape)}, but the metadata implies "
                             f"{list(layer_shapes[layer_part])}")
        if sharder is not None:
            tensor = sharder(name, tensor)
        weights[name] = tensor.to(device)

    put("embed_tokens.weight", "token_embd.weight")
    put("final_norm.weight", "output_norm.weight")
    if not config.tie_word_embeddings:
        put("lm_head.weight", "output.weight")
    qk_heads = (config.num_heads, config.num_kv_heads) if permuted_qk else ()
    for i in range(*(sharder.layer_range if sharder else (0, config.num_layers))):
        src, dst = f"blk.{i}.", f"layers.{i}."
        put(dst + "qkv_proj.weight", *(src + f"attn_{part}.weight" for part in "qkv"), permute_heads=qk_heads)
        if config.qkv_bias:
            put(dst + "qkv_proj.bias", *(src + f"attn_{part}.bias" for part in "qkv"))
        if config.o_bias:
            put(dst + "o_proj.bias", src + "attn_output.bias")
        put(dst + "gate_up_proj.weight", src + "ffn_gate.weight", src + "ffn_up.weight")
        for gguf_name, name in _LAYER_NAMES.items():
            if src + gguf_name in gguf.tensors:
                put(dst + name, src + gguf_name)
    return weights


def _layer_shapes(config: _C.ModelConfig) -> dict[str, tuple[int, int]]:
    """Full shapes the metadata implies for the layer matrices: a file whose matrices disagree with
    its own metadata gets a ValueError, not a crash in the runner."""
    q_rows, kv_rows = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    return {"qkv_proj.weight": (q_rows + 2 * kv_rows, config.hidden_size),
            "o_proj.weight": (config.hidden_size, q_rows),
            "gate_up_proj.weight": (2 * config.intermediate_size, config.hidden_size),
            "down_proj.weight": (config.hidden_size, config.intermediate_size)}


def read_gguf_config(path: str) -> tuple[_C.ModelConfig, int]:
    """The ModelConfig and context length from a GGUF file's metadata."""
    if not os.path.isfile(path):
        raise ValueError(f"GGUF file not found: {path}")
    config = gguf_model_config(GGUFFile(path))
    return config, config.max_position_embeddings


def load_gguf(path: str, dtype: str = "auto", device: str = "cpu",
              parallel: _C.ParallelConfig | None = None) -> LoadedModel:
    """Loads a GGUF file: weights dequantized to `dtype` on `device` (this rank's shard with a
    `parallel` config of world size > 1), config and EOS from the metadata."""
    if not os.path.isfile(path):
        raise ValueError(f"GGUF file not found: {path}")
    gguf = GGUFFile(path)
    _, _, permuted_qk = gguf_architecture(gguf)
    config = gguf_model_config(gguf)
    torch_dtype = resolve_dtype(dtype, _checkpoint_dtype(gguf), device)
    sharder = Sharder(config, parallel) if parallel is not None and parallel.world_size > 1 else None
    weights = _gguf_weights(gguf, config, permuted_qk, torch_dtype, device, sharder)
    eos = gguf.get("tokenizer.ggml.eos_token_id")
    return LoadedModel(
        model_config=config,
        weights=weights,
        eos_token_ids=[int(eos)] if eos is not None else [],
        max_model_len=config.max_position_embeddings,
        tokenizer_source=path,
        generation_defaults={name: gguf.get(key) for key, name in _SAMPLING_DEFAULTS.items()
                             if gguf.get(key) is not None},
        chat_template=gguf.get("tokenizer.chat_template"),
    )


# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4
# Pre-tokenizer splits for byte-level vocabularies whose merges were learned on a split other than
# GPT-2's (tokenizer.ggml.pre names them). Unlisted ones ("smollm", "gpt2", ...) use GPT-2's.
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_TOKENIZER_SPLITS = {"qwen2": _QWEN2_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT}


def _byte_level_backend(gguf: GGUFFile):
    """A `tokenizers` byte-level BPE built straight from the file's vocabulary and merges."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    tokens = gguf.require("tokenizer.ggml.tokens")
    merges = [tuple(merge.split(" ", 1)) for merge in gguf.require("tokenizer.ggml.merges")]
    backend = Tokenizer(models.BPE(vocab={token: i for i, token in enumerate(tokens)}, merges=merges,
                                   fuse_unk=False, byte_fallback=False))
    split = _PRE_TOKENIZER_SPLITS.get(gguf.get("tokenizer.ggml.pre"))
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>...) are special; user-defined ones (<think>...) are matched whole
    # in the text but kept when decoding, as llama.cpp does.
    token_types = gguf.get("tokenizer.ggml.token_type") or []
    backend.add_special_tokens([AddedToken(tokens[i], normalized=False, special=True)
                                for i, kind in enumerate(token_types) if kind == _TOKEN_CONTROL])
    backend.add_tokens([AddedToken(tokens[i], normalized=False, special=False)
                        for i, kind in enumerate(token_types) if kind == _TOKEN_USER_DEFINED])
    return backend


def load_gguf_tokenizer(path: str):
    """The tokenizer a GGUF file describes, as a transformers fast tokenizer.

    Byte-level BPE vocabularies (tokenizer.ggml.model "gpt2": SmolLM, Qwen, Llama 3) are built here
    directly with `tokenizers`, which takes a fraction of a second; other kinds (sentencepiece) go
    through transformers' GGUF conversion. Special tokens, add_bos_token and the chat template come
    from the metadata.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    gguf = GGUFFile(path)
    if gguf.get("tokenizer.ggml.model") != "gpt2":
        return AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                             gguf_file=os.path.basename(path))
    tokens = gguf.require("tokenizer.ggml.tokens")

    def token(key: str) -> str | None:
        token_id = gguf.get(f"tokenizer.ggml.{key}")
        return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None

    return PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_backend(gguf),
        bos_token=token("bos_token_id"), eos_token=token("eos_token_id"),
        unk_token=token("unknown_token_id"), pad_token=token("padding_token_id"),
        chat_template=gguf.get("tokenizer.chat_template"),
        model_max_length=gguf.get(f"{gguf.get('general.architecture')}.context_length", int(1e30)),
        clean_up_tokenization_spaces=False,
        add_bos_token=bool(gguf.get("tokenizer.ggml.add_bos_token", False)),
        add_eos_token=bool(gguf.get("tokenizer.ggml.add_eos_token", False)),
    )
