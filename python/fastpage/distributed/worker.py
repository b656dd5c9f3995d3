"""A tensor / pipeline parallel worker process (ranks 1..world-1): `python -m fastpage.distributed.worker --config JSON`.

Started by rank 0 (fastpage.distributed.launcher) with a WorkerSpec. Joins the process groups, loads
only its own shard, and runs fastpage::Worker until rank 0 sends shutdown. Exits non-zero when a
collective fails (rank 0 or another rank died), and on its own when its parent process goes away.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from fastpage import _C
from fastpage.distributed.launcher import WorkerSpec, device_for_rank
from fastpage.distributed.process_groups import init_process_groups
from fastpage.engine_args import EngineArgs
from fastpage.model_loader import load_model
from fastpage.parent_watch import exit_when_orphaned


def run_worker(spec: WorkerSpec) -> None:
    args = EngineArgs(**spec.engine_args)
    device = device_for_rank(args.resolved_device(), spec.local_rank)
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    if device != "cpu":
        torch.cuda.set_device(device)  # NCCL and the kernels' current stream follow the current device
    parallel = init_process_groups(spec.rank, args.tensor_parallel_size, args.pipeline_parallel_size,
                                   spec.master_addr, spec.master_port, "cpu" if device == "cpu" else "cuda",
                                   args.distributed_timeout_seconds,
                                   args.settings_shared_by_all_ranks(spec.max_model_len))
    loaded = load_model(args.model, dtype=args.dtype, device=device, load_format=args.load_format,
                        parallel=parallel)
    config = args.engine_config(spec.max_model_len)
    config.parallel = parallel
    dtype = next(iter(loaded.weights.values())).dtype  # every rank holds at least one layer
    worker = _C.Worker(loaded.model_config, config, loaded.weights, device, dtype)
    del loaded
    worker.run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fastpage.distributed.worker", description=__doc__)
    parser.add_argument("--config", required=True, help="WorkerSpec as JSON")
    spec = WorkerSpec.from_json(parser.parse_args(argv).config)
    exit_when_orphaned(spec.parent_pid)
    code = 0
    try:
        run_worker(spec)
    except Exception as e:  # noqa: BLE001  (reported to stderr; rank 0 sees the exit code)
        print(f"fastpage worker rank {spec.rank}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        code = 1
    sys.stdout.flush()
    # Nothing to tear down (the process groups die with the process): skip the interpreter's slow
    # teardown, which can also block on a group whose peer is gone.
    os._exit(code)


if __name__ == "__main__":
    main()
