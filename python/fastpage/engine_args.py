"""EngineArgs: how to build an engine, with vLLM's names, and the matching command-line flags."""

from __future__ import annotations

import argparse
import dataclasses

DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
GIB = 1 << 30
# kv_cache_dtype values (vLLM's names): "auto" keeps the model dtype; the fp8 names store
# float8_e4m3fn with scales of 1.0.
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3")


@dataclasses.dataclass
class EngineArgs:
    model: str | None = None  # HF model directory or .gguf file; None: the default model
    tokenizer: str | None = None  # default: the model's own
    dtype: str = "auto"
    load_format: str = "auto"  # "dummy": config.json only, seeded random weights (benchmarks)
    max_model_len: int | None = None  # default: the model's context length
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    block_size: int = 16
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    swap_space: float = 0  # GiB of host memory for swapped-out KV blocks; 0: preempt by recompute
    kv_cache_dtype: str = "auto"  # "auto": the model dtype; "fp8" / "fp8_e4m3": float8_e4m3fn
    enforce_eager: bool = False
    seed: int = 0
    kv_cache_memory_bytes: int | None = None  # KV-cache bytes (CPU default 4 GiB; GPU: gpu_memory_utilization)
    num_gpu_blocks_override: int | None = None
    max_logprobs: int = 20
    # Launch step N+1 before step N's sampled ids reach the host (outputs come one step later).
    # None: on for CUDA with one rank, off otherwise; True needs tensor x pipeline parallel size 1.
    async_scheduling: bool | None = None
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:N"
    # Tensor / pipeline parallelism: rank 0 (this process) hosts the rendezvous at
    # distributed_master_addr:distributed_master_port (None: a free port); the process groups that
    # carry activations fail a hung step after distributed_timeout_seconds.
    distributed_master_addr: str = "127.0.0.1"
    distributed_master_port: int | None = None
    distributed_timeout_seconds: float = 60.0
    # Several machines: the world's ranks split evenly over nnodes; node 0 runs rank 0 (the engine),
    # node k > 0 runs ranks k * world / nnodes onwards as workers only (vLLM's --nnodes/--node-rank).
    nnodes: int = 1
    node_rank: int = 0
    # Structured outputs (vLLM's --structured-outputs-config, JSON): backend, defaults and limits.
    structured_outputs_config: str | dict | None = None

    def __post_init__(self) -> None:
        from fastpage.structured_output import StructuredOutputsConfig

        StructuredOutputsConfig.from_json(self.structured_outputs_config)  # ValueError naming the field
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}.")
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "max_num_seqs", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.distributed_master_port is not None and not 0 < self.distributed_master_port < 65536:
            raise ValueError(f"distributed_master_port must be in [1, 65535], got {self.distributed_master_port}.")
        if self.distributed_timeout_seconds <= 0:
            raise ValueError("distributed_timeout_seconds must be positive, got "
                             f"{self.distributed_timeout_seconds}.")
        if self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank must be in [0, nnodes); got node_rank {self.node_rank}, nnodes {self.nnodes}.")
        if self.world_size % self.nnodes:
            raise ValueError(f"nnodes ({self.nnodes}) must divide tensor_parallel_size x pipeline_parallel_size "
                             f"({self.world_size}).")
        if self.nnodes > 1 and self.distributed_master_port is None:
            raise ValueError("distributed_master_port (--master-port) is required with nnodes > 1: every node "
                             "must know where node 0's rendezvous listens.")
        if self.world_size > 1 and self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device {self.device!r} names one GPU; with tensor/pipeline parallelism rank r "
                             "runs on cuda:r (give device='cuda').")
        for name in ("max_model_len", "max_num_batched_tokens", "kv_cache_memory_bytes",
                     "num_gpu_blocks_override"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}.")
        if self.swap_space < 0:
            raise ValueError(f"swap_space must be non-negative (GiB), got {self.swap_space}.")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                             f"got {self.kv_cache_dtype!r}.")
        if self.max_logprobs < 0:
            raise ValueError(f"max_logprobs must be non-negative, got {self.max_logprobs}.")
        if self.async_scheduling and self.world_size > 1:
            raise ValueError("async_scheduling needs tensor_parallel_size x pipeline_parallel_size = 1, got "
                             f"{self.world_size}: the workers would need each step's sampled ids.")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def ranks_per_node(self) -> int:
        return self.world_size // self.nnodes

    # What every rank of a tensor/pipeline parallel engine must agree on (the model path may differ
    # from machine to machine; everything that shapes the weights, the cache or the plans may not).
    _SHARED_BY_ALL_RANKS = ("dtype", "load_format", "tensor_parallel_size", "pipeline_parallel_size", "nnodes",
                            "block_size", "max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching",
                            "enable_chunked_prefill", "enforce_eager", "kv_cache_memory_bytes",
                            "num_gpu_blocks_override", "gpu_memory_utilization", "swap_space", "kv_cache_dtype",
                            "seed", "distributed_timeout_seconds")

    def settings_shared_by_all_ranks(self, max_model_len: int) -> dict:
        settings = {name: getattr(self, name) for name in self._SHARED_BY_ALL_RANKS}
        settings.update(max_model_len=max_model_len, device_type="cpu" if self.resolved_device() == "cpu" else "cuda")
        return settings

    def resolved_model(self) -> str:
        """The model path; the default model when none was given."""
        if self.model is not None:
            return self.model
        from fastpage.model_loader.default_model import default_model_path

        return default_model_path()

    def resolved_max_model_len(self, model_max_len: int) -> int:
        """max_model_len, defaulting to the model's context length; ValueError beyond it."""
        max_model_len = self.max_model_len or model_max_len
        if max_model_len > model_max_len:
            raise ValueError(f"max_model_len ({max_model_len}) is larger than the model's context length "
                             f"({model_max_len}).")
        return max_model_len

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def engine_config(self, max_model_len: int):
        """The C++ EngineConfig for a model whose context is `max_model_len` tokens (the C++ side turns
        byte budgets into block counts)."""
        from fastpage import _C

        config = _C.EngineConfig()
        config.block_size = self.block_size
        config.gpu_memory_utilization = self.gpu_memory_utilization
        config.max_num_seqs = self.max_num_seqs
        config.max_model_len = max_model_len
        config.enable_prefix_caching = self.enable_prefix_caching
        config.enable_chunked_prefill = self.enable_chunked_prefill
        config.enforce_eager = self.enforce_eager
        config.seed = self.seed
        config.max_logprobs = self.max_logprobs
        config.async_scheduling = self.async_scheduling
        batched = self.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS
        if not self.enable_chunked_prefill:
            batched = max(batched, max_model_len)  # a whole prompt must fit in one step
        config.max_num_batched_tokens = batched
        if self.num_gpu_blocks_override is not None:
            config.num_gpu_blocks = self.num_gpu_blocks_override
        if self.kv_cache_memory_bytes is not None:
            config.kv_cache_memory_bytes = self.kv_cache_memory_bytes
        config.swap_space_bytes = int(self.swap_space * GIB)
        config.kv_cache_dtype = _C.KVCacheDtype.Auto if self.kv_cache_dtype == "auto" else _C.KVCacheDtype.Fp8E4M3
        return config

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser, model_positional: bool = False) -> argparse.ArgumentParser:
        """Adds vLLM's flags (--max-model-len, ...). With model_positional, MODEL is an optional
        positional argument (`fastpage serve MODEL`); --model works either way."""
        defaults = EngineArgs()
        if model_positional:
            parser.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                                help="HF model directory or .gguf file (default: the bundled model)")
        parser.add_argument("--model", default=None, help="HF model directory or .gguf file")
        parser.add_argument("--tokenizer", default=None, help="tokenizer directory or .gguf (default: the model's)")
        parser.add_argument("--dtype", default=defaults.dtype,
                            choices=["auto", "float32", "float", "bfloat16", "float16", "half"])
        parser.add_argument("--load-format", default=defaults.load_format, choices=["auto", "dummy"],
                            help="dummy: random weights in the model's shapes (config.json only)")
        parser.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
        parser.add_argument("--gpu-memory-utilization", type=float, default=defaults.gpu_memory_utilization)
        parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=defaults.tensor_parallel_size)
        parser.add_argument("--pipeline-parallel-size", "-pp", type=int, default=defaults.pipeline_parallel_size)
        parser.add_argument("--nnodes", type=int, default=defaults.nnodes,
                            help="machines the tensor x pipeline parallel ranks are spread over")
        parser.add_argument("--node-rank", type=int, default=defaults.node_rank,
                            help="this machine's index; node 0 serves, the others run workers only")
        parser.add_argument("--master-addr", dest="distributed_master_addr", default=defaults.distributed_master_addr,
                            help="node 0's address, where the ranks meet")
        parser.add_argument("--master-port", dest="distributed_master_port", type=int, default=None,
                            help="node 0's rendezvous port (default: a free one; required with --nnodes > 1)")
        parser.add_argument("--distributed-timeout-seconds", type=float,
                            default=defaults.distributed_timeout_seconds,
                            help="a rank that hangs inside a step fails the step after this long")
        parser.add_argument("--max-num-seqs", type=int, default=defaults.max_num_seqs)
        parser.add_argument("--max-num-batched-tokens", type=int, default=None)
        parser.add_argument("--block-size", type=int, default=defaults.block_size, choices=[8, 16, 32])
        parser.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                            default=defaults.enable_prefix_caching)
        parser.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction,
                            default=defaults.enable_chunked_prefill)
        parser.add_argument("--swap-space", type=float, default=defaults.swap_space,
                            help="GiB of host memory per GPU for swapped-out KV blocks")
        parser.add_argument("--kv-cache-dtype", default=defaults.kv_cache_dtype, choices=list(KV_CACHE_DTYPES),
                            help="KV-cache element type: auto (the model dtype) or fp8 (float8_e4m3fn, half "
                                 "the bytes of bf16, scales 1.0)")
        parser.add_argument("--enforce-eager", action="store_true")
        parser.add_argument("--seed", type=int, default=defaults.seed)
        parser.add_argument("--kv-cache-memory-bytes", type=int, default=None,
                            help="KV-cache size in bytes (instead of --gpu-memory-utilization; on CPU, "
                                 "the default is 1 GiB)")
        parser.add_argument("--num-gpu-blocks-override", type=int, default=None)
        parser.add_argument("--max-logprobs", type=int, default=defaults.max_logprobs)
        parser.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction,
                            default=defaults.async_scheduling,
                            help="overlap the host's turn with the GPU step: outputs come one step later "
                                 "(default: on for CUDA with one rank)")
        parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
        parser.add_argument("--structured-outputs-config", default=None,
                            help='JSON, e.g. \'{"backend": "xgrammar", "disable_any_whitespace": false, '
                                 '"compile_timeout_s": 30}\' (backend: auto or xgrammar)')
        return parser

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> EngineArgs:
        values = {field.name: getattr(args, field.name) for field in dataclasses.fields(cls)
                  if hasattr(args, field.name)}
        if getattr(args, "model_tag", None) is not None:
            if values.get("model") not in (None, args.model_tag):
                raise ValueError(f"model given twice: {args.model_tag!r} and --model {values['model']!r}.")
            values["model"] = args.model_tag
        return cls(**values)
