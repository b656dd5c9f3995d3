"""Tensor and pipeline parallelism on CPU with Gloo (one process per rank, `python -m fastpage.distributed.worker`).

Reference: the same tiny model (tests/tiny_models.py) in one process. Every parallel layout must give
the same greedy tokens, with close logprobs, for a mixed batch run twice (long prompts split by
chunked prefill; the second pass hits the prefix cache). After each run no KV block is left in use
and every worker process has exited. Also: a worker killed mid-generation turns into a RuntimeError
within seconds and the other workers are reaped (and a server's /health fails); idle workers
outlive the data groups' timeout; two "nodes" on this machine (a worker-only `fastpage serve
--node-rank 1` process) serve like one; bad sizes are ValueErrors naming the field.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from server_process import FASTPAGE_PARENT, free_port, running_server

from fastpage import LLM, SamplingParams, _C
from tiny_models import tiny_models  # noqa: F401  (session fixture)
from tiny_tokenizer import byte_level_bpe

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gpt2", "opt"]
SHARED_PREFIX = [(7 * i) % 250 + 3 for i in range(40)]  # 2.5 blocks of 16
PROMPTS = [
    SHARED_PREFIX + [11, 12, 13],
    SHARED_PREFIX + [200, 201],
    [1, 5, 9, 20, 33] * 13,  # 65 tokens: three chunks of 32
    [4, 8, 15, 16, 23, 42],
    [99],
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=1)


def model_dir(tiny_models, arch: str) -> str:  # noqa: F811
    path = tiny_models[arch]
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        byte_level_bpe(256, all_bytes=False).save_pretrained(path)
    return path


def make_llm(path: str, tp: int = 1, pp: int = 1, **kwargs) -> LLM:
    return LLM(model=path, dtype="float32", device="cpu", max_model_len=256, kv_cache_memory_bytes=2 << 20,
               max_num_batched_tokens=32, enable_prefix_caching=True, tensor_parallel_size=tp,
               pipeline_parallel_size=pp, **kwargs)


def generate(llm: LLM) -> list[tuple[list[int], list[float]]]:
    """(tokens, chosen-token logprobs) per prompt, for two passes over PROMPTS."""
    results = []
    for _ in range(2):
        for out in llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False):
            completion = out.outputs[0]
            chosen = [lp[token].logprob for token, lp in zip(completion.token_ids, completion.logprobs)]
            results.append((list(completion.token_ids), chosen))
    return results


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


def assert_idle_and_shut_down(llm: LLM) -> None:
    engine = llm.llm_engine
    stats = engine.get_stats()
    assert stats["num_free_device_blocks"] == stats["num_device_blocks"], stats
    pids = engine.parallel_runtime.pids
    engine.shutdown()
    assert all(process_gone(pid) for pid in pids)


@pytest.fixture(scope="module")
def reference(tiny_models):  # noqa: F811
    """arch -> one process's outputs, computed on first use."""
    cache = {}

    def get(arch: str):
        if arch not in cache:
            llm = make_llm(model_dir(tiny_models, arch))
            cache[arch] = generate(llm)
            assert llm.llm_engine.get_stats()["prefix_cache_hits"] > 0
        return cache[arch]

    return get


def assert_same(outputs, expected) -> None:
    assert [tokens for tokens, _ in outputs] == [tokens for tokens, _ in expected]
    for (_, got), (_, want) in zip(outputs, expected):
        assert got == pytest.approx(want, abs=1e-4)


# Every architecture under TP=2, PP=2 and TP=2 x PP=2 (qwen3's TP=2 x PP=2 run is the failure test
# below): GQA, a replicated KV head (qwen2), tied vocab-parallel lm_heads on the last stage, biases
# and learned positions (gpt2, opt).
LAYOUTS = [(arch, tp, pp) for arch in ARCHS for tp, pp in ((2, 1), (1, 2))] + [
    (arch, 2, 2) for arch in ARCHS if arch != "qwen3"]


