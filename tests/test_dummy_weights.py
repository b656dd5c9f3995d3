"""load_format="dummy": seeded random weights from config.json alone, and the HF reference filled
with the same numbers through hf_state_dict_tensor (what the GPU scripts use for big shapes)."""

from __future__ import annotations

import pytest
import torch
from test_llm import assert_no_leaks, hf_logprobs, with_tokenizer
from tiny_models import tiny_models  # noqa: F401  (fixture)

from fastpage import LLM, SamplingParams
from fastpage.model_loader.dummy_weights import hf_state_dict_tensor
from fastpage.model_loader.hf import load_hf


def hf_dummy_model(path: str):
    """The HF model of `path` with every parameter replaced by the dummy weight of the same name."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    config = load_hf(path, load_format="dummy").model_config
    with torch.no_grad():
        for name, param in model.state_dict().items():
            param.copy_(hf_state_dict_tensor(config, name, torch.float32, "cpu"))
    return model


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_dummy_weights_match_the_filled_hf_model(tiny_models, arch):  # noqa: F811
    path = with_tokenizer(tiny_models[arch])
    reference = hf_dummy_model(path)
    llm = LLM(model=path, load_format="dummy", dtype="float32", device="cpu", max_model_len=128)
    prompts = [[5, 17, 42, 7, 99], [3] * 11, list(range(20, 40))]
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, logprobs=5)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    for prompt, output in zip(prompts, outputs):
        # At init std 0.02 the logits are close together: each greedy token must be the reference's
        # argmax up to rounding (teacher-forced on our tokens).
        tokens = output.outputs[0].token_ids
        logprobs = hf_logprobs(reference, prompt + tokens)[len(prompt) - 1:-1]
        chosen = logprobs[torch.arange(len(tokens)), torch.tensor(tokens)]
        assert len(tokens) == 16
        torch.testing.assert_close(chosen, logprobs.max(dim=-1).values, atol=1e-5, rtol=0)
        # Tied small-init models echo their input whatever the weights: the top-5 logprobs pin them.
        for step, top in enumerate(output.outputs[0].logprobs):
            for token, entry in top.items():
                assert entry.logprob == pytest.approx(float(logprobs[step, token]), abs=1e-4)
    assert_no_leaks(llm)
    # Nothing was read from the checkpoint: its embedding differs from the dummy one.
    saved = load_hf(path).weights["embed_tokens.weight"]
    assert not torch.equal(saved, reference.get_input_embeddings().weight)


def test_dummy_weights_are_a_function_of_seed_and_name(tiny_models):  # noqa: F811
    path = tiny_models["llama"]
    first = load_hf(path, load_format="dummy").weights
    second = load_hf(path, load_format="dummy").weights
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["layers.0.qkv_proj.weight"], first["layers.1.qkv_proj.weight"])
    assert torch.equal(first["layers.0.input_norm.weight"], torch.ones(64))


def test_unknown_load_format_is_rejected(tiny_models):  # noqa: F811
    with pytest.raises(ValueError, match="load_format"):
        LLM(model=tiny_models["llama"], load_format="safetensorz", device="cpu")


def test_a_shard_is_made_without_the_whole_weight():
    from fastpage.model_loader.dummy_weights import INIT_STD, dummy_tensor

    shape = (96, 40)
    full = dummy_tensor("layers.3.qkv_proj.weight", shape, torch.float32, "cpu")

    def rows_and_columns(name: str, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t[8:16, 5:30], t[64:72, 5:30]])  # two row ranges of a column slice

    shard = dummy_tensor("layers.3.qkv_proj.weight", shape, torch.float32, "cpu", shard=rows_and_columns)
    assert torch.equal(shard, rows_and_columns("", full))
    assert dummy_tensor("lm_head.weight", shape, torch.float32, "cpu", shard=lambda n, t: None) is None
    # Uniform with the init std; neighbouring elements and rows uncorrelated.
    big = dummy_tensor("embed_tokens.weight", (512, 512), torch.float32, "cpu")
    assert abs(big.mean()) < 1e-3 and abs(big.std() - INIT_STD) < 1e-3
    assert abs(torch.corrcoef(torch.stack([big[:, :-1].flatten(), big[:, 1:].flatten()]))[0, 1]) < 0.02
    assert abs(torch.corrcoef(torch.stack([big[:-1].flatten(), big[1:].flatten()]))[0, 1]) < 0.02
