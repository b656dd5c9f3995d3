"""EngineArgs: vLLM's flag names on the command line, and bad values refused by name."""

import argparse

import pytest

from fastpage.engine_args import EngineArgs


def parse(argv, model_positional=False):
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser(), model_positional=model_positional)
    return EngineArgs.from_cli_args(parser.parse_args(argv))


def test_defaults_round_trip():
    assert parse([]) == EngineArgs()


def test_vllm_flags():
    args = parse(["--model", "m", "--dtype", "bfloat16", "--max-model-len", "512",
                  "--gpu-memory-utilization", "0.5", "--max-num-seqs", "8", "--max-num-batched-tokens", "1024",
                  "--block-size", "32", "--no-enable-prefix-caching", "--swap-space", "2", "--enforce-eager",
                  "--seed", "7", "--kv-cache-memory-bytes", "1000000", "--max-logprobs", "5", "--device", "cpu"])
    assert args == EngineArgs(model="m", dtype="bfloat16", max_model_len=512, gpu_memory_utilization=0.5,
                              max_num_seqs=8, max_num_batched_tokens=1024, block_size=32,
                              enable_prefix_caching=False, swap_space=2, enforce_eager=True, seed=7,
                              kv_cache_memory_bytes=1000000, max_logprobs=5, device="cpu")


def test_positional_model():
    assert parse(["dir"], model_positional=True).model == "dir"
    assert parse(["--model", "dir"], model_positional=True).model == "dir"
    with pytest.raises(ValueError, match="model"):
        parse(["a", "--model", "b"], model_positional=True)


@pytest.mark.parametrize("field, value", [
    ("gpu_memory_utilization", 0.0), ("gpu_memory_utilization", 1.5), ("max_num_seqs", 0), ("block_size", 0),
    ("max_model_len", 0), ("swap_space", -1), ("tensor_parallel_size", 0), ("pipeline_parallel_size", 0),
    ("max_logprobs", -1), ("distributed_master_port", 70000), ("distributed_timeout_seconds", 0),
])
def test_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        EngineArgs(**{field: value})


def test_engine_config_budgets():
    args = EngineArgs(kv_cache_memory_bytes=10_000, swap_space=1, enable_chunked_prefill=False)
    config = args.engine_config(max_model_len=16384)
    assert config.kv_cache_memory_bytes == 10_000 and config.swap_space_bytes == 1 << 30
    assert config.num_gpu_blocks == 0 and config.num_cpu_blocks == 0
    assert config.max_num_batched_tokens == 16384  # without chunked prefill a whole prompt fits a step
    assert EngineArgs().engine_config(max_model_len=1024).max_num_batched_tokens == 8192
