// CUDA launcher for sample_tokens (kernel in sampling_kernels.cuh).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "sampling_kernels.cuh"

namespace fastpage::cuda {
namespace {

void check_row_tensor(const at::Tensor& logits, const at::Tensor& t, at::ScalarType dtype, const char* name) {
  constexpr const char* op = "sample_tokens";
  check_cuda(t, op, name);
  check_same_device(logits, t, op, name);
  check_dtype(t, dtype, op, name);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == logits.size(0) && t.is_contiguous(), op, ": ", name,
              " must be contiguous [", logits.size(0), "], got ", t.sizes());
}

at::Tensor sample_tokens(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                         const at::Tensor& top_p, const at::Tensor& min_p, const at::Tensor& seeds,
                         const at::Tensor& positions, const std::optional<at::Tensor>& token_bitmask,
                         const std::optional<at::Tensor>& bitmask_index) {
  constexpr const char* op = "sample_tokens";
  check_cuda(logits, op, "logits");
  check_dtype(logits, at::kFloat, op, "logits");
  check_dim(logits, 2, op, "logits");
  TORCH_CHECK(logits.size(1) > 0 && logits.size(1) <= INT_MAX && logits.is_contiguous(), op,
              ": logits must be contiguous [rows, vocab] with 0 < vocab < 2^31, got ", logits.sizes());
  check_row_tensor(logits, temperature, at::kFloat, "temperature");
  check_row_tensor(logits, top_k, at::kLong, "top_k");
  check_row_tensor(logits, top_p, at::kFloat, "top_p");
  check_row_tensor(logits, min_p, at::kFloat, "min_p");
  check_row_tensor(logits, seeds, at::kLong, "seeds");
  check_row_tensor(logits, positions, at::kLong, "positions");
  TORCH_CHECK(token_bitmask.has_value() == bitmask_index.has_value(), op,
              ": token_bitmask and bitmask_index come together");
  const int words = static_cast<int>((logits.size(1) + 31) / 32);
  if (token_bitmask) {
    check_cuda(*token_bitmask, op, "token_bitmask");
    check_same_device(logits, *token_bitmask, op, "token_bitmask");
    check_dtype(*token_bitmask, at::kInt, op, "token_bitmask");
    TORCH_CHECK(token_bitmask->dim() == 2 && token_bitmask->size(1) == words && token_bitmask->is_contiguous(), op,
                ": token_bitmask must be contiguous [masks, ", words, "], got ", token_bitmask->sizes());
    check_row_tensor(logits, *bitmask_index, at::kLong, "bitmask_index");
  }
  at::Tensor tokens = at::empty({logits.size(0)}, logits.options().dtype(at::kLong));
  if (logits.size(0) == 0) return tokens;
  const c10::cuda::CUDAGuard guard(logits.device());
  sample_tokens_kernel<<<grid_size(logits.size(0), op), kSampleThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      tokens.data_ptr<int64_t>(), logits.const_data_ptr<float>(), static_cast<int>(logits.size(1)),
      temperature.const_data_ptr<float>(), top_k.const_data_ptr<int64_t>(), top_p.const_data_ptr<float>(),
      min_p.const_data_ptr<float>(), seeds.const_data_ptr<int64_t>(), positions.const_data_ptr<int64_t>(),
      token_bitmask ? token_bitmask->const_data_ptr<int32_t>() : nullptr,
      bitmask_index ? bitmask_index->const_data_ptr<int64_t>() : nullptr, words);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return tokens;
}

}  // namespace
}  // namespace fastpage::cuda

TORCH_LIBRARY_IMPL(fastpage, CUDA, m) { m.impl("sample_tokens", &fastpage::cuda::sample_tokens); }
