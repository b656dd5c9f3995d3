// y = x @ w.T (+ bias) for decode-sized x (at most kMaxSmallBatchRows rows) in bf16/fp16: a stream
// over the weights, which every decode step reads once. Each warp owns kRowsPerWarp output rows and
// walks K in 16-byte vectors, kUnroll vectors per row in flight per lane before the first use (the
// loads of all kRowsPerWarp rows are issued together); x is re-read per warp from L1/L2 (it is tiny).
// Weights are loaded with the streaming hint (evict first): they are not reused within the step.
#pragma once
#include <cstdint>

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

// x [M, K], w [N, K], out [M, N], all contiguous, K % 8 == 0, 16-byte aligned.
template <typename T, int M>
__global__ void __launch_bounds__(kLinearWarps * 32) small_batch_linear_kernel(
    T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, int n,
    int k) {
  const int lane = threadIdx.x % 32;
  const int row0 = (blockIdx.x * kLinearWarps + threadIdx.x / 32) * kRowsPerWarp;
  if (row0 >= n) return;
  const int num_vecs = k / 8;
  const int4* x_vecs = reinterpret_cast<const int4*>(x);
  const int4* w_rows[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    // A missing last row re-reads row0 and is never written.
    w_rows[r] = reinterpret_cast<const int4*>(w + static_cast<int64_t>(row0 + r < n ? row0 + r : row0) * k);
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
}

}  // namespace fastpage::cuda
