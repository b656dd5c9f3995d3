"""What the kernel op tests share: the devices to run on, tolerances per dtype against a float32
reference, and a per-test seeded generator (tests/test_kernels.py, tests/test_fp8_kv_cache_ops.py)."""

import zlib

import pytest
import torch

import fastpage  # noqa: F401  (registers torch.ops.fastpage)

CUDA_KERNELS = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    "fastpage::paged_attention", "CUDA")
DEVICES = ["cpu"] + ([pytest.param("cuda", marks=pytest.mark.skipif(
    not CUDA_KERNELS, reason="fastpage was built without its CUDA kernels"))]
    if torch.cuda.is_available() else [])
# Tolerances against a float32 reference computed from the same (rounded) inputs.
TOL = {
    torch.float32: dict(atol=2e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


@pytest.fixture
def gen(request):
    """A generator seeded from the test's id: different inputs for every case, reproducible."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
