"""The engine on a CUDA GPU against HF transformers on the same GPU, in bf16, with random weights in
the shapes of Qwen3-0.6B and Llama-3-8B (2-layer cuts): prompt logits through the model runner,
greedy generation through fastpage.LLM with chunked prefill and prefix caching, and the KV cache
sized by gpu_memory_utilization. Skipped without CUDA."""

import gc
import os
import random
import sys

import pytest
import torch

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "..", "bench", "device"))

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

NUM_LAYERS = 2
NUM_NEW_TOKENS = 64
SHARED_PREFIX = 48  # three 16-token blocks that later prompts find in the prefix cache


def free_cuda_memory():
    gc.collect()
    torch.cuda.empty_cache()


@pytest.fixture(scope="module", params=["qwen3-0.6b", "llama-3-8b"])
def checkpoint(request, tmp_path_factory):
    from model_shapes import make_checkpoint

    path = str(tmp_path_factory.mktemp(request.param))
    hf_bf16 = make_checkpoint(request.param, path, num_layers=NUM_LAYERS)
    from transformers import AutoModelForCausalLM

    # Loaded in the checkpoint's bf16 (every transformers version's default differs), then upcast.
    hf_fp32 = AutoModelForCausalLM.from_pretrained(path).float().cuda().eval()
    yield path, hf_bf16, hf_fp32
    del hf_bf16, hf_fp32
    free_cuda_memory()


def random_prompts(lengths, seed, prefix=()):
    rng = random.Random(seed)
    return [list(prefix) + [rng.randrange(3, 10000) for _ in range(n)] for n in lengths]


@torch.no_grad()
def hf_logits(model, token_ids):
    return model(torch.tensor([token_ids], device="cuda")).logits[0].float()


def test_prompt_logits_close_to_hf(checkpoint):
    """A mixed batch (1 to 333 tokens) in one plan: bf16 logits as close to the fp32 reference as
    HF's own bf16 forward is."""
    from test_model_parity import PlanBuilder

    from fastpage import _C
    from fastpage.model_loader.hf import load_hf

    path, hf_bf16, hf_fp32 = checkpoint
    loaded = load_hf(path, dtype="bfloat16", device="cuda")
    config = _C.EngineConfig()
    config.block_size = 16
    config.num_gpu_blocks = 64
    runner = _C.ModelRunner(loaded.model_config, config, loaded.weights, "cuda", torch.bfloat16)
    prompts = random_prompts([1, 7, 100, 333, 17], seed=1)
    plan, rows = PlanBuilder(block_size=16, first_block=3).plan(list(enumerate(prompts)))
    logits = runner.execute(plan, list(range(plan.num_tokens)))
    assert logits.is_cuda and logits.dtype == torch.float32
    for prompt, seq_rows in zip(prompts, rows):
        ours = logits[seq_rows.start:seq_rows.stop]
        reference = hf_logits(hf_fp32, prompt)
        hf_error = (hf_logits(hf_bf16, prompt) - reference).abs().max().item()
        our_error = (ours - reference).abs().max().item()
        relative = ((ours - reference).norm() / reference.norm()).item()
        print(f"{len(prompt)} tokens: max |ours - fp32| {our_error:.4f}, |hf bf16 - fp32| {hf_error:.4f}, "
              f"relative {relative:.2e}")
        assert relative < 2e-2 and our_error <= 2 * hf_error + 1e-2, (len(prompt), our_error, hf_error)
    del runner, loaded
    free_cuda_memory()


