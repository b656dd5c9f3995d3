// Kernels that write and copy paged KV cache blocks.
#pragma once
#include "common.cuh"

namespace fastpage::cuda {

// One thread block per new token: key/value [num_tokens, num_kv_heads, head_dim] (token stride free,
// heads contiguous) -> cache [num_blocks, block_size, num_kv_heads, head_dim] (strides from the cache).
// VEC elements move per access (VEC = 1 or a 16-byte vector of T). C is T (a copy) or __nv_fp8_e4m3
// (a saturating cast, scale 1.0: a 16-byte load of T becomes a VEC-byte store).
template <typename T, typename C, int VEC>
__device__ __forceinline__ void store_cache_vec(C* dst, const T* src) {
  if constexpr (std::is_same_v<C, T>) {
    if constexpr (VEC == 1) *dst = *src;
    else *reinterpret_cast<Vec16<T>*>(dst) = *reinterpret_cast<const Vec16<T>*>(src);
  } else if constexpr (VEC == 1) {
    *reinterpret_cast<__nv_fp8_storage_t*>(dst) =
        __nv_cvt_float_to_fp8(to_float(*src), __NV_SATFINITE, __NV_E4M3);
  } else {
    const Vec16<T> in = *reinterpret_cast<const Vec16<T>*>(src);
    struct alignas(VEC) Bytes { __nv_fp8x2_storage_t v[VEC / 2]; } out;
#pragma unroll
    for (int i = 0; i < VEC / 2; ++i) out.v[i] = float2_to_fp8x2(to_float(in.v[2 * i]), to_float(in.v[2 * i + 1]));
    *reinterpret_cast<Bytes*>(dst) = out;
  }
}

template <typename T, typename C, typename Index, int VEC>
__global__ void reshape_and_cache_kernel(const T* __restrict__ key, const T* __restrict__ value,
                                         C* __restrict__ key_cache, C* __restrict__ value_cache,
                                         const Index* __restrict__ slot_mapping, int64_t key_token_stride,
                                         int64_t value_token_stride, int64_t block_stride,
                                         int64_t slot_stride, int64_t head_stride, int block_size,
                                         int num_kv_heads, int head_dim) {
  const int64_t token = blockIdx.x;
  const int64_t slot = static_cast<int64_t>(slot_mapping[token]);
  if (slot < 0) return;  // padding token
  const int64_t cache_offset = (slot / block_size) * block_stride + (slot % block_size) * slot_stride;
  const int vecs_per_head = head_dim / VEC;
  const int num_vecs = num_kv_heads * vecs_per_head;
  for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
    const int head = i / vecs_per_head, d = (i % vecs_per_head) * VEC;
    const int64_t src = static_cast<int64_t>(head) * head_dim + d;
    const int64_t dst = cache_offset + head * head_stride + d;
    store_cache_vec<T, C, VEC>(key_cache + dst, key + token * key_token_stride + src);
    store_cache_vec<T, C, VEC>(value_cache + dst, value + token * value_token_stride + src);
  }
}

// Copy-on-write: grid (num_pairs, num_caches). Each cache c is a byte array whose block b starts at
// base[c] + b * block_stride_bytes[c] and holds block_bytes[c] bytes, copied in units of U (uint4 when
// every address and size is a multiple of 16 bytes, else single bytes).
struct CopyBlocksArgs {
  const int64_t* base;                // [num_caches] device addresses
  const int64_t* block_stride_bytes;  // [num_caches]
  const int64_t* block_bytes;         // [num_caches]
  const int64_t* mapping;             // [num_pairs, 2] (src, dst)
};

template <typename U>
__global__ void copy_blocks_kernel(CopyBlocksArgs args) {
  const int pair = blockIdx.x, c = blockIdx.y;
  const int64_t src = args.mapping[2 * pair], dst = args.mapping[2 * pair + 1];
  char* base = reinterpret_cast<char*>(args.base[c]);
  const int64_t stride = args.block_stride_bytes[c];
  const U* from = reinterpret_cast<const U*>(base + src * stride);
  U* to = reinterpret_cast<U*>(base + dst * stride);
  const int64_t n = args.block_bytes[c] / static_cast<int64_t>(sizeof(U));
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) to[i] = from[i];
}

