#!/usr/bin/env bash
# Compile-only check of cuda/*.cu for sm_90 on a machine without a GPU (the CPU torch wheel ships
# the ATen/c10 CUDA headers). Prints ptxas resource usage (registers, shared memory, spills).
# Usage: tests/gpu/compile_cuda.sh [file.cu ...]   (default: every cuda/*.cu)
set -euo pipefail
cd "$(dirname "$0")/../.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
ARCH=${ARCH:-sm_90}
TORCH_INC=$(python3 -c "import torch.utils.cpp_extension as e; print(' '.join('-I' + p for p in e.include_paths()))")
ABI=$(python3 -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
OUT_DIR=build/compile_check
mkdir -p "$OUT_DIR"
files=("$@")
[ ${#files[@]} -eq 0 ] && files=(cuda/*.cu)
for f in "${files[@]}"; do
  echo "== $f"
  obj="$OUT_DIR/$(basename "$f" .cu).o"
  rm -f "$obj"
  # C10_CUDA_NO_CMAKE_CONFIGURE_FILE: the CPU wheel lacks c10/cuda/impl/cuda_cmake_macros.h.
  "$NVCC" -c "$f" -o "$obj" -std=c++20 -arch="$ARCH" -O3 \
    --expt-relaxed-constexpr -Xptxas -v -Xcompiler -fPIC -D_GLIBCXX_USE_CXX11_ABI="$ABI" \
    -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE $TORCH_INC -Icpp/include 2>&1 |
    grep -v "^ptxas info    : Compile time\|^ptxas info    : Compiling entry\|^ptxas info    : Function properties\|bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" || true
  test -s "$obj" || { echo "FAILED: $f"; exit 1; }
done
echo "compile check OK (${#files[@]} files, $ARCH)"
