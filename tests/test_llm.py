"""End to end through fastpage.LLM on tiny random models (tests/tiny_models.py) with a tiny
byte-level BPE tokenizer saved next to them; HF transformers on the same weights is the reference.
After every test, no KV block is left in use."""

import dataclasses
import os
import random

import pytest
import torch

from fastpage import LLM, BeamSearchParams, SamplingParams
from fastpage.sampling_params import RequestOutputKind
from tiny_models import tiny_models  # noqa: F401  (session fixture)
from tiny_tokenizer import byte_level_bpe

MAX_MODEL_LEN = 256
EOS_IDS = {2, 3}  # the tiny llama's generation_config eos list


def with_tokenizer(path: str) -> str:
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        byte_level_bpe(256, all_bytes=False).save_pretrained(path)
    return path


def make_llm(path: str, **kwargs) -> LLM:
    return LLM(model=path, dtype="float32", device="cpu", max_model_len=MAX_MODEL_LEN,
               kv_cache_memory_bytes=4 << 20, **kwargs)


def hf_model(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@torch.no_grad()
def hf_logprobs(model, token_ids: list[int]) -> torch.Tensor:
    """log_softmax of the next-token logits after every prefix: [len(token_ids), vocab]."""
    return torch.log_softmax(model(torch.tensor([token_ids])).logits[0].float(), dim=-1)


@torch.no_grad()
def hf_greedy(model, prompt_ids: list[int], num_tokens: int) -> list[int]:
    """Argmax decoding with transformers' own KV cache, EOS ignored."""
    out = model(torch.tensor([prompt_ids]), use_cache=True)
    tokens = []
    for _ in range(num_tokens):
        tokens.append(int(out.logits[0, -1].argmax()))
        out = model(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens


def assert_no_leaks(llm: LLM) -> None:
    """Idle in Python and in C++, every block free, the scheduler's invariants hold."""
    engine = llm.llm_engine
    stats = engine.get_stats()
    assert not engine.has_unfinished_requests()
    assert not engine.engine.has_unfinished()
    engine.engine.check_invariants()
    assert stats["num_free_device_blocks"] == stats["num_device_blocks"], stats


@pytest.fixture(scope="module")
def llama_dir(tiny_models):  # noqa: F811
    return with_tokenizer(tiny_models["llama"])


@pytest.fixture(scope="module")
def llm(llama_dir):
    return make_llm(llama_dir)


@pytest.fixture(scope="module")
def hf(llama_dir):
    return hf_model(llama_dir)


@pytest.fixture(autouse=True)
def no_leaks_after(request):
    yield
    if "llm" in request.fixturenames:
        assert_no_leaks(request.getfixturevalue("llm"))


def random_prompts(lengths, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(4, 256) for _ in range(n)] for n in lengths]


GREEDY = dict(temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_matches_transformers(tiny_models, arch):  # noqa: F811
    path = with_tokenizer(tiny_models[arch])
    llm, model = make_llm(path), hf_model(path)
    prompts = random_prompts([1, 5, 17, 40])
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts] + ["Hello world! The quick"],
                           SamplingParams(max_tokens=32, **GREEDY), use_tqdm=False)
    text_prompt_ids = llm.get_tokenizer().encode("Hello world! The quick")
    for prompt, output in zip(prompts + [text_prompt_ids], outputs):
        assert output.prompt_token_ids == prompt
        completion = output.outputs[0]
        assert completion.token_ids == hf_greedy(model, prompt, 32)
        assert completion.finish_reason == "length" and output.finished
    tokenizer = llm.get_tokenizer()
    full = tokenizer.decode(text_prompt_ids + outputs[-1].outputs[0].token_ids, skip_special_tokens=True)
    assert outputs[-1].prompt == "Hello world! The quick"
    assert outputs[-1].outputs[0].text == full[len("Hello world! The quick"):]
    assert_no_leaks(llm)


