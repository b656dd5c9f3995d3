"""The C++ model runner against HF transformers on the same tiny random checkpoints.

Plans are built by hand here (blocks handed out in order, like a fresh allocator would), so these
tests exercise the runner, the loader and the kernels without the scheduler.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from tiny_models import BUILDERS, tiny_models  # noqa: F401  (tiny_models is a fixture)

from fastpage import _C
from fastpage.model_loader.hf import load_hf

ARCHITECTURES = list(BUILDERS)
BLOCK_SIZE = 8


class PlanBuilder:
    """Hands out KV blocks sequentially and turns (seq_id, new tokens) chunks into a StepPlan."""

    def __init__(self, block_size: int = BLOCK_SIZE, first_block: int = 0):
        self.block_size = block_size
        self.next_block = first_block
        self.blocks: dict[int, list[int]] = {}
        self.num_cached: dict[int, int] = {}

    def plan(self, chunks: list[tuple[int, list[int]]]) -> tuple[_C.StepPlan, list[range]]:
        """Returns the plan and, per chunk, the range of its rows in the flattened tokens."""
        plan = _C.StepPlan()
        seqs, input_ids, positions, slots, starts, context_lens, tables, rows = [], [], [], [], [0], [], [], []
        for seq_id, tokens in chunks:
            start = self.num_cached.get(seq_id, 0)
            end = start + len(tokens)
            blocks = self.blocks.setdefault(seq_id, [])
            while len(blocks) * self.block_size < end:
                blocks.append(self.next_block)
                self.next_block += 1
            seq = _C.ScheduledSeq()
            seq.seq_id, seq.num_new_tokens, seq.start_position, seq.sample = seq_id, len(tokens), start, True
            seqs.append(seq)
            rows.append(range(len(input_ids), len(input_ids) + len(tokens)))
            input_ids += tokens
            positions += range(start, end)
            slots += [blocks[p // self.block_size] * self.block_size + p % self.block_size
                      for p in range(start, end)]
            starts.append(len(input_ids))
            context_lens.append(end)
            tables.append(list(blocks))
            self.num_cached[seq_id] = end
        width = max(len(t) for t in tables)
        plan.seqs = seqs
        plan.input_ids, plan.positions, plan.slot_mapping = input_ids, positions, slots
        plan.query_start_loc, plan.context_lens = starts, context_lens
        plan.block_tables = [b for t in tables for b in t + [0] * (width - len(t))]
        plan.max_blocks_per_seq = width
        # Leading single-token chunks past the prompt count as decodes (the runner does not rely on it).
        plan.num_decode_seqs = next((i for i, seq in enumerate(seqs)
                                     if seq.num_new_tokens != 1 or seq.start_position == 0), len(seqs))
        return plan, rows


def make_runner(path: str, dtype: str = "float32", num_cpu_blocks: int = 0):
    loaded = load_hf(path, dtype=dtype)
    engine = _C.EngineConfig()
    engine.block_size = BLOCK_SIZE
    engine.num_gpu_blocks = 64
    engine.num_cpu_blocks = num_cpu_blocks
    torch_dtype = next(iter(loaded.weights.values())).dtype
    return _C.ModelRunner(loaded.model_config, engine, loaded.weights, "cpu", torch_dtype), loaded


_hf_models: dict[str, torch.nn.Module] = {}


def hf_logits(path: str, token_ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    if path not in _hf_models:
        _hf_models[path] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return _hf_models[path](torch.tensor([token_ids])).logits[0].float()


def random_tokens(n: int, seed: int) -> list[int]:
    return torch.randint(3, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batched_prompt_logits_match_hf(arch, tiny_models):
    path = tiny_models[arch]
    runner, _ = make_runner(path)
    prompts = [random_tokens(n, seed) for seed, n in enumerate([5, 17, 1, 33])]
    plan, rows = PlanBuilder().plan(list(enumerate(prompts)))
    logits = runner.execute(plan, list(range(plan.num_tokens)))
    assert logits.dtype == torch.float32 and logits.shape == (plan.num_tokens, 256)
    for prompt, seq_rows in zip(prompts, rows):
        torch.testing.assert_close(logits[seq_rows.start:seq_rows.stop], hf_logits(path, prompt),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_only_requested_rows_get_logits(arch, tiny_models):
    path = tiny_models[arch]
    runner, _ = make_runner(path)
    prompts = [random_tokens(n, seed) for seed, n in enumerate([9, 3])]
    plan, rows = PlanBuilder(first_block=5).plan(list(enumerate(prompts)))
    logits = runner.execute(plan, [rows[1].stop - 1, rows[0].stop - 1])
    assert logits.shape == (2, 256)
    torch.testing.assert_close(logits[0], hf_logits(path, prompts[1])[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], hf_logits(path, prompts[0])[-1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_chunked_prefill_and_greedy_decode_match_hf(arch, tiny_models):
    """Sequence 0's prompt arrives in chunks of 11, 1 and 17 tokens while sequence 1 prefills and
    then decodes beside it; each generates 32 greedy tokens, batched together."""
    path = tiny_models[arch]
    runner, _ = make_runner(path)
    builder = PlanBuilder()
    prompts = {0: random_tokens(29, 10), 1: random_tokens(6, 11)}
    chunk_sizes = {0: [11, 1, 17], 1: [6]}
    tokens = {s: list(p) for s, p in prompts.items()}
    num_fed = {s: 0 for s in prompts}
    logits_seen: dict[int, list[torch.Tensor]] = {s: [] for s in prompts}

    def generating(s):
        return len(tokens[s]) - len(prompts[s]) < 32

    while any(generating(s) for s in prompts):
        chunks = []
        for s in filter(generating, prompts):
            n = chunk_sizes[s].pop(0) if chunk_sizes[s] else 1
            chunks.append((s, tokens[s][num_fed[s]:num_fed[s] + n]))
            num_fed[s] += n
        chunks.sort(key=lambda chunk: len(chunk[1]) != 1)  # decodes first, as the scheduler orders them
        plan, rows = builder.plan(chunks)
        logits = runner.execute(plan, list(range(plan.num_tokens)))
        for (s, _), seq_rows in zip(chunks, rows):
            logits_seen[s].append(logits[seq_rows.start:seq_rows.stop])
            if num_fed[s] == len(tokens[s]):  # the chunk reached the sequence's end: sample
                tokens[s].append(int(logits[seq_rows.stop - 1].argmax()))

    for s, prompt in prompts.items():
        ours = torch.cat(logits_seen[s])
        reference = hf_logits(path, tokens[s][:-1])  # the last token was sampled, never fed
        torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
        assert tokens[s][len(prompt):] == reference[len(prompt) - 1:].argmax(-1).tolist()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_half_precision_load_matches_hf_loosely(arch, dtype, tiny_models):
    path = tiny_models[arch]
    runner, loaded = make_runner(path, dtype=dtype)
    torch_dtype = getattr(torch, dtype)
    assert all(t.dtype == torch_dtype for t in loaded.weights.values())
    prompt = random_tokens(21, 3)
    plan, _ = PlanBuilder().plan([(0, prompt)])
    logits = runner.execute(plan, list(range(plan.num_tokens)))
    assert logits.dtype == torch.float32
    reference = hf_logits(path, prompt)
    # Half precision moves logits by up to a tenth; HF's own forward in that dtype is the yardstick.
    from transformers import AutoModelForCausalLM

    hf_half = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).eval()
    with torch.no_grad():
        hf_half_logits = hf_half(torch.tensor([prompt])).logits[0].float()
    our_error = (logits - reference).abs().max().item()
    hf_error = (hf_half_logits - reference).abs().max().item()
    assert our_error < 0.2 and our_error <= 2 * hf_error, (our_error, hf_error)
    assert logits.argmax(-1).tolist() == reference.argmax(-1).tolist()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_swap_out_swap_in_and_block_copies_run_in_order(arch, tiny_models):
    """One plan moves a prefilled sequence's blocks device -> host -> new device blocks -> copies
    of those; decoding from the copies only works if all three ran, in that order."""
    path = tiny_models[arch]
    runner, _ = make_runner(path, num_cpu_blocks=8)
    assert (runner.num_device_blocks, runner.num_host_blocks) == (64, 8)
    builder = PlanBuilder()
    prompt = random_tokens(20, 5)
    plan, _ = builder.plan([(0, prompt)])
    token = int(runner.execute(plan, [plan.num_tokens - 1])[0].argmax())
    assert builder.blocks[0] == [0, 1, 2]
    builder.blocks[0] = [20, 21, 22]
    plan, _ = builder.plan([(0, [token])])
    plan.swap_out = [(0, 5), (1, 6), (2, 7)]
    plan.swap_in = [(5, 10), (6, 11), (7, 12)]
    plan.block_copies = [(10, 20), (11, 21), (12, 22)]
    logits = runner.execute(plan, [0])
    torch.testing.assert_close(logits[0], hf_logits(path, prompt + [token])[-1], atol=1e-4, rtol=1e-4)


def test_swaps_need_host_blocks(tiny_models):
    runner, _ = make_runner(tiny_models["llama"])
    plan, _ = PlanBuilder().plan([(0, [5, 6])])
    plan.swap_out = [(0, 0)]
    with pytest.raises(ValueError, match="num_cpu_blocks"):
        runner.execute(plan, [1])


# ----------------------------------------------------------------------------- the loader


def _copy_model(src: str, dst: str, mutate_config=None) -> str:
    shutil.copytree(src, dst)
    if mutate_config:
        with open(os.path.join(dst, "config.json")) as f:
            config = json.load(f)
        mutate_config(config)
        with open(os.path.join(dst, "config.json"), "w") as f:
            json.dump(config, f)
    return dst


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_sharded_safetensors_load_like_a_single_file(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    path = tiny_models["llama"]
    sharded = str(tmp_path / "sharded")
    AutoModelForCausalLM.from_pretrained(path).save_pretrained(sharded, max_shard_size="40KB")
    assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
    _assert_same_weights(load_hf(sharded).weights, load_hf(path).weights)


def test_pytorch_model_bin_fallback(tiny_models, tmp_path):
    from safetensors.torch import load_file

    path = tiny_models["gpt2"]
    legacy = str(tmp_path / "legacy")
    os.makedirs(legacy)
    shutil.copy(os.path.join(path, "config.json"), legacy)
    torch.save(load_file(os.path.join(path, "model.safetensors")), os.path.join(legacy, "pytorch_model.bin"))
    _assert_same_weights(load_hf(legacy).weights, load_hf(path).weights)


def test_loader_reads_generation_config_and_context_length(tiny_models, tmp_path):
    loaded = load_hf(tiny_models["llama"])
    assert loaded.eos_token_ids == [2, 3]
    assert loaded.max_model_len == 512
    assert loaded.model_config.rope_scaling_type == "llama3"
    assert loaded.tokenizer_source == tiny_models["llama"]

    path = _copy_model(tiny_models["qwen2"], str(tmp_path / "qwen2"))
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": 7, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
                   "max_new_tokens": 50, "do_sample": True}, f)
    loaded = load_hf(path)
    assert loaded.eos_token_ids == [7]
    assert loaded.generation_defaults == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_tokens": 50}
    assert load_hf(tiny_models["gpt2"]).max_model_len == 256  # n_positions


def test_mistral_sliding_window_caps_the_context(tiny_models, tmp_path):
    path = _copy_model(tiny_models["mistral"], str(tmp_path / "m"),
                       lambda c: c.update(sliding_window=128))
    assert load_hf(path).max_model_len == 128


@pytest.mark.parametrize(("arch", "change", "named"), [
    ("llama", {"architectures": ["BertForMaskedLM"]}, "BertForMaskedLM"),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "yarn"),
    ("llama", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}}, "low_freq_factor"),
    ("llama", {"hidden_act": "gelu"}, "hidden_act"),
    ("llama", {"mlp_bias": True}, "mlp_bias"),
    ("opt", {"do_layer_norm_before": False}, "do_layer_norm_before"),
    ("opt", {"word_embed_proj_dim": 32}, "word_embed_proj_dim"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
])
def test_unsupported_architecture_or_option_is_named(arch, change, named, tiny_models, tmp_path):
    path = _copy_model(tiny_models[arch], str(tmp_path / arch), lambda c: c.update(change))
    with pytest.raises(ValueError, match=named):
        load_hf(path)


def test_missing_tensor_is_named(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    path = _copy_model(tiny_models["qwen3"], str(tmp_path / "q"))
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    del tensors["model.layers.1.self_attn.k_norm.weight"]
    save_file(tensors, file)
    with pytest.raises(ValueError, match="model.layers.1.self_attn.k_norm.weight"):
        load_hf(path)


def test_runner_rejects_misshapen_weights(tiny_models):
    loaded = load_hf(tiny_models["mistral"])
    loaded.weights["layers.0.o_proj.weight"] = loaded.weights["layers.0.o_proj.weight"][:, :8]
    engine = _C.EngineConfig()
    engine.num_gpu_blocks = 4
    with pytest.raises(ValueError, match="layers.0.o_proj.weight"):
        _C.ModelRunner(loaded.model_config, engine, loaded.weights, "cpu", torch.float32)


def test_cpu_kv_cache_is_sized_from_its_byte_budget(tiny_models):
    loaded = load_hf(tiny_models["qwen3"])
    mc = loaded.model_config
    engine = _C.EngineConfig()
    engine.block_size = 16
    bytes_per_block = mc.num_layers * 2 * 16 * mc.num_kv_heads * mc.head_dim * 4  # K and V, float32
    engine.kv_cache_memory_bytes = 10 * bytes_per_block + bytes_per_block // 2
    engine.swap_space_bytes = 3 * bytes_per_block
    runner = _C.ModelRunner(mc, engine, dict(loaded.weights), "cpu", torch.float32)
    assert (runner.bytes_per_block, runner.num_device_blocks, runner.num_host_blocks) == (bytes_per_block, 10, 3)

    engine.kv_cache_memory_bytes = bytes_per_block - 1
    with pytest.raises(ValueError, match="KV cache"):
        _C.ModelRunner(mc, engine, dict(loaded.weights), "cpu", torch.float32)
