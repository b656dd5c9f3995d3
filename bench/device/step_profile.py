"""Engine steps under torch.profiler, summarized: GPU time per step by kernel (graph replays report
their kernels too), the GPU's idle time inside and between steps, and the C++ step's named host
phases (fastpage::schedule, ::execute, ::sample, ... in engine.cpp and model_runner.cpp)."""

from __future__ import annotations

import re
import time

import torch


def short_kernel_name(name: str) -> str:
    """'void fastpage::cuda::small_batch_linear_kernel<__nv_bfloat16, 1>(...)' -> 'small_batch_linear_kernel<...>'."""
    name = re.sub(r"^void ", "", name)
    base = re.split(r"[<(]", name, maxsplit=1)[0].split("::")[-1]
    return base + ("<...>" if "<" in name.split("(")[0] else "")


def profile_steps(engine, num_steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(num_steps):
            engine.step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / num_steps
    kernels: dict[str, float] = {}
    host_phases: dict[str, float] = {}
    spans = []
    for event in prof.events():
        if event.name.startswith("fastpage::"):
            # The host range; its GPU-side twin (a user annotation on the device timeline) is skipped.
            if event.device_type.name == "CPU":
                host_phases[event.name] = host_phases.get(event.name, 0.0) + event.cpu_time_total / num_steps
        elif event.device_type.name == "CUDA":
            name = short_kernel_name(event.name)
            kernels[name] = kernels.get(name, 0.0) + event.device_time / num_steps
            spans.append((event.time_range.start, event.time_range.end))
    # Idle GPU time between kernels: short gaps are launch/ramp gaps inside a step, long ones (> 20 us)
    # the host's turn between steps.
    spans.sort()
    inside = between = 0.0
    busy_until = spans[0][1] if spans else 0.0
    for begin, end in spans[1:]:
        gap = begin - busy_until
        if gap > 20:
            between += gap
        elif gap > 0:
            inside += gap
        busy_until = max(busy_until, end)
    top = dict(sorted(kernels.items(), key=lambda kv: -kv[1])[:20])
    return dict(kind="profile", step_wall_ms=wall * 1e3, gpu_busy_ms_per_step=sum(kernels.values()) / 1e3,
                gpu_gaps_inside_steps_ms_per_step=inside / 1e3 / num_steps,
                gpu_idle_between_steps_ms_per_step=between / 1e3 / num_steps,
                host_phases_us_per_step=host_phases, top_kernels_us_per_step=top)
