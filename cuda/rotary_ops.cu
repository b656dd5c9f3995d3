// CUDA launcher for rotary_embedding.
#include <torch/library.h>

#include <algorithm>

#include "rotary_kernels.cuh"

namespace fastpage::cuda {
namespace {

void rotary_embedding(const at::Tensor& positions, const at::Tensor& query, const at::Tensor& key,
                      const at::Tensor& cos_sin_cache, int64_t head_dim) {
  constexpr const char* op = "rotary_embedding";
  const RotaryShape shape = check_rotary_inputs(positions, query, key, cos_sin_cache, head_dim, op);
  const int64_t num_tokens = shape.num_tokens, num_heads = shape.num_heads, num_kv_heads = shape.num_kv_heads;
  const int64_t rot_dim = shape.rot_dim;
  if (num_tokens == 0) return;
  const auto pos = positions.contiguous();
  const c10::cuda::CUDAGuard guard(query.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int threads =
      static_cast<int>(std::clamp<int64_t>((std::max(num_heads, num_kv_heads) * rot_dim / 2 + 31) / 32 * 32, 32, 512));
  dispatch_float_types(query.scalar_type(), op, [&]<typename T>() {
    dispatch_index_types(pos, op, "positions", [&]<typename P>() {
      dispatch_cos_sin_types<T>(cos_sin_cache, [&]<typename C>() {
        rotary_embedding_kernel<T, C, P><<<grid_size(num_tokens, op), threads, 0, stream>>>(
            pos.data_ptr<P>(), static_cast<T*>(query.data_ptr()), static_cast<T*>(key.data_ptr()),
            static_cast<const C*>(cos_sin_cache.data_ptr()), query.stride(0), key.stride(0),
            cos_sin_cache.stride(0), static_cast<int>(num_heads), static_cast<int>(num_kv_heads),
            static_cast<int>(head_dim), static_cast<int>(rot_dim));
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace
}  // namespace fastpage::cuda

TORCH_LIBRARY_IMPL(fastpage, CUDA, m) { m.impl("rotary_embedding", &fastpage::cuda::rotary_embedding); }
