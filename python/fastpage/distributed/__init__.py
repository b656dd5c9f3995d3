"""Tensor and pipeline parallelism: one process per rank, collectives from C++ over c10d.

- process_groups: torch.distributed groups created alike on every rank; C++ finds them by name.
- launcher: rank 0's side (the engine process): starts ranks 1.. as `python -m fastpage.worker`,
  watches them, reaps them at shutdown.
- fastpage.worker (a module of its own): what a worker process runs.
"""
