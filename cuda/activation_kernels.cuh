// SiLU-and-mul (the gated MLP activation): out[t, i] = silu(x[t, i]) * x[t, d + i].
#pragma once
#include "common.cuh"

namespace fastpage::cuda {

// silu rounded to T before the product, matching torch's F.silu(a) * b in T.
template <typename T>
__device__ __forceinline__ T silu_mul(T a, T b) {
  const float x = to_float(a);
  return from_float<T>(to_float(from_float<T>(x / (1.f + __expf(-x)))) * to_float(b));
}

// One thread block per token; VEC elements per access (1 or a 16-byte vector).
template <typename T, int VEC>
__global__ void silu_and_mul_kernel(T* __restrict__ out, const T* __restrict__ in, int64_t in_row_stride,
                                    int64_t out_row_stride, int d) {
  const T* gate = in + blockIdx.x * in_row_stride;
  const T* up = gate + d;
  T* row_out = out + blockIdx.x * out_row_stride;
  for (int i = threadIdx.x * VEC; i < d; i += blockDim.x * VEC) {
    if constexpr (VEC == 1) {
      row_out[i] = silu_mul(gate[i], up[i]);
    } else {
      Vec16<T> a = *reinterpret_cast<const Vec16<T>*>(gate + i);
      const Vec16<T> b = *reinterpret_cast<const Vec16<T>*>(up + i);
#pragma unroll
      for (int j = 0; j < VEC; ++j) a.v[j] = silu_mul(a.v[j], b.v[j]);
      *reinterpret_cast<Vec16<T>*>(row_out + i) = a;
    }
  }
}

}  // namespace fastpage::cuda
