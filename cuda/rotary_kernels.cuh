// Rotary position embedding, rotate-half (NeoX / HF) layout, applied in place.
#pragma once
#include "common.cuh"

namespace fastpage::cuda {

// Rotates the first rot_dim elements of every head of one token: pairs (i, i + rot_dim / 2) with
// cos = cache[pos, i], sin = cache[pos, rot_dim / 2 + i]. Arithmetic in float32.
template <typename T, typename C>
__device__ __forceinline__ void rotate_heads(T* __restrict__ x, int num_heads, int head_dim, int half,
                                             const C* __restrict__ cos_sin) {
  const int n = num_heads * half;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int head = i / half, j = i % half;
    T* h = x + static_cast<int64_t>(head) * head_dim;
    const float c = to_float(cos_sin[j]), s = to_float(cos_sin[half + j]);
    const float a = to_float(h[j]), b = to_float(h[j + half]);
    h[j] = from_float<T>(a * c - b * s);
    h[j + half] = from_float<T>(b * c + a * s);
  }
}

// One thread block per token; query/key rows have num_*_heads contiguous heads of head_dim.
template <typename T, typename C, typename P>
__global__ void rotary_embedding_kernel(const P* __restrict__ positions, T* __restrict__ query,
                                        T* __restrict__ key, const C* __restrict__ cos_sin_cache,
                                        int64_t query_token_stride, int64_t key_token_stride,
                                        int64_t cache_row_stride, int num_heads, int num_kv_heads,
                                        int head_dim, int rot_dim) {
  const int64_t token = blockIdx.x;
  const C* cos_sin = cos_sin_cache + static_cast<int64_t>(positions[token]) * cache_row_stride;
  const int half = rot_dim / 2;
  rotate_heads(query + token * query_token_stride, num_heads, head_dim, half, cos_sin);
  rotate_heads(key + token * key_token_stride, num_kv_heads, head_dim, half, cos_sin);
}

}  // namespace fastpage::cuda
