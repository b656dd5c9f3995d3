// Rotary position embedding on the CPU, in place, rotate-half (NeoX / HF Llama) layout: the first
// and second halves of each head are the two coordinates of the rotated pairs.
#include <ATen/Parallel.h>

#include <vector>

#include "cpu_kernels.h"

namespace fastpage::kernels::cpu {
namespace {

// Where the heads of a [num_tokens, num_heads * head_dim] or [num_tokens, num_heads, head_dim]
// tensor live.
struct HeadLayout {
  int64_t num_heads, token_stride, head_stride;
};

HeadLayout head_layout(const at::Tensor& t, int64_t num_tokens, int64_t head_dim, const char* name) {
  constexpr const char* op = "fastpage.rotary_embedding: ";
  TORCH_CHECK((t.dim() == 2 || t.dim() == 3) && t.size(0) == num_tokens, op, name,
              " must be [num_tokens, num_heads * head_dim] or [num_tokens, num_heads, head_dim]"
              " with num_tokens = ",
              num_tokens, ", got ", t.sizes());
  TORCH_CHECK(t.stride(-1) == 1, op, name, " must be contiguous in its last dim");
  if (t.dim() == 3) {
    TORCH_CHECK(t.size(2) == head_dim, op, name, " head_dim ", t.size(2), " != head_dim ",
                head_dim);
    return {t.size(1), t.stride(0), t.stride(1)};
  }
  TORCH_CHECK(t.size(1) % head_dim == 0, op, name, " width ", t.size(1),
              " is not a multiple of head_dim ", head_dim);
  return {t.size(1) / head_dim, t.stride(0), head_dim};
}

template <typename scalar_t>
void rotate_heads(scalar_t* data, const HeadLayout& layout, int64_t token, const float* cos,
                  const float* sin, int64_t half) {
  for (int64_t h = 0; h < layout.num_heads; ++h) {
    scalar_t* x = data + token * layout.token_stride + h * layout.head_stride;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = static_cast<float>(x[i]);
      const float x2 = static_cast<float>(x[i + half]);
      x[i] = static_cast<scalar_t>(x1 * cos[i] - x2 * sin[i]);
      x[i + half] = static_cast<scalar_t>(x2 * cos[i] + x1 * sin[i]);
    }
  }
}

template <typename scalar_t, typename cache_t, typename pos_t>
void rotary_kernel(const pos_t* positions, int64_t num_tokens, scalar_t* query,
                   const HeadLayout& q_layout, scalar_t* key, const HeadLayout& k_layout,
                   const cache_t* cos_sin_cache, int64_t head_dim) {
  const int64_t half = head_dim / 2;
  const int64_t work_per_token = (q_layout.num_heads + k_layout.num_heads) * head_dim;
  at::parallel_for(0, num_tokens, grain_for(work_per_token), [&](int64_t begin, int64_t end) {
    std::vector<float> cos_sin(head_dim);
    for (int64_t t = begin; t < end; ++t) {
      const float* cs = as_float_row(cos_sin_cache + positions[t] * head_dim, cos_sin.data(),
                                     head_dim);
      rotate_heads(query, q_layout, t, cs, cs + half, half);
      rotate_heads(key, k_layout, t, cs, cs + half, half);
    }
  });
}

}  // namespace

void rotary_embedding(const at::Tensor& positions, const at::Tensor& query, const at::Tensor& key,
                      const at::Tensor& cos_sin_cache, int64_t head_dim) {
  constexpr const char* op = "fastpage.rotary_embedding: ";
  check_float_dtype(query, op, "query");
  TORCH_CHECK(key.scalar_type() == query.scalar_type(), op, "key dtype ", key.scalar_type(),
              " must equal the query dtype ", query.scalar_type());
  TORCH_CHECK(head_dim > 0 && head_dim % 2 == 0, op, "head_dim must be even and positive, got ",
              head_dim);
  TORCH_CHECK(positions.dim() == 1 && positions.is_contiguous() &&
                  (positions.scalar_type() == at::kLong || positions.scalar_type() == at::kInt),
              op, "positions must be a contiguous 1-D int64 or int32 tensor, got ",
              positions.scalar_type(), " ", positions.sizes());
  TORCH_CHECK(cos_sin_cache.dim() == 2 && cos_sin_cache.size(1) == head_dim &&
                  cos_sin_cache.is_contiguous(),
              op, "cos_sin_cache must be a contiguous [max_position, head_dim = ", head_dim,
              "] tensor (rotary_dim == head_dim), got ", cos_sin_cache.sizes());
  TORCH_CHECK(cos_sin_cache.scalar_type() == at::kFloat ||
                  cos_sin_cache.scalar_type() == query.scalar_type(),
              op, "cos_sin_cache must be float32 or the query dtype, got ",
              cos_sin_cache.scalar_type());
  const int64_t num_tokens = positions.size(0);
  const HeadLayout q_layout = head_layout(query, num_tokens, head_dim, "query");
  const HeadLayout k_layout = head_layout(key, num_tokens, head_dim, "key");
  const int64_t max_position = cos_sin_cache.size(0);

  AT_DISPATCH_INDEX_TYPES(positions.scalar_type(), "fastpage_rotary_positions", [&] {
    const index_t* pos = positions.const_data_ptr<index_t>();
    for (int64_t t = 0; t < num_tokens; ++t) {
      TORCH_CHECK(pos[t] >= 0 && pos[t] < max_position, op, "positions[", t, "] = ", pos[t],
                  " is outside cos_sin_cache's ", max_position, " positions");
    }
    FASTPAGE_DISPATCH_FLOAT_TYPES(query.scalar_type(), "fastpage_rotary_embedding", [&] {
      scalar_t* q = query.data_ptr<scalar_t>();
      scalar_t* k = key.data_ptr<scalar_t>();
      if (cos_sin_cache.scalar_type() == at::kFloat) {
        rotary_kernel(pos, num_tokens, q, q_layout, k, k_layout,
                      cos_sin_cache.const_data_ptr<float>(), head_dim);
      } else {
        rotary_kernel(pos, num_tokens, q, q_layout, k, k_layout,
                      cos_sin_cache.const_data_ptr<scalar_t>(), head_dim);
      }
    });
  });
}

}  // namespace fastpage::kernels::cpu
