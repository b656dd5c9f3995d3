"""Async scheduling (EngineConfig.async_scheduling) on the CPU: step N is launched before step N-1's
sampled ids are appended, and its input ids are gathered from N-1's id tensor. The reference is the
same engine without it: the same tokens, finish reasons and logprobs for every kind of request, and
HF transformers for greedy decoding. After every run the scheduler is idle with every block free."""

import argparse
import random

import pytest

from fastpage import LLM, SamplingParams, _C
from fastpage.engine_args import EngineArgs
from test_llm import MAX_MODEL_LEN, assert_no_leaks, hf_greedy, hf_model, with_tokenizer
from tiny_models import tiny_models  # noqa: F401  (session fixture)


def make_llm(path, async_scheduling, **kwargs):
    kwargs.setdefault("kv_cache_memory_bytes", 4 << 20)
    return LLM(model=path, dtype="float32", device="cpu", max_model_len=MAX_MODEL_LEN,
               async_scheduling=async_scheduling, **kwargs)


@pytest.fixture(scope="module")
def llama_dir(tiny_models):  # noqa: F811
    return with_tokenizer(tiny_models["llama"])


@pytest.fixture(scope="module")
def pair(llama_dir):
    """(sync, async) engines over the same weights."""
    return make_llm(llama_dir, False), make_llm(llama_dir, True)


@pytest.fixture(autouse=True)
def clean_after(request):
    yield
    if "pair" in request.fixturenames:
        for llm in request.getfixturevalue("pair"):
            assert_no_leaks(llm)


def random_prompts(lengths, seed=0):
    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(4, 256) for _ in range(n)]} for n in lengths]


def rounded(logprobs):
    return [None if step is None else {k: (round(v.logprob, 4), v.rank) for k, v in step.items()}
            for step in logprobs or []]


def summary(outputs):
    """Everything a caller sees of a request: its prompt logprobs and each sequence's completion."""
    return [(rounded(out.prompt_logprobs),
             [(c.index, c.token_ids, c.text, c.finish_reason, c.stop_reason, round(c.cumulative_logprob or 0.0, 4),
               rounded(c.logprobs)) for c in out.outputs]) for out in outputs]


def generate_both(pair, prompts, params):
    sync, asynchronous = pair
    assert not sync.llm_engine.engine.async_scheduling and asynchronous.llm_engine.engine.async_scheduling
    want = sync.generate(prompts, params, use_tqdm=False)
    got = asynchronous.generate(prompts, params, use_tqdm=False)
    assert summary(got) == summary(want)
    return got


def test_the_flag_defaults_off_on_cpu_and_refuses_several_ranks(llama_dir):
    assert not make_llm(llama_dir, None).llm_engine.engine.async_scheduling
    with pytest.raises(ValueError, match="async_scheduling"):
        EngineArgs(async_scheduling=True, tensor_parallel_size=2)
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    for flags, want in (([], None), (["--async-scheduling"], True), (["--no-async-scheduling"], False)):
        args = EngineArgs.from_cli_args(parser.parse_args(flags))
        assert args.async_scheduling is want and args.engine_config(64).async_scheduling is want
    config = _C.EngineConfig()
    config.async_scheduling = True
    config.parallel.tensor_parallel_size = 2
    with pytest.raises(ValueError, match="async_scheduling"):
        _C.EngineLoop(_C.ModelConfig(), config, {}, "cpu")


def test_greedy_batch_of_mixed_lengths_matches_transformers(pair, llama_dir):
    prompts = random_prompts([3, 17, 40, 9, 25], seed=1)
    lengths = [5, 30, 12, 1, 20]
    params = [SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=n) for n in lengths]
    got = generate_both(pair, prompts, params)
    hf = hf_model(llama_dir)
    for prompt, n, out in zip(prompts, lengths, got):
        assert out.outputs[0].token_ids == hf_greedy(hf, prompt["prompt_token_ids"], n)
        assert out.outputs[0].finish_reason == "length"


def test_seeded_sampling_with_penalties(pair):
    # The penalties read every output token so far: step N's row must see the token of step N-1.
    prompts = random_prompts([5, 30, 11, 19], seed=2)
    params = [SamplingParams(temperature=0.9, top_p=0.9, top_k=40, seed=100 + i, max_tokens=10 + 7 * i,
                             ignore_eos=True, repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.4)
              for i in range(len(prompts))]
    generate_both(pair, prompts, params)


def test_eos_stop_token_ids_and_min_tokens(pair, llama_dir):
    prompts = random_prompts([7, 12, 20, 4], seed=3)
    hf = hf_model(llama_dir)
    first = hf_greedy(hf, prompts[0]["prompt_token_ids"], 30)
    second = hf_greedy(hf, prompts[1]["prompt_token_ids"], 30)
    params = [
        SamplingParams(temperature=0.0, max_tokens=30, stop_token_ids=[first[5]]),
        SamplingParams(temperature=0.0, max_tokens=30, stop_token_ids=[second[2]], min_tokens=8),
        # logit_bias makes EOS the argmax at every step; min_tokens holds it off for 4 tokens.
        SamplingParams(temperature=0.0, logit_bias={2: 100.0}, min_tokens=4, max_tokens=30),
        SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True),
    ]
    got = generate_both(pair, prompts, params)
    assert got[0].outputs[0].token_ids == first[:first.index(first[5]) + 1]
    assert got[0].outputs[0].stop_reason == first[5]
    assert len(got[1].outputs[0].token_ids) >= 8 and got[1].outputs[0].token_ids[-1] == second[2]
    assert len(got[2].outputs[0].token_ids) == 5 and got[2].outputs[0].token_ids[-1] == 2
    assert [len(o.outputs[0].token_ids) for o in got][3] == 30


