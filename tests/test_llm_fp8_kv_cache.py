"""kv_cache_dtype="fp8" end to end through fastpage.LLM on the tiny random llama (GQA 4/2, head_dim 16).

"auto" means the model dtype (float32 for these float32 checkpoints on the CPU, as vLLM's "auto"
takes the model's); "fp8" / "fp8_e4m3" store float8_e4m3fn with scale 1.0, so a fixed KV budget
holds 4x the blocks of a float32 cache and 2x those of a bfloat16 one. References: HF transformers
on the same weights, plain and with its attention reading K and V round-tripped through fp8.
"""

import argparse

import pytest
import torch

from fastpage import LLM, SamplingParams
from fastpage.engine_args import EngineArgs
from kernel_reference import to_fp8_e4m3
from test_llm import MAX_MODEL_LEN, assert_no_leaks, random_prompts, with_tokenizer
from tiny_models import tiny_models  # noqa: F401  (session fixture)

BUDGET = 4 << 20
GREEDY = dict(temperature=0.0, ignore_eos=True)


def make_llm(path, kv_cache_dtype, dtype="float32", **kwargs):
    return LLM(model=path, dtype=dtype, device="cpu", max_model_len=MAX_MODEL_LEN, kv_cache_dtype=kv_cache_dtype,
               **({"kv_cache_memory_bytes": BUDGET} | kwargs))


@pytest.fixture(scope="module")
def llama_dir(tiny_models):  # noqa: F811
    return with_tokenizer(tiny_models["llama"])


@pytest.fixture(scope="module")
def fp8_llm(llama_dir):
    return make_llm(llama_dir, "fp8")


def num_blocks(llm):
    return llm.llm_engine.get_stats()["num_device_blocks"]


@pytest.mark.parametrize("dtype, ratio", [("float32", 4), ("bfloat16", 2)])
def test_fp8_holds_more_blocks_in_the_same_budget(llama_dir, fp8_llm, dtype, ratio):
    auto = make_llm(llama_dir, "auto", dtype=dtype)
    fp8 = fp8_llm if dtype == "float32" else make_llm(llama_dir, "fp8", dtype=dtype)
    # 2 layers x K,V x 16 tokens x 2 kv heads x 16 dims elements a block, of 1 byte in fp8.
    assert num_blocks(fp8) == BUDGET // (2 * 2 * 16 * 2 * 16)
    assert num_blocks(fp8) == ratio * num_blocks(auto)
    assert num_blocks(make_llm(llama_dir, "fp8_e4m3", dtype=dtype)) == num_blocks(fp8)


