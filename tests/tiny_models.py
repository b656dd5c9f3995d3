"""Tiny random HF models of every supported architecture, saved with save_pretrained.

Each builder makes a 2-layer, hidden-64 model with a vocabulary of 256 and writes it to a directory.
Together they cover GQA, tied and untied lm_heads, Qwen2's qkv bias, Qwen3's q/k norm, llama3 rope
scaling, and GPT-2's / OPT's learned positions, LayerNorm, biases and GELU / ReLU.

Use from a test module:
    from tiny_models import tiny_models  # the session fixture
    def test_x(tiny_models):
        path = tiny_models["llama"]       # built once per session, on first use
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

VOCAB = 256
HIDDEN = 64
LAYERS = 2
EOS = 2


def _save(model, path: str, eos_token_id: int | list[int] = EOS) -> str:
    # Random init at HF's std of 0.02 gives near-uniform logits; wider weights make greedy choices
    # clear-cut, so argmax comparisons are not decided by rounding.
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norm weights around 1, biases around 0
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.1)
            else:
                p.normal_(0.0, 0.15)
    model.generation_config.eos_token_id = eos_token_id
    model.save_pretrained(path)
    return path


def llama(path: str) -> str:
    """Llama 3 style: GQA 4/2, llama3 rope scaling, untied lm_head, eos list in generation_config."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=EOS)
    return _save(LlamaForCausalLM(config), path, eos_token_id=[EOS, 3])


def mistral(path: str) -> str:
    """Mistral: GQA 8/2 (head_dim 8), tied lm_head."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=LAYERS,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256, sliding_window=None,
        rope_theta=1000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=EOS)
    return _save(MistralForCausalLM(config), path)


def qwen2(path: str) -> str:
    """Qwen2: qkv bias, GQA 4/1 (multi-query), tied lm_head."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
        rope_theta=1000000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=EOS)
    return _save(Qwen2ForCausalLM(config), path)


def qwen3(path: str) -> str:
    """Qwen3: per-head q/k RMSNorm, head_dim 32 != hidden / heads, GQA 4/2, untied lm_head."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=EOS)
    return _save(Qwen3ForCausalLM(config), path)


def gpt2(path: str) -> str:
    """GPT-2: learned positions, LayerNorm, gelu_new, Conv1D weights, tied lm_head."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=256,
                        bos_token_id=1, eos_token_id=EOS)
    return _save(GPT2LMHeadModel(config), path)


def opt(path: str) -> str:
    """OPT: learned positions offset by 2, LayerNorm, ReLU, biases, tied lm_head."""
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                       num_attention_heads=4, ffn_dim=128, max_position_embeddings=256,
                       word_embed_proj_dim=HIDDEN, bos_token_id=1, eos_token_id=EOS, pad_token_id=0)
    return _save(OPTForCausalLM(config), path)


BUILDERS: dict[str, Callable[[str], str]] = {
    "llama": llama, "mistral": mistral, "qwen2": qwen2, "qwen3": qwen3, "gpt2": gpt2, "opt": opt,
}


class TinyModelZoo:
    """name -> model directory, each built on first use under `root`."""

    def __init__(self, root: str):
        self.root = root
        self._paths: dict[str, str] = {}

    def __getitem__(self, name: str) -> str:
        if name not in self._paths:
            self._paths[name] = BUILDERS[name](os.path.join(self.root, name))
        return self._paths[name]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModelZoo:
    return TinyModelZoo(str(tmp_path_factory.mktemp("tiny_models")))