def test_eos_after_min_tokens(llm, hf):
    """logit_bias makes EOS the argmax everywhere; min_tokens holds it off for 3 tokens."""
    prompt = random_prompts([9], seed=1)[0]
    params = SamplingParams(temperature=0.0, logit_bias={2: 100.0}, min_tokens=3, max_tokens=20)
    completion = llm.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0].outputs[0]
    assert completion.token_ids == hf_greedy(hf, prompt, 3) + [2]
    assert completion.finish_reason == "stop" and completion.stop_reason is None
    assert completion.text == llm.get_tokenizer().decode(completion.token_ids[:3], skip_special_tokens=True)


def test_stop_token_ids(llm, hf):
    prompt = random_prompts([7], seed=2)[0]
    greedy = hf_greedy(hf, prompt, 24)
    stop_id = greedy[6]
    completion = llm.generate({"prompt_token_ids": prompt}, SamplingParams(max_tokens=24, stop_token_ids=[stop_id],
                                                                          **GREEDY), use_tqdm=False)[0].outputs[0]
    end = greedy.index(stop_id) + 1
    assert completion.token_ids == greedy[:end]
    assert completion.finish_reason == "stop" and completion.stop_reason == stop_id


def test_stop_strings(llm):
    prompt = "The quick brown"
    full = llm.generate(prompt, SamplingParams(max_tokens=40, **GREEDY), use_tqdm=False)[0].outputs[0]
    text = full.text
    stop = next(text[i:i + 2] for i in range(8, len(text) - 2) if "\ufffd" not in text[i:i + 2])
    cut = text.index(stop)
    for include, want in ((False, text[:cut]), (True, text[:cut + len(stop)])):
        params = SamplingParams(max_tokens=40, stop=[stop], include_stop_str_in_output=include, **GREEDY)
        completion = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0]
        assert completion.text == want
        assert completion.finish_reason == "stop" and completion.stop_reason == stop
        assert completion.token_ids == full.token_ids[:len(completion.token_ids)]
        assert len(completion.token_ids) < len(full.token_ids)  # the engine stopped early


def test_logprobs_and_prompt_logprobs(llm, hf):
    prompt = random_prompts([6], seed=3)[0]
    output = llm.generate({"prompt_token_ids": prompt},
                          SamplingParams(max_tokens=5, logprobs=3, prompt_logprobs=2, **GREEDY), use_tqdm=False)[0]
    completion = output.outputs[0]
    reference = hf_logprobs(hf, prompt + completion.token_ids)
    assert len(completion.logprobs) == 5
    total = 0.0
    for i, (token_id, position) in enumerate(zip(completion.token_ids, completion.logprobs)):
        expected = reference[len(prompt) - 1 + i]
        top = expected.topk(3)
        assert [t for t, lp in position.items() if lp.rank <= 3] == top.indices.tolist()
        for rank, (t, value) in enumerate(zip(top.indices.tolist(), top.values.tolist()), start=1):
            assert position[t].rank == rank and position[t].logprob == pytest.approx(value, abs=1e-4)
        assert position[token_id].rank == 1
        assert position[token_id].decoded_token == llm.get_tokenizer().decode([token_id])
        total += expected[token_id].item()
    assert completion.cumulative_logprob == pytest.approx(total, abs=1e-3)
    assert output.prompt_logprobs[0] is None and len(output.prompt_logprobs) == len(prompt)
    for i in range(1, len(prompt)):
        entry = output.prompt_logprobs[i][prompt[i]]
        assert entry.logprob == pytest.approx(reference[i - 1][prompt[i]].item(), abs=1e-4)


