// RMSNorm kernels: one thread block per row, statistics in float32, two passes over the row
// (the second hits L1/L2). VEC elements per access: 1 or a 16-byte vector.
#pragma once
#include "common.cuh"

namespace fastpage::cuda {

template <typename T, int VEC>
struct RowVec {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ RowVec<T, VEC> load_row_vec(const T* p) {
  if constexpr (VEC == 1) {
    return RowVec<T, 1>{{*p}};
  } else {
    static_assert(VEC * sizeof(T) == 16);
    RowVec<T, VEC> r;
    *reinterpret_cast<uint4*>(r.v) = *reinterpret_cast<const uint4*>(p);
    return r;
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void store_row_vec(T* p, const RowVec<T, VEC>& r) {
  if constexpr (VEC == 1) {
    *p = r.v[0];
  } else {
    *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(r.v);
  }
}

// Rounds the normalized value to T before scaling by the weight, as HF's RMSNorm does.
template <typename T>
__device__ __forceinline__ T scale_normalized(float x, float inv_rms, T weight) {
  return from_float<T>(to_float(from_float<T>(x * inv_rms)) * to_float(weight));
}

// out[row] = in[row] / rms(in[row]) * weight
template <typename T, int VEC>
__global__ void rms_norm_kernel(T* __restrict__ out, const T* __restrict__ in, const T* __restrict__ weight,
                                int64_t in_row_stride, int64_t out_row_stride, int hidden, float eps) {
  const T* row_in = in + blockIdx.x * in_row_stride;
  T* row_out = out + blockIdx.x * out_row_stride;
  float sum_sq = 0.f;
  for (int i = threadIdx.x * VEC; i < hidden; i += blockDim.x * VEC) {
    const auto x = load_row_vec<T, VEC>(row_in + i);
#pragma unroll
    for (int j = 0; j < VEC; ++j) sum_sq += to_float(x.v[j]) * to_float(x.v[j]);
  }
  const float inv_rms = rsqrtf(block_sum(sum_sq) / hidden + eps);
  for (int i = threadIdx.x * VEC; i < hidden; i += blockDim.x * VEC) {
    const auto x = load_row_vec<T, VEC>(row_in + i);
    const auto w = load_row_vec<T, VEC>(weight + i);
    RowVec<T, VEC> y;
#pragma unroll
    for (int j = 0; j < VEC; ++j) y.v[j] = scale_normalized(to_float(x.v[j]), inv_rms, w.v[j]);
    store_row_vec<T, VEC>(row_out + i, y);
  }
}

// In place: residual[row] += x[row] (rounded to T); x[row] = rms_norm(residual[row]) * weight.
template <typename T, int VEC>
__global__ void fused_add_rms_norm_kernel(T* __restrict__ x, T* __restrict__ residual,
                                          const T* __restrict__ weight, int64_t x_row_stride,
                                          int64_t residual_row_stride, int hidden, float eps) {
  T* row_x = x + blockIdx.x * x_row_stride;
  T* row_r = residual + blockIdx.x * residual_row_stride;
  float sum_sq = 0.f;
  for (int i = threadIdx.x * VEC; i < hidden; i += blockDim.x * VEC) {
    const auto a = load_row_vec<T, VEC>(row_x + i);
    auto r = load_row_vec<T, VEC>(row_r + i);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      r.v[j] = from_float<T>(to_float(a.v[j]) + to_float(r.v[j]));
      const float z = to_float(r.v[j]);
      sum_sq += z * z;
    }
    store_row_vec<T, VEC>(row_r + i, r);
  }
  const float inv_rms = rsqrtf(block_sum(sum_sq) / hidden + eps);
  // Each thread reads back only the residual elements it wrote itself.
  for (int i = threadIdx.x * VEC; i < hidden; i += blockDim.x * VEC) {
    const auto r = load_row_vec<T, VEC>(row_r + i);
    const auto w = load_row_vec<T, VEC>(weight + i);
    RowVec<T, VEC> y;
#pragma unroll
    for (int j = 0; j < VEC; ++j) y.v[j] = scale_normalized(to_float(r.v[j]), inv_rms, w.v[j]);
    store_row_vec<T, VEC>(row_x + i, y);
  }
}

}  // namespace fastpage::cuda