def test_fp8_kv_cache_prompt_logits_and_generation(checkpoint):
    """kv_cache_dtype="fp8": prompt logits through the model runner stay near the fp32 reference (e4m3
    keeps 3 mantissa bits, so the bound is looser than a bf16 cache's 2e-2); through fastpage.LLM the
    same gpu_memory_utilization holds about twice the blocks, and greedy decoding through CUDA graphs
    gives token logprobs near HF fp32's on the same tokens, with no block leaked."""
    from test_model_parity import PlanBuilder

    from fastpage import LLM, SamplingParams, _C
    from fastpage.model_loader.hf import load_hf

    path, _, hf_fp32 = checkpoint
    loaded = load_hf(path, dtype="bfloat16", device="cuda")
    config = _C.EngineConfig()
    config.block_size = 16
    config.num_gpu_blocks = 64
    config.kv_cache_dtype = _C.KVCacheDtype.Fp8E4M3
    runner = _C.ModelRunner(loaded.model_config, config, loaded.weights, "cuda", torch.bfloat16)
    prompts = random_prompts([1, 7, 100, 333, 17], seed=1)
    plan, rows = PlanBuilder(block_size=16, first_block=3).plan(list(enumerate(prompts)))
    logits = runner.execute(plan, list(range(plan.num_tokens)))
    for prompt, seq_rows in zip(prompts, rows):
        reference = hf_logits(hf_fp32, prompt)
        relative = ((logits[seq_rows.start:seq_rows.stop] - reference).norm() / reference.norm()).item()
        print(f"fp8 cache, {len(prompt)} tokens: relative error {relative:.2e}")
        assert relative < 0.1, (len(prompt), relative)
    del runner, loaded
    free_cuda_memory()

    blocks = {}
    for kv_cache_dtype in ("auto", "fp8"):
        llm = LLM(model=path, dtype="bfloat16", max_model_len=1024, gpu_memory_utilization=0.3,
                  kv_cache_dtype=kv_cache_dtype)
        blocks[kv_cache_dtype] = llm.llm_engine.get_stats()["num_device_blocks"]
        if kv_cache_dtype == "auto":
            del llm
            free_cuda_memory()
    print(f"blocks at gpu_memory_utilization 0.3: {blocks}")
    assert 1.9 < blocks["fp8"] / blocks["auto"] < 2.1, blocks
    prompts = random_prompts([30, 150, 5], seed=5)
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True, logprobs=0, detokenize=False)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    for prompt, output in zip(prompts, outputs):
        completion = output.outputs[0]
        ours = torch.tensor([pos[t].logprob for t, pos in zip(completion.token_ids, completion.logprobs)])
        theirs = torch.log_softmax(hf_logits(hf_fp32, prompt + completion.token_ids), dim=-1)
        theirs = torch.tensor([theirs[len(prompt) - 1 + i, t].item() for i, t in enumerate(completion.token_ids)])
        worst = (ours - theirs).abs().max().item()
        print(f"fp8 cache, prompt of {len(prompt)}: max |logprob - HF fp32| over 32 greedy tokens {worst:.4f}")
        assert worst < 1.0, worst
    stats = llm.llm_engine.get_stats()
    assert stats["num_free_device_blocks"] == stats["num_device_blocks"], stats
    del llm
    free_cuda_memory()


@torch.no_grad()
def hf_greedy(model, prompt, num_tokens):
    """Argmax decoding with HF's own KV cache; returns the tokens and each step's logits."""
    out = model(torch.tensor([prompt], device="cuda"), use_cache=True)
    tokens, step_logits = [], []
    for _ in range(num_tokens):
        step_logits.append(out.logits[0, -1].float())
        tokens.append(int(step_logits[-1].argmax()))
        out = model(torch.tensor([[tokens[-1]]], device="cuda"), past_key_values=out.past_key_values, use_cache=True)
    return tokens, step_logits


@pytest.mark.parametrize("enforce_eager", [False, True], ids=["cuda_graphs", "eager"])
def test_greedy_generation_matches_hf(checkpoint, enforce_eager):
    """Mixed-length prompts, half of them behind a shared prefix that is already cached, prefilled
    in chunks of at most 64 tokens, decodes through CUDA graphs (batch 6 padded to 8) or eagerly,
    with async scheduling (on by default on CUDA): the 64 greedy tokens equal HF's, or the first
    difference is a near-tie (the two tokens' HF logits differ by less than HF's own bf16 error on
    that row)."""
    from fastpage import LLM, SamplingParams

    path, hf_bf16, hf_fp32 = checkpoint
    prefix = random_prompts([SHARED_PREFIX], seed=2)[0]
    prompts = (random_prompts([1, 30, 150], seed=3, prefix=prefix) + random_prompts([5, 200, 77], seed=4))
    llm = LLM(model=path, dtype="bfloat16", max_model_len=1024, max_num_batched_tokens=64,
              enable_prefix_caching=True, gpu_memory_utilization=0.5, enforce_eager=enforce_eager)
    assert llm.llm_engine.engine.async_scheduling
    params = SamplingParams(temperature=0.0, max_tokens=NUM_NEW_TOKENS, ignore_eos=True, detokenize=False)
    llm.generate([{"prompt_token_ids": prefix + [5]}], SamplingParams(max_tokens=1, detokenize=False),
                 use_tqdm=False)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    stats = llm.llm_engine.get_stats()
    assert stats["prefix_cache_hits"] >= 3 * SHARED_PREFIX, stats  # the prefix blocks, for 3 prompts

    num_identical = 0
    for prompt, output in zip(prompts, outputs):
        ours = output.outputs[0].token_ids
        assert len(ours) == NUM_NEW_TOKENS
        theirs, step_logits = hf_greedy(hf_bf16, prompt, NUM_NEW_TOKENS)
        first_diff = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        if first_diff is None:
            num_identical += 1
            continue
        row = step_logits[first_diff]
        gap = (row[theirs[first_diff]] - row[ours[first_diff]]).item()
        fp32_row = hf_logits(hf_fp32, prompt + theirs[:first_diff])[-1]
        hf_noise = (row - fp32_row).abs().max().item()
        print(f"prompt of {len(prompt)}: first difference at token {first_diff}: HF gap {gap:.4f}, "
              f"HF bf16 error on that row {hf_noise:.4f}")
        assert gap <= 2 * hf_noise, (len(prompt), first_diff, gap, hf_noise)
    print(f"{num_identical}/{len(prompts)} prompts identical for {NUM_NEW_TOKENS} tokens")
    assert not llm.llm_engine.has_unfinished_requests()
    assert stats["num_free_device_blocks"] == stats["num_device_blocks"], stats
    del llm
    free_cuda_memory()


