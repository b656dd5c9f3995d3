// CUDA launchers for small_batch_linear and small_batch_linear_silu_and_mul (kernel in
// small_batch_linear_kernels.cuh).
#include <torch/library.h>

#include "small_batch_linear_kernels.cuh"

namespace fastpage::cuda {
namespace {

// out [rows, n] from x [rows, K] and weight [n or 2n, K]; one warp per kRowsPerWarp weight rows (Plain)
// or per output column (SiluAndMul).
template <typename T, int M, SmallBatchEpilogue E>
void launch(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
            cudaStream_t stream) {
  const int n = static_cast<int>(out.size(1)), k = static_cast<int>(weight.size(1));
  const int outputs_per_block = E == SmallBatchEpilogue::Plain ? kLinearWarps * kRowsPerWarp : kLinearWarps;
  small_batch_linear_kernel<T, M, E><<<(n + outputs_per_block - 1) / outputs_per_block, kLinearWarps * 32, 0,
                                       stream>>>(
      static_cast<T*>(out.data_ptr()), static_cast<const T*>(x.data_ptr()),
      static_cast<const T*>(weight.data_ptr()), bias.defined() ? static_cast<const T*>(bias.data_ptr()) : nullptr,
      n, k);
}

template <typename T, SmallBatchEpilogue E, int M = 1>
void launch_rows(int64_t rows, const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                 const at::Tensor& bias, cudaStream_t stream) {
  if constexpr (M < kMaxSmallBatchRows) {
    if (rows != M) return launch_rows<T, E, M + 1>(rows, out, x, weight, bias, stream);
  }
  launch<T, M, E>(out, x, weight, bias, stream);
}

// Checks x [rows <= kMaxSmallBatchRows, K], weight [weight_rows_per_output * N, K], out [rows, N].
void check_inputs(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                  int64_t weight_rows_per_output, const char* op) {
  check_cuda(out, op, "out");
  check_cuda(x, op, "x");
  check_cuda(weight, op, "weight");
  check_same_device(x, out, op, "out");
  check_same_device(x, weight, op, "weight");
  check_dim(x, 2, op, "x");
  check_dim(weight, 2, op, "weight");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf, op,
              ": x must be bfloat16 or float16, got ", x.scalar_type());
  check_dtype(weight, x.scalar_type(), op, "weight");
  check_dtype(out, x.scalar_type(), op, "out");
  const int64_t rows = x.size(0), k = weight.size(1);
  TORCH_CHECK(rows >= 1 && rows <= kMaxSmallBatchRows, op, ": x must have 1 to ", kMaxSmallBatchRows,
              " rows, got ", rows);
  TORCH_CHECK(x.size(1) == k && k % 8 == 0 && k <= INT32_MAX && weight.size(0) <= INT32_MAX, op,
              ": x [rows, K] and weight [N, K] with K a multiple of 8, got ", x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(weight.size(0) % weight_rows_per_output == 0, op, ": weight must have a multiple of ",
              weight_rows_per_output, " rows, got ", weight.sizes());
  const int64_t n = weight.size(0) / weight_rows_per_output;
  TORCH_CHECK(out.dim() == 2 && out.size(0) == rows && out.size(1) == n && out.is_contiguous(), op,
              ": out must be contiguous [", rows, ", ", n, "], got ", out.sizes());
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous() && is_aligned16(x.data_ptr()) &&
                  is_aligned16(weight.data_ptr()), op, ": x and weight must be contiguous and 16-byte aligned");
}

template <SmallBatchEpilogue E>
void dispatch(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (out.size(1) == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (x.scalar_type() == at::kBFloat16) launch_rows<__nv_bfloat16, E>(x.size(0), out, x, weight, bias, stream);
  else launch_rows<__half, E>(x.size(0), out, x, weight, bias, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void small_batch_linear(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias_in) {
  constexpr const char* op = "small_batch_linear";
  check_inputs(out, x, weight, 1, op);
  const at::Tensor bias = bias_in.has_value() ? *bias_in : at::Tensor();
  if (bias.defined()) {
    const int64_t n = weight.size(0);
    check_cuda(bias, op, "bias");
    check_same_device(x, bias, op, "bias");
    check_dtype(bias, x.scalar_type(), op, "bias");
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == n && bias.is_contiguous(), op, ": bias must be [", n, "]");
  }
  dispatch<SmallBatchEpilogue::Plain>(out, x, weight, bias);
}

void small_batch_linear_silu_and_mul(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight) {
  check_inputs(out, x, weight, 2, "small_batch_linear_silu_and_mul");
  dispatch<SmallBatchEpilogue::SiluAndMul>(out, x, weight, at::Tensor());
}

}  // namespace
}  // namespace fastpage::cuda

TORCH_LIBRARY_IMPL(fastpage, CUDA, m) {
  m.impl("small_batch_linear", &fastpage::cuda::small_batch_linear);
  m.impl("small_batch_linear_silu_and_mul", &fastpage::cuda::small_batch_linear_silu_and_mul);
}
