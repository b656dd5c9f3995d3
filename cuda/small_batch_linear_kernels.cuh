// y = x @ w.T (+ bias) for decode-sized x (at most kMaxSmallBatchRows rows) in bf16/fp16: a stream
// over the weights, which every decode step reads once. Each warp owns kRowsPerWarp weight rows and
// walks K in 16-byte vectors, kUnroll vectors per row in flight per lane before the first use (the
// loads of all kRowsPerWarp rows are issued together); x is re-read per warp from L1/L2 (it is tiny).
// Weights are loaded with the streaming hint (evict first): they are not reused within the step.
// The gated-MLP variant (SmallBatchEpilogue::SiluAndMul) gives warp j the gate row j and the up row
// I + j of w [2I, K] and writes silu_and_mul's value for output column j: the activation is computed
// once per output, and the result is bit-identical to this kernel followed by silu_and_mul.
#pragma once
#include <cstdint>

#include "activation_kernels.cuh"
#include "common.cuh"

namespace fastpage::cuda {

// Above 4 rows cuBLAS reads faster (H100, bench/results/linear_bench_h100.json: at 8 rows this kernel
// reached 0.52-0.82 of copy bandwidth, cuBLAS 0.75-0.93).
constexpr int kMaxSmallBatchRows = 4;
constexpr int kLinearWarps = 4;  // per thread block
constexpr int kRowsPerWarp = 2;
constexpr int kUnroll = 4;

template <typename T>
__device__ __forceinline__ void dot8_accumulate(const int4& w, const int4& x, float& acc);

template <>
__device__ __forceinline__ void dot8_accumulate<__nv_bfloat16>(const int4& w, const int4& x, float& acc) {
  const auto* wp = reinterpret_cast<const __nv_bfloat162*>(&w);
  const auto* xp = reinterpret_cast<const __nv_bfloat162*>(&x);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 a = __bfloat1622float2(wp[j]), b = __bfloat1622float2(xp[j]);
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
  }
}

template <>
__device__ __forceinline__ void dot8_accumulate<__half>(const int4& w, const int4& x, float& acc) {
  const auto* wp = reinterpret_cast<const __half2*>(&w);
  const auto* xp = reinterpret_cast<const __half2*>(&x);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 a = __half22float2(wp[j]), b = __half22float2(xp[j]);
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
  }
}

enum class SmallBatchEpilogue { Plain, SiluAndMul };

// Plain: x [M, K], w [N, K], out [M, N], warp w owns rows kRowsPerWarp * w + r.
// SiluAndMul: x [M, K], w [2N, K] (gate rows, then up rows), out [M, N], warp j owns rows j, N + j.
// All contiguous, K % 8 == 0, 16-byte aligned.
template <typename T, int M, SmallBatchEpilogue E>
__global__ void __launch_bounds__(kLinearWarps * 32) small_batch_linear_kernel(
    T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, int n,
    int k) {
  static_assert(E == SmallBatchEpilogue::Plain || kRowsPerWarp == 2, "SiluAndMul pairs a gate and an up row");
  const int lane = threadIdx.x % 32;
  const int warp = blockIdx.x * kLinearWarps + threadIdx.x / 32;
  const int row0 = E == SmallBatchEpilogue::Plain ? warp * kRowsPerWarp : warp;
  if (row0 >= n) return;
  const int num_vecs = k / 8;
  const int4* x_vecs = reinterpret_cast<const int4*>(x);
  const int4* w_rows[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    int64_t row;
    // Plain: a missing last row re-reads row0 and is never written. SiluAndMul: gate row, up row.
    if constexpr (E == SmallBatchEpilogue::Plain) row = row0 + r < n ? row0 + r : row0;
    else row = row0 + static_cast<int64_t>(r) * n;
    w_rows[r] = reinterpret_cast<const int4*>(w + row * k);
  }
  float acc[kRowsPerWarp][M] = {};
  for (int base = lane; base < num_vecs; base += 32 * kUnroll) {
    int4 wv[kRowsPerWarp][kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int v = base + u * 32;
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) wv[r][u] = v < num_vecs ? __ldcs(w_rows[r] + v) : int4{0, 0, 0, 0};
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int v = base + u * 32;
      if (v >= num_vecs) break;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const int4 xv = __ldg(x_vecs + m * num_vecs + v);
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) dot8_accumulate<T>(wv[r][u], xv, acc[r][m]);
      }
    }
  }
  if constexpr (E == SmallBatchEpilogue::Plain) {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const float sum = warp_sum(acc[r][m]);
        if (lane == 0 && row0 + r < n) {
          out[static_cast<int64_t>(m) * n + row0 + r] =
              from_float<T>(bias != nullptr ? sum + to_float(bias[row0 + r]) : sum);
        }
      }
    }
  } else {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      // Rounded to T first, as the gate_up projection's output is before silu_and_mul reads it.
      const T gate = from_float<T>(warp_sum(acc[0][m])), up = from_float<T>(warp_sum(acc[1][m]));
      if (lane == 0) out[static_cast<int64_t>(m) * n + row0] = silu_mul(gate, up);
    }
  }
}

}  // namespace fastpage::cuda
