// Rotary position embedding, rotate-half (NeoX / HF) layout, applied in place.
#pragma once
#include <algorithm>

#include "common.cuh"

namespace fastpage::cuda {

// Rotates one pair (x1, x2) = (x[j], x[j + half]) by the angle with cosine c and sine s, in float32,
// rounded back to T. Every product and sum is rounded on its own, as in the CPU kernel: no FMA
// contraction that the compiler might choose differently in rotary_embedding and in the fused
// rotary_embedding_and_cache, which must agree bit for bit.
template <typename T>
__device__ __forceinline__ void rotate_pair(T& x1, T& x2, float c, float s) {
  const float a = to_float(x1), b = to_float(x2);
  x1 = from_float<T>(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)));
  x2 = from_float<T>(__fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
}

// Rotates the first rot_dim elements of every head of one token: pairs (i, i + rot_dim / 2) with
// cos = cache[pos, i], sin = cache[pos, rot_dim / 2 + i].
template <typename T, typename C>
__device__ __forceinline__ void rotate_heads(T* __restrict__ x, int num_heads, int head_dim, int half,
                                             const C* __restrict__ cos_sin) {
  const int n = num_heads * half;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int head = i / half, j = i % half;
    T* h = x + static_cast<int64_t>(head) * head_dim;
    rotate_pair(h[j], h[j + half], to_float(cos_sin[j]), to_float(cos_sin[half + j]));
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

// ---- launcher checks (host), shared by rotary_embedding and rotary_embedding_and_cache ------------

// Heads of one token must be contiguous; returns the number of heads.
inline int64_t heads_per_token(const at::Tensor& t, int64_t num_tokens, int64_t head_dim, const char* op,
                               const char* name) {
  check_cuda(t, op, name);
  TORCH_CHECK(t.dim() >= 2 && t.size(0) == num_tokens, op, ": ", name, " must be [num_tokens=", num_tokens,
              ", ...], got ", t.sizes());
  const int64_t per_token = t.numel() / std::max<int64_t>(num_tokens, 1);
  TORCH_CHECK(per_token % head_dim == 0, op, ": ", name, " ", t.sizes(), " is not a whole number of heads of ",
              head_dim);
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 1; --d) {
    TORCH_CHECK(t.size(d) == 1 || t.stride(d) == expected, op, ": ", name, " must be contiguous within a token");
    expected *= t.size(d);
  }
  return per_token / head_dim;
}

struct RotaryShape {
  int64_t num_tokens, num_heads, num_kv_heads, rot_dim;
};

inline RotaryShape check_rotary_inputs(const at::Tensor& positions, const at::Tensor& query, const at::Tensor& key,
                                       const at::Tensor& cos_sin_cache, int64_t head_dim, const char* op) {
  check_cuda(positions, op, "positions");
  check_cuda(cos_sin_cache, op, "cos_sin_cache");
  TORCH_CHECK(head_dim > 0, op, ": head_dim must be > 0, got ", head_dim);
  const int64_t num_tokens = positions.numel();
  const int64_t num_heads = heads_per_token(query, num_tokens, head_dim, op, "query");
  const int64_t num_kv_heads = heads_per_token(key, num_tokens, head_dim, op, "key");
  check_same_device(query, key, op, "key");
  check_same_device(query, positions, op, "positions");
  check_same_device(query, cos_sin_cache, op, "cos_sin_cache");
  check_dtype(key, query.scalar_type(), op, "key");
  check_dim(cos_sin_cache, 2, op, "cos_sin_cache");
  const int64_t rot_dim = cos_sin_cache.size(1);
  TORCH_CHECK(rot_dim % 2 == 0 && rot_dim <= head_dim && rot_dim > 0, op, ": cos_sin_cache width ", rot_dim,
              " must be even and in (0, head_dim=", head_dim, "]");
  TORCH_CHECK(cos_sin_cache.stride(1) == 1, op, ": cos_sin_cache rows must be contiguous");
  TORCH_CHECK(cos_sin_cache.scalar_type() == at::kFloat || cos_sin_cache.scalar_type() == query.scalar_type(), op,
              ": cos_sin_cache must be float32 or ", query.scalar_type(), ", got ", cos_sin_cache.scalar_type());
  return {num_tokens, num_heads, num_kv_heads, rot_dim};
}

// Calls fn.template operator()<C>() with C the CUDA type of cos_sin_cache: float, or T (the activations').
template <typename T, typename Fn>
void dispatch_cos_sin_types(const at::Tensor& cos_sin_cache, Fn&& fn) {
  if (cos_sin_cache.scalar_type() == at::kFloat) fn.template operator()<float>();
  else fn.template operator()<T>();
}

}  // namespace fastpage::cuda
