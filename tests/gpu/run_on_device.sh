#!/usr/bin/env bash
# On the GPU machine: build fastpage with the CUDA kernels, run the kernel tests (shared CPU/CUDA
# tests + tests/gpu) and the kernel microbenchmarks. Logs, junit XML and JSON go under $OUT.
# Usage, from the repository root: bash tests/gpu/run_on_device.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-build/gpu-out}
BUILD=${BUILD:-build/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=python
start=$(date +%s)

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  nvcc --version | tail -2
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  cmake --version | head -1
} 2>&1 | tee "$OUT/env.txt"

echo "== build ($(nproc) cores)"
if ! { cmake -S . -B "$BUILD" -G Ninja -DFASTPAGE_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
         -DPython_EXECUTABLE="$(command -v python3)" -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" &&
       cmake --build "$BUILD" -j"$(nproc)"; } >"$OUT/build.log" 2>&1; then
  grep -n "error\|Error\|CMake Warning" "$OUT/build.log" | head -40
  tail -40 "$OUT/build.log"
  echo "BUILD FAILED after $(( $(date +%s) - start )) s"
  exit 1
fi
echo "built in $(( $(date +%s) - start )) s"

echo "== error probe (each in its own process: a crash must not hide the other results)"
{
  for dev in cpu cuda; do
    timeout 60 python3 -m pytest -q -p no:cacheprovider "tests/test_kernels.py::test_bad_inputs_raise_clear_errors[$dev]" 2>&1 | tail -4
    echo "test_bad_inputs_raise_clear_errors[$dev] rc=${PIPESTATUS[0]}"
  done
  timeout 60 python3 -c "
import torch, fastpage
try:
    torch.ops.fastpage.rms_norm(torch.randn(3, 8), torch.randn(7), 1e-6)
except RuntimeError as e:
    print('positional CPU call raised RuntimeError:', str(e).splitlines()[0])
"
  echo "positional bad call rc=$?"
  timeout 120 cuda-gdb -batch -ex run -ex bt --args python3 -m pytest -q -p no:cacheprovider \
    "tests/test_kernels.py::test_bad_inputs_raise_clear_errors[cpu]" 2>&1 | grep -A25 "SIGSEGV" | head -40
} 2>&1 | tee "$OUT/error_probe.txt"

echo "== tests"
timeout 400 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/gpu/test_cuda_kernels.py \
  --deselect "tests/test_kernels.py::test_bad_inputs_raise_clear_errors[cpu]" \
  --deselect "tests/test_kernels.py::test_bad_inputs_raise_clear_errors[cuda]" \
  --junitxml="$OUT/junit.xml" -rf 2>&1 | tee "$OUT/pytest.log" | grep -v "^\.*\s*\[\s*[0-9]*%\]$" | tail -60
tests_rc=${PIPESTATUS[0]}

echo "== kernel benchmarks"
timeout 240 python3 bench/device/kernel_bench.py --out "$OUT/kernel_bench.json" 2>&1 | tee "$OUT/bench.log" | tail -20
bench_rc=${PIPESTATUS[0]}

echo "tests rc=$tests_rc bench rc=$bench_rc total $(( $(date +%s) - start )) s"
exit $(( tests_rc != 0 || bench_rc != 0 ))
