"""Random-weight HF checkpoints in the shapes of real models (nothing can be downloaded on the GPU
machine): built with transformers from a config on the GPU, saved with save_pretrained in bf16,
with a small word-level tokenizer so fastpage.LLM can load the directory. Token-id prompts and
detokenize=False keep the tokenizer out of the way."""

from __future__ import annotations

import os

import torch

SHAPES = {
    "qwen3-0.6b": dict(
        architecture="Qwen3ForCausalLM", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "llama-3-8b": dict(
        architecture="LlamaForCausalLM", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "llama-3-70b": dict(
        architecture="LlamaForCausalLM", vocab_size=128256, hidden_size=8192, intermediate_size=28672,
        num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
}


def hf_config(shape: str, num_layers: int | None = None):
    import transformers

    fields = dict(SHAPES[shape])
    architecture = fields.pop("architecture")
    if num_layers is not None:
        fields["num_hidden_layers"] = num_layers
    config_class = getattr(transformers, architecture.replace("ForCausalLM", "Config"))
    config = config_class(**fields, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config.architectures = [architecture]
    return config


def write_config_dir(shape: str, path: str, num_layers: int | None = None) -> str:
    """config.json and the small tokenizer only: for load_format="dummy", where every rank makes its
    own shard of the weights (no checkpoint of a 70B model is written or read)."""
    config = hf_config(shape, num_layers)
    config.dtype = torch.bfloat16
    os.makedirs(path, exist_ok=True)
    config.save_pretrained(path)
    save_tokenizer(path)
    return path


def make_checkpoint(shape: str, path: str, num_layers: int | None = None, seed: int = 0):
    """Writes a random bf16 checkpoint of `shape` (optionally cut to num_layers) to `path` and returns
    the HF model, still on the GPU, for reference runs."""
    import transformers

    config = hf_config(shape, num_layers)
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16 directly: no fp32 copy of 8B weights
    try:
        with torch.device("cuda"):
            model = getattr(transformers, config.architectures[0])(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    model.generation_config.eos_token_id = None  # benchmarks and tests ignore EOS
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    save_tokenizer(path)
    return model


def save_tokenizer(path: str, vocab_size: int = 256) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(path)


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())
