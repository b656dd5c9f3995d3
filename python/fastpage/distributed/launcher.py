"""Rank 0's side of tensor / pipeline parallelism: the worker processes (ranks 1..world-1) started
as `python -m fastpage.distributed.worker --config JSON`, watched, and reaped.

A watcher thread polls the workers; when one exits unasked, the runtime records why and kills the
others, which breaks every connection rank 0 has, so a step blocked in a collective fails within
moments instead of waiting out a timeout. LLMEngine then raises RuntimeError for that step and every
later one (see LLMEngine.check_health).

Each node runs world / nnodes consecutive ranks; local rank r runs on cuda:r (GPU) or the CPU with
cores / ranks-per-node threads. Node 0 is rank 0's (ParallelRuntime starts its other ranks); node
k > 0 runs `run_worker_node`, which starts that node's ranks and waits for them. All of them meet at
node 0's distributed_master_addr:distributed_master_port.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time

import torch

from fastpage import _C
from fastpage.distributed.process_groups import destroy_process_groups, init_process_groups
from fastpage.engine_args import EngineArgs

_POLL_SECONDS = 0.1


@dataclasses.dataclass
class WorkerSpec:
    """Everything a worker process needs, as JSON on its command line (no pickle)."""

    engine_args: dict
    max_model_len: int
    rank: int
    local_rank: int  # on its node: picks the GPU
    master_addr: str
    master_port: int
    num_threads: int  # torch intra-op threads on CPU; 0 leaves torch's default
    parent_pid: int

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        return cls(**json.loads(text))


def device_for_rank(device: str, local_rank: int) -> str:
    """cuda:{local_rank} on GPUs, cpu otherwise."""
    return "cpu" if device == "cpu" else f"cuda:{local_rank}"


def threads_per_rank(device: str, local_world_size: int) -> int:
    if device != "cpu":
        return 0
    return max(1, len(os.sched_getaffinity(0)) // local_world_size)


def free_port(addr: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def spawn_workers(args: EngineArgs, max_model_len: int, device: str, ranks: range,
                  master_port: int) -> dict[int, subprocess.Popen]:
    """Starts `python -m fastpage.distributed.worker` for each of `ranks` (all on this node); killed at exit."""
    num_threads = threads_per_rank(device, args.ranks_per_node)
    worker_args = dataclasses.asdict(args)
    workers = {}
    for rank in ranks:
        spec = WorkerSpec(engine_args=worker_args, max_model_len=max_model_len, rank=rank,
                          local_rank=rank % args.ranks_per_node, master_addr=args.distributed_master_addr,
                          master_port=master_port, num_threads=num_threads, parent_pid=os.getpid())
        workers[rank] = subprocess.Popen([sys.executable, "-m", "fastpage.distributed.worker", "--config", spec.to_json()],
                                         env=_worker_env())
    atexit.register(_kill, list(workers.values()))
    return workers


def run_worker_node(args: EngineArgs) -> int:
    """Node k > 0 of a multi-node launch (`fastpage serve --nnodes N --node-rank K`): runs this node's
    ranks, no engine and no server, until they exit. Returns 0 when all ended cleanly (rank 0 shut
    down), 1 as soon as one fails (the others are killed then)."""
    from fastpage.model_loader import read_model_config

    args = dataclasses.replace(args, model=args.resolved_model())
    _, model_max_len = read_model_config(args.model)
    max_model_len, device = args.resolved_max_model_len(model_max_len), args.resolved_device()
    first = args.node_rank * args.ranks_per_node
    workers = spawn_workers(args, max_model_len, device, range(first, first + args.ranks_per_node),
                            args.distributed_master_port)
    try:
        while True:
            codes = {rank: proc.poll() for rank, proc in workers.items()}
            failed = {rank: code for rank, code in codes.items() if code not in (None, 0)}
            if failed:
                print(f"fastpage node {args.node_rank}: worker exit codes {failed}", file=sys.stderr, flush=True)
                return 1
            if all(code == 0 for code in codes.values()):
                return 0
            time.sleep(_POLL_SECONDS)
    finally:
        _kill(list(workers.values()))


class ParallelRuntime:
    """Started by rank 0 before it loads its own shard; `parallel_config` is rank 0's. Starts the
    other ranks of node 0; the other nodes start theirs (run_worker_node)."""

    def __init__(self, args: EngineArgs, max_model_len: int, device: str):
        tp, pp = args.tensor_parallel_size, args.pipeline_parallel_size
        master_addr = args.distributed_master_addr
        master_port = args.distributed_master_port or free_port(master_addr)
        self.failure: str | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._num_threads = threads_per_rank(device, args.ranks_per_node)
        self._saved_threads = torch.get_num_threads()
        self.workers = spawn_workers(args, max_model_len, device, range(1, args.ranks_per_node), master_port)
        self._watcher = threading.Thread(target=self._watch, name="fastpage-worker-watcher", daemon=True)
        self._watcher.start()
        try:
            if self._num_threads:
                torch.set_num_threads(self._num_threads)
            self.parallel_config: _C.ParallelConfig = init_process_groups(
                0, tp, pp, master_addr, master_port, "cpu" if device == "cpu" else "cuda",
                args.distributed_timeout_seconds, args.settings_shared_by_all_ranks(max_model_len),
                check_workers=self.check)
        except BaseException:
            self.shutdown()
            raise

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.workers.values()]

    def check(self) -> None:
        """RuntimeError when a worker has failed (the engine cannot step any more)."""
        if self.failure is not None:
            raise RuntimeError(f"fastpage: the parallel engine is dead: {self.failure}")

    def fail(self, reason: str) -> None:
        """Records the first failure and kills every worker (so rank 0's collectives stop waiting)."""
        with self._lock:
            if self.failure is None:
                self.failure = reason
        _kill(list(self.workers.values()))

    def stop_watching(self) -> None:
        """Before a deliberate shutdown: workers exiting from now on are not failures."""
        self._stopping.set()

    def shutdown(self, grace_seconds: float = 10.0) -> None:
        """Waits for the workers to exit (the Engine's destructor told them to), kills any left, and
        tears down the process groups. Idempotent."""
        self._stopping.set()
        for proc in self.workers.values():
            try:
                proc.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                break
        _kill(list(self.workers.values()))
        atexit.unregister(_kill)
        if self._watcher.is_alive() and self._watcher is not threading.current_thread():
            self._watcher.join()
        destroy_process_groups()
        torch.set_num_threads(self._saved_threads)

    def _watch(self) -> None:
        while not self._stopping.wait(_POLL_SECONDS):
            for rank, proc in self.workers.items():
                code = proc.poll()
                if code is not None and not self._stopping.is_set():
                    self.fail(f"worker rank {rank} (pid {proc.pid}) exited with code {code}")
                    return


def _kill(procs: list[subprocess.Popen], grace_seconds: float = 5.0) -> None:
    """SIGTERM every live process, SIGKILL what is left after the grace period, and reap them all."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _worker_env() -> dict[str, str]:
    """The parent's environment, with this fastpage package importable in the child."""
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env