def test_prompt_logprobs_again_under_a_reused_request_id(llm, hf):
    """The engine's prompt-logprobs state lives as long as the request: a request that ends (run to
    its end, or aborted) and comes back under the same id is scored again."""
    engine = llm.llm_engine
    prompt = random_prompts([7], seed=11)[0]
    reference = hf_logprobs(hf, prompt)
    params = SamplingParams(max_tokens=3, prompt_logprobs=1, **GREEDY)
    engine.add_request("again", {"prompt_token_ids": prompt}, params)
    assert engine.step()[0].prompt_logprobs  # the prompt is scored in its first step
    engine.abort_request("again")
    for _ in range(2):
        engine.add_request("again", {"prompt_token_ids": prompt}, params)
        outputs = []
        while engine.has_unfinished_requests():
            outputs.extend(engine.step())
        final = outputs[-1]
        assert final.request_id == "again" and final.finished
        assert len(final.prompt_logprobs) == len(prompt)
        for i in range(1, len(prompt)):
            assert final.prompt_logprobs[i][prompt[i]].logprob == pytest.approx(reference[i - 1][prompt[i]].item(),
                                                                               abs=1e-4)
    assert_no_leaks(llm)


def test_seeded_sampling_is_reproducible_and_batch_independent(llm, hf):
    prompt = random_prompts([8], seed=4)[0]
    params = SamplingParams(n=3, temperature=1.5, seed=7, max_tokens=12, ignore_eos=True, logprobs=0)
    alone = llm.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0]
    others = [{"prompt_token_ids": p} for p in random_prompts([3, 30], seed=5)]
    batched = llm.generate([others[0], {"prompt_token_ids": prompt}, others[1]],
                           [SamplingParams(temperature=1.0, max_tokens=12), params, SamplingParams(max_tokens=5)],
                           use_tqdm=False)[1]
    assert [c.index for c in alone.outputs] == [0, 1, 2]
    assert [c.token_ids for c in alone.outputs] == [c.token_ids for c in batched.outputs]
    assert len({tuple(c.token_ids) for c in alone.outputs}) > 1  # three different samples
    for completion in alone.outputs:
        reference = hf_logprobs(hf, prompt + completion.token_ids)
        expected = sum(reference[len(prompt) - 1 + i][t].item() for i, t in enumerate(completion.token_ids))
        assert completion.cumulative_logprob == pytest.approx(expected, abs=1e-3)


def test_best_of_returns_the_most_likely(llm):
    prompt = {"prompt_token_ids": random_prompts([5], seed=6)[0]}
    common = dict(temperature=1.5, seed=11, max_tokens=8, ignore_eos=True)
    everything = llm.generate(prompt, SamplingParams(n=4, logprobs=0, **common), use_tqdm=False)[0].outputs
    best = llm.generate(prompt, SamplingParams(n=2, best_of=4, **common), use_tqdm=False)[0].outputs
    ranked = sorted(everything, key=lambda c: c.cumulative_logprob, reverse=True)[:2]
    assert [c.token_ids for c in best] == [c.token_ids for c in ranked]
    assert [c.index for c in best] == [0, 1]
    unranked = llm.generate(prompt, SamplingParams(n=4, **common), use_tqdm=False)[0].outputs
    assert [c.token_ids for c in unranked] == [c.token_ids for c in everything]
    assert all(c.cumulative_logprob is None for c in unranked)  # not computed without logprobs


def test_chat_uses_the_template(llm, hf):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world!"}]
    output = llm.chat(messages, SamplingParams(max_tokens=8, **GREEDY), use_tqdm=False)[0]
    expected_prompt = llm.get_tokenizer().hf.apply_chat_template(messages, add_generation_prompt=True,
                                                                  tokenize=True, return_dict=False)
    assert output.prompt_token_ids == expected_prompt
    assert output.prompt.endswith("<|im_start|>assistant\n")
    assert output.outputs[0].token_ids == hf_greedy(hf, expected_prompt, 8)
    two = llm.chat([messages, messages[1:]], SamplingParams(max_tokens=2, **GREEDY), use_tqdm=False)
    assert len(two) == 2 and two[0].outputs[0].token_ids == output.outputs[0].token_ids[:2]


def test_max_tokens_none_fills_the_context(llm):
    prompt = random_prompts([MAX_MODEL_LEN - 20], seed=7)[0]
    completion = llm.generate({"prompt_token_ids": prompt}, SamplingParams(max_tokens=None, **GREEDY),
                              use_tqdm=False)[0].outputs[0]
    assert len(completion.token_ids) == 20 and completion.finish_reason == "length"


