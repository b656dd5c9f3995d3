// CUDA launcher for small_batch_linear (kernel in small_batch_linear_kernels.cuh).
#include <torch/library.h>

#include "small_batch_linear_kernels.cuh"

namespace fastpage::cuda {
namespace {

template <typename T, int M>
void launch(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
            cudaStream_t stream) {
  const int n = static_cast<int>(weight.size(0)), k = static_cast<int>(weight.size(1));
  const int rows_per_block = kLinearWarps * kRowsPerWarp;
  small_batch_linear_kernel<T, M><<<(n + rows_per_block - 1) / rows_per_block, kLinearWarps * 32, 0, stream>>>(
      static_cast<T*>(out.data_ptr()), static_cast<const T*>(x.data_ptr()),
      static_cast<const T*>(weight.data_ptr()), bias.defined() ? static_cast<const T*>(bias.data_ptr()) : nullptr,
      n, k);
}

template <typename T, int M = 1>
void launch_rows(int64_t rows, const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                 const at::Tensor& bias, cudaStream_t stream) {
  if constexpr (M < kMaxSmallBatchRows) {
    if (rows != M) return launch_rows<T, M + 1>(rows, out, x, weight, bias, stream);
  }
  launch<T, M>(out, x, weight, bias, stream);
}

void small_batch_linear(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias_in) {
  constexpr const char* op = "small_batch_linear";
  check_cuda(out, op, "out");
  check_cuda(x, op, "x");
  check_cuda(weight, op, "weight");
  check_same_device(x, out, op, "out");
  check_same_device(x, weight, op, "weight");
  check_dim(x, 2, op, "x");
  check_dim(weight, 2, op, "weight");
  const at::Tensor bias = bias_in.has_value() ? *bias_in : at::Tensor();
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf, op,
              ": x must be bfloat16 or float16, got ", x.scalar_type());
  check_dtype(weight, x.scalar_type(), op, "weight");
  check_dtype(out, x.scalar_type(), op, "out");
  const int64_t rows = x.size(0), n = weight.size(0), k = weight.size(1);
  TORCH_CHECK(rows >= 1 && rows <= kMaxSmallBatchRows, op, ": x must have 1 to ", kMaxSmallBatchRows,
              " rows, got ", rows);
  TORCH_CHECK(x.size(1) == k && k % 8 == 0 && k <= INT32_MAX && n <= INT32_MAX, op,
              ": x [rows, K] and weight [N, K] with K a multiple of 8, got ", x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(out.dim() == 2 && out.size(0) == rows && out.size(1) == n && out.is_contiguous(), op,
              ": out must be contiguous [", rows, ", ", n, "], got ", out.sizes());
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous() && is_aligned16(x.data_ptr()) &&
                  is_aligned16(weight.data_ptr()), op, ": x and weight must be contiguous and 16-byte aligned");
  if (bias.defined()) {
    check_cuda(bias, op, "bias");
    check_dtype(bias, x.scalar_type(), op, "bias");
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == n && bias.is_contiguous(), op, ": bias must be [", n, "]");
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (x.scalar_type() == at::kBFloat16) launch_rows<__nv_bfloat16>(rows, out, x, weight, bias, stream);
  else launch_rows<__half>(rows, out, x, weight, bias, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace fastpage::cuda

TORCH_LIBRARY_IMPL(fastpage, CUDA, m) { m.impl("small_batch_linear", &fastpage::cuda::small_batch_linear); }