@pytest.mark.parametrize("enforce_eager", [False, True], ids=["cuda_graphs", "eager"])
def test_async_scheduling_gives_the_tokens_of_sync_scheduling(checkpoint, enforce_eager):
    """The same requests with async_scheduling off and on: greedy rows of different lengths (one
    token, a stop id), seeded sampling with penalties and n=2 (the device sampler, launched without
    waiting), logprobs (completed at once): identical tokens, finish reasons and logprobs, and
    every block free afterwards."""
    from fastpage import LLM, SamplingParams

    path, hf_bf16, _ = checkpoint
    prompts = random_prompts([1, 30, 150, 5, 200, 77, 12], seed=6)
    stop_id = hf_greedy(hf_bf16, prompts[1], 12)[0][10]
    greedy = dict(temperature=0.0, ignore_eos=True, detokenize=False)
    params = [SamplingParams(max_tokens=40, **greedy),
              SamplingParams(max_tokens=64, stop_token_ids=[stop_id], **greedy),
              SamplingParams(max_tokens=17, **greedy), SamplingParams(max_tokens=1, **greedy),
              SamplingParams(n=2, temperature=0.8, top_p=0.95, seed=3, repetition_penalty=1.1, max_tokens=33,
                             ignore_eos=True, detokenize=False),
              SamplingParams(temperature=0.7, top_k=50, seed=4, max_tokens=50, ignore_eos=True, detokenize=False),
              SamplingParams(max_tokens=9, logprobs=2, **greedy)]
    results = {}
    for async_scheduling in (False, True):
        llm = LLM(model=path, dtype="bfloat16", max_model_len=1024, max_num_batched_tokens=64,
                  gpu_memory_utilization=0.5, enforce_eager=enforce_eager, async_scheduling=async_scheduling)
        assert llm.llm_engine.engine.async_scheduling == async_scheduling
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        results[async_scheduling] = [
            [(c.token_ids, c.finish_reason, c.stop_reason,
              [{t: round(lp.logprob, 3) for t, lp in step.items()} for step in c.logprobs or []]) for c in o.outputs]
            for o in outputs]
        stats = llm.llm_engine.get_stats()
        assert stats["num_free_device_blocks"] == stats["num_device_blocks"], stats
        llm.llm_engine.engine.check_invariants()
        del llm
        free_cuda_memory()
    assert results[True] == results[False]
    assert [len(c[0]) for c in results[True][3]] == [1]


def test_kv_cache_sized_by_gpu_memory_utilization(checkpoint):
    from fastpage import LLM

    path, _, _ = checkpoint
    free_cuda_memory()
    utilization = 0.3
    _, total = torch.cuda.mem_get_info()
    llm = LLM(model=path, dtype="bfloat16", max_model_len=1024, gpu_memory_utilization=utilization)
    free_after, _ = torch.cuda.mem_get_info()
    stats = llm.llm_engine.get_stats()
    mc = llm.llm_engine.model_config
    kv_bytes = stats["num_device_blocks"] * 16 * 2 * mc.num_layers * mc.num_kv_heads * mc.head_dim * 2
    used = total - free_after
    leftover = utilization * total - used
    print(f"KV cache {kv_bytes / 2**30:.2f} GiB; in use after construction {used / 2**30:.2f} GiB "
          f"of a {utilization * total / 2**30:.2f} GiB budget")
    # The budget is taken up to the activation reserve (under 3 GiB for these shapes), never beyond.
    assert 0 <= leftover < 3 * 2**30, leftover / 2**30
    del llm
    free_cuda_memory()