def hf_model(path, fp8_kv):
    """HF on the same weights; with fp8_kv its attention reads K and V saturated and rounded to
    float8_e4m3fn, which is what the fp8 cache stores (scale 1.0)."""
    from transformers import AutoModelForCausalLM
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if not fp8_kv:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def fp8_kv_sdpa(module, query, key, value, attention_mask, **kwargs):
        return sdpa(module, query, to_fp8_e4m3(key).to(key.dtype), to_fp8_e4m3(value).to(value.dtype),
                    attention_mask, **kwargs)

    ALL_ATTENTION_FUNCTIONS.register("fp8_kv_sdpa", fp8_kv_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register("fp8_kv_sdpa", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="fp8_kv_sdpa").eval()


@torch.no_grad()
def hf_token_logprobs(model, prompt, completion):
    """HF's log-probabilities of the completion's tokens, teacher-forced on prompt + completion."""
    ids = prompt + completion
    logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return torch.tensor([logprobs[len(prompt) - 1 + i, token].item() for i, token in enumerate(completion)])


# Against HF with fp8-rounded K/V both sides attend to the same rounded values: what is left is
# float32 arithmetic order, plus the rare element whose float32 value lies within rounding noise of
# an e4m3 rounding boundary (the two sides then round it one step, 2^-3 relative, apart); measured
# <= 2e-4 nats. Against plain HF the rounding itself shows: e4m3 keeps 3 mantissa bits, a relative
# error up to 2^-4 (RMS ~3.6%) on every key and value, which moves scores of a few units by ~0.1 and
# these tiny-model logprobs (about -3 on average) by 0.05-0.08 nats on average, 0.23 at worst
# (a float32 cache vs the fp8-rounded HF shows the same spread). Bounds: ~2x over the measured.
TOL_FP8_REFERENCE = 5e-3
TOL_PLAIN_REFERENCE_MEAN = 0.15
TOL_PLAIN_REFERENCE_MAX = 0.5


def test_greedy_logprobs_close_to_hf(llama_dir, fp8_llm):
    prompts = random_prompts([3, 17, 40, 64], seed=21)
    outputs = fp8_llm.generate([{"prompt_token_ids": p} for p in prompts],
                               SamplingParams(max_tokens=24, logprobs=0, **GREEDY), use_tqdm=False)
    fp8_reference, plain_reference = hf_model(llama_dir, fp8_kv=True), hf_model(llama_dir, fp8_kv=False)
    fp8_errors, plain_errors = [], []
    for prompt, output in zip(prompts, outputs):
        completion = output.outputs[0]
        got = torch.tensor([position[token].logprob for token, position in zip(completion.token_ids,
                                                                               completion.logprobs)])
        fp8_errors.append((got - hf_token_logprobs(fp8_reference, prompt, completion.token_ids)).abs())
        plain_errors.append((got - hf_token_logprobs(plain_reference, prompt, completion.token_ids)).abs())
    fp8_errors, plain_errors = torch.cat(fp8_errors), torch.cat(plain_errors)
    assert fp8_errors.max() < TOL_FP8_REFERENCE, fp8_errors.max()
    assert plain_errors.mean() < TOL_PLAIN_REFERENCE_MEAN, plain_errors.mean()
    assert plain_errors.max() < TOL_PLAIN_REFERENCE_MAX, plain_errors.max()
    assert plain_errors.max() > 10 * TOL_FP8_REFERENCE  # the cache really is fp8: its rounding shows
    assert_no_leaks(fp8_llm)


@pytest.mark.parametrize("swap_space", [0, 0.002], ids=["recompute", "swap"])
def test_prefix_caching_and_preemption_with_fp8(llama_dir, fp8_llm, swap_space):
    """Shared prefixes through the prefix cache, and a cache too small for the batch (preemption by
    recompute, or by swapping fp8 blocks to the host): the tokens are those of the roomy fp8 engine
    (a preempted request produces what it would have without preemption), and no block leaks."""
    shared = random_prompts([48], seed=31)[0]
    prompts = [shared + tail for tail in random_prompts([5, 12, 20, 9], seed=32)]
    small = make_llm(llama_dir, "fp8", num_gpu_blocks_override=12, enable_prefix_caching=True, swap_space=swap_space)
    params = SamplingParams(max_tokens=40, **GREEDY)
    small.generate({"prompt_token_ids": shared + [7]}, SamplingParams(max_tokens=1), use_tqdm=False)  # caches it
    constrained = small.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    stats = small.llm_engine.get_stats()
    assert stats["num_preemptions"] > 0 and stats["prefix_cache_hits"] > 0, stats
    reference = fp8_llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    for got, want in zip(constrained, reference):
        assert got.outputs[0].token_ids == want.outputs[0].token_ids
    assert_no_leaks(small)
    assert_no_leaks(fp8_llm)


@pytest.mark.parametrize("value", ["fp8_e5m2", "int8", "float16", "FP8", ""])
def test_bad_kv_cache_dtype_raises_naming_the_field(value):
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        EngineArgs(kv_cache_dtype=value)


def test_cli_flag(capsys):
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser(prog="fastpage serve"), model_positional=True)
    assert EngineArgs.from_cli_args(parser.parse_args(["m", "--kv-cache-dtype", "fp8"])).kv_cache_dtype == "fp8"
    assert EngineArgs.from_cli_args(parser.parse_args(["m"])).kv_cache_dtype == "auto"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["m", "--kv-cache-dtype", "fp16"])
    assert exit_info.value.code == 2
    assert "--kv-cache-dtype: invalid choice: 'fp16'" in capsys.readouterr().err


def test_every_rank_shares_the_kv_cache_dtype():
    """A tensor/pipeline parallel worker started with another --kv-cache-dtype is refused at the
    rendezvous: the setting is among those rank 0 publishes."""
    settings = EngineArgs(kv_cache_dtype="fp8", device="cpu").settings_shared_by_all_ranks(max_model_len=64)
    assert settings["kv_cache_dtype"] == "fp8"
