// Shared helpers for the CUDA kernels: dtype mapping, 16-byte vectors, reductions, input checks.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <type_traits>
#include <utility>

namespace fastpage::cuda {

// ---- dtype mapping: torch scalar types -> CUDA element types ------------------------------------

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float(float x) { return x; }
template <>
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <>
__device__ __forceinline__ float to_float(__nv_fp8_e4m3 x) { return static_cast<float>(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }

// Calls fn.template operator()<T>() with T the CUDA type of `dtype` (float, __half, __nv_bfloat16).
template <typename Fn>
void dispatch_float_types(at::ScalarType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case at::kFloat: fn.template operator()<float>(); break;
    case at::kHalf: fn.template operator()<__half>(); break;
    case at::kBFloat16: fn.template operator()<__nv_bfloat16>(); break;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", dtype, " (float32, float16, bfloat16)");
  }
}

// Calls fn.template operator()<I>() with I = int32_t or int64_t for an index tensor's dtype.
template <typename Fn>
void dispatch_index_types(const at::Tensor& t, const char* op, const char* name, Fn&& fn) {
  switch (t.scalar_type()) {
    case at::kInt: fn.template operator()<int32_t>(); break;
    case at::kLong: fn.template operator()<int64_t>(); break;
    default: TORCH_CHECK(false, op, ": ", name, " must be int32 or int64, got ", t.scalar_type());
  }
}

// ---- float8_e4m3fn KV cache (kv_cache_dtype="fp8", scale 1.0) ------------------------------------

// Two e4m3 values (low byte first) -> two T packed in 32 bits (bf16/fp16; e4m3 is exact in both):
// one cvt to f16x2, and for bf16 through float2.
template <typename T>
__device__ __forceinline__ uint32_t fp8x2_to_packed(__nv_fp8x2_storage_t x) {
  const __half2 h = __half2(__nv_cvt_fp8x2_to_halfraw2(x, __NV_E4M3));
  if constexpr (std::is_same_v<T, __half>) {
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    static_assert(std::is_same_v<T, __nv_bfloat16>);
    const __nv_bfloat162 b = __float22bfloat162_rn(__half22float2(h));
    return *reinterpret_cast<const uint32_t*>(&b);
  }
}

// Two floats -> two e4m3 values, round to nearest even, saturating to +-448 (NaN stays NaN).
__device__ __forceinline__ __nv_fp8x2_storage_t float2_to_fp8x2(float lo, float hi) {
  return __nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3);
}

// Calls fn.template operator()<C>() with C the CUDA type of a KV cache of `cache_dtype` for queries of
// type T: T itself, or __nv_fp8_e4m3 for a float8_e4m3fn cache.
template <typename T, typename Fn>
void dispatch_cache_types(at::ScalarType cache_dtype, const char* op, Fn&& fn) {
  if (cache_dtype == at::kFloat8_e4m3fn) fn.template operator()<__nv_fp8_e4m3>();
  else fn.template operator()<T>();
}

// ---- 16-byte vectors ----------------------------------------------------------------------------

template <typename T>
struct alignas(16) Vec16 {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

inline bool is_aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// N contiguous elements of T moved as one access: a kernel templated on N runs a vector path
// (N = Vec16<T>::kSize, 16 bytes) and a scalar fallback (N = 1) with the same code.
template <typename T, int N>
struct alignas(N * sizeof(T)) Pack {
  T v[N];
};

// ---- reductions ---------------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Sum over the whole thread block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ __forceinline__ float block_sum(float x) {
  __shared__ float partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
  x = warp_sum(x);
  __syncthreads();  // partial[] may still be read by a previous call
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  x = lane < num_warps ? partial[lane] : 0.f;
  return warp_sum(x);
}

// ---- input checks (clear errors naming the op and field, as the CPU kernels raise them) ---------------------

inline void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined() && t.is_cuda(), op, ": ", name, " must be a CUDA tensor");
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op, const char* name) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", name, " is on ", b.device(), ", expected ",
                    a.device());
}

inline void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " has dtype ", t.scalar_type(),
                    ", expected ", dtype);
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must have ", dim, " dimensions, got ", t.dim());
}

// The caches hold `dtype` (the query's or the new keys') or float8_e4m3fn, the same for K and V.
inline void check_kv_cache_dtype(const at::Tensor& key_cache, const at::Tensor& value_cache, at::ScalarType dtype,
                                 const char* op) {
  for (auto [t, name] : {std::pair{&key_cache, "key_cache"}, {&value_cache, "value_cache"}}) {
    TORCH_CHECK(t->scalar_type() == dtype || t->scalar_type() == at::kFloat8_e4m3fn, op, ": ", name,
                " must have dtype ", dtype, " or Float8_e4m3fn (kv_cache_dtype=\"fp8\"), got ", t->scalar_type());
  }
  check_dtype(value_cache, key_cache.scalar_type(), op, "value_cache");
}

inline unsigned grid_size(int64_t n, const char* op) {
  TORCH_CHECK(n <= 0x7fffffff, op, ": too many rows for one launch (", n, ")");
  return static_cast<unsigned>(n);
}

}  // namespace fastpage::cuda