@pytest.mark.parametrize("arch, tp, pp", LAYOUTS, ids=[f"{a}-tp{t}xpp{p}" for a, t, p in LAYOUTS])
def test_parallel_matches_one_process(tiny_models, reference, arch, tp, pp):  # noqa: F811
    llm = make_llm(model_dir(tiny_models, arch), tp, pp)
    assert_same(generate(llm), reference(arch))
    assert_idle_and_shut_down(llm)


def test_tp4_replicated_kv_heads(tiny_models, reference):  # noqa: F811
    # llama: 4 query heads, 2 KV heads: each KV head lives on two of the four ranks.
    llm = make_llm(model_dir(tiny_models, "llama"), tp=4)
    assert len(llm.llm_engine.parallel_runtime.pids) == 3
    assert_same(generate(llm), reference("llama"))
    assert_idle_and_shut_down(llm)


def test_idle_workers_outlive_timeout_and_a_killed_worker_fails_fast(tiny_models, reference):  # noqa: F811
    # qwen3 at TP=2 x PP=2 with a 3 s data-group timeout: idle workers must outlive it (they wait on
    # the control group, whose timeout is very long).
    llm = make_llm(model_dir(tiny_models, "qwen3"), tp=2, pp=2, distributed_timeout_seconds=3)
    engine = llm.llm_engine
    pids = engine.parallel_runtime.pids
    assert_same(generate(llm), reference("qwen3"))
    time.sleep(3.5)
    assert_same(generate(llm), reference("qwen3"))

    long_run = SamplingParams(temperature=0.0, max_tokens=150, ignore_eos=True)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"long-{i}", {"prompt_token_ids": prompt}, long_run)
    for _ in range(3):
        engine.step()
    errors: list[BaseException] = []

    def step_until_error() -> None:
        try:
            while engine.has_unfinished_requests():
                engine.step()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    os.kill(pids[-1], signal.SIGKILL)  # rank 3: last stage, tp_rank 1
    stepper = threading.Thread(target=step_until_error, daemon=True)
    started = time.monotonic()
    stepper.start()
    stepper.join(timeout=30)
    assert not stepper.is_alive(), "LLMEngine.step still blocked 30 s after a worker died"
    assert time.monotonic() - started < 30
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError), errors
    assert "parallel engine is dead" in str(errors[0])
    with pytest.raises(RuntimeError, match="parallel engine is dead"):
        engine.check_health()
    deadline = time.monotonic() + 10
    while not all(process_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(process_gone(pid) for pid in pids)
    engine.shutdown()


ENGINE_FLAGS = ["--dtype", "float32", "--device", "cpu", "--max-model-len", "256",
                "--kv-cache-memory-bytes", str(2 << 20), "--max-num-batched-tokens", "32"]


def worker_pids(model_path: str) -> list[int]:
    """Live `python -m fastpage.distributed.worker` processes serving `model_path`."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"fastpage.distributed.worker" in cmdline and model_path.encode() in cmdline and not process_gone(int(entry)):
            pids.append(int(entry))
    return pids


def test_two_nodes_on_one_machine(tiny_models, reference):  # noqa: F811
    # Node 1 is `fastpage serve --nnodes 2 --node-rank 1`: rank 1 only, no server; node 0 is this
    # process (rank 0). They meet at node 0's --master-port like two machines would.
    path = model_dir(tiny_models, "gpt2")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([FASTPAGE_PARENT, os.environ.get("PYTHONPATH", "")]))
    node1 = subprocess.Popen([sys.executable, "-m", "fastpage.cli", "serve", path, "-tp", "2", "--nnodes", "2",
                              "--node-rank", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                              *ENGINE_FLAGS], env=env)
    try:
        llm = make_llm(path, tp=2, nnodes=2, distributed_master_port=port)
        assert llm.llm_engine.parallel_runtime.pids == []  # node 0 holds rank 0 alone
        assert_same(generate(llm), reference("gpt2"))
        llm.llm_engine.shutdown()
        assert node1.wait(timeout=30) == 0  # its worker ended cleanly on rank 0's shutdown
    finally:
        if node1.poll() is None:
            node1.kill()
            node1.wait()


def test_a_node_started_with_other_flags_is_refused(tiny_models):  # noqa: F811
    path = model_dir(tiny_models, "gpt2")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([FASTPAGE_PARENT, os.environ.get("PYTHONPATH", "")]))
    node1 = subprocess.Popen([sys.executable, "-m", "fastpage.cli", "serve", path, "-tp", "2", "--nnodes", "2",
                              "--node-rank", "1", "--master-port", str(port), *ENGINE_FLAGS, "--max-num-seqs", "8"],
                             env=env, stderr=subprocess.PIPE, text=True)
    try:
        with pytest.raises(ValueError, match=r"rank 1 was started with other engine settings.*max_num_seqs=8 \(rank 0: 256\)"):
            make_llm(path, tp=2, nnodes=2, distributed_master_port=port)
        assert node1.wait(timeout=30) == 1
        assert "max_num_seqs=8 (rank 0: 256)" in node1.stderr.read()
    finally:
        if node1.poll() is None:
            node1.kill()
            node1.wait()


def test_server_health_fails_when_a_worker_dies(tiny_models, tmp_path):  # noqa: F811
    path = model_dir(tiny_models, "llama")
    args = ["fastpage.entrypoints.openai.api_server", "--model", path, "-tp", "2", *ENGINE_FLAGS]
    with running_server(args, tmp_path / "server.log") as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        done = client.completions.create(model=path, prompt=[5, 6, 7], max_tokens=4, temperature=0)
        assert len(done.choices[0].text) > 0
        [pid] = worker_pids(path)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while httpx.get(f"{base}/health").status_code == 200:
            assert time.monotonic() < deadline, "/health still 200 10 s after the worker died"
            time.sleep(0.1)
        health = httpx.get(f"{base}/health")
        assert health.status_code == 503 and "dead" in health.json()["error"]["message"]
        with pytest.raises(openai.APIStatusError) as failed:
            client.completions.create(model=path, prompt=[5, 6, 7], max_tokens=4)
        assert failed.value.status_code >= 500


@pytest.mark.parametrize("kwargs, field", [
    ({"tensor_parallel_size": 3}, "num_heads"),
    ({"pipeline_parallel_size": 3}, "num_layers"),
])
def test_sizes_that_do_not_divide_are_value_errors(tiny_models, kwargs, field):  # noqa: F811
    # llama: 4 heads, 2 layers. Raised before any worker starts.
    with pytest.raises(ValueError, match=field):
        LLM(model=model_dir(tiny_models, "llama"), dtype="float32", device="cpu", **kwargs)


def test_pipeline_layer_range_splits_like_vllm():
    # 10 layers over 4 stages: 2, 3, 3, 2 (the remainder goes to the stages before the last).
    assert [_C.pipeline_layer_range(10, 4, r) for r in range(4)] == [(0, 2), (2, 5), (5, 8), (8, 10)]
    assert [_C.pipeline_layer_range(7, 3, r) for r in range(3)] == [(0, 2), (2, 5), (5, 7)]
    assert [_C.pipeline_layer_range(8, 2, r) for r in range(2)] == [(0, 4), (4, 8)]
    with pytest.raises(ValueError, match="num_layers"):
        _C.pipeline_layer_range(2, 3, 0)


def test_model_shard_replicates_kv_heads_when_fewer_than_ranks():
    config = _C.ModelConfig()
    config.vocab_size, config.num_layers, config.num_heads, config.num_kv_heads = 250, 4, 8, 2
    config.intermediate_size = 64
    shards = []
    for rank in range(4):
        parallel = _C.ParallelConfig()
        parallel.tensor_parallel_size, parallel.rank = 4, rank
        shards.append(_C.model_shard(config, parallel))
    assert [(s.head_begin, s.num_heads) for s in shards] == [(0, 2), (2, 2), (4, 2), (6, 2)]
    # Query heads 0-3 use KV head 0, heads 4-7 KV head 1.
    assert [(s.kv_head_begin, s.num_kv_heads) for s in shards] == [(0, 1), (0, 1), (1, 1), (1, 1)]
    assert [(s.vocab_begin, s.vocab_rows) for s in shards] == [(0, 63), (63, 63), (126, 63), (189, 63)]
    assert [(s.intermediate_begin, s.intermediate_size) for s in shards] == [(0, 16), (16, 16), (32, 16), (48, 16)]
