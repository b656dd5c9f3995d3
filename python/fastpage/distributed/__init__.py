"""Tensor and pipeline parallelism: one process per rank, collectives from C++ over c10d.

- process_groups: torch.distributed groups created alike on every rank; C++ finds them by name.
- launcher: rank 0's side (the engine process): starts ranks 1.. as `python -m fastpage.distributed.worker`,
  watches them, reaps them at shutdown.
- worker: what a worker process runs (`python -m fastpage.distributed.worker`).
"""
