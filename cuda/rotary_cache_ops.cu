// CUDA launcher for rotary_embedding_and_cache: rotary_embedding then reshape_and_cache, one kernel.
#include <torch/library.h>

#include <algorithm>

#include "rotary_cache_kernels.cuh"

namespace fastpage::cuda {
namespace {

void rotary_embedding_and_cache(const at::Tensor& positions, const at::Tensor& query, const at::Tensor& key,
                                const at::Tensor& value, const at::Tensor& cos_sin_cache, int64_t head_dim,
                                const at::Tensor& key_cache, const at::Tensor& value_cache,
                                const at::Tensor& slot_mapping) {
  constexpr const char* op = "rotary_embedding_and_cache";
  const RotaryShape shape = check_rotary_inputs(positions, query, key, cos_sin_cache, head_dim, op);
  const int64_t num_slots = check_cache_write_inputs(key, value, key_cache, value_cache, slot_mapping, op);
  TORCH_CHECK(shape.rot_dim == head_dim, op, ": cos_sin_cache width ", shape.rot_dim, " must equal head_dim ",
              head_dim, " (partial rotary: call rotary_embedding and reshape_and_cache)");
  check_dtype(slot_mapping, at::kLong, op, "slot_mapping");
  const int64_t num_tokens = shape.num_tokens, num_heads = shape.num_heads, num_kv_heads = shape.num_kv_heads;
  if (num_tokens == 0) return;
  const auto pos = positions.contiguous();
  const auto slots = slot_mapping.contiguous();
  const c10::cuda::CUDAGuard guard(query.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float_types(query.scalar_type(), op, [&]<typename T>() {
    dispatch_cache_types<T>(key_cache.scalar_type(), op, [&]<typename C>() {
      constexpr int kVec = Vec16<T>::kSize;
      const bool vec_ok = (head_dim / 2) % kVec == 0 && is_aligned16(query.data_ptr()) &&
                          (query.stride(0) * static_cast<int64_t>(sizeof(T))) % 16 == 0 &&
                          cache_write_vectorizable<T, C>(key, value, key_cache, value_cache);
      const int vec = vec_ok ? kVec : 1;
      const int64_t pieces = ((num_heads + num_kv_heads) * head_dim / 2 + num_kv_heads * head_dim) / vec;
      const int threads = static_cast<int>(std::clamp<int64_t>((pieces + 31) / 32 * 32, 32, 512));
      dispatch_index_types(pos, op, "positions", [&]<typename P>() {
        dispatch_cos_sin_types<T>(cos_sin_cache, [&]<typename CS>() {
          auto launch = [&](auto kernel) {
            kernel<<<grid_size(num_tokens, op), threads, 0, stream>>>(
                pos.data_ptr<P>(), static_cast<T*>(query.data_ptr()), static_cast<T*>(key.data_ptr()),
                static_cast<const T*>(value.data_ptr()), static_cast<const CS*>(cos_sin_cache.data_ptr()),
                static_cast<C*>(key_cache.data_ptr()), static_cast<C*>(value_cache.data_ptr()),
                slots.data_ptr<int64_t>(), num_slots, query.stride(0), key.stride(0), value.stride(0),
                cos_sin_cache.stride(0), key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
                static_cast<int>(key_cache.size(1)), static_cast<int>(num_heads), static_cast<int>(num_kv_heads),
                static_cast<int>(head_dim));
          };
          if (vec_ok) launch(rotary_embedding_and_cache_kernel<T, CS, C, P, kVec>);
          else launch(rotary_embedding_and_cache_kernel<T, CS, C, P, 1>);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  });
}

}  // namespace
}  // namespace fastpage::cuda

TORCH_LIBRARY_IMPL(fastpage, CUDA, m) {
  m.impl("rotary_embedding_and_cache", &fastpage::cuda::rotary_embedding_and_cache);
}
