#!/usr/bin/env bash
# On the GPU machine: build fastpage with CUDA, run the end-to-end GPU engine tests against HF
# transformers, then the throughput and latency benchmarks (fastpage and HF in the same run).
# Logs and JSON go under $OUT. Usage, from the repository root: bash tests/gpu/run_engine_on_device.sh
# STAGES (default "test throughput latency") picks what runs after the build, in order:
#   kernels     tests/test_kernels.py (CPU and CUDA, bad inputs included), tests/gpu/test_cuda_kernels.py
#               and tests/gpu/test_gpu_sampler.py
#   test        tests/gpu/test_gpu_engine.py (end to end against HF)
#   linear      bench/device/linear_bench.py (small_batch_linear vs cuBLAS, sample_tokens)
#   throughput  bench/device/throughput_gpu.py $THROUGHPUT_ARGS (e.g. --skip-hf)
#   latency     bench/device/latency_gpu.py $LATENCY_ARGS (e.g. --profile --skip-hf)
#   llama1000   bench/device/throughput_llama_gpu.py $LLAMA_ARGS (e.g. --num-requests 300)
#   tp          bench/device/tp_gpu.py $TP_ARGS (tensor-parallel parity and throughput; several GPUs)
#   attention   bench/device/kernel_bench.py (attention and elementwise kernels vs copy bandwidth and torch)
#   profile     bench/device/profile_llama_steps.py $PROFILE_ARGS (a prefill and decode steps of the
#               Llama-3-8B 1000x1000 workload under torch.profiler, e.g. --kv-cache-dtype fp8)
#   structured  bench/structured.py $STRUCTURED_ARGS (the throughput workload free and under a JSON
#               schema); needs carry [".device", ".whl"] and the wheels installed first, as serving
#   serving     bench/device/serving_gpu.py $SERVING_ARGS (offline vs the server, streamed and not, e.g.
#               --commit abc1234 --py-spy). Needs carry [".device", ".whl"]: the SmolLM2 tokenizer
#               (bench/device/serving_gpu.py --write-tokenizer) and the server's wheels, installed by the
#               command first: python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#               && export PYTHONPATH=/tmp/site (kept after python/ below)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-build/gpu-out}
BUILD=${BUILD:-build/gpu}
STAGES=${STAGES:-test throughput latency}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=python${PYTHONPATH:+:$PYTHONPATH} TOKENIZERS_PARALLELISM=false
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
    kernels)
      timeout 400 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/gpu/test_cuda_kernels.py \
        tests/gpu/test_gpu_sampler.py -rf 2>&1 | tee "$OUT/test_kernels.log" | tail -25
      ;;
    linear)
      timeout 200 python3 bench/device/linear_bench.py --out "$OUT/linear_bench.json" 2>&1 | tee "$OUT/linear.log" | tail -30
      ;;
    llama1000)
      timeout 560 python3 bench/device/throughput_llama_gpu.py --out "$OUT/throughput_llama.json" ${LLAMA_ARGS:-} 2>&1 |
        tee "$OUT/llama1000.log" | tail -40
      ;;
    test)
      timeout 180 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_engine.py -rf 2>&1 |
        tee "$OUT/test_gpu_engine.log" | grep -E "tokens|prompt|KV cache|passed|failed|Error|assert" | tail -40
      ;;
    tp)
      timeout 560 python3 bench/device/tp_gpu.py --out "$OUT/tp_gpu.json" ${TP_ARGS:-} 2>&1 | tee "$OUT/tp.log" |
        grep -v -E "^(Loading|Writing)" | tail -40
      ;;
    attention)
      timeout 420 python3 bench/device/kernel_bench.py --out "$OUT/kernel_bench.json" 2>&1 | tee "$OUT/attention.log" | tail -40
      ;;
    profile)
      timeout 300 python3 bench/device/profile_llama_steps.py --out "$OUT/profile_llama_steps.json" ${PROFILE_ARGS:-} 2>&1 |
        tee "$OUT/profile.log" | grep -v -E "^(Loading|Writing)" | tail -60
      ;;
    structured)
      timeout 560 python3 bench/structured.py --out "$OUT/structured.json" ${STRUCTURED_ARGS:-} 2>&1 |
        tee "$OUT/structured.log" | grep -v -E "^(Loading|Writing)" | tail -20
      ;;
    latency)
      timeout 300 python3 bench/device/latency_gpu.py --out "$OUT/latency_gpu.json" ${LATENCY_ARGS:-} 2>&1 |
        tee "$OUT/latency.log" | tail -45
      ;;
    serving)
      timeout 480 python3 bench/device/serving_gpu.py --out "$OUT/serving_gpu.json" ${SERVING_ARGS:-} 2>&1 |
        tee "$OUT/serving.log" | grep -v -E "^(Loading|Writing)" | tail -30
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
