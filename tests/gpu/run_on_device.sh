#!/usr/bin/env bash
# On the GPU machine: build fastpage with the CUDA kernels, run the kernel tests (shared CPU/CUDA
# tests + tests/gpu) and the kernel microbenchmarks. Logs and JSON go under $OUT.
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

# The image's default compiler (/opt/gcc) links libstdc++ statically into shared libraries: a second
# libstdc++ inside libfastpage.so next to the system one torch uses crashes the first formatted error
# message. Build with the system g++ (whose libstdc++ is the one loaded at run time) where present.
if [ -x /usr/bin/g++ ]; then export CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++; fi
echo "compiler: ${CXX:-default}; /opt/gcc configured with: $(/opt/gcc/bin/g++ -v 2>&1 | grep -o -- '--with-static[^ ]*\|--enable-static[^ ]*' | tr '\n' ' ')"
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

echo "== error-path probe: does a TORCH_CHECK failure in libfastpage raise (each in its own process)?"
{
  c++ --version | head -1
  timeout 60 python3 -c "
import torch, fastpage
maps = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libstdc++' in l or 'libgomp' in l})
print('loaded:', maps)
try:
    torch.ops.fastpage.rms_norm(torch.randn(3, 8), torch.randn(7), 1e-6)
except RuntimeError as e:
    print('CPU op error raised RuntimeError:', str(e).splitlines()[0])
"
  echo "CPU op error probe rc=$?"
  # Which objects carry their own (weak) copies of libstdc++'s stream inserters?
  for o in $(find "$BUILD" -name '*.o'); do
    n=$(nm -C --defined-only "$o" 2>/dev/null | grep -c "basic_ostream<char, std::char_traits<char> >::_M_insert<long>")
    [ "$n" != 0 ] && echo "defines ostream::_M_insert<long>: $o"
  done
  nm -C -D --defined-only "$BUILD/libfastpage.so" | grep -c "std::basic_ostream" | sed 's/^/libfastpage exported basic_ostream symbols: /'
  nm -C -D --defined-only "$BUILD/libfastpage.so" | grep -c "codecvt" | sed 's/^/libfastpage exported codecvt symbols: /'
  ldd "$BUILD/libfastpage.so" | grep -i "stdc\|gomp\|cudart\|not found"
  echo "link line (non-object arguments):"
  ninja -C "$BUILD" -t commands libfastpage.so | tail -1 | tr ' ' '\n' | grep -v '\.o$' | grep -v '^$' | head -30
} 2>&1 | tail -60 | tee "$OUT/error_probe.txt"

for t in "test_bad_inputs_raise_clear_errors[cpu]" "test_bad_inputs_raise_clear_errors[cuda]" \
         "test_bad_block_mappings_raise[cpu]" "test_bad_block_mappings_raise[cuda]"; do
  timeout 60 python3 -m pytest -q -p no:cacheprovider "tests/test_kernels.py::$t" 2>&1 | grep -E "Error|passed|failed|DID NOT" | tail -3
  echo "$t rc=${PIPESTATUS[0]}"
done 2>&1 | tee -a "$OUT/error_probe.txt"

echo "== tests (the bad-input tests of tests/test_kernels.py run separately: see the probe)"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py \
  --deselect "tests/test_kernels.py::test_bad_inputs_raise_clear_errors[cpu]" \
  --deselect "tests/test_kernels.py::test_bad_inputs_raise_clear_errors[cuda]" \
  --deselect "tests/test_kernels.py::test_bad_block_mappings_raise[cpu]" \
  --deselect "tests/test_kernels.py::test_bad_block_mappings_raise[cuda]" -rf 2>&1 | tee "$OUT/pytest.log" | tail -8
shared_rc=${PIPESTATUS[0]}
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_kernels.py -rf 2>&1 | tee "$OUT/pytest_gpu.log" | tail -12
gpu_rc=${PIPESTATUS[0]}
tests_rc=$(( shared_rc != 0 || gpu_rc != 0 ))

echo "== kernel benchmarks"
timeout 240 python3 bench/device/kernel_bench.py --out "$OUT/kernel_bench.json" 2>&1 | tee "$OUT/bench.log" | tail -20
bench_rc=${PIPESTATUS[0]}

echo "tests rc=$tests_rc bench rc=$bench_rc total $(( $(date +%s) - start )) s"
exit $(( tests_rc != 0 || bench_rc != 0 ))
