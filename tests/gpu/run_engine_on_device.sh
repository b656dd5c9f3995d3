#!/usr/bin/env bash
# On the GPU machine: build fastpage with CUDA, run the end-to-end GPU engine tests against HF
# transformers, then the throughput and latency benchmarks (fastpage and HF in the same run).
# Logs and JSON go under $OUT. Usage, from the repository root: bash tests/gpu/run_engine_on_device.sh
# STAGES (default "test throughput latency") picks what runs after the build; THROUGHPUT_ARGS
# go to bench/device/throughput_gpu.py (e.g. --skip-hf); stage "tp" runs bench/device/tp_gpu.py
# $TP_ARGS (tensor-parallel parity and throughput; on a multi-GPU machine).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-build/gpu-out}
BUILD=${BUILD:-build/gpu}
STAGES=${STAGES:-test throughput latency}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=python TOKENIZERS_PARALLELISM=false
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start )) s"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1 | tee "$OUT/env.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" 2>&1 | tee -a "$OUT/env.txt"

# The system g++: the image's /opt/gcc links a static libstdc++ into libfastpage.so (see run_on_device.sh).
if [ -x /usr/bin/g++ ]; then export CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++; fi
echo "== build ($(nproc) cores)"
if ! { cmake -S . -B "$BUILD" -G Ninja -DFASTPAGE_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
         -DPython_EXECUTABLE="$(command -v python3)" -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" &&
       timeout 360 cmake --build "$BUILD" -j"$(nproc)"; } >"$OUT/build.log" 2>&1; then
  grep -n "error" "$OUT/build.log" | head -30
  tail -30 "$OUT/build.log"
  echo "BUILD FAILED after $(elapsed)"
  exit 1
fi
echo "built after $(elapsed)"

rc=0
for stage in $STAGES; do
  case $stage in
    test)
      timeout 180 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_engine.py -rf 2>&1 |
        tee "$OUT/test_gpu_engine.log" | grep -E "tokens|prompt|KV cache|passed|failed|Error|assert" | tail -40
      ;;
    tp)
      timeout 560 python3 bench/device/tp_gpu.py --out "$OUT/tp_gpu.json" ${TP_ARGS:-} 2>&1 | tee "$OUT/tp.log" |
        grep -v -E "^(Loading|Writing)" | tail -40
      ;;
    latency)
      timeout 220 python3 bench/device/latency_gpu.py --out "$OUT/latency_gpu.json" 2>&1 | tee "$OUT/latency.log" | tail -8
      ;;
    throughput)
      timeout 180 python3 bench/device/throughput_gpu.py --out "$OUT/throughput_gpu.json" ${THROUGHPUT_ARGS:-} 2>&1 |
        tee "$OUT/throughput.log" | tail -8
      ;;
  esac
  stage_rc=${PIPESTATUS[0]}
  echo "== $stage rc=$stage_rc after $(elapsed)"
  [ "$stage_rc" != 0 ] && rc=1
done
exit $rc