def test_bad_requests_raise_and_leave_the_engine_clean(llm):
    prompt = {"prompt_token_ids": random_prompts([MAX_MODEL_LEN - 4], seed=8)[0]}
    with pytest.raises(ValueError, match=f"maximum context length is {MAX_MODEL_LEN} tokens.*252 in the prompt, 16"):
        llm.generate(prompt, SamplingParams(), use_tqdm=False)
    with pytest.raises(ValueError, match="prompt_token_ids"):
        llm.generate([{"prompt_token_ids": [5, 6]}, {"prompt_token_ids": [5, 256]}], use_tqdm=False)
    with pytest.raises(ValueError, match="logprobs"):
        llm.generate("Hi", SamplingParams(logprobs=21), use_tqdm=False)
    with pytest.raises(ValueError, match="empty"):
        llm.generate({"prompt_token_ids": []}, use_tqdm=False)
    assert llm.generate("Hi", SamplingParams(max_tokens=3), use_tqdm=False)[0].finished


def test_final_only_reports_a_request_once_with_the_cumulative_result(llm):
    """output_kind=FINAL_ONLY (what LLM.generate submits): no output while a request runs, then the
    same final output as CUMULATIVE; stop strings, logprobs and n > 1 included."""
    engine = llm.llm_engine
    prompts = random_prompts([5, 17, 30], seed=4)
    cases = [SamplingParams(max_tokens=12, **GREEDY), SamplingParams(max_tokens=9, logprobs=2, seed=3),
             SamplingParams(max_tokens=20, stop=["a"], seed=5), SamplingParams(n=2, max_tokens=6, seed=7)]
    results = {}
    for kind in (RequestOutputKind.CUMULATIVE, RequestOutputKind.FINAL_ONLY):
        for i, params in enumerate(cases):
            engine.add_request(f"{kind.name}-{i}", {"prompt_token_ids": prompts[i % 3]},
                               dataclasses.replace(params, output_kind=kind))
        while engine.has_unfinished_requests():
            for out in engine.step():
                name, i = out.request_id.rsplit("-", 1)
                assert out.finished or name == "CUMULATIVE"
                if out.finished:
                    results[name, int(i)] = out
    for i in range(len(cases)):
        final, cumulative = results["FINAL_ONLY", i], results["CUMULATIVE", i]
        assert [(c.text, c.token_ids, c.logprobs, c.finish_reason, c.stop_reason) for c in final.outputs] == \
            [(c.text, c.token_ids, c.logprobs, c.finish_reason, c.stop_reason) for c in cumulative.outputs]


def test_delta_outputs_add_up_to_the_cumulative_result(llm):
    """output_kind=DELTA (what the server streams): each output holds only what is new; merged in
    order (RequestOutput.add) they equal the final CUMULATIVE output, and every choice reports its
    finish exactly once, also when the choices of n > 1 finish at different steps."""
    engine = llm.llm_engine
    prompts = random_prompts([5, 17, 30], seed=4)
    cases = [SamplingParams(max_tokens=12, **GREEDY), SamplingParams(max_tokens=9, logprobs=2, seed=3),
             SamplingParams(max_tokens=20, stop=["a"], seed=5),
             SamplingParams(n=3, max_tokens=40, min_tokens=1, stop=["e"], seed=7, temperature=1.0)]
    finished, merged, finishes = {}, {}, {}
    for kind in (RequestOutputKind.CUMULATIVE, RequestOutputKind.DELTA):
        for i, params in enumerate(cases):
            engine.add_request(f"{kind.name}-{i}", {"prompt_token_ids": prompts[i % 3]},
                               dataclasses.replace(params, output_kind=kind))
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id.startswith("DELTA"):
                for c in out.outputs:
                    finishes.setdefault(out.request_id, []).extend([c.index] if c.finish_reason else [])
                merged[out.request_id] = merged[out.request_id].add(out) if out.request_id in merged else out
            elif out.finished:
                finished[out.request_id] = out
    for i, params in enumerate(cases):
        want, got = finished[f"CUMULATIVE-{i}"], merged[f"DELTA-{i}"]
        assert got.finished
        assert sorted(finishes[f"DELTA-{i}"]) == list(range(params.n))
        assert sorted((c.index, c.text, c.token_ids, c.logprobs, c.finish_reason, c.stop_reason) for c in got.outputs) \
            == [(c.index, c.text, c.token_ids, c.logprobs, c.finish_reason, c.stop_reason) for c in want.outputs]
    # The n = 3 case is only a test of the re-sent finish if its choices ended at different steps.
    assert len({len(c.token_ids) for c in finished["CUMULATIVE-3"].outputs}) > 1
    assert_no_leaks(llm)