def test_stop_strings_end_the_sequence_through_the_python_layer(pair):
    sync, _ = pair
    prompt = "The quick brown"
    text = sync.generate(prompt, SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True),
                         use_tqdm=False)[0].outputs[0].text
    stop = next(text[i:i + 2] for i in range(8, len(text) - 2) if "\ufffd" not in text[i:i + 2])
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, stop=[stop])
    got = generate_both(pair, [prompt, "Another prompt"], params)
    assert got[0].outputs[0].finish_reason == "stop" and got[0].outputs[0].text == text[:text.index(stop)]


def test_max_tokens_one(pair):
    generate_both(pair, random_prompts([1, 6, 33], seed=4), SamplingParams(temperature=0.0, max_tokens=1))


def test_n_best_of_and_logprobs(pair):
    prompts = random_prompts([6, 14, 9, 11], seed=5)
    params = [
        SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=12, ignore_eos=True),  # overlapped
        SamplingParams(n=2, best_of=4, temperature=1.0, seed=8, max_tokens=9, ignore_eos=True),  # completes at once
        SamplingParams(temperature=0.0, logprobs=2, prompt_logprobs=1, max_tokens=7, ignore_eos=True),
        SamplingParams(temperature=0.0, prompt_logprobs=3, max_tokens=6, ignore_eos=True),  # overlapped
    ]
    got = generate_both(pair, prompts, params)
    assert [len(o.outputs) for o in got] == [3, 2, 1, 1]
    assert len(got[3].prompt_logprobs) == 11 and len(got[3].prompt_logprobs[1]) >= 3


@pytest.mark.parametrize("swap_space", [0, 0.001], ids=["recompute", "swap"])
def test_preemption(llama_dir, swap_space):
    prompts = random_prompts([40, 35, 50, 45], seed=6)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    small = [make_llm(llama_dir, flag, num_gpu_blocks_override=16, enable_prefix_caching=False,
                      swap_space=swap_space) for flag in (False, True)]
    reference = make_llm(llama_dir, True)
    # The async engine, stepped by hand to see its swaps.
    engine = small[1].llm_engine
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    finished, max_swapped = {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
        max_swapped = max(max_swapped, engine.get_stats()["num_swapped"])
        engine.engine.check_invariants()
    assert engine.get_stats()["num_preemptions"] > 0
    assert (max_swapped > 0) == (swap_space > 0)
    want = reference.generate(prompts, params, use_tqdm=False)
    assert summary([finished[str(i)] for i in range(len(prompts))]) == summary(want)
    assert summary(small[0].generate(prompts, params, use_tqdm=False)) == summary(want)
    for llm in small + [reference]:
        assert_no_leaks(llm)


def test_prefix_caching_with_shared_prompts(pair):
    shared = random_prompts([40], seed=7)[0]["prompt_token_ids"]
    tails = random_prompts([3, 9, 1, 20], seed=8)
    prompts = [{"prompt_token_ids": shared + t["prompt_token_ids"]} for t in tails]
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    before = pair[1].llm_engine.get_stats()["prefix_cache_hits"]
    generate_both(pair, prompts, params)
    generate_both(pair, prompts, params)  # the second wave hits the first's blocks, outputs included
    assert pair[1].llm_engine.get_stats()["prefix_cache_hits"] > before


def test_abort_mid_run_keeps_serving_the_others(pair):
    sync, asynchronous = pair
    prompts = random_prompts([10, 20, 15], seed=9)
    params = SamplingParams(temperature=0.0, max_tokens=25, ignore_eos=True)
    want = sync.generate(prompts, params, use_tqdm=False)
    engine = asynchronous.llm_engine
    for i, prompt in enumerate(prompts):
        engine.add_request(f"abort-{i}", prompt, params)
    finished = {}
    for step in range(200):
        if step == 5:
            engine.abort_request("abort-1")  # its token in flight is dropped
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
        if not engine.has_unfinished_requests():
            break
    assert sorted(finished) == ["abort-0", "abort-2"]
    assert summary([finished["abort-0"], finished["abort-2"]]) == summary([want[0], want[2]])


def test_outputs_come_one_call_later(pair):
    """Call N returns step N-1's token: the first call (the prefill) returns nothing."""
    engine = pair[1].llm_engine
    engine.add_request("late", random_prompts([8], seed=10)[0], SamplingParams(temperature=0.0, max_tokens=3))
    counts = []
    while engine.has_unfinished_requests():
        counts.append([len(o.outputs[0].token_ids) for o in engine.step()])
    assert counts == [[], [1], [2], [3]]
