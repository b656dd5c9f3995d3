// rotary_embedding and reshape_and_cache of one attention layer in one kernel: the decode step's
// rotary and cache write were two launches of a few microseconds each per layer.
#pragma once
#include "cache_kernels.cuh"
#include "rotary_kernels.cuh"

namespace fastpage::cuda {

// One thread block per token (rot_dim == head_dim). The token's work is cut into VEC-element pieces
// of three jobs: query pairs (rotated in place), key pairs (rotated in place, then stored into the
// cache from registers) and value pieces (stored into the cache). Tokens at or past num_slots, and
// slots < 0, are rotated but not written to the cache. Same arithmetic as rotary_embedding_kernel
// (rotate_pair) and reshape_and_cache_kernel (store_cache_vec): the results match those two bit for bit.
template <typename T, typename CS, typename C, typename P, int VEC>
__global__ void rotary_embedding_and_cache_kernel(
    const P* __restrict__ positions, T* __restrict__ query, T* __restrict__ key, const T* __restrict__ value,
    const CS* __restrict__ cos_sin_cache, C* __restrict__ key_cache, C* __restrict__ value_cache,
    const int64_t* __restrict__ slot_mapping, int64_t num_slots, int64_t query_token_stride,
    int64_t key_token_stride, int64_t value_token_stride, int64_t cos_sin_row_stride, int64_t block_stride,
    int64_t slot_stride, int64_t head_stride, int block_size, int num_heads, int num_kv_heads, int head_dim) {
  const int64_t token = blockIdx.x;
  const CS* cos_sin = cos_sin_cache + static_cast<int64_t>(positions[token]) * cos_sin_row_stride;
  const int64_t slot = token < num_slots ? slot_mapping[token] : -1;
  const int64_t cache_offset = slot < 0 ? 0 : (slot / block_size) * block_stride + (slot % block_size) * slot_stride;
  const int half = head_dim / 2;
  const int pieces_per_half = half / VEC, pieces_per_head = head_dim / VEC;
  const int query_pieces = num_heads * pieces_per_half;
  const int rotary_pieces = query_pieces + num_kv_heads * pieces_per_half;
  const int all_pieces = rotary_pieces + num_kv_heads * pieces_per_head;
  T* q = query + token * query_token_stride;
  T* k = key + token * key_token_stride;
  const T* v = value + token * value_token_stride;
  using Piece = Pack<T, VEC>;
  for (int i = threadIdx.x; i < all_pieces; i += blockDim.x) {
    if (i < rotary_pieces) {
      const bool is_key = i >= query_pieces;
      const int piece = is_key ? i - query_pieces : i;
      const int head = piece / pieces_per_half, j = (piece % pieces_per_half) * VEC;
      T* h = (is_key ? k : q) + static_cast<int64_t>(head) * head_dim;
      Piece lo = *reinterpret_cast<const Piece*>(h + j), hi = *reinterpret_cast<const Piece*>(h + half + j);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        rotate_pair(lo.v[e], hi.v[e], to_float(cos_sin[j + e]), to_float(cos_sin[half + j + e]));
      }
      *reinterpret_cast<Piece*>(h + j) = lo;
      *reinterpret_cast<Piece*>(h + half + j) = hi;
      if (is_key && slot >= 0) {
        C* dst = key_cache + cache_offset + head * head_stride;
        store_cache_vec<T, C, VEC>(dst + j, lo.v);
        store_cache_vec<T, C, VEC>(dst + half + j, hi.v);
      }
    } else if (slot >= 0) {
      const int piece = i - rotary_pieces;
      const int head = piece / pieces_per_head, d = (piece % pieces_per_head) * VEC;
      store_cache_vec<T, C, VEC>(value_cache + cache_offset + head * head_stride + d,
                                 v + static_cast<int64_t>(head) * head_dim + d);
    }
  }
}

}  // namespace fastpage::cuda
