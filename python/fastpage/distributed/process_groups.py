"""torch.distributed process groups for tensor / pipeline parallelism.

Every rank calls init_process_groups with the same sizes; it returns this rank's _C.ParallelConfig,
which names the groups for C++ (ProcessGroup.group_name, resolved there with
c10d::resolve_process_group):
- world: all ranks, Gloo, rank 0's step plans and shutdown. Its timeout is very long on purpose: idle
  workers wait in it for the next step for as long as the server is idle.
- tp: the ranks of one pipeline stage; pp: the ranks with one tp_rank, one per stage. These carry
  activations (NCCL on CUDA, Gloo on CPU) with `timeout_seconds`: a rank that hangs inside a step
  makes its peers' collectives fail after that long, and the failure surfaces as a RuntimeError on
  rank 0. A rank that dies breaks its connections, which fails its peers' collectives at once.

Global rank = pp_rank * tp + tp_rank; rank 0 is stage 0, tp_rank 0: the engine process.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable

import torch.distributed as dist

from fastpage import _C

# Long enough to be "forever" for an idle server, short enough for Gloo's millisecond counters.
CONTROL_TIMEOUT = datetime.timedelta(days=365)
# How long workers may take to start (import torch, initialise CUDA) and reach the rendezvous.
RENDEZVOUS_TIMEOUT = datetime.timedelta(minutes=10)
_JOINED_KEY = "fastpage/joined"
_SETTINGS_KEY = "fastpage/settings"  # rank 0's engine settings, JSON
_MISMATCH_KEY = "fastpage/mismatch"  # why a rank refused to join


def init_process_groups(rank: int, tensor_parallel_size: int, pipeline_parallel_size: int, master_addr: str,
                        master_port: int, device_type: str, timeout_seconds: float,
                        settings: dict, check_workers: Callable[[], None] | None = None) -> _C.ParallelConfig:
    """Rendezvous at master_addr:master_port (rank 0 hosts the TCP store there), then the groups.
    Rank 0 publishes its engine `settings` (EngineArgs.settings_shared_by_all_ranks); a rank started
    with others (another node's flags) refuses to join with a ValueError naming the fields, and rank 0
    raises the same message. Rank 0 waits until every other rank has joined the store, calling
    `check_workers` (which raises when a worker process died) while it waits, so a worker that fails
    to start is an error at once."""
    tp, pp = tensor_parallel_size, pipeline_parallel_size
    world_size = tp * pp
    timeout = datetime.timedelta(seconds=timeout_seconds)
    data_backend = "nccl" if device_type == "cuda" else "gloo"
    store = dist.TCPStore(master_addr, master_port, world_size, is_master=rank == 0, timeout=RENDEZVOUS_TIMEOUT,
                          wait_for_workers=False)
    if rank == 0:
        store.set(_SETTINGS_KEY, json.dumps(settings))
        deadline = time.monotonic() + RENDEZVOUS_TIMEOUT.total_seconds()
        while store.add(_JOINED_KEY, 0) < world_size - 1:
            if store.check([_MISMATCH_KEY]):
                raise ValueError(store.get(_MISMATCH_KEY).decode())
            if check_workers is not None:
                check_workers()
            if time.monotonic() > deadline:
                raise RuntimeError(f"fastpage: workers did not reach the rendezvous within {RENDEZVOUS_TIMEOUT}")
            time.sleep(0.05)
    else:
        expected = json.loads(store.get(_SETTINGS_KEY))
        differ = [f"{name}={settings.get(name)!r} (rank 0: {value!r})" for name, value in expected.items()
                  if settings.get(name) != value]
        if differ:
            message = (f"fastpage: rank {rank} was started with other engine settings than rank 0: "
                       f"{', '.join(differ)}. Start every node with the same flags.")
            store.set(_MISMATCH_KEY, message)
            raise ValueError(message)
        store.add(_JOINED_KEY, 1)
    # The default group only completes the rendezvous; C++ uses the groups below.
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
    config = _C.ParallelConfig()
    config.tensor_parallel_size, config.pipeline_parallel_size, config.rank = tp, pp, rank
    config.timeout_seconds = timeout_seconds
    config.world_group = dist.new_group(list(range(world_size)), timeout=CONTROL_TIMEOUT,
                                        backend="gloo").group_name
    if tp > 1:
        config.tp_group = _own_group(rank, [[stage * tp + t for t in range(tp)] for stage in range(pp)], timeout,
                                     data_backend)
    if pp > 1:
        config.pp_group = _own_group(rank, [[stage * tp + t for stage in range(pp)] for t in range(tp)], timeout,
                                     data_backend)
    return config


def _own_group(rank: int, partition: list[list[int]], timeout: datetime.timedelta, backend: str) -> str:
    """Creates one group per rank list (new_group is collective: every rank creates every group, in
    the same order) and returns the name of the one that holds `rank` (new_group hands the others a
    non-member placeholder)."""
    groups = [dist.new_group(ranks, timeout=timeout, backend=backend) for ranks in partition]
    return next(group.group_name for group, ranks in zip(groups, partition) if rank in ranks)


def destroy_process_groups() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
