// Float32 linear layer for decode-sized inputs on the CPU (see small_batch_linear.cpp).
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace fastpage::kernels::cpu {

// Up to this many rows the kernel beat MKL's sgemm on the dev box (64 rows: on par in the layers,
// ahead on a 49152-row lm_head); above it sgemm's packed panels pay off.
constexpr int64_t kSmallBatchRows = 64;

// True when small_batch_linear_out handles x @ weight.T: CPU float32, contiguous, at most
// kSmallBatchRows rows of x.
bool use_small_batch_linear(const at::Tensor& x, const at::Tensor& weight);
// out [rows, out_features] = x @ weight.T + bias (bias may be undefined).
void small_batch_linear_out(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias);
// torch.ops.fastpage.small_batch_linear on the CPU: checks use_small_batch_linear, then the above.
void small_batch_linear_op(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias);
// torch.ops.fastpage.small_batch_linear_silu_and_mul on the CPU: the two ops in sequence (the fused
// kernel pays off only on the GPU, where it saves a launch per layer).
void small_batch_linear_silu_and_mul_op(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight);

}  // namespace fastpage::kernels::cpu
