// CUDA launcher for rotary_embedding.
#include <torch/library.h>

#include <algorithm>

#include "rotary_kernels.cuh"

namespace fastpage::cuda {
namespace {

// Heads of one token must be contiguous; returns the number of heads.
int64_t heads_per_token(const at::Tensor& t, int64_t num_tokens, int64_t head_dim, const char* op,
                        const char* name) {
  check_cuda(t, op, name);
  TORCH_CHECK(t.dim() >= 2 && t.size(0) == num_tokens, op, ": ", name, " must be [num_tokens=", num_tokens,
                    ", ...], got ", t.sizes());
  const int64_t per_token = t.numel() / std::max<int64_t>(num_tokens, 1);
  TORCH_CHECK(per_token % head_dim == 0, op, ": ", name, " ", t.sizes(), " is not a whole number of heads of ",
                    head_dim);
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 1; --d) {
    TORCH_CHECK(t.size(d) == 1 || t.stride(d) == expected, op, ": ", name,
                      " must be contiguous within a token");
    expected *= t.size(d);
  }
  return per_token / head_dim;
}

void rotary_embedding(const at::Tensor& positions, const at::Tensor& query, const at::Tensor& key,
                      const at::Tensor& cos_sin_cache, int64_t head_dim) {
  constexpr const char* op = "rotary_embedding";
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
  TORCH_CHECK(cos_sin_cache.scalar_type() == at::kFloat || cos_sin_cache.scalar_type() == query.scalar_type(),
                    op, ": cos_sin_cache must be float32 or ", query.scalar_type(), ", got ",
                    cos_sin_cache.scalar_type());
  if (num_tokens == 0) return;
  const auto pos = positions.contiguous();
  const c10::cuda::CUDAGuard guard(query.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int threads =
      static_cast<int>(std::clamp<int64_t>((std::max(num_heads, num_kv_heads) * rot_dim / 2 + 31) / 32 * 32, 32, 512));
  dispatch_float_types(query.scalar_type(), op, [&]<typename T>() {
    dispatch_index_types(pos, op, "positions", [&]<typename P>() {
      auto launch = [&]<typename C>() {
        rotary_embedding_kernel<T, C, P><<<grid_size(num_tokens, op), threads, 0, stream>>>(
            pos.data_ptr<P>(), static_cast<T*>(query.data_ptr()), static_cast<T*>(key.data_ptr()),
            static_cast<const C*>(cos_sin_cache.data_ptr()), query.stride(0), key.stride(0),
            cos_sin_cache.stride(0), static_cast<int>(num_heads), static_cast<int>(num_kv_heads),
            static_cast<int>(head_dim), static_cast<int>(rot_dim));
      };
      if (cos_sin_cache.scalar_type() == at::kFloat) launch.template operator()<float>();
      else launch.template operator()<T>();
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace
}  // namespace fastpage::cuda

TORCH_LIBRARY_IMPL(fastpage, CUDA, m) { m.impl("rotary_embedding", &fastpage::cuda::rotary_embedding); }
