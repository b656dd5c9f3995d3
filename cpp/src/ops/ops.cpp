// C++ entry points for the fastpage ops: each call goes through the dispatcher to the device's kernel.
#include "fastpage/ops.h"

#include <ATen/core/dispatch/Dispatcher.h>

namespace fastpage::ops {
namespace {

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using T = const at::Tensor&;

}  // namespace

void reshape_and_cache(T key, T value, T key_cache, T value_cache, T slot_mapping) {
  static auto op = find_op<void(T, T, T, T, T)>("fastpage::reshape_and_cache");
  op.call(key, value, key_cache, value_cache, slot_mapping);
}

void paged_attention(T out, T query, T key_cache, T value_cache, T query_start_loc, T context_lens,
                     T block_tables, double scale, int64_t max_query_len, int64_t max_context_len) {
  static auto op = find_op<void(T, T, T, T, T, T, T, double, int64_t, int64_t)>("fastpage::paged_attention");
  op.call(out, query, key_cache, value_cache, query_start_loc, context_lens, block_tables, scale,
          max_query_len, max_context_len);
}

at::Tensor rms_norm(T x, T weight, double eps) {
  static auto op = find_op<at::Tensor(T, T, double)>("fastpage::rms_norm");
  return op.call(x, weight, eps);
}

void fused_add_rms_norm(T x, T residual, T weight, double eps) {
  static auto op = find_op<void(T, T, T, double)>("fastpage::fused_add_rms_norm");
  op.call(x, residual, weight, eps);
}

void rotary_embedding(T positions, T query, T key, T cos_sin_cache, int64_t head_dim) {
  static auto op = find_op<void(T, T, T, T, int64_t)>("fastpage::rotary_embedding");
  op.call(positions, query, key, cos_sin_cache, head_dim);
}

void rotary_embedding_and_cache(T positions, T query, T key, T value, T cos_sin_cache, int64_t head_dim,
                                T key_cache, T value_cache, T slot_mapping) {
  static auto op = find_op<void(T, T, T, T, T, int64_t, T, T, T)>("fastpage::rotary_embedding_and_cache");
  op.call(positions, query, key, value, cos_sin_cache, head_dim, key_cache, value_cache, slot_mapping);
}

at::Tensor silu_and_mul(T x) {
  static auto op = find_op<at::Tensor(T)>("fastpage::silu_and_mul");
  return op.call(x);
}

void copy_blocks(const std::vector<at::Tensor>& caches, T block_mapping) {
  static auto op = find_op<void(at::TensorList, T)>("fastpage::copy_blocks");
  op.call(caches, block_mapping);
}

void swap_blocks(T src, T dst, T block_mapping) {
  static auto op = find_op<void(T, T, T)>("fastpage::swap_blocks");
  op.call(src, dst, block_mapping);
}

void small_batch_linear(T out, T x, T weight, T bias) {
  static auto op = find_op<void(T, T, T, const std::optional<at::Tensor>&)>("fastpage::small_batch_linear");
  op.call(out, x, weight, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt);
}

void small_batch_linear_silu_and_mul(T out, T x, T weight) {
  static auto op = find_op<void(T, T, T)>("fastpage::small_batch_linear_silu_and_mul");
  op.call(out, x, weight);
}

at::Tensor sample_tokens(T logits, T temperature, T top_k, T top_p, T min_p, T seeds, T positions,
                         const std::optional<at::Tensor>& token_bitmask, const std::optional<at::Tensor>& bitmask_index) {
  using OT = const std::optional<at::Tensor>&;
  static auto op = find_op<at::Tensor(T, T, T, T, T, T, T, OT, OT)>("fastpage::sample_tokens");
  return op.call(logits, temperature, top_k, top_p, min_p, seeds, positions, token_bitmask, bitmask_index);
}

at::Tensor argmax_rows(T logits) {
  static auto op = find_op<at::Tensor(T)>("fastpage::argmax_rows");
  return op.call(logits);
}

}  // namespace fastpage::ops
