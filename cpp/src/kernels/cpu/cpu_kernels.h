// CPU implementations of the torch.ops.fastpage.* kernels (schemas in cpp/src/ops/registry.cpp,
// layouts in cpp/include/fastpage/ops.h), plus the small helpers they share.
// Registered for the CPU dispatch key in register_cpu.cpp.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <utility>

// Instantiates the lambda for the activation dtypes the kernels support (scalar_t inside it).
#define FASTPAGE_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...)                   \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                        \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__))

namespace fastpage::kernels::cpu {

// Checks that `t` holds activations in a supported dtype (float32, bfloat16, float16).
inline void check_float_dtype(const at::Tensor& t, const char* op, const char* name) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op, name,
              " must be float32, bfloat16 or float16, got ", dtype);
}

// One layer's K and V caches: [num_blocks, block_size, num_kv_heads, head_dim], same shape, contiguous.
inline void check_kv_caches(const at::Tensor& key_cache, const at::Tensor& value_cache, const char* op) {
  TORCH_CHECK(key_cache.dim() == 4, op,
              "key_cache must be [num_blocks, block_size, num_kv_heads, head_dim], got ",
              key_cache.sizes());
  TORCH_CHECK(value_cache.sizes() == key_cache.sizes(), op, "value_cache shape ",
              value_cache.sizes(), " must equal key_cache shape ", key_cache.sizes());
  TORCH_CHECK(key_cache.is_contiguous() && value_cache.is_contiguous(), op,
              "key_cache and value_cache must be contiguous");
}

// The caches hold `dtype` (the activations' dtype) or float8_e4m3fn, both the same.
inline void check_kv_cache_dtype(const at::Tensor& key_cache, const at::Tensor& value_cache, at::ScalarType dtype,
                                 const char* op) {
  for (const auto& [cache, name] : {std::pair{&key_cache, "key_cache"}, std::pair{&value_cache, "value_cache"}}) {
    TORCH_CHECK(cache->scalar_type() == dtype || cache->scalar_type() == at::kFloat8_e4m3fn, op, name,
                " must have dtype ", dtype, " or Float8_e4m3fn (kv_cache_dtype=\"fp8\"), got ",
                cache->scalar_type());
  }
  TORCH_CHECK(value_cache.scalar_type() == key_cache.scalar_type(), op, "value_cache dtype ",
              value_cache.scalar_type(), " must equal key_cache dtype ", key_cache.scalar_type());
}

// reshape_and_cache's input checks (shapes, dtypes, slots within the cache), `op` prefixing the errors.
void check_cache_write_inputs(const at::Tensor& key, const at::Tensor& value, const at::Tensor& key_cache,
                              const at::Tensor& value_cache, const at::Tensor& slot_mapping, const char* op);
void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, const at::Tensor& key_cache,
                       const at::Tensor& value_cache, const at::Tensor& slot_mapping);
void paged_attention(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                     const at::Tensor& value_cache, const at::Tensor& query_start_loc,
                     const at::Tensor& context_lens, const at::Tensor& block_tables, double scale,
                     int64_t max_query_len, int64_t max_context_len);
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
void fused_add_rms_norm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                        double eps);
void rotary_embedding(const at::Tensor& positions, const at::Tensor& query, const at::Tensor& key,
                      const at::Tensor& cos_sin_cache, int64_t head_dim);
void rotary_embedding_and_cache(const at::Tensor& positions, const at::Tensor& query, const at::Tensor& key,
                                const at::Tensor& value, const at::Tensor& cos_sin_cache, int64_t head_dim,
                                const at::Tensor& key_cache, const at::Tensor& value_cache,
                                const at::Tensor& slot_mapping);
at::Tensor silu_and_mul(const at::Tensor& x);
void copy_blocks(at::TensorList caches, const at::Tensor& block_mapping);
void swap_blocks(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& block_mapping);
at::Tensor sample_tokens(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                         const at::Tensor& top_p, const at::Tensor& min_p, const at::Tensor& seeds,
                         const at::Tensor& positions, const std::optional<at::Tensor>& token_bitmask,
                         const std::optional<at::Tensor>& bitmask_index);
at::Tensor argmax_rows(const at::Tensor& logits);

// Elements of work below which a kernel runs on the calling thread (ATen's at::internal::GRAIN_SIZE).
// A parallel region costs an OpenMP fork and join (microseconds on an idle machine, a scheduler time
// slice on a busy one), which the small ops of a decode step cannot pay back.
constexpr int64_t kParallelGrain = 32768;

// Items per at::parallel_for task so that a task holds at least kParallelGrain elements of work.
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, work_per_item));
}

// Element offset of row `row` of a tensor seen as [rows, size(-1)], for tensors whose leading dims
// are arbitrarily strided (views such as q/k/v split out of a fused qkv projection).
class RowIndexer {
 public:
  explicit RowIndexer(const at::Tensor& t) : ndim_(t.dim() - 1) {
    TORCH_CHECK(ndim_ >= 0 && ndim_ <= static_cast<int64_t>(sizes_.size()),
                "fastpage: expected a tensor with 1 to ", sizes_.size() + 1, " dims, got ", t.dim());
    for (int64_t d = 0; d < ndim_; ++d) {
      sizes_[d] = t.size(d);
      strides_[d] = t.stride(d);
    }
  }
  int64_t offset(int64_t row) const {
    int64_t off = 0;
    for (int64_t d = ndim_ - 1; d >= 0; --d) {
      off += (row % sizes_[d]) * strides_[d];
      row /= sizes_[d];
    }
    return off;
  }

 private:
  int64_t ndim_;
  std::array<int64_t, 7> sizes_{};
  std::array<int64_t, 7> strides_{};
};

// Dot product of two float rows. Sixteen independent partial sums let gcc vectorize the loop
// without -ffast-math (a single running sum would pin the order of the additions).
inline float dot(const float* a, const float* b, int64_t n) {
  constexpr int64_t kLanes = 16;
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += a[i + l] * b[i + l];
  }
  // Pairwise fold of the lanes: element-wise steps that vectorize, unlike a serial sum.
  for (int64_t l = 0; l < 8; ++l) lanes[l] += lanes[l + 8];
  for (int64_t l = 0; l < 4; ++l) lanes[l] += lanes[l + 4];
  float sum = (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// Sum of squares of a row, with the same lane trick as dot().
inline float sum_squares(const float* a, int64_t n) { return dot(a, a, n); }

// Asks for the cache lines of a row of n elements to be brought into L2 (a hint; never faults).
template <typename scalar_t>
inline void prefetch_row(const scalar_t* row, int64_t n) {
  constexpr int64_t kLine = 64;
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t offset = 0; offset < n * static_cast<int64_t>(sizeof(scalar_t)); offset += kLine) {
    __builtin_prefetch(bytes + offset, /*rw=*/0, /*locality=*/2);
  }
}

// Converts a row to float into `buf`, or returns it as is when it is float already.
template <typename scalar_t>
inline const float* as_float_row(const scalar_t* src, float* buf, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return src;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(src[i]);
    return buf;
  }
}

}  // namespace fastpage::kernels::cpu