def test_abort_frees_blocks(llm):
    engine = llm.llm_engine
    engine.add_request("to-abort", {"prompt_token_ids": random_prompts([40], seed=9)[0]},
                       SamplingParams(max_tokens=100, ignore_eos=True))
    engine.step()
    engine.step()
    assert engine.get_stats()["num_free_device_blocks"] < engine.get_stats()["num_device_blocks"]
    engine.abort_request("to-abort")
    assert not engine.has_unfinished_requests()


def reference_beam_search(model, prompt, beam_width, max_tokens):
    """Plain beam search on HF logprobs with the same rules: 2 * beam_width candidates per beam,
    beams ending in EOS set aside, the beam_width best kept by cum_logprob / len(tokens)."""
    def score(tokens, cum):
        return cum / (len(tokens) - (1 if tokens[-1] in EOS_IDS else 0))

    beams, completed = [(list(prompt), 0.0)], []
    for _ in range(max_tokens):
        candidates = []
        for tokens, cum in beams:
            top = hf_logprobs(model, tokens)[-1].topk(2 * beam_width)
            for token_id, logprob in zip(top.indices.tolist(), top.values.tolist()):
                new = (tokens + [token_id], cum + logprob)
                (completed if token_id in EOS_IDS else candidates).append(new)
        beams = sorted(candidates, key=lambda b: score(*b), reverse=True)[:beam_width]
    return sorted(completed + beams, key=lambda b: score(*b), reverse=True)[:beam_width]


def test_beam_search_matches_reference(llm, hf):
    prompts = random_prompts([4, 11], seed=10)
    results = llm.beam_search([{"prompt_token_ids": p} for p in prompts], BeamSearchParams(beam_width=3, max_tokens=5))
    for prompt, result in zip(prompts, results):
        expected = reference_beam_search(hf, prompt, 3, 5)
        assert [s.tokens for s in result.sequences] == [tokens for tokens, _ in expected]
        for sequence, (_, cum) in zip(result.sequences, expected):
            assert sequence.cum_logprob == pytest.approx(cum, abs=1e-3)
    stats = llm.llm_engine.get_stats()
    assert stats["prefix_cache_hits"] > 0  # later steps reuse the beams' cached blocks


def test_preempted_requests_give_the_same_text(llm, llama_dir):
    """A KV cache too small for the batch forces preemption; the outputs (tokens and the text built
    from them) are those of the unconstrained engine."""
    small = LLM(model=llama_dir, dtype="float32", device="cpu", max_model_len=MAX_MODEL_LEN,
                num_gpu_blocks_override=16, enable_prefix_caching=False)
    prompts = [{"prompt_token_ids": p} for p in random_prompts([40, 35, 50, 45], seed=11)]
    params = SamplingParams(max_tokens=40, **GREEDY)
    constrained = small.generate(prompts, params, use_tqdm=False)
    assert small.llm_engine.get_stats()["num_preemptions"] > 0
    reference = llm.generate(prompts, params, use_tqdm=False)
    for got, want in zip(constrained, reference):
        assert got.outputs[0].token_ids == want.outputs[0].token_ids
        assert got.outputs[0].text == want.outputs[0].text
    assert_no_leaks(small)