// ---- launcher checks (host), shared by reshape_and_cache and rotary_embedding_and_cache -----------

// Every stride after dimension `first` describes a contiguous layout.
inline bool contiguous_from(const at::Tensor& t, int64_t first) {
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= first; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

// Checks a cache write of key/value [tokens, num_kv_heads, head_dim] into key_cache/value_cache at
// slot_mapping; returns the number of tokens written (slot_mapping's length: tokens past it are padding).
inline int64_t check_cache_write_inputs(const at::Tensor& key, const at::Tensor& value, const at::Tensor& key_cache,
                                        const at::Tensor& value_cache, const at::Tensor& slot_mapping,
                                        const char* op) {
  for (auto [t, name] : {std::pair{&key, "key"}, {&value, "value"}, {&key_cache, "key_cache"},
                         {&value_cache, "value_cache"}, {&slot_mapping, "slot_mapping"}}) {
    check_cuda(*t, op, name);
    check_same_device(key_cache, *t, op, name);
  }
  check_dim(key, 3, op, "key");
  check_dim(key_cache, 4, op, "key_cache");
  check_dim(slot_mapping, 1, op, "slot_mapping");
  TORCH_CHECK(value.sizes() == key.sizes(), op, ": value shape ", value.sizes(), " != key shape ", key.sizes());
  TORCH_CHECK(value_cache.sizes() == key_cache.sizes() && value_cache.strides() == key_cache.strides(), op,
              ": value_cache must have key_cache's shape and strides");
  const int64_t num_tokens = slot_mapping.size(0), num_kv_heads = key.size(1), head_dim = key.size(2);
  TORCH_CHECK(num_tokens <= key.size(0), op, ": slot_mapping has ", num_tokens, " entries but key has only ",
              key.size(0), " tokens");
  TORCH_CHECK(key_cache.size(2) == num_kv_heads && key_cache.size(3) == head_dim, op,
              ": key_cache [num_blocks, block_size, ", num_kv_heads, ", ", head_dim, "] expected, got ",
              key_cache.sizes());
  check_dtype(value, key.scalar_type(), op, "value");
  check_kv_cache_dtype(key_cache, value_cache, key.scalar_type(), op);
  for (auto [t, name] : {std::pair{&key, "key"}, {&value, "value"}}) {
    TORCH_CHECK(contiguous_from(*t, 1), op, ": ", name, " must be contiguous within a token");
  }
  TORCH_CHECK(key_cache.stride(3) == 1, op, ": key_cache head_dim must be contiguous");
  return num_tokens;
}

// Whether 16-byte loads of key/value rows (Vec16<T>) and their VEC-element stores into caches of C line
// up at every token, slot and head (head_dim % VEC is the caller's to check).
template <typename T, typename C>
bool cache_write_vectorizable(const at::Tensor& key, const at::Tensor& value, const at::Tensor& key_cache,
                              const at::Tensor& value_cache) {
  const int64_t es = sizeof(T), cs = sizeof(C), cache_align = Vec16<T>::kSize * cs;
  const auto aligned = [](const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; };
  return is_aligned16(key.data_ptr()) && is_aligned16(value.data_ptr()) &&
         aligned(key_cache.data_ptr(), cache_align) && aligned(value_cache.data_ptr(), cache_align) &&
         (key.stride(0) * es) % 16 == 0 && (value.stride(0) * es) % 16 == 0 &&
         (key_cache.stride(0) * cs) % cache_align == 0 && (key_cache.stride(1) * cs) % cache_align == 0 &&
         (key_cache.stride(2) * cs) % cache_align == 0;
}

}  // namespace fastpage::cuda
